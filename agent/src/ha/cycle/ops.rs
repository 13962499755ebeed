//! REST commands, executed by the HA loop between cycles: the loop owns the DCS session and
//! Postgres, so the API never acts on them directly (ARCHITECTURE.md, *REST operations and `regent ctl`*).

use std::time::Duration;

use dcs::{Cluster, Failover, Role};
use rest::{Command, FailoverOutcome, FailoverRequest, OpReply, RestartRequest};
use serde_json::Value;
use tracing::{info, warn};

use super::{Agent, PlanOutcome};
use crate::ha::error::ClusterReadError;
use crate::ha::requests::{
    failover_candidates, failover_limitation, patch_config, reloadable, validate_config,
};
use crate::postgres::{ConfRole, StopMode};

/// A restart waiting for its time (`POST /restart` with `schedule`).
#[derive(Debug, Clone)]
pub(super) struct ScheduledRestart {
    pub at_ms: i64,
    pub request: RestartRequest,
}

impl Agent {
    pub(super) async fn handle_command(&mut self, command: Command) {
        if command_abandoned(&command) {
            // The client gave up waiting (the loop was busy): acting now would surprise it.
            info!("skipping a REST request whose client stopped waiting: {command:?}");
            return;
        }
        match command {
            Command::Failover { request, reply } => {
                let outcome = self.cmd_failover(request).await;
                let _ = reply.send(outcome);
            }
            Command::CancelSwitchover { reply } => {
                let answer = self.cmd_cancel_switchover().await;
                let _ = reply.send(answer);
            }
            Command::Config {
                value,
                replace,
                reply,
            } => {
                let answer = self.cmd_config(value, replace).await;
                let _ = reply.send(answer);
            }
            Command::Reload { reply } => {
                let answer = self.cmd_reload();
                let _ = reply.send(answer);
            }
            Command::Restart { request, reply } => {
                let answer = self.cmd_restart(request).await;
                let _ = reply.send(answer);
            }
            Command::CancelRestart { reply } => {
                let answer = match self.scheduled_restart.take() {
                    Some(_) => OpReply::text(200, "scheduled restart deleted"),
                    None => OpReply::text(404, "no restarts are scheduled"),
                };
                let _ = reply.send(answer);
            }
            Command::Reinitialize { force, reply } => {
                self.cmd_reinitialize(force, reply).await;
            }
        }
    }

    async fn fresh_cluster(&self) -> Result<Cluster, ClusterReadError> {
        let retry = Duration::from_secs(u64::from(self.dynamic.retry_timeout) + 1);
        match tokio::time::timeout(retry, self.dcs.get_cluster()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(ClusterReadError::Dcs(e)),
            Err(_) => Err(ClusterReadError::Timeout),
        }
    }

    async fn cmd_failover(&mut self, request: FailoverRequest) -> FailoverOutcome {
        let cluster = match self.fresh_cluster().await {
            Ok(c) => c,
            Err(e) => return FailoverOutcome::Refused(OpReply::text(503, e.to_string())),
        };
        if request.scheduled_at.is_none() {
            if let Err(msg) = self.failover_possible(&cluster, &request).await {
                info!(
                    action = request.action.name(),
                    "{} refused: {msg}",
                    request.action.name()
                );
                return FailoverOutcome::Refused(OpReply::text(412, msg));
            }
        }
        let value = Failover {
            leader: request.leader.clone(),
            member: request.candidate.clone(),
            scheduled_at: request.scheduled_at.clone(),
            version: None,
        };
        match self.dcs.set_failover_value(&value, None).await {
            Ok(true) => {
                info!(
                    leader = ?value.leader,
                    candidate = ?value.member,
                    scheduled_at = ?value.scheduled_at,
                    "{} requested through the REST API",
                    request.action.name()
                );
                FailoverOutcome::Written {
                    at_ms: chrono::Utc::now().timestamp_millis(),
                    leader: cluster.leader_name().map(str::to_string),
                }
            }
            Ok(false) | Err(_) => FailoverOutcome::Refused(OpReply::text(
                503,
                "failed to write failover key into DCS",
            )),
        }
    }

