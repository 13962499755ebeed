//! Questions to the operator: the question goes to the command's output, the answer comes from
//! stdin, as patronictl asks them.

use std::io::{BufRead, Write};

use dcs::Member;

use super::{CtlError, CtlResult};

/// Ask a yes/no question; no terminal or no answer means no.
pub fn confirm(out: &mut dyn Write, question: &str) -> CtlResult<bool> {
    write!(out, "{question} [y/N]: ")?;
    out.flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return Ok(false);
    }
    Ok(matches!(
        line.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// A question with a default answer (`Primary [m0]: `).
pub fn prompt(out: &mut dyn Write, question: &str, default: &str) -> CtlResult<String> {
    write!(out, "{question} [{default}]: ")?;
    read_answer(out, default)
}

/// A question without a default (`Citus group: `).
pub fn ask(out: &mut dyn Write, question: &str) -> CtlResult<String> {
    write!(out, "{question}: ")?;
    read_answer(out, "")
}

fn read_answer(out: &mut dyn Write, default: &str) -> CtlResult<String> {
    out.flush()?;
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let t = line.trim();
    Ok(if t.is_empty() {
        default.to_string()
    } else {
        t.to_string()
    })
}

/// Unless `force`, ask before acting on `members`; a refusal is the command's failure.
pub fn confirm_members(
    out: &mut dyn Write,
    members: &[&Member],
    force: bool,
    action: &str,
) -> CtlResult {
    if force {
        return Ok(());
    }
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let question = format!(
        "Are you sure you want to {action} members {}?",
        names.join(", ")
    );
    if !confirm(out, &question)? {
        return Err(CtlError::failed(format!("Aborted {action}")));
    }
    Ok(())
}
