//! The rule for a data directory that is about to follow a leader and may have diverged from
//! it: start as it is, wait, pg_rewind, or clone afresh. Pure, like [`super::decide`]: the
//! loop reads pg_control (and, when the rule asks, the leader's timeline history) and executes
//! the answer.

use crate::postgres::{ControlData, RemoteTimeline};

/// What to do with the data directory before starting it as a replica of the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Start it: Postgres catches up by streaming (or follows the new timeline).
    Nothing,
    /// Ask again with the leader's timeline and history.
    NeedLeaderHistory,
    /// The leader was promoted and has not checkpointed yet: its pg_control still names the old
    /// timeline, and pg_rewind would trust it. Check again shortly.
    WaitForLeaderCheckpoint,
    /// pg_rewind from the leader; a failed rewind falls back to a clone.
    Rewind { diverged: bool, was_primary: bool },
    /// Diverged and pg_rewind is off: wipe and clone.
    Clone,
}

/// Decide the repair. `divergence_seen`: while running, this member's WAL was seen past the
/// leader's fork point. `leader`: None until [`Repair::NeedLeaderHistory`] was answered.
pub fn divergence_repair(
    local: &ControlData,
    divergence_seen: bool,
    leader: Option<&RemoteTimeline>,
    use_pg_rewind: bool,
) -> Repair {
    if local.is_crashed_replica() && !divergence_seen {
        // pg_rewind would first finish crash recovery as a primary, writing a shutdown
        // checkpoint the leader does not have: on the leader's own timeline it then finds "no
        // rewind required" and the replica can never stream again. Recovery as a replica writes
        // nothing; if it did run past a fork, the running check stops it cleanly and the next
        // start rewinds.
        return Repair::Nothing;
    }
    let Some(leader) = leader else {
        return Repair::NeedLeaderHistory;
    };
    let local_timeline = local.replayed_timeline();
    if leader.timeline == local_timeline {
        return Repair::Nothing;
    }
    if leader
        .checkpoint_timeline
        .is_some_and(|t| t < leader.timeline)
    {
        return Repair::WaitForLeaderCheckpoint;
    }
    let switch = leader
        .history
        .iter()
        .find(|h| h.0 == local_timeline)
        .map(|h| h.1);
    let was_primary = local.state == "in production" || local.state == "shut down";
    // How far our WAL goes, as far as pg_control tells without reading WAL.
    let local_end = local.checkpoint_lsn.max(local.min_recovery_end_lsn);
    let diverged = divergence_seen
        || match switch {
            // We ran on past the point where the leader's timeline forked off ours, or we
            // crashed as a primary and cannot tell where our WAL ends.
            Some(lsn) => local_end > lsn || local.state == "in production",
            // Our timeline is not in the leader's history at all.
            None => true,
        };
    match (diverged, was_primary, use_pg_rewind) {
        // A replica that stopped before the fork point follows the new timeline.
        (false, false, _) => Repair::Nothing,
        // A former primary is rewound even when it stopped before the fork: pg_rewind finds
        // out from its WAL, which pg_control alone cannot.
        (_, _, true) => Repair::Rewind {
            diverged,
            was_primary,
        },
        (false, true, false) => Repair::Nothing,
        (true, _, false) => Repair::Clone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(state: &str, timeline: u32, checkpoint: u64, min_recovery_end: u64) -> ControlData {
        ControlData {
            state: state.into(),
            timeline,
            checkpoint_lsn: checkpoint,
            min_recovery_end_lsn: min_recovery_end,
            min_recovery_end_timeline: if min_recovery_end > 0 { timeline } else { 0 },
            ..ControlData::default()
        }
    }

    /// A leader on timeline 2 that forked off timeline 1 at 1000.
    fn leader(checkpoint_timeline: u32) -> RemoteTimeline {
        RemoteTimeline {
            timeline: 2,
            checkpoint_timeline: Some(checkpoint_timeline),
            history: vec![(1, 1000, "no recovery target specified".into())],
        }
    }

    #[test]
    fn repair_table() {
        let on_tl2 = RemoteTimeline {
            timeline: 1,
            ..leader(1)
        };
        let unrelated = RemoteTimeline {
            history: vec![(5, 1000, String::new())],
            ..leader(2)
        };
        let rewind = |diverged, was_primary| Repair::Rewind {
            diverged,
            was_primary,
        };
        // (what, local, divergence seen, leader, use_pg_rewind, expected)
        type Case<'a> = (
            &'a str,
            ControlData,
            bool,
            Option<&'a RemoteTimeline>,
            bool,
            Repair,
        );
        let l2 = leader(2);
        let l2_no_checkpoint = leader(1);
        let cases: Vec<Case> = vec![
            (
                "a crashed replica starts as a replica, without asking the leader",
                control("in archive recovery", 1, 900, 1200),
                false,
                None,
                true,
                Repair::Nothing,
            ),
            (
                "a crashed replica seen past the fork is repaired",
                control("in archive recovery", 1, 900, 1200),
                true,
                None,
                true,
                Repair::NeedLeaderHistory,
            ),
            (
                "anything else needs the leader's history first",
                control("shut down in recovery", 1, 900, 900),
                false,
                None,
                true,
                Repair::NeedLeaderHistory,
            ),
            (
                "same timeline as the leader: stream",
                control("shut down in recovery", 1, 900, 900),
                false,
                Some(&on_tl2),
                true,
                Repair::Nothing,
            ),
            (
                "the leader's pg_control still names the old timeline: wait",
                control("shut down in recovery", 1, 900, 900),
                false,
                Some(&l2_no_checkpoint),
                true,
                Repair::WaitForLeaderCheckpoint,
            ),
            (
                "a replica that stopped before the fork follows the new timeline",
                control("shut down in recovery", 1, 900, 900),
                false,
                Some(&l2),
                true,
                Repair::Nothing,
            ),
            (
                "a replica past the fork is rewound",
                control("shut down in recovery", 1, 900, 1200),
                false,
                Some(&l2),
                true,
                rewind(true, false),
            ),
            (
                "a cleanly stopped former primary is rewound even before the fork",
                control("shut down", 1, 900, 0),
                false,
                Some(&l2),
                true,
                rewind(false, true),
            ),
            (
                "a crashed primary cannot tell where its WAL ends: diverged",
                control("in production", 1, 900, 0),
                false,
                Some(&l2),
                true,
                rewind(true, true),
            ),
            (
                "a timeline the leader never had: diverged",
                control("shut down in recovery", 1, 900, 900),
                false,
                Some(&unrelated),
                true,
                rewind(true, false),
            ),
            (
                "divergence seen while running wins over pg_control",
                control("shut down in recovery", 1, 900, 900),
                true,
                Some(&l2),
                true,
                rewind(true, false),
            ),
            (
                "diverged with use_pg_rewind off: clone",
                control("shut down in recovery", 1, 900, 1200),
                false,
                Some(&l2),
                false,
                Repair::Clone,
            ),
            (
                "a clean former primary before the fork with use_pg_rewind off: start",
                control("shut down", 1, 900, 0),
                false,
                Some(&l2),
                false,
                Repair::Nothing,
            ),
            (
                "a restartpoint on timeline 1 but replay on timeline 2: same timeline",
                ControlData {
                    min_recovery_end_timeline: 2,
                    ..control("shut down in recovery", 1, 900, 1200)
                },
                false,
                Some(&l2),
                true,
                Repair::Nothing,
            ),
        ];
        for (what, local, seen, leader, use_rewind, expected) in cases {
            assert_eq!(
                divergence_repair(&local, seen, leader, use_rewind),
                expected,
                "{what}"
            );
        }
    }
}