    /// Patroni's is_failover_possible: the named members must exist and at least one of the
    /// possible candidates must answer as running and allowed to promote.
    async fn failover_possible(
        &self,
        cluster: &Cluster,
        request: &FailoverRequest,
    ) -> Result<(), String> {
        let members = failover_candidates(cluster, request)?;
        let members = crate::ha::sync_rules::restrict_failover_candidates(
            cluster,
            request,
            self.sync_settings().enabled,
            members,
        )?;
        let checks = members.iter().map(|m| async move {
            let body = self
                .member_status
                .status(m.data.api_url.as_deref()?)
                .await?;
            Some(failover_limitation(&body).is_none())
        });
        let answers = futures_util::future::join_all(checks).await;
        if answers.into_iter().any(|ok| ok == Some(true)) {
            Ok(())
        } else {
            Err(format!(
                "{} is not possible: no good candidates have been found",
                request.action.name()
            ))
        }
    }

    async fn cmd_cancel_switchover(&mut self) -> OpReply {
        let cluster = match self.fresh_cluster().await {
            Ok(c) => c,
            Err(e) => return OpReply::text(503, e.to_string()),
        };
        match cluster.failover.as_ref() {
            Some(f) if f.scheduled_at.is_some() => {
                match self.dcs.delete_failover(f.version.as_deref()).await {
                    Ok(true) => {
                        info!("scheduled switchover deleted through the REST API");
                        OpReply::text(200, "scheduled switchover deleted")
                    }
                    _ => OpReply::error(409, "Conflict"),
                }
            }
            _ => OpReply::text(404, "no switchover is scheduled"),
        }
    }

    /// `PATCH /config` / `PUT /config`: the result is checked with the configuration parser
    /// before it is written, and a PATCH is written with CAS on the version it was based on.
    async fn cmd_config(&mut self, value: Value, replace: bool) -> OpReply {
        let cluster = match self.fresh_cluster().await {
            Ok(c) => c,
            Err(e) => return OpReply::text(503, e.to_string()),
        };
        let current = cluster.config.as_ref();
        let (new, version, changed) = if replace {
            let changed = current.is_none_or(|c| c.raw != value);
            (value, None, changed)
        } else {
            let Some(current) = current.filter(|c| c.version.is_some()) else {
                return OpReply::error(503, "Service Unavailable");
            };
            let mut data = current.raw.clone();
            let changed = patch_config(&mut data, &value);
            (data, current.version.clone(), changed)
        };
        if !changed {
            return OpReply::json(200, new);
        }
        if let Err(problems) = validate_config(current.map(|c| &c.raw), &new) {
            return OpReply::text(400, format!("invalid configuration: {problems}"));
        }
        match self.dcs.set_config_value(&new, version.as_deref()).await {
            Ok(true) => {
                info!(
                    replace,
                    "dynamic configuration changed through the REST API"
                );
                OpReply::json(200, new)
            }
            // PUT writes unconditionally: any failure is the DCS's (Patroni: 502).
            Ok(false) if replace => OpReply::error(502, "Bad Gateway"),
            // PATCH lost the CAS race against another writer.
            Ok(false) => OpReply::error(409, "Conflict"),
            Err(e) => {
                warn!(error = %e, "cannot write the configuration");
                if replace {
                    OpReply::error(502, "Bad Gateway")
                } else {
                    OpReply::error(503, "Service Unavailable")
                }
            }
        }
    }

