//! A background sampler of every member's role, for the "never two primaries" check during
//! failovers, switchovers and DCS outages.
//!
//! **What counts as a primary.** A sample says a member *accepts writes* when its Postgres
//! answered, on the sampler's own session,
//! `SELECT pg_is_in_recovery(), current_setting('transaction_read_only')` with `false` and
//! `off`: a server out of recovery whose new transactions are read-write. A member whose
//! Postgres is down, refuses the connection, is shutting down, is in recovery, runs read-only
//! (e.g. fenced with `default_transaction_read_only`), or does not answer within
//! `SAMPLE_TIMEOUT` does not count: it cannot acknowledge a write in that state. The DCS and the
//! REST API play no part — only what a client could do with the server matters.
//!
//! **When two primaries overlap.** Each member has its own sampling task, so a slow member
//! never delays the others. A run of consecutive "accepts writes" answers from one member spans
//! `[first answer, last answer]`; the server evaluated each query less than one loopback round
//! trip before its answer arrived, so the member accepted writes over that span (unless it
//! flipped back and forth between two samples, which a demotion or a promotion does not do). `assert_never_two_primaries` fails if the spans of two members intersect. The
//! resolution is one sampling period plus one query: an overlap shorter than that may go
//! unseen, a longer one cannot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::member::Member;

/// Pause between two samples of one member.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on one connection attempt or one query of the sampler.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long `start` waits for each member's first answer.
pub const READY_DEADLINE: Duration = Duration::from_secs(10);

const ROLE_QUERY: &str = "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')";

/// One answer (or failure to answer) of one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleSample {
    /// When the answer (or the error) arrived.
    pub at: Instant,
    /// Out of recovery and read-write: it could acknowledge a write.
    pub accepts_writes: bool,
    /// Postgres answered at all (false: down, refusing, shutting down or too slow).
    pub answered: bool,
}

/// A span during which one member certainly accepted writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimarySpan {
    pub from: Instant,
    pub to: Instant,
    pub samples: usize,
}

/// Two members that accepted writes at the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub first: String,
    pub second: String,
    pub from: Instant,
    pub to: Instant,
}

struct Timeline {
    name: String,
    samples: Arc<Mutex<Vec<RoleSample>>>,
}

/// Samples every member's role every `SAMPLE_INTERVAL` until stopped or dropped.
pub struct RoleSampler {
    started: Instant,
    timelines: Vec<Timeline>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RoleSampler {
    /// Start one sampling task per member and wait until each has answered once, so the record
    /// covers whatever the test does next. Panics if a member does not answer within
    /// `READY_DEADLINE`.
    pub async fn start(members: &[&Member]) -> RoleSampler {
        let sampler = Self::spawn(members);
        for timeline in &sampler.timelines {
            let answered = crate::poll_until(READY_DEADLINE, || async {
                lock(&timeline.samples)
                    .iter()
                    .any(|s| s.answered)
                    .then_some(())
            })
            .await;
            assert!(
                answered.is_some(),
                "{}'s Postgres did not answer the role sampler within {READY_DEADLINE:?}",
                timeline.name
            );
        }
        sampler
    }

    fn spawn(members: &[&Member]) -> RoleSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let mut timelines = Vec::new();
        let mut tasks = Vec::new();
        for member in members {
            let samples = Arc::new(Mutex::new(Vec::new()));
            let mut config = member.pg_config();
            config
                .application_name("regent-tests-roles")
                .connect_timeout(SAMPLE_TIMEOUT);
            tasks.push(tokio::spawn(sample_loop(
                config,
                stop.clone(),
                samples.clone(),
            )));
            timelines.push(Timeline {
                name: member.name().to_string(),
                samples,
            });
        }
        RoleSampler {
            started: Instant::now(),
            timelines,
            stop,
            tasks,
        }
    }

