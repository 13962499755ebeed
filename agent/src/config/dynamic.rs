//! Typed view of the dynamic configuration stored in the DCS (`config` key; docs/configuration.md).
//!
//! The DCS content is written by peers, `patronictl edit-config` and humans, so reading it never
//! fails: a bad value falls back to its default with a warning naming the key.

use serde_json::{Map, Value};

use super::value::{bool_of, i64_of, show, u64_of};

const MIN_TTL: u32 = 5;
const MIN_LOOP_WAIT: u32 = 1;
const MIN_RETRY_TIMEOUT: u32 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct DynamicConfig {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
    pub maximum_lag_on_failover: u64,
    /// ≤ 0 disables replacing a lagging synchronous standby.
    pub maximum_lag_on_syncnode: i64,
    /// 0 = keep the whole timeline history.
    pub max_timelines_history: u32,
    /// Also read as `master_start_timeout`.
    pub primary_start_timeout: u64,
    /// Also read as `master_stop_timeout`.
    pub primary_stop_timeout: u64,
    pub synchronous_mode: bool,
    pub synchronous_mode_strict: bool,
    pub synchronous_node_count: u32,
    pub failsafe_mode: bool,
    pub check_timeline: bool,
    pub pause: bool,
    /// `postgresql.use_pg_rewind`.
    pub use_pg_rewind: bool,
    /// `postgresql.use_slots`.
    pub use_slots: bool,
    /// `postgresql.parameters`.
    pub parameters: Map<String, Value>,
    /// `postgresql.pg_hba`.
    pub pg_hba: Vec<String>,
    /// `postgresql.pg_ident`.
    pub pg_ident: Vec<String>,
    /// `standby_cluster`, when it is a mapping.
    pub standby_cluster: Option<Map<String, Value>>,
    /// Permanent slots: `slots` (or the older `permanent_slots` / `permanent_replication_slots`).
    pub slots: Map<String, Value>,
    pub ignore_slots: Vec<Value>,
    /// 4.x: how long slots of departed members are kept, seconds.
    pub member_slots_ttl: u64,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
            maximum_lag_on_failover: 1_048_576,
            maximum_lag_on_syncnode: -1,
            max_timelines_history: 0,
            primary_start_timeout: 300,
            primary_stop_timeout: 0,
            synchronous_mode: false,
            synchronous_mode_strict: false,
            synchronous_node_count: 1,
            failsafe_mode: false,
            check_timeline: false,
            pause: false,
            use_pg_rewind: false,
            use_slots: true,
            parameters: Map::new(),
            pg_hba: Vec::new(),
            pg_ident: Vec::new(),
            standby_cluster: None,
            slots: Map::new(),
            ignore_slots: Vec::new(),
            member_slots_ttl: 1800,
        }
    }
}

/// A problem found while reading dynamic configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Issue {
    /// Dotted key, e.g. `postgresql.use_slots`.
    pub key: String,
    pub msg: String,
    /// The value had the wrong type or shape (as opposed to being adjusted into range).
    pub invalid: bool,
    /// What happens instead, for a warning (`using default 30`).
    pub fallback: Option<String>,
}

impl Issue {
    fn render(&self) -> String {
        match &self.fallback {
            Some(f) => format!("{}: {}; {f}", self.key, self.msg),
            None => format!("{}: {}", self.key, self.msg),
        }
    }
}

struct Reader<'a> {
    obj: Option<&'a Map<String, Value>>,
    prefix: &'static str,
    issues: &'a mut Vec<Issue>,
}

impl<'a> Reader<'a> {
    /// The first present, non-null value among `names` (aliases), with the name it was found under.
    fn get(&self, names: &[&str]) -> Option<(String, &'a Value)> {
        let obj = self.obj?;
        names.iter().find_map(|n| {
            obj.get(*n)
                .filter(|v| !v.is_null())
                .map(|v| (format!("{}{n}", self.prefix), v))
        })
    }

