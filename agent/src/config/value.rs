//! Helpers on the untyped configuration tree: YAML parsing into a JSON tree, Patroni's deep merge,
//! lenient scalar deserializers and `host:port` parsing.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// YAML that does not parse: the message, and where (1-based; 0 when unknown).
#[derive(Debug, Default, thiserror::Error)]
#[error("{msg}")]
pub(crate) struct YamlError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) msg: String,
}

/// Parse YAML text into a JSON tree.
pub(crate) fn parse_yaml(text: &str) -> Result<Value, YamlError> {
    let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        // The location is reported separately; drop its copy from the message.
        let msg = e
            .to_string()
            .replacen(&format!(" at line {line} column {column}"), "", 1);
        YamlError { line, column, msg }
    })?;
    // `<<: *anchor` merge keys, which Patroni's YAML loader also honours.
    yaml.apply_merge().map_err(|e| YamlError {
        msg: e.to_string(),
        ..YamlError::default()
    })?;
    Ok(yaml_to_json(yaml))
}

fn yaml_to_json(v: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                // NaN and infinities have no JSON form; keep their spelling.
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or_else(|| Value::String(n.to_string()))
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(mapping) => {
            let mut out = Map::new();
            for (k, v) in mapping {
                out.insert(yaml_key(k), yaml_to_json(v));
            }
            Value::Object(out)
        }
        Y::Tagged(tagged) => yaml_to_json(tagged.value),
    }
}

fn yaml_key(k: serde_yaml_ng::Value) -> String {
    match yaml_to_json(k) {
        Value::String(s) => s,
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// Patroni's `patch_config`: mappings merge recursively, anything else replaces, and a null in
/// the overlay removes the key.
pub(crate) fn patch(base: &mut Map<String, Value>, overlay: Map<String, Value>) {
    for (key, value) in overlay {
        match value {
            Value::Null => {
                base.remove(&key);
            }
            Value::Object(sub) => match base.get_mut(&key) {
                Some(Value::Object(existing)) => patch(existing, sub),
                _ => {
                    base.insert(key, Value::Object(sub));
                }
            },
            other => {
                base.insert(key, other);
            }
        }
    }
}

/// Drop keys whose value is null (an empty YAML section such as `restapi:` means "not set").
pub(crate) fn strip_nulls(map: &mut Map<String, Value>) {
    map.retain(|_, v| !v.is_null());
    for v in map.values_mut() {
        if let Value::Object(sub) = v {
            strip_nulls(sub);
        }
    }
}

/// Short rendering of a value for messages.
pub(crate) fn show(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    };
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// Booleans as Patroni reads them: `on|true|yes|1` / `off|false|no|0`, any case.
pub(crate) fn parse_bool_str(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

pub(crate) fn bool_of(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => parse_bool_str(s),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        _ => None,
    }
}

/// A non-negative integer written as a number, an integral float or a numeric string.
pub(crate) fn u64_of(v: &Value) -> Option<u64> {
    i64_of(v).and_then(|i| u64::try_from(i).ok())
}

pub(crate) fn i64_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Scalars rendered as strings (labels, static fields, parameter values).
pub(crate) fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn expect_bool<E: serde::de::Error>(v: &Value) -> Result<bool, E> {
    bool_of(v).ok_or_else(|| {
        E::custom(format!(
            "invalid value {}, expected a boolean (true/false, on/off, yes/no, 1/0)",
            show(v)
        ))
    })
}

pub(crate) fn de_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    expect_bool(&Value::deserialize(d)?)
}

pub(crate) fn de_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    expect_bool(&v).map(Some)
}

pub(crate) fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    u64_of(&v).ok_or_else(|| {
        D::Error::custom(format!(
            "invalid value {}, expected a non-negative integer",
            show(&v)
        ))
    })
}

pub(crate) fn de_opt_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    u64_of(&v)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("invalid port {}, expected 1-65535", show(&v))))
}

/// `{k: v}` with scalar values rendered as strings.
pub(crate) fn de_string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let v = Value::deserialize(d)?;
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match scalar_string(&v) {
                Some(s) => Ok((k, s)),
                None => Err(D::Error::custom(format!(
                    "value of '{k}' must be a string, got {}",
                    show(&v)
                ))),
            })
            .collect(),
        other => Err(D::Error::custom(format!(
            "invalid value {}, expected a mapping",
            show(&other)
        ))),
    }
}