    /// Every sample of `member` so far, oldest first.
    pub fn samples(&self, member: &str) -> Vec<RoleSample> {
        self.timelines
            .iter()
            .find(|t| t.name == member)
            .map(|t| lock(&t.samples).clone())
            .unwrap_or_else(|| panic!("the role sampler does not watch {member}"))
    }

    /// The spans during which `member` certainly accepted writes.
    pub fn primary_spans(&self, member: &str) -> Vec<PrimarySpan> {
        primary_spans(&self.samples(member))
    }

    /// Every pair of members whose primary spans intersect.
    pub fn overlaps(&self) -> Vec<Overlap> {
        let spans: Vec<(String, Vec<PrimarySpan>)> = self
            .timelines
            .iter()
            .map(|t| (t.name.clone(), primary_spans(&lock(&t.samples))))
            .collect();
        overlaps(&spans)
    }

    /// The longest time between two consecutive samples of any member (how coarse the record
    /// is; a slow query or connection attempt widens it).
    pub fn widest_gap(&self) -> Duration {
        self.timelines
            .iter()
            .flat_map(|t| {
                let samples = lock(&t.samples);
                samples
                    .windows(2)
                    .map(|w| w[1].at - w[0].at)
                    .collect::<Vec<_>>()
            })
            .max()
            .unwrap_or_default()
    }

    /// One line per member: sample count and primary spans relative to the start.
    pub fn summary(&self) -> String {
        let since = |t: Instant| (t - self.started).as_secs_f64();
        let mut lines = Vec::new();
        for timeline in &self.timelines {
            let samples = lock(&timeline.samples);
            let spans: Vec<String> = primary_spans(&samples)
                .iter()
                .map(|s| format!("+{:.3}..+{:.3} s", since(s.from), since(s.to)))
                .collect();
            lines.push(format!(
                "{}: {} samples, {} answered, primary {}",
                timeline.name,
                samples.len(),
                samples.iter().filter(|s| s.answered).count(),
                if spans.is_empty() {
                    "never".to_string()
                } else {
                    spans.join(", ")
                }
            ));
        }
        format!(
            "roles sampled at most every {} ms (widest gap {:.3} s): {}",
            SAMPLE_INTERVAL.as_millis(),
            self.widest_gap().as_secs_f64(),
            lines.join("; ")
        )
    }

    /// Fail if two members accepted writes at the same time at any point so far, or if the
    /// record cannot show it: some member was never sampled, or nobody was ever seen primary.
    pub fn assert_never_two_primaries(&self) {
        for timeline in &self.timelines {
            assert!(
                !lock(&timeline.samples).is_empty(),
                "the role sampler never sampled {}: {}",
                timeline.name,
                self.summary()
            );
        }
        assert!(
            self.timelines
                .iter()
                .any(|t| !primary_spans(&lock(&t.samples)).is_empty()),
            "the role sampler never saw a primary, so it proves nothing: {}",
            self.summary()
        );
        let overlaps = self.overlaps();
        let since = |t: Instant| (t - self.started).as_secs_f64();
        let described: Vec<String> = overlaps
            .iter()
            .map(|o| {
                format!(
                    "{} and {} both accepted writes from +{:.3} s to +{:.3} s",
                    o.first,
                    o.second,
                    since(o.from),
                    since(o.to)
                )
            })
            .collect();
        assert!(
            overlaps.is_empty(),
            "two primaries at once: {}; {}",
            described.join("; "),
            self.summary()
        );
    }

    /// Stop sampling (the samples stay readable).
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for RoleSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn sample_loop(
    config: tokio_postgres::Config,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<RoleSample>>>,
) {
    let mut client: Option<Client> = None;
    let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        interval.tick().await;
        let outcome = sample_once(&config, &mut client).await;
        if outcome.is_err() {
            // Whatever failed, the next sample starts from a fresh session.
            client = None;
        }
        let sample = RoleSample {
            at: Instant::now(),
            accepts_writes: matches!(outcome, Ok(true)),
            answered: outcome.is_ok(),
        };
        lock(&samples).push(sample);
    }
}

