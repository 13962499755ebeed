#!/usr/bin/env python3
"""The campaign's checker: turns a run's recording (acknowledged writes, role changes, faults,
the final leader's rows and timeline history) into the numbers of docs/reliability.md.

    checker.py RECORDING.json [RECORDING.json ...]   re-check saved recordings, print tables
    checker.py --markdown RECORDING.json ...         the same as one Markdown table

Definitions (times are monotonic seconds on the campaign host):
- split-brain write: a write acknowledged by member A on timeline TA that was sent after the
  watcher had already seen another member B as primary on a newer timeline TB > TA.
- acknowledged write lost: an acknowledged id that the final leader does not have once every
  fault is healed and every member streams again. Its distance to the timeline fork is its WAL
  position minus the point where its timeline ends in the final leader's timeline history.
- failover lag: for every timeline switch in the final leader's history, the optime the old
  leader had published in the DCS just before the promoted member took the lock (from the
  leader log, in the DCS's own revision order) minus the point where the old timeline ends.
  maximum_lag_on_failover bounds it in asynchronous mode. A lost write is beyond
  maximum_lag_on_failover when a promotion within the bound would have kept it: its WAL
  position is at most the published optime minus maximum_lag_on_failover. Writes the old
  leader acknowledged after its last published optime are what asynchronous replication may
  lose. Without a published optime for a switch (no leader log), a lost write is beyond the
  bound when it lies more than maximum_lag_on_failover past the fork.
- time until a new leader accepted writes: from the fault's injection to the first write
  acknowledged on a timeline newer than the one before the fault (faults that led to a
  promotion only).
- time until writes succeed again: from the injection until the read-write client's writes
  succeed for good (0 when none failed).
- time until all members stream again: from the heal until one primary sees both other
  members streaming and every agent runs.
"""

import bisect
import json
import sys

from schedule import FAULT_TYPES


def percentile(values, fraction):
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-int(fraction * 100) * len(ordered) // 100))
    return ordered[min(rank, len(ordered)) - 1]


def fault_at(faults, moment):
    """Index of the last fault injected at or before `moment` (None before the first)."""
    found = None
    for fault in faults:
        if fault["injected_at"] <= moment:
            found = fault["index"]
    return found


# The harness sees a lock change through a watch and a promotion by polling every ~20 ms; the
# lock change that led to a promotion is the promoted member's last one up to this long after.
HANDOVER_SLACK_S = 5.0


def lock_handovers(leader_log):
    """[(seen_at, new_holder, optime published before)] for every time the leader lock passed
    to another member, from the leader log's entries (seen_at, revision, leader, optime)."""
    handovers = []
    holder = None
    previous_optime = None
    for seen_at, _, leader, optime in leader_log:
        if leader is not None and leader != holder:
            if holder is not None:
                handovers.append((seen_at, leader, previous_optime))
            holder = leader
        previous_optime = optime
    return handovers


def failover_lags(history, promotion_list, leader_log):
    """For every timeline switch of the final history: the fork, the promoted member, the
    optime published before it took the lock, and the difference (None where unknown). A
    member that kept the lock (it stopped Postgres while the DCS was out of reach, then
    promoted itself again) is measured against the last optime published before it promoted."""
    handovers = lock_handovers(leader_log)
    failovers = []
    for timeline, fork in sorted(history.items()):
        promoted = next(((t, m) for t, tl, m in promotion_list if tl == timeline + 1), None)
        published = None
        if promoted is not None:
            taken = [h for h in handovers if h[0] <= promoted[0] + HANDOVER_SLACK_S]
            if taken and taken[-1][1] == promoted[1]:
                published = taken[-1][2]
            else:
                published = next((e[3] for e in reversed(leader_log)
                                  if e[0] <= promoted[0] and e[3] is not None), None)
        failovers.append({"timeline": timeline, "fork": fork,
                          "promoted": None if promoted is None else promoted[1],
                          "promoted_seen_at": None if promoted is None else promoted[0],
                          "published_optime": published,
                          "lag_bytes": None if published is None else published - fork})
    return failovers


