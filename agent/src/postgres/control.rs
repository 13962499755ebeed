//! The edge between the HA loop and Postgres: everything the loop asks of its database, as one
//! trait. [`Postgres`] is the real one (processes, files, SQL over the Unix socket); a simulated
//! one lets the loop run without any of that.

use std::time::Duration;

use async_trait::async_trait;

use super::{
    ConfChange, ConfRole, ConnTarget, ControlData, PgError, PgObservation, PgSettings, Postgres,
    RemoteTimeline, RewindOutcome, StopMode, TimelineSwitch,
};

/// What the HA loop does to and asks of its Postgres.
#[async_trait(?Send)]
pub trait PostgresControl {
    fn settings(&self) -> &PgSettings;
    /// Is a postmaster running for this data directory (ours or adopted)?
    fn is_running(&mut self) -> bool;
    fn postmaster_pid(&mut self) -> Option<i32>;
    fn is_valid_data_dir(&self) -> bool;
    fn wipe_data_dir(&self) -> Result<(), PgError>;
    /// Render the configuration files for `role`; what changed and whether a restart is needed.
    fn write_config(&self, role: ConfRole) -> Result<ConfChange, PgError>;
    fn reload(&mut self) -> Result<(), PgError>;
    fn set_parameters(
        &mut self,
        parameters: serde_json::Map<String, serde_json::Value>,
        pg_hba: Vec<String>,
    );
    fn synchronous_standby_names(&self) -> Option<&str>;
    /// Choose `synchronous_standby_names` (None: as configured); true when it changed.
    fn set_synchronous_standby_names(&mut self, names: Option<String>) -> bool;
    fn adopt_rendered_synchronous_standby_names(&mut self) -> Option<&str>;
    /// Connection settings for `database` of the local server.
    fn local_db_config(&self, database: &str) -> tokio_postgres::Config;
    /// Ask the postmaster to shut down without waiting; the pid asked, None when nothing runs.
    fn request_stop(&mut self, mode: StopMode) -> Result<Option<i32>, PgError>;

    async fn observe(&mut self) -> PgObservation;
    async fn controldata(&self) -> Result<ControlData, PgError>;
    async fn checkpoint(&mut self) -> Result<(), PgError>;
    async fn initdb(&self) -> Result<(), PgError>;
    async fn post_bootstrap(&mut self) -> Result<(), PgError>;
    async fn basebackup(&self, from: &ConnTarget) -> Result<(), PgError>;
    async fn rewind(&mut self, from: &ConnTarget) -> Result<RewindOutcome, PgError>;
    async fn start(&mut self) -> Result<(), PgError>;
    async fn spawn_postmaster(&mut self) -> Result<(), PgError>;
    async fn wait_until_ready(&mut self, timeout: Duration) -> Result<(), PgError>;
    async fn stop(&mut self, mode: StopMode, timeout: Duration) -> Result<(), PgError>;
    /// Has the postmaster exited within `timeout`? True when nothing runs.
    async fn wait_exit_within(&mut self, timeout: Duration) -> bool;
    /// Wait until the postmaster exits (forever when none runs).
    async fn wait_exit(&mut self);
    async fn promote(&mut self) -> Result<(), PgError>;
    async fn adopt_running(&mut self) -> Result<Option<i32>, PgError>;
    async fn timeline_history(&mut self, timeline: u32) -> Result<Vec<TimelineSwitch>, PgError>;
    async fn remote_timeline_history(&self, target: &ConnTarget)
        -> Result<RemoteTimeline, PgError>;
    /// Create the `wanted` physical slots; drop other inactive physical slots unless `keep`.
    async fn ensure_physical_slots_keeping(
        &mut self,
        wanted: &[String],
        keep: &dyn for<'s> Fn(&'s str) -> bool,
    ) -> Result<(), PgError>;
}

