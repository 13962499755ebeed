//! The rules REST operations are checked against before the loop acts on them: which members a
//! switchover or failover may promote (Patroni's 412 texts), which changes of the configuration
//! file a running member refuses, and how `PATCH /config` merges and validates.

use dcs::{Cluster, Member};
use rest::FailoverRequest;
use serde_json::Value;

use crate::config::DynamicConfig;
use crate::ha::error::{InvalidDynamicConfig, ReloadRefused};

/// Settings that identify the member or its data cannot change while it runs.
pub(crate) fn reloadable(
    old: &crate::config::Config,
    new: &crate::config::Config,
) -> Result<(), ReloadRefused> {
    if old.scope != new.scope {
        return Err(ReloadRefused::Scope {
            old: old.scope.clone(),
            new: new.scope.clone(),
        });
    }
    if old.name != new.name {
        return Err(ReloadRefused::Name {
            old: old.name.clone(),
            new: new.name.clone(),
        });
    }
    if old.postgresql.data_dir != new.postgresql.data_dir {
        return Err(ReloadRefused::DataDir);
    }
    Ok(())
}

/// The members a failover request could promote; `Err` is Patroni's 412 text.
pub(crate) fn failover_candidates<'a>(
    cluster: &'a Cluster,
    request: &FailoverRequest,
) -> Result<Vec<&'a Member>, String> {
    let current = cluster.leader_name();
    if let Some(leader) = request.leader.as_deref() {
        if current != Some(leader) {
            return Err("leader name does not match".into());
        }
    }
    if let Some(candidate) = request.candidate.as_deref() {
        let Some(member) = cluster.member(candidate) else {
            return Err("candidate does not exists".into());
        };
        if current == Some(candidate) {
            return Err(format!(
                "{} is not possible: {candidate} is already the leader",
                request.action.name()
            ));
        }
        return Ok(vec![member]);
    }
    let members: Vec<&Member> = cluster
        .members
        .iter()
        .filter(|m| Some(m.name.as_str()) != current && m.data.api_url.is_some())
        .collect();
    if members.is_empty() {
        return Err(format!(
            "{} is not possible: cluster does not have members except leader",
            request.action.name()
        ));
    }
    Ok(members)
}

/// Why a member answering `GET /patroni` with `status` may not be promoted (Patroni's
/// failover_limitation).
pub(crate) fn failover_limitation(status: &Value) -> Option<&'static str> {
    if status.get("state").and_then(Value::as_str) != Some("running") {
        return Some("not running");
    }
    let tags: dcs::Tags = status
        .get("tags")
        .and_then(|t| serde_json::from_value(t.clone()).ok())
        .unwrap_or_default();
    if !tags.can_be_leader() {
        return Some("not allowed to promote");
    }
    if status.get("watchdog_failed").and_then(Value::as_bool) == Some(true) {
        return Some("not watchdog capable");
    }
    None
}

/// Patroni's patch_config: merge `patch` into `target`; `null` deletes, objects merge
/// recursively, anything else replaces. Returns whether something changed.
pub(crate) fn patch_config(target: &mut Value, patch: &Value) -> bool {
    let (Value::Object(target), Value::Object(patch)) = (target, patch) else {
        return false;
    };
    let mut changed = false;
    for (key, value) in patch {
        match value {
            Value::Null => changed |= target.remove(key).is_some_and(|v| !v.is_null()),
            Value::Object(_) => match target.get_mut(key) {
                Some(existing @ Value::Object(_)) => changed |= patch_config(existing, value),
                _ => {
                    target.insert(key.clone(), value.clone());
                    changed = true;
                }
            },
            _ => {
                if target.get(key) != Some(value) {
                    target.insert(key.clone(), value.clone());
                    changed = true;
                }
            }
        }
    }
    changed
}