def analyze(recording):
    faults = recording["faults"]
    acks = recording["acks"]  # [id, writer, member, sent, acked, timeline, lsn]
    role_changes = recording["role_changes"]
    max_lag = recording["settings"]["maximum_lag_on_failover"]
    sync = recording["settings"]["mode"] == "sync"

    # First moment each member was seen as primary on each timeline.
    promotions = {}
    for member, changes in role_changes.items():
        for moment, role, timeline in changes:
            if role == "primary" and timeline:
                key = (timeline, member)
                promotions[key] = min(promotions.get(key, moment), moment)
    promotion_list = sorted((t, tl, m) for (tl, m), t in promotions.items())

    split_brain = []
    for ack in acks:
        write_id, _, member, sent, acked, timeline, _ = ack
        for promoted_at, newer, other in promotion_list:
            if promoted_at > sent:
                break
            if newer > timeline and other != member:
                split_brain.append({"id": write_id, "member": member, "timeline": timeline,
                                    "acked_at": acked, "newer_primary": other, "newer_timeline": newer,
                                    "promoted_seen_at": promoted_at})
                break

    final = recording["final"]
    present = set(final.get("ids") or [])
    history = {int(tli): lsn for tli, lsn in final.get("history") or []}
    lost = []
    if final.get("leader") is not None:
        for write_id, _, member, _, acked, timeline, lsn in acks:
            if write_id not in present:
                fork = history.get(timeline)
                lost.append({"id": write_id, "member": member, "timeline": timeline, "acked_at": acked,
                             "lsn": lsn, "bytes_past_fork": None if fork is None else lsn - fork})
    failovers = failover_lags(history, promotion_list, recording.get("leader_log") or [])
    published_by_timeline = {f["timeline"]: f["published_optime"] for f in failovers}

    def beyond_lag(write):
        published = published_by_timeline.get(write["timeline"])
        if published is not None:
            return write["lsn"] <= published - max_lag
        return write["bytes_past_fork"] is None or write["bytes_past_fork"] > max_lag

    lost_beyond_lag = [w for w in lost if beyond_lag(w)]
    failovers_beyond_lag = [f for f in failovers if f["lag_bytes"] is not None and f["lag_bytes"] > max_lag]

    ack_times = [a[4] for a in acks]
    rw_acks = [a for a in acks if a[1] == "rw"]
    rw_times = [a[4] for a in rw_acks]
    rw_failures = recording["rw_failures"]  # [sent, ended, message]
    per_fault = []
    for position, fault in enumerate(faults):
        start = fault["injected_at"]
        end = faults[position + 1]["injected_at"] if position + 1 < len(faults) else recording["ended_at"]
        new_leader = None
        if fault.get("pre_timeline"):
            window = acks[bisect.bisect_left(ack_times, start):bisect.bisect_left(ack_times, end)]
            newer = next((a for a in window if a[5] > fault["pre_timeline"]), None)
            if newer is not None:
                new_leader = newer[4] - start
        failures = [f for f in rw_failures if start <= f[0] < end]
        writes_ok = 0.0
        if failures:
            last_failure = failures[-1][0]
            window = rw_acks[bisect.bisect_left(rw_times, last_failure):bisect.bisect_left(rw_times, end)]
            back = next((a for a in window if a[3] > last_failure), None)
            writes_ok = None if back is None else back[4] - start
        streaming = None if fault.get("recovered_at") is None else fault["recovered_at"] - fault["healed_at"]
        # When another member was promoted: how long before that the old leader had acknowledged
        # its last write (negative: it acknowledged writes after the promotion).
        fenced_before = None
        promoted = next((t for t, tl, m in promotion_list
                         if start <= t < end and fault.get("pre_timeline") and tl > fault["pre_timeline"]
                         and m != fault.get("pre_leader")), None)
        if promoted is not None:
            old_acks = [a[4] for a in acks[bisect.bisect_left(ack_times, start):bisect.bisect_left(ack_times, end)]
                        if a[2] == fault.get("pre_leader") and a[5] == fault["pre_timeline"]]
            if old_acks:
                fenced_before = promoted - max(old_acks)
        per_fault.append({
            "index": fault["index"], "type": fault["type"], "new_leader_s": new_leader,
            "old_leader_last_ack_before_promotion_s": fenced_before,
            "writes_ok_s": writes_ok, "streaming_after_heal_s": streaming,
            "split_brain_writes": sum(1 for w in split_brain if fault_at(faults, w["acked_at"]) == fault["index"]),
            "lost_writes": sum(1 for w in lost if fault_at(faults, w["acked_at"]) == fault["index"]),
        })

    by_type = {}
    for kind in FAULT_TYPES:
        rows = [r for r in per_fault if r["type"] == kind]
        if not rows:
            continue
        leaders = [r["new_leader_s"] for r in rows if r["new_leader_s"] is not None]
        writes = [r["writes_ok_s"] for r in rows if r["writes_ok_s"] is not None]
        streams = [r["streaming_after_heal_s"] for r in rows if r["streaming_after_heal_s"] is not None]
        margins = [r["old_leader_last_ack_before_promotion_s"] for r in rows
                   if r["old_leader_last_ack_before_promotion_s"] is not None]
        by_type[kind] = {
            "count": len(rows),
            "old_leader_last_ack_before_promotion_s": {"min": min(margins, default=None),
                                                       "p50": percentile(margins, 0.5)},
            "new_leader_count": len(leaders),
            "new_leader_s": {"p50": percentile(leaders, 0.5), "p99": percentile(leaders, 0.99)},
            "writes_ok_s": {"p50": percentile(writes, 0.5), "p99": percentile(writes, 0.99)},
            "streaming_after_heal_s": {"p50": percentile(streams, 0.5), "p99": percentile(streams, 0.99)},
            "not_recovered": sum(1 for r in rows if r["streaming_after_heal_s"] is None),
            "split_brain_writes": sum(r["split_brain_writes"] for r in rows),
            "lost_writes": sum(r["lost_writes"] for r in rows),
        }

    never_recovered = final.get("never_recovered") or []
    violations = []
    if split_brain:
        violations.append(f"{len(split_brain)} split-brain writes")
    if sync and lost:
        violations.append(f"{len(lost)} acknowledged writes lost in synchronous_mode")
    if not sync and lost_beyond_lag:
        violations.append(f"{len(lost_beyond_lag)} lost writes beyond maximum_lag_on_failover")
    if not sync and failovers_beyond_lag:
        violations.append("promoted further than maximum_lag_on_failover behind the published optime "
                          f"(timelines {', '.join(str(f['timeline']) for f in failovers_beyond_lag)})")
    unmeasured = [f["timeline"] for f in failovers if f["published_optime"] is None]
    if not sync and "leader_log" in recording and unmeasured:
        violations.append("no published optime known before the promotion that ended timelines "
                          f"{', '.join(str(t) for t in unmeasured)}")
    if never_recovered:
        violations.append(f"members never recovered: {', '.join(never_recovered)}")
    # failsafe_mode: the primary stays up while the DCS misbehaves, for as long as every member
    # answers it (Regent's promise; Patroni is measured, not held to it).
    failsafe_failovers = [r["index"] for r in per_fault
                          if r["type"] == "dcs_flaky_failsafe" and r["new_leader_s"] is not None]
    if recording["agent"] == "regent" and failsafe_failovers:
        violations.append("a new leader took over while the DCS misbehaved with failsafe_mode on "
                          f"(faults {', '.join(str(i) for i in failsafe_failovers)})")
    if recording.get("faults_planned", len(faults)) != len(faults):
        violations.append(f"only {len(faults)} of {recording['faults_planned']} faults ran "
                          f"({recording.get('stopped_because', 'stopped early')})")
    return {
        "agent": recording["agent"], "agent_version": recording.get("agent_version"),
        "dcs": recording["dcs"], "mode": recording["settings"]["mode"], "seed": recording["seed"],
        "settings": recording["settings"],
        "faults_planned": recording.get("faults_planned", len(faults)),
        "faults_run": len(faults),
        "duration_s": recording["ended_at"] - recording["started_at"],
        "acknowledged_writes": len(acks),
        "unconfirmed_sync_commits": len(recording.get("unconfirmed") or []),
        "split_brain_writes": len(split_brain),
        "acknowledged_writes_lost": len(lost),
        "lost_beyond_maximum_lag": len(lost_beyond_lag),
        "max_bytes_past_fork": max((w["bytes_past_fork"] or 0 for w in lost), default=0),
        "failovers": failovers,
        "max_failover_lag_bytes": max((f["lag_bytes"] for f in failovers if f["lag_bytes"] is not None),
                                      default=None),
        "failovers_without_published_optime": sum(1 for f in failovers if f["published_optime"] is None),
        "members_never_recovered": never_recovered,
        "failsafe_failovers": failsafe_failovers,
        "by_fault_type": by_type,
        "faults": per_fault,
        "split_brain_examples": split_brain[:20],
        "lost_examples": lost[:20],
        "violations": violations,
        "passed": not violations,
    }