#[async_trait(?Send)]
impl PostgresControl for Postgres {
    fn settings(&self) -> &PgSettings {
        Postgres::settings(self)
    }
    fn is_running(&mut self) -> bool {
        Postgres::is_running(self)
    }
    fn postmaster_pid(&mut self) -> Option<i32> {
        Postgres::postmaster_pid(self)
    }
    fn is_valid_data_dir(&self) -> bool {
        Postgres::is_valid_data_dir(self)
    }
    fn wipe_data_dir(&self) -> Result<(), PgError> {
        Postgres::wipe_data_dir(self)
    }
    fn write_config(&self, role: ConfRole) -> Result<ConfChange, PgError> {
        Postgres::write_config(self, role)
    }
    fn reload(&mut self) -> Result<(), PgError> {
        Postgres::reload(self)
    }
    fn set_parameters(
        &mut self,
        parameters: serde_json::Map<String, serde_json::Value>,
        pg_hba: Vec<String>,
    ) {
        Postgres::set_parameters(self, parameters, pg_hba)
    }
    fn synchronous_standby_names(&self) -> Option<&str> {
        Postgres::synchronous_standby_names(self)
    }
    fn set_synchronous_standby_names(&mut self, names: Option<String>) -> bool {
        Postgres::set_synchronous_standby_names(self, names)
    }
    fn adopt_rendered_synchronous_standby_names(&mut self) -> Option<&str> {
        Postgres::adopt_rendered_synchronous_standby_names(self)
    }
    fn local_db_config(&self, database: &str) -> tokio_postgres::Config {
        Postgres::local_db_config(self, database)
    }
    fn request_stop(&mut self, mode: StopMode) -> Result<Option<i32>, PgError> {
        Postgres::request_stop(self, mode)
    }

    async fn observe(&mut self) -> PgObservation {
        Postgres::observe(self).await
    }
    async fn controldata(&self) -> Result<ControlData, PgError> {
        Postgres::controldata(self).await
    }
    async fn checkpoint(&mut self) -> Result<(), PgError> {
        Postgres::checkpoint(self).await
    }
    async fn initdb(&self) -> Result<(), PgError> {
        Postgres::initdb(self).await
    }
    async fn post_bootstrap(&mut self) -> Result<(), PgError> {
        Postgres::post_bootstrap(self).await
    }
    async fn basebackup(&self, from: &ConnTarget) -> Result<(), PgError> {
        Postgres::basebackup(self, from).await
    }
    async fn rewind(&mut self, from: &ConnTarget) -> Result<RewindOutcome, PgError> {
        Postgres::rewind(self, from).await
    }
    async fn start(&mut self) -> Result<(), PgError> {
        Postgres::start(self).await
    }
    async fn spawn_postmaster(&mut self) -> Result<(), PgError> {
        Postgres::spawn_postmaster(self).await
    }
    async fn wait_until_ready(&mut self, timeout: Duration) -> Result<(), PgError> {
        Postgres::wait_until_ready(self, timeout).await
    }
    async fn stop(&mut self, mode: StopMode, timeout: Duration) -> Result<(), PgError> {
        Postgres::stop(self, mode, timeout).await
    }
    async fn wait_exit_within(&mut self, timeout: Duration) -> bool {
        Postgres::wait_exit_within(self, timeout).await
    }
    async fn wait_exit(&mut self) {
        Postgres::wait_exit(self).await
    }
    async fn promote(&mut self) -> Result<(), PgError> {
        Postgres::promote(self).await
    }
    async fn adopt_running(&mut self) -> Result<Option<i32>, PgError> {
        Postgres::adopt_running(self).await
    }
    async fn timeline_history(&mut self, timeline: u32) -> Result<Vec<TimelineSwitch>, PgError> {
        Postgres::timeline_history(self, timeline).await
    }
    async fn remote_timeline_history(
        &self,
        target: &ConnTarget,
    ) -> Result<RemoteTimeline, PgError> {
        Postgres::remote_timeline_history(self, target).await
    }
    async fn ensure_physical_slots_keeping(
        &mut self,
        wanted: &[String],
        keep: &dyn for<'s> Fn(&'s str) -> bool,
    ) -> Result<(), PgError> {
        Postgres::ensure_physical_slots_keeping(self, wanted, |slot: &str| keep(slot)).await
    }
}
