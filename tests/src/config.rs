//! Patroni-format member configuration files, built from a template and tweakable by key path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;
use serde_yaml_ng::{Mapping, Value};

pub use dcs::Timing;

/// Timing the HA tests use: short enough for failover measurements, long enough for 2 cores.
pub const FAST_TIMING: Timing = Timing {
    ttl: 10,
    loop_wait: 2,
    retry_timeout: 3,
};

/// Where the Postgres 15 binaries live on Debian.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Credentials every test member is configured with.
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "secret";
pub const REPLICATION_USER: &str = "replicator";
pub const REPLICATION_PASSWORD: &str = "rep-pass";

/// Which DCS a test cluster runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// A single-node etcd, members configured with `etcd3`.
    #[default]
    Etcd,
    /// The Kubernetes API test server, members configured with `kubernetes`; the leader object
    /// is the `<scope>` Endpoints when `use_endpoints`, else the `<scope>-leader` ConfigMap.
    Kubernetes { use_endpoints: bool },
}

impl Backend {
    /// Short name for test output: `etcd`, `kubernetes` or `kubernetes-endpoints`.
    pub fn label(&self) -> &'static str {
        match self {
            Backend::Etcd => "etcd",
            Backend::Kubernetes {
                use_endpoints: false,
            } => "kubernetes",
            Backend::Kubernetes {
                use_endpoints: true,
            } => "kubernetes-endpoints",
        }
    }

    pub fn is_kubernetes(&self) -> bool {
        matches!(self, Backend::Kubernetes { .. })
    }
}

/// Namespace every test member uses on the Kubernetes API test server.
pub const KUBE_NAMESPACE: &str = "default";
/// Label every test Pod and every object the agents create carries (besides the scope label).
pub const KUBE_APP_LABEL: (&str, &str) = ("application", "regent-test");

/// The `kubernetes` section of one member: where its credentials are and what it publishes.
#[derive(Debug, Clone)]
pub struct KubeSpec {
    pub namespace: String,
    /// `kubernetes.labels` (the agent adds `cluster-name: <scope>` itself).
    pub labels: BTreeMap<String, String>,
    pub use_endpoints: bool,
    /// The member's Pod IP (not loopback: the API server refuses loopback Endpoints addresses).
    pub pod_ip: String,
    /// Kubeconfig file the agent finds through `$KUBECONFIG`.
    pub kubeconfig: PathBuf,
}

impl KubeSpec {
    /// The labels of the member's Pod: `kubernetes.labels` plus the scope label.
    pub fn pod_labels(&self, scope: &str) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert("cluster-name".to_string(), scope.to_string());
        labels
    }
}

/// Facts about one member that go into its configuration file.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub scope: String,
    pub name: String,
    pub api_port: u16,
    pub pg_port: u16,
    /// `host:port` of each etcd client endpoint (used when `kubernetes` is `None`).
    pub etcd_hosts: Vec<String>,
    /// Kubernetes DCS settings; `None` configures `etcd3` instead.
    pub kubernetes: Option<KubeSpec>,
    /// Directory owned by the member (config, pgpass, sockets, log); data_dir lives inside it.
    pub member_dir: PathBuf,
    pub timing: Timing,
}

impl MemberSpec {
    /// A member with fresh ports and `FAST_TIMING`.
    pub fn new(
        scope: &str,
        name: &str,
        member_dir: PathBuf,
        etcd_hosts: Vec<String>,
    ) -> MemberSpec {
        MemberSpec {
            scope: scope.to_string(),
            name: name.to_string(),
            api_port: crate::ports::free_port(),
            pg_port: crate::ports::free_port(),
            etcd_hosts,
            kubernetes: None,
            member_dir,
            timing: FAST_TIMING,
        }
    }