    /// `POST /reload`: read the configuration again (when the agent knows how), render the
    /// Postgres configuration and signal Postgres.
    fn cmd_reload(&mut self) -> OpReply {
        if let Some(reload) = &self.config_reloader {
            match reload() {
                Ok(cfg) => match reloadable(&self.cfg, &cfg) {
                    Ok(()) => {
                        self.cfg = cfg;
                        self.pg.set_parameters(
                            crate::merged_parameters(&self.cfg, &self.dynamic),
                            crate::merged_pg_hba(&self.cfg, &self.dynamic),
                        );
                        info!("configuration reloaded");
                    }
                    Err(e) => warn!(error = %e, "reload failed: keeping the running configuration"),
                },
                Err(e) => {
                    warn!(error = %e, "reload: invalid configuration: keeping the running one")
                }
            }
        }
        if self.pg.is_running() {
            let role = self.current_conf_role();
            match self.pg.write_config(role) {
                Ok(change) => {
                    info!(
                        changed = change.changed,
                        needs_restart = change.needs_restart,
                        "reload requested: Postgres configuration rendered"
                    );
                    if let Err(e) = self.pg.reload() {
                        warn!(error = %e, "cannot reload Postgres");
                    }
                }
                Err(e) => warn!(error = %e, "cannot write the Postgres configuration"),
            }
        }
        OpReply::text(202, "reload scheduled")
    }

    async fn cmd_restart(&mut self, request: RestartRequest) -> OpReply {
        if let Some(schedule) = &request.schedule {
            if self.scheduled_restart.is_some() {
                return OpReply::text(409, "Another restart is already scheduled");
            }
            let at_ms = chrono::DateTime::parse_from_rfc3339(schedule)
                .map(|d| d.timestamp_millis())
                .unwrap_or(0);
            self.scheduled_restart = Some(ScheduledRestart {
                at_ms,
                request: request.clone(),
            });
            info!(schedule, "restart scheduled through the REST API");
            return OpReply::text(202, "Restart scheduled");
        }
        self.restart_now(&request).await
    }

    /// Patroni's restart_matches: the filters that must hold for a restart to go ahead.
    fn restart_conditions_hold(&self, request: &RestartRequest) -> bool {
        let role = match self.role {
            Role::Primary => "primary",
            _ => "replica",
        };
        if request.role.as_deref().is_some_and(|r| r != role) {
            info!("not proceeding with the restart: host role mismatch");
            return false;
        }
        if let Some(v) = request.postgres_version.as_deref() {
            let wanted = rest::postgres_version_to_int(v).unwrap_or(0);
            if self
                .last_obs
                .server_version
                .is_some_and(|have| wanted <= have)
            {
                info!("not proceeding with the restart: postgres version mismatch");
                return false;
            }
        }
        if request.restart_pending && !self.last_obs.pending_restart {
            info!("not proceeding with the restart: pending restart flag is not set");
            return false;
        }
        true
    }

    pub(super) async fn restart_now(&mut self, request: &RestartRequest) -> OpReply {
        if !self.restart_conditions_hold(request) {
            return OpReply::text(503, "restart conditions are not satisfied");
        }
        let leader = self.role == Role::Primary && self.lock_deadline.is_some();
        if leader {
            // A fresh lease covers the time Postgres is down.
            let cluster = self.last_cluster.clone();
            if !matches!(
                self.renew_lock(cluster.as_ref(), None).await,
                PlanOutcome::Done
            ) {
                return OpReply::text(503, "restart failed");
            }
        }
        let role = if leader {
            ConfRole::Primary
        } else {
            self.current_conf_role()
        };
        let following = self.following.clone();
        info!("restarting Postgres as requested through the REST API");
        if leader {
            // A Citus worker primary: writes to this group wait instead of failing.
            self.notify_coordinator(::citus::event::EventType::BeforeDemote)
                .await;
        } else {
            self.leave_sync_duty().await;
        }
        let timeout = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
        self.stop_postgres(StopMode::Fast, timeout).await;
        if self.pg.is_running() {
            return OpReply::text(503, "restart failed");
        }
        // `timeout` bounds how long the answer waits for Postgres, as in Patroni; a start that
        // takes longer goes on and is waited for by the next cycle.
        let wait = request.timeout.map(Duration::from_secs);
        match self.start_postgres_within(role, following, wait).await {
            PlanOutcome::Done => OpReply::text(200, "restarted successfully"),
            _ if self.pending_start.is_some() => OpReply::text(503, "postgres is still starting"),
            _ => OpReply::text(503, "restart failed"),
        }
    }

