//! A made-up cluster for the unit tests of the listings and commands: a plain one and a Citus
//! one, with the configuration ctl would load.

use std::sync::Arc;

use dcs::{Cluster, Dcs, Member};
use serde_json::{json, Value};

use super::api::Api;
use super::context::Ctx;
use super::output::Format;
use super::{Groups, ListArgs};
use crate::config::Config;

pub fn member(name: &str, data: Value) -> Member {
    Member::new(
        name,
        dcs::MemberData::parse(&data.to_string()).expect("member data"),
    )
}

pub fn cfg() -> Config {
    Config::from_yaml_str(
        "scope: demo\nname: x\netcd3: {hosts: 127.0.0.1:2379}\n\
         restapi: {listen: 127.0.0.1:8008, connect_address: 127.0.0.1:8008}\n\
         postgresql: {listen: 127.0.0.1:5432, connect_address: 127.0.0.1:5432, data_dir: /d,\
         authentication: {superuser: {username: p}, replication: {username: r}}}\n",
    )
    .expect("config")
}

/// `list` with its defaults and `format`.
pub fn args(format: Format) -> ListArgs {
    ListArgs::once(format)
}

/// Three members: m0 leads, m1 is the synchronous standby, m2 replicates from m1 with a pending
/// restart.
pub fn cluster() -> Cluster {
    let mut c = Cluster {
        initialize: Some("7379".into()),
        leader: Some(dcs::Leader {
            name: "m0".into(),
            version: None,
        }),
        config: Some(dcs::ClusterConfig {
            raw: json!({"synchronous_mode": true}),
            version: None,
        }),
        ..Default::default()
    };
    c.status.optime = Some(3 * 1024 * 1024);
    c.sync.sync_standby = vec!["m1".into()];
    c.members = vec![
        member(
            "m2",
            json!({"conn_url": "postgres://10.0.0.3:5432/postgres", "state": "running",
            "role": "replica", "replication_state": "streaming", "timeline": 1,
            "receive_lsn": 1048576, "replay_lsn": 1048576, "pending_restart": true,
            "tags": {"replicatefrom": "m1"}}),
        ),
        member(
            "m0",
            json!({"conn_url": "postgres://10.0.0.1:5432/postgres", "state": "running",
            "role": "primary", "timeline": 1, "xlog_location": 3145728}),
        ),
        member(
            "m1",
            json!({"conn_url": "postgres://10.0.0.2:5432/postgres", "state": "running",
            "role": "replica", "replication_state": "streaming", "timeline": 1,
            "receive_lsn": 3145728, "replay_lsn": 3145728}),
        ),
    ];
    c
}

/// A coordinator (the 3-member `cluster()`) with worker group 1: w1-a leads, w1-b streams.
pub fn citus_cluster() -> Cluster {
    let mut c = cluster();
    let mut worker = Cluster {
        initialize: Some("7380".into()),
        leader: Some(dcs::Leader {
            name: "w1-a".into(),
            version: None,
        }),
        config: Some(dcs::ClusterConfig {
            raw: json!({"pause": true}),
            version: None,
        }),
        ..Default::default()
    };
    worker.status.optime = Some(1024 * 1024);
    worker.members = vec![
        member(
            "w1-b",
            json!({"conn_url": "postgres://10.0.1.2:5432/postgres", "state": "running",
            "role": "replica", "replication_state": "streaming", "timeline": 2,
            "receive_lsn": 1048576, "replay_lsn": 1048576}),
        ),
        member(
            "w1-a",
            json!({"conn_url": "postgres://10.0.1.1:5432/postgres", "state": "running",
            "role": "primary", "timeline": 2}),
        ),
    ];
    c.workers.insert(1, worker);
    c
}

/// A command context whose DCS is an in-memory store holding `cluster` (not its Citus workers),
/// so that commands run whole; its members have no REST API, as when none answers.
pub async fn memory_ctx(cluster: &Cluster) -> Ctx {
    let store = dcs::memory::MemoryStore::new();
    let timing = dcs::Timing::default();
    let ctl = store.client("regent-ctl", timing);
    for m in &cluster.members {
        let mut data = m.data.clone();
        data.api_url = None;
        let client = store.client(&m.name, timing);
        client.touch_member(&data).await.expect("member");
        if cluster.leader_name() == Some(m.name.as_str()) {
            assert!(client.attempt_to_acquire_leader().await.expect("leader"));
            client.write_status(&cluster.status).await.expect("status");
        }
    }
    if let Some(sysid) = &cluster.initialize {
        assert!(ctl.initialize(true, sysid).await.expect("initialize"));
    }
    if let Some(config) = &cluster.config {
        assert!(ctl
            .set_config_value(&config.raw, None)
            .await
            .expect("config"));
    }
    ctl.set_history_value(&cluster.history)
        .await
        .expect("history");
    assert!(ctl.set_sync_state(&cluster.sync, None).await.expect("sync"));
    let cfg = cfg();
    let api = Api::new(&cfg, false).expect("REST client");
    Ctx {
        cfg,
        dcs: Arc::new(ctl),
        api,
        groups: Groups::Plain,
    }
}

/// What `out` received, as text.
pub fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).expect("UTF-8 output")
}
