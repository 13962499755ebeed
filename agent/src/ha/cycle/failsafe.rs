//! Failsafe mode: with the DCS unreachable — down, stalled, throttling, failing
//! — a primary keeps running for as long as every member of the failsafe topology accepts it as
//! the leader over `POST /failsafe`.
//!
//! The lease argument: a round started at `S` in which every listed member answered `Accepted`
//! extends the local lock deadline to `S + ttl`. Each of those members received the call after
//! `S` and does not race for the lock for `ttl` from its receipt; members not listed are out of
//! the race while the topology is non-empty. So nobody can take over before `S + ttl`, and the
//! lease guard still stops Postgres before that deadline when the next round fails.
//!
//! While the primary depends on rounds, the DCS calls of a cycle are cut short so a round always
//! fits before the lease guard fires, however slowly the DCS answers.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Agent, PlanOutcome};
use dcs::Role;

/// A whole round: every member in parallel, each with one retry after a failed attempt. 4.5 s
/// (2 s per attempt) from ttl 15 up; shorter with a shorter ttl, so a round and a DCS call still
/// fit between two lease deadlines.
fn round_budget(ttl: u32) -> Duration {
    Duration::from_secs_f64((0.3 * f64::from(ttl)).clamp(1.5, 4.5))
}

/// Time one member has to answer one attempt: two attempts fit in a round.
fn call_timeout(round: Duration) -> Duration {
    round.mul_f64(4.0 / 9.0)
}
/// The shortest DCS call worth making before a round; below that the DCS counts as unreachable.
const MIN_DCS_CALL: Duration = Duration::from_millis(300);

/// `http://host:port/patroni` → `http://host:port/failsafe`.
pub(super) fn failsafe_url(api_url: &str) -> String {
    let base = api_url.trim_end_matches('/');
    let base = base.strip_suffix("/patroni").unwrap_or(base);
    format!("{base}/failsafe")
}

impl Agent {
    /// A running primary in failsafe mode: its survival without the DCS depends on rounds.
    fn relies_on_failsafe(&self) -> bool {
        self.dynamic.failsafe_mode && self.pg_expected_up && self.role == Role::Primary
    }

    /// How long a DCS call may take now: its usual budget, cut so that a failsafe round still
    /// fits before the lease guard fires. `None`: no time is left for a DCS call at all.
    pub(super) fn dcs_call_budget(&self, usual: Duration) -> Option<Duration> {
        if !self.relies_on_failsafe() {
            return Some(usual);
        }
        let Some(guard) = self.guard_instant() else {
            return Some(usual);
        };
        let left = guard
            .saturating_duration_since(Instant::now())
            .saturating_sub(round_budget(self.dynamic.ttl));
        (left >= MIN_DCS_CALL).then(|| usual.min(left))
    }

    /// The longest wait before the next cycle that still leaves room for a DCS call and a round
    /// before the lease guard fires.
    pub(super) fn failsafe_wait_cap(&self) -> Option<Duration> {
        if !self.relies_on_failsafe() {
            return None;
        }
        let guard = self.guard_instant()?;
        Some(
            guard
                .saturating_duration_since(Instant::now())
                .saturating_sub(round_budget(self.dynamic.ttl) + MIN_DCS_CALL * 3),
        )
    }

    /// The member that called `POST /failsafe` here less than ttl ago (the loop's input: do not
    /// race for the lock while it says it leads).
    pub(super) fn recent_failsafe_leader(&self) -> Option<String> {
        let call = self.failsafe_inbox.last()?;
        let ttl = Duration::from_secs(u64::from(self.dynamic.ttl));
        (call.received.elapsed() < ttl && call.leader != self.cfg.name).then_some(call.leader)
    }

    /// The one place a failsafe round moves the lease: every listed member accepted a call made
    /// after `round_started`, so none of them races before `round_started + ttl`.
    fn extend_lock_deadline_after_failsafe_round(&mut self, round_started: Instant) {
        let deadline = round_started + Duration::from_secs(u64::from(self.dynamic.ttl));
        if self.lock_deadline.is_none_or(|d| d < deadline) {
            self.lock_deadline = Some(deadline);
        }
        // Like a renew: the fence moves to the new deadline and the watchdog is kicked.
        self.lock_confirmed();
    }