def cell(pair, digits=1):
    if pair["p50"] is None:
        return "-"
    return f"{pair['p50']:.{digits}f}/{pair['p99']:.{digits}f}"


def failover_lag_text(result):
    """The largest distance between a published optime and a promoted member's fork."""
    lag = result["max_failover_lag_bytes"]
    if lag is None:
        text = "no published optime known"
    elif lag <= 0:
        text = "every promoted member at or past the optime published before it took the lock"
    else:
        text = f"promoted member at most {lag} bytes behind the published optime"
    text += f" (maximum_lag_on_failover {result['settings']['maximum_lag_on_failover'] / 1024:.0f} kB)"
    unknown = result["failovers_without_published_optime"]
    if unknown and lag is not None:
        text += f", {unknown} without a published optime"
    return text


def table(result):
    lines = [f"{result['agent']} ({result.get('agent_version') or '?'}), DCS {result['dcs']}, "
             f"mode {result['mode']}, seed {result['seed']}: {result['faults_run']}/{result['faults_planned']} "
             f"faults in {result['duration_s'] / 60:.1f} min",
             f"{'fault type':<26}{'n':>4}{'promoted':>9}{'new leader s':>15}{'writes ok s':>15}"
             f"{'streaming s':>15}{'stuck':>6}{'split':>7}{'lost':>6}"]
    for kind, row in result["by_fault_type"].items():
        lines.append(f"{kind:<26}{row['count']:>4}{row['new_leader_count']:>9}{cell(row['new_leader_s']):>15}"
                     f"{cell(row['writes_ok_s']):>15}{cell(row['streaming_after_heal_s']):>15}"
                     f"{row['not_recovered']:>6}{row['split_brain_writes']:>7}{row['lost_writes']:>6}")
    lines.append("(p50/p99 in seconds; promoted: faults after which a newer timeline accepted writes; "
                 "stuck: faults the cluster did not recover from)")
    lines.append(f"acknowledged writes {result['acknowledged_writes']}, split-brain writes "
                 f"{result['split_brain_writes']}, acknowledged writes lost {result['acknowledged_writes_lost']} "
                 f"(beyond maximum_lag_on_failover: {result['lost_beyond_maximum_lag']}), members never "
                 f"recovered {len(result['members_never_recovered'])}")
    lines.append(f"timeline switches {len(result['failovers'])}: {failover_lag_text(result)}")
    lines.append("PASS" if result["passed"] else "FAIL: " + "; ".join(result["violations"]))
    return "\n".join(lines)


