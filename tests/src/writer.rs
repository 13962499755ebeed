//! A client that keeps writing through a multi-host connection string, as an application behind
//! `target_session_attrs=read-write` would, and records what was acknowledged and when it failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokio::task::JoinHandle;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::{Client, NoTls};

use crate::config::{SUPERUSER, SUPERUSER_PASSWORD};
use crate::member::Member;

/// Table the writer inserts into.
pub const WRITER_TABLE: &str = "regent_writer";
/// Pause between two writes.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(20);
/// Per-host connect timeout of the multi-host connection.
const HOST_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on one insert: a write that hangs longer counts as failed.
const INSERT_TIMEOUT: Duration = Duration::from_secs(2);

/// libpq-style multi-host settings over `members`: every host in order, read-write sessions only.
pub fn multi_host_config(members: &[&Member]) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    for member in members {
        config.host("127.0.0.1").port(member.pg_port());
    }
    config
        .user(SUPERUSER)
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres")
        .application_name("regent-tests-writer")
        .connect_timeout(HOST_CONNECT_TIMEOUT)
        .target_session_attrs(TargetSessionAttrs::ReadWrite);
    config
}

async fn connect(config: &tokio_postgres::Config, hosts: usize) -> Result<Client> {
    let overall = HOST_CONNECT_TIMEOUT * (hosts as u32 + 1);
    let (client, connection) = tokio::time::timeout(overall, config.connect(NoTls))
        .await
        .map_err(|_| anyhow!("multi-host connect timed out after {overall:?}"))?
        .context("multi-host connect (read-write)")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

#[derive(Debug, Default)]
struct Record {
    acked: Vec<i64>,
    ack_times: Vec<Instant>,
    failures: Vec<Instant>,
    attempts: u64,
    last_error: Option<String>,
}

/// What the writer saw between `started` and `stopped`.
#[derive(Debug, Clone)]
pub struct WriterReport {
    pub started: Instant,
    pub stopped: Instant,
    /// Ids whose insert was acknowledged (committed), in order.
    pub acked: Vec<i64>,
    /// When each acknowledgement arrived (same order as `acked`).
    pub ack_times: Vec<Instant>,
    /// When each failed attempt (connect or insert) ended.
    pub failures: Vec<Instant>,
    pub attempts: u64,
    pub last_error: Option<String>,
}

impl WriterReport {
    /// Periods with no acknowledged write that contain at least one failure: from the last
    /// acknowledgement before the failures (or the start) to the next one (or the stop).
    pub fn unavailable_windows(&self) -> Vec<(Instant, Instant)> {
        let mut windows = Vec::new();
        let mut window_start = self.started;
        let mut failures = self.failures.iter().peekable();
        for &ack in &self.ack_times {
            let mut failed = false;
            while let Some(&&failure) = failures.peek() {
                if failure > ack {
                    break;
                }
                failed = true;
                failures.next();
            }
            if failed {
                windows.push((window_start, ack));
            }
            window_start = ack;
        }
        if failures.next().is_some() {
            windows.push((window_start, self.stopped));
        }
        windows
    }

    /// The longest of `unavailable_windows` (zero if writes never failed).
    pub fn longest_unavailability(&self) -> Duration {
        self.unavailable_windows()
            .iter()
            .map(|(from, to)| *to - *from)
            .max()
            .unwrap_or_default()
    }

    /// The longest time without an acknowledgement between `from` and `to`: between two
    /// consecutive acknowledgements, or from `from` to the first and from the last to `to`.
    /// A write that stalls (e.g. a commit waiting for a synchronous standby) shows here even when
    /// it does not fail.
    pub fn longest_ack_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut previous = from;
        let mut longest = Duration::ZERO;
        for &ack in self.ack_times.iter().filter(|&&a| a >= from && a <= to) {
            longest = longest.max(ack - previous);
            previous = ack;
        }
        longest.max(to.saturating_duration_since(previous))
    }

    /// Failed attempts between `from` and `to`.
    pub fn failures_between(&self, from: Instant, to: Instant) -> usize {
        self.failures
            .iter()
            .filter(|&&f| f >= from && f <= to)
            .count()
    }

    /// First acknowledgement at or after `t`.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.ack_times.iter().copied().find(|&ack| ack >= t)
    }

    /// First failure at or after `t`.
    pub fn first_failure_after(&self, t: Instant) -> Option<Instant> {
        self.failures.iter().copied().find(|&failure| failure >= t)
    }

    /// One line for test output.
    pub fn summary(&self) -> String {
        format!(
            "writer: {} attempts, {} acknowledged, {} failed, longest unavailability {:.3} s \
             over {:.1} s{}",
            self.attempts,
            self.acked.len(),
            self.failures.len(),
            self.longest_unavailability().as_secs_f64(),
            (self.stopped - self.started).as_secs_f64(),
            self.last_error
                .as_ref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        )
    }
}

