//! Live instrumentation of running node processes through node's own
//! inspector (docs/logpoints.md): logpoints, `eval` and a REPL.
//!
//! - [`target`]: what /proc says about a process before anything is sent.
//! - [`session`]: open the inspector for one operation (SIGUSR1, a lock
//!   per network namespace, setns), close it after (`process._debugEnd()`).
//! - [`cdp`]: the DevTools-protocol client (tokio-tungstenite).
//! - [`logpoint`], [`eval`], [`repl`]: the subcommands.
//! - [`channel`]: how logpoint lines come back (a file of their own that the
//!   log capture sees) and become `logpoint` events.
//! - [`audit`]: the audit trail of every operation.

pub mod audit;
pub mod cdp;
pub mod channel;
pub mod eval;
pub mod logpoint;
pub mod repl;
pub mod session;
pub mod target;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use cdp::Cdp;

/// Evaluates `expression` in the target's main context and returns its
/// value as JSON (`returnByValue`). `require` is available (the
/// inspector's command-line API). A thrown exception is an error with its
/// text.
pub async fn evaluate_json(cdp: &mut Cdp, expression: &str) -> Result<Value> {
    let r = cdp
        .call(
            "Runtime.evaluate",
            json!({
                "expression": expression,
                "includeCommandLineAPI": true,
                "returnByValue": true,
                "awaitPromise": true,
                "silent": true,
            }),
        )
        .await?;
    if let Some(details) = r.get("exceptionDetails") {
        let text = cdp::exception_text(details);
        bail!("{}", text.lines().next().unwrap_or(&text).to_owned());
    }
    Ok(r["result"]["value"].clone())
}

/// The processes an operation targets: the `--pid`s given, and with
/// `--match` every node process whose command line matches (the agent's
/// rule), each once, in pid order.
pub fn select_pids(pids: &[u32], pattern: Option<&str>) -> Result<Vec<u32>> {
    let mut out = pids.to_vec();
    if let Some(pattern) = pattern {
        let re = regex::Regex::new(pattern).context("--match is not a valid regular expression")?;
        let scope = crate::agent::Scope {
            cmdline: Some(re),
            netns: None,
        };
        let me = std::process::id();
        let matched: Vec<u32> = std::fs::read_dir("/proc")
            .context("listing /proc")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|pid| *pid != me && scope.selects(*pid))
            .collect();
        if matched.is_empty() {
            bail!("--match {pattern:?} matches no running node process");
        }
        out.extend(matched);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Refuses unless tracer runs as root: these operations run code inside
/// another process.
pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "`tracer {what}` runs code inside another process and needs root (running as \
             uid {euid}); run it with sudo"
        );
    }
    Ok(())
}