    /// Environment the agent needs besides the harness defaults (`KUBECONFIG` on Kubernetes).
    pub fn agent_env(&self) -> Vec<(String, String)> {
        match &self.kubernetes {
            Some(kube) => vec![(
                "KUBECONFIG".to_string(),
                kube.kubeconfig.display().to_string(),
            )],
            None => Vec::new(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.member_dir.join("data")
    }
}

/// A member's configuration as a YAML document, with helpers to change any key.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberConfig {
    value: Value,
}

impl MemberConfig {
    /// The configuration every test member starts from (Patroni keys and layout).
    pub fn patroni(spec: &MemberSpec) -> MemberConfig {
        let member_dir = spec.member_dir.display().to_string();
        let template = json!({
            "scope": spec.scope,
            "name": spec.name,
            "namespace": "/service",
            "restapi": {
                "listen": format!("127.0.0.1:{}", spec.api_port),
                "connect_address": format!("127.0.0.1:{}", spec.api_port),
            },
            "etcd3": { "hosts": spec.etcd_hosts },
            "bootstrap": {
                "dcs": {
                    "ttl": spec.timing.ttl,
                    "loop_wait": spec.timing.loop_wait,
                    "retry_timeout": spec.timing.retry_timeout,
                    "maximum_lag_on_failover": 1_048_576,
                    "postgresql": {
                        "use_pg_rewind": true,
                        "use_slots": true,
                        "parameters": {
                            "wal_level": "replica",
                            "wal_log_hints": "on",
                            "hot_standby": "on",
                            "max_connections": 50,
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "128MB",
                        },
                    },
                },
                "initdb": [ { "encoding": "UTF8" }, "data-checksums" ],
            },
            "postgresql": {
                "listen": format!("127.0.0.1:{}", spec.pg_port),
                "connect_address": format!("127.0.0.1:{}", spec.pg_port),
                "data_dir": spec.data_dir().display().to_string(),
                "bin_dir": PG_BIN_DIR,
                "pgpass": format!("{member_dir}/pgpass"),
                "authentication": {
                    "superuser": { "username": SUPERUSER, "password": SUPERUSER_PASSWORD },
                    "replication": {
                        "username": REPLICATION_USER,
                        "password": REPLICATION_PASSWORD,
                    },
                },
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 md5",
                    format!("host replication {REPLICATION_USER} 127.0.0.1/32 md5"),
                ],
                "parameters": {
                    // Private socket directory: /var/run/postgresql may be missing or shared.
                    "unix_socket_directories": member_dir,
                    "shared_buffers": "16MB",
                    // Test processes get killed, the machine does not crash: the page cache
                    // survives, so fsync buys nothing here but slowness on 2 cores.
                    "fsync": "off",
                    "logging_collector": "on",
                    "log_directory": "log",
                    "log_filename": "postgresql.log",
                    "log_line_prefix": "%m [%p] ",
                },
            },
            "tags": {},
        });
        let mut value = serde_yaml_ng::to_value(&template)
            .unwrap_or_else(|e| panic!("member config template is not YAML-serialisable: {e}"));
        if let (Some(kube), Value::Mapping(map)) = (&spec.kubernetes, &mut value) {
            map.remove("etcd3");
            // Patroni copies a top-level `namespace` into the DCS section, where on Kubernetes it
            // would replace the Kubernetes namespace.
            map.remove("namespace");
            let section = json!({
                "namespace": kube.namespace,
                "labels": kube.labels,
                "use_endpoints": kube.use_endpoints,
                "pod_ip": kube.pod_ip,
                // The Endpoints subset names the member's real Postgres port.
                "ports": [ { "name": "postgresql", "port": spec.pg_port } ],
            });
            let section = serde_yaml_ng::to_value(&section)
                .unwrap_or_else(|e| panic!("kubernetes section is not YAML-serialisable: {e}"));
            map.insert(Value::String("kubernetes".to_string()), section);
        }
        MemberConfig { value }
    }

