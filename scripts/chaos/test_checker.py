"""The checker's rules on small made-up recordings (python3 -m unittest discover -s scripts/chaos)."""

import unittest

import checker

MB = 1024 * 1024
LAG = 1 * MB


def recording(mode="async", acks=(), role_changes=None, history=(), ids=(), leader_log=None):
    data = {
        "agent": "regent", "dcs": "etcd", "seed": 1,
        "settings": {"mode": mode, "maximum_lag_on_failover": LAG},
        "faults": [], "faults_planned": 0, "rw_failures": [],
        "started_at": 0.0, "ended_at": 100.0,
        "acks": list(acks),
        "role_changes": role_changes or {"m1": [[0.0, "primary", 1]], "m2": [[0.0, "replica", None]]},
        "final": {"leader": "m2", "ids": list(ids), "history": [list(h) for h in history],
                  "never_recovered": []},
    }
    if leader_log is not None:
        data["leader_log"] = leader_log
    return data


def ack(write_id, member, sent, timeline, lsn):
    """(id, writer, member, sent, acked, timeline, lsn), acknowledged 10 ms after sending."""
    return [write_id, member, member, sent, sent + 0.01, timeline, lsn]


FAILOVER_AT_10 = {"m1": [[0.0, "primary", 1], [9.0, "unreachable", None]],
                  "m2": [[0.0, "replica", None], [10.0, "primary", 2]]}
# m1 publishes 100 MB at 8 s; its key expires; m2 takes the lock at 9.6 s.
LOG_100MB = [[1.0, 5, "m1", 90 * MB], [8.0, 9, "m1", 100 * MB], [9.5, 10, None, 100 * MB],
             [9.6, 11, "m2", 100 * MB]]


class SplitBrain(unittest.TestCase):
    def test_a_write_sent_after_another_member_was_seen_primary_is_split_brain(self):
        acks = [ack(1, "m1", 5.0, 1, 50 * MB), ack(2, "m1", 10.5, 1, 50 * MB + 100)]
        result = checker.analyze(recording(acks=acks, role_changes=FAILOVER_AT_10,
                                           history=[(1, 60 * MB)], ids=[1, 2], leader_log=LOG_100MB))
        self.assertEqual(result["split_brain_writes"], 1)
        self.assertEqual(result["split_brain_examples"][0]["id"], 2)
        self.assertFalse(result["passed"])

    def test_writes_before_the_promotion_are_not_split_brain(self):
        acks = [ack(1, "m1", 9.5, 1, 100 * MB - 10), ack(2, "m2", 10.5, 2, 100 * MB + 10)]
        result = checker.analyze(recording(acks=acks, role_changes=FAILOVER_AT_10,
                                           history=[(1, 100 * MB)], ids=[1, 2], leader_log=LOG_100MB))
        self.assertEqual(result["split_brain_writes"], 0)
        self.assertTrue(result["passed"], result["violations"])


