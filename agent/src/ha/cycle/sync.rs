//! Synchronous replication, executed: the leader's steps from [`crate::ha::sync_rules`] carried
//! out against Postgres and the DCS after each cycle, and a synchronous standby leaving its duty
//! before it stops.

use std::time::Duration;

use dcs::{Cluster, Role, SyncState};
use tracing::{info, warn};

use super::{Agent, SOON};
use crate::ha::sync_rules::{
    all_chosen_recorded, plan_primary, plan_replica, PrimaryView, SyncSettings, SyncStep,
};

impl Agent {
    pub(super) fn sync_settings(&self) -> SyncSettings {
        SyncSettings {
            enabled: self.dynamic.synchronous_mode && self.dynamic.standby_cluster.is_none(),
            strict: self.dynamic.synchronous_mode_strict,
            node_count: self.dynamic.synchronous_node_count,
            maximum_lag_on_syncnode: self.dynamic.maximum_lag_on_syncnode,
        }
    }

    /// Keep `synchronous_standby_names` and the `sync` object in step (after the cycle's plan).
    pub(super) async fn sync_after_cycle(&mut self, cluster: Option<&Cluster>) {
        let Some(cluster) = cluster else { return };
        if self.leaving_sync && self.pg.is_running() {
            // Back after a restart: available for synchronous duty again.
            self.leaving_sync = false;
        }
        if !self.pg.is_running() {
            self.sync_since_lsn = None;
            return;
        }
        let s = self.sync_settings();
        let leading = self.role == Role::Primary && self.has_lock();
        if !leading {
            self.sync_since_lsn = None;
            if let Some(step) = plan_replica(&s, self.pg.synchronous_standby_names()) {
                self.run_sync_steps(cluster, vec![step]).await;
            }
            return;
        }
        let flush_lsn = self.last_obs.wal_position.unwrap_or(0);
        if self.sync_since_lsn.is_none() && self.pg.synchronous_standby_names().is_some() {
            // At least one cycle after the change, so the reload has taken effect.
            self.sync_since_lsn = Some(flush_lsn);
        }
        let replication = self.last_obs.replication.clone();
        let me = self.cfg.name.clone();
        let standby_names = self.pg.synchronous_standby_names().map(str::to_string);
        let view = PrimaryView {
            me: &me,
            cluster,
            replication: &replication,
            flush_lsn,
            standby_names: standby_names.as_deref(),
            since_lsn: self.sync_since_lsn,
        };
        let steps = plan_primary(&s, &view);
        if !steps.is_empty() || (s.enabled && !all_chosen_recorded(&s, &view)) {
            // Confirm the next step as soon as Postgres shows it, not a loop_wait later.
            self.next_cycle_soon = Some(self.next_cycle_soon.map_or(SOON, |d| d.min(SOON)));
        }
        self.run_sync_steps(cluster, steps).await;
    }

    /// A synchronous standby about to stop or restart: publish `nosync` and
    /// wait, at most 2·loop_wait, until the leader has taken it out of `sync` (and then out of
    /// synchronous_standby_names), so the primary's commits do not stall on it. The tag goes
    /// away at the first cycle with Postgres running again.
    pub(super) async fn leave_sync_duty(&mut self) {
        let me = self.cfg.name.clone();
        let named = |c: &Cluster| c.sync.sync_standby.contains(&me);
        if !self.sync_settings().enabled
            || !self.pg.is_running()
            || !self.last_cluster.as_ref().is_some_and(named)
        {
            return;
        }
        info!("leaving synchronous standby duty before stopping: publishing nosync");
        self.leaving_sync = true;
        self.publish_member().await;
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(2 * u64::from(self.dynamic.loop_wait.max(1)));
        while tokio::time::Instant::now() < deadline {
            let read = tokio::time::timeout_at(deadline, self.dcs.get_cluster()).await;
            if let Ok(Ok(cluster)) = read {
                if !named(&cluster) {
                    info!("released from synchronous standby duty");
                    return;
                }
            }
            tokio::time::sleep(SOON).await;
        }
        warn!("still named as a synchronous standby: stopping anyway");
    }

    async fn run_sync_steps(&mut self, cluster: &Cluster, steps: Vec<SyncStep>) {
        let me = self.cfg.name.clone();
        for step in steps {
            match step {
                SyncStep::WriteSync(names) => {
                    let value = SyncState {
                        leader: Some(me.clone()),
                        sync_standby: names.clone(),
                        quorum: None,
                        version: None,
                    };
                    let version = cluster.sync.version.as_deref();
                    match self.dcs.set_sync_state(&value, version).await {
                        Ok(true) => {
                            info!(sync_standby = ?names, "synchronous standbys recorded in the DCS")
                        }
                        Ok(false) => {
                            info!("the sync state changed meanwhile: retrying next cycle");
                            return;
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot write the sync state");
                            return;
                        }
                    }
                }
                SyncStep::DeleteSync => {
                    match self
                        .dcs
                        .delete_sync_state(cluster.sync.version.as_deref())
                        .await
                    {
                        Ok(true) => info!("synchronous_mode is off: sync state removed"),
                        Ok(false) => return,
                        Err(e) => {
                            warn!(error = %e, "cannot remove the sync state");
                            return;
                        }
                    }
                }
                SyncStep::SetStandbyNames(names) => {
                    if !self.pg.set_synchronous_standby_names(names.clone()) {
                        continue;
                    }
                    self.sync_since_lsn = None;
                    let role = self.current_conf_role();
                    match self.pg.write_config(role) {
                        Ok(change) if change.changed => {
                            info!(synchronous_standby_names = ?names, "synchronous_standby_names changed: reloading");
                            if let Err(e) = self.pg.reload() {
                                warn!(error = %e, "cannot reload Postgres");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            warn!(error = %e, "cannot write the Postgres configuration");
                            // Render again next cycle.
                            self.pg.set_synchronous_standby_names(None);
                            return;
                        }
                    }
                }
            }
        }
    }
}