    fn invalid<T: std::fmt::Display>(
        &mut self,
        key: String,
        v: &Value,
        expected: &str,
        default: T,
    ) {
        self.issues.push(Issue {
            key,
            msg: format!("invalid value {} (expected {expected})", show(v)),
            invalid: true,
            fallback: Some(format!("using default {default}")),
        });
    }

    /// The value under `names` as `parse` reads it; when it does not parse, the default, and an
    /// issue saying what was `expected`.
    fn scalar<T: std::fmt::Display + Copy>(
        &mut self,
        names: &[&str],
        default: T,
        expected: &str,
        parse: impl Fn(&Value) -> Option<T>,
    ) -> T {
        let Some((key, v)) = self.get(names) else {
            return default;
        };
        parse(v).unwrap_or_else(|| {
            self.invalid(key, v, expected, default);
            default
        })
    }

    fn bool(&mut self, names: &[&str], default: bool) -> bool {
        self.scalar(names, default, "a boolean", bool_of)
    }

    fn u64(&mut self, names: &[&str], default: u64) -> u64 {
        self.scalar(names, default, "a non-negative integer", u64_of)
    }

    fn u32(&mut self, names: &[&str], default: u32) -> u32 {
        self.scalar(names, default, "a non-negative integer", |v| {
            u64_of(v).and_then(|n| u32::try_from(n).ok())
        })
    }

    fn i64(&mut self, names: &[&str], default: i64) -> i64 {
        self.scalar(names, default, "an integer", i64_of)
    }

    fn object(&mut self, names: &[&str]) -> Option<Map<String, Value>> {
        let (key, v) = self.get(names)?;
        match v {
            Value::Object(m) => Some(m.clone()),
            other => {
                self.invalid(key, other, "a mapping", "{}");
                None
            }
        }
    }

    fn string_list(&mut self, name: &str) -> Vec<String> {
        let Some((key, v)) = self.get(&[name]) else {
            return Vec::new();
        };
        let Value::Array(items) = v else {
            self.invalid(key, v, "a list of strings", "[]");
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => self.issues.push(Issue {
                    key: format!("{key}[{i}]"),
                    msg: format!("invalid value {} (expected a string)", show(other)),
                    invalid: true,
                    fallback: Some("line ignored".to_string()),
                }),
            }
        }
        out
    }

    fn at_least(&mut self, name: &str, value: u32, min: u32) -> u32 {
        if value >= min {
            return value;
        }
        self.issues.push(Issue {
            key: format!("{}{name}", self.prefix),
            msg: format!("{value} is below the minimum {min}; using {min}"),
            invalid: false,
            fallback: None,
        });
        min
    }
}

impl DynamicConfig {
    /// Read dynamic configuration written by anyone. Never fails: every bad value reverts to its
    /// default and yields a warning naming the key.
    pub fn from_value(v: &Value) -> (DynamicConfig, Vec<String>) {
        let (cfg, issues) = Self::read(v);
        (cfg, issues.iter().map(Issue::render).collect())
    }

