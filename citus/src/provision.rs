//! Provisioning scripts: SQL files (`citus.provision.coordinator` / `.worker`) run once per Citus
//! group on its primary, e.g. to create roles, distributed tables or reference data.
//!
//! Each script runs in ONE transaction together with its record in `regent.provisioned` (in the
//! Citus database): either both commit or neither does, so a script is never half-applied and a
//! failed one is simply retried on the next call. The record replicates with the data, so a new
//! primary after a failover does not run recorded scripts again. A file whose content changed
//! after it ran is reported, never re-run: write a new file for a new change.
//!
//! Scripts are plain SQL (no psql meta-commands) and must not control the transaction themselves
//! (`BEGIN`, `COMMIT`, `ROLLBACK`, ...): they are checked before anything runs. Statements that
//! cannot run inside a transaction (`CREATE DATABASE`, `VACUUM`, `... CONCURRENTLY`) fail with
//! Postgres' own error.
//!
//! Scripts are identified by file name, so moving the mount point does not re-run them. A
//! directory in the list stands for its `*.sql` files in name order.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_postgres::error::ErrorPosition;
use tokio_postgres::Client;

/// Schema and table of the records.
pub const RECORD_TABLE: &str = "regent.provisioned";
/// Serialises provisioning between agents that might run it at the same time on one server.
const ADVISORY_LOCK_KEY: i64 = 0x7265_6765_6e74_0001;

/// Which list of scripts: the coordinator group's or a worker group's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Worker,
}

impl Role {
    /// The value of the `role` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Worker => "worker",
        }
    }
}

/// What happened to one script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Ran now and recorded.
    Applied { took: Duration },
    /// Recorded earlier with the same content: not run.
    AlreadyApplied,
    /// Recorded earlier with other content: not run again; worth a warning.
    ChangedSinceApplied { recorded_sha256: String },
}

/// One script of the list and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub path: PathBuf,
    /// The file name: the script's identity in the records.
    pub script: String,
    /// Hex SHA-256 of the file content.
    pub sha256: String,
    pub outcome: Outcome,
}

