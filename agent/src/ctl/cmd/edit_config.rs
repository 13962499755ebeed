//! `edit-config`: change the dynamic configuration in the DCS with `--set`, `--pg`, `--apply`,
//! `--replace` or an editor; shows the diff, asks, and writes with compare-and-swap.

use std::io::Write;

use serde_json::{Map, Value};

use crate::config::DynamicConfig;
use crate::ctl::context::{write_config, Ctx};
use crate::ctl::load::{parse_yaml, write_private};
use crate::ctl::output::to_yaml;
use crate::ctl::prompt::confirm;
use crate::ctl::{edit, CtlError, CtlResult};

/// What to change, and how to ask.
#[derive(clap::Args, Debug, Clone)]
pub struct EditArgs {
    /// Do not show the diff.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// key=value, dotted keys, YAML value (empty value or null removes the key).
    #[arg(short = 's', long = "set")]
    pub set: Vec<String>,
    /// Postgres parameter name=value (postgresql.parameters).
    #[arg(short = 'p', long = "pg")]
    pub pg: Vec<String>,
    /// Merge the YAML of FILE (- for stdin) into the configuration.
    #[arg(long)]
    pub apply: Option<String>,
    /// Replace the configuration with the YAML of FILE (- for stdin).
    #[arg(long)]
    pub replace: Option<String>,
    /// Write without asking.
    #[arg(long)]
    pub force: bool,
}

fn read_input(source: &str) -> CtlResult<Map<String, Value>> {
    let text = if source == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CtlError::failed(format!("cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(source)
            .map_err(|e| CtlError::usage(format!("cannot read {source}: {e}")))?
    };
    parse_yaml(&text, source)
}

fn run_editor(current: &str) -> CtlResult<String> {
    let editor = std::env::var("EDITOR")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    let path = std::env::temp_dir().join(format!("regent-ctl-edit-{}.yaml", std::process::id()));
    write_private(&path, current)
        .map_err(|e| CtlError::failed(format!("cannot write {}: {e}", path.display())))?;
    // $EDITOR may carry arguments ("code -w").
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status();
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(CtlError::failed(format!("editor {editor} failed: {s}"))),
        Err(e) => return Err(CtlError::failed(format!("cannot run editor {editor}: {e}"))),
    }
    text.map_err(|e| CtlError::failed(format!("cannot read the edited file: {e}")))
}

pub async fn run(ctx: &Ctx, a: &EditArgs, out: &mut dyn Write) -> CtlResult {
    let cluster = ctx.cluster().await?;
    let Some(cfg) = cluster.config.clone() else {
        return Err(CtlError::failed(
            "the cluster has no configuration in the DCS yet",
        ));
    };
    let before = cfg.raw.as_object().cloned().unwrap_or_default();
    let before_text = to_yaml(&Value::Object(before.clone()));
    let mut after = before.clone();
    if let Some(src) = &a.replace {
        after = read_input(src)?;
    }
    if let Some(src) = &a.apply {
        let overlay = read_input(src)?;
        edit::merge(&mut after, overlay);
    }
    for s in &a.set {
        edit::apply_set(&mut after, s).map_err(CtlError::usage)?;
    }
    for p in &a.pg {
        edit::apply_pg(&mut after, p).map_err(CtlError::usage)?;
    }
    if a.set.is_empty() && a.pg.is_empty() && a.apply.is_none() && a.replace.is_none() {
        let edited = run_editor(&before_text)?;
        after = parse_yaml(&edited, "the edited configuration")?;
    }
    let after_text = to_yaml(&Value::Object(after.clone()));
    let diff = edit::diff(&before_text, &after_text);
    if diff.is_empty() {
        writeln!(out, "Not changed")?;
        return Ok(());
    }
    if !a.quiet {
        write!(out, "{diff}")?;
    }
    let (_, issues) = DynamicConfig::read(&Value::Object(after.clone()));
    if let Some(bad) = issues.iter().find(|i| i.invalid) {
        return Err(CtlError::usage(format!(
            "the new configuration is invalid: {}: {}",
            bad.key, bad.msg
        )));
    }
    if !a.force && !confirm(out, "Apply these changes?")? {
        return Err(CtlError::failed("Aborted"));
    }
    // CAS on the version read: a concurrent change makes this fail instead of being lost.
    if !write_config(ctx, &Value::Object(after), cfg.version.as_deref()).await? {
        return Err(CtlError::failed(
            "Config modification aborted due to concurrent changes",
        ));
    }
    writeln!(out, "Configuration changed")?;
    Ok(())
}
