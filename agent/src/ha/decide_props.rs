//! Properties of [`super::decide`] over generated cluster views and local states: the rules
//! that keep one primary hold for every input, not only for the table tests' cases.

use dcs::{Cluster, ClusterConfig, Failover, Leader, Member, MemberData, Role, SyncState, Tags};
use proptest::prelude::*;
use serde_json::json;

use super::{decide, Action, DataDir, DemoteMode, LocalState, PeerStatus, PgRole, Settings};

const ME: &str = "a";
const NAMES: [&str; 3] = ["a", "b", "c"];
const SYSID: &str = "7000000000000000001";

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Primary),
        Just(Role::Replica),
        Just(Role::Uninitialized)
    ]
}

fn member(name: &'static str) -> impl Strategy<Value = Member> {
    (role(), any::<bool>(), any::<bool>()).prop_map(move |(role, running, nofailover)| {
        let mut data = MemberData {
            conn_url: Some(format!("postgres://{name}:5432/postgres")),
            api_url: Some(format!("http://{name}:8008/patroni")),
            state: if running { "running" } else { "stopped" }.into(),
            role,
            ..MemberData::default()
        };
        if nofailover {
            data.tags = Tags(serde_json::Map::from_iter([(
                "nofailover".into(),
                json!(true),
            )]));
        }
        Member::new(name, data)
    })
}

fn cluster() -> impl Strategy<Value = Cluster> {
    (
        prop_oneof![
            Just(None),
            Just(Some(String::new())),
            Just(Some(SYSID.to_string()))
        ],
        prop_oneof![
            Just(None),
            Just(Some("a")),
            Just(Some("b")),
            Just(Some("c"))
        ],
        proptest::collection::vec(prop_oneof![member("a"), member("b"), member("c")], 0..4),
        prop_oneof![
            Just(None),
            Just(Some("a")),
            Just(Some("b")),
            Just(Some("c"))
        ],
        prop_oneof![Just(None), Just(Some("b")), Just(Some("c"))],
        any::<bool>(),
        proptest::option::of(0u64..10_000),
    )
        .prop_map(
            |(initialize, leader, mut members, failover_leader, candidate, paused, optime)| {
                members.sort_by(|x, y| x.name.cmp(&y.name));
                members.dedup_by(|x, y| x.name == y.name);
                let failover =
                    (failover_leader.is_some() || candidate.is_some()).then(|| Failover {
                        leader: failover_leader.map(Into::into),
                        member: candidate.map(Into::into),
                        ..Failover::default()
                    });
                Cluster {
                    initialize,
                    config: Some(ClusterConfig {
                        raw: json!({"ttl": 10, "pause": paused}),
                        version: None,
                    }),
                    leader: leader.map(|l| Leader {
                        name: l.into(),
                        version: None,
                    }),
                    members,
                    failover,
                    status: dcs::Status {
                        optime,
                        ..dcs::Status::default()
                    },
                    sync: SyncState::default(),
                    ..Cluster::default()
                }
            },
        )
}

fn peers() -> impl Strategy<Value = Vec<PeerStatus>> {
    proptest::collection::vec(
        (0usize..3, role(), any::<bool>(), 0u64..10_000).prop_map(|(i, role, running, wal)| {
            PeerStatus {
                name: NAMES[i].into(),
                role,
                running,
                wal_position: wal,
                timeline: Some(1),
                tags: Tags::default(),
            }
        }),
        0..3,
    )
}

fn local() -> impl Strategy<Value = LocalState> {
    (
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(PgRole::Unknown),
            Just(PgRole::Primary),
            Just(PgRole::Replica)
        ],
        0u64..10_000,
        any::<bool>(),
        proptest::option::of(-5.0f64..15.0),
        any::<bool>(),
        peers(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(valid, running, role, wal, holds, expires, renew_failed, peers, cannot, crashed)| {
                LocalState {
                    data_dir: if valid {
                        DataDir::Valid {
                            sysid: SYSID.into(),
                        }
                    } else {
                        DataDir::Empty
                    },
                    pg_running: running && valid,
                    pg_role: role,
                    timeline: Some(1),
                    wal_position: wal,
                    pg_crashed: crashed,
                    holds_lock: holds,
                    lock_expires_in: if holds { expires } else { None },
                    renew_failed,
                    peers,
                    cannot_lead: cannot.then(|| "no fence".to_string()),
                    now_ms: 1_700_000_000_000,
                    ..LocalState::default()
                }
            },
        )
}

