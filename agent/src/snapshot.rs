//! Build the REST API's view of this member from the HA loop's state.

use dcs::{PostgresState, Role};
use rest::{PostgresStatus, ReplicationInfo, Snapshot, Wal};

use crate::ha::cycle::{Agent, PATRONI_COMPAT_VERSION};

pub fn build(agent: &Agent) -> Snapshot {
    let cfg = agent.cfg();
    let obs = agent.last_obs();
    let running = *agent.state() == PostgresState::Running;
    let role = agent.role().clone();
    let wal = if !running {
        Wal::Unknown
    } else if role == Role::Primary {
        obs.wal_position
            .map(|location| Wal::Primary { location })
            .unwrap_or_default()
    } else {
        Wal::Replica {
            received: obs.received_lsn,
            replayed: obs.replayed_lsn,
            replayed_timestamp: obs.replayed_timestamp.clone(),
            paused: obs.replay_paused.unwrap_or(false),
        }
    };
    let replication = obs
        .replication
        .iter()
        .map(|r| ReplicationInfo {
            usename: r.usename.clone().unwrap_or_default(),
            application_name: r.application_name.clone(),
            client_addr: r.client_addr.clone(),
            state: r.state.clone().unwrap_or_default(),
            sync_state: r.sync_state.clone().unwrap_or_default(),
            sync_priority: r.sync_priority.unwrap_or(0),
        })
        .collect();
    let cluster = agent.last_cluster().cloned();
    let paused = cluster.as_ref().is_some_and(|c| c.is_paused());
    Snapshot {
        scope: cfg.scope.clone(),
        name: cfg.name.clone(),
        version: PATRONI_COMPAT_VERSION.to_string(),
        api_url: cfg.api_url(),
        dynamic_config: cluster
            .as_ref()
            .and_then(|c| c.config.as_ref())
            .map(|c| c.raw.clone()),
        cluster,
        dcs_last_seen: agent.dcs_last_seen(),
        has_lock: agent.has_lock(),
        standby_cluster: false,
        postgres: PostgresStatus {
            state: agent.state().clone(),
            role,
            server_version: if running { obs.server_version } else { None },
            postmaster_start_time: if running {
                obs.postmaster_start_time.clone()
            } else {
                None
            },
            timeline: if running { obs.timeline } else { None },
            sysid: obs.sysid.clone(),
            wal,
            replication,
            replication_state: if running && agent.role() != &Role::Primary {
                Some(
                    if obs.streaming == Some(true) {
                        "streaming"
                    } else {
                        "in archive recovery"
                    }
                    .to_string(),
                )
            } else {
                None
            },
            pending_restart: obs.pending_restart,
            pending_restart_reason: obs.pending_restart_reason_json(),
        },
        tags: cfg.tags.clone(),
        paused,
        ttl: agent.dynamic().ttl,
        loop_wait: agent.dynamic().loop_wait,
        last_cycle_unix_ms: agent.last_cycle_ms(),
        scheduled_restart: agent.scheduled_restart_json(),
        watchdog_failed: agent.watchdog_failed(),
        failsafe_mode: agent.dynamic().failsafe_mode,
        failsafe: agent
            .failsafe_topology()
            .and_then(|t| serde_json::to_value(t).ok()),
        failsafe_mode_is_active: agent.failsafe_active(),
    }
}
