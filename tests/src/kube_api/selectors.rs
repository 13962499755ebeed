//! Label selectors (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`, `a<1`)
//! and field selectors (`metadata.name=x`, `!=`), parsed and matched as the real server does.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Eq,
    DoubleEq,
    NotEq,
    Bang,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
}

fn is_ident_char(c: char) -> bool {
    !c.is_whitespace() && !"=!(),<>".contains(c)
}

fn tokenize(input: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '=' if chars.get(i + 1) == Some(&'=') => {
                tokens.push(Token::DoubleEq);
                i += 2;
            }
            '=' => {
                tokens.push(Token::Eq);
                i += 1;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                tokens.push(Token::NotEq);
                i += 2;
            }
            '!' => {
                tokens.push(Token::Bang);
                i += 1;
            }
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            '>' => {
                tokens.push(Token::Gt);
                i += 1;
            }
            '<' => {
                tokens.push(Token::Lt);
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(tokens)
}

/// Label key syntax: optional DNS subdomain prefix + `/` + name of up to 63 characters.
pub fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !valid_dns_subdomain(p) {
            return false;
        }
    }
    valid_label_value(name) && !name.is_empty()
}

/// Label value syntax: empty, or up to 63 alphanumerics, `-`, `_`, `.`, alphanumeric at both ends.
pub fn valid_label_value(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
}

pub fn valid_dns_subdomain(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric())
        })
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<LabelSelector, String> {
        let tokens = tokenize(input)?;
        let mut requirements = Vec::new();
        let mut pos = 0;
        let err = |what: &str| format!("unable to parse requirement: {what}");
        while pos < tokens.len() {
            let negated = tokens[pos] == Token::Bang;
            if negated {
                pos += 1;
            }
            let key = match tokens.get(pos) {
                Some(Token::Ident(k)) => k.clone(),
                _ => {
                    return Err(err(&format!(
                        "found unexpected token in {input:?}, expected: identifier"
                    )))
                }
            };
            if !valid_label_key(&key) {
                return Err(format!(
                    "unable to parse requirement: <nil>: Invalid value: {}: name part must consist \
                     of alphanumeric characters, '-', '_' or '.', and must start and end with an \
                     alphanumeric character",
                    super::status::go_quote(&key)
                ));
            }
            pos += 1;
            let op = if negated {
                Op::DoesNotExist
            } else {
                match tokens.get(pos) {
                    None | Some(Token::Comma) => Op::Exists,
                    Some(Token::Eq) | Some(Token::DoubleEq) | Some(Token::NotEq) => {
                        let not = tokens[pos] == Token::NotEq;
                        pos += 1;
                        let value = match tokens.get(pos) {
                            Some(Token::Ident(v)) => {
                                pos += 1;
                                v.clone()
                            }
                            None | Some(Token::Comma) => String::new(),
                            Some(t) => {
                                return Err(err(&format!("found {t:?}, expected: identifier")))
                            }
                        };
                        if !valid_label_value(&value) {
                            return Err(err(&format!("invalid label value: {value:?}")));
                        }
                        if not {
                            Op::NotIn(vec![value])
                        } else {
                            Op::In(vec![value])
                        }
                    }
                    Some(Token::Gt) | Some(Token::Lt) => {
                        let gt = tokens[pos] == Token::Gt;
                        pos += 1;
                        let n = match tokens.get(pos) {
                            Some(Token::Ident(v)) => v.parse::<i64>().map_err(|_| {
                                err(&format!(
                                    "for 'Gt', 'Lt' operators, the value must be an integer: {v}"
                                ))
                            })?,
                            _ => return Err(err("expected an integer")),
                        };
                        pos += 1;
                        if gt {
                            Op::Gt(n)
                        } else {
                            Op::Lt(n)
                        }
                    }
                    Some(Token::Ident(word)) if word == "in" || word == "notin" => {
                        let is_in = word == "in";
                        pos += 1;
                        if tokens.get(pos) != Some(&Token::Open) {
                            return Err(err("found unexpected token, expected: '('"));
                        }
                        pos += 1;
                        let mut values = Vec::new();
                        loop {
                            match tokens.get(pos) {
                                Some(Token::Ident(v)) => {
                                    if !valid_label_value(v) {
                                        return Err(err(&format!("invalid label value: {v:?}")));
                                    }
                                    values.push(v.clone());
                                    pos += 1;
                                }
                                Some(Token::Close) => {
                                    pos += 1;
                                    break;
                                }
                                _ => {
                                    return Err(err(
                                        "found unexpected token, expected: ',', ')' or identifier",
                                    ))
                                }
                            }
                            match tokens.get(pos) {
                                Some(Token::Comma) => pos += 1,
                                Some(Token::Close) => {
                                    pos += 1;
                                    break;
                                }
                                _ => {
                                    return Err(err("found unexpected token, expected: ',' or ')'"))
                                }
                            }
                        }
                        if values.is_empty() {
                            values.push(String::new());
                        }
                        if is_in {
                            Op::In(values)
                        } else {
                            Op::NotIn(values)
                        }
                    }
                    Some(t) => {
                        return Err(err(&format!(
                            "found {t:?}, expected: in, notin, =, ==, !=, gt, lt"
                        )))
                    }
                }
            };
            requirements.push(Requirement { key, op });
            match tokens.get(pos) {
                None => {}
                Some(Token::Comma) => {
                    pos += 1;
                    if pos == tokens.len() {
                        return Err(err("found '', expected: identifier after ','"));
                    }
                }
                Some(t) => return Err(err(&format!("found {t:?}, expected: ','"))),
            }
        }
        Ok(LabelSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Does an object with these `metadata.labels` (absent = none) match?
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match &r.op {
            Op::In(values) => get(&r.key).is_some_and(|v| values.iter().any(|x| x == v)),
            Op::NotIn(values) => get(&r.key).is_none_or(|v| values.iter().all(|x| x != v)),
            Op::Exists => get(&r.key).is_some(),
            Op::DoesNotExist => get(&r.key).is_none(),
            Op::Gt(n) => get(&r.key)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Op::Lt(n) => get(&r.key)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }
}

/// A parsed field selector: a conjunction of `path=value` / `path!=value`.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

/// Fields each resource can be selected by (besides metadata.name and metadata.namespace).
fn extra_fields(plural: &str) -> &'static [&'static str] {
    match plural {
        "pods" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "namespaces" => &["status.phase"],
        _ => &[],
    }
}