def markdown(results):
    """The per-type numbers of one or more runs of the same schedule as one Markdown table."""
    head = "| fault type | n | " + " | ".join(
        f"{r['agent']}: promoted, new leader p50/p99 s, writes ok p50/p99 s, streaming p50/p99 s, "
        f"stuck, split, lost" for r in results) + " |"
    lines = [head, "|---|---|" + "---|" * len(results)]
    for kind in FAULT_TYPES:
        rows = [r["by_fault_type"].get(kind) for r in results]
        if not any(rows):
            continue
        count = next(row["count"] for row in rows if row)
        cells = []
        for row in rows:
            if row is None:
                cells.append("-")
                continue
            cells.append(f"{row['new_leader_count']}, {cell(row['new_leader_s'])}, {cell(row['writes_ok_s'])}, "
                         f"{cell(row['streaming_after_heal_s'])}, {row['not_recovered']}, "
                         f"{row['split_brain_writes']}, {row['lost_writes']}")
        lines.append(f"| {kind} | {count} | " + " | ".join(cells) + " |")
    lines.append("| **run** | | " + " | ".join(
        f"{r['faults_run']}/{r['faults_planned']} faults in {r['duration_s'] / 60:.1f} min; "
        f"{r['acknowledged_writes']} acknowledged writes; split-brain writes **{r['split_brain_writes']}**; "
        f"lost **{r['acknowledged_writes_lost']}** (beyond maximum_lag_on_failover: "
        f"{r['lost_beyond_maximum_lag']}; {failover_lag_text(r)}); never recovered **{len(r['members_never_recovered'])}**; "
        + ("PASS" if r["passed"] else "FAIL") for r in results) + " |")
    return "\n".join(lines)


