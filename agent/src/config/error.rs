//! The error of loading and checking a configuration: which file or key, and what is wrong.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// YAML that does not parse. `line`/`column` are 1-based; 0 when unknown.
    /// For `PATRONI_CONFIGURATION`, `path` is the variable name.
    #[error("{}", syntax_message(.path, *.line, *.column, .msg))]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    /// A value that is missing, has the wrong type or makes no sense. `key` is the dotted key
    /// path (or the environment variable / file it came from); empty for whole-config problems.
    #[error("{}", keyed_message(.key, .msg))]
    Invalid { key: String, msg: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, msg: impl std::fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            msg: msg.to_string(),
        }
    }
}

fn syntax_message(path: &Path, line: usize, column: usize, msg: &str) -> String {
    if line > 0 {
        format!(
            "{}: YAML syntax error at line {line}, column {column}: {msg}",
            path.display()
        )
    } else {
        format!("{}: YAML error: {msg}", path.display())
    }
}

fn keyed_message(key: &str, msg: &str) -> String {
    if key.is_empty() {
        msg.to_string()
    } else {
        format!("{key}: {msg}")
    }
}

/// The error text for the command line, to follow `regent: ` (main exits 2 after printing it).
pub fn render_errors_for_cli(e: &ConfigError) -> String {
    format!("invalid configuration: {e}")
}
