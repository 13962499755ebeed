#!/usr/bin/env python3
"""Seeded fault campaign against a real 3-member cluster in network namespaces.

Run through scripts/chaos.sh (see docs/reliability.md). Must run as root: it creates network
namespaces, a bridge, iptables rules and tmpfs mounts, and removes them all at the end.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback

import checker
import cluster as cluster_mod
import faults as faults_mod
import net
import schedule as schedule_mod
from common import CampaignError, log, tail
from workload import Workload

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="scripts/chaos.sh", description=__doc__)
    parser.add_argument("--dcs", choices=("etcd", "kubernetes"), required=True)
    parser.add_argument("--mode", choices=("async", "sync"), required=True,
                        help="sync: synchronous_mode on")
    parser.add_argument("--faults", type=int, required=True, help="number of faults to inject")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--agent", choices=("regent", "patroni", "both"), default="regent",
                        help="both: the same schedule with Regent, then with Patroni")
    parser.add_argument("--ttl", type=int, default=20)
    parser.add_argument("--loop-wait", type=int, default=2)
    parser.add_argument("--retry-timeout", type=int, default=5)
    parser.add_argument("--flaky-seconds", type=float, default=120,
                        help="how long the DCS answers intermittently (the schedule adds up to 25%%)")
    parser.add_argument("--recover-timeout", type=float, default=180,
                        help="seconds after a heal within which every member must stream again")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds for the whole run of one agent (default: from the schedule)")
    parser.add_argument("--regent-bin", default=os.environ.get("REGENT_BIN"))
    parser.add_argument("--kube-apiserver-bin", default=os.environ.get("REGENT_KUBE_APISERVER_BIN"))
    parser.add_argument("--slot", type=int, choices=net.SLOTS, default=0,
                        help="network slot 0 … 9 (bridge rgchaosS, addresses 10.77.S.0/24): "
                             "campaigns in different slots run side by side")
    parser.add_argument("--work-dir", default="/tmp/regent-chaos")
    parser.add_argument("--out", default=None, help="directory for the result JSON files "
                                                    "(default: WORK_DIR/results)")
    args = parser.parse_args(argv)
    if args.faults < 1:
        parser.error("--faults must be at least 1")
    if args.ttl < 5 or args.loop_wait < 1 or args.retry_timeout < 1:
        parser.error("--ttl must be at least 5, --loop-wait and --retry-timeout at least 1")
    return args


def default_binary(name):
    for profile in ("release", "debug"):
        candidate = os.path.join(REPO_ROOT, "target", profile, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def settings_of(args):
    return {"ttl": args.ttl, "loop_wait": args.loop_wait, "retry_timeout": args.retry_timeout,
            "mode": args.mode, "flaky_seconds": args.flaky_seconds,
            "recover_timeout": args.recover_timeout,
            "maximum_lag_on_failover": cluster_mod.MAXIMUM_LAG_ON_FAILOVER}


def run_label(agent_name, args):
    return f"{agent_name}-{args.dcs}-{args.mode}-seed{args.seed}-n{args.faults}"


class Stop(Exception):
    pass


def run_campaign(agent_name, args, plan, stopping):
    """One agent through the whole schedule; returns the recording."""
    label = run_label(agent_name, args)
    run_dir = os.path.join(args.work_dir, f"slot{args.slot}", label)
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)  # an earlier run of the same label; its volumes were unmounted
    os.makedirs(run_dir)
    for directory in (args.work_dir, os.path.dirname(run_dir), run_dir):
        os.chmod(directory, 0o755)
    if agent_name == "regent":
        binary = args.regent_bin or default_binary("regent")
        if not binary:
            raise CampaignError("no regent binary: build it (cargo build -p agent) or pass --regent-bin")
        agent = cluster_mod.RegentAgent(binary, run_dir)
    else:
        agent = cluster_mod.PatroniAgent()
    if args.dcs == "kubernetes":
        binary = args.kube_apiserver_bin or default_binary("regent-kube-apiserver")
        if not binary:
            raise CampaignError("no regent-kube-apiserver binary: cargo build -p regent-tests "
                                "--bin regent-kube-apiserver, or pass --kube-apiserver-bin")
        dcs = cluster_mod.KubeDcs(run_dir, binary)
    else:
        dcs = cluster_mod.EtcdDcs(run_dir)
    settings = settings_of(args)
    cluster = cluster_mod.Cluster(run_dir, agent, dcs, settings)
    network = net.Network(cluster_mod.MEMBER_NAMES)
    deadline_s = args.deadline or default_deadline(plan, args)
    recording = {"agent": agent_name, "agent_version": agent.version, "dcs": args.dcs, "seed": args.seed,
                 "settings": settings, "faults_planned": len(plan), "faults": [], "run_dir": run_dir}
    workload = None
    leader_log = None
    started = time.monotonic()
    recording["started_at"] = started
    log(f"{label}: {len(plan)} faults, deadline {deadline_s / 60:.0f} min, logs under {run_dir}")
    try:
        network.create()
        cluster.start()
        leader_log = dcs.leader_log()
        leader_log.start()
        leader, timeline, _ = cluster.wait_healthy(240, "the cluster to bootstrap", agents_must_run=True)
        log(f"bootstrapped: leader {leader} on timeline {timeline} after {time.monotonic() - started:.0f}s")
        rows = cluster_mod.query(cluster.member(leader).address,
                                 "CREATE TABLE IF NOT EXISTS chaos_writes (id bigint PRIMARY KEY, writer text, "
                                 "written_at timestamptz DEFAULT clock_timestamp()); SELECT 1", timeout=5)
        if rows is None:
            raise CampaignError("could not create the chaos_writes table on the leader")
        workload = Workload(cluster)
        workload.start()
        injector = faults_mod.Injector(cluster)
        for planned in plan:
            if stopping.is_set():
                recording["stopped_because"] = "interrupted"
                break
            if time.monotonic() - started > deadline_s:
                recording["stopped_because"] = f"deadline of {deadline_s:.0f}s reached"
                log(recording["stopped_because"])
                break
            fault = json.loads(json.dumps(planned))  # the plan stays untouched for the next agent
            # The previous fault ended with the cluster healthy and stable (or the run stopped).
            replicas = [m.name for m in cluster.members if m.name != leader]
            fault.update(pre_leader=leader, pre_timeline=timeline)
            injector.notes = []
            log(f"fault {fault['index'] + 1}/{len(plan)}: {fault['type']} "
                f"({describe_targets(fault)}) leader {leader} tl {timeline}, hold {fault['hold']}s")
            injected_at, healed_at = faults_mod.run_fault(injector, fault, leader, replicas, stopping)
            fault.update(injected_at=injected_at, healed_at=healed_at)
            try:
                post_leader, post_timeline, since = cluster.wait_healthy(args.recover_timeout,
                                                                         "every member streaming again")
                fault.update(recovered_at=since, post_leader=post_leader, post_timeline=post_timeline)
                leader, timeline = post_leader, post_timeline
                log(f"  healed; streaming again {fault['recovered_at'] - healed_at:.1f}s after the heal; "
                    f"leader {post_leader} tl {post_timeline}")
            except CampaignError as error:
                fault.update(recovered_at=None, error=str(error))
                log(f"  NOT RECOVERED: {error}")
            fault["notes"] = list(injector.notes)
            recording["faults"].append(fault)
            if fault["recovered_at"] is None:
                recording["stopped_because"] = f"the cluster did not recover after fault {fault['index'] + 1}"
                break
        workload.stop()
        # After a fault the cluster did not recover from, a short last chance is enough.
        unrecovered = bool(recording["faults"]) and recording["faults"][-1]["recovered_at"] is None
        recording["final"] = final_state(cluster, args, timeout=30 if unrecovered else None)
    except (CampaignError, Stop) as error:
        log(f"campaign error: {error}")
        recording["stopped_because"] = str(error)
        if workload is not None:
            workload.stop()
        recording["final"] = final_state(cluster, args, timeout=30) if network_up() else {}
        for member in cluster.members:
            log(f"---- {member.name} log tail ----\n{tail(member.log_path, 15)}")
    finally:
        recording["ended_at"] = time.monotonic()
        if workload is not None:
            recording["acks"] = workload.acks()
            recording["unconfirmed"] = workload.unconfirmed()
            recording["rw_failures"] = workload.rw_failures()
            recording["role_changes"] = workload.role_changes()
        else:
            recording.update(acks=[], unconfirmed=[], rw_failures=[], role_changes={})
        if leader_log is not None:
            leader_log.stopping.set()
            recording["leader_log"] = list(leader_log.entries)
        log("tearing down")
        cluster.shutdown()
        network.destroy()
    return recording


def network_up():
    return os.path.exists(f"/sys/class/net/{net.BRIDGE}")


def describe_targets(fault):
    parts = fault.get("parts")
    if parts:
        return " + ".join(f"{p['type']} {p.get('target', '')}".strip() for p in parts)
    return fault.get("target", "DCS")


def final_state(cluster, args, timeout=None):
    """Wait until every member streams again, then read the final leader's rows and history."""
    try:
        leader, timeline, _ = cluster.wait_healthy(timeout or args.recover_timeout, "every member streaming at the end")
    except CampaignError as error:
        _, _, problem = cluster.state()
        names = {m.name for m in cluster.members}
        never = sorted({p.split(":")[0] for p in problem.split("; ")} & names or names)
        log(f"final state not healthy: {error}")
        return {"leader": None, "never_recovered": never, "problem": problem}
    address = cluster.member(leader).address
    rows = cluster_mod.query(address, "SELECT id FROM chaos_writes", timeout=5)
    history = []
    if timeline > 1:
        text = cluster_mod.query(address, f"SELECT pg_read_file('pg_wal/{timeline:08X}.history')", timeout=5)
        for line in (text[0][0] if text else "").splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0].isdigit():
                high, _, low = fields[1].partition("/")
                history.append([int(fields[0]), (int(high, 16) << 32) + int(low, 16)])
    if rows is None:
        return {"leader": None, "never_recovered": [], "problem": "could not read chaos_writes on the leader"}
    return {"leader": leader, "timeline": timeline, "ids": [r[0] for r in rows], "history": history,
            "never_recovered": []}


