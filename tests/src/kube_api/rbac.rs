//! Optional authorization: the rules of Role (and ClusterRole) documents, enforced like the
//! real RBAC authorizer for resource requests.
//!
//! Simplification: every loaded Role is bound to every client token that is not an admin
//! token (RoleBindings in the file are ignored), so "the rules a member gets" is exactly the
//! union of the loaded Roles. Choose the Roles by name to model a binding of only some of
//! them. A Role without `metadata.namespace` applies in every namespace (as if applied with
//! `kubectl apply -n NS` to each); a ClusterRole also at the cluster scope. Discovery and
//! health paths stay open (the real server's `system:discovery` binding).

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{json, Value};

/// Tokens never subject to the rules: the fixture's and the cluster harness's own requests.
pub const DEFAULT_ADMIN_TOKENS: [&str; 2] =
    [crate::kube::FIXTURE_TOKEN, crate::cluster::HARNESS_TOKEN];

/// One `rules[]` entry of a Role.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub api_groups: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
    /// Rules for non-resource paths never match resource requests.
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

impl Rule {
    fn matches(&self, request: &Access<'_>) -> bool {
        let any = |list: &[String], want: &str| list.iter().any(|v| v == "*" || v == want);
        let combined = match request.subresource {
            Some(sub) => format!("{}/{sub}", request.resource),
            None => request.resource.to_string(),
        };
        let resource_ok = self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || request
                    .subresource
                    .is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
        });
        self.non_resource_urls.is_empty()
            && any(&self.verbs, request.verb)
            && any(&self.api_groups, request.group)
            && resource_ok
            && (self.resource_names.is_empty()
                || (!request.name.is_empty()
                    && self.resource_names.iter().any(|n| n == request.name)))
    }
}

/// A loaded Role or ClusterRole.
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    /// `None`: every namespace (a Role) or everywhere (a ClusterRole).
    pub namespace: Option<String>,
    pub cluster: bool,
    pub rules: Vec<Rule>,
}

/// What a request asks to do, as the authorizer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub client: &'a str,
    pub verb: &'a str,
    pub group: &'a str,
    /// Plural, without the subresource.
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    /// `None` at the cluster scope.
    pub namespace: Option<&'a str>,
    /// Empty for collection requests (create, list, watch without a name selector).
    pub name: &'a str,
}

/// The loaded rules plus the tokens they do not apply to.
#[derive(Debug, Clone)]
pub struct Policy {
    pub roles: Vec<Role>,
    pub admin_tokens: BTreeSet<String>,
    /// Where the rules came from, for `GET /_test/rbac`.
    pub source: String,
}

#[derive(Deserialize)]
struct Document {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    rules: Option<Vec<Rule>>,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

impl Policy {
    /// The Roles and ClusterRoles of a (multi-document) YAML text; other documents
    /// (ServiceAccounts, bindings) are skipped. `only`: the names of the Roles to bind (empty:
    /// all of them); naming one the text does not have is an error. `admin_tokens` come on top
    /// of [`DEFAULT_ADMIN_TOKENS`].
    pub fn from_yaml(
        text: &str,
        source: &str,
        only: &[String],
        admin_tokens: &[String],
    ) -> Result<Policy, String> {
        let mut roles = Vec::new();
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(document)
                .map_err(|e| format!("{source}: document {}: {e}", index + 1))?;
            if value.is_null() {
                continue;
            }
            let doc: Document = serde_json::from_value(value)
                .map_err(|e| format!("{source}: document {}: {e}", index + 1))?;
            let cluster = match doc.kind.as_str() {
                "Role" => false,
                "ClusterRole" => true,
                _ => continue,
            };
            if doc.metadata.name.is_empty() {
                return Err(format!(
                    "{source}: document {}: {} without metadata.name",
                    index + 1,
                    doc.kind
                ));
            }
            let rules = doc.rules.unwrap_or_default();
            for (i, rule) in rules.iter().enumerate() {
                if rule.verbs.is_empty() {
                    return Err(format!(
                        "{source}: {} {}: rules[{i}].verbs is empty",
                        doc.kind, doc.metadata.name
                    ));
                }
                if rule.non_resource_urls.is_empty()
                    && (rule.api_groups.is_empty() || rule.resources.is_empty())
                {
                    return Err(format!(
                        "{source}: {} {}: rules[{i}] needs apiGroups and resources",
                        doc.kind, doc.metadata.name
                    ));
                }
            }
            roles.push(Role {
                name: doc.metadata.name,
                namespace: doc.metadata.namespace.filter(|n| !n.is_empty()),
                cluster,
                rules,
            });
        }
        if !only.is_empty() {
            for wanted in only {
                if !roles.iter().any(|r| &r.name == wanted) {
                    let found: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
                    return Err(format!(
                        "{source}: no Role named {wanted:?} (it has {found:?})"
                    ));
                }
            }
            roles.retain(|r| only.contains(&r.name));
        }
        if roles.is_empty() {
            return Err(format!("{source}: no Role or ClusterRole found"));
        }
        let admin_tokens = DEFAULT_ADMIN_TOKENS
            .iter()
            .map(|t| t.to_string())
            .chain(admin_tokens.iter().cloned())
            .collect();
        Ok(Policy {
            roles,
            admin_tokens,
            source: source.to_string(),
        })
    }

