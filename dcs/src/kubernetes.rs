//! Kubernetes backend with Patroni's object layout (docs/compatibility.md, *Kubernetes*): the cluster state lives in the
//! annotations of ConfigMaps (or Endpoints) `<scope>-leader`, `-config`, `-failover`, `-sync`;
//! each member publishes itself in the `status` annotation and role label of its own Pod.
//!
//! Every write that can race carries the resourceVersion seen at the last read and loses on
//! 409 Conflict; nothing is ever overwritten after a conflict. The lock's liveness is judged by
//! when its record last changed in local time (see [`state`]), never by comparing clocks.
//!
//! Citus: objects are `<scope>-<group>-*` with a `citus-group` label the selector omits, so the
//! one LIST (and watch) spans every group. The coordinator splits it by that label into
//! [`Cluster::workers`]. Other groups' locks are judged like our own, not by trusting the
//! `leader` annotation alone: each has a tracker fed by every read and watch event, and a holder
//! counts while its record changed within its `ttl` in local time (a record first seen counts as
//! held for a whole `ttl`, the same caution a fresh member applies to its own group).

mod client;
mod objects;
mod state;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{EndpointPort, EndpointSubset};
use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use self::client::{error_chain, ApiClient, CallError, Req};
use self::objects::{
    annotation, has_annotations, resource_version, Kind, LabelSettings, Layout, LeaderRecord,
};
use self::state::{KindState, Owner, PodCache};
use crate::model::{
    history_to_json, Cluster, Failover, FailsafeTopology, HistoryEntry, MemberData, Status,
    SyncState,
};
use crate::{Dcs, DcsError, DcsResult, Timing};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A watch woken by the lock running out fires this long after it looks expired.
const LOCK_EXPIRY_SLACK: Duration = Duration::from_millis(50);

/// Settings of the Kubernetes backend (the `kubernetes:` section plus identity and timing).
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    pub scope: String,
    /// This member's name: must be the name of its Pod.
    pub name: String,
    /// Citus group.
    pub group: Option<u32>,
    pub namespace: String,
    /// `kubernetes.labels`: selects (and is written on) every object of the cluster.
    pub labels: BTreeMap<String, String>,
    pub scope_label: String,
    pub role_label: String,
    pub leader_label_value: String,
    pub follower_label_value: String,
    pub standby_leader_label_value: String,
    pub tmp_role_label: Option<String>,
    /// Endpoints instead of ConfigMaps; the leader Endpoints carries the leader's address.
    pub use_endpoints: bool,
    /// Address put into the leader Endpoints (default: the Pod's `status.podIP`).
    pub pod_ip: Option<String>,
    /// Ports of the leader Endpoints (`[{name?, port, protocol?}]`, default `[{port: 5432}]`).
    pub ports: Vec<Value>,
    /// CA bundle of the API server when running in a Pod (default: the service account's).
    pub cacert: Option<PathBuf>,
    /// kubeconfig context (default: its current-context).
    pub context: Option<String>,
    /// Talk to the API server IPs from the `default/kubernetes` Endpoints directly.
    pub bypass_api_service: bool,
    /// Status codes retried besides 429, 500, 503 and 504.
    pub retriable_http_codes: Vec<u16>,
    /// Pod labels set while the member bootstraps or clones.
    pub bootstrap_labels: BTreeMap<String, String>,
    pub timing: Timing,
    /// kubeconfig file; `None`: `$KUBECONFIG`, else `~/.kube/config`. Out of a Pod, or when set
    /// explicitly, the kubeconfig is used; in a Pod (KUBERNETES_SERVICE_HOST) the service account.
    pub kubeconfig: Option<PathBuf>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            scope: String::new(),
            name: String::new(),
            group: None,
            namespace: "default".into(),
            labels: BTreeMap::new(),
            scope_label: "cluster-name".into(),
            role_label: "role".into(),
            leader_label_value: "primary".into(),
            follower_label_value: "replica".into(),
            standby_leader_label_value: "primary".into(),
            tmp_role_label: None,
            use_endpoints: false,
            pod_ip: None,
            ports: vec![json!({"port": 5432})],
            cacert: None,
            context: None,
            bypass_api_service: false,
            retriable_http_codes: Vec::new(),
            bootstrap_labels: BTreeMap::new(),
            timing: Timing::default(),
            kubeconfig: None,
        }
    }
}

/// State shared with the watch tasks.
pub(crate) struct Shared {
    api: ApiClient,
    layout: Layout,
    name: String,
    labels: LabelSettings,
    pod_ip: Option<String>,
    ports: Vec<EndpointPort>,
    kinds: Mutex<KindState>,
    pods: Mutex<PodCache>,
    notify: Notify,
    /// Endpoints mode: the headless `<scope>-config` Service still has to be created.
    config_service_pending: AtomicBool,
}

/// How [`Kubernetes::change_kind`] applies annotations.
enum Change {
    /// [`Kubernetes::write_kind`]: creates the object when needed.
    Write,
    /// [`Kubernetes::clear_kind`]: an absent object counts as cleared.
    Clear,
}

/// What a write of our own lock does.
#[derive(Clone, Copy)]
enum LockChange {
    Renew,
    Release,
}

/// How a write of our own lock ended.
enum LockWrite {
    /// Written (`true`), or the lock is not ours to write (`false`).
    Done(bool),
    /// The leader object was deleted.
    Gone,
}