    pub(crate) fn read(v: &Value) -> (DynamicConfig, Vec<Issue>) {
        let mut issues = Vec::new();
        let d = DynamicConfig::default();
        let obj = match v {
            Value::Object(m) => Some(m),
            Value::Null => None,
            other => {
                issues.push(Issue {
                    key: "config".to_string(),
                    msg: format!("expected a mapping, got {}", show(other)),
                    invalid: true,
                    fallback: Some("using defaults".to_string()),
                });
                None
            }
        };
        let mut r = Reader {
            obj,
            prefix: "",
            issues: &mut issues,
        };

        let ttl = r.u32(&["ttl"], d.ttl);
        let loop_wait = r.u32(&["loop_wait"], d.loop_wait);
        let retry_timeout = r.u32(&["retry_timeout"], d.retry_timeout);
        let maximum_lag_on_failover =
            r.u64(&["maximum_lag_on_failover"], d.maximum_lag_on_failover);
        let maximum_lag_on_syncnode =
            r.i64(&["maximum_lag_on_syncnode"], d.maximum_lag_on_syncnode);
        let max_timelines_history = r.u32(&["max_timelines_history"], d.max_timelines_history);
        let primary_start_timeout = r.u64(
            &["primary_start_timeout", "master_start_timeout"],
            d.primary_start_timeout,
        );
        let primary_stop_timeout = r.u64(
            &["primary_stop_timeout", "master_stop_timeout"],
            d.primary_stop_timeout,
        );
        let synchronous_mode = match r.get(&["synchronous_mode"]) {
            Some((key, Value::String(s))) if s.eq_ignore_ascii_case("quorum") => {
                r.issues.push(Issue {
                    key,
                    msg: "quorum commit is not supported; running with synchronous_mode: true"
                        .into(),
                    invalid: false,
                    fallback: None,
                });
                true
            }
            _ => r.bool(&["synchronous_mode"], d.synchronous_mode),
        };
        let synchronous_mode_strict =
            r.bool(&["synchronous_mode_strict"], d.synchronous_mode_strict);
        let synchronous_node_count = r.u32(&["synchronous_node_count"], d.synchronous_node_count);
        let synchronous_node_count =
            r.at_least("synchronous_node_count", synchronous_node_count, 1);
        let failsafe_mode = r.bool(&["failsafe_mode"], d.failsafe_mode);
        let check_timeline = r.bool(&["check_timeline"], d.check_timeline);
        let pause = r.bool(&["pause"], d.pause);
        let standby_cluster = r.object(&["standby_cluster"]);
        let slots = r
            .object(&["slots", "permanent_slots", "permanent_replication_slots"])
            .unwrap_or_default();
        let ignore_slots = match r.get(&["ignore_slots"]) {
            None => Vec::new(),
            Some((_, Value::Array(items))) => items.clone(),
            Some((key, other)) => {
                r.invalid(key, other, "a list", "[]");
                Vec::new()
            }
        };
        let member_slots_ttl = r.u64(&["member_slots_ttl"], d.member_slots_ttl);

        let pg = r.object(&["postgresql"]);
        let mut p = Reader {
            obj: pg.as_ref(),
            prefix: "postgresql.",
            issues: r.issues,
        };
        let use_pg_rewind = p.bool(&["use_pg_rewind"], d.use_pg_rewind);
        let use_slots = p.bool(&["use_slots"], d.use_slots);
        let parameters = p.object(&["parameters"]).unwrap_or_default();
        let pg_hba = p.string_list("pg_hba");
        let pg_ident = p.string_list("pg_ident");

        let mut t = Reader {
            obj,
            prefix: "",
            issues: p.issues,
        };
        let ttl = t.at_least("ttl", ttl, MIN_TTL);
        let mut loop_wait = t.at_least("loop_wait", loop_wait, MIN_LOOP_WAIT);
        let mut retry_timeout = t.at_least("retry_timeout", retry_timeout, MIN_RETRY_TIMEOUT);
        // The leader must be able to renew its lease within ttl even when a DCS request times
        // out twice: loop_wait + 2 * retry_timeout <= ttl. Shorten loop_wait first.
        if MIN_LOOP_WAIT + 2 * retry_timeout > ttl {
            let (old_lw, old_rt) = (loop_wait, retry_timeout);
            loop_wait = MIN_LOOP_WAIT;
            retry_timeout = (ttl - MIN_LOOP_WAIT) / 2;
            t.issues.push(Issue {
                key: "retry_timeout".into(),
                msg: format!(
                    "loop_wait + 2*retry_timeout must not exceed ttl={ttl}; \
                     loop_wait {old_lw} -> {loop_wait}, retry_timeout {old_rt} -> {retry_timeout}"
                ),
                invalid: false,
                fallback: None,
            });
        } else if loop_wait + 2 * retry_timeout > ttl {
            let old_lw = loop_wait;
            loop_wait = ttl - 2 * retry_timeout;
            t.issues.push(Issue {
                key: "loop_wait".into(),
                msg: format!(
                    "loop_wait + 2*retry_timeout must not exceed ttl={ttl} (retry_timeout={retry_timeout}); \
                     loop_wait {old_lw} -> {loop_wait}"
                ),
                invalid: false,
                fallback: None,
            });
        }

        let cfg = DynamicConfig {
            ttl,
            loop_wait,
            retry_timeout,
            maximum_lag_on_failover,
            maximum_lag_on_syncnode,
            max_timelines_history,
            primary_start_timeout,
            primary_stop_timeout,
            synchronous_mode,
            synchronous_mode_strict,
            synchronous_node_count,
            failsafe_mode,
            check_timeline,
            pause,
            use_pg_rewind,
            use_slots,
            parameters,
            pg_hba,
            pg_ident,
            standby_cluster,
            slots,
            ignore_slots,
            member_slots_ttl,
        };
        (cfg, issues)
    }