/// A list of strings; a single string is accepted as a one-item list.
pub(crate) fn de_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Value::deserialize(d)?;
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(D::Error::custom(format!(
                    "item {i}: expected a string, got {}",
                    show(other)
                ))),
            })
            .collect(),
        other => Err(D::Error::custom(format!(
            "invalid value {}, expected a list of strings",
            show(&other)
        ))),
    }
}

/// Strip one pair of balanced surrounding quotes, as Patroni does for tool options.
fn unquote(s: &str) -> String {
    let t = s.trim();
    for q in ['"', '\''] {
        if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) && !t[1..t.len() - 1].contains(q) {
            return t[1..t.len() - 1].to_string();
        }
    }
    s.to_string()
}

fn flag_name(raw: &str) -> String {
    raw.trim().trim_start_matches('-').to_string()
}

/// Why tool options (`initdb`, `basebackup`) cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ToolFlagsError {
    #[error("empty option name")]
    EmptyName,
    #[error("option '{name}' must have a scalar value, got {value}")]
    NotScalar { name: String, value: String },
    #[error("item {index}: {problem}")]
    InItem {
        index: usize,
        problem: Box<ToolFlagsError>,
    },
    #[error("item {index}: expected an option name or a single `name: value` pair, got {value}")]
    NotAnOption { index: usize, value: String },
    #[error("invalid value {value}, expected a list or a mapping of options")]
    NotListOrMapping { value: String },
}

/// Tool options (`initdb`, `basebackup`) in Patroni's list-or-mapping form, as long flags:
/// `data-checksums` → `--data-checksums`, `{encoding: UTF8}` → `--encoding=UTF8`.
pub(crate) fn tool_flags(v: &Value) -> Result<Vec<String>, ToolFlagsError> {
    fn pair(name: &str, value: &Value) -> Result<Option<String>, ToolFlagsError> {
        let name = flag_name(name);
        if name.is_empty() {
            return Err(ToolFlagsError::EmptyName);
        }
        match value {
            Value::Null | Value::Bool(false) => Ok(None),
            Value::Bool(true) => Ok(Some(format!("--{name}"))),
            other => match scalar_string(other) {
                Some(s) if s.is_empty() => Ok(None),
                Some(s) => Ok(Some(format!("--{name}={}", unquote(&s)))),
                None => Err(ToolFlagsError::NotScalar {
                    name,
                    value: show(other),
                }),
            },
        }
    }
    let mut flags = Vec::new();
    match v {
        Value::Null => {}
        Value::Object(map) => {
            for (k, val) in map {
                flags.extend(pair(k, val)?);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) if !flag_name(s).is_empty() => {
                        flags.push(format!("--{}", flag_name(s)))
                    }
                    Value::Object(m) if m.len() == 1 => {
                        for (k, val) in m {
                            flags.extend(pair(k, val).map_err(|problem| {
                                ToolFlagsError::InItem {
                                    index: i,
                                    problem: Box::new(problem),
                                }
                            })?);
                        }
                    }
                    other => {
                        return Err(ToolFlagsError::NotAnOption {
                            index: i,
                            value: show(other),
                        })
                    }
                }
            }
        }
        other => return Err(ToolFlagsError::NotListOrMapping { value: show(other) }),
    }
    Ok(flags)
}

pub(crate) fn de_tool_flags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Value::deserialize(d)?;
    tool_flags(&v).map_err(D::Error::custom)
}

/// The option name of a long flag: `--encoding=UTF8` → `encoding`.
pub(crate) fn flag_option(flag: &str) -> &str {
    let body = flag.trim_start_matches('-');
    body.split_once('=').map(|(n, _)| n).unwrap_or(body)
}

/// Why a `host:port` value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("empty address, expected host:port")]
    Empty,
    #[error("invalid port '{port}' in '{value}'")]
    InvalidPort { port: String, value: String },
    #[error("'{value}' has no port, expected host:port")]
    NoPort { value: String },
}

