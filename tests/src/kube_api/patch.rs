//! The three PATCH flavours: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! Kubernetes' strategic merge patch (maps merge, `null` deletes, some lists merge by key,
//! `$patch`/`$retainKeys`/`$setElementOrder`/`$deleteFromPrimitiveList` directives).

use serde_json::{Map, Value};

use super::resources::{list_strategy, ListStrategy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Strategic,
    Json,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value (parameters ignored).
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/json-patch+json" => Some(PatchType::Json),
            _ => None,
        }
    }
}

/// Apply `patch` of type `kind` to `object` (a resource of Kubernetes kind `object_kind`).
/// Errors are messages for a 422 (JSON patch) or 400 (malformed patch) answer.
pub fn apply(
    object: &Value,
    patch: &Value,
    patch_type: PatchType,
    object_kind: &str,
) -> Result<Value, PatchFailure> {
    let mut doc = object.clone();
    match patch_type {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(PatchFailure::BadRequest(
                    "json: cannot unmarshal into Go value: merge patch is not a JSON object".into(),
                ));
            }
            json_patch::merge(&mut doc, patch);
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| {
                PatchFailure::BadRequest(format!("the JSON patch is malformed: {e}"))
            })?;
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                // Worded as the Go JSON patch library the real server uses.
                PatchFailure::Invalid(match e.kind {
                    json_patch::PatchErrorKind::TestFailed => {
                        format!("testing value {} failed: test failed", e.path)
                    }
                    _ => format!("{e}"),
                })
            })?;
        }
        PatchType::Strategic => {
            let Value::Object(patch_map) = patch else {
                return Err(PatchFailure::BadRequest(
                    "the strategic merge patch is not a JSON object".into(),
                ));
            };
            let Value::Object(original) = &mut doc else {
                return Err(PatchFailure::BadRequest("the object is not a map".into()));
            };
            let mut path = Vec::new();
            merge_map(original, patch_map, object_kind, &mut path)?;
        }
    }
    Ok(doc)
}

#[derive(Debug, Clone)]
pub enum PatchFailure {
    /// Malformed patch: 400.
    BadRequest(String),
    /// A patch that cannot apply (JSON patch test failed, path missing...): 422.
    Invalid(String),
}

/// A copy of `v` without `null` map values and `$` directives (values the patch inserts into
/// places where the original had nothing).
fn cleaned(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !v.is_null() && !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), cleaned(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|item| !is_directive_item(item))
                .map(cleaned)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_directive_item(item: &Value) -> bool {
    item.as_object()
        .is_some_and(|m| m.len() == 1 && m.contains_key("$patch"))
}

