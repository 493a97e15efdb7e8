//! The audit trail: every eval and logpoint operation is appended, before
//! it runs and with its result after, to a JSON Lines file
//! (/var/log/tracer/audit.jsonl; `TRACER_AUDIT_LOG` overrides). An
//! operation whose intent cannot be recorded does not run.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::PathBuf};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

pub const DEFAULT_PATH: &str = "/var/log/tracer/audit.jsonl";

pub fn path() -> PathBuf {
    std::env::var_os("TRACER_AUDIT_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// Who asked: the uid, and the login behind sudo when there is one.
fn who() -> Value {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    json!({
        "uid": uid,
        "sudo_user": std::env::var("SUDO_USER").ok(),
        "login": std::env::var("LOGNAME").or_else(|_| std::env::var("USER")).ok(),
        "tracer_pid": std::process::id(),
    })
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn append(record: &Value) -> Result<()> {
    let path = path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening the audit log {}", path.display()))?;
    // One write per record: concurrent tracers never interleave a line.
    let mut line = record.to_string();
    line.push('\n');
    f.write_all(line.as_bytes())
        .with_context(|| format!("writing the audit log {}", path.display()))
}

/// One audited operation: `begin` is recorded now, `end` with the result.
pub struct Audit {
    op: String,
    pid: u32,
}

impl Audit {
    /// Records the intent; fails (and the operation must not run) when the
    /// audit log cannot be written.
    pub fn begin(op: &str, pid: u32, exe: &str, what: Value) -> Result<Audit> {
        append(&json!({
            "ts": now_rfc3339(),
            "phase": "begin",
            "op": op,
            "pid": pid,
            "exe": exe,
            "who": who(),
            "what": what,
        }))
        .context("refusing to run an unaudited operation")?;
        Ok(Audit {
            op: op.to_owned(),
            pid,
        })
    }

    pub fn end<T>(self, result: &Result<T>, summary: Value) {
        let outcome = match result {
            Ok(_) => json!({ "ok": true, "result": summary }),
            Err(e) => json!({ "ok": false, "error": format!("{e:#}") }),
        };
        if let Err(e) = append(&json!({
            "ts": now_rfc3339(),
            "phase": "end",
            "op": self.op,
            "pid": self.pid,
            "outcome": outcome,
        })) {
            eprintln!("tracer: warning: {e:#}");
        }
    }
}