    /// Whether the request is allowed: admin tokens always, others when a rule of a Role that
    /// applies where the request goes matches it.
    pub fn allows(&self, access: &Access<'_>) -> bool {
        if self.admin_tokens.contains(access.client) {
            return true;
        }
        self.roles.iter().any(|role| {
            let scope_ok = match (&role.namespace, access.namespace) {
                _ if role.cluster && role.namespace.is_none() => true,
                (Some(own), Some(ns)) => own == ns,
                (None, Some(_)) => true,
                (_, None) => false,
            };
            scope_ok && role.rules.iter().any(|rule| rule.matches(access))
        })
    }

    pub fn describe(&self) -> Value {
        json!({
            "source": self.source,
            "admin_tokens": self.admin_tokens,
            "roles": self.roles.iter().map(|r| json!({
                "name": r.name,
                "kind": if r.cluster { "ClusterRole" } else { "Role" },
                "namespace": r.namespace,
                "rules": r.rules.iter().map(|rule| json!({
                    "apiGroups": rule.api_groups,
                    "resources": rule.resources,
                    "verbs": rule.verbs,
                    "resourceNames": rule.resource_names,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The user name the real server would report for a bearer token: the test server treats
/// each token as the service account of that name in `default`; no token is anonymous.
pub fn user_of(client: &str) -> String {
    if client == "anonymous" {
        "system:anonymous".to_string()
    } else {
        format!("system:serviceaccount:default:{client}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: regent}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: main}
rules:
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, patch]
  - apiGroups: [""]
    resources: [pods/status, "*/scale"]
    verbs: [patch]
  - apiGroups: [""]
    resources: [endpoints]
    resourceNames: [kubernetes]
    verbs: [get]
---
kind: Role
apiVersion: rbac.authorization.k8s.io/v1
metadata: {name: other, namespace: prod}
rules:
  - apiGroups: ["*"]
    resources: ["*"]
    verbs: ["*"]
# trailing comment
"#;

    fn access<'a>(verb: &'a str, resource: &'a str, name: &'a str) -> Access<'a> {
        Access {
            client: "m",
            verb,
            group: "",
            resource,
            subresource: None,
            namespace: Some("default"),
            name,
        }
    }

    #[test]
    fn rules_match_like_rbac() {
        let p = Policy::from_yaml(YAML, "t", &[], &[]).expect("policy");
        assert_eq!(p.roles.len(), 2);
        assert!(p.allows(&access("get", "configmaps", "x")));
        assert!(!p.allows(&access("list", "configmaps", "")));
        assert!(!p.allows(&access("patch", "pods", "x")));
        let status = Access {
            subresource: Some("status"),
            ..access("patch", "pods", "x")
        };
        assert!(p.allows(&status));
        let scale = Access {
            subresource: Some("scale"),
            ..access("patch", "deployments", "x")
        };
        assert!(p.allows(&scale));
        assert!(p.allows(&access("get", "endpoints", "kubernetes")));
        assert!(!p.allows(&access("get", "endpoints", "other")));
        let prod = Access {
            namespace: Some("prod"),
            ..access("delete", "secrets", "x")
        };
        assert!(p.allows(&prod));
        let cluster = Access {
            namespace: None,
            ..access("get", "configmaps", "x")
        };
        assert!(!p.allows(&cluster));
        let admin = Access {
            client: crate::kube::FIXTURE_TOKEN,
            ..access("delete", "pods", "x")
        };
        assert!(p.allows(&admin));
    }

    #[test]
    fn chosen_roles_only() {
        let p = Policy::from_yaml(YAML, "t", &["main".into()], &["root".into()]).expect("policy");
        let prod = Access {
            namespace: Some("prod"),
            ..access("delete", "secrets", "x")
        };
        assert!(!p.allows(&prod));
        assert!(p.allows(&Access {
            client: "root",
            ..prod
        }));
        let e = Policy::from_yaml(YAML, "t", &["nope".into()], &[]).expect_err("unknown role");
        assert!(e.contains("nope"), "{e}");
        let e = Policy::from_yaml(
            "kind: Role\nmetadata: {name: r}\nrules: [{verbs: []}]",
            "t",
            &[],
            &[],
        )
        .expect_err("empty verbs");
        assert!(e.contains("verbs"), "{e}");
    }
}