/// Does the member accept writes right now? Connects first if needed.
async fn sample_once(config: &tokio_postgres::Config, client: &mut Option<Client>) -> Result<bool> {
    if client.as_ref().is_none_or(Client::is_closed) {
        let (connected, connection) = tokio::time::timeout(SAMPLE_TIMEOUT, config.connect(NoTls))
            .await
            .map_err(|_| anyhow!("connect timed out"))?
            .context("connect")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *client = Some(connected);
    }
    let session = client.as_ref().context("no session")?;
    let row = tokio::time::timeout(SAMPLE_TIMEOUT, session.query_one(ROLE_QUERY, &[]))
        .await
        .map_err(|_| anyhow!("role query timed out"))?
        .context("role query")?;
    let in_recovery: bool = row.try_get(0)?;
    let read_only: String = row.try_get(1)?;
    Ok(!in_recovery && read_only == "off")
}

/// Runs of consecutive "accepts writes" samples, each from its first to its last sample.
pub fn primary_spans(samples: &[RoleSample]) -> Vec<PrimarySpan> {
    let mut spans: Vec<PrimarySpan> = Vec::new();
    let mut current: Option<PrimarySpan> = None;
    for sample in samples {
        match (&mut current, sample.accepts_writes) {
            (Some(span), true) => {
                span.to = sample.at;
                span.samples += 1;
            }
            (None, true) => {
                current = Some(PrimarySpan {
                    from: sample.at,
                    to: sample.at,
                    samples: 1,
                })
            }
            (Some(span), false) => {
                spans.push(*span);
                current = None;
            }
            (None, false) => {}
        }
    }
    spans.extend(current);
    spans
}

/// Intersections of the spans of different members.
pub fn overlaps(members: &[(String, Vec<PrimarySpan>)]) -> Vec<Overlap> {
    let mut found = Vec::new();
    for (i, (first, first_spans)) in members.iter().enumerate() {
        for (second, second_spans) in &members[i + 1..] {
            for a in first_spans {
                for b in second_spans {
                    let from = a.from.max(b.from);
                    let to = a.to.min(b.to);
                    if from <= to {
                        found.push(Overlap {
                            first: first.clone(),
                            second: second.clone(),
                            from,
                            to,
                        });
                    }
                }
            }
        }
    }
    found
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(t0: Instant, states: &[(u64, bool)]) -> Vec<RoleSample> {
        states
            .iter()
            .map(|&(ms, primary)| RoleSample {
                at: t0 + Duration::from_millis(ms),
                accepts_writes: primary,
                answered: true,
            })
            .collect()
    }

    #[test]
    fn a_clean_handover_has_no_overlap() {
        let t0 = Instant::now();
        let old = timeline(t0, &[(0, true), (20, true), (40, false), (60, false)]);
        let new = timeline(t0, &[(10, false), (30, false), (50, true), (70, true)]);
        let spans = vec![
            ("old".to_string(), primary_spans(&old)),
            ("new".to_string(), primary_spans(&new)),
        ];
        assert_eq!(spans[0].1.len(), 1);
        assert_eq!(spans[0].1[0].samples, 2);
        assert!(overlaps(&spans).is_empty());
    }

    #[test]
    fn interleaved_primaries_overlap() {
        let t0 = Instant::now();
        let old = timeline(t0, &[(0, true), (20, true), (40, true), (60, false)]);
        let new = timeline(t0, &[(10, false), (30, true), (50, true)]);
        let found = overlaps(&[
            ("old".to_string(), primary_spans(&old)),
            ("new".to_string(), primary_spans(&new)),
        ]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].from, t0 + Duration::from_millis(30));
        assert_eq!(found[0].to, t0 + Duration::from_millis(40));
    }

    #[test]
    fn a_member_primary_again_later_is_a_second_span() {
        let t0 = Instant::now();
        let samples = timeline(t0, &[(0, true), (20, false), (40, true)]);
        let spans = primary_spans(&samples);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[1].from, t0 + Duration::from_millis(40));
    }
}