    /// Run a scheduled restart whose time has come (stale ones, 1.5·loop_wait late, are dropped).
    pub(super) async fn run_scheduled_restart(&mut self) {
        let Some(scheduled) = &self.scheduled_restart else {
            return;
        };
        let now = chrono::Utc::now().timestamp_millis();
        if scheduled.at_ms > now {
            return;
        }
        let Some(scheduled) = self.scheduled_restart.take() else {
            return;
        };
        if now - scheduled.at_ms > i64::from(self.dynamic.loop_wait) * 1500 {
            warn!("found a stale scheduled restart: cleaning it up");
            return;
        }
        let answer = self.restart_now(&scheduled.request).await;
        info!(code = answer.code, "scheduled restart: {:?}", answer.body);
    }

    /// The scheduled restart as shown on REST (`scheduled_restart`).
    pub(crate) fn scheduled_restart_json(&self) -> Option<Value> {
        let s = self.scheduled_restart.as_ref()?;
        let mut m = serde_json::Map::new();
        m.insert(
            "schedule".into(),
            Value::String(s.request.schedule.clone().unwrap_or_default()),
        );
        if let Some(r) = &s.request.role {
            m.insert("role".into(), Value::String(r.clone()));
        }
        if let Some(v) = &s.request.postgres_version {
            m.insert("postgres_version".into(), Value::String(v.clone()));
        }
        if s.request.restart_pending {
            m.insert("restart_pending".into(), Value::Bool(true));
        }
        Some(Value::Object(m))
    }

    /// `POST /reinitialize`: a replica throws its data away and clones it again from the leader.
    /// The answer goes out before the (long) clone starts, as in Patroni.
    async fn cmd_reinitialize(
        &mut self,
        force: bool,
        reply: tokio::sync::oneshot::Sender<OpReply>,
    ) {
        let cluster = match self.fresh_cluster().await {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(OpReply::text(503, e.to_string()));
                return;
            }
        };
        let Some(leader) = cluster.leader_name().map(str::to_string) else {
            let _ = reply.send(OpReply::text(
                503,
                "Cluster has no leader, can not reinitialize",
            ));
            return;
        };
        if leader == self.cfg.name {
            let _ = reply.send(OpReply::text(503, "I am the leader, can not reinitialize"));
            return;
        }
        let _ = reply.send(OpReply::text(200, "reinitialize started"));
        info!(force, from = %leader, "reinitializing this replica");
        self.stop_postgres(StopMode::Fast, Duration::from_secs(60))
            .await;
        self.following = None;
        if let Err(e) = self.pg.wipe_data_dir() {
            warn!(error = %e, "cannot remove the data directory");
            return;
        }
        let outcome = self.clone_from(Some(&cluster), &leader).await;
        if !matches!(outcome, PlanOutcome::Done) {
            warn!("reinitialize: cloning from {leader} failed");
        }
    }
}

fn command_abandoned(command: &Command) -> bool {
    match command {
        Command::Failover { reply, .. } => reply.is_closed(),
        Command::CancelSwitchover { reply }
        | Command::Config { reply, .. }
        | Command::Reload { reply }
        | Command::Restart { reply, .. }
        | Command::CancelRestart { reply }
        | Command::Reinitialize { reply, .. } => reply.is_closed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_whose_client_left_is_abandoned() {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let command = Command::Reload { reply };
        assert!(!command_abandoned(&command));
        drop(rx);
        assert!(command_abandoned(&command));
    }
}
