"""The seeded fault schedule. It depends only on the seed, the fault count and the timing
settings (ttl, how long the DCS stays flaky), never on the agent: Regent and Patroni given the
same arguments meet the same faults in the same order, with the same durations and targets.
Targets are roles ("leader", "replica 0|1"), resolved when the fault is injected."""

import random

# Every fault type; the schedule walks seeded permutations of this list, so any run of at least
# len(FAULT_TYPES) faults meets each type at least once.
FAULT_TYPES = (
    "agent_kill9",
    "postmaster_kill9",
    "agent_sigstop",
    "postmaster_sigstop",
    "leader_cut_dcs",
    "leader_cut_replicas",
    "leader_cut_all",
    "replica_cut",
    "dcs_freeze",
    "dcs_restart",
    "dcs_flaky",
    "dcs_flaky_failsafe",
    "leader_volume_full",
    "switchover_during_fault",
    "overlap",
)

DESCRIPTIONS = {
    "agent_kill9": "kill -9 of the agent (restarted after the hold)",
    "postmaster_kill9": "kill -9 of the postmaster",
    "agent_sigstop": "SIGSTOP of the leader's agent for longer than ttl",
    "postmaster_sigstop": "SIGSTOP of the postmaster",
    "leader_cut_dcs": "leader cut off from the DCS only",
    "leader_cut_replicas": "leader cut off from the replicas only",
    "leader_cut_all": "leader cut off from the DCS and the replicas",
    "replica_cut": "a replica cut off from the DCS and the other members",
    "dcs_freeze": "DCS frozen (SIGSTOP) and resumed",
    "dcs_restart": "DCS stopped and started again",
    "dcs_flaky": "DCS answering intermittently (timeouts, 5xx, 429), failsafe_mode off",
    "dcs_flaky_failsafe": "DCS answering intermittently (timeouts, 5xx, 429), failsafe_mode on",
    "leader_volume_full": "leader's data volume full",
    "switchover_during_fault": "switchover while another fault is active",
    "overlap": "two faults overlapping",
}

# Faults that may run beside another one (switchover, overlap).
LEADER_SIDE = ("agent_kill9", "postmaster_kill9", "agent_sigstop", "leader_cut_dcs",
               "leader_cut_replicas", "leader_volume_full")
OTHER_SIDE = ("replica_cut", "dcs_freeze", "postmaster_kill9", "agent_kill9", "dcs_flaky")
DURING_SWITCHOVER = ("replica_cut", "dcs_flaky", "postmaster_sigstop", "agent_kill9")


def simple_fault(rng, kind, ttl, flaky_seconds, target=None):
    fault = {"type": kind}
    if kind in ("agent_kill9", "postmaster_kill9", "postmaster_sigstop"):
        fault["target"] = target or ("leader" if rng.random() < 0.6 else f"replica {rng.randint(0, 1)}")
    elif kind == "replica_cut":
        fault["target"] = target or f"replica {rng.randint(0, 1)}"
    elif kind in ("agent_sigstop", "leader_cut_dcs", "leader_cut_replicas", "leader_cut_all",
                  "leader_volume_full"):
        fault["target"] = "leader"
    if kind == "agent_sigstop":
        fault["hold"] = round(ttl + rng.uniform(2, 6), 1)  # longer than ttl
    elif kind in ("dcs_flaky", "dcs_flaky_failsafe"):
        fault["hold"] = round(flaky_seconds * rng.uniform(1.0, 1.25), 1)
        fault["flaky_seed"] = rng.randrange(1 << 30)
    elif kind == "dcs_restart":
        fault["hold"] = round(rng.uniform(1, ttl / 2), 1)  # downtime
    elif kind == "agent_kill9":
        fault["hold"] = round(rng.uniform(1, ttl), 1)  # until the agent is started again
    else:
        fault["hold"] = round(rng.uniform(0.5, 1.5) * ttl, 1)
    return fault


def build(seed, count, ttl, flaky_seconds):
    rng = random.Random(seed)
    kinds = []
    while len(kinds) < count:
        permutation = list(FAULT_TYPES)
        rng.shuffle(permutation)
        kinds.extend(permutation)
    schedule = []
    for index, kind in enumerate(kinds[:count]):
        if kind == "overlap":
            first = simple_fault(rng, rng.choice(LEADER_SIDE), ttl, flaky_seconds, target="leader")
            second_kind = rng.choice(OTHER_SIDE)
            second = simple_fault(rng, second_kind, ttl, flaky_seconds,
                                  target=f"replica {rng.randint(0, 1)}" if second_kind != "dcs_freeze" else None)
            if second_kind == "dcs_flaky":
                second["hold"] = round(ttl * rng.uniform(1, 2), 1)
            second["delay"] = round(rng.uniform(0, first["hold"] / 2), 1)
            fault = {"type": kind, "parts": [first, second],
                     "hold": round(max(first["hold"], second["delay"] + second["hold"]), 1)}
        elif kind == "switchover_during_fault":
            # The candidate is replica 0; the side fault hits replica 1 or the DCS.
            side_kind = rng.choice(DURING_SWITCHOVER)
            side = simple_fault(rng, side_kind, ttl, flaky_seconds, target="replica 1")
            if side_kind == "dcs_flaky":
                side["hold"] = round(ttl * rng.uniform(1, 2), 1)
            fault = {"type": kind, "parts": [side], "candidate": "replica 0",
                     "hold": side["hold"]}
        else:
            fault = simple_fault(rng, kind, ttl, flaky_seconds)
        fault["index"] = index
        schedule.append(fault)
    return schedule