fn merge_map(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<(), PatchFailure> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *original = match cleaned(&Value::Object(patch.clone())) {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            return Ok(());
        }
        Some("delete") => {
            original.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchFailure::BadRequest(format!(
                "unknown patch type: {other} in map: {}",
                Value::Object(patch.clone())
            )))
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        original.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) =
                (original.get_mut(field), value.as_array())
            {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                original.remove(key);
            }
            Value::Object(pm) => {
                match pm.get("$patch").and_then(Value::as_str) {
                    Some("delete") => {
                        original.remove(key);
                        continue;
                    }
                    Some("replace") => {
                        original.insert(key.clone(), cleaned(value));
                        continue;
                    }
                    _ => {}
                }
                path.push(key.clone());
                let entry = original
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(om) = entry {
                    merge_map(om, pm, kind, path)?;
                }
                path.pop();
            }
            Value::Array(items) => {
                path.push(key.clone());
                let segs: Vec<&str> = path.iter().map(String::as_str).collect();
                let strategy = list_strategy(kind, &segs);
                let merged = merge_list(original.get(key), items, strategy, kind, path)?;
                path.pop();
                original.insert(key.clone(), merged);
            }
            scalar => {
                original.insert(key.clone(), scalar.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(
    original: Option<&Value>,
    patch: &[Value],
    strategy: ListStrategy,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<Value, PatchFailure> {
    // `{"$patch": "replace"}` as a list item: the other items replace the list.
    let replace = patch.iter().any(|item| {
        is_directive_item(item) && item.get("$patch").and_then(Value::as_str) == Some("replace")
    });
    let original: Vec<Value> = match original {
        Some(Value::Array(items)) if !replace => items.clone(),
        _ => Vec::new(),
    };
    match strategy {
        ListStrategy::Replace => Ok(cleaned(&Value::Array(patch.to_vec()))),
        ListStrategy::MergePrimitives => {
            let mut out = original;
            for item in patch {
                if !item.is_object() && !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(Value::Array(out))
        }
        ListStrategy::MergeByKey(merge_key) => {
            let mut out = original;
            for item in patch {
                let Value::Object(pm) = item else {
                    return Err(PatchFailure::BadRequest(format!(
                        "the list at {} merges by {merge_key:?} but an item is not a map: {item}",
                        path.join(".")
                    )));
                };
                if is_directive_item(item) {
                    continue;
                }
                let Some(key_value) = pm.get(merge_key) else {
                    return Err(PatchFailure::BadRequest(format!(
                        "map: {item} does not contain declared merge key: {merge_key}"
                    )));
                };
                let position = out.iter().position(|o| o.get(merge_key) == Some(key_value));
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    out.retain(|o| o.get(merge_key) != Some(key_value));
                    continue;
                }
                match position {
                    Some(i) => {
                        if let Value::Object(om) = &mut out[i] {
                            merge_map(om, pm, kind, path)?;
                        }
                    }
                    None => out.push(cleaned(item)),
                }
            }
            Ok(Value::Array(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(obj: Value, patch: Value, kind: &str) -> Value {
        match apply(&obj, &patch, PatchType::Strategic, kind) {
            Ok(v) => v,
            Err(e) => panic!("patch failed: {e:?}"),
        }
    }

    #[test]
    fn strategic_maps_merge_and_null_deletes() {
        let obj = json!({"metadata": {"annotations": {"a": "1", "b": "2"}}, "data": {"x": "y"}});
        let out = smp(
            obj,
            json!({"metadata": {"annotations": {"a": null, "c": "3"}}}),
            "ConfigMap",
        );
        assert_eq!(
            out,
            json!({"metadata": {"annotations": {"b": "2", "c": "3"}}, "data": {"x": "y"}})
        );
    }

    #[test]
    fn strategic_lists() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "ports": [{"containerPort": 1}]},
            {"name": "b", "image": "y"}
        ]}});
        let out = smp(
            pod,
            json!({
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "spec": {"containers": [
                    {"name": "a", "image": "z", "ports": [{"containerPort": 2}]},
                    {"name": "b", "$patch": "delete"},
                    {"name": "c", "image": "w", "dropped": null}
                ]}
            }),
            "Pod",
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [
                {"name": "a", "image": "z", "ports": [{"containerPort": 1}, {"containerPort": 2}]},
                {"name": "c", "image": "w"}
            ]}})
        );
        // Endpoints subsets replace.
        let ep = json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]});
        let out = smp(
            ep,
            json!({"subsets": [{"addresses": [{"ip": "10.0.0.2"}]}]}),
            "Endpoints",
        );
        assert_eq!(
            out,
            json!({"subsets": [{"addresses": [{"ip": "10.0.0.2"}]}]})
        );
        // Finalizers merge as a set, with an explicit removal directive.
        let obj = json!({"metadata": {"finalizers": ["a", "b"]}});
        let out = smp(
            obj,
            json!({"metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]}}),
            "ConfigMap",
        );
        assert_eq!(out, json!({"metadata": {"finalizers": ["b", "c"]}}));
    }

    #[test]
    fn merge_and_json_patch() {
        let obj = json!({"metadata": {"labels": {"a": "1"}}, "data": {"k": "v"}});
        let out = apply(
            &obj,
            &json!({"metadata": {"labels": {"a": null, "b": "2"}}}),
            PatchType::Merge,
            "ConfigMap",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        let out = apply(
            &obj,
            &json!([{"op": "replace", "path": "/data/k", "value": "w"}]),
            PatchType::Json,
            "ConfigMap",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(out["data"]["k"], "w");
        let failed = apply(
            &obj,
            &json!([{"op": "test", "path": "/data/k", "value": "nope"}]),
            PatchType::Json,
            "ConfigMap",
        );
        assert!(matches!(failed, Err(PatchFailure::Invalid(_))));
    }
}
