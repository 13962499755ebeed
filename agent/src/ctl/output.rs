//! Tables and machine-readable listings in patronictl's formats.

use serde_json::Value;

/// Output formats of `list`, `topology`, `history` and `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Tsv,
    Json,
    Yaml,
    Yml,
}

/// A table: column names, rows of cell text, right-aligned columns, optional title in the top
/// border (`+ Cluster: demo (7379…) ---+`).
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub right: Vec<&'static str>,
    pub title: String,
}

/// A JSON value as the text of a cell: strings unquoted, null empty.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Table {
    /// Render in `fmt`. JSON/YAML drop empty cells, as patronictl does for listings with a title.
    pub fn render(&self, fmt: Format) -> String {
        match fmt {
            Format::Json | Format::Yaml | Format::Yml => {
                // Keys in column order (serde_json's map would sort them).
                let rows: Vec<Vec<(&String, &Value)>> = self
                    .rows
                    .iter()
                    .map(|r| {
                        self.columns
                            .iter()
                            .zip(r)
                            .filter(|(_, v)| self.title.is_empty() || !cell_text(v).is_empty())
                            .collect()
                    })
                    .collect();
                if fmt == Format::Json {
                    let items: Vec<String> = rows
                        .iter()
                        .map(|r| {
                            let fields: Vec<String> = r
                                .iter()
                                .map(|(k, v)| {
                                    format!(
                                        "{}: {}",
                                        py_json(&Value::String((*k).clone())),
                                        py_json(v)
                                    )
                                })
                                .collect();
                            format!("{{{}}}", fields.join(", "))
                        })
                        .collect();
                    format!("[{}]\n", items.join(", "))
                } else {
                    // patronictl dumps YAML with sorted keys, then echoes it with a newline.
                    let items: Vec<serde_yaml_ng::Value> = rows
                        .iter()
                        .map(|r| {
                            let mut r = r.clone();
                            r.sort_by(|a, b| a.0.cmp(b.0));
                            let mut m = serde_yaml_ng::Mapping::new();
                            for (k, v) in r {
                                let v = serde_yaml_ng::to_value(v)
                                    .unwrap_or(serde_yaml_ng::Value::Null);
                                m.insert(serde_yaml_ng::Value::String((*k).clone()), v);
                            }
                            serde_yaml_ng::Value::Mapping(m)
                        })
                        .collect();
                    serde_yaml_ng::to_string(&items).unwrap_or_default() + "\n"
                }
            }
            Format::Tsv => {
                let mut out = self.columns.join("\t");
                out.push('\n');
                for r in &self.rows {
                    let cells: Vec<String> = r.iter().map(cell_text).collect();
                    out.push_str(&cells.join("\t"));
                    out.push('\n');
                }
                out
            }
            Format::Pretty => self.pretty(),
        }
    }

    fn pretty(&self) -> String {
        let cells: Vec<Vec<Vec<String>>> = self
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|v| cell_text(v).lines().map(str::to_string).collect())
                    .collect()
            })
            .collect();
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.chars().count()).collect();
        for r in &cells {
            for (i, c) in r.iter().enumerate() {
                for line in c {
                    widths[i] = widths[i].max(line.chars().count());
                }
            }
        }
        let mut rule = String::from("+");
        for w in &widths {
            rule.push_str(&"-".repeat(w + 2));
            rule.push('+');
        }
        let mut out = String::new();
        if self.title.is_empty() {
            out.push_str(&rule);
        } else {
            // The title overwrites the start of the top border.
            let limit = rule.chars().count().saturating_sub(2);
            let title: String = self.title.chars().take(limit).collect();
            let rest: String = rule.chars().skip(1 + title.chars().count()).collect();
            out.push('+');
            out.push_str(&title);
            out.push_str(&rest);
        }
        out.push('\n');
        let line = |values: &[String], out: &mut String| {
            out.push('|');
            for (i, v) in values.iter().enumerate() {
                let pad = widths[i] - v.chars().count();
                let right = self.right.contains(&self.columns[i].as_str());
                out.push(' ');
                if right {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(v);
                } else {
                    out.push_str(v);
                    out.push_str(&" ".repeat(pad));
                }
                out.push_str(" |");
            }
            out.push('\n');
        };
        line(&self.columns, &mut out);
        out.push_str(&rule);
        out.push('\n');
        let multi = cells.iter().any(|r| r.iter().any(|c| c.len() > 1));
        for (n, r) in cells.iter().enumerate() {
            let height = r.iter().map(Vec::len).max().unwrap_or(0).max(1);
            for h in 0..height {
                let values: Vec<String> = r
                    .iter()
                    .map(|c| c.get(h).cloned().unwrap_or_default())
                    .collect();
                line(&values, &mut out);
            }
            if multi && n + 1 < cells.len() {
                out.push_str(&rule);
                out.push('\n');
            }
        }
        out.push_str(&rule);
        out.push('\n');
        out
    }
}

