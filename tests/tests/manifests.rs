//! The Kubernetes manifests under kubernetes/ are consistent with each other and with the agent:
//!
//! * every YAML file parses into named objects;
//! * every `PATRONI_*` variable of a container is one the agent reads (agent/src/config/env.rs);
//! * Pod template labels carry the agent's `kubernetes.labels` and scope label, and match the
//!   StatefulSet, Service and PodDisruptionBudget selectors; the primary/replica Services select
//!   the role label values Regent writes; in the Citus manifests `citus-group` equals
//!   `PATRONI_CITUS_GROUP` and every group has one primary Service;
//! * each `serviceAccountName` is bound to a Role with the rules of kubernetes/rbac.yaml;
//! * ports agree (listen and connect addresses, container ports, Services, probes);
//! * docker/Dockerfile's runtime image is what the manifests assume (entrypoint, the postgres
//!   user's uid = runAsUser/fsGroup, exposed ports, the data volume's mount point, PG 15);
//! * mounted files, Secrets and provisioning scripts exist; shipped objects never collide with
//!   the objects Regent creates, nor match its label selector;
//! * each StatefulSet's configuration (the mounted file plus its environment, resolved as the
//!   kubelet would) passes `regent --validate-config`;
//! * kubectl accepts the ConfigMaps and Services in a server-side dry run against the
//!   Kubernetes API test server (kubectl is `$KUBECTL_BIN` or on PATH; .ci/run installs it);
//! * kubernetes/demo.yaml runs: three members with that configuration and environment, under
//!   the Role of kubernetes/rbac.yaml, bootstrap and replicate; the Services select the leader
//!   and the replicas, the Secret's passwords are the ones in use.
//! * kubernetes/citus/ runs: a coordinator and two worker groups under its Role, against real
//!   Citus or the stand-in; pg_dist_node follows the groups' primaries, also through a worker
//!   switchover started with `regent ctl` in the coordinator's Pod, and the provisioning
//!   scripts run once each.
//!
//! What the local runs change, because three Pods share one machine: listen addresses and
//! ports (the connect addresses keep their form with the local ports), data and socket
//! directories, the HA timing, and the provisioning scripts' directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use regent_tests::config::KubeSpec;
use regent_tests::kube::{KubeApiServer, Kubectl, FIXTURE_TOKEN};
use regent_tests::tools::kubectl_bin;
use regent_tests::{
    run_regent, wait_until, wait_until_ok, Member, MemberConfig, MemberSpec, TestDir, FAST_TIMING,
};
use serde::Deserialize;
use serde_json::{json, Value};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// One YAML document of a manifest file.
#[derive(Debug, Clone)]
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    fn what(&self) -> String {
        format!("{} {} ({})", self.kind(), self.name(), self.file)
    }
}

fn parse_docs(path: &Path) -> Vec<Doc> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let file = path
        .strip_prefix(repo_path(""))
        .unwrap_or(path)
        .display()
        .to_string();
    serde_yaml_ng::Deserializer::from_str(&text)
        .enumerate()
        .filter_map(|(i, document)| {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{file}: document {i} is not valid YAML: {e}"));
            (!value.is_null()).then(|| Doc {
                file: file.clone(),
                value,
            })
        })
        .collect()
}

/// The `*.yaml` files directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// The objects applied together: the plain cluster (kubernetes/*.yaml) or the Citus cluster
/// (kubernetes/citus/*.yaml).
struct ManifestSet {
    label: &'static str,
    docs: Vec<Doc>,
}

impl ManifestSet {
    fn load(label: &'static str, dir: &str) -> ManifestSet {
        let docs = yaml_files(&repo_path(dir))
            .iter()
            .flat_map(|f| parse_docs(f))
            .collect();
        ManifestSet { label, docs }
    }

    fn plain() -> ManifestSet {
        ManifestSet::load("kubernetes/", "kubernetes")
    }

    fn citus() -> ManifestSet {
        ManifestSet::load("kubernetes/citus/", "kubernetes/citus")
    }

    fn all() -> Vec<ManifestSet> {
        vec![ManifestSet::plain(), ManifestSet::citus()]
    }

