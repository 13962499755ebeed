//! The error of loading and checking a configuration: which file or key, and what is wrong.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum ConfigError {
    /// A file or directory could not be read.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// YAML that does not parse. `line`/`column` are 1-based; 0 when unknown.
    /// For `PATRONI_CONFIGURATION`, `path` is the variable name.
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    /// A value that is missing, has the wrong type or makes no sense. `key` is the dotted key
    /// path (or the environment variable / file it came from); empty for whole-config problems.
    Invalid { key: String, msg: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            msg: msg.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::Syntax {
                path,
                line,
                column,
                msg,
            } if *line > 0 => write!(
                f,
                "{}: YAML syntax error at line {line}, column {column}: {msg}",
                path.display()
            ),
            ConfigError::Syntax { path, msg, .. } => {
                write!(f, "{}: YAML error: {msg}", path.display())
            }
            ConfigError::Invalid { key, msg } if key.is_empty() => f.write_str(msg),
            ConfigError::Invalid { key, msg } => write!(f, "{key}: {msg}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The error text for the command line, to follow `regent: ` (main exits 2 after printing it).
pub fn render_errors_for_cli(e: &ConfigError) -> String {
    format!("invalid configuration: {e}")
}