    pub fn from_value(value: Value) -> MemberConfig {
        MemberConfig { value }
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    pub fn value_mut(&mut self) -> &mut Value {
        &mut self.value
    }

    /// Apply an arbitrary change to the document.
    pub fn edit(&mut self, change: impl FnOnce(&mut Value)) -> &mut Self {
        change(&mut self.value);
        self
    }

    /// Set the key at a dotted path (`postgresql.parameters.max_connections`), creating
    /// intermediate mappings as needed.
    pub fn set(&mut self, path: &str, new_value: impl Serialize) -> &mut Self {
        let segments: Vec<&str> = path.split('.').collect();
        self.set_path(&segments, new_value)
    }

    /// Like `set` with explicit segments (for keys that contain dots).
    pub fn set_path(&mut self, segments: &[&str], new_value: impl Serialize) -> &mut Self {
        let new_value = serde_yaml_ng::to_value(new_value)
            .unwrap_or_else(|e| panic!("value for {segments:?} is not YAML-serialisable: {e}"));
        let Some((last, parents)) = segments.split_last() else {
            self.value = new_value;
            return self;
        };
        let mut node = &mut self.value;
        for segment in parents {
            if !node.is_mapping() {
                *node = Value::Mapping(Mapping::new());
            }
            let Value::Mapping(map) = node else {
                unreachable!("just made a mapping")
            };
            node = map
                .entry(Value::String((*segment).to_string()))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
        }
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        if let Value::Mapping(map) = node {
            map.insert(Value::String((*last).to_string()), new_value);
        }
        self
    }

    /// Remove the key at a dotted path; returns the old value.
    pub fn remove(&mut self, path: &str) -> Option<Value> {
        let segments: Vec<&str> = path.split('.').collect();
        let (last, parents) = segments.split_last()?;
        let mut node = &mut self.value;
        for segment in parents {
            node = node.get_mut(*segment)?;
        }
        node.as_mapping_mut()?.remove(*last)
    }

    /// The value at a dotted path.
    pub fn get(&self, path: &str) -> Option<&Value> {
        path.split('.')
            .try_fold(&self.value, |node, segment| node.get(segment))
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(&self.value)
            .unwrap_or_else(|e| panic!("member config cannot be rendered as YAML: {e}"))
    }

    /// Write the YAML to `path` (readable by the postgres user when we are root).
    pub fn write_to(&self, path: &Path) {
        std::fs::write(path, self.to_yaml())
            .unwrap_or_else(|e| panic!("write config {}: {e}", path.display()));
        crate::process::chown_to_postgres(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MemberSpec {
        MemberSpec {
            scope: "demo".into(),
            name: "member-0".into(),
            api_port: 8008,
            pg_port: 5432,
            etcd_hosts: vec!["127.0.0.1:2379".into()],
            kubernetes: None,
            member_dir: PathBuf::from("/tmp/x/member-0"),
            timing: FAST_TIMING,
        }
    }

    #[test]
    fn template_has_patroni_keys() {
        let cfg = MemberConfig::patroni(&spec());
        assert_eq!(cfg.get("scope").and_then(Value::as_str), Some("demo"));
        assert_eq!(
            cfg.get("restapi.listen").and_then(Value::as_str),
            Some("127.0.0.1:8008")
        );
        assert_eq!(
            cfg.get("bootstrap.dcs.ttl").and_then(Value::as_u64),
            Some(10)
        );
        assert_eq!(
            cfg.get("postgresql.data_dir").and_then(Value::as_str),
            Some("/tmp/x/member-0/data")
        );
        assert_eq!(
            cfg.get("etcd3.hosts")
                .and_then(|v| v.as_sequence())
                .map(|s| s.len()),
            Some(1)
        );
        let yaml = cfg.to_yaml();
        let reparsed: Value = serde_yaml_ng::from_str(&yaml).expect("rendered YAML parses");
        assert_eq!(&reparsed, cfg.value());
    }

    #[test]
    fn kubernetes_section_replaces_etcd3() {
        let mut spec = spec();
        spec.kubernetes = Some(KubeSpec {
            namespace: KUBE_NAMESPACE.into(),
            labels: BTreeMap::from([(KUBE_APP_LABEL.0.to_string(), KUBE_APP_LABEL.1.to_string())]),
            use_endpoints: true,
            pod_ip: "10.0.0.1".into(),
            kubeconfig: PathBuf::from("/tmp/x/member-0/kubeconfig"),
        });
        let cfg = MemberConfig::patroni(&spec);
        assert!(cfg.get("etcd3").is_none());
        assert!(cfg.get("namespace").is_none());
        assert_eq!(
            cfg.get("kubernetes.labels.application")
                .and_then(Value::as_str),
            Some("regent-test")
        );
        assert_eq!(
            cfg.get("kubernetes.use_endpoints").and_then(Value::as_bool),
            Some(true)
        );
        assert_eq!(
            cfg.get("kubernetes.pod_ip").and_then(Value::as_str),
            Some("10.0.0.1")
        );
        assert_eq!(
            spec.agent_env(),
            vec![(
                "KUBECONFIG".to_string(),
                "/tmp/x/member-0/kubeconfig".to_string()
            )]
        );
        let pod_labels = spec
            .kubernetes
            .as_ref()
            .map(|k| k.pod_labels("demo"))
            .unwrap_or_default();
        assert_eq!(
            pod_labels.get("cluster-name").map(String::as_str),
            Some("demo")
        );
    }

    #[test]
    fn set_and_remove_by_path() {
        let mut cfg = MemberConfig::patroni(&spec());
        cfg.set("postgresql.parameters.max_connections", 77)
            .set("tags.nofailover", true);
        cfg.set("brand.new.key", "x");
        assert_eq!(
            cfg.get("postgresql.parameters.max_connections")
                .and_then(Value::as_u64),
            Some(77)
        );
        assert_eq!(
            cfg.get("tags.nofailover").and_then(Value::as_bool),
            Some(true)
        );
        assert_eq!(cfg.get("brand.new.key").and_then(Value::as_str), Some("x"));
        assert!(cfg.remove("postgresql.data_dir").is_some());
        assert!(cfg.get("postgresql.data_dir").is_none());
        assert!(cfg.remove("no.such.key").is_none());
        cfg.set_path(
            &["postgresql", "parameters", "auto_explain.log_min_duration"],
            "1s",
        );
        assert_eq!(
            cfg.get("postgresql.parameters")
                .and_then(|p| p.get("auto_explain.log_min_duration"))
                .and_then(Value::as_str),
            Some("1s")
        );
    }
}