/// Writes row after row (every `WRITE_INTERVAL`) into `WRITER_TABLE` through whichever member
/// accepts read-write sessions; reconnects after any error.
pub struct Writer {
    started: Instant,
    /// Set to end the loop; also set on drop so an abandoned writer stops.
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Create the table (retrying until `setup_deadline`, as the cluster may still be electing)
    /// and start writing.
    pub async fn start(members: &[&Member], setup_deadline: Duration) -> Writer {
        let config = multi_host_config(members);
        let hosts = members.len();
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {WRITER_TABLE} (id bigint PRIMARY KEY, \
             written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        );
        crate::wait_until_ok(
            &format!("create {WRITER_TABLE} on a read-write member"),
            setup_deadline,
            || {
                let config = config.clone();
                let create = create.clone();
                async move {
                    let client = connect(&config, hosts).await?;
                    client
                        .batch_execute(&create)
                        .await
                        .context("create writer table")
                }
            },
        )
        .await;

        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Record::default()));
        let started = Instant::now();
        let task = tokio::spawn(write_loop(config, hosts, stop.clone(), record.clone()));
        Writer {
            started,
            stop,
            record,
            task,
        }
    }

    /// Number of writes acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acked
            .len()
    }

    /// Wait until at least `count` writes are acknowledged; panics (with the count reached)
    /// after `deadline`.
    pub async fn wait_for_acks(&self, count: usize, deadline: Duration) {
        crate::wait_until_ok(
            &format!("{count} acknowledged writes"),
            deadline,
            || async {
                let acked = self.acked_count();
                if acked >= count {
                    Ok(())
                } else {
                    Err(anyhow!("{acked} acknowledged"))
                }
            },
        )
        .await;
    }

    /// Time of the latest acknowledgement so far.
    pub fn last_ack(&self) -> Option<Instant> {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ack_times
            .last()
            .copied()
    }

    /// The record so far, without stopping.
    pub fn snapshot(&self) -> WriterReport {
        let record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        WriterReport {
            started: self.started,
            stopped: Instant::now(),
            acked: record.acked.clone(),
            ack_times: record.ack_times.clone(),
            failures: record.failures.clone(),
            attempts: record.attempts,
            last_error: record.last_error.clone(),
        }
    }

    /// Stop writing (the write in flight finishes first) and return the record.
    pub async fn stop(mut self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = (&mut self.task).await {
            panic!("writer task failed: {e}");
        }
        self.snapshot()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

async fn write_loop(
    config: tokio_postgres::Config,
    hosts: usize,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
) {
    let insert = format!("INSERT INTO {WRITER_TABLE} (id) VALUES ($1)");
    let mut interval = tokio::time::interval(WRITE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<Client> = None;
    let mut next_id: i64 = 1;
    while !stop.load(Ordering::SeqCst) {
        interval.tick().await;
        let id = next_id;
        next_id += 1;
        let outcome: Result<()> = async {
            let usable = matches!(&client, Some(c) if !c.is_closed());
            if !usable {
                client = Some(connect(&config, hosts).await?);
            }
            let Some(connected) = client.as_ref() else {
                return Err(anyhow!("no connection"));
            };
            tokio::time::timeout(INSERT_TIMEOUT, connected.execute(&insert, &[&id]))
                .await
                .map_err(|_| anyhow!("insert timed out after {INSERT_TIMEOUT:?}"))?
                .context("insert")?;
            Ok(())
        }
        .await;
        let now = Instant::now();
        let mut record = record.lock().unwrap_or_else(|p| p.into_inner());
        record.attempts += 1;
        match outcome {
            Ok(()) => {
                record.acked.push(id);
                record.ack_times.push(now);
            }
            Err(e) => {
                // The server may have switched role under us: start over with a new session.
                client = None;
                record.failures.push(now);
                record.last_error = Some(format!("{e:#}"));
            }
        }
    }
}

/// All ids in `WRITER_TABLE` as seen by `client`, ascending.
pub async fn written_ids(client: &Client) -> Result<Vec<i64>> {
    let sql = format!("SELECT id FROM {WRITER_TABLE} ORDER BY id");
    let rows = tokio::time::timeout(Duration::from_secs(10), client.query(&sql, &[]))
        .await
        .map_err(|_| anyhow!("select from {WRITER_TABLE} timed out"))?
        .with_context(|| format!("select from {WRITER_TABLE}"))?;
    rows.iter()
        .map(|row| row.try_get(0).context("writer id column"))
        .collect()
}

/// Panics unless every id in `acked` is in the writer table on `member`: no acknowledged write
/// was lost.
pub async fn assert_acked_rows_on(member: &Member, acked: &[i64]) {
    let name = member.name();
    let client = (member.pg_client().await).unwrap_or_else(|e| panic!("connect to {name}: {e:#}"));
    let present = (written_ids(&client).await).unwrap_or_else(|e| panic!("rows on {name}: {e:#}"));
    let lost = missing_ids(acked, &present);
    assert!(
        lost.is_empty(),
        "acknowledged rows lost on {name}: {lost:?}"
    );
}

/// Acknowledged ids missing from `present` (both ascending or not; result ascending).
pub fn missing_ids(acked: &[i64], present: &[i64]) -> Vec<i64> {
    let present: std::collections::HashSet<i64> = present.iter().copied().collect();
    let mut missing: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect();
    missing.sort_unstable();
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_failures_between_acks() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let report = WriterReport {
            started: t0,
            stopped: at(1000),
            acked: vec![1, 2, 5],
            ack_times: vec![at(10), at(30), at(500)],
            failures: vec![at(50), at(100), at(900)],
            attempts: 6,
            last_error: None,
        };
        assert_eq!(
            report.unavailable_windows(),
            vec![(at(30), at(500)), (at(500), at(1000))]
        );
        assert_eq!(report.longest_unavailability(), Duration::from_millis(500));
        assert_eq!(
            report.longest_ack_gap(at(0), at(600)),
            Duration::from_millis(470)
        );
        assert_eq!(report.failures_between(at(60), at(900)), 2);
        assert_eq!(report.first_ack_after(at(31)), Some(at(500)));
        assert_eq!(report.first_failure_after(at(101)), Some(at(900)));
        assert_eq!(missing_ids(&[1, 2, 5], &[5, 1]), vec![2]);
    }

    #[test]
    fn no_failures_no_windows() {
        let t0 = Instant::now();
        let report = WriterReport {
            started: t0,
            stopped: t0 + Duration::from_secs(1),
            acked: vec![1],
            ack_times: vec![t0],
            failures: vec![],
            attempts: 1,
            last_error: None,
        };
        assert!(report.unavailable_windows().is_empty());
        assert_eq!(report.longest_unavailability(), Duration::ZERO);
    }
}
