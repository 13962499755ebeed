//! Turning etcd key-values under the cluster prefix into the neutral [`Cluster`].
//!
//! Everything here reads data that anyone may have written: nothing fails the whole read, problems
//! become warnings that name the key.

use std::collections::BTreeMap;

use serde_json::Value;

use super::client::{json_i64, unb64};
use crate::model::{
    parse_failsafe, parse_group, Cluster, ClusterConfig, Failover, HistoryEntry, Leader, Member,
    MemberData, Status, SyncState,
};

/// One decoded key-value, key relative to the cluster prefix.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
    pub lease: i64,
}

/// Decode the `kvs` array of a range answer. Keys outside `prefix` or not UTF-8 are reported.
pub(crate) fn decode_kvs(prefix: &str, kvs: Option<&Value>, warnings: &mut Vec<String>) -> Vec<Kv> {
    let Some(items) = kvs.and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let key = match item.get("key").and_then(Value::as_str).map(unb64) {
            Some(Ok(bytes)) => match String::from_utf8(bytes) {
                Ok(k) => k,
                Err(_) => {
                    warnings.push("etcd returned a key that is not UTF-8; ignored".into());
                    continue;
                }
            },
            _ => {
                warnings.push("etcd returned a key-value without a valid key; ignored".into());
                continue;
            }
        };
        let Some(rel) = key.strip_prefix(prefix) else {
            continue;
        };
        let value = match item.get("value").and_then(Value::as_str) {
            None => String::new(),
            Some(v) => match unb64(v).map(String::from_utf8) {
                Ok(Ok(s)) => s,
                _ => {
                    warnings.push(format!("{key}: value is not valid UTF-8 text; ignored"));
                    continue;
                }
            },
        };
        out.push(Kv {
            key: rel.to_string(),
            value,
            mod_revision: json_i64(item.get("mod_revision")),
            lease: json_i64(item.get("lease")),
        });
    }
    out
}

/// Build the cluster view from the key-values under the prefix (keys relative to `prefix`).
pub(crate) fn parse_cluster(prefix: &str, kvs: &[Kv], mut warnings: Vec<String>) -> Cluster {
    let mut cluster = Cluster::default();
    let mut legacy_optime: Option<u64> = None;
    let mut status_seen = false;
    for kv in kvs {
        let full = format!("{prefix}{}", kv.key);
        let version = Some(kv.mod_revision.to_string());
        match kv.key.as_str() {
            "leader" => {
                let name = kv.value.trim();
                if name.is_empty() {
                    warnings.push(format!("{full}: leader key is empty; treated as no leader"));
                } else {
                    cluster.leader = Some(Leader {
                        name: name.to_string(),
                        version,
                    });
                }
            }
            "initialize" => cluster.initialize = Some(kv.value.trim().to_string()),
            "config" => match serde_json::from_str::<Value>(&kv.value) {
                Ok(raw @ Value::Object(_)) => cluster.config = Some(ClusterConfig { raw, version }),
                Ok(_) => warnings.push(format!("{full}: config is not a JSON object; ignored")),
                Err(e) => warnings.push(format!("{full}: config is not JSON ({e}); ignored")),
            },
            "history" => cluster.history = parse_history_lenient(&full, &kv.value, &mut warnings),
            "failover" => match Failover::parse(&kv.value) {
                Ok(f) if f.is_empty() && f.scheduled_at.is_none() => {}
                Ok(mut f) => {
                    f.version = version;
                    cluster.failover = Some(f);
                }
                Err(e) => warnings.push(format!("{full}: {e}; ignored")),
            },
            "sync" => {
                if kv.value.trim().is_empty() {
                    cluster.sync.version = version;
                } else {
                    match SyncState::parse(&kv.value) {
                        Ok(mut s) => {
                            s.version = version;
                            cluster.sync = s;
                        }
                        Err(e) => {
                            warnings.push(format!("{full}: {e}; treated as empty"));
                            // Keep the version so the leader can still replace it by CAS.
                            cluster.sync.version = version;
                        }
                    }
                }
            }
            "status" => {
                status_seen = true;
                match Status::parse(&kv.value) {
                    Ok(s) => cluster.status = s,
                    Err(e) => warnings.push(format!("{full}: {e}; ignored")),
                }
            }
            // Written by members running Patroni < 2.1.
            "optime/leader" => legacy_optime = kv.value.trim().parse().ok(),
            "failsafe" => match parse_failsafe(&kv.value) {
                Ok(f) => cluster.failsafe = Some(f),
                Err(e) => warnings.push(format!("{full}: {e}; ignored")),
            },
            other => {
                if let Some(name) = other.strip_prefix("members/") {
                    if name.is_empty() || name.contains('/') {
                        continue;
                    }
                    let data = match MemberData::parse(&kv.value) {
                        Ok(d) => d,
                        Err(e) => {
                            // Kept (it exists and holds a lease) but with default data, which
                            // never makes it a failover candidate.
                            warnings.push(format!("{full}: {e}"));
                            MemberData::default()
                        }
                    };
                    cluster.members.push(Member {
                        name: name.to_string(),
                        data,
                        version,
                    });
                }
            }
        }
    }
    if !status_seen || cluster.status.optime.is_none() {
        if let Some(o) = legacy_optime {
            cluster.status.optime = Some(o);
        }
    }
    cluster.members.sort_by(|a, b| a.name.cmp(&b.name));
    cluster.warnings = warnings;
    cluster
}

