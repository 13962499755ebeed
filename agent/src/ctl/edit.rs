//! `edit-config` changes: `--set key.path=value`, `--pg name=value`, `--apply` merges, and the
//! line diff shown before writing.

use serde_json::{Map, Value};

/// A `--set` or `--pg` assignment that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// Text typed as a value that is not YAML.
    #[error("'{text}' is not a YAML value: {source}")]
    NotYaml {
        text: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// No `=` between the key and the value.
    #[error("{option} {assignment}: expected {expected}")]
    NoEquals {
        option: &'static str,
        assignment: String,
        expected: &'static str,
    },
    /// A dotted key with an empty segment (`a..b`).
    #[error("--set {assignment}: empty key in '{path}'")]
    EmptyKey { assignment: String, path: String },
    /// `--pg =value`.
    #[error("--pg {assignment}: empty parameter name")]
    EmptyParameter { assignment: String },
    /// The value of one key or parameter is not YAML.
    #[error("{option} {key}: {source}")]
    BadValue {
        option: &'static str,
        key: String,
        #[source]
        source: Box<EditError>,
    },
}

/// Deep merge `overlay` into `base`; a `null` removes the key (as Patroni's PATCH /config).
pub fn merge(base: &mut Map<String, Value>, overlay: Map<String, Value>) {
    for (k, v) in overlay {
        match v {
            Value::Null => {
                base.remove(&k);
            }
            Value::Object(o) => match base.get_mut(&k) {
                Some(Value::Object(b)) => merge(b, o),
                _ => {
                    let mut fresh = Map::new();
                    merge(&mut fresh, o);
                    base.insert(k, Value::Object(fresh));
                }
            },
            other => {
                base.insert(k, other);
            }
        }
    }
}

/// A YAML scalar or structure typed on the command line; empty text means "remove".
pub fn parse_value(text: &str) -> Result<Value, EditError> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_yaml_ng::from_str::<Value>(text).map_err(|source| EditError::NotYaml {
        text: text.to_string(),
        source,
    })
}

/// `key=value` split at the first `=`.
fn split_assignment<'a>(
    option: &'static str,
    assignment: &'a str,
    expected: &'static str,
) -> Result<(&'a str, &'a str), EditError> {
    assignment
        .split_once('=')
        .ok_or_else(|| EditError::NoEquals {
            option,
            assignment: assignment.to_string(),
            expected,
        })
}

/// The value of `key` given with `option`, parsed as YAML.
fn parse_option_value(option: &'static str, key: &str, text: &str) -> Result<Value, EditError> {
    parse_value(text).map_err(|e| EditError::BadValue {
        option,
        key: key.to_string(),
        source: Box::new(e),
    })
}

/// Apply `key.sub=value` to `config` (the `null` value removes the key).
pub fn apply_set(config: &mut Map<String, Value>, assignment: &str) -> Result<(), EditError> {
    let (path, value) = split_assignment("--set", assignment, "key=value")?;
    let segments: Vec<&str> = path.trim().split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(EditError::EmptyKey {
            assignment: assignment.to_string(),
            path: path.to_string(),
        });
    }
    let value = parse_option_value("--set", path, value)?;
    set_path(config, &segments, value);
    Ok(())
}

/// `--pg name=value`: `postgresql.parameters.name`; the value is kept as text unless YAML gives
/// a number or boolean, as patronictl does.
pub fn apply_pg(config: &mut Map<String, Value>, assignment: &str) -> Result<(), EditError> {
    let (name, value) = split_assignment("--pg", assignment, "name=value")?;
    let name = name.trim();
    if name.is_empty() {
        return Err(EditError::EmptyParameter {
            assignment: assignment.to_string(),
        });
    }
    let value = parse_option_value("--pg", name, value)?;
    set_path(config, &["postgresql", "parameters", name], value);
    Ok(())
}

fn set_path(config: &mut Map<String, Value>, segments: &[&str], value: Value) {
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut node = config;
    for seg in parents {
        let entry = node
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else {
            return;
        };
        node = next;
    }
    if value.is_null() {
        node.remove(*last);
    } else {
        node.insert(last.to_string(), value);
    }
}