    /// `POST /failsafe` to every other member of the topology, in parallel; all must accept.
    pub(super) async fn check_failsafe_members(
        &mut self,
        members: &[(String, String)],
    ) -> PlanOutcome {
        let round_started = Instant::now();
        let budget = round_budget(self.dynamic.ttl);
        let attempt_timeout = call_timeout(budget);
        let body = json!({
            "name": self.cfg.name,
            "conn_url": self.cfg.conn_url(),
            "api_url": self.cfg.api_url(),
            "slots": Value::Object(Default::default()),
        });
        let calls = members.iter().map(|(name, api_url)| {
            let http = self.http.clone();
            let url = failsafe_url(api_url);
            let body = body.clone();
            async move {
                let mut last = String::new();
                for _attempt in 0..2 {
                    let sent = http
                        .post(&url)
                        .json(&body)
                        .timeout(attempt_timeout)
                        .send()
                        .await;
                    match sent {
                        Ok(resp) if resp.status().as_u16() == 200 => return Ok(()),
                        // A definite refusal: another answer will not differ.
                        Ok(resp) => {
                            let code = resp.status().as_u16();
                            let text = resp.text().await.unwrap_or_default();
                            return Err(format!("{name}: {code} {}", text.trim()));
                        }
                        Err(e) => last = format!("{name}: {e}"),
                    }
                }
                Err(last)
            }
        });
        let answers = tokio::time::timeout(budget, futures_util::future::join_all(calls)).await;
        let refusals: Vec<String> = match answers {
            Ok(results) => results.into_iter().filter_map(Result::err).collect(),
            Err(_) => vec!["the members did not all answer in time".into()],
        };
        if refusals.is_empty() {
            self.extend_lock_deadline_after_failsafe_round(round_started);
            debug!(
                members = members.len(),
                "every member of the failsafe topology accepted"
            );
            PlanOutcome::FailsafeRound(true)
        } else {
            warn!(refusals = %refusals.join("; "), "failsafe: not every member accepted this primary");
            PlanOutcome::FailsafeRound(false)
        }
    }

    /// Log the start and end of a period kept alive by failsafe rounds, once each.
    pub(super) fn set_failsafe_active(&mut self, active: bool) {
        if active != self.failsafe_active {
            if active {
                warn!("failsafe mode is active: running as the primary without the DCS");
            } else {
                info!("failsafe mode is no longer active");
            }
        }
        self.failsafe_active = active;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round, then a DCS call, then the next round's start must fit between a round and the
    /// lease guard: `ttl − safety margin` (margin = clamp(0.2·ttl, 1, 5)).
    #[test]
    fn a_round_and_a_dcs_call_fit_within_a_ttl() {
        for ttl in [5u32, 8, 10, 15, 20, 30, 60] {
            let margin = (f64::from(ttl) * 0.2).clamp(1.0, 5.0);
            let round = round_budget(ttl).as_secs_f64();
            let room = f64::from(ttl) - margin - round - 3.0 * MIN_DCS_CALL.as_secs_f64();
            assert!(room > 0.5, "ttl {ttl}: {room:.2} s left between rounds");
            assert!(call_timeout(round_budget(ttl)) * 2 < round_budget(ttl));
        }
        assert_eq!(round_budget(30), Duration::from_millis(4500));
        assert_eq!(call_timeout(round_budget(30)), Duration::from_secs(2));
    }

    #[test]
    fn url_of_the_failsafe_endpoint() {
        assert_eq!(
            failsafe_url("http://10.0.0.5:8008/patroni"),
            "http://10.0.0.5:8008/failsafe"
        );
        assert_eq!(failsafe_url("https://h:8008/"), "https://h:8008/failsafe");
    }
}