/// The Kubernetes DCS backend bound to one member (Pod) of one cluster.
pub struct Kubernetes {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn config_error(msg: impl Into<String>) -> DcsError {
    DcsError::Protocol(msg.into())
}

/// API server address of the in-cluster environment, `https://host:port`.
fn incluster_url(host: &str, port: &str) -> String {
    let host = host.trim();
    if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

fn read_ca(path: &Path, key: &str) -> DcsResult<Vec<Vec<u8>>> {
    let certs = pemfiles::certificates(path).map_err(|e| config_error(format!("{key}: {e}")))?;
    Ok(certs.into_iter().map(|der| der.to_vec()).collect())
}

/// Service account credentials of the Pod we run in (`sa` holds `token` and `ca.crt`).
fn incluster_config(
    cfg: &KubernetesConfig,
    host: &str,
    port: &str,
    sa: &Path,
) -> DcsResult<kube::Config> {
    let url = incluster_url(host, port.trim());
    let uri = url.parse::<http::Uri>().map_err(|e| {
        config_error(format!(
            "KUBERNETES_SERVICE_HOST/PORT: invalid address {url}: {e}"
        ))
    })?;
    let (ca_path, key) = match &cfg.cacert {
        Some(p) => (p.clone(), "kubernetes.cacert"),
        None => (sa.join("ca.crt"), "service account CA"),
    };
    let token = sa.join("token");
    if !token.is_file() {
        return Err(config_error(format!(
            "running in a Pod (KUBERNETES_SERVICE_HOST is set) but the service account token {} is missing",
            token.display()
        )));
    }
    let mut config = kube::Config::new(uri);
    config.root_cert = Some(read_ca(&ca_path, key)?);
    config.root_cert_file = Some(ca_path);
    config.auth_info.token_file = Some(token.display().to_string());
    Ok(config)
}

async fn kubeconfig_config(cfg: &KubernetesConfig) -> DcsResult<kube::Config> {
    let (file, source) = match &cfg.kubeconfig {
        Some(p) => (
            kube::config::Kubeconfig::read_from(p),
            p.display().to_string(),
        ),
        None => (
            kube::config::Kubeconfig::read(),
            "$KUBECONFIG or ~/.kube/config".to_string(),
        ),
    };
    let file = file.map_err(|e| {
        config_error(format!(
            "kubernetes: cannot read the kubeconfig ({source}): {}",
            error_chain(&e)
        ))
    })?;
    let options = kube::config::KubeConfigOptions {
        context: cfg.context.clone().filter(|c| !c.is_empty()),
        ..Default::default()
    };
    kube::Config::from_custom_kubeconfig(file, &options)
        .await
        .map_err(|e| {
            config_error(format!(
                "kubernetes: kubeconfig {source}{}: {}",
                cfg.context
                    .as_ref()
                    .map(|c| format!(", context '{c}'"))
                    .unwrap_or_default(),
                error_chain(&e)
            ))
        })
}

impl Kubernetes {
    /// Validate the settings, load credentials (service account in a Pod, else kubeconfig) and
    /// start the background watches. No request is required to succeed here.
    pub async fn connect(cfg: KubernetesConfig) -> DcsResult<Kubernetes> {
        if cfg.scope.trim().is_empty() {
            return Err(config_error("kubernetes: scope must not be empty"));
        }
        if cfg.name.trim().is_empty() || cfg.name.contains('/') {
            return Err(config_error(format!(
                "kubernetes: member name '{}' must be the (non-empty) name of the member's Pod",
                cfg.name
            )));
        }
        if cfg.namespace.trim().is_empty() || cfg.namespace.contains('/') {
            return Err(config_error(format!(
                "kubernetes.namespace: '{}' is not a Kubernetes namespace",
                cfg.namespace
            )));
        }
        let ports = objects::normalise_ports(&cfg.ports).map_err(config_error)?;
        let service_host = std::env::var("KUBERNETES_SERVICE_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty());
        let config = match (&cfg.kubeconfig, service_host) {
            (None, Some(host)) => {
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                incluster_config(&cfg, &host, &port, Path::new(SA_DIR))?
            }
            _ => kubeconfig_config(&cfg).await?,
        };
        let api = ApiClient::new(
            config,
            cfg.timing,
            cfg.retriable_http_codes.clone(),
            cfg.bypass_api_service,
        )?;
        let layout = Layout::new(
            cfg.scope.trim(),
            cfg.group,
            cfg.namespace.trim(),
            &cfg.labels,
            &cfg.scope_label,
            cfg.use_endpoints,
        );
        let shared = Shared {
            api,
            name: cfg.name.clone(),
            labels: LabelSettings {
                role_label: cfg.role_label.clone(),
                leader_label_value: cfg.leader_label_value.clone(),
                follower_label_value: cfg.follower_label_value.clone(),
                standby_leader_label_value: cfg.standby_leader_label_value.clone(),
                tmp_role_label: cfg.tmp_role_label.clone(),
                bootstrap_labels: cfg.bootstrap_labels.clone(),
            },
            pod_ip: cfg.pod_ip.clone().filter(|ip| !ip.trim().is_empty()),
            ports,
            kinds: Mutex::new(KindState::default()),
            pods: Mutex::new(PodCache::default()),
            notify: Notify::new(),
            config_service_pending: AtomicBool::new(layout.kind == Kind::Endpoints),
            layout,
        };
        let k = Kubernetes {
            shared: Arc::new(shared),
            tasks: Mutex::new(Vec::new()),
        };
        k.ensure_watchers();
        Ok(k)
    }

    /// Names of this group's objects: leader, config, failover, sync.
    pub fn object_names(&self) -> [String; 4] {
        let l = &self.shared.layout;
        [
            l.leader.clone(),
            l.config.clone(),
            l.failover.clone(),
            l.sync.clone(),
        ]
    }

    /// The label selector used for every LIST and WATCH.
    pub fn label_selector(&self) -> String {
        self.shared.layout.selector()
    }

    fn ensure_watchers(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if !tasks.is_empty() && tasks.iter().all(|t| !t.is_finished()) {
            return;
        }
        for t in tasks.drain(..) {
            t.abort();
        }
        tasks.push(tokio::spawn(watch::run_kinds(Arc::clone(&self.shared))));
        tasks.push(tokio::spawn(watch::run_pods(Arc::clone(&self.shared))));
    }

    fn stop_watchers(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        self.shared
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .synced = false;
    }

    fn layout(&self) -> &Layout {
        &self.shared.layout
    }

    fn ns(&self) -> &str {
        &self.shared.layout.namespace
    }

    fn resource(&self) -> &'static str {
        self.shared.layout.kind.resource()
    }

    fn ttl(&self) -> u32 {
        self.shared.api.timing().ttl.max(1)
    }

    fn kinds(&self) -> std::sync::MutexGuard<'_, KindState> {
        self.shared.kinds.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn offer(&self, name: &str, obj: Option<Value>, rv: Option<&str>) {
        let owner = Owner::Ours {
            leader: &self.layout().leader,
        };
        self.kinds().offer(owner, name, obj, rv, Instant::now());
    }

    /// Send a write of our kind object `name` and remember the object it returns.
    async fn write_request(
        &self,
        name: &str,
        req: &Req,
        deadline: Instant,
    ) -> Result<(), CallError> {
        let resp = self.shared.api.call(req, deadline).await?;
        if let Ok(obj) = resp.json(req) {
            if objects::name(&obj) == Some(name) {
                self.offer(name, Some(obj), None);
            }
        }
        Ok(())
    }

    fn holds_lock(&self) -> bool {
        let ttl = self.ttl();
        self.kinds().tracker().holder(ttl, Instant::now()) == Some(self.shared.name.as_str())
    }

    /// GET one of our kind objects (`None`: it does not exist).
    async fn get_kind(&self, name: &str, deadline: Instant) -> DcsResult<Option<Value>> {
        let req = Req::get(self.resource(), self.ns(), name);
        match self.shared.api.call(&req, deadline).await {
            Ok(resp) => {
                let obj = resp.json(&req)?;
                self.offer(name, Some(obj.clone()), None);
                Ok(Some(obj))
            }
            Err(CallError::Status { code: 404, .. }) => {
                self.offer(name, None, None);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One LIST of the kind objects by our selector (every Citus group): the items and the
    /// list's resourceVersion.
    async fn list_kinds(&self, deadline: Instant) -> DcsResult<(Vec<Value>, String)> {
        let req = Req::list(self.resource(), self.ns(), &self.layout().selector());
        let list = self.shared.api.call(&req, deadline).await?.json(&req)?;
        watch::parse_list(&list).ok_or_else(|| {
            DcsError::Protocol(format!("{}: the answer is not a list", req.describe()))
        })
    }

    /// The Pods matching our selector (every Citus group): the watch cache while it is in
    /// sync, else one LIST, which also fills the cache.
    async fn pods_snapshot(&self, deadline: Instant) -> DcsResult<Vec<Value>> {
        let cached = {
            let cache = self.shared.pods.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .synced
                .then(|| cache.pods.values().cloned().collect::<Vec<_>>())
        };
        if let Some(pods) = cached {
            return Ok(pods);
        }
        let req = Req::list("pods", self.ns(), &self.layout().selector());
        let v = self.shared.api.call(&req, deadline).await?.json(&req)?;
        let (items, _) = watch::parse_list(&v).ok_or_else(|| {
            DcsError::Protocol(format!("{}: the answer is not a list", req.describe()))
        })?;
        let mut cache = self.shared.pods.lock().unwrap_or_else(|p| p.into_inner());
        for p in &items {
            cache.offer(p.clone());
        }
        Ok(items)
    }

    /// Citus: feed every other group's leader object of a LIST (and the absence of those seen
    /// before) to its lock tracker. Returns, per group listed, its leader object name and object.
    fn observe_other_leaders(
        &self,
        st: &mut KindState,
        others: &BTreeMap<u32, HashMap<String, Value>>,
        list_rv: &str,
        now: Instant,
    ) -> BTreeMap<u32, (String, Option<Value>)> {
        let layout = self.layout();
        let leaders: BTreeMap<u32, (String, Option<Value>)> = others
            .iter()
            .map(|(g, objs)| {
                let name = layout.for_group(*g).leader;
                let obj = objs.get(&name).cloned();
                (*g, (name, obj))
            })
            .collect();
        for name in st.other_leader_names() {
            if !leaders.values().any(|(n, _)| *n == name) {
                st.offer(Owner::OtherGroupLeader, &name, None, Some(list_rv), now);
            }
        }
        for (name, obj) in leaders.values() {
            st.offer(
                Owner::OtherGroupLeader,
                name,
                obj.clone(),
                Some(list_rv),
                now,
            );
        }
        leaders
    }

    /// Our own Pod: from the cache, else read now.
    async fn own_pod(&self, deadline: Instant) -> Option<Value> {
        let cached = self
            .shared
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pods
            .get(&self.shared.name)
            .cloned();
        if cached.is_some() {
            return cached;
        }
        let req = Req::get("pods", self.ns(), &self.shared.name);
        match self.shared.api.call(&req, deadline).await {
            Ok(resp) => {
                let pod = resp.json(&req).ok()?;
                self.shared
                    .pods
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .offer(pod.clone());
                Some(pod)
            }
            Err(e) => {
                tracing::debug!(error = %DcsError::from(e), "cannot read our own Pod");
                None
            }
        }
    }

    /// Endpoints mode: the subsets the leader object should get, `None` when they are already
    /// right (or our IP is unknown).
    async fn wanted_subsets(
        &self,
        current: Option<&Value>,
        deadline: Instant,
    ) -> Option<Vec<EndpointSubset>> {
        if self.layout().kind != Kind::Endpoints {
            return None;
        }
        let pod = self.own_pod(deadline).await;
        let ip = match &self.shared.pod_ip {
            Some(ip) => ip.clone(),
            None => objects::pod_ip(pod.as_ref()?)?.to_string(),
        };
        let what = self.layout().describe(&self.layout().leader);
        // Subsets we cannot read are replaced by ours, as if they were wrong.
        let existing = match current.map(|c| objects::endpoint_subsets(&what, c)) {
            None => Vec::new(),
            Some(Ok(subsets)) => subsets,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the leader Endpoints' subsets are unreadable");
                Vec::new()
            }
        };
        if !objects::subsets_changed(&existing, &ip, &self.shared.ports) {
            return None;
        }
        Some(objects::leader_subsets(
            &ip,
            &self.shared.ports,
            pod.as_ref(),
            self.ns(),
            &self.shared.name,
            &existing,
        ))
    }

    /// Endpoints mode: the headless `<scope>-config` Service keeps the config Endpoints from
    /// being cleaned up; created once, 409 (exists) and 403 (not allowed) are fine.
    async fn ensure_config_service(&self, deadline: Instant) {
        if !self.shared.config_service_pending.load(Ordering::Relaxed) {
            return;
        }
        let body = objects::config_service(self.layout());
        let req = Req::create("services", self.ns(), &body);
        match self.shared.api.call(&req, deadline).await {
            Ok(_) | Err(CallError::Status { code: 409, .. }) => {}
            Err(CallError::Dcs(DcsError::Forbidden(msg))) => {
                tracing::debug!("not allowed to create the config Service: {msg}")
            }
            Err(e) => {
                tracing::debug!(error = %DcsError::from(e), "cannot create the config Service");
                return;
            }
        }
        self.shared
            .config_service_pending
            .store(false, Ordering::Relaxed);
    }

    /// POST one of our kind objects.
    async fn create_kind(
        &self,
        name: &str,
        annotations: &Map<String, Value>,
        subsets: Option<Vec<EndpointSubset>>,
        deadline: Instant,
    ) -> Result<(), CallError> {
        if name == self.layout().config {
            self.ensure_config_service(deadline).await;
        }
        let body = objects::create_body(self.layout(), name, annotations, subsets.as_deref());
        let req = Req::create(self.resource(), self.ns(), &body);
        self.write_request(name, &req, deadline).await
    }

    /// Strategic-merge PATCH of one of our kind objects, a compare-and-swap with `rv`.
    async fn patch_kind(
        &self,
        name: &str,
        annotations: &Map<String, Value>,
        rv: Option<&str>,
        subsets: Option<Vec<EndpointSubset>>,
        deadline: Instant,
    ) -> Result<(), CallError> {
        let body = objects::patch_body(self.layout(), name, annotations, rv, subsets.as_deref());
        let req = Req::patch(self.resource(), self.ns(), name, &body);
        self.write_request(name, &req, deadline).await
    }

    /// PATCH our Pod's labels and `status` annotation (`None` removes them) and keep the Pod it
    /// returns in the cache.
    async fn patch_own_pod(
        &self,
        labels: &BTreeMap<String, Option<String>>,
        status: Option<&str>,
        deadline: Instant,
    ) -> Result<(), CallError> {
        let body = objects::pod_patch(self.ns(), &self.shared.name, labels, status);
        let req = Req::patch("pods", self.ns(), &self.shared.name, &body);
        let resp = self.shared.api.call(&req, deadline).await?;
        if let Ok(pod) = resp.json(&req) {
            self.shared
                .pods
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .offer(pod);
        }
        Ok(())
    }

    /// After a 409 of a request that was sent more than once: did an earlier attempt apply it?
    async fn applied_anyway(
        &self,
        name: &str,
        annotations: &Map<String, Value>,
        deadline: Instant,
    ) -> DcsResult<bool> {
        Ok(self
            .get_kind(name, deadline)
            .await?
            .is_some_and(|o| has_annotations(&o, annotations)))
    }

    /// Write annotations of `name`: with `version` as a compare-and-swap (`Ok(false)` when
    /// someone wrote in between or the object is gone), without it creating the object if needed.
    async fn write_kind(
        &self,
        name: &str,
        annotations: Map<String, Value>,
        version: Option<&str>,
    ) -> DcsResult<bool> {
        let deadline = self.shared.api.budget();
        if version.is_some() {
            return self
                .patch_checked(name, &annotations, version, Change::Write, deadline)
                .await;
        }
        let exists = self.kinds().get(name).is_some();
        if exists {
            match self
                .patch_kind(name, &annotations, None, None, deadline)
                .await
            {
                Ok(()) => return Ok(true),
                Err(CallError::Status { code: 404, .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match self.create_kind(name, &annotations, None, deadline).await {
            Ok(()) => Ok(true),
            Err(CallError::Status { code: 409, .. }) => {
                self.patch_kind(name, &annotations, None, None, deadline)
                    .await?;
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Clear annotations of `name` (CAS on `version` when given); an absent object is clear.
    async fn clear_kind(
        &self,
        name: &str,
        annotations: Map<String, Value>,
        version: Option<&str>,
    ) -> DcsResult<bool> {
        let deadline = self.shared.api.budget();
        self.patch_checked(name, &annotations, version, Change::Clear, deadline)
            .await
    }

    /// PATCH annotations of `name`, a compare-and-swap on `version` when given. A 409 means
    /// lost, unless the request was sent more than once and an earlier attempt applied it; an
    /// absent object counts as cleared for [`Change::Clear`] and as lost for [`Change::Write`].
    async fn patch_checked(
        &self,
        name: &str,
        annotations: &Map<String, Value>,
        version: Option<&str>,
        change: Change,
        deadline: Instant,
    ) -> DcsResult<bool> {
        match self
            .patch_kind(name, annotations, version, None, deadline)
            .await
        {
            Ok(()) => Ok(true),
            Err(CallError::Status { code: 404, .. }) => Ok(matches!(change, Change::Clear)),
            Err(CallError::Status {
                code: 409,
                retried: true,
                ..
            }) => self.applied_anyway(name, annotations, deadline).await,
            Err(CallError::Status { code: 409, .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Write or clear annotations of the object `object` picks from our layout.
    async fn change_kind(
        &self,
        object: fn(&Layout) -> &String,
        change: Change,
        annotations: Map<String, Value>,
        version: Option<&str>,
    ) -> DcsResult<bool> {
        let name = object(self.layout()).clone();
        match change {
            Change::Write => self.write_kind(&name, annotations, version).await,
            Change::Clear => self.clear_kind(&name, annotations, version).await,
        }
    }

    /// The leader object to renew or release: the latest version we know, else read now.
    async fn current_leader(&self, deadline: Instant) -> DcsResult<Option<Value>> {
        let leader = self.layout().leader.clone();
        let cached = self.kinds().get(&leader).cloned();
        match cached {
            Some(c) => Ok(Some(c)),
            None => self.get_kind(&leader, deadline).await,
        }
    }

    /// The holder found its leader object deleted (by hand, or a `remove`): create it again
    /// with a POST, as Patroni does, instead of giving the primary up. A POST is atomic, so if
    /// another member created the object first we get 409 and the lock is not ours.
    async fn recreate_leader(
        &self,
        cluster: &Cluster,
        optime: Option<u64>,
        failsafe: Option<&FailsafeTopology>,
        deadline: Instant,
    ) -> DcsResult<bool> {
        let me = self.shared.name.clone();
        let leader = self.layout().leader.clone();
        // Keep acquireTime and transitions as last seen while held, so readers see the same
        // holder: the deletion may already have reached the tracker through the watch.
        let observed = self.kinds().tracker().last_held().clone();
        let mut annotations = objects::renew_annotations(
            &me,
            self.ttl(),
            &objects::iso_now(),
            &observed,
            optime,
            &cluster.status,
        );
        if let Some(topology) = failsafe {
            annotations.extend(objects::failsafe_annotation(topology));
        }
        let subsets = self.wanted_subsets(None, deadline).await;
        match self
            .create_kind(&leader, &annotations, subsets, deadline)
            .await
        {
            Ok(()) => {
                tracing::warn!(object = %leader, "the leader object was deleted: created it again");
                Ok(true)
            }
            Err(CallError::Status { code: 409, .. }) => {
                tracing::warn!(object = %leader, "the leader object was deleted and another member created it first: the lock is not ours");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Write `annotations` to the leader object we hold, a compare-and-swap on `current`'s
    /// version; after a 409 re-read it and, while it is still ours, try once more.
    async fn write_own_lock(
        &self,
        current: &Value,
        annotations: &Map<String, Value>,
        change: LockChange,
        deadline: Instant,
    ) -> DcsResult<LockWrite> {
        let leader = self.layout().leader.clone();
        let rv = resource_version(current).map(str::to_string);
        let subsets = self.lock_subsets(change, current, deadline).await;
        match self
            .patch_kind(&leader, annotations, rv.as_deref(), subsets, deadline)
            .await
        {
            Ok(()) => return Ok(LockWrite::Done(true)),
            Err(CallError::Status { code: 409, .. }) => {
                tracing::warn!(object = %leader, "concurrent update of the leader object");
            }
            Err(CallError::Status { code: 404, .. }) => return Ok(LockWrite::Gone),
            Err(e) => return Err(e.into()),
        }
        let Some(fresh) = self.reread_own_lock(rv.as_deref(), deadline).await? else {
            return Ok(LockWrite::Done(false));
        };
        // Our earlier attempt may have been applied before its answer was lost.
        if has_annotations(&fresh, annotations) {
            return Ok(LockWrite::Done(true));
        }
        let subsets = self.lock_subsets(change, &fresh, deadline).await;
        self.patch_lock_once_more(&leader, annotations, &fresh, subsets, deadline)
            .await
            .map(LockWrite::Done)
    }

    /// Endpoints subsets to send with a lock write: ours while renewing, none on release.
    async fn lock_subsets(
        &self,
        change: LockChange,
        current: &Value,
        deadline: Instant,
    ) -> Option<Vec<EndpointSubset>> {
        match change {
            LockChange::Renew => self.wanted_subsets(Some(current), deadline).await,
            LockChange::Release => (self.layout().kind == Kind::Endpoints).then(Vec::new),
        }
    }

    /// The second and last attempt on our own lock after a 409, with the version just re-read:
    /// another conflict (or the object gone) means the lock is not ours to write.
    async fn patch_lock_once_more(
        &self,
        leader: &str,
        annotations: &Map<String, Value>,
        fresh: &Value,
        subsets: Option<Vec<EndpointSubset>>,
        deadline: Instant,
    ) -> DcsResult<bool> {
        match self
            .patch_kind(
                leader,
                annotations,
                resource_version(fresh),
                subsets,
                deadline,
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(CallError::Status {
                code: 409 | 404, ..
            }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// After a 409 on our own lock: re-read; `Ok(None)` when the lock is not ours (any more),
    /// `Ok(Some(obj))` when it still is and `obj` is its fresh version.
    async fn reread_own_lock(
        &self,
        sent_rv: Option<&str>,
        deadline: Instant,
    ) -> DcsResult<Option<Value>> {
        if deadline.saturating_duration_since(Instant::now()) < Duration::from_secs(1) {
            return Ok(None);
        }
        let leader = self.layout().leader.clone();
        let Some(fresh) = self.get_kind(&leader, deadline).await? else {
            return Ok(None);
        };
        if annotation(&fresh, "leader") != Some(self.shared.name.as_str()) {
            return Ok(None);
        }
        Ok(Some(fresh).filter(|f| resource_version(f) != sent_rv || sent_rv.is_none()))
    }
}

impl Drop for Kubernetes {
    fn drop(&mut self) {
        self.stop_watchers();
    }
}

#[async_trait]
impl Dcs for Kubernetes {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn set_timing(&self, timing: Timing) {
        self.shared.api.set_timing(timing);
    }

    async fn get_cluster(&self) -> DcsResult<Cluster> {
        self.ensure_watchers();
        self.shared.api.refresh_api_servers().await;
        let deadline = self.shared.api.budget();
        let layout = self.layout();
        let (kinds, pods) = tokio::join!(self.list_kinds(deadline), self.pods_snapshot(deadline));
        let (items, list_rv) = kinds?;
        let pods = pods?;
        let coordinator = layout.group == Some(0);
        let mut label_warnings = Vec::new();
        let mut ours: HashMap<String, Value> = HashMap::new();
        // Citus: the other groups' objects came with the same LIST (the selector spans groups).
        let mut others: BTreeMap<u32, HashMap<String, Value>> = BTreeMap::new();
        for o in items {
            let Some(n) = objects::name(&o).map(str::to_string) else {
                continue;
            };
            if layout.is_ours(&n) {
                ours.insert(n, o);
            } else if layout.group.is_some() {
                match layout.other_group_of(&o) {
                    Some(g) => {
                        others.entry(g).or_default().insert(n, o);
                    }
                    None if coordinator => {
                        let what = layout.describe(&n);
                        label_warnings.extend(objects::group_label_warning(&what, &o));
                    }
                    None => {}
                }
            }
        }
        let now = Instant::now();
        let ttl = self.ttl();
        let (lock_held, others_held) = {
            let mut st = self.kinds();
            for n in layout.names() {
                let owner = Owner::Ours {
                    leader: &layout.leader,
                };
                st.offer(owner, n, ours.get(n).cloned(), Some(&list_rv), now);
            }
            let mut read = ours.clone();
            let mut others_held = BTreeMap::new();
            if layout.group.is_some() {
                let leaders = self.observe_other_leaders(&mut st, &others, &list_rv, now);
                for (g, (name, obj)) in &leaders {
                    let listed = LeaderRecord::from_object(obj.as_ref());
                    let held = listed.leader().is_some()
                        && st.other_holder(name, ttl, now) == listed.leader();
                    others_held.insert(*g, held);
                    if let Some(o) = obj {
                        read.insert(name.clone(), o.clone());
                    }
                }
            }
            st.note_read(&layout.leader, read);
            let listed = LeaderRecord::from_object(ours.get(&layout.leader));
            let held =
                listed.leader().is_some() && st.tracker().holder(ttl, now) == listed.leader();
            (held, others_held)
        };
        let mut cluster = objects::build_cluster(layout, &ours, &pods, lock_held);
        if coordinator {
            let mut groups: BTreeSet<u32> = others.keys().copied().collect();
            for pod in &pods {
                let Some(value) = objects::label(pod, objects::CITUS_GROUP_LABEL) else {
                    continue;
                };
                match objects::parse_group(value) {
                    Some(g) => {
                        groups.insert(g);
                    }
                    None => {
                        let what = format!("Pod {}", objects::name(pod).unwrap_or("?"));
                        label_warnings.extend(objects::group_label_warning(&what, pod));
                    }
                }
            }
            groups.remove(&0);
            cluster.warnings.append(&mut label_warnings);
            let none = HashMap::new();
            for g in groups {
                let worker = objects::build_cluster(
                    &layout.for_group(g),
                    others.get(&g).unwrap_or(&none),
                    &pods,
                    others_held.get(&g).copied().unwrap_or(false),
                );
                cluster.warnings.extend(worker.warnings.iter().cloned());
                cluster.workers.insert(g, worker);
            }
        }
        for w in &cluster.warnings {
            tracing::debug!(warning = %w, "kubernetes cluster read");
        }
        Ok(cluster)
    }

    async fn get_group(&self, group: u32) -> DcsResult<Cluster> {
        if self.layout().group == Some(group) {
            let mut cluster = self.get_cluster().await?;
            cluster.workers.clear();
            return Ok(cluster);
        }
        self.ensure_watchers();
        self.shared.api.refresh_api_servers().await;
        let deadline = self.shared.api.budget();
        let (kinds, pods) = tokio::join!(self.list_kinds(deadline), self.pods_snapshot(deadline));
        let (items, list_rv) = kinds?;
        let pods = pods?;
        let layout = self.layout();
        let target = layout.for_group(group);
        let objs: HashMap<String, Value> = items
            .into_iter()
            .filter(|o| layout.other_group_of(o) == Some(group))
            .filter_map(|o| Some((objects::name(&o)?.to_string(), o)))
            .collect();
        let held = {
            let now = Instant::now();
            let mut st = self.kinds();
            let leader = objs.get(&target.leader).cloned();
            let listed = LeaderRecord::from_object(leader.as_ref());
            st.offer(
                Owner::OtherGroupLeader,
                &target.leader,
                leader,
                Some(&list_rv),
                now,
            );
            listed.leader().is_some()
                && st.other_holder(&target.leader, self.ttl(), now) == listed.leader()
        };
        let cluster = objects::build_cluster(&target, &objs, &pods, held);
        for w in &cluster.warnings {
            tracing::debug!(warning = %w, group, "kubernetes group read");
        }
        Ok(cluster)
    }

    async fn touch_member(&self, data: &MemberData) -> DcsResult<()> {
        let deadline = self.shared.api.budget();
        let labels = objects::member_labels(&self.shared.labels, data, self.holds_lock());
        let unchanged = {
            let cache = self.shared.pods.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .pods
                .get(&self.shared.name)
                .is_some_and(|pod| objects::pod_matches(pod, &labels, data))
        };
        if !unchanged {
            let status = serde_json::to_string(data)
                .map_err(|e| DcsError::Protocol(format!("cannot serialise member data: {e}")))?;
            match self.patch_own_pod(&labels, Some(&status), deadline).await {
                Ok(()) => {}
                Err(CallError::Status { code: 404, .. }) => {
                    return Err(DcsError::Protocol(format!(
                        "Pod \"{}\" not found in namespace \"{}\": on Kubernetes the member name must be the name of its Pod",
                        self.shared.name,
                        self.ns()
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.ensure_config_service(deadline).await;
        Ok(())
    }

    async fn delete_member(&self) -> DcsResult<()> {
        let deadline = self.shared.api.budget();
        let mut labels = BTreeMap::new();
        labels.insert(self.shared.labels.role_label.clone(), None);
        if let Some(t) = self
            .shared
            .labels
            .tmp_role_label
            .as_ref()
            .filter(|t| !t.is_empty())
        {
            labels.insert(t.clone(), None);
        }
        match self.patch_own_pod(&labels, None, deadline).await {
            Ok(()) | Err(CallError::Status { code: 404, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn attempt_to_acquire_leader(&self) -> DcsResult<bool> {
        let deadline = self.shared.api.budget();
        let me = self.shared.name.clone();
        let leader = self.layout().leader.clone();
        let ttl = self.ttl();
        let last_read = self.kinds().last_read_leader().map(|o| o.cloned());
        // Without a cluster read we have not judged the lock: read it now (a lock seen for the
        // first time counts as held for its ttl).
        let read = match last_read {
            Some(r) => r,
            None => self.get_kind(&leader, deadline).await?,
        };
        let (observed, cached) = {
            let st = self.kinds();
            if let Some(holder) = st.tracker().holder(ttl, Instant::now()) {
                if holder != me {
                    tracing::info!(holder, "the leader lock is held by another member");
                    return Ok(false);
                }
            }
            (st.tracker().observed().clone(), st.get(&leader).cloned())
        };
        let read_rv = read.as_ref().and_then(resource_version).map(str::to_string);
        // A newer version whose lock fields did not change since the read is as good (only the
        // status changed), and avoids a needless conflict.
        let rv = match (&read_rv, &cached) {
            (Some(r), Some(c))
                if objects::rv_newer(resource_version(c), Some(r))
                    && LeaderRecord::from_object(Some(c))
                        == LeaderRecord::from_object(read.as_ref()) =>
            {
                resource_version(c).map(str::to_string)
            }
            _ => read_rv,
        };
        let annotations = objects::acquire_annotations(&me, ttl, &objects::iso_now(), &observed);
        let subsets = self.wanted_subsets(cached.as_ref(), deadline).await;
        let result = match &rv {
            None => {
                self.create_kind(&leader, &annotations, subsets, deadline)
                    .await
            }
            Some(v) => {
                self.patch_kind(&leader, &annotations, Some(v), subsets, deadline)
                    .await
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(member = %me, "acquired the leader lock");
                Ok(true)
            }
            Err(CallError::Status { code: 409, .. }) => {
                // Lost, unless an earlier attempt of ours went through before an error.
                let won = self.get_kind(&leader, deadline).await?.is_some_and(|o| {
                    resource_version(&o) != rv.as_deref() && has_annotations(&o, &annotations)
                });
                if !won {
                    tracing::info!(member = %me, "another member acquired the leader lock first");
                }
                Ok(won)
            }
            // Deleted since the read: the next cycle sees it gone.
            Err(CallError::Status { code: 404, .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn update_leader(
        &self,
        cluster: &Cluster,
        optime: Option<u64>,
        failsafe: Option<&FailsafeTopology>,
    ) -> DcsResult<bool> {
        let deadline = self.shared.api.budget();
        let me = self.shared.name.clone();
        let Some(current) = self.current_leader(deadline).await? else {
            return self
                .recreate_leader(cluster, optime, failsafe, deadline)
                .await;
        };
        if annotation(&current, "leader") != Some(me.as_str()) {
            tracing::warn!(member = %me, "the leader lock is held by another member");
            return Ok(false);
        }
        let mut annotations = objects::renew_annotations(
            &me,
            self.ttl(),
            &objects::iso_now(),
            &LeaderRecord::from_object(Some(&current)),
            optime,
            &cluster.status,
        );
        // The failsafe topology rides on the renew: still one request per loop.
        if let Some(topology) = failsafe {
            annotations.extend(objects::failsafe_annotation(topology));
        }
        match self
            .write_own_lock(&current, &annotations, LockChange::Renew, deadline)
            .await?
        {
            LockWrite::Done(written) => Ok(written),
            LockWrite::Gone => {
                self.recreate_leader(cluster, optime, failsafe, deadline)
                    .await
            }
        }
    }

    async fn delete_leader(&self, optime: Option<u64>) -> DcsResult<bool> {
        let deadline = self.shared.api.budget();
        let me = self.shared.name.clone();
        let Some(current) = self.current_leader(deadline).await? else {
            return Ok(false);
        };
        if annotation(&current, "leader") != Some(me.as_str()) {
            return Ok(false);
        }
        let mut annotations = Map::new();
        annotations.insert("leader".into(), Value::Null);
        if let Some(o) = optime {
            annotations.insert("optime".into(), Value::String(o.to_string()));
        }
        let outcome = self
            .write_own_lock(&current, &annotations, LockChange::Release, deadline)
            .await?;
        Ok(matches!(outcome, LockWrite::Done(true)))
    }

    async fn initialize(&self, create_new: bool, sysid: &str) -> DcsResult<bool> {
        let config = self.layout().config.clone();
        let mut annotations = Map::new();
        annotations.insert("initialize".into(), Value::String(sysid.to_string()));
        if !create_new {
            return self.write_kind(&config, annotations, None).await;
        }
        let deadline = self.shared.api.budget();
        let result = match self.get_kind(&config, deadline).await? {
            None => {
                self.create_kind(&config, &annotations, None, deadline)
                    .await
            }
            Some(obj) => {
                if annotations_has(&obj, "initialize") {
                    return Ok(false);
                }
                self.patch_kind(
                    &config,
                    &annotations,
                    resource_version(&obj),
                    None,
                    deadline,
                )
                .await
            }
        };
        match result {
            Ok(()) => Ok(true),
            // Someone else created or changed it first (a retried request of ours that went
            // through also lands here: counting that as lost is the safe side).
            Err(CallError::Status {
                code: 409 | 404, ..
            }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn cancel_initialization(&self) -> DcsResult<()> {
        let mut annotations = Map::new();
        annotations.insert("initialize".into(), Value::Null);
        let config = self.layout().config.clone();
        self.clear_kind(&config, annotations, None).await?;
        Ok(())
    }

    async fn set_config_value(&self, value: &Value, version: Option<&str>) -> DcsResult<bool> {
        let mut annotations = Map::new();
        annotations.insert("config".into(), Value::String(value.to_string()));
        let config = self.layout().config.clone();
        self.write_kind(&config, annotations, version).await
    }

    async fn set_history_value(&self, history: &[HistoryEntry]) -> DcsResult<()> {
        let mut annotations = Map::new();
        annotations.insert("history".into(), Value::String(history_to_json(history)));
        let config = self.layout().config.clone();
        self.write_kind(&config, annotations, None).await?;
        Ok(())
    }

    async fn set_failover_value(
        &self,
        failover: &Failover,
        version: Option<&str>,
    ) -> DcsResult<bool> {
        let annotations = objects::failover_annotations(failover);
        self.change_kind(|l| &l.failover, Change::Write, annotations, version)
            .await
    }

    async fn delete_failover(&self, version: Option<&str>) -> DcsResult<bool> {
        let annotations = objects::failover_annotations(&Failover::default());
        self.change_kind(|l| &l.failover, Change::Clear, annotations, version)
            .await
    }

    async fn set_sync_state(&self, sync: &SyncState, version: Option<&str>) -> DcsResult<bool> {
        let annotations = objects::sync_annotations(sync);
        self.change_kind(|l| &l.sync, Change::Write, annotations, version)
            .await
    }

    async fn delete_sync_state(&self, version: Option<&str>) -> DcsResult<bool> {
        let annotations = objects::sync_annotations(&SyncState::default());
        self.change_kind(|l| &l.sync, Change::Clear, annotations, version)
            .await
    }

    async fn write_status(&self, status: &Status) -> DcsResult<()> {
        let deadline = self.shared.api.budget();
        let leader = self.layout().leader.clone();
        self.patch_kind(
            &leader,
            &objects::status_annotations(status),
            None,
            None,
            deadline,
        )
        .await?;
        Ok(())
    }

    async fn watch(&self, timeout: Duration) -> bool {
        self.ensure_watchers();
        let now = Instant::now();
        let other_holder_expires = {
            let ttl = self.ttl();
            let st = self.kinds();
            st.tracker()
                .lease(ttl)
                .filter(|(holder, expires)| *holder != self.shared.name && *expires >= now)
                .map(|(_, expires)| expires)
        };
        let mut deadline = now + timeout;
        let mut expiry = None;
        if let Some(expires) = other_holder_expires {
            // Members following a live leader are woken by its renewals; half a second more
            // keeps their own timer from firing just before each renewal (as in Patroni), and
            // waking when the lock runs out lets them race for it at once.
            if timeout >= Duration::from_secs(1) {
                deadline += Duration::from_millis(500);
            }
            let at = expires + LOCK_EXPIRY_SLACK;
            if at < deadline {
                expiry = Some(at);
            }
        }
        let expired = async {
            match expiry {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.shared.notify.notified() => true,
            _ = expired => true,
            _ = tokio::time::sleep_until(deadline.into()) => false,
        }
    }

    async fn close(&self) -> DcsResult<()> {
        // Nothing is bound to a session on Kubernetes: the lock expires by its ttl.
        self.stop_watchers();
        Ok(())
    }
}

fn annotations_has(obj: &Value, key: &str) -> bool {
    objects::annotations(obj).is_some_and(|a| a.contains_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_bundles_are_read_and_refusals_name_the_key_and_file() {
        let dir = std::env::temp_dir().join(format!("dcs-kube-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.crt");
        let two = format!(
            "{}{}",
            test_pki::Ca::new("a").cert_pem(),
            test_pki::Ca::new("b").cert_pem()
        );
        std::fs::write(&ca, two).unwrap();
        assert_eq!(read_ca(&ca, "kubernetes.cacert").unwrap().len(), 2);

        let empty = dir.join("empty.crt");
        std::fs::write(&empty, "nothing").unwrap();
        let e = read_ca(&empty, "kubernetes.cacert")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kubernetes.cacert: ") && e.contains("empty.crt: no PEM certificate"),
            "{e}"
        );
        let e = read_ca(&dir.join("missing.crt"), "kubernetes.cacert")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kubernetes.cacert: cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn incluster_addresses() {
        assert_eq!(incluster_url("10.96.0.1", "443"), "https://10.96.0.1:443");
        assert_eq!(incluster_url("fd00::1", "6443"), "https://[fd00::1]:6443");
    }

    #[test]
    fn service_account_credentials() {
        let dir = std::env::temp_dir().join(format!("dcs-k8s-sa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pem = "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";
        let cfg = KubernetesConfig::default();
        let e = incluster_config(&cfg, "10.96.0.1", "443", &dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("service account token"), "{e}");
        std::fs::write(dir.join("token"), "t").expect("token");
        let e = incluster_config(&cfg, "10.96.0.1", "443", &dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("ca.crt"), "{e}");
        std::fs::write(dir.join("ca.crt"), pem).expect("ca");
        let c = incluster_config(&cfg, "10.96.0.1", "443", &dir).expect("in-cluster config");
        assert_eq!(c.cluster_url.to_string(), "https://10.96.0.1:443/");
        assert_eq!(c.root_cert, Some(vec![vec![0, 1, 2]]));
        assert_eq!(
            c.auth_info.token_file.as_deref(),
            Some(dir.join("token").to_str().expect("utf-8 path"))
        );
        // kubernetes.cacert replaces the service account CA.
        let own = dir.join("own-ca.pem");
        std::fs::write(&own, pem.replace("AAEC", "BA==")).expect("own ca");
        let with_ca = KubernetesConfig {
            cacert: Some(own.clone()),
            ..Default::default()
        };
        let c = incluster_config(&with_ca, "fd00::1", "6443", &dir).expect("config");
        assert_eq!(c.root_cert, Some(vec![vec![4]]));
        assert_eq!(c.root_cert_file.as_deref(), Some(own.as_path()));
        assert_eq!(c.cluster_url.to_string(), "https://[fd00::1]:6443/");
        let missing = KubernetesConfig {
            cacert: Some(dir.join("nope.pem")),
            ..Default::default()
        };
        let e = incluster_config(&missing, "h", "1", &dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("kubernetes.cacert") && e.contains("nope.pem"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn connect_validates_settings() {
        let dir = std::env::temp_dir().join(format!("dcs-k8s-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let kc = dir.join("kubeconfig");
        std::fs::write(
            &kc,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:9'}\n\
             contexts:\n- name: kind-kind\n  context: {cluster: c, user: u}\n- name: other\n  context: {cluster: c, user: u}\n\
             current-context: kind-kind\nusers:\n- name: u\n  user: {token: t}\n",
        )
        .expect("write kubeconfig");
        let cfg = KubernetesConfig {
            scope: "demo".into(),
            name: "demo-0".into(),
            kubeconfig: Some(kc.clone()),
            ..Default::default()
        };
        let k = Kubernetes::connect(cfg.clone()).await.expect("connect");
        assert_eq!(k.kind(), "kubernetes");
        assert_eq!(k.label_selector(), "cluster-name=demo");
        assert_eq!(
            k.object_names(),
            ["demo-leader", "demo-config", "demo-failover", "demo-sync"].map(String::from)
        );
        drop(k);
        let err = |c: KubernetesConfig| async move {
            Kubernetes::connect(c)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(KubernetesConfig {
            scope: " ".into(),
            ..cfg.clone()
        })
        .await
        .contains("scope"));
        assert!(err(KubernetesConfig {
            name: String::new(),
            ..cfg.clone()
        })
        .await
        .contains("Pod"));
        assert!(err(KubernetesConfig {
            ports: vec![json!({"port": "x"})],
            ..cfg.clone()
        })
        .await
        .contains("kubernetes.ports"));
        let e = err(KubernetesConfig {
            context: Some("nope".into()),
            ..cfg.clone()
        })
        .await;
        assert!(e.contains("context 'nope'"), "{e}");
        assert!(Kubernetes::connect(KubernetesConfig {
            context: Some("other".into()),
            ..cfg.clone()
        })
        .await
        .is_ok());
        let e = err(KubernetesConfig {
            kubeconfig: Some(dir.join("missing")),
            ..cfg
        })
        .await;
        assert!(
            e.contains("cannot read the kubeconfig") && e.contains("missing"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