    /// Is this a standby cluster (replicating from a remote primary)?
    pub fn is_standby_cluster(&self) -> bool {
        self.standby_cluster.as_ref().is_some_and(|s| {
            ["host", "port", "restore_command"]
                .iter()
                .any(|k| s.get(*k).is_some_and(|v| !v.is_null() && v != ""))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_for_empty_and_null() {
        for v in [json!({}), json!(null)] {
            let (cfg, warnings) = DynamicConfig::from_value(&v);
            assert_eq!(cfg, DynamicConfig::default());
            assert!(warnings.is_empty(), "{warnings:?}");
        }
    }

    #[test]
    fn reads_patroni_config() {
        let v = json!({
            "ttl": 20, "loop_wait": "5", "retry_timeout": 5,
            "maximum_lag_on_failover": 33554432, "maximum_lag_on_syncnode": 1000,
            "master_start_timeout": 60, "synchronous_mode": "on", "synchronous_node_count": 2,
            "failsafe_mode": true, "check_timeline": "true", "pause": true,
            "postgresql": {"use_pg_rewind": true, "use_slots": false,
                           "parameters": {"max_connections": 200, "wal_level": "logical"},
                           "pg_hba": ["host all all 0.0.0.0/0 md5"]},
            "standby_cluster": {"host": "10.0.0.5", "port": 5432},
            "permanent_slots": {"s1": {"type": "physical"}},
        });
        let (cfg, warnings) = DynamicConfig::from_value(&v);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!((cfg.ttl, cfg.loop_wait, cfg.retry_timeout), (20, 5, 5));
        assert_eq!(cfg.maximum_lag_on_failover, 33554432);
        assert_eq!(cfg.maximum_lag_on_syncnode, 1000);
        assert_eq!(cfg.primary_start_timeout, 60);
        assert!(cfg.synchronous_mode && !cfg.synchronous_mode_strict);
        assert_eq!(cfg.synchronous_node_count, 2);
        assert!(cfg.failsafe_mode && cfg.check_timeline && cfg.pause);
        assert!(cfg.use_pg_rewind && !cfg.use_slots);
        assert_eq!(cfg.parameters.get("max_connections"), Some(&json!(200)));
        assert_eq!(cfg.pg_hba, vec!["host all all 0.0.0.0/0 md5"]);
        assert!(cfg.is_standby_cluster());
        assert!(cfg.slots.contains_key("s1"));
    }

    #[test]
    fn primary_name_wins_over_master_alias() {
        let v = json!({"master_start_timeout": 60, "primary_start_timeout": 120, "master_stop_timeout": 7});
        let (cfg, _) = DynamicConfig::from_value(&v);
        assert_eq!(cfg.primary_start_timeout, 120);
        assert_eq!(cfg.primary_stop_timeout, 7);
    }

    #[test]
    fn bad_values_revert_to_defaults_with_named_warnings() {
        let d = DynamicConfig::default();
        type Check = Box<dyn Fn(&DynamicConfig) -> bool>;
        let cases: Vec<(Value, &str, Check)> = vec![
            (json!({"ttl": "abc"}), "ttl", Box::new(move |c| c.ttl == 30)),
            (json!({"ttl": -5}), "ttl", Box::new(|c| c.ttl == 30)),
            (
                json!({"loop_wait": [1]}),
                "loop_wait",
                Box::new(|c| c.loop_wait == 10),
            ),
            (
                json!({"maximum_lag_on_failover": "lots"}),
                "maximum_lag_on_failover",
                Box::new(move |c| c.maximum_lag_on_failover == d.maximum_lag_on_failover),
            ),
            (
                json!({"maximum_lag_on_syncnode": {}}),
                "maximum_lag_on_syncnode",
                Box::new(|c| c.maximum_lag_on_syncnode == -1),
            ),
            (
                json!({"master_start_timeout": "soon"}),
                "master_start_timeout",
                Box::new(|c| c.primary_start_timeout == 300),
            ),
            (
                json!({"synchronous_mode": "maybe"}),
                "synchronous_mode",
                Box::new(|c| !c.synchronous_mode),
            ),
            (
                json!({"synchronous_node_count": 0}),
                "synchronous_node_count",
                Box::new(|c| c.synchronous_node_count == 1),
            ),
            (json!({"pause": 3}), "pause", Box::new(|c| !c.pause)),
            (
                json!({"postgresql": {"use_slots": "perhaps"}}),
                "postgresql.use_slots",
                Box::new(|c| c.use_slots),
            ),
            (
                json!({"postgresql": {"parameters": "max_connections=5"}}),
                "postgresql.parameters",
                Box::new(|c| c.parameters.is_empty()),
            ),
            (
                json!({"postgresql": {"pg_hba": "host all all all trust"}}),
                "postgresql.pg_hba",
                Box::new(|c| c.pg_hba.is_empty()),
            ),
            (
                json!({"postgresql": {"pg_hba": ["local all all trust", 5]}}),
                "postgresql.pg_hba[1]",
                Box::new(|c| c.pg_hba.len() == 1),
            ),
            (
                json!({"postgresql": "yes"}),
                "postgresql",
                Box::new(|c| c.use_slots && !c.use_pg_rewind),
            ),
            (
                json!({"standby_cluster": "host=x"}),
                "standby_cluster",
                Box::new(|c| c.standby_cluster.is_none()),
            ),
            (
                json!(["not", "a", "map"]),
                "config",
                Box::new(|c| c.ttl == 30),
            ),
        ];
        for (input, key, check) in cases {
            let (cfg, warnings) = DynamicConfig::from_value(&input);
            assert!(check(&cfg), "{input}: {cfg:?}");
            assert!(
                warnings.iter().any(|w| w.starts_with(&format!("{key}: "))),
                "{input}: no warning naming {key}: {warnings:?}"
            );
        }
    }

    #[test]
    fn timeouts_are_adjusted_to_fit_ttl() {
        let cases = [
            // ttl, loop_wait, retry_timeout -> loop_wait, retry_timeout, warned key
            ((10, 10, 10), (1, 4), Some("retry_timeout")),
            ((10, 5, 3), (4, 3), Some("loop_wait")),
            ((10, 2, 4), (2, 4), None),
            ((30, 10, 10), (10, 10), None),
            ((2, 1, 1), (1, 1), Some("ttl")),
            ((30, 0, 10), (1, 10), Some("loop_wait")),
        ];
        for ((ttl, lw, rt), (want_lw, want_rt), warned) in cases {
            let (cfg, warnings) = DynamicConfig::from_value(
                &json!({"ttl": ttl, "loop_wait": lw, "retry_timeout": rt}),
            );
            assert_eq!(
                (cfg.loop_wait, cfg.retry_timeout),
                (want_lw, want_rt),
                "{ttl}/{lw}/{rt}"
            );
            assert!(cfg.loop_wait + 2 * cfg.retry_timeout <= cfg.ttl);
            match warned {
                Some(k) => assert!(warnings.iter().any(|w| w.starts_with(k)), "{warnings:?}"),
                None => assert!(warnings.is_empty(), "{warnings:?}"),
            }
        }
    }

    #[test]
    fn quorum_mode_is_read_as_synchronous() {
        let (cfg, warnings) = DynamicConfig::from_value(&json!({"synchronous_mode": "quorum"}));
        assert!(cfg.synchronous_mode);
        assert!(warnings[0].starts_with("synchronous_mode: "));
    }
}