/// The local time patronictl prints before the result of an operation.
pub fn timestamp() -> String {
    chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
}

/// YAML text of a value (block style, keys in their order).
pub fn to_yaml(v: &Value) -> String {
    serde_yaml_ng::to_string(v).unwrap_or_else(|_| format!("{v}\n"))
}

/// JSON as Python's `json.dumps` writes it (patronictl's listings): `", "` and `": "` between
/// items, non-ASCII characters escaped as `\uXXXX`.
pub fn py_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", py_json(&Value::String(k.clone())), py_json(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(py_json).collect();
            format!("[{}]", items.join(", "))
        }
        Value::String(_) => {
            let mut out = String::new();
            for c in v.to_string().chars() {
                if c.is_ascii() {
                    out.push(c);
                } else {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
            }
            out
        }
        scalar => scalar.to_string(),
    }
}

/// YAML flow style (`{a: 1, b: x}`, keys sorted), as patronictl shows tags in TSV and topology.
pub fn to_flow_yaml(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}: {}",
                        to_flow_yaml(&Value::String(k.clone())),
                        to_flow_yaml(&m[k])
                    )
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(to_flow_yaml).collect();
            format!("[{}]", items.join(", "))
        }
        // A scalar: serde_yaml_ng quotes what would read back as another type.
        scalar => serde_yaml_ng::to_string(scalar)
            .map(|t| t.trim_end().to_string())
            .unwrap_or_else(|_| scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table() -> Table {
        Table {
            columns: vec!["Member".into(), "TL".into()],
            rows: vec![vec![json!("a-0"), json!(1)], vec![json!("a-1"), json!("")]],
            right: vec!["TL"],
            title: " Cluster: a (1) ".into(),
        }
    }

    #[test]
    fn pretty_table_carries_the_title_in_its_top_border() {
        let t = table().render(Format::Pretty);
        let lines: Vec<&str> = t.lines().collect();
        // Cut to the table's width, as patronictl does.
        assert_eq!(lines[0], "+ Cluster: a (+");
        assert_eq!(lines[1], "| Member | TL |");
        assert_eq!(lines[3], "| a-0    |  1 |");
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn pretty_title_is_cut_to_the_table_width_and_the_border_continues() {
        let mut t = table();
        t.title = " C ".into();
        let first = t.render(Format::Pretty).lines().next().unwrap().to_string();
        assert_eq!(first, "+ C -----+----+");
    }

    #[test]
    fn json_drops_empty_cells_of_titled_tables() {
        let t = table().render(Format::Json);
        assert_eq!(
            t.trim(),
            r#"[{"Member": "a-0", "TL": 1}, {"Member": "a-1"}]"#
        );
    }

    #[test]
    fn yaml_has_sorted_keys_and_a_closing_blank_line() {
        let mut t = table();
        t.columns = vec!["TL".into(), "Member".into()];
        t.rows = vec![vec![json!(1), json!("a-0")]];
        assert_eq!(t.render(Format::Yaml), "- Member: a-0\n  TL: 1\n\n");
    }

    #[test]
    fn flow_yaml_sorts_keys_and_quotes_ambiguous_strings() {
        let tags = json!({"nofailover": true, "clonefrom": "x", "note": "true"});
        assert_eq!(
            to_flow_yaml(&tags),
            "{clonefrom: x, nofailover: true, note: 'true'}"
        );
    }

    #[test]
    fn json_is_spaced_and_ascii_as_python_writes_it() {
        let v = json!({"rack": "r1", "n": [1, 2], "name": "zoë"});
        assert_eq!(
            py_json(&v),
            r#"{"n": [1, 2], "name": "zo\u00eb", "rack": "r1"}"#
        );
    }

    #[test]
    fn tsv_has_a_header_line() {
        let t = table().render(Format::Tsv);
        assert_eq!(t, "Member\tTL\na-0\t1\na-1\t\n");
    }
}