/// A Postgres error raised by a script, with where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// Context Postgres reports (e.g. the PL/pgSQL line).
    pub context: Option<String>,
    /// 1-based line and column in the file, when Postgres gave a position.
    pub position: Option<(usize, usize)>,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SQLSTATE {}: {}", self.sqlstate, self.message)?;
        if let Some((line, column)) = self.position {
            write!(f, " (at line {line}, column {column})")?;
        }
        if let Some(d) = &self.detail {
            write!(f, "; detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        if let Some(c) = &self.context {
            write!(f, "; context: {c}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("provisioning script {}: cannot read it: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("provisioning scripts {} and {} have the same file name {script:?}; names identify scripts", .first.display(), .second.display())]
    DuplicateName {
        script: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("provisioning script {}: line {line}: {statement} is not allowed: the script runs in one transaction with its record", .path.display())]
    TransactionControl {
        path: PathBuf,
        line: usize,
        statement: String,
    },
    #[error("provisioning script {} failed, nothing of it was applied: {error}", .path.display())]
    Script {
        path: PathBuf,
        error: Box<ScriptError>,
    },
    #[error("provisioning, {step}: {}", crate::bootstrap::describe(.source))]
    Database {
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Run every script of `scripts` not yet recorded for `role`, in order, each in one transaction
/// with its record. Stops at the first failure; scripts before it stay applied. `client` is
/// connected to the Citus database of a primary.
pub async fn run_pending(
    client: &mut Client,
    role: Role,
    scripts: &[PathBuf],
) -> Result<Vec<Ran>, ProvisionError> {
    let files = list_scripts(scripts)?;
    let mut loaded = Vec::with_capacity(files.len());
    for (path, script) in files {
        let text = std::fs::read_to_string(&path).map_err(|source| ProvisionError::Read {
            path: path.clone(),
            source,
        })?;
        if let Some((line, statement)) = transaction_control(&text) {
            return Err(ProvisionError::TransactionControl {
                path,
                line,
                statement,
            });
        }
        loaded.push((path, script, text));
    }
    if loaded.is_empty() {
        return Ok(Vec::new());
    }

    ensure_record_table(client).await?;
    let mut out = Vec::with_capacity(loaded.len());
    for (path, script, text) in loaded {
        let sha256 = hex_sha256(text.as_bytes());
        let outcome = run_one(client, role, &path, &script, &text, &sha256).await?;
        match &outcome {
            Outcome::Applied { took } => {
                tracing::info!(script = %path.display(), role = role.as_str(), took_ms = took.as_millis() as u64, "provisioning script applied");
            }
            Outcome::AlreadyApplied => {}
            Outcome::ChangedSinceApplied { recorded_sha256 } => {
                tracing::warn!(
                    script = %path.display(),
                    role = role.as_str(),
                    recorded_sha256 = %recorded_sha256,
                    sha256 = %sha256,
                    "provisioning script changed after it ran; it is not run again (add a new script for a new change)"
                );
            }
        }
        out.push(Ran {
            path,
            script,
            sha256,
            outcome,
        });
    }
    Ok(out)
}

/// The records of `role`: (script, sha256), in the order they ran.
pub async fn recorded(
    client: &Client,
    role: Role,
) -> Result<Vec<(String, String)>, ProvisionError> {
    let rows = client
        .query(
            "SELECT script, sha256 FROM regent.provisioned WHERE role = $1 ORDER BY ran_at, script",
            &[&role.as_str()],
        )
        .await
        .map_err(|source| ProvisionError::Database {
            step: "read the records",
            source,
        })?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|source| ProvisionError::Database {
            step: "read the records",
            source,
        })
}

async fn ensure_record_table(client: &mut Client) -> Result<(), ProvisionError> {
    let db = |step| move |source| ProvisionError::Database { step, source };
    let tx = client
        .transaction()
        .await
        .map_err(db("create the record table"))?;
    // The record table is local to each group: Citus must not try to create it elsewhere (and
    // fail while a worker is unreachable).
    tx.batch_execute(
        "SET LOCAL citus.enable_ddl_propagation = off;
         CREATE SCHEMA IF NOT EXISTS regent;
         CREATE TABLE IF NOT EXISTS regent.provisioned (
             role text NOT NULL,
             script text NOT NULL,
             sha256 text NOT NULL,
             ran_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (role, script)
         );",
    )
    .await
    .map_err(db("create the record table"))?;
    tx.commit().await.map_err(db("create the record table"))
}

async fn run_one(
    client: &mut Client,
    role: Role,
    path: &Path,
    script: &str,
    text: &str,
    sha256: &str,
) -> Result<Outcome, ProvisionError> {
    let db = |step| move |source| ProvisionError::Database { step, source };
    let started = Instant::now();
    let tx = client
        .transaction()
        .await
        .map_err(db("begin a transaction"))?;
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock($1)",
        &[&ADVISORY_LOCK_KEY],
    )
    .await
    .map_err(db("lock the records"))?;
    let existing = tx
        .query_opt(
            "SELECT sha256 FROM regent.provisioned WHERE role = $1 AND script = $2",
            &[&role.as_str(), &script],
        )
        .await
        .map_err(db("read the records"))?;
    if let Some(row) = existing {
        let recorded_sha256: String = row.try_get(0).map_err(db("read the records"))?;
        tx.rollback().await.map_err(db("end the transaction"))?;
        return Ok(if recorded_sha256 == sha256 {
            Outcome::AlreadyApplied
        } else {
            Outcome::ChangedSinceApplied { recorded_sha256 }
        });
    }

    let script_failed = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(_) => ProvisionError::Script {
            path: path.to_path_buf(),
            error: Box::new(script_error(&e, text)),
        },
        None => ProvisionError::Database {
            step: "run the script",
            source: e,
        },
    };
    // Dropping the transaction on an error rolls it back.
    tx.batch_execute(text).await.map_err(script_failed)?;
    tx.execute(
        "INSERT INTO regent.provisioned (role, script, sha256) VALUES ($1, $2, $3)",
        &[&role.as_str(), &script, &sha256],
    )
    .await
    .map_err(db("record the script"))?;
    // Deferred constraints of the script are checked here: their failure is the script's.
    tx.commit().await.map_err(script_failed)?;
    Ok(Outcome::Applied {
        took: started.elapsed(),
    })
}

fn script_error(e: &tokio_postgres::Error, text: &str) -> ScriptError {
    let Some(db) = e.as_db_error() else {
        return ScriptError {
            sqlstate: String::new(),
            message: e.to_string(),
            detail: None,
            hint: None,
            context: None,
            position: None,
        };
    };
    let mut context = db.where_().map(str::to_string);
    let position = match db.position() {
        Some(ErrorPosition::Original(chars)) => Some(line_column(text, *chars as usize)),
        Some(ErrorPosition::Internal { position, query }) => {
            let internal = format!("internal query {query:?} at character {position}");
            context = Some(match context {
                Some(c) => format!("{c}; {internal}"),
                None => internal,
            });
            None
        }
        None => None,
    };
    ScriptError {
        sqlstate: db.code().code().to_string(),
        message: db.message().to_string(),
        detail: db.detail().map(str::to_string),
        hint: db.hint().map(str::to_string),
        context,
        position,
    }
}