/// The Citus coordinator's view from one range over the whole scope (keys relative to
/// `scope_prefix`, e.g. `0/leader`, `1/members/w1`): group 0 is its own cluster, every other
/// group becomes a worker. Keys without a group segment belong to no Citus group: ignored.
pub(crate) fn parse_coordinator(
    scope_prefix: &str,
    kvs: Vec<Kv>,
    warnings: Vec<String>,
) -> Cluster {
    let mut groups: BTreeMap<u32, Vec<Kv>> = BTreeMap::new();
    for mut kv in kvs {
        let Some((group, rest)) = kv.key.split_once('/') else {
            continue;
        };
        let Some(group) = parse_group(group) else {
            continue;
        };
        kv.key = rest.to_string();
        groups.entry(group).or_default().push(kv);
    }
    let own = groups.remove(&0).unwrap_or_default();
    let mut cluster = parse_cluster(&format!("{scope_prefix}0/"), &own, warnings);
    for (group, kvs) in groups {
        let worker = parse_cluster(&format!("{scope_prefix}{group}/"), &kvs, Vec::new());
        cluster.warnings.extend(worker.warnings.iter().cloned());
        cluster.workers.insert(group, worker);
    }
    cluster
}

/// Parse the history list keeping the good rows; bad rows are reported and skipped.
fn parse_history_lenient(key: &str, raw: &str, warnings: &mut Vec<String>) -> Vec<HistoryEntry> {
    let rows = match serde_json::from_str::<Value>(raw) {
        Ok(Value::Array(rows)) => rows,
        Ok(_) => {
            warnings.push(format!("{key}: history is not a JSON list; ignored"));
            return Vec::new();
        }
        Err(e) => {
            warnings.push(format!("{key}: history is not JSON ({e}); ignored"));
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        match HistoryEntry::from_json(row) {
            Ok(h) => out.push(h),
            Err(e) => warnings.push(format!("{key}: row {i}: {e}; skipped")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn kv(key: &str, value: &str, rev: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.into(),
            mod_revision: rev,
            lease: 0,
        }
    }

    #[test]
    fn full_cluster() {
        let kvs = vec![
            kv("leader", "a", 10),
            kv("initialize", "7123456789012345678", 2),
            kv("config", r#"{"ttl":30,"pause":true}"#, 3),
            kv("history", r#"[[1,100,"x"],[2,"bad"]]"#, 4),
            kv("failover", r#"{"member":"b"}"#, 5),
            kv("sync", r#"{"leader":"a","sync_standby":"b"}"#, 6),
            kv("status", r#"{"optime":1234,"slots":{"s":1}}"#, 7),
            kv("members/b", r#"{"role":"replica","state":"running"}"#, 8),
            kv(
                "members/a",
                r#"{"role":"master","state":"running","xlog_location":5}"#,
                9,
            ),
            kv("members/c", "{not json", 11),
            kv("1/leader", "other-group", 12),
        ];
        let c = parse_cluster("/service/demo/", &kvs, Vec::new());
        assert_eq!(
            c.leader,
            Some(Leader {
                name: "a".into(),
                version: Some("10".into())
            })
        );
        assert_eq!(c.initialized_sysid(), Some("7123456789012345678"));
        assert!(c.is_paused());
        assert_eq!(
            c.config.as_ref().and_then(|c| c.version.clone()),
            Some("3".into())
        );
        assert_eq!(c.history.len(), 1);
        assert_eq!(
            c.failover.as_ref().and_then(|f| f.member.clone()),
            Some("b".into())
        );
        assert_eq!(
            c.failover.as_ref().and_then(|f| f.version.clone()),
            Some("5".into())
        );
        assert_eq!(c.sync.sync_standby, vec!["b".to_string()]);
        assert_eq!(c.status.optime, Some(1234));
        let names: Vec<_> = c.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(c.members[0].data.role, Role::Primary);
        assert_eq!(c.members[2].data, MemberData::default());
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("/service/demo/members/c")),
            "{:?}",
            c.warnings
        );
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("/service/demo/history") && w.contains("row 1")));
    }

    #[test]
    fn coordinator_splits_groups() {
        let kvs = vec![
            kv("0/leader", "c1", 1),
            kv("0/members/c1", r#"{"role":"primary","state":"running"}"#, 2),
            kv("1/leader", "w1", 3),
            kv(
                "1/members/w1",
                r#"{"role":"primary","state":"running","conn_url":"postgres://10.0.1.1:5432/citus","api_url":"http://10.0.1.1:8008/patroni"}"#,
                4,
            ),
            kv(
                "1/members/w1b",
                r#"{"role":"replica","state":"running"}"#,
                5,
            ),
            kv("1/config", r#"{"ttl":20}"#, 6),
            kv("2/members/w2", "{garbage", 7),
            kv("2/history", "nope", 8),
            // Not a Citus group: ignored.
            kv("leader", "stray", 9),
            kv("01/leader", "stray", 10),
            kv("x/leader", "stray", 11),
        ];
        let c = parse_coordinator("/service/demo/", kvs, Vec::new());
        assert_eq!(c.leader_name(), Some("c1"));
        assert_eq!(c.members.len(), 1);
        assert_eq!(c.workers.keys().copied().collect::<Vec<_>>(), [1, 2]);
        let w1 = &c.workers[&1];
        assert_eq!(w1.leader_name(), Some("w1"));
        assert_eq!(
            w1.leader.as_ref().and_then(|l| l.version.clone()),
            Some("3".into())
        );
        assert_eq!(
            w1.leader_member().and_then(|m| m.data.conn_host_port()),
            Some(("10.0.1.1".into(), 5432))
        );
        assert_eq!(w1.members.len(), 2);
        assert_eq!(
            w1.config.as_ref().map(|c| c.raw["ttl"].clone()),
            Some(20.into())
        );
        assert!(w1.workers.is_empty() && w1.warnings.is_empty());
        let w2 = &c.workers[&2];
        assert!(w2.leader.is_none());
        assert_eq!(w2.members.len(), 1);
        for key in ["/service/demo/2/members/w2", "/service/demo/2/history"] {
            assert!(
                w2.warnings.iter().any(|w| w.contains(key)),
                "{:?}",
                w2.warnings
            );
            assert!(
                c.warnings.iter().any(|w| w.contains(key)),
                "{:?}",
                c.warnings
            );
        }
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    }

    #[test]
    fn failsafe_topology() {
        let c = parse_cluster(
            "/p/",
            &[kv("failsafe", r#"{"a":"http://10.0.0.1:8008/patroni"}"#, 3)],
            Vec::new(),
        );
        let topology = c.failsafe.expect("failsafe read");
        assert_eq!(topology["a"], "http://10.0.0.1:8008/patroni");
        for garbage in ["[1]", r#"{"a":1}"#, "nope"] {
            let c = parse_cluster("/p/", &[kv("failsafe", garbage, 3)], Vec::new());
            assert!(c.failsafe.is_none(), "{garbage}");
            assert!(c.warnings[0].contains("/p/failsafe"), "{:?}", c.warnings);
        }
    }

    #[test]
    fn bad_config_is_absent_with_warning() {
        let c = parse_cluster("/p/", &[kv("config", "[1,2]", 3)], Vec::new());
        assert!(c.config.is_none());
        assert!(c.warnings[0].contains("/p/config"));
        let c = parse_cluster("/p/", &[kv("config", "nope", 3)], Vec::new());
        assert!(c.config.is_none());
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn legacy_optime_and_empty_failover() {
        let c = parse_cluster(
            "/p/",
            &[kv("optime/leader", "77", 1), kv("failover", "", 2)],
            Vec::new(),
        );
        assert_eq!(c.status.optime, Some(77));
        assert!(c.failover.is_none());
    }
}