/// A unified-style line diff (`-` old, `+` new, two lines of context), empty when equal.
pub fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a == b {
        return String::new();
    }
    // Longest common subsequence table; configs are small.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (c, _))| *c != ' ')
        .map(|(n, _)| n)
        .collect();
    let near = |n: usize| changed.iter().any(|&c| n + 2 >= c && n <= c + 2);
    let mut out = String::from("---\n+++\n");
    let mut skipped = false;
    for (n, (c, line)) in ops.iter().enumerate() {
        if near(n) {
            if skipped {
                out.push_str("@@\n");
                skipped = false;
            }
            out.push(*c);
            out.push_str(line);
            out.push('\n');
        } else {
            skipped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn set_takes_dotted_paths_and_yaml_values() {
        let mut c = obj(json!({"ttl": 30, "postgresql": {"use_pg_rewind": true}}));
        apply_set(&mut c, "ttl=20").unwrap();
        apply_set(&mut c, "postgresql.parameters.work_mem=8MB").unwrap();
        apply_set(&mut c, "postgresql.use_pg_rewind=null").unwrap();
        apply_set(&mut c, "tags={a: 1}").unwrap();
        assert_eq!(
            Value::Object(c),
            json!({"ttl": 20, "postgresql": {"parameters": {"work_mem": "8MB"}}, "tags": {"a": 1}})
        );
    }

    #[test]
    fn set_rejects_malformed_assignments() {
        let mut c = Map::new();
        assert!(apply_set(&mut c, "ttl").is_err());
        assert!(apply_set(&mut c, "a..b=1").is_err());
        assert!(apply_pg(&mut c, "=1").is_err());
    }

    /// The messages name the option and the key as the command line gave them.
    #[test]
    fn errors_say_which_assignment_is_wrong() {
        let mut c = Map::new();
        let text = |r: Result<(), EditError>| r.map_err(|e| e.to_string()).err();
        assert_eq!(
            text(apply_set(&mut c, "ttl")).as_deref(),
            Some("--set ttl: expected key=value")
        );
        assert_eq!(
            text(apply_set(&mut c, "a..b=1")).as_deref(),
            Some("--set a..b=1: empty key in 'a..b'")
        );
        assert_eq!(
            text(apply_pg(&mut c, "x")).as_deref(),
            Some("--pg x: expected name=value")
        );
        assert_eq!(
            text(apply_pg(&mut c, " =1")).as_deref(),
            Some("--pg  =1: empty parameter name")
        );
        let bad = text(apply_set(&mut c, "ttl=[1")).unwrap_or_default();
        assert!(
            bad.starts_with("--set ttl: '[1' is not a YAML value: "),
            "{bad}"
        );
    }

    #[test]
    fn pg_sets_a_parameter_and_empty_removes_it() {
        let mut c = Map::new();
        apply_pg(&mut c, "max_connections=200").unwrap();
        assert_eq!(c["postgresql"]["parameters"]["max_connections"], 200);
        apply_pg(&mut c, "max_connections=").unwrap();
        assert_eq!(Value::Object(c), json!({"postgresql": {"parameters": {}}}));
    }

    #[test]
    fn merge_is_deep_and_null_removes() {
        let mut c = obj(json!({"a": {"b": 1, "c": 2}, "d": 3}));
        merge(&mut c, obj(json!({"a": {"b": null, "e": 4}, "d": null})));
        assert_eq!(Value::Object(c), json!({"a": {"c": 2, "e": 4}}));
    }

    #[test]
    fn diff_marks_changed_lines() {
        let d = diff("a: 1\nb: 2\nc: 3\n", "a: 1\nb: 5\nc: 3\n");
        assert!(d.contains("-b: 2\n+b: 5\n"), "{d}");
        assert!(d.contains(" a: 1\n"), "{d}");
        assert_eq!(diff("x\n", "x\n"), "");
    }
}