/// Refuse a configuration that the parser would have to correct, unless the same problem was
/// already there before the change (so an unrelated edit is not blocked by an old one).
pub(crate) fn validate_config(
    before: Option<&Value>,
    after: &Value,
) -> Result<(), InvalidDynamicConfig> {
    if !after.is_object() {
        return Err(InvalidDynamicConfig(vec![
            "the configuration must be a JSON object".into(),
        ]));
    }
    let (_, old) = before
        .map(DynamicConfig::from_value)
        .unwrap_or_else(|| (DynamicConfig::default(), Vec::new()));
    let (_, new) = DynamicConfig::from_value(after);
    let fresh: Vec<String> = new.into_iter().filter(|w| !old.contains(w)).collect();
    if fresh.is_empty() {
        Ok(())
    } else {
        Err(InvalidDynamicConfig(fresh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcs::Role;
    use dcs::{Leader, MemberData};
    use rest::FailoverAction;
    use serde_json::json;

    #[test]
    fn patch_merges_and_null_deletes() {
        let mut c = json!({"ttl": 30, "postgresql": {"parameters": {"a": 1, "b": 2}}, "x": 1});
        assert!(patch_config(
            &mut c,
            &json!({"postgresql": {"parameters": {"a": null, "c": "3"}}, "x": null, "pause": true})
        ));
        assert_eq!(
            c,
            json!({"ttl": 30, "postgresql": {"parameters": {"b": 2, "c": "3"}}, "pause": true})
        );
        assert!(!patch_config(&mut c, &json!({"ttl": 30, "missing": null})));
        assert!(patch_config(&mut c, &json!({"postgresql": 5})));
        assert_eq!(c["postgresql"], json!(5));
    }

    #[test]
    fn validation_names_the_key_and_ignores_old_problems() {
        let ok = json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 10});
        assert!(validate_config(
            Some(&ok),
            &json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "pause": true})
        )
        .is_ok());
        let err = validate_config(Some(&ok), &json!({"ttl": "soon"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ttl"), "{err}");
        let err = validate_config(Some(&ok), &json!({"maximum_lag_on_failover": "x"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("maximum_lag_on_failover"), "{err}");
        // A problem that was already there does not block an unrelated change.
        let bad = json!({"ttl": "soon"});
        assert!(validate_config(Some(&bad), &json!({"ttl": "soon", "pause": true})).is_ok());
        assert!(validate_config(None, &json!([])).is_err());
    }

    fn cluster() -> Cluster {
        let member = |name: &str, role: Role| {
            Member::new(
                name,
                MemberData {
                    api_url: Some(format!("http://127.0.0.1:1/{name}")),
                    state: "running".into(),
                    role,
                    ..Default::default()
                },
            )
        };
        Cluster {
            leader: Some(Leader {
                name: "a".into(),
                version: None,
            }),
            members: vec![
                member("a", Role::Primary),
                member("b", Role::Replica),
                member("c", Role::Replica),
            ],
            ..Default::default()
        }
    }

    fn req(
        action: FailoverAction,
        leader: Option<&str>,
        candidate: Option<&str>,
    ) -> FailoverRequest {
        FailoverRequest {
            action,
            leader: leader.map(Into::into),
            candidate: candidate.map(Into::into),
            scheduled_at: None,
        }
    }

    #[test]
    fn failover_feasibility_texts() {
        use FailoverAction::*;
        let c = cluster();
        let names = |r: Result<Vec<&Member>, String>| -> Result<Vec<String>, String> {
            r.map(|v| v.iter().map(|m| m.name.clone()).collect())
        };
        type Case = (&'static str, FailoverRequest, Result<Vec<String>, String>);
        let cases: Vec<Case> = vec![
            (
                "switchover to a member",
                req(Switchover, Some("a"), Some("b")),
                Ok(vec!["b".into()]),
            ),
            (
                "switchover to anyone",
                req(Switchover, Some("a"), None),
                Ok(vec!["b".into(), "c".into()]),
            ),
            (
                "wrong leader",
                req(Switchover, Some("b"), Some("c")),
                Err("leader name does not match".into()),
            ),
            (
                "unknown candidate",
                req(Switchover, Some("a"), Some("zz")),
                Err("candidate does not exists".into()),
            ),
            (
                "failover to the leader",
                req(Failover, None, Some("a")),
                Err("failover is not possible: a is already the leader".into()),
            ),
        ];
        for (what, r, expected) in cases {
            assert_eq!(names(failover_candidates(&c, &r)), expected, "{what}");
        }
        let mut alone = cluster();
        alone.members.truncate(1);
        assert_eq!(
            names(failover_candidates(
                &alone,
                &req(Switchover, Some("a"), None)
            )),
            Err("switchover is not possible: cluster does not have members except leader".into())
        );
        // No leader: a switchover names a leader that does not hold the lock.
        let mut unlocked = cluster();
        unlocked.leader = None;
        assert_eq!(
            names(failover_candidates(
                &unlocked,
                &req(Switchover, Some("a"), Some("b"))
            )),
            Err("leader name does not match".into())
        );
        assert_eq!(
            names(failover_candidates(
                &unlocked,
                &req(Failover, None, Some("b"))
            )),
            Ok(vec!["b".into()])
        );
    }

    #[test]
    fn limitation_of_a_peer() {
        assert_eq!(
            failover_limitation(&json!({"state": "running", "role": "replica"})),
            None
        );
        assert_eq!(
            failover_limitation(&json!({"state": "stopped"})),
            Some("not running")
        );
        assert_eq!(
            failover_limitation(&json!({"state": "running", "tags": {"nofailover": true}})),
            Some("not allowed to promote")
        );
        assert_eq!(
            failover_limitation(&json!({"state": "running", "watchdog_failed": true})),
            Some("not watchdog capable")
        );
    }
}