fn settings() -> impl Strategy<Value = Settings> {
    (any::<bool>(), any::<bool>()).prop_map(|(synchronous_mode, failsafe_mode)| Settings {
        name: ME.into(),
        synchronous_mode,
        failsafe_mode,
        ttl: 10,
        loop_wait: 2,
        lease_safety_margin: 2.0,
        ..Settings::default()
    })
}

fn takes_over(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::AcquireLock | Action::Promote))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Another member's lock is never taken over and never followed by a promotion here.
    #[test]
    fn no_takeover_while_another_member_holds_the_lock(
        c in cluster(), l in local(), s in settings()
    ) {
        let d = decide(Some(&c), &l, &s);
        let other_holds = c.leader_name().is_some_and(|n| n != ME);
        prop_assert!(!(other_holds && takes_over(&d.actions)), "{}: {:?}", d.reason, d.actions);
    }

    /// A member that may not lead (no fence, watchdog required and broken) never takes the lock
    /// outside maintenance mode (paused, a running primary records itself as the leader: no
    /// member takes over automatically then, so there is nothing to fence).
    #[test]
    fn a_member_that_may_not_lead_never_takes_the_lock(
        mut c in proptest::option::of(cluster()), mut l in local(), s in settings()
    ) {
        l.cannot_lead = Some("the fence process is not running".into());
        if let Some(c) = c.as_mut() {
            c.config = Some(ClusterConfig { raw: json!({"ttl": 10}), version: None });
        }
        let d = decide(c.as_ref(), &l, &s);
        prop_assert!(!takes_over(&d.actions), "{}: {:?}", d.reason, d.actions);
    }

    /// Promotion comes only after the lock was confirmed in the same plan: an acquire or a
    /// renew before it (either aborts the plan when it fails).
    #[test]
    fn promotion_only_after_the_lock_is_confirmed(
        c in proptest::option::of(cluster()), l in local(), s in settings()
    ) {
        let d = decide(c.as_ref(), &l, &s);
        if let Some(promotes) = d.actions.iter().position(|a| *a == Action::Promote) {
            let confirmed = d.actions[..promotes]
                .iter()
                .any(|a| matches!(a, Action::AcquireLock | Action::RenewLock { .. }));
            prop_assert!(confirmed, "{}: {:?}", d.reason, d.actions);
        }
    }

    /// A plan never both promotes and demotes.
    #[test]
    fn never_promote_and_demote_at_once(
        c in proptest::option::of(cluster()), l in local(), s in settings()
    ) {
        let d = decide(c.as_ref(), &l, &s);
        let demotes = d.actions.iter().any(|a| matches!(a, Action::Demote(_)));
        prop_assert!(!(demotes && d.actions.contains(&Action::Promote)), "{}: {:?}", d.reason, d.actions);
    }

    /// A running primary whose lock another member holds steps down at once (not paused).
    #[test]
    fn a_primary_without_the_lock_steps_down(
        mut c in cluster(), mut l in local(), s in settings(), other in 1usize..3
    ) {
        l.pg_running = true;
        l.pg_role = PgRole::Primary;
        l.data_dir = DataDir::Valid { sysid: SYSID.into() };
        c.initialize = Some(SYSID.into());
        c.leader = Some(Leader { name: NAMES[other].into(), version: None });
        c.config = Some(ClusterConfig { raw: json!({"ttl": 10}), version: None });
        let d = decide(Some(&c), &l, &s);
        prop_assert!(
            d.actions.iter().any(|a| matches!(a, Action::Demote(DemoteMode::ImmediateNoLock | DemoteMode::Offline | DemoteMode::Graceful))),
            "{}: {:?}", d.reason, d.actions
        );
    }

    /// Synchronous mode: a member the `sync` object does not name (neither the last leader nor
    /// a synchronous standby) never takes a free lock on its own, whatever its WAL position.
    #[test]
    fn in_synchronous_mode_an_asynchronous_member_never_takes_a_free_lock(
        mut c in cluster(), l in local(), mut s in settings()
    ) {
        s.synchronous_mode = true;
        c.initialize = Some(SYSID.into());
        c.leader = None;
        c.failover = None;
        c.config = Some(ClusterConfig { raw: json!({"ttl": 10, "synchronous_mode": true}), version: None });
        c.sync = SyncState {
            leader: Some("b".into()),
            sync_standby: vec!["c".into()],
            ..SyncState::default()
        };
        let d = decide(Some(&c), &l, &s);
        prop_assert!(!takes_over(&d.actions), "{}: {:?}", d.reason, d.actions);
    }
}