class AsynchronousLoss(unittest.TestCase):
    def test_writes_after_the_last_published_optime_may_be_lost(self):
        # The candidate forked 10 kB behind the published optime; the old leader acknowledged
        # 5 MB more after it published (the leader was cut off): lost, but allowed.
        acks = [ack(1, "m1", 8.5, 1, 105 * MB)]
        result = checker.analyze(recording(acks=acks, role_changes=FAILOVER_AT_10,
                                           history=[(1, 100 * MB - 10240)], leader_log=LOG_100MB))
        self.assertEqual(result["acknowledged_writes_lost"], 1)
        self.assertEqual(result["lost_beyond_maximum_lag"], 0)
        self.assertEqual(result["max_failover_lag_bytes"], 10240)
        self.assertEqual(result["failovers"][0]["published_optime"], 100 * MB)
        self.assertTrue(result["passed"], result["violations"])

    def test_a_candidate_further_behind_than_maximum_lag_fails_the_run(self):
        acks = [ack(1, "m1", 5.0, 1, 98 * MB), ack(2, "m1", 8.5, 1, 100 * MB)]
        result = checker.analyze(recording(acks=acks, role_changes=FAILOVER_AT_10,
                                           history=[(1, 97 * MB)], leader_log=LOG_100MB))
        self.assertEqual(result["acknowledged_writes_lost"], 2)
        # Only the write at 98 MB is at or before published − maximum_lag (99 MB).
        self.assertEqual(result["lost_beyond_maximum_lag"], 1)
        self.assertEqual(result["max_failover_lag_bytes"], 3 * MB)
        self.assertFalse(result["passed"])
        self.assertTrue(any("promoted further" in v for v in result["violations"]), result["violations"])

    def test_the_optime_written_with_the_lock_change_does_not_count(self):
        # The new holder writes its own optime in the transaction that takes the lock; what the
        # candidate was measured against is the value before it.
        log = LOG_100MB[:3] + [[9.6, 11, "m2", 200 * MB]]
        result = checker.analyze(recording(role_changes=FAILOVER_AT_10, history=[(1, 100 * MB)],
                                           leader_log=log))
        self.assertEqual(result["failovers"][0]["published_optime"], 100 * MB)

    def test_a_member_that_kept_the_lock_is_measured_against_its_last_published_optime(self):
        roles = {"m1": [[0.0, "primary", 1], [9.0, "replica", None], [12.0, "primary", 2]],
                 "m2": [[0.0, "replica", None]]}
        log = [[1.0, 5, "m1", 90 * MB], [8.0, 9, "m1", 100 * MB], [12.5, 12, "m1", 101 * MB]]
        result = checker.analyze(recording(role_changes=roles, history=[(1, 100 * MB + 512)], leader_log=log))
        self.assertEqual(result["failovers"][0]["promoted"], "m1")
        self.assertEqual(result["failovers"][0]["lag_bytes"], -512)
        self.assertTrue(result["passed"], result["violations"])

    def test_without_a_leader_log_the_distance_past_the_fork_decides(self):
        acks = [ack(1, "m1", 8.5, 1, 100 * MB + 2 * MB), ack(2, "m1", 8.0, 1, 100 * MB + 1000)]
        result = checker.analyze(recording(acks=acks, role_changes=FAILOVER_AT_10, history=[(1, 100 * MB)]))
        self.assertEqual(result["failovers_without_published_optime"], 1)
        self.assertEqual(result["lost_beyond_maximum_lag"], 1)
        self.assertFalse(result["passed"])


    def test_a_timeline_switch_the_leader_log_cannot_explain_fails_the_run(self):
        # A leader log that saw nothing (its watch never worked) must not pass for a clean run.
        result = checker.analyze(recording(role_changes=FAILOVER_AT_10, history=[(1, 100 * MB)],
                                           leader_log=[]))
        self.assertFalse(result["passed"])
        self.assertTrue(any("no published optime" in v for v in result["violations"]), result["violations"])


class SynchronousLoss(unittest.TestCase):
    def test_any_lost_write_fails_synchronous_mode(self):
        acks = [ack(1, "m1", 8.5, 1, 100 * MB + 10)]
        result = checker.analyze(recording(mode="sync", acks=acks, role_changes=FAILOVER_AT_10,
                                           history=[(1, 100 * MB)], leader_log=LOG_100MB))
        self.assertEqual(result["acknowledged_writes_lost"], 1)
        self.assertFalse(result["passed"])
        self.assertTrue(any("synchronous_mode" in v for v in result["violations"]), result["violations"])

    def test_kept_writes_pass(self):
        acks = [ack(1, "m1", 8.5, 1, 100 * MB - 10)]
        result = checker.analyze(recording(mode="sync", acks=acks, role_changes=FAILOVER_AT_10,
                                           history=[(1, 100 * MB)], ids=[1], leader_log=LOG_100MB))
        self.assertEqual(result["acknowledged_writes_lost"], 0)
        self.assertTrue(result["passed"], result["violations"])


if __name__ == "__main__":
    unittest.main()