impl FieldSelector {
    pub fn parse(input: &str, plural: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for part in input.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (path, negated, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, true, v)
            } else if let Some((p, v)) = part.split_once("==") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once('=') {
                (p, false, v)
            } else {
                return Err(format!(
                    "invalid selector: '{input}'; can't understand '{part}'"
                ));
            };
            let path = path.trim();
            if path != "metadata.name"
                && path != "metadata.namespace"
                && !extra_fields(plural).contains(&path)
            {
                return Err(format!("field label not supported: {path}"));
            }
            terms.push((path.to_string(), negated, value.trim().to_string()));
        }
        Ok(FieldSelector { terms })
    }

    /// Both selectors at once.
    pub fn and(mut self, other: FieldSelector) -> FieldSelector {
        self.terms.extend(other.terms);
        self
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(path, negated, value)| {
            let mut cur = Some(object);
            for seg in path.split('.') {
                cur = cur.and_then(|c| c.get(seg));
            }
            let actual = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) != *negated
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(sel: &str, labels: Value) -> bool {
        LabelSelector::parse(sel)
            .unwrap_or_else(|e| panic!("{sel}: {e}"))
            .matches(Some(&labels))
    }

    #[test]
    fn label_selector_forms() {
        let l = json!({"app": "pg", "role": "primary", "tier": "3"});
        assert!(m("", l.clone()));
        assert!(m("app=pg", l.clone()));
        assert!(m("app==pg,role=primary", l.clone()));
        assert!(!m("app=pg,role=replica", l.clone()));
        assert!(m("role!=replica", l.clone()));
        assert!(m("missing!=x", l.clone()));
        assert!(m("role in (primary, replica)", l.clone()));
        assert!(!m("role notin (primary,replica)", l.clone()));
        assert!(m("missing notin (a)", l.clone()));
        assert!(m("app", l.clone()));
        assert!(!m("!app", l.clone()));
        assert!(m("!missing", l.clone()));
        assert!(m("tier>2,tier<4", l.clone()));
        assert!(m("example.com/x!=1", l.clone()));
        assert!(LabelSelector::parse("app in pg").is_err());
        assert!(LabelSelector::parse("app=(").is_err());
        assert!(LabelSelector::parse("a,").is_err());
    }

    #[test]
    fn field_selector() {
        let obj =
            json!({"metadata": {"name": "a", "namespace": "ns"}, "status": {"phase": "Running"}});
        let f = FieldSelector::parse("metadata.name=a", "pods").unwrap_or_default();
        assert!(f.matches(&obj));
        let f = FieldSelector::parse("metadata.name!=a", "pods").unwrap_or_default();
        assert!(!f.matches(&obj));
        let f = FieldSelector::parse("status.phase=Running", "pods").unwrap_or_default();
        assert!(f.matches(&obj));
        assert!(FieldSelector::parse("status.phase=Running", "configmaps").is_err());
    }
}
