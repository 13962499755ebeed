//! The resource types the server knows: names, kinds, scope, verbs and per-kind behaviour
//! (defaulting on create, validation, which lists merge by key in a strategic merge patch).

/// Static description of one resource type, as discovery would list it.
#[derive(Debug)]
pub struct ResourceDef {
    /// API group, "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Discovery categories (`kubectl get all` covers the `all` category).
    pub categories: &'static [&'static str],
    pub has_status: bool,
    /// DELETE answers the deleted object (else a `Status` naming it).
    pub returns_deleted_object: bool,
    /// PUT of a missing object creates it.
    pub create_on_update: bool,
}

impl ResourceDef {
    /// `v1` or `group/version`, as in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `configmaps` or `leases.coordination.k8s.io`, as error messages name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn is(&self, plural: &str) -> bool {
        self.plural == plural
    }
}

pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        has_status: false,
        returns_deleted_object: false,
        create_on_update: false,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        has_status: false,
        returns_deleted_object: false,
        create_on_update: true,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        has_status: true,
        returns_deleted_object: true,
        create_on_update: false,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        has_status: true,
        returns_deleted_object: true,
        create_on_update: false,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        has_status: true,
        returns_deleted_object: true,
        create_on_update: false,
    },
    ResourceDef {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        has_status: false,
        returns_deleted_object: false,
        create_on_update: false,
    },
];

/// The resource named `plural` in `group`/`version`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// API groups other than core, for `/apis` discovery.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&str, &str)> = RESOURCES
        .iter()
        .filter(|r| !r.group.is_empty())
        .map(|r| (r.group, r.version))
        .collect();
    groups.dedup();
    groups
}

/// How a strategic merge patch treats a list at `path` (field names from the object root, list
/// items contributing no segment) of an object of `kind`. Lists not named here are replaced
/// as a whole, as for Go fields without a `patchStrategy` (Endpoints `subsets` among them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    Replace,
    /// Items are maps merged by this key.
    MergeByKey(&'static str),
    /// Items are scalars; the result is the union.
    MergePrimitives,
}

pub fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    match path {
        ["metadata", "finalizers"] => return MergePrimitives,
        ["metadata", "ownerReferences"] => return MergeByKey("uid"),
        _ => {}
    }
    match (kind, path) {
        ("Pod", ["spec", "containers" | "initContainers" | "ephemeralContainers"]) => {
            MergeByKey("name")
        }
        ("Pod", ["spec", "containers" | "initContainers", "ports"]) => MergeByKey("containerPort"),
        ("Pod", ["spec", "containers" | "initContainers", "env"]) => MergeByKey("name"),
        ("Pod", ["spec", "containers" | "initContainers", "volumeMounts"]) => {
            MergeByKey("mountPath")
        }
        ("Pod", ["spec", "containers" | "initContainers", "volumeDevices"]) => {
            MergeByKey("devicePath")
        }
        ("Pod", ["spec", "volumes" | "imagePullSecrets"]) => MergeByKey("name"),
        ("Pod", ["spec", "hostAliases"]) => MergeByKey("ip"),
        ("Pod", ["status", "conditions"]) => MergeByKey("type"),
        ("Pod", ["status", "podIPs" | "hostIPs"]) => MergeByKey("ip"),
        ("Service", ["spec", "ports"]) => MergeByKey("port"),
        ("Namespace", ["status", "conditions"]) => MergeByKey("type"),
        _ => Replace,
    }
}
