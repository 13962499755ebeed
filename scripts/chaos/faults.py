"""Injecting and healing one scheduled fault."""

import os
import signal
import threading
import time

import cluster as cluster_mod
import net
from common import log


class Injector:
    def __init__(self, cluster):
        self.cluster = cluster
        self.notes = []

    def resolve(self, target, leader, replicas):
        if target == "leader":
            return self.cluster.member(leader)
        if target and target.startswith("replica "):
            return self.cluster.member(replicas[int(target.split()[1])])
        return None

    def apply(self, fault, leader, replicas):
        """Inject `fault`; returns the function that heals it."""
        kind = fault["type"]
        member = self.resolve(fault.get("target"), leader, replicas)
        cluster, dcs = self.cluster, self.cluster.dcs
        if member is not None:
            fault.setdefault("member", member.name)

        if kind == "agent_kill9":
            pid = member.agent_pid
            if pid is None:
                self.notes.append(f"{member.name}: agent already gone")
            else:
                member.process.send_signal(signal.SIGKILL)
                member.process.wait()
            return lambda: member.start_agent(cluster.agent)

        if kind in ("postmaster_kill9", "postmaster_sigstop"):
            pid = member.postmaster_pid()
            if pid is None:
                self.notes.append(f"{member.name}: no postmaster running")
                return lambda: None
            if kind == "postmaster_kill9":
                signal_quietly(pid, signal.SIGKILL)
                return lambda: None
            signal_quietly(pid, signal.SIGSTOP)
            return lambda: signal_quietly(pid, signal.SIGCONT)

        if kind == "agent_sigstop":
            pid = member.agent_pid
            signal_quietly(pid, signal.SIGSTOP)
            return lambda: signal_quietly(pid, signal.SIGCONT)

        if kind in ("leader_cut_dcs", "leader_cut_replicas", "leader_cut_all", "replica_cut"):
            others = [m.address for m in cluster.members if m is not member]
            peers = {"leader_cut_dcs": [net.DCS_ADDRESS],
                     "leader_cut_replicas": others,
                     "leader_cut_all": [net.DCS_ADDRESS] + others,
                     "replica_cut": [net.DCS_ADDRESS] + others}[kind]
            cut = net.Cut(member.ns, peers)
            cut.apply()
            return cut.heal

        if kind == "dcs_freeze":
            pid = dcs.pid
            signal_quietly(pid, signal.SIGSTOP)
            return lambda: signal_quietly(pid, signal.SIGCONT)

        if kind == "dcs_restart":
            dcs.stop()
            return dcs.start

        if kind in ("dcs_flaky", "dcs_flaky_failsafe"):
            failsafe = kind == "dcs_flaky_failsafe"
            if failsafe:
                cluster.patch_config(leader, {"failsafe_mode": True})
                # The leader may stay up through the DCS's trouble only once every member is
                # in the failsafe topology it published with a renew.
                if not wait_for_failsafe_topology(cluster, leader):
                    self.notes.append("the failsafe topology was not published in time")
            dcs.set_flaky(True, fault["flaky_seed"])

            def heal():
                dcs.set_flaky(False)
                if failsafe:
                    healthy_leader = wait_for_any_leader(cluster)
                    if healthy_leader is None or not cluster.patch_config(healthy_leader, {"failsafe_mode": False}):
                        self.notes.append("failsafe_mode could not be switched off again")
            return heal

        if kind == "leader_volume_full":
            member.fill_volume()
            return member.empty_volume

        raise ValueError(f"unknown fault type {kind}")


def signal_quietly(pid, sig):
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_for_failsafe_topology(cluster, leader, timeout=30):
    """Poll until the leader's GET /failsafe names every member and every member's GET /config
    has failsafe_mode on (a member that has not seen it yet refuses the leader's calls)."""
    names = {m.name for m in cluster.members}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = cluster_mod.http_json("GET", f"{cluster.member(leader).rest_url}/failsafe", timeout=2)
        published = status == 200 and isinstance(body, dict) and names <= set(body)
        applied = all(
            isinstance(config, dict) and config.get("failsafe_mode") is True
            for config in (cluster_mod.http_json("GET", f"{m.rest_url}/config", timeout=2)[1]
                           for m in cluster.members))
        if published and applied:
            return True
        time.sleep(0.1)
    return False


def wait_for_any_leader(cluster, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader, _, _ = cluster.state()
        if leader is not None:
            return leader
        time.sleep(0.5)
    return None


def run_fault(injector, fault, leader, replicas, stopping):
    """Inject `fault` (and its parts), hold it, heal it. Returns (injected_at, healed_at)."""
    kind = fault["type"]
    injected_at = time.monotonic()
    if kind == "overlap":
        first, second = fault["parts"]
        heals = [(injector.apply(first, leader, replicas), first)]
        if stopping.wait(second["delay"]):
            pass
        heals.append((injector.apply(second, leader, replicas), second))
        ends = sorted([(injected_at + first["hold"], 0), (injected_at + second["delay"] + second["hold"], 1)])
        for end, which in ends:
            stopping.wait(max(0.0, end - time.monotonic()))
            heals[which][0]()
        return injected_at, time.monotonic()
    if kind == "switchover_during_fault":
        side = fault["parts"][0]
        # With synchronous_mode only the synchronous standby may take over: make it the candidate
        # (replica 0), so the side fault hits the other replica.
        if injector.cluster.settings["mode"] == "sync":
            rows = cluster_mod.query(injector.cluster.member(leader).address,
                                     "SELECT application_name FROM pg_stat_replication WHERE sync_state = 'sync'")
            sync_standbys = [r[0] for r in rows or []]
            if sync_standbys and sync_standbys[0] == replicas[1]:
                replicas = [replicas[1], replicas[0]]
        heal = injector.apply(side, leader, replicas)
        candidate = injector.resolve(fault["candidate"], leader, replicas).name
        fault["candidate_member"] = candidate
        outcome = {}

        def switch():
            outcome["answer"] = injector.cluster.switchover(leader, candidate)
        thread = threading.Thread(target=switch, daemon=True)
        thread.start()
        stopping.wait(side["hold"])
        heal()
        thread.join(timeout=60)
        status, body = outcome.get("answer", (0, "no answer within 60 s"))
        fault["switchover"] = {"status": status, "answer": str(body)[:200]}
        log(f"  switchover {leader} -> {candidate}: HTTP {status} {str(body)[:120]}")
        return injected_at, time.monotonic()
    heal = injector.apply(fault, leader, replicas)
    stopping.wait(fault["hold"])
    heal()
    return injected_at, time.monotonic()
