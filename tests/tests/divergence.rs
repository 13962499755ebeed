//! A replica that received WAL the new leader never had (it was ahead, but could not be
//! chosen: tagged nofailover) cannot stream from the new timeline. The agent notices that its WAL
//! runs past the fork point, stops Postgres, repairs it with pg_rewind and follows the new leader.
//!
//! And the converse: a replica that followed a timeline switch but has not had a restartpoint
//! since (its pg_control still names the old timeline) has not diverged. Killed, it must come
//! back by recovering as a replica, not through pg_rewind: pg_rewind would finish crash recovery
//! as a primary first, writing a checkpoint record the leader does not have, then find "no
//! rewind required" on the leader's own timeline, and the replica could never stream again.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use regent_tests::config::Backend;
use regent_tests::{wait_until, wait_until_ok, TestCluster};

regent_tests::backend_tests! {
    replica_ahead_of_the_new_leader_is_rewound_and_follows: [etcd, kubernetes];
    replica_killed_after_a_timeline_switch_streams_again_without_rewind: [etcd];
}

/// Wait until the DCS names `name` as the leader.
async fn wait_for_dcs_leader(cluster: &TestCluster, name: &str, deadline: Duration) {
    wait_until(&format!("{name} to lead"), deadline, || async move {
        (cluster.dcs_leader().await.as_deref() == Some(name)).then_some(())
    })
    .await;
}

async fn replica_killed_after_a_timeline_switch_streams_again_without_rewind(backend: Backend) {
    let cluster = TestCluster::builder("tlswitch")
        .members(3)
        .backend(backend)
        .start()
        .await;
    let old_leader = cluster.wait_for_bootstrap().await;
    let others = cluster.others(&old_leader);
    let (candidate, bystander) = (others[0], others[1]);
    let candidate_name = candidate.name().to_string();

    // A switchover puts the leader on timeline 2; the bystander follows it by streaming.
    cluster
        .request_switchover(&old_leader, &candidate_name)
        .await
        .expect("switchover request");
    wait_for_dcs_leader(&cluster, &candidate_name, Duration::from_secs(60)).await;
    cluster
        .wait_for_member_streaming(bystander.name(), &candidate_name, Duration::from_secs(60))
        .await;
    // More than shared_buffers (16 MB) of new rows per round: replaying them evicts dirty pages
    // on the bystander, which moves its minimum recovery point onto timeline 2, past the fork.
    // That is the situation the old code misjudged: pg_control's checkpoint still on timeline 1
    // (no restartpoint since the switch), the minimum recovery point on timeline 2.
    candidate.create_probe_table().await.expect("probe table");
    let leader_client = candidate
        .pg_client()
        .await
        .expect("connect to the new leader");
    leader_client
        .batch_execute("CREATE TABLE tlswitch_fill (g int, filler text)")
        .await
        .expect("fill table on the new leader");
    let mut timelines: (i32, i32) = (0, 0);
    for round in 1..=6 {
        leader_client
            .batch_execute(
                "INSERT INTO tlswitch_fill \
                 SELECT g, repeat('x', 500) FROM generate_series(1, 60000) g",
            )
            .await
            .expect("fill rows on the new leader");
        candidate.write_probe(round).await.expect("probe row");
        cluster
            .wait_for_probe_on(&[bystander], round, Duration::from_secs(60))
            .await;
        let client = bystander
            .pg_client()
            .await
            .expect("connect to the bystander");
        let row = client
            .query_one(
                "SELECT (SELECT timeline_id FROM pg_control_checkpoint()), \
                        (SELECT min_recovery_end_timeline FROM pg_control_recovery())",
                &[],
            )
            .await
            .expect("pg_control of the bystander");
        timelines = (row.get(0), row.get(1));
        if timelines.1 == 2 {
            break;
        }
    }
    assert_eq!(
        timelines,
        (1, 2),
        "precondition: last restartpoint on timeline 1, minimum recovery point on timeline 2"
    );

    // Kill the bystander's postmaster (its agent keeps running and starts it again).
    let postmaster = bystander.postmaster_pid().expect("bystander postmaster");
    kill(Pid::from_raw(postmaster), Signal::SIGKILL).expect("SIGKILL postmaster");
    let killed_at = Instant::now();
    cluster
        .wait_for_member_streaming(bystander.name(), &candidate_name, Duration::from_secs(60))
        .await;
    println!(
        "[tlswitch/{}] killed replica streams again after {:.3} s",
        backend.label(),
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        !bystander.log_contents().contains("running pg_rewind"),
        "a replica that only lagged behind a restartpoint is not rewound"
    );
    candidate
        .write_probe(100)
        .await
        .expect("probe row after the kill");
    cluster
        .wait_for_probe_on(&[bystander], 100, Duration::from_secs(30))
        .await;
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
    let leader_name = cluster.wait_for_bootstrap().await;
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
    wait_for_dcs_leader(&cluster, &candidate_name, Duration::from_secs(40)).await;
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
