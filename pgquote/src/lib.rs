//! Quoting for what Regent hands to Postgres as text: libpq connection strings (conninfo) and
//! SQL identifiers and literals. Both the agent and the Citus support build such text, from
//! names and passwords that come from configuration.

/// A libpq conninfo value: bare when safe, else single-quoted with `\` escapes (libpq's rule
/// for `key=value` connection strings).
pub fn conninfo_value(value: &str) -> String {
    let bare = !value.is_empty()
        && !value
            .chars()
            .any(|c| c == '\'' || c == '\\' || c.is_whitespace());
    if bare {
        return value.to_string();
    }
    let mut out = String::from("'");
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A conninfo string from `key=value` pairs, each value quoted as needed.
pub fn conninfo(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", conninfo_value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A SQL identifier in double quotes.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal that is correct whatever `standard_conforming_strings` says.
pub fn literal(value: &str) -> String {
    let escaped = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", escaped.replace('\\', "\\\\"))
    } else {
        format!("'{escaped}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_values_are_bare_only_when_safe() {
        assert_eq!(conninfo_value("abc"), "abc");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conninfo_value("a b"), "'a b'");
        assert_eq!(conninfo_value("it's"), "'it\\'s'");
        assert_eq!(conninfo_value("back\\slash"), "'back\\\\slash'");
        assert_eq!(
            conninfo(&[("host", "/tmp"), ("password", "s e'c")]),
            "host=/tmp password='s e\\'c'"
        );
    }

    #[test]
    fn identifiers_and_literals() {
        assert_eq!(ident("plain"), "\"plain\"");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b"), "E'a\\\\b'");
    }
}
