//! One module per command. Each writes what it prints to the `out` it is given (stdout when run
//! from the command line), so its output can be tested against a buffer.

pub mod edit_config;
mod flush;
mod history;
mod list;
mod pause;
mod reinit;
mod reload;
pub mod restart;
mod show_config;
mod switchover;
mod version;

use std::io::{IsTerminal, Write};

use super::api::{Answer, Api, ApiError};
use super::context::{connect_dcs, Ctx};
use super::{Command, CtlCli, CtlError, CtlResult, Groups};
use crate::config::Config;

pub(super) async fn run(cli: CtlCli, cfg: Config, groups: Groups) -> CtlResult {
    let dcs = connect_dcs(&cfg).await?;
    let api = Api::new(&cfg, cli.insecure).map_err(CtlError::usage)?;
    let mut stdout = std::io::stdout();
    let out: &mut dyn Write = &mut stdout;
    // A watched listing clears the screen between rounds, on a terminal only.
    let clear_between = std::io::stdout().is_terminal();
    let ctx = Ctx {
        cfg,
        dcs,
        api,
        groups,
    };
    match cli.command {
        Command::List(a) => list::run(&ctx, &a, false, clear_between, out).await,
        Command::Topology(a) => list::run(&ctx, &a, true, clear_between, out).await,
        Command::History { format, .. } => history::run(&ctx, format, out).await,
        Command::ShowConfig { .. } => show_config::run(&ctx, out).await,
        Command::EditConfig { edit, .. } => edit_config::run(&ctx, &edit, out).await,
        Command::Version { member_names, .. } => version::run(&ctx, &member_names, out).await,
        Command::Pause { wait, .. } => pause::run(&ctx, true, wait, out).await,
        Command::Resume { wait, .. } => pause::run(&ctx, false, wait, out).await,
        Command::Switchover {
            leader,
            candidate,
            scheduled,
            force,
            ..
        } => switchover::run(&ctx, true, leader, candidate, scheduled, force, out).await,
        Command::Failover {
            leader,
            candidate,
            force,
            ..
        } => switchover::run(&ctx, leader.is_some(), leader, candidate, None, force, out).await,
        Command::Restart { members, options } => restart::run(&ctx, &members, &options, out).await,
        Command::Reload { members, force } => reload::run(&ctx, &members, force, out).await,
        Command::Reinit {
            member_names,
            force,
            wait,
            ..
        } => reinit::run(&ctx, &member_names, force, wait, out).await,
        Command::Flush {
            mut rest,
            role,
            force,
            ..
        } => {
            let target = rest.pop().unwrap_or_default();
            flush::run(&ctx, &rest, &target, role.as_deref(), force, out).await
        }
    }
}

/// `--scheduled`: `None` for now (no value, empty or `now`), else the time in RFC 3339.
fn parse_scheduled(s: Option<&str>) -> CtlResult<Option<String>> {
    match s.map(str::trim) {
        None | Some("") | Some("now") => Ok(None),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| Some(d.to_rfc3339()))
            .map_err(|e| {
                CtlError::usage(format!(
                    "--scheduled {t}: expected an ISO 8601 time with a time zone ({e})"
                ))
            }),
    }
}

/// patronictl's line for a member that did not accept `action`: its status and answer, or why
/// it could not be reached.
fn write_failure(
    out: &mut dyn Write,
    action: &str,
    member: &str,
    outcome: &Result<Answer, ApiError>,
) -> std::io::Result<()> {
    match outcome {
        Ok(answer) => writeln!(
            out,
            "Failed: {action} for member {member}, status code={}, ({})",
            answer.status,
            answer.body.trim()
        ),
        Err(e) => writeln!(out, "Failed: {action} for member {member}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(outcome: Result<Answer, ApiError>) -> String {
        let mut out = Vec::new();
        write_failure(&mut out, "restart", "m1", &outcome).expect("write");
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn failure_lines_carry_the_status_and_answer() {
        let answer = Answer {
            status: 503,
            body: "restart failed\n".into(),
        };
        assert_eq!(
            failure(Ok(answer)),
            "Failed: restart for member m1, status code=503, (restart failed)\n"
        );
        let not_json = serde_json::from_str::<serde_json::Value>("x").expect_err("not JSON");
        let unreachable = ApiError::NotJson {
            endpoint: "patroni".into(),
            source: not_json,
        };
        assert!(failure(Err(unreachable))
            .starts_with("Failed: restart for member m1: GET patroni: not JSON ("));
    }

    #[test]
    fn scheduled_now_means_at_once() {
        assert_eq!(parse_scheduled(None).ok(), Some(None));
        assert_eq!(parse_scheduled(Some(" now ")).ok(), Some(None));
        assert_eq!(
            parse_scheduled(Some("2030-01-01T12:00:00+02:00")).ok(),
            Some(Some("2030-01-01T12:00:00+02:00".into()))
        );
        assert!(parse_scheduled(Some("tomorrow")).is_err());
    }
}
