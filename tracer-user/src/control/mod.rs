//! Control across the cluster (docs/logpoints.md, "Across the cluster"):
//! `tracer logpoint` and `tracer eval` run through the aggregator on the
//! selected processes of the selected hosts.
//!
//! The aggregator never connects to an agent (agents may sit behind NAT):
//! an agent started with `--allow-control` keeps a long poll open to it
//! (`GET /v1/control/poll`), runs the commands it receives with the
//! one-host inspector code and posts the per-process results back
//! (`POST /v1/control/results`). Commands are submitted with the admin
//! token, never the ingest token (`POST /v1/control/commands`), and only
//! over TLS or loopback.
//!
//! - this file: the wire format both sides share, the transport rule and
//!   the admin token file;
//! - [`agent`]: the agent's poll loop;
//! - [`remote`]: the CLI side (`--aggregator` on logpoint/eval);
//! - `crate::aggregator::api::control`: the aggregator's endpoints.

pub mod agent;
pub mod remote;

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::event::ProcessOutcome;

/// The operations a command may name. `processes` lists the processes a
/// `match` selects (from /proc; nothing is sent to them).
pub const OPS: [&str; 5] = [
    "logpoint.add",
    "logpoint.list",
    "logpoint.rm",
    "eval",
    "processes",
];

/// What an admin submits (`POST /v1/control/commands`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// One of [`OPS`].
    pub op: String,
    /// Hosts to run on; empty: every host whose agent allows control.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Node processes whose command line matches (every one on the host
    /// the agent traces when absent).
    #[serde(rename = "match", default)]
    pub match_cmdline: Option<String>,
    /// The operation's arguments (see [`agent`] for each op's fields).
    #[serde(default)]
    pub args: Value,
    /// How long to wait for the hosts' answers (default 30 s, at most 5 min).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// What an agent receives (`GET /v1/control/poll`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    pub op: String,
    #[serde(rename = "match", default)]
    pub match_cmdline: Option<String>,
    #[serde(default)]
    pub args: Value,
    /// Who asked (for the agent's own audit log).
    pub who: String,
}

/// What an agent posts back (`POST /v1/control/results`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostResult {
    pub host: String,
    /// The command's id.
    pub id: String,
    #[serde(default)]
    pub processes: Vec<ProcessOutcome>,
    /// The command failed as a whole on this host (bad arguments, no
    /// process matched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The aggregator's answer to a command: one report per host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub id: String,
    pub who: String,
    pub hosts: Vec<HostResult>,
    /// Hosts left out of a command that named none (every host that takes
    /// commands): the hosts known to the aggregator that do not, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    pub host: String,
    pub reason: String,
}

/// Refuses to carry control traffic over plain HTTP beyond this machine:
/// commands run code in production processes, and the admin token (CLI)
/// or the commands themselves (agent) must not cross a network in clear.
pub fn check_transport(url: &str, flag: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url)
        .with_context(|| format!("{flag} {url}: not a URL (e.g. https://aggregator:7878)"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = parsed.host_str().unwrap_or("");
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || ip
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback());
            if loopback {
                Ok(())
            } else {
                bail!(
                    "{flag} {url}: refusing to carry control commands over plain HTTP to a \
                     machine other than this one (they run code inside production processes). \
                     Start the aggregator with --tls-cert/--tls-key and use https:// (give \
                     --ca-cert for a private CA)"
                )
            }
        }
        other => bail!("{flag} {url}: use an https:// URL (not {other}://)"),
    }
}

/// One admin of `--admin-token-file`: an optional name and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub name: Option<String>,
    pub token: String,
}

impl AdminToken {
    /// Who this is in audit events: the name, else the token's fingerprint.
    pub fn who(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => fingerprint(&self.token),
        }
    }
}

/// `sha256:` and the first 12 hex digits of the token's SHA-256: names a
/// token in the audit trail without revealing it.
pub fn fingerprint(token: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let hex: String = d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Parses an admin token file: one admin per line, `NAME:TOKEN` or a bare
/// `TOKEN` (named by its fingerprint); blank lines and `#` comments skipped.
pub fn parse_admin_tokens(text: &str, path: &Path) -> Result<Vec<AdminToken>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, token) = match line.split_once(':') {
            Some((n, t)) => (Some(n.trim().to_owned()), t.trim()),
            None => (None, line),
        };
        if token.is_empty() || token.contains(char::is_whitespace) {
            bail!(
                "{} line {}: expected NAME:TOKEN or TOKEN (one word)",
                path.display(),
                i + 1
            );
        }
        if name.as_deref().is_some_and(str::is_empty) {
            bail!(
                "{} line {}: the name before ':' is empty",
                path.display(),
                i + 1
            );
        }
        out.push(AdminToken {
            name,
            token: token.to_owned(),
        });
    }
    if out.is_empty() {
        bail!("the admin token file {} holds no token", path.display());
    }
    Ok(out)
}

/// Reads an admin token file.
pub fn read_admin_tokens(path: &Path) -> Result<Vec<AdminToken>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token file {}", path.display()))?;
    parse_admin_tokens(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_rule() {
        assert!(check_transport("https://10.0.0.1:7878", "--aggregator").is_ok());
        assert!(check_transport("http://127.0.0.1:7878", "--aggregator").is_ok());
        assert!(check_transport("http://[::1]:7878", "--aggregator").is_ok());
        assert!(check_transport("http://localhost:7878", "--aggregator").is_ok());
        let e = check_transport("http://10.0.0.1:7878", "--aggregator")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tls-cert"), "{e}");
        assert!(check_transport("ftp://x", "--aggregator").is_err());
    }

    #[test]
    fn admin_token_file() {
        let p = Path::new("admins");
        let t = parse_admin_tokens("# admins\nalice:s3cret-token\n\nbare-token\n", p).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].who(), "alice");
        assert_eq!(t[0].token, "s3cret-token");
        assert_eq!(t[1].name, None);
        assert!(t[1].who().starts_with("sha256:"));
        assert_eq!(t[1].who().len(), "sha256:".len() + 12);
        assert!(parse_admin_tokens("# nothing\n", p).is_err());
        assert!(parse_admin_tokens(":tok\n", p).is_err());
        assert!(parse_admin_tokens("a b\n", p).is_err());
    }
}