    fn of_kind(&self, kind: &str) -> Vec<&Doc> {
        self.docs.iter().filter(|d| d.kind() == kind).collect()
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Doc> {
        self.docs
            .iter()
            .find(|d| d.kind() == kind && d.name() == name)
    }

    fn statefulsets(&self) -> Vec<Workload<'_>> {
        let sets: Vec<Workload<'_>> = self
            .of_kind("StatefulSet")
            .into_iter()
            .map(|doc| Workload::new(self, doc))
            .collect();
        assert!(!sets.is_empty(), "{}: no StatefulSet", self.label);
        sets
    }
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), text)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every `selector` label present with the same value in `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Where the StatefulSet's first Pod runs in the checks: the values the kubelet would fill in.
const POD_NAMESPACE: &str = "default";
const POD_IP: &str = "10.0.0.1";

/// A StatefulSet with its Pod template's container `regent`, the configuration file its
/// arguments name, and the environment as the kubelet resolves it for one Pod.
struct Workload<'a> {
    set: &'a ManifestSet,
    doc: &'a Doc,
}

impl<'a> Workload<'a> {
    fn new(set: &'a ManifestSet, doc: &'a Doc) -> Workload<'a> {
        Workload { set, doc }
    }

    fn name(&self) -> &str {
        self.doc.name()
    }

    fn pod_name(&self, ordinal: usize) -> String {
        format!("{}-{ordinal}", self.name())
    }

    fn spec(&self) -> &Value {
        &self.doc.value["spec"]
    }

    fn pod_spec(&self) -> &Value {
        &self.spec()["template"]["spec"]
    }

    fn template_labels(&self) -> BTreeMap<String, String> {
        string_map(&self.spec()["template"]["metadata"]["labels"])
    }

    fn container(&self) -> &Value {
        let containers = self.pod_spec()["containers"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no containers", self.doc.what()));
        containers
            .iter()
            .find(|c| c["name"] == "regent")
            .unwrap_or_else(|| panic!("{}: no container named regent", self.doc.what()))
    }

    fn container_port(&self, name: &str) -> u16 {
        self.container()["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("{}: no container port named {name}", self.doc.what()))
    }

    /// `(name, value)` of every variable, `$(VAR)` references and `valueFrom` resolved for the
    /// Pod with this ordinal.
    fn env(&self, ordinal: usize) -> Vec<(String, String)> {
        let mut resolved: Vec<(String, String)> = Vec::new();
        for var in self.container()["env"].as_array().into_iter().flatten() {
            let name = var["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: env entry without a name: {var}", self.doc.what()));
            let value = if let Some(text) = var["value"].as_str() {
                expand_references(text, &resolved)
            } else if let Some(path) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.name" => self.pod_name(ordinal),
                    "metadata.namespace" => POD_NAMESPACE.to_string(),
                    "status.podIP" => POD_IP.to_string(),
                    other => panic!("{}: {name} refers to field {other}", self.doc.what()),
                }
            } else if var["valueFrom"]["secretKeyRef"].is_object() {
                let reference = &var["valueFrom"]["secretKeyRef"];
                self.secret_value(
                    reference["name"].as_str().unwrap_or(""),
                    reference["key"].as_str().unwrap_or(""),
                )
                .unwrap_or_else(|| {
                    panic!(
                        "{}: {name} refers to {reference}, which {} does not define",
                        self.doc.what(),
                        self.set.label
                    )
                })
            } else {
                panic!(
                    "{}: {name} has neither value nor a known valueFrom",
                    self.doc.what()
                )
            };
            resolved.push((name.to_string(), value));
        }
        resolved
    }

    fn env_value(&self, name: &str) -> Option<String> {
        self.env(0)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The raw (unresolved) `value` of a variable.
    fn env_literal(&self, name: &str) -> Option<String> {
        self.container()["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
            .and_then(|v| v["value"].as_str())
            .map(str::to_string)
    }

    fn secret_value(&self, secret: &str, key: &str) -> Option<String> {
        let doc = self.set.find("Secret", secret)?;
        if let Some(text) = doc.value["stringData"][key].as_str() {
            return Some(text.to_string());
        }
        let encoded = doc.value["data"][key].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        String::from_utf8(bytes).ok()
    }

    /// The ConfigMaps of the volume mounted at `mount_path` (a projected volume may have several).
    fn configmaps_mounted_at(&self, mount_path: &str) -> Vec<&'a Doc> {
        let mount = self.container()["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == mount_path);
        let Some(volume_name) = mount.and_then(|m| m["name"].as_str()) else {
            return Vec::new();
        };
        let volume = self.pod_spec()["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == volume_name)
            .unwrap_or_else(|| panic!("{}: no volume named {volume_name}", self.doc.what()));
        let mut names = Vec::new();
        if let Some(name) = volume["configMap"]["name"].as_str() {
            names.push(name.to_string());
        }
        for source in volume["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(name) = source["configMap"]["name"].as_str() {
                names.push(name.to_string());
            }
        }
        names
            .iter()
            .map(|name| {
                self.set.find("ConfigMap", name).unwrap_or_else(|| {
                    panic!(
                        "{}: mounts ConfigMap {name}, which {} does not define",
                        self.doc.what(),
                        self.set.label
                    )
                })
            })
            .collect()
    }

    /// Content of the file at `path` in the container, from a mounted ConfigMap's key.
    fn mounted_file(&self, path: &str) -> Option<String> {
        let (dir, file) = path.rsplit_once('/')?;
        self.configmaps_mounted_at(dir)
            .iter()
            .find_map(|cm| cm.value["data"][file].as_str().map(str::to_string))
    }

    /// The configuration file named by the container's first argument.
    fn config_path(&self) -> String {
        self.container()["args"][0]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "{}: regent gets no configuration file argument",
                    self.doc.what()
                )
            })
            .to_string()
    }

    fn config_text(&self) -> String {
        let path = self.config_path();
        self.mounted_file(&path).unwrap_or_else(|| {
            panic!(
                "{}: {path} is not a key of a mounted ConfigMap",
                self.doc.what()
            )
        })
    }

    fn config(&self) -> Value {
        serde_yaml_ng::from_str(&self.config_text()).unwrap_or_else(|e| {
            panic!(
                "{}: {} is not YAML: {e}",
                self.doc.what(),
                self.config_path()
            )
        })
    }

    /// `kubernetes.<key>` as the agent sees it: the variable wins over the file.
    fn kubernetes_setting(&self, key: &str) -> Option<Value> {
        let var = format!("PATRONI_KUBERNETES_{}", key.to_ascii_uppercase());
        if let Some(raw) = self.env_value(&var) {
            let text = if key == "labels" && !raw.trim_start().starts_with('{') {
                format!("{{{raw}}}")
            } else {
                raw
            };
            return Some(
                serde_yaml_ng::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {var} is not YAML: {e}", self.doc.what())),
            );
        }
        let value = self.config()["kubernetes"][key].clone();
        (!value.is_null()).then_some(value)
    }

    fn scope(&self) -> String {
        self.env_value("PATRONI_SCOPE")
            .or_else(|| self.config()["scope"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("{}: no scope", self.doc.what()))
    }

    fn setting_or(&self, key: &str, default: &str) -> String {
        self.kubernetes_setting(key)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| default.to_string())
    }

    /// `kubernetes.labels` plus `<scope_label>: <scope>`: the agent's selector.
    fn agent_selector(&self) -> BTreeMap<String, String> {
        let mut labels = self
            .kubernetes_setting("labels")
            .map(|v| string_map(&v))
            .unwrap_or_default();
        labels.insert(self.setting_or("scope_label", "cluster-name"), self.scope());
        labels
    }

    fn citus_group(&self) -> Option<u32> {
        self.env_value("PATRONI_CITUS_GROUP")
            .map(|g| {
                g.parse()
                    .unwrap_or_else(|_| panic!("{}: PATRONI_CITUS_GROUP={g}", self.doc.what()))
            })
            .or_else(|| {
                self.config()["citus"]["group"]
                    .as_u64()
                    .and_then(|g| u32::try_from(g).ok())
            })
    }
}

/// Kubernetes' `$(VAR)` expansion against the variables defined earlier in the list.
fn expand_references(text: &str, earlier: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (name, value) in earlier {
        out = out.replace(&format!("$({name})"), value);
    }
    out
}

/// The port of a `host:port` address.
fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in address {address}"))
}

#[test]
fn every_yaml_file_under_kubernetes_parses_into_named_objects() {
    let mut pending = vec![repo_path("kubernetes")];
    let mut files = 0;
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        {
            let path = entry
                .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                continue;
            }
            files += 1;
            let docs = parse_docs(&path);
            assert!(!docs.is_empty(), "{}: no objects", path.display());
            for doc in &docs {
                assert!(
                    doc.value["apiVersion"].is_string()
                        && !doc.kind().is_empty()
                        && !doc.name().is_empty(),
                    "{}: an object without apiVersion, kind or metadata.name: {}",
                    doc.file,
                    doc.value
                );
            }
        }
    }
    assert!(files >= 6, "only {files} YAML files under kubernetes/");
    for set in ManifestSet::all() {
        let mut seen = BTreeSet::new();
        for doc in &set.docs {
            assert!(
                seen.insert((doc.kind().to_string(), doc.name().to_string())),
                "{}: {} is defined twice",
                set.label,
                doc.what()
            );
        }
    }
}

/// The names of the `PATRONI_*` variables the agent reads, from agent/src/config/env.rs:
/// `PATRONI_<SECTION>_<KEY>` for the sections and keys named there, and the generic
/// `PATRONI_<DCS>_<SUFFIX>` forms (Citus: only the suffixes its branch accepts).
struct AgentVariables {
    /// Lowercase string literals of env.rs (section and key names).
    literals: BTreeSet<String>,
    generic_suffixes: BTreeSet<String>,
    citus_suffixes: BTreeSet<String>,
}

/// Top-level settings (`PATRONI_NAME`, ...) and the sections of fixed keys; each must appear as
/// a literal in env.rs.
const TOP_LEVEL: &[&str] = &["name", "scope", "namespace"];
const FIXED_SECTIONS: &[&str] = &[
    "restapi",
    "ctl",
    "postgresql",
    "log",
    "superuser",
    "replication",
    "rewind",
];
const GENERIC_SECTIONS: &[&str] = &["kubernetes", "etcd3"];

impl AgentVariables {
    fn from_source() -> AgentVariables {
        let path = repo_path("agent/src/config/env.rs");
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        // The unit tests' sample data is not what the agent reads.
        let code = source.split("#[cfg(test)]").next().unwrap_or(&source);
        let literals_in = |text: &str| -> Vec<String> {
            text.split('"')
                .skip(1)
                .step_by(2)
                .filter(|s| {
                    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
                .map(str::to_string)
                .collect()
        };
        let block = |start: &str, end: &str| -> String {
            let from = code.find(start).unwrap_or_else(|| {
                panic!(
                    "{} no longer contains `{start}`: update this test",
                    path.display()
                )
            });
            let rest = &code[from..];
            rest[..rest.find(end).unwrap_or(rest.len())].to_string()
        };
        let generic_suffixes = literals_in(&block("const GENERIC_SUFFIXES", "];"))
            .into_iter()
            .collect();
        let citus_suffixes = literals_in(&block("name == \"CITUS\"", "_ =>"))
            .into_iter()
            .filter(|s| s != "CITUS")
            .collect();
        let literals: BTreeSet<String> = literals_in(code)
            .into_iter()
            .filter(|s| s.chars().all(|c| !c.is_ascii_uppercase()))
            .collect();
        for name in TOP_LEVEL.iter().chain(FIXED_SECTIONS) {
            assert!(
                literals.contains(*name),
                "{} does not name `{name}` any more: update this test",
                path.display()
            );
        }
        AgentVariables {
            literals,
            generic_suffixes,
            citus_suffixes,
        }
    }

    fn reads(&self, var: &str) -> bool {
        let Some(rest) = var.strip_prefix("PATRONI_") else {
            return false;
        };
        let lower = rest.to_ascii_lowercase();
        if TOP_LEVEL.contains(&lower.as_str()) {
            return true;
        }
        let Some((section, key)) = rest.split_once('_') else {
            return false;
        };
        let section = section.to_ascii_lowercase();
        if section == "citus" {
            return self.citus_suffixes.contains(key);
        }
        if GENERIC_SECTIONS.contains(&section.as_str()) && self.generic_suffixes.contains(key) {
            return true;
        }
        FIXED_SECTIONS.contains(&section.as_str())
            && self.literals.contains(&key.to_ascii_lowercase())
    }
}

#[test]
fn every_patroni_variable_is_one_the_agent_reads() {
    let agent = AgentVariables::from_source();
    // The check itself rejects misspellings.
    for wrong in [
        "PATRONI_KUBERNETES_PODIP",
        "PATRONI_POSTGRES_CONNECT_ADDRESS",
        "PATRONI_CITUS_HOST",
        "PATRONI_RESTAPI_CONNECTADDRESS",
    ] {
        assert!(!agent.reads(wrong), "{wrong} must not count as read");
    }
    let mut checked = 0;
    for set in ManifestSet::all() {
        for workload in set.statefulsets() {
            for var in workload.container()["env"].as_array().into_iter().flatten() {
                let name = var["name"].as_str().unwrap_or("");
                if !name.starts_with("PATRONI_") {
                    continue;
                }
                checked += 1;
                assert!(
                    agent.reads(name),
                    "{}: {name} is not a variable the agent reads (agent/src/config/env.rs)",
                    workload.doc.what()
                );
            }
            for (name, _) in workload.env(0) {
                assert!(
                    !name.starts_with("PATRONI_") || name == name.to_ascii_uppercase(),
                    "{}: {name} must be upper case",
                    workload.doc.what()
                );
            }
        }
    }
    assert!(checked >= 40, "only {checked} PATRONI_* variables checked");
}

#[test]
fn labels_match_selectors_services_and_the_agents_labels() {
    for set in ManifestSet::all() {
        let services = set.of_kind("Service");
        for workload in set.statefulsets() {
            let what = workload.doc.what();
            let labels = workload.template_labels();
            let selector = workload.agent_selector();
            assert!(
                selects(&selector, &labels),
                "{what}: Pod labels {labels:?} lack the agent's kubernetes.labels + scope label {selector:?}"
            );
            let match_labels = string_map(&workload.spec()["selector"]["matchLabels"]);
            assert!(
                !match_labels.is_empty() && selects(&match_labels, &labels),
                "{what}: selector {match_labels:?} does not match the Pod labels {labels:?}"
            );
            let role_label = workload.setting_or("role_label", "role");
            assert!(
                !labels.contains_key(&role_label),
                "{what}: the Pod template must not set {role_label}: Regent keeps it current"
            );
            // The headless Service of the StatefulSet.
            let service_name = workload.spec()["serviceName"].as_str().unwrap_or("");
            let headless = set.find("Service", service_name).unwrap_or_else(|| {
                panic!(
                    "{what}: serviceName {service_name} is not defined in {}",
                    set.label
                )
            });
            assert_eq!(
                headless.value["spec"]["clusterIP"],
                "None",
                "{}",
                headless.what()
            );
            assert!(selects(
                &string_map(&headless.value["spec"]["selector"]),
                &labels
            ));

            // Services route by the role label values Regent writes.
            let leader_value = workload.setting_or("leader_label_value", "primary");
            let follower_value = workload.setting_or("follower_label_value", "replica");
            let as_role = |value: &str| {
                let mut l = labels.clone();
                l.insert(role_label.clone(), value.to_string());
                l
            };
            let primary_services: Vec<&str> = services
                .iter()
                .filter(|s| {
                    let sel = string_map(&s.value["spec"]["selector"]);
                    sel.get(&role_label) == Some(&leader_value)
                        && selects(&sel, &as_role(&leader_value))
                })
                .map(|s| s.name())
                .collect();
            assert_eq!(
                primary_services.len(),
                1,
                "{what}: exactly one Service must select its leader ({role_label}={leader_value}): {primary_services:?}"
            );
            for service in &services {
                let sel = string_map(&service.value["spec"]["selector"]);
                if let Some(role) = sel.get(&role_label) {
                    assert!(
                        role == &leader_value || role == &follower_value,
                        "{}: selects {role_label}={role}, a value Regent never writes",
                        service.what()
                    );
                }
                // Every selector must match some Pod of the set (no dangling Service).
            }
        }
        for service in &services {
            let sel = string_map(&service.value["spec"]["selector"]);
            let matched = set.statefulsets().iter().any(|w| {
                let mut labels = w.template_labels();
                for (k, v) in &sel {
                    if k == "role" {
                        labels.insert(k.clone(), v.clone());
                    }
                }
                selects(&sel, &labels)
            });
            assert!(
                matched,
                "{}: selects no Pod of {}",
                service.what(),
                set.label
            );
        }
        for pdb in set.of_kind("PodDisruptionBudget") {
            let sel = string_map(&pdb.value["spec"]["selector"]["matchLabels"]);
            let matched = set
                .statefulsets()
                .iter()
                .filter(|w| selects(&sel, &w.template_labels()))
                .count();
            assert_eq!(
                matched,
                1,
                "{}: must select the Pods of exactly one StatefulSet",
                pdb.what()
            );
        }
    }
}

#[test]
fn citus_groups_match_their_labels_and_each_has_a_primary_service() {
    let set = ManifestSet::citus();
    let mut groups = BTreeSet::new();
    let mut scopes = BTreeSet::new();
    for workload in set.statefulsets() {
        let what = workload.doc.what();
        let group = workload
            .citus_group()
            .unwrap_or_else(|| panic!("{what}: no Citus group"));
        assert!(groups.insert(group), "{what}: group {group} used twice");
        scopes.insert(workload.scope());
        assert_eq!(
            workload.template_labels().get("citus-group"),
            Some(&group.to_string()),
            "{what}: the citus-group Pod label must equal PATRONI_CITUS_GROUP"
        );
        assert_eq!(
            workload.name(),
            format!("{}-{group}", workload.scope()),
            "{what}: StatefulSet named <scope>-<group>, as Patroni's Citus example"
        );
        assert!(
            workload.env_value("PATRONI_CITUS_DATABASE").is_some()
                || workload.config()["citus"]["database"].is_string(),
            "{what}: no Citus database"
        );
        let expected_type = if group == 0 { "coordinator" } else { "worker" };
        assert_eq!(
            workload
                .template_labels()
                .get("citus-type")
                .map(String::as_str),
            Some(expected_type),
            "{what}"
        );
        // The group's primary Service selects the group's leader only.
        let primary = format!("{}-{group}-primary", workload.scope());
        let service = set
            .find("Service", &primary)
            .unwrap_or_else(|| panic!("{what}: no Service {primary}"));
        let sel = string_map(&service.value["spec"]["selector"]);
        assert_eq!(
            sel.get("citus-group"),
            Some(&group.to_string()),
            "{}",
            service.what()
        );
        assert_eq!(
            sel.get("role").map(String::as_str),
            Some("primary"),
            "{}",
            service.what()
        );
    }
    assert_eq!(
        groups,
        BTreeSet::from([0, 1, 2]),
        "a coordinator and two worker groups"
    );
    // A worker authenticates its POST /citus to the coordinator with its own REST credentials.
    let credentials: BTreeSet<(Option<String>, Option<String>)> = set
        .statefulsets()
        .iter()
        .map(|w| {
            (
                w.env_value("PATRONI_RESTAPI_USERNAME"),
                w.env_value("PATRONI_RESTAPI_PASSWORD"),
            )
        })
        .collect();
    assert_eq!(
        credentials.len(),
        1,
        "every group must use the same REST credentials: {credentials:?}"
    );
    assert_eq!(
        scopes.len(),
        1,
        "one scope for the whole Citus cluster: {scopes:?}"
    );
}

/// The rules of Role `name` in `set`, normalised (sorted verbs and resources).
fn role_rules(docs: &[Doc], name: &str) -> BTreeSet<(String, String, String)> {
    let role = docs
        .iter()
        .find(|d| d.kind() == "Role" && d.name() == name)
        .unwrap_or_else(|| panic!("no Role {name}"));
    let mut rules = BTreeSet::new();
    for rule in role.value["rules"].as_array().into_iter().flatten() {
        for group in rule["apiGroups"].as_array().into_iter().flatten() {
            for resource in rule["resources"].as_array().into_iter().flatten() {
                for verb in rule["verbs"].as_array().into_iter().flatten() {
                    rules.insert((
                        group.as_str().unwrap_or("?").to_string(),
                        resource.as_str().unwrap_or("?").to_string(),
                        verb.as_str().unwrap_or("?").to_string(),
                    ));
                }
            }
        }
    }
    rules
}

#[test]
fn service_accounts_are_bound_to_regents_role() {
    let reference = parse_docs(&repo_path("kubernetes/rbac.yaml"));
    let regent_rules = role_rules(&reference, "regent");
    for needed in [
        ("configmaps", "create"),
        ("configmaps", "patch"),
        ("configmaps", "watch"),
        ("pods", "patch"),
        ("pods", "list"),
    ] {
        assert!(
            regent_rules.contains(&(String::new(), needed.0.to_string(), needed.1.to_string())),
            "kubernetes/rbac.yaml Role regent lacks {needed:?}"
        );
    }
    for set in ManifestSet::all() {
        for workload in set.statefulsets() {
            let what = workload.doc.what();
            let account = workload.pod_spec()["serviceAccountName"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: no serviceAccountName"));
            assert!(
                set.find("ServiceAccount", account).is_some(),
                "{what}: ServiceAccount {account} not defined in {}",
                set.label
            );
            let bindings: Vec<&Doc> = set
                .of_kind("RoleBinding")
                .into_iter()
                .filter(|b| {
                    b.value["subjects"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| s["kind"] == "ServiceAccount" && s["name"] == account)
                })
                .collect();
            let bound_rules: BTreeSet<_> = bindings
                .iter()
                .filter(|b| b.value["roleRef"]["kind"] == "Role")
                .flat_map(|b| {
                    role_rules(&set.docs, b.value["roleRef"]["name"].as_str().unwrap_or(""))
                })
                .collect();
            assert!(
                regent_rules.is_subset(&bound_rules),
                "{what}: ServiceAccount {account} is bound to {bound_rules:?}, which lacks some of Role regent's {regent_rules:?}"
            );
        }
    }
    // The Citus cluster's Role is Regent's ConfigMap-mode Role under another name.
    let citus = ManifestSet::citus();
    let citus_role = citus.of_kind("Role");
    assert_eq!(citus_role.len(), 1);
    assert_eq!(role_rules(&citus.docs, citus_role[0].name()), regent_rules);
}

#[test]
fn ports_agree_between_configuration_containers_services_and_probes() {
    for set in ManifestSet::all() {
        for workload in set.statefulsets() {
            let what = workload.doc.what();
            let config = workload.config();
            let pg_port = workload.container_port("postgresql");
            let api_port = workload.container_port("api");
            let pg_listen = config["postgresql"]["listen"].as_str().unwrap_or("");
            let api_listen = config["restapi"]["listen"].as_str().unwrap_or("");
            assert_eq!(port_of(pg_listen), pg_port, "{what}: postgresql.listen");
            assert_eq!(port_of(api_listen), api_port, "{what}: restapi.listen");
            for (var, port) in [
                ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", pg_port),
                ("PATRONI_RESTAPI_CONNECT_ADDRESS", api_port),
            ] {
                let literal = workload.env_literal(var).unwrap_or_default();
                assert_eq!(
                    literal,
                    format!("$(PATRONI_KUBERNETES_POD_IP):{port}"),
                    "{what}: {var} must be the Pod IP and the container port"
                );
                assert_eq!(
                    workload.env_value(var),
                    Some(format!("{POD_IP}:{port}")),
                    "{what}: {var}"
                );
            }
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                let port = &workload.container()[probe]["httpGet"]["port"];
                if !port.is_null() {
                    assert!(
                        port == "api" || port == api_port,
                        "{what}: {probe} on port {port}"
                    );
                }
            }
            let labels = workload.template_labels();
            for service in set.of_kind("Service") {
                if !selects(&string_map(&service.value["spec"]["selector"]), &{
                    let mut l = labels.clone();
                    l.insert("role".into(), "primary".into());
                    l
                }) {
                    continue;
                }
                for port in service.value["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let target = &port["targetPort"];
                    let resolved = match target.as_str() {
                        Some(name) => workload.container_port(name),
                        None => target
                            .as_u64()
                            .and_then(|p| u16::try_from(p).ok())
                            .unwrap_or(0),
                    };
                    let expected = if port["name"] == "api" {
                        api_port
                    } else {
                        pg_port
                    };
                    assert_eq!(resolved, expected, "{}: port {port}", service.what());
                }
            }
        }
    }
}

#[test]
fn mounted_files_secrets_and_provisioning_scripts_exist() {
    for set in ManifestSet::all() {
        for workload in set.statefulsets() {
            let what = workload.doc.what();
            let config = workload.config();
            // Every variable resolves (secretKeyRef keys exist: `env` panics otherwise).
            assert!(
                workload
                    .env(1)
                    .iter()
                    .any(|(k, v)| k == "PATRONI_NAME" && *v == workload.pod_name(1)),
                "{what}"
            );
            if let Some(ctl) = workload.env_value("PATRONICTL_CONFIG_FILE") {
                assert_eq!(
                    ctl,
                    workload.config_path(),
                    "{what}: regent ctl reads another file"
                );
            }
            let provision = &config["citus"]["provision"];
            let mut scripts = 0;
            for role in ["coordinator", "worker"] {
                let paths: Vec<&str> = match &provision[role] {
                    Value::String(p) => vec![p.as_str()],
                    Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                for path in paths {
                    scripts += 1;
                    let text = workload
                        .mounted_file(path)
                        .unwrap_or_else(|| panic!("{what}: citus.provision.{role} names {path}, which no mounted ConfigMap holds"));
                    assert!(
                        path.ends_with(".sql") && !text.trim().is_empty(),
                        "{what}: {path}"
                    );
                }
            }
            if set.label.contains("citus") {
                assert!(
                    scripts >= 2,
                    "{what}: coordinator and worker provisioning scripts"
                );
            }
        }
    }
}

#[test]
fn shipped_objects_never_collide_with_regents_own() {
    for set in ManifestSet::all() {
        for workload in set.statefulsets() {
            let scope = workload.scope();
            let prefix = match workload.citus_group() {
                Some(group) => format!("{scope}-{group}"),
                None => scope.clone(),
            };
            // ConfigMap mode names and, should use_endpoints be switched on, Endpoints mode ones
            // (the `<scope>` Endpoints and the `<scope>-config` Service).
            let mut regents: Vec<String> = ["leader", "config", "failover", "sync"]
                .iter()
                .map(|o| format!("{prefix}-{o}"))
                .collect();
            regents.push(prefix.clone());
            let selector = workload.agent_selector();
            for doc in &set.docs {
                if matches!(doc.kind(), "ConfigMap" | "Service" | "Endpoints") {
                    assert!(
                        !regents.contains(&doc.name().to_string()),
                        "{}: Regent creates an object of that name",
                        doc.what()
                    );
                }
                if matches!(doc.kind(), "ConfigMap" | "Endpoints") {
                    let labels = string_map(&doc.value["metadata"]["labels"]);
                    assert!(
                        !selects(&selector, &labels),
                        "{}: matches the agent's selector {selector:?}; Regent would list it as one of its own",
                        doc.what()
                    );
                }
            }
        }
    }
}

/// The instructions of docker/Dockerfile's last stage (the runtime image), continuation lines
/// joined.
fn runtime_stage_instructions() -> Vec<String> {
    let path = repo_path("docker/Dockerfile");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty()
            || trimmed.is_empty() && current.is_empty()
        {
            continue;
        }
        current.push_str(trimmed.trim_end_matches('\\'));
        current.push(' ');
        if !trimmed.ends_with('\\') {
            instructions.push(current.trim().to_string());
            current.clear();
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .unwrap_or_else(|| panic!("{}: no FROM", path.display()));
    instructions.split_off(last_from)
}

#[test]
fn the_image_matches_what_the_manifests_expect() {
    let runtime = runtime_stage_instructions();
    let find = |keyword: &str| -> Vec<&String> {
        runtime.iter().filter(|i| i.starts_with(keyword)).collect()
    };
    let user = find("USER ");
    assert_eq!(user.len(), 1, "one USER in the runtime stage: {user:?}");
    let uid = user[0]["USER ".len()..]
        .split(':')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    assert_eq!(
        find("ENTRYPOINT "),
        [&"ENTRYPOINT [\"/usr/local/bin/regent\"]".to_string()],
        "regent is the entrypoint (PID 1)"
    );
    let exposed: BTreeSet<u16> = find("EXPOSE ")
        .iter()
        .flat_map(|i| i["EXPOSE ".len()..].split_whitespace())
        .map(|p| p.parse().unwrap_or_else(|_| panic!("EXPOSE {p}")))
        .collect();
    let install = runtime
        .iter()
        .find(|i| i.contains("useradd"))
        .unwrap_or_else(|| panic!("the runtime stage creates no postgres user"));
    assert!(
        install.contains(&format!("--uid {uid}")) && install.contains(&format!("--gid {uid}")),
        "USER {uid} must be the postgres user the image creates: {install}"
    );
    for set in ManifestSet::all() {
        for workload in set.statefulsets() {
            let what = workload.doc.what();
            let security = &workload.pod_spec()["securityContext"];
            for key in ["runAsUser", "runAsGroup", "fsGroup"] {
                assert_eq!(
                    security[key].to_string(),
                    uid,
                    "{what}: securityContext.{key}"
                );
            }
            for port in ["postgresql", "api"] {
                let number = workload.container_port(port);
                assert!(
                    exposed.contains(&number),
                    "{what}: port {number} not exposed by the image"
                );
            }
            // The data directory lies in the volume, which the image prepares for the user.
            let data_dir = workload.config()["postgresql"]["data_dir"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let mount = workload.container()["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["mountPath"].as_str())
                .find(|m| data_dir.starts_with(&format!("{m}/")))
                .unwrap_or_else(|| panic!("{what}: data_dir {data_dir} is on no volume"));
            assert!(
                workload.spec()["volumeClaimTemplates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| workload.container()["volumeMounts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|m| m["mountPath"] == mount && m["name"] == t["metadata"]["name"])),
                "{what}: {mount} is not a volume claim"
            );
            assert!(
                install.contains(mount),
                "{what}: the image does not create {mount} for the postgres user"
            );
            // The configured PostgreSQL is the image's (bin_dir unset: /usr/lib/postgresql/15/bin).
            assert!(
                workload.config()["postgresql"]["bin_dir"].is_null(),
                "{what}: bin_dir"
            );
        }
    }
    assert!(
        runtime.iter().any(|i| i.starts_with("ARG PG_MAJOR=15")),
        "the image's PostgreSQL is 15, which the agent looks for by default"
    );
}

/// The configuration file and environment of Pod 0 of `workload`, written for the agent.
fn write_member_files(dir: &Path, workload: &Workload<'_>) -> (PathBuf, Vec<(String, String)>) {
    let config = dir.join(format!("{}.yaml", workload.name()));
    std::fs::write(&config, workload.config_text())
        .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
    regent_tests::process::chown_to_postgres(&config);
    (config, workload.env(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statefulset_configuration_passes_validate_config() {
    let dir = TestDir::new("manifests-validate");
    let work = dir.postgres_subdir("work");
    for set in ManifestSet::all() {
        for workload in set.statefulsets() {
            let (config, env) = write_member_files(&work, &workload);
            let mut cmd = regent_tests::regent_command(&regent_tests::regent_bin(), &work);
            cmd.envs(env.iter().map(|(k, v)| (k, v)))
                .arg("--validate-config")
                .arg(&config);
            let output = tokio::process::Command::from(cmd)
                .kill_on_drop(true)
                .output();
            let output = tokio::time::timeout(Duration::from_secs(30), output)
                .await
                .unwrap_or_else(|_| panic!("{}: --validate-config hangs", workload.doc.what()))
                .unwrap_or_else(|e| panic!("run regent: {e}"));
            assert!(
                output.status.success(),
                "{}: regent --validate-config failed: {}{}",
                workload.doc.what(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            // The same file without the environment lacks the member's name and addresses: the
            // variables are what completes it.
            let bare = run_regent(
                ["--validate-config".as_ref(), config.as_os_str()],
                &work,
                Duration::from_secs(30),
            )
            .await;
            assert_eq!(
                bare.status.code(),
                Some(2),
                "{}: valid without its environment",
                workload.doc.what()
            );
        }
    }
}

/// The documents of kinds the Kubernetes API test server serves, as one multi-document file.
fn supported_documents(set: &ManifestSet) -> String {
    set.docs
        .iter()
        .filter(|d| matches!(d.kind(), "ConfigMap" | "Service"))
        .map(|d| serde_yaml_ng::to_string(&d.value).unwrap_or_else(|e| panic!("{}: {e}", d.what())))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_dry_run_accepts_configmaps_and_services() {
    let bin = kubectl_bin();
    let server = KubeApiServer::launch().await;
    for set in ManifestSet::all() {
        let file = server
            .dir()
            .join(format!("{}.yaml", set.label.replace('/', "_")));
        std::fs::write(&file, supported_documents(&set))
            .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        let file_arg = file.display().to_string();
        let out = Kubectl::new(bin.clone(), &server, FIXTURE_TOKEN)
            .timeout(Duration::from_secs(60))
            .ok(&[
                "apply",
                "--dry-run=server",
                "-n",
                "default",
                "-f",
                &file_arg,
            ])
            .await;
        let expected = set
            .docs
            .iter()
            .filter(|d| matches!(d.kind(), "ConfigMap" | "Service"))
            .count();
        assert_eq!(
            out.lines()
                .filter(|l| l.contains("(server dry run)"))
                .count(),
            expected,
            "{}: kubectl printed {out}",
            set.label
        );
        // A dry run stores nothing.
        assert!(server
            .list("services", "default", "")
            .await
            .iter()
            .all(|s| s["metadata"]["name"] == "kubernetes"));
        assert!(server.list("configmaps", "default", "").await.is_empty());
    }
}

/// Bootstrap, base backups and streaming of three members on a busy 2-core machine.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(180);

/// The Pod `ordinal` of `workload` as a local member: the manifest's configuration file and
/// environment, with only what cannot be the same on one machine changed — listen addresses
/// and ports (the connect addresses keep the Pod IP's host and get the local ports), the data
/// and socket directories, and the HA timing (FAST_TIMING instead of the file's ttl 30 /
/// loop_wait 10). The Pod IP is 127.0.0.1.
async fn local_member(
    dir: &TestDir,
    server: &KubeApiServer,
    workload: &Workload<'_>,
    ordinal: usize,
    adapt: &dyn Fn(&mut MemberConfig),
) -> Member {
    let name = workload.pod_name(ordinal);
    let member_dir = dir.postgres_subdir(&name);
    let mut spec = MemberSpec::new(&workload.scope(), &name, member_dir.clone(), Vec::new());
    let labels = workload.template_labels();
    server
        .create_pod(POD_NAMESPACE, &name, &labels, "127.0.0.1")
        .await;
    spec.kubernetes = Some(KubeSpec {
        namespace: POD_NAMESPACE.to_string(),
        labels: labels.clone(),
        use_endpoints: false,
        pod_ip: "127.0.0.1".to_string(),
        kubeconfig: server.write_kubeconfig(&member_dir.join("kubeconfig"), &name),
    });
    regent_tests::process::chown_to_postgres(&member_dir.join("kubeconfig"));
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&workload.config_text())
        .unwrap_or_else(|e| panic!("{}: {e}", workload.doc.what()));
    let mut config = MemberConfig::from_value(value);
    config
        .set("postgresql.listen", format!("127.0.0.1:{}", spec.pg_port))
        .set("restapi.listen", format!("127.0.0.1:{}", spec.api_port))
        .set("postgresql.data_dir", spec.data_dir().display().to_string())
        .set(
            "postgresql.parameters.unix_socket_directories",
            member_dir.display().to_string(),
        )
        .set("bootstrap.dcs.ttl", FAST_TIMING.ttl)
        .set("bootstrap.dcs.loop_wait", FAST_TIMING.loop_wait)
        .set("bootstrap.dcs.retry_timeout", FAST_TIMING.retry_timeout);
    adapt(&mut config);
    let (pg_port, api_port) = (spec.pg_port, spec.api_port);
    let mut member = Member::create(spec, config, regent_tests::regent_bin());
    for (key, value) in workload.env(ordinal) {
        let value = match key.as_str() {
            "PATRONI_KUBERNETES_POD_IP" => "127.0.0.1".to_string(),
            "PATRONI_POSTGRESQL_CONNECT_ADDRESS" => format!("127.0.0.1:{pg_port}"),
            "PATRONI_RESTAPI_CONNECT_ADDRESS" => format!("127.0.0.1:{api_port}"),
            "PATRONICTL_CONFIG_FILE" => member.config_path().display().to_string(),
            _ => value,
        };
        member = member.with_env(&key, &value);
    }
    member
}

/// `regent ctl list -f json <extra>` run with `member`'s environment: member name → role.
async fn ctl_list(member: &Member, extra: &[&str]) -> (BTreeMap<String, String>, String) {
    let mut ctl = regent_tests::regent_command(member.binary(), member.member_dir());
    ctl.envs(member.env().iter().map(|(k, v)| (k, v)))
        .args(["ctl", "list", "-f", "json"])
        .args(extra);
    let listed = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::from(ctl)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("regent ctl list hangs"))
    .unwrap_or_else(|e| panic!("run regent ctl list: {e}"));
    let stdout = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.status.success(),
        "regent ctl list {extra:?}: {stdout}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let rows: Vec<Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("regent ctl list -f json printed {stdout}: {e}"));
    let roles = rows
        .iter()
        .map(|r| {
            (
                r["Member"].as_str().unwrap_or("").to_string(),
                r["Role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    (roles, stdout)
}

async fn pods_selected_by(
    server: &KubeApiServer,
    selector: &BTreeMap<String, String>,
) -> Vec<String> {
    let selector: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut names: Vec<String> = server
        .list("pods", POD_NAMESPACE, &selector.join(","))
        .await
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_manifest_runs_a_three_member_cluster_under_its_role() {
    let set = ManifestSet::plain();
    let workloads = set.statefulsets();
    let [workload] = workloads.as_slice() else {
        panic!("kubernetes/: one StatefulSet expected");
    };
    let replicas = workload.spec()["replicas"].as_u64().unwrap_or(1) as usize;
    assert_eq!(replicas, 3, "a three-member cluster");
    let rbac = repo_path("kubernetes/rbac.yaml");
    let server = KubeApiServer::builder()
        .rbac_file(&rbac, &["regent"], &[])
        .launch()
        .await;
    // The manifest's own ConfigMaps and Services sit next to Regent's objects.
    for doc in set
        .docs
        .iter()
        .filter(|d| matches!(d.kind(), "ConfigMap" | "Service"))
    {
        let resource = if doc.kind() == "ConfigMap" {
            "configmaps"
        } else {
            "services"
        };
        let mut body = doc.value.clone();
        body["metadata"]["namespace"] = json!(POD_NAMESPACE);
        let (status, answer) = server
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/namespaces/{POD_NAMESPACE}/{resource}"),
                "application/json",
                Some(&body),
            )
            .await
            .unwrap_or_else(|e| panic!("create {}: {e:#}", doc.what()));
        assert_eq!(status, 201, "create {}: {answer}", doc.what());
    }
    let dir = TestDir::new("manifests-demo");
    let mut members = Vec::new();
    for ordinal in 0..replicas {
        members.push(local_member(&dir, &server, workload, ordinal, &|_| {}).await);
    }
    for member in &members {
        member.start();
    }

    let leader = wait_until_ok("a leader answering /primary", CLUSTER_DEADLINE, || async {
        let mut primaries = Vec::new();
        for m in &members {
            if m.api_status("/primary").await == Some(200) {
                primaries.push(m.name().to_string());
            }
        }
        match primaries.as_slice() {
            [one] => Ok(one.clone()),
            other => anyhow::bail!("members answering /primary 200: {other:?}"),
        }
    })
    .await;
    let scope = workload.scope();
    let mut primary_selector = workload.template_labels();
    primary_selector.insert("role".into(), "primary".into());
    let mut replica_selector = workload.template_labels();
    replica_selector.insert("role".into(), "replica".into());
    let mut others: Vec<String> = members
        .iter()
        .map(|m| m.name().to_string())
        .filter(|n| *n != leader)
        .collect();
    others.sort();
    // The Services' selectors find the leader and the streaming replicas.
    wait_until_ok("the Services to select the leader and the replicas", CLUSTER_DEADLINE, || async {
        let primaries = pods_selected_by(&server, &primary_selector).await;
        let replicas = pods_selected_by(&server, &replica_selector).await;
        let mut streaming = Vec::new();
        for m in &members {
            if m.name() != leader && m.api_status("/replica").await == Some(200) {
                streaming.push(m.name().to_string());
            }
        }
        streaming.sort();
        if primaries != [leader.clone()] || replicas != others || streaming != others {
            anyhow::bail!("role=primary {primaries:?}, role=replica {replicas:?}, /replica 200 {streaming:?}");
        }
        Ok(())
    })
    .await;

    // Regent's objects carry the manifest's labels; the manifest's ConfigMap is untouched.
    let leader_object = server
        .get("configmaps", POD_NAMESPACE, &format!("{scope}-leader"))
        .await
        .unwrap_or_else(|| panic!("no {scope}-leader ConfigMap"));
    assert_eq!(
        leader_object["metadata"]["annotations"]["leader"],
        json!(leader)
    );
    assert!(selects(
        &workload.agent_selector(),
        &string_map(&leader_object["metadata"]["labels"])
    ));
    let shipped = set
        .find("ConfigMap", "demo-regent")
        .map(|d| d.value["data"].clone());
    let stored = server
        .get("configmaps", POD_NAMESPACE, "demo-regent")
        .await
        .map(|c| c["data"].clone());
    assert_eq!(stored, shipped, "the manifest's ConfigMap changed");

    // The member data names the member after its Pod, with the configured addresses.
    let leader_member = members
        .iter()
        .find(|m| m.name() == leader)
        .unwrap_or_else(|| panic!("no member {leader}"));
    let patroni: Value = reqwest::get(format!("{}/patroni", leader_member.api_base()))
        .await
        .unwrap_or_else(|e| panic!("GET /patroni: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET /patroni body: {e}"));
    assert_eq!(patroni["patroni"]["name"], json!(leader), "{patroni}");
    assert_eq!(patroni["patroni"]["scope"], json!(scope), "{patroni}");

    // The superuser password of the Secret is the one set at bootstrap.
    let password = workload
        .env_value("PATRONI_SUPERUSER_PASSWORD")
        .unwrap_or_default();
    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1")
        .port(leader_member.pg_port())
        .user("postgres")
        .password(password.as_str())
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect as postgres with the Secret's password: {e}"));
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("query pg_stat_replication: {e}"));
    assert_eq!(
        row.get::<_, i64>(0),
        2,
        "both replicas stream with the replication password"
    );

    // Unsafe REST calls need the Secret's REST credentials.
    let reload = format!("{}/reload", leader_member.api_base());
    let http = reqwest::Client::new();
    let anonymous = http
        .post(&reload)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /reload: {e}"));
    assert_eq!(anonymous.status().as_u16(), 401);
    let user = workload
        .env_value("PATRONI_RESTAPI_USERNAME")
        .unwrap_or_default();
    let secret = workload
        .env_value("PATRONI_RESTAPI_PASSWORD")
        .unwrap_or_default();
    let authorised = http
        .post(&reload)
        .basic_auth(user, Some(secret))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /reload: {e}"));
    assert!(
        authorised.status().is_success(),
        "POST /reload with the Secret's credentials: {}",
        authorised.status()
    );

    // `kubectl exec <pod> -- regent ctl list` (docs/kubernetes.md): the Pod's variables and
    // PATRONICTL_CONFIG_FILE are all regent ctl needs.
    let (roles, stdout) = ctl_list(leader_member, &[]).await;
    assert_eq!(roles.len(), replicas, "regent ctl list: {stdout}");
    assert_eq!(
        roles.get(&leader).map(String::as_str),
        Some("Leader"),
        "{stdout}"
    );

    // Nothing the members did needed more than the Role.
    let denied: Vec<Value> = server.denied_requests().await;
    assert!(
        denied.is_empty(),
        "requests refused under Role regent: {denied:?}"
    );
    wait_until(
        "every member still running",
        Duration::from_secs(1),
        || async { members.iter().all(Member::agent_running).then_some(()) },
    )
    .await;
}

/// A connection to `member`'s database `dbname` as the superuser, with the Secret's password.
async fn superuser_client(
    member: &Member,
    password: &str,
    dbname: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1")
        .port(member.pg_port())
        .user("postgres")
        .password(password)
        .dbname(dbname)
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Citus: members of each StatefulSet of kubernetes/citus/ (one for the coordinator and group
/// 2, two for group 1), with the manifests' configuration, environment and provisioning scripts
/// (written to local files, `citus.provision` pointing at them), under the Role of
/// kubernetes/citus/rbac.yaml, against real Citus or the stand-in: the coordinator registers
/// every group's primary in pg_dist_node, runs its script once two worker groups are registered
/// (the distributed table takes rows through the coordinator), and each worker runs its own;
/// `regent ctl list --group N` and `regent ctl switchover --group 1` from the coordinator's Pod
/// work as docs/citus.md shows, pg_dist_node follows the switchover and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn citus_manifests_run_a_coordinator_and_two_worker_groups() {
    let flavor = regent_tests::citus::ensure_citus();
    eprintln!("[manifests/citus] against {}", flavor.describe());
    let set = ManifestSet::citus();
    let workloads = set.statefulsets();
    let server = KubeApiServer::builder()
        .rbac_file(
            &repo_path("kubernetes/citus/rbac.yaml"),
            &["citusdemo"],
            &[],
        )
        .launch()
        .await;
    let dir = TestDir::new("manifests-citus");
    let scripts = dir.postgres_subdir("provision");
    let provision = set
        .find("ConfigMap", "citusdemo-provision")
        .unwrap_or_else(|| panic!("no ConfigMap citusdemo-provision"));
    for (file, text) in provision.value["data"].as_object().into_iter().flatten() {
        let path = scripts.join(file);
        std::fs::write(&path, text.as_str().unwrap_or(""))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        regent_tests::process::chown_to_postgres(&path);
    }
    let relocate = |config: &mut MemberConfig| {
        for role in ["coordinator", "worker"] {
            let key = format!("citus.provision.{role}");
            let moved: Vec<String> = match config.get(&key) {
                Some(serde_yaml_ng::Value::Sequence(items)) => items
                    .iter()
                    .filter_map(|p| p.as_str())
                    .map(|p| {
                        let file = p.rsplit('/').next().unwrap_or(p);
                        scripts.join(file).display().to_string()
                    })
                    .collect(),
                other => panic!("{key} is not a list: {other:?}"),
            };
            config.set(&key, moved);
        }
    };
    // Group 1 gets a second member, for a worker switchover.
    let mut members: Vec<(u32, Member)> = Vec::new();
    for workload in &workloads {
        let group = workload
            .citus_group()
            .unwrap_or_else(|| panic!("{}: no group", workload.doc.what()));
        let count = if group == 1 { 2 } else { 1 };
        for ordinal in 0..count {
            let member = local_member(&dir, &server, workload, ordinal, &relocate).await;
            members.push((group, member));
        }
    }
    for (_, member) in &members {
        member.start();
    }
    let password = workloads[0]
        .env_value("PATRONI_SUPERUSER_PASSWORD")
        .unwrap_or_default();
    let password = password.as_str();
    let groups: BTreeSet<u32> = members.iter().map(|(g, _)| *g).collect();
    let of_group = |group: u32| -> Vec<&Member> {
        members
            .iter()
            .filter(|(g, _)| *g == group)
            .map(|(_, m)| m)
            .collect()
    };

    // Every group's leader, then pg_dist_node naming each of them.
    let leaders: BTreeMap<u32, String> =
        wait_until_ok("one leader in every group", CLUSTER_DEADLINE, || async {
            let mut leaders = BTreeMap::new();
            for group in &groups {
                let mut primaries = Vec::new();
                for m in of_group(*group) {
                    if m.api_status("/primary").await == Some(200) {
                        primaries.push(m.name().to_string());
                    }
                }
                let [leader] = primaries.as_slice() else {
                    anyhow::bail!("group {group}: members answering /primary 200: {primaries:?}");
                };
                leaders.insert(*group, leader.clone());
            }
            Ok(leaders)
        })
        .await;
    let member = |name: &str| -> &Member {
        members
            .iter()
            .map(|(_, m)| m)
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    };
    let coordinator = member(&leaders[&0]);
    let dist_nodes = || async {
        let client = superuser_client(coordinator, password, "citus").await?;
        let rows = client
            .query(
                "SELECT groupid, nodename, nodeport FROM pg_dist_node \
                 WHERE noderole = 'primary' ORDER BY groupid",
                &[],
            )
            .await?;
        Ok::<_, anyhow::Error>(
            rows.iter()
                .map(|r| {
                    let address = format!("{}:{}", r.get::<_, String>(1), r.get::<_, i32>(2));
                    (r.get::<_, i32>(0) as u32, address)
                })
                .collect::<BTreeMap<u32, String>>(),
        )
    };
    let expected_nodes = |leaders: &BTreeMap<u32, String>| -> BTreeMap<u32, String> {
        leaders
            .iter()
            .map(|(g, name)| (*g, format!("127.0.0.1:{}", member(name).pg_port())))
            .collect()
    };
    let expected = expected_nodes(&leaders);
    wait_until_ok(
        "pg_dist_node to name every group's primary",
        CLUSTER_DEADLINE,
        || async {
            let nodes = dist_nodes().await?;
            if nodes != expected {
                anyhow::bail!("pg_dist_node {nodes:?}, expected {expected:?}");
            }
            Ok(())
        },
    )
    .await;

    // The provisioning scripts ran: the coordinator's distributed table takes rows, each
    // worker group has its local objects, and each ran exactly once.
    wait_until_ok(
        "the coordinator's provisioning script",
        CLUSTER_DEADLINE,
        || async {
            let client = superuser_client(coordinator, password, "citus").await?;
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM regent.provisioned WHERE role = 'coordinator'",
                    &[],
                )
                .await?
                .get(0);
            if n != 1 {
                anyhow::bail!("{n} coordinator scripts recorded");
            }
            Ok(())
        },
    )
    .await;
    let insert_and_count = |expected: i64| async move {
        let client = superuser_client(coordinator, password, "citus")
            .await
            .unwrap_or_else(|e| panic!("connect to the coordinator: {e:#}"));
        client
            .batch_execute(
                "INSERT INTO events (tenant_id, payload) \
                 SELECT i % 10, jsonb_build_object('n', i) FROM generate_series(1, 100) AS i",
            )
            .await
            .unwrap_or_else(|e| panic!("insert into the distributed table: {e}"));
        let count: i64 = client
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap_or_else(|e| panic!("count the distributed table: {e}"))
            .get(0);
        assert_eq!(count, expected, "rows in events through the coordinator");
    };
    insert_and_count(100).await;
    for group in groups.iter().filter(|g| **g > 0) {
        let leader = member(&leaders[group]);
        wait_until_ok(
            &format!("group {group}'s provisioning script"),
            CLUSTER_DEADLINE,
            || async {
                let client = superuser_client(leader, password, "citus").await?;
                let row = client
                    .query_one(
                        "SELECT to_regclass('maintenance.notes') IS NOT NULL, \
                            (SELECT count(*) FROM regent.provisioned WHERE role = 'worker')",
                        &[],
                    )
                    .await?;
                let (exists, recorded): (bool, i64) = (row.get(0), row.get(1));
                if !exists || recorded != 1 {
                    anyhow::bail!(
                        "maintenance.notes exists: {exists}, worker scripts recorded: {recorded}"
                    );
                }
                Ok(())
            },
        )
        .await;
    }

    // regent ctl in the coordinator's Pod lists another group with --group (docs/citus.md).
    for group in groups.iter().filter(|g| **g > 0) {
        let (roles, stdout) = ctl_list(coordinator, &["--group", &group.to_string()]).await;
        let names: BTreeSet<&str> = roles.keys().map(String::as_str).collect();
        let expected: BTreeSet<&str> = of_group(*group).iter().map(|m| m.name()).collect();
        assert_eq!(names, expected, "regent ctl list --group {group}: {stdout}");
        assert_eq!(
            roles.get(&leaders[group]).map(String::as_str),
            Some("Leader"),
            "regent ctl list --group {group}: {stdout}"
        );
    }

    // A worker switchover from the coordinator's Pod, as docs/citus.md shows it: group 1's
    // row in pg_dist_node follows, and writes through the coordinator go on.
    let old = leaders[&1].clone();
    let candidate = of_group(1)
        .into_iter()
        .find(|m| m.name() != old)
        .unwrap_or_else(|| panic!("group 1 has one member"));
    // Citus groups run synchronous_mode: the candidate must be the synchronous standby.
    wait_until(
        &format!("{} the synchronous standby", candidate.name()),
        CLUSTER_DEADLINE,
        || async { (candidate.api_status("/sync").await == Some(200)).then_some(()) },
    )
    .await;
    let mut ctl = regent_tests::regent_command(coordinator.binary(), coordinator.member_dir());
    ctl.envs(coordinator.env().iter().map(|(k, v)| (k, v)))
        .args([
            "ctl",
            "switchover",
            "citusdemo",
            "--group",
            "1",
            "--leader",
            &old,
        ])
        .args(["--candidate", candidate.name(), "--force"]);
    let switched = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::from(ctl)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("regent ctl switchover hangs"))
    .unwrap_or_else(|e| panic!("run regent ctl switchover: {e}"));
    assert!(
        switched.status.success(),
        "regent ctl switchover --group 1: {}{}",
        String::from_utf8_lossy(&switched.stdout),
        String::from_utf8_lossy(&switched.stderr)
    );
    let mut after = leaders.clone();
    after.insert(1, candidate.name().to_string());
    let expected = expected_nodes(&after);
    wait_until_ok(
        "pg_dist_node to follow the switchover",
        CLUSTER_DEADLINE,
        || async {
            if candidate.api_status("/primary").await != Some(200) {
                anyhow::bail!("{} is not the primary yet", candidate.name());
            }
            let nodes = dist_nodes().await?;
            if nodes != expected {
                anyhow::bail!("pg_dist_node {nodes:?}, expected {expected:?}");
            }
            Ok(())
        },
    )
    .await;
    insert_and_count(200).await;

    // Each group's lock object carries its group label; no request needed more than the Role.
    for group in &groups {
        let name = format!("citusdemo-{group}-leader");
        let object = server
            .get("configmaps", POD_NAMESPACE, &name)
            .await
            .unwrap_or_else(|| panic!("no ConfigMap {name}"));
        assert_eq!(
            object["metadata"]["labels"]["citus-group"],
            json!(group.to_string()),
            "{name}"
        );
    }
    let denied: Vec<Value> = server.denied_requests().await;
    assert!(
        denied.is_empty(),
        "requests refused under Role citusdemo: {denied:?}"
    );
}