def default_deadline(plan, args):
    """Generous bound for one agent's run: bootstrap plus every fault's hold and recovery."""
    return 300 + sum(f["hold"] + args.recover_timeout / 2 + 4 * args.ttl for f in plan)


def save(recording, result, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    label = f"{recording['agent']}-{recording['dcs']}-{recording['settings']['mode']}-seed{recording['seed']}"
    raw_path = os.path.join(recording["run_dir"], "recording.json")
    with open(raw_path, "w") as handle:
        json.dump(recording, handle)
    result["recording"] = raw_path
    path = os.path.join(out_dir, f"{label}-n{recording['faults_planned']}.json")
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)
    return path


def main(argv):
    args = parse_args(argv)
    net.configure(args.slot)
    if os.geteuid() != 0:
        sys.exit("chaos: must run as root (network namespaces, iptables, tmpfs mounts)")
    stopping = threading.Event()

    def interrupt(signum, frame):
        stopping.set()
        raise Stop(f"signal {signum}")
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)

    plan = schedule_mod.build(args.seed, args.faults, args.ttl, args.flaky_seconds)
    agents = ["regent", "patroni"] if args.agent == "both" else [args.agent]
    out_dir = args.out or os.path.join(args.work_dir, "results")
    results = []
    for agent_name in agents:
        if stopping.is_set():
            break
        began = time.monotonic()
        try:
            recording = run_campaign(agent_name, args, plan, stopping)
        except Stop:
            break
        result = checker.analyze(recording)
        path = save(recording, result, out_dir)
        results.append(result)
        print()
        print(checker.table(result))
        log(f"{agent_name}: {(time.monotonic() - began) / 60:.1f} min; result {path}")
        print()
    if len(results) > 1:
        print(checker.side_by_side(results))
    if stopping.is_set() or len(results) != len(agents):
        return 2
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception:  # a fault of the campaign itself, not of the cluster: exit 2, not 1
        traceback.print_exc()
        sys.exit(2)