/// Split Patroni's `host:port` forms: `h:p`, `*:p`, `h1,h2:p`, `[v6]:p`, or a bare host (then
/// `default_port` applies; `None` makes the port mandatory). Hosts come back without brackets;
/// an empty host list means "all interfaces".
pub fn split_host_port(
    value: &str,
    default_port: Option<u16>,
) -> Result<(Vec<String>, u16), AddressError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(AddressError::Empty);
    }
    let (hosts, port) = match value.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => {
            let port = p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| AddressError::InvalidPort {
                    port: p.trim().to_string(),
                    value: value.to_string(),
                })?;
            (h, port)
        }
        _ => match default_port {
            Some(p) => (value, p),
            None => {
                return Err(AddressError::NoPort {
                    value: value.to_string(),
                })
            }
        },
    };
    let hosts = hosts
        .split(',')
        .map(|h| {
            h.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
        .filter(|h| !h.is_empty())
        .collect();
    Ok((hosts, port))
}

/// `host:port` with IPv6 hosts bracketed.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_port_forms() {
        type Expected<'a> = Result<(Vec<&'a str>, u16), ()>;
        let cases: &[(&str, Option<u16>, Expected)] = &[
            ("127.0.0.1:5432", None, Ok((vec!["127.0.0.1"], 5432))),
            ("*:5432", None, Ok((vec!["*"], 5432))),
            (
                "0.0.0.0,127.0.0.1:5433",
                None,
                Ok((vec!["0.0.0.0", "127.0.0.1"], 5433)),
            ),
            ("[::1]:8008", None, Ok((vec!["::1"], 8008))),
            (":8008", None, Ok((vec![], 8008))),
            (
                "db.example.com",
                Some(5432),
                Ok((vec!["db.example.com"], 5432)),
            ),
            ("[fe80::1]", Some(2379), Ok((vec!["fe80::1"], 2379))),
            ("db.example.com", None, Err(())),
            ("h:notaport", None, Err(())),
            ("h:0", None, Err(())),
            ("h:70000", None, Err(())),
            ("", Some(1), Err(())),
        ];
        for (input, default, want) in cases {
            let got = split_host_port(input, *default);
            match want {
                Ok((hosts, port)) => {
                    let (h, p) = got.unwrap_or_else(|e| panic!("{input}: {e}"));
                    assert_eq!(&h, hosts, "{input}");
                    assert_eq!(p, *port, "{input}");
                }
                Err(()) => assert!(got.is_err(), "{input} should fail, got {got:?}"),
            }
        }
    }

    #[test]
    fn tool_flags_forms() {
        let cases = [
            (
                json!(["data-checksums", {"encoding": "UTF8"}]),
                Ok(vec!["--data-checksums", "--encoding=UTF8"]),
            ),
            (
                json!({"encoding": "UTF8", "locale": "C"}),
                Ok(vec!["--encoding=UTF8", "--locale=C"]),
            ),
            (
                json!([{"auth-local": "\"trust\""}]),
                Ok(vec!["--auth-local=trust"]),
            ),
            (
                json!({"wal-segsize": 32, "data-checksums": true, "no-sync": false}),
                Ok(vec!["--data-checksums", "--wal-segsize=32"]),
            ),
            (json!(null), Ok(vec![])),
            (json!([["nested"]]), Err(())),
            (json!([{"a": "1", "b": "2"}]), Err(())),
            (json!("data-checksums"), Err(())),
        ];
        for (input, want) in cases {
            let got = tool_flags(&input);
            match want {
                Ok(flags) => {
                    // Mapping order is not significant to the tools.
                    let mut got = got.unwrap_or_else(|e| panic!("{input}: {e}"));
                    let mut want: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
                    if input.is_object() {
                        got.sort();
                        want.sort();
                    }
                    assert_eq!(got, want, "{input}");
                }
                Err(()) => assert!(got.is_err(), "{input} should fail"),
            }
        }
    }

    #[test]
    fn patch_merges_deeply_and_null_removes() {
        let mut base = json!({"a": {"b": 1, "c": 2}, "d": 1})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let overlay = json!({"a": {"c": 3, "e": 4}, "d": null, "f": [1]})
            .as_object()
            .cloned()
            .unwrap_or_default();
        patch(&mut base, overlay);
        assert_eq!(
            Value::Object(base),
            json!({"a": {"b": 1, "c": 3, "e": 4}, "f": [1]})
        );
    }

    #[test]
    fn yaml_syntax_error_has_location() {
        let err = parse_yaml("a: 1\nb: [1, 2\nc: 3\n").err();
        let YamlError { line, column, msg } = err.unwrap_or_default();
        assert!(line >= 2, "line {line}: {msg}");
        assert!(column > 0);
        assert!(
            !msg.contains(&format!(" at line {line} column {column}")),
            "{msg}"
        );
        assert!(msg.contains("did not find expected"), "{msg}");
    }

    #[test]
    fn lenient_scalars() {
        assert_eq!(bool_of(&json!("on")), Some(true));
        assert_eq!(bool_of(&json!("No")), Some(false));
        assert_eq!(bool_of(&json!(2)), None);
        assert_eq!(u64_of(&json!("30")), Some(30));
        assert_eq!(u64_of(&json!(30.0)), Some(30));
        assert_eq!(u64_of(&json!(-1)), None);
        assert_eq!(u64_of(&json!("abc")), None);
    }
}