def fencing_margins(results):
    """Per fault type that led to a promotion: how long before the promotion the old leader
    acknowledged its last write (min / p50 over the faults; negative = after it)."""
    head = "| fault type | " + " | ".join(f"{r['agent']}: new leaders, min / p50 s" for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for kind in FAULT_TYPES:
        rows = [r["by_fault_type"].get(kind) for r in results]
        margins = [row and row.get("old_leader_last_ack_before_promotion_s") for row in rows]
        if not any(m and m["min"] is not None for m in margins):
            continue
        cells = []
        for row, margin in zip(rows, margins):
            if not margin or margin["min"] is None:
                cells.append("-")
                continue
            cells.append(f"{row['new_leader_count']}, {margin['min']:.1f} / {margin['p50']:.1f}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def side_by_side(results):
    """One line per fault type, one column group per run."""
    header = f"{'fault type':<26}" + "".join(f"{r['agent'] + ' new leader/streaming p50':>36}" for r in results)
    lines = [header]
    kinds = [k for k in FAULT_TYPES if any(k in r["by_fault_type"] for r in results)]
    for kind in kinds:
        line = f"{kind:<26}"
        for result in results:
            row = result["by_fault_type"].get(kind)
            if row is None:
                line += f"{'-':>36}"
                continue
            leader = row["new_leader_s"]["p50"]
            stream = row["streaming_after_heal_s"]["p50"]
            text = (f"{'-' if leader is None else f'{leader:.1f}'} / {'-' if stream is None else f'{stream:.1f}'}"
                    f" (split {row['split_brain_writes']}, lost {row['lost_writes']})")
            line += f"{text:>36}"
        lines.append(line)
    return "\n".join(lines)


def main(paths):
    as_markdown = "--markdown" in paths
    results = []
    for path in (p for p in paths if p != "--markdown"):
        with open(path) as handle:
            results.append(analyze(json.load(handle)))
        if not as_markdown:
            print(table(results[-1]))
            print()
    if as_markdown:
        print(markdown(results))
        print()
        print(fencing_margins(results))
    elif len(results) > 1:
        print(side_by_side(results))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