/// 1-based line and column of the 1-based character position `chars` in `text`.
fn line_column(text: &str, chars: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for c in text.chars().take(chars.saturating_sub(1)) {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The files to run with their names: directories expanded to their `*.sql` files by name.
fn list_scripts(entries: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, ProvisionError> {
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ProvisionError::Read { path, source }
    };
    for entry in entries {
        let mut expanded = Vec::new();
        if entry.is_dir() {
            for item in std::fs::read_dir(entry).map_err(read_error(entry))? {
                let path = item.map_err(read_error(entry))?.path();
                if path.extension().is_some_and(|e| e == "sql") && path.is_file() {
                    expanded.push(path);
                }
            }
            expanded.sort();
        } else {
            expanded.push(entry.clone());
        }
        for path in expanded {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.to_string_lossy().into_owned());
            if let Some((first, _)) = files.iter().find(|(_, n)| *n == name) {
                return Err(ProvisionError::DuplicateName {
                    script: name,
                    first: first.clone(),
                    second: path,
                });
            }
            files.push((path, name));
        }
    }
    Ok(files)
}

/// The first top-level statement that would end or start a transaction: (line, statement).
/// Comments, string literals, quoted identifiers and dollar-quoted bodies are skipped, and the
/// semicolons inside a `BEGIN ATOMIC ... END` function body do not end the statement.
fn transaction_control(sql: &str) -> Option<(usize, String)> {
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    let mut line = 1;
    // Words of the current statement (upper case, at most the first two kept) and its line.
    let mut words: Vec<String> = Vec::new();
    let mut statement_line = 1;
    let mut is_create = false;
    let mut previous_word = String::new();
    let mut atomic_depth = 0usize;

    let check = |words: &[String], line: usize| -> Option<(usize, String)> {
        let first = words.first()?.as_str();
        let second = words.get(1).map(String::as_str).unwrap_or("");
        let ends = match first {
            "BEGIN" | "START" | "COMMIT" | "END" | "ABORT" => true,
            "ROLLBACK" => second != "TO",
            "PREPARE" => second == "TRANSACTION",
            _ => false,
        };
        ends.then(|| (line, words.join(" ")))
    };

    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '-' if next == Some('-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if chars[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            '\'' | '"' => {
                let escapes = c == '\'' && previous_word_is_e_prefix(&chars, i);
                i += 1;
                while i < chars.len() {
                    match chars[i] {
                        '\\' if escapes => i += 1,
                        q if q == c => {
                            if chars.get(i + 1) == Some(&c) {
                                i += 1;
                            } else {
                                break;
                            }
                        }
                        '\n' => line += 1,
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
                if words.is_empty() {
                    statement_line = line;
                }
                words.push(String::new());
            }
            '$' => {
                if let Some(tag_end) = dollar_tag_end(&chars, i) {
                    let tag: String = chars[i..=tag_end].iter().collect();
                    i = tag_end + 1;
                    loop {
                        if i >= chars.len() {
                            break;
                        }
                        if chars[i] == '$'
                            && chars[i..].iter().take(tag.len()).copied().eq(tag.chars())
                        {
                            i += tag.len();
                            break;
                        }
                        if chars[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                } else {
                    i += 1;
                }
                words.push(String::new());
            }
            ';' => {
                i += 1;
                if atomic_depth > 0 {
                    continue;
                }
                if let Some(found) = check(&words, statement_line) {
                    return Some(found);
                }
                words.clear();
                is_create = false;
                previous_word.clear();
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect::<String>().to_uppercase();
                if words.is_empty() {
                    statement_line = line;
                    is_create = word == "CREATE";
                }
                if is_create {
                    match word.as_str() {
                        "ATOMIC" if previous_word == "BEGIN" => atomic_depth += 1,
                        "BEGIN" | "CASE" if atomic_depth > 0 => atomic_depth += 1,
                        "END" if atomic_depth > 0 => atomic_depth -= 1,
                        _ => {}
                    }
                }
                previous_word.clone_from(&word);
                words.push(word);
            }
            _ => {
                i += 1;
                words.push(String::new());
            }
        }
        // Only the first two tokens decide; keep the rest from growing.
        words.truncate(2);
    }
    check(&words, statement_line)
}

/// Whether the quote at `quote` starts an escape string (`E'...'`).
fn previous_word_is_e_prefix(chars: &[char], quote: usize) -> bool {
    quote >= 1
        && matches!(chars[quote - 1], 'e' | 'E')
        && (quote < 2 || !(chars[quote - 2].is_alphanumeric() || chars[quote - 2] == '_'))
}

/// If a dollar-quote tag (`$$` or `$tag$`) starts at `start`, the index of its closing `$`.
fn dollar_tag_end(chars: &[char], start: usize) -> Option<usize> {
    // `a$b` is an identifier, `$1` a parameter.
    if start > 0 && (chars[start - 1].is_alphanumeric() || chars[start - 1] == '_') {
        return None;
    }
    let mut i = start + 1;
    if chars.get(i).is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    while let Some(&c) = chars.get(i) {
        if c == '$' {
            return Some(i);
        }
        if !(c.is_alphanumeric() || c == '_') {
            return None;
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_found_at_top_level_only() {
        let cases: &[(&str, Option<(usize, &str)>)] = &[
            ("CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);", None),
            ("CREATE TABLE t (id int);\ncommit;", Some((2, "COMMIT"))),
            ("BEGIN;\nCREATE TABLE t (id int);", Some((1, "BEGIN"))),
            ("select 1;\n\n  Start Transaction;", Some((3, "START TRANSACTION"))),
            ("SELECT 1;\nROLLBACK", Some((2, "ROLLBACK"))),
            ("SELECT 1;\nEND;", Some((2, "END"))),
            ("SELECT 1; abort;", Some((1, "ABORT"))),
            ("PREPARE TRANSACTION 'x';", Some((1, "PREPARE TRANSACTION"))),
            // allowed inside a transaction
            ("SAVEPOINT a; SELECT 1; ROLLBACK TO SAVEPOINT a; RELEASE a;", None),
            ("PREPARE q AS SELECT 1; EXECUTE q;", None),
            // hidden in comments, strings, identifiers and function bodies
            ("-- COMMIT;\nSELECT 1;", None),
            ("/* outer /* COMMIT; */ still comment; */ SELECT 1;", None),
            ("SELECT 'it''s; COMMIT';", None),
            ("SELECT E'\\'; COMMIT;';", None),
            ("SELECT \"commit;\" FROM t;", None),
            (
                "DO $$ BEGIN PERFORM 1; COMMIT; END $$;\nSELECT 1;",
                None,
            ),
            (
                "CREATE FUNCTION f() RETURNS int AS $body$\nBEGIN\n RETURN 1;\nEND;\n$body$ LANGUAGE plpgsql;",
                None,
            ),
            (
                "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n SELECT CASE WHEN a > 0 THEN 1 ELSE 0 END;\n SELECT 2;\nEND;\nSELECT 3;",
                None,
            ),
            (
                "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\nCOMMIT;",
                Some((2, "COMMIT")),
            ),
            ("SELECT $1, a$b FROM t; COMMIT;", Some((1, "COMMIT"))),
            ("", None),
        ];
        for (sql, expected) in cases {
            let found = transaction_control(sql);
            let expected = expected.map(|(l, s)| (l, s.to_string()));
            assert_eq!(found, expected, "{sql}");
        }
    }

    #[test]
    fn positions_become_lines_and_columns() {
        let text = "SELECT 1;\nSELEC 2;\n";
        assert_eq!(line_column(text, 1), (1, 1));
        assert_eq!(line_column(text, 11), (2, 1));
        assert_eq!(line_column(text, 13), (2, 3));
        assert_eq!(line_column("é;\nx", 4), (2, 1));
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            hex_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn directories_expand_to_sql_files_and_names_must_be_unique() {
        let dir =
            std::env::temp_dir().join(format!("regent-provision-unit-{}", std::process::id()));
        let sub = dir.join("more");
        std::fs::create_dir_all(&sub).unwrap();
        for name in ["20-b.sql", "10-a.sql", "notes.txt"] {
            std::fs::write(dir.join(name), "SELECT 1;").unwrap();
        }
        std::fs::write(sub.join("10-a.sql"), "SELECT 2;").unwrap();
        let single = sub.join("10-a.sql");

        let listed = list_scripts(std::slice::from_ref(&dir)).unwrap();
        let names: Vec<&str> = listed.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["10-a.sql", "20-b.sql"]);

        let e = list_scripts(&[dir.clone(), single]).unwrap_err();
        assert!(
            matches!(&e, ProvisionError::DuplicateName { script, .. } if script == "10-a.sql"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn script_errors_read_well() {
        let e = ScriptError {
            sqlstate: "42601".into(),
            message: "syntax error at or near \"SELEC\"".into(),
            detail: None,
            hint: Some("check it".into()),
            context: None,
            position: Some((2, 1)),
        };
        assert_eq!(
            e.to_string(),
            "SQLSTATE 42601: syntax error at or near \"SELEC\" (at line 2, column 1); hint: check it"
        );
    }
}
