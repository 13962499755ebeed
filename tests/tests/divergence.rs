//! A replica that received WAL the new leader never had (it was ahead, but could not be
//! chosen: tagged nofailover) cannot stream from the new timeline. The agent notices that its WAL
//! runs past the fork point, stops Postgres, repairs it with pg_rewind and follows the new leader.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use regent_tests::config::Backend;
use regent_tests::{wait_until, wait_until_ok, TestCluster};

const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(120);

regent_tests::backend_tests! {
    replica_ahead_of_the_new_leader_is_rewound_and_follows: [etcd, kubernetes];
}

async fn replica_ahead_of_the_new_leader_is_rewound_and_follows(backend: Backend) {
    // Member 2 may never lead, so the leader is member 0 or 1 and the other one is the only
    // failover candidate.
    let cluster = TestCluster::builder("diverge")
        .members(3)
        .backend(backend)
        .configure(|index, cfg| {
            if index == 2 {
                cfg.set("tags.nofailover", true);
            }
        })
        .start()
        .await;
    let leader_name = cluster.wait_for_leader(BOOTSTRAP_DEADLINE).await;
    cluster
        .wait_for_replicas_streaming(&leader_name, BOOTSTRAP_DEADLINE)
        .await;
    let leader = cluster.member(&leader_name);
    let ahead = cluster.member("diverge-2");
    let candidate = cluster
        .others(&leader_name)
        .into_iter()
        .find(|m| m.name() != "diverge-2")
        .expect("a failover candidate");
    leader.create_probe_table().await.expect("probe table");
    leader.write_probe(1).await.expect("first row");
    cluster
        .wait_for_probe_on(&[ahead, candidate], 1, Duration::from_secs(30))
        .await;

    // Freeze the leader's walsender to the candidate: rows 2..=20 reach only the nofailover
    // replica (the frozen sender puts nothing more into its socket).
    let client = leader.pg_client().await.expect("connect to the leader");
    let sender_pid: i32 = client
        .query_one(
            "SELECT pid FROM pg_stat_replication WHERE application_name = $1",
            &[&candidate.name()],
        )
        .await
        .expect("walsender pid")
        .get(0);
    kill(Pid::from_raw(sender_pid), Signal::SIGSTOP).expect("SIGSTOP walsender");
    for id in 2..=20 {
        leader
            .write_probe(id)
            .await
            .expect("write while the candidate's sender is frozen");
    }
    cluster
        .wait_for_probe_on(&[ahead], 20, Duration::from_secs(30))
        .await;

    // The leader dies, its frozen walsender with it.
    leader.kill9_with_postmaster();
    let _ = kill(Pid::from_raw(sender_pid), Signal::SIGKILL);
    let failed_at = Instant::now();
    let candidate_name = candidate.name().to_string();
    wait_until("the candidate to lead", Duration::from_secs(40), || {
        let cluster = &cluster;
        let candidate_name = candidate_name.clone();
        async move {
            (cluster.dcs_leader().await.as_deref() == Some(candidate_name.as_str())).then_some(())
        }
    })
    .await;
    assert!(
        !candidate.has_probe(20).await.unwrap_or(true),
        "the candidate must not have the rows it never received"
    );

    // The replica that was ahead detects the divergence, rewinds and streams from the candidate.
    cluster
        .wait_for_member_streaming("diverge-2", &candidate_name, Duration::from_secs(90))
        .await;
    println!(
        "[diverge/{}] ahead replica rewound and streaming from the new leader {:.3} s after the \
         failure",
        backend.label(),
        failed_at.elapsed().as_secs_f64()
    );
    assert!(
        ahead.log_contents().contains("forked off"),
        "the divergence is logged"
    );
    candidate
        .write_probe(100)
        .await
        .expect("write on the new leader");
    let ahead_ref = ahead;
    wait_until_ok(
        "row 100 on the rewound replica",
        Duration::from_secs(30),
        || async move {
            match ahead_ref.has_probe(100).await? {
                true => Ok(()),
                false => anyhow::bail!("not yet"),
            }
        },
    )
    .await;
    assert!(
        !ahead.has_probe(20).await.expect("query rewound replica"),
        "rows past the fork are gone after the rewind"
    );
}
