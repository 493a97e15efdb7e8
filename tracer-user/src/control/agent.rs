//! The agent's side of the command channel: with `--allow-control`, a
//! long poll to the aggregator (`GET /v1/control/poll?host=H`, held open
//! by the aggregator until a command comes or ~25 s pass, then asked
//! again), so commands reach an agent behind NAT without the aggregator
//! ever connecting to it. Each command runs on the processes this agent
//! traces that match its `match`, with the one-host inspector code (and
//! its audit log), and the per-process results are posted back
//! (`POST /v1/control/results`).
//!
//! Arguments of each op (`Command::args`):
//! - `logpoint.add`: `id`, `location`, `template`, `condition`, `ttl_ms`,
//!   `max_hits`, `rate`;
//! - `logpoint.list`: none;
//! - `logpoint.rm`: `ids` (list) or `all: true`;
//! - `eval`: `expression`, `timeout_ms`;
//! - `processes`: none (the selected processes' command lines, read from
//!   /proc; nothing is sent to them).

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Command, HostResult, OPS, ProcessOutcome};
use crate::{
    agent::Scope,
    client_tls::{ClientTls, http_client, tls_problem},
    inspector::{
        eval,
        logpoint::{self, AddArgs, ListArgs, Report, RmArgs, Targets},
    },
};

/// How long the agent's poll may stay open (the aggregator answers after
/// at most `aggregator::api::control::POLL_HOLD`).
const POLL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ControlConfig {
    /// The aggregators' base URLs (the agent's `--aggregator` list).
    pub urls: Vec<String>,
    /// The agent's ingest token: it identifies the agent, as for ingest.
    pub token: String,
    pub host: String,
    /// --ca-cert, --client-cert/--client-key (the agent's own).
    pub tls: ClientTls,
    /// The processes this agent traces; commands reach no others.
    pub scope: Scope,
    /// The agent's `--pid` list, when it was given one.
    pub pids: Vec<u32>,
}

/// Checks the transport rule for every URL; then polls for commands until
/// the runtime ends.
pub fn start(cfg: ControlConfig) -> Result<tokio::task::JoinHandle<()>> {
    for url in &cfg.urls {
        super::check_transport(url, "--aggregator (with --allow-control)")?;
    }
    let client = http_client(&cfg.tls, Duration::from_secs(3), Some(POLL_TIMEOUT))?;
    // One poll per aggregator of the list, not only the first: several
    // aggregators on one ClickHouse store are interchangeable, so a
    // command may be sent through any of them, and each one only knows
    // the hosts that poll it.
    let cfg = std::sync::Arc::new(cfg);
    let polls: Vec<_> = cfg
        .urls
        .iter()
        .map(|url| {
            let base = url.trim_end_matches('/').to_owned();
            tokio::spawn(poll_loop(client.clone(), cfg.clone(), base))
        })
        .collect();
    Ok(tokio::spawn(async move {
        for p in polls {
            let _ = p.await;
        }
    }))
}

#[derive(Deserialize)]
struct Polled {
    commands: Vec<Command>,
}

/// Polls the aggregator at `base` for commands until the runtime ends.
async fn poll_loop(client: reqwest::Client, cfg: std::sync::Arc<ControlConfig>, base: String) {
    let base = base.as_str();
    let mut backoff = Duration::from_millis(500);
    let mut down_reported = false;
    loop {
        let url = match reqwest::Url::parse_with_params(
            &format!("{base}/v1/control/poll"),
            &[("host", cfg.host.as_str())],
        ) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("tracer: control: --aggregator {base}: {e}; control is off");
                return;
            }
        };
        let r = client.get(url).bearer_auth(&cfg.token).send().await;
        let polled = match r {
            Ok(resp) if resp.status().is_success() => resp.json::<Polled>().await.ok(),
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                if !down_reported {
                    eprintln!(
                        "tracer: control: the aggregator at {base} answered {status} to the \
                         poll: {}",
                        body.trim()
                    );
                }
                None
            }
            Err(e) => {
                if !down_reported {
                    match tls_problem(&e, base, &cfg.tls).await {
                        Some(problem) => eprintln!("tracer: control: {problem}; retrying"),
                        None => eprintln!("tracer: control: cannot reach {base}: {e}; retrying"),
                    }
                }
                None
            }
        };
        let Some(polled) = polled else {
            down_reported = true;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        if down_reported {
            eprintln!("tracer: control: polling {base} for commands");
            down_reported = false;
        }
        backoff = Duration::from_millis(500);
        for cmd in polled.commands {
            let (client, cfg, base) = (client.clone(), cfg.clone(), base.to_owned());
            tokio::spawn(async move {
                let id = cmd.id.clone();
                let op = cmd.op.clone();
                let who = cmd.who.clone();
                let scope = (cfg.scope.clone(), cfg.pids.clone());
                let host = cfg.host.clone();
                let result = tokio::task::spawn_blocking(move || run_command(&host, &cmd, &scope))
                    .await
                    .unwrap_or_else(|e| HostResult {
                        host: cfg.host.clone(),
                        id: id.clone(),
                        processes: Vec::new(),
                        error: Some(format!("the command's task failed: {e}")),
                    });
                eprintln!(
                    "tracer: control: {op} from {who} ({id}): {}",
                    summary(&result)
                );
                post_result(&client, &base, &cfg.token, &result).await;
            });
        }
    }
}

fn summary(r: &HostResult) -> String {
    match &r.error {
        Some(e) => format!("error: {e}"),
        None => {
            let ok = r.processes.iter().filter(|p| p.ok).count();
            format!("{ok} of {} process(es) ok", r.processes.len())
        }
    }
}

async fn post_result(client: &reqwest::Client, base: &str, token: &str, r: &HostResult) {
    let url = format!("{base}/v1/control/results");
    for attempt in 0..5 {
        match client.post(&url).bearer_auth(token).json(r).send().await {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => {
                eprintln!(
                    "tracer: control: the aggregator refused the result of {} ({})",
                    r.id,
                    resp.status()
                );
                return;
            }
            Err(e) if attempt == 4 => {
                eprintln!("tracer: control: cannot send the result of {}: {e}", r.id);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The processes a command selects: node processes this agent traces
/// whose command line matches `pattern`, in pid order.
fn select(scope: &Scope, pids: &[u32], pattern: Option<&str>) -> Result<Vec<u32>> {
    let re = pattern
        .map(Regex::new)
        .transpose()
        .context("`match` is not a valid regular expression")?;
    let cmd_scope = Scope {
        cmdline: re,
        netns: None,
    };
    let me = std::process::id();
    let mut out: Vec<u32> = std::fs::read_dir("/proc")
        .context("listing /proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| pids.is_empty() || pids.contains(pid))
        .filter(|pid| scope.selects(*pid) && cmd_scope.selects(*pid))
        .collect();
    out.sort_unstable();
    if out.is_empty() {
        match pattern {
            Some(p) => bail!("no node process this agent traces matches {p:?}"),
            None => bail!("this agent traces no node process"),
        }
    }
    Ok(out)
}

/// Runs one command here (blocking) and reports per process.
pub fn run_command(host: &str, cmd: &Command, scope: &(Scope, Vec<u32>)) -> HostResult {
    let origin = json!({ "command": cmd.id, "who": cmd.who, "via": "aggregator" });
    let processes = (|| -> Result<Vec<ProcessOutcome>> {
        if !OPS.contains(&cmd.op.as_str()) {
            bail!("unknown op {:?} (ops: {})", cmd.op, OPS.join(", "));
        }
        let pids = select(&scope.0, &scope.1, cmd.match_cmdline.as_deref())?;
        let results: Vec<(u32, Result<Report>)> = match cmd.op.as_str() {
            "logpoint.add" => logpoint::add(&add_args(&cmd.args, pids)?, &origin),
            "logpoint.list" => logpoint::list(
                &ListArgs {
                    targets: targets(pids),
                    json: false,
                },
                &origin,
            ),
            "logpoint.rm" => logpoint::rm(&rm_args(&cmd.args, pids)?, &origin),
            "processes" => return Ok(pids.iter().map(|&pid| describe(pid)).collect()),
            _ => return eval_each(&cmd.args, &pids, &origin),
        };
        Ok(results
            .into_iter()
            .map(|(pid, r)| match r {
                Ok(report) => ProcessOutcome {
                    pid,
                    ok: true,
                    result: Some(report.json),
                    text: Some(report.text),
                    error: None,
                },
                Err(e) => failed(pid, &e),
            })
            .collect())
    })();
    match processes {
        Ok(processes) => HostResult {
            host: host.to_owned(),
            id: cmd.id.clone(),
            processes,
            error: None,
        },
        Err(e) => HostResult {
            host: host.to_owned(),
            id: cmd.id.clone(),
            processes: Vec::new(),
            error: Some(format!("{e:#}")),
        },
    }
}

/// A selected process: its command line and executable.
fn describe(pid: u32) -> ProcessOutcome {
    let cmdline = crate::agent::cmdline_of(pid);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    ProcessOutcome {
        pid,
        ok: true,
        text: Some(format!("PID {pid}: {cmdline}\n")),
        result: Some(json!({ "cmdline": cmdline, "exe": exe })),
        error: None,
    }
}

fn failed(pid: u32, e: &anyhow::Error) -> ProcessOutcome {
    ProcessOutcome {
        pid,
        ok: false,
        result: None,
        text: None,
        error: Some(format!("{e:#}")),
    }
}

fn targets(pids: Vec<u32>) -> Targets {
    Targets {
        pids,
        match_cmdline: None,
        remote: super::remote::RemoteArgs {
            aggregator: None,
            admin_token_file: None,
            hosts: Vec::new(),
            tls: Default::default(),
            wait: Duration::from_secs(30),
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddSpec {
    id: Option<String>,
    location: String,
    template: String,
    condition: Option<String>,
    ttl_ms: Option<u64>,
    max_hits: Option<u64>,
    rate: Option<u32>,
}

fn add_args(args: &Value, pids: Vec<u32>) -> Result<AddArgs> {
    let spec = AddSpec::deserialize(args).context("bad arguments for logpoint.add")?;
    if spec.max_hits == Some(0) {
        bail!("max_hits must be at least 1");
    }
    let rate = spec.rate.unwrap_or(100);
    if !(1..=100_000).contains(&rate) {
        bail!("rate must be 1 to 100000 lines/s");
    }
    Ok(AddArgs {
        targets: targets(pids),
        location: spec.location,
        template: spec.template,
        condition: spec.condition,
        ttl: Duration::from_millis(spec.ttl_ms.unwrap_or(30 * 60 * 1000)),
        max_hits: spec.max_hits,
        rate,
        json: false,
        id: spec.id,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RmSpec {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

fn rm_args(args: &Value, pids: Vec<u32>) -> Result<RmArgs> {
    let spec = RmSpec::deserialize(args).context("bad arguments for logpoint.rm")?;
    if spec.all != spec.ids.is_empty() {
        bail!("logpoint.rm takes either ids or all: true");
    }
    Ok(RmArgs {
        targets: targets(pids),
        ids: spec.ids,
        all: spec.all,
        json: false,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalSpec {
    expression: String,
    timeout_ms: Option<u64>,
}

fn eval_each(args: &Value, pids: &[u32], origin: &Value) -> Result<Vec<ProcessOutcome>> {
    let spec = EvalSpec::deserialize(args).context("bad arguments for eval")?;
    let timeout = Duration::from_millis(spec.timeout_ms.unwrap_or(10_000).clamp(1, 300_000));
    Ok(pids
        .iter()
        .map(
            |&pid| match eval::eval_pid(pid, &spec.expression, timeout, origin) {
                Ok(v) => {
                    let thrown = matches!(v, eval::Evaluated::Thrown(_));
                    ProcessOutcome {
                        pid,
                        ok: !thrown,
                        result: Some(v.to_json()),
                        text: Some(format!("PID {pid}: {}\n", v.to_text())),
                        error: thrown.then(|| v.to_text()),
                    }
                }
                Err(e) => failed(pid, &e),
            },
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_arguments() {
        let a = add_args(
            &json!({ "id": "lp-00aa11bb", "location": "a.js:3", "template": "x=${x}",
                     "condition": null, "ttl_ms": 60000, "max_hits": null, "rate": 5 }),
            vec![7],
        )
        .unwrap();
        assert_eq!(a.id.as_deref(), Some("lp-00aa11bb"));
        assert_eq!(a.ttl, Duration::from_secs(60));
        assert_eq!((a.rate, a.targets.pids.clone()), (5, vec![7]));
        // Defaults: the CLI's.
        let a = add_args(&json!({ "location": "a.js:3", "template": "x" }), vec![7]).unwrap();
        assert_eq!((a.rate, a.ttl), (100, Duration::from_secs(1800)));
        assert!(add_args(&json!({ "location": "a.js:3" }), vec![7]).is_err());
        assert!(
            add_args(
                &json!({ "location": "a", "template": "x", "evil": 1 }),
                vec![7]
            )
            .is_err()
        );
        assert!(
            add_args(
                &json!({ "location": "a", "template": "x", "rate": 0 }),
                vec![7]
            )
            .is_err()
        );
        assert!(rm_args(&json!({ "all": true }), vec![7]).unwrap().all);
        assert_eq!(
            rm_args(&json!({ "ids": ["lp-1"] }), vec![7]).unwrap().ids,
            ["lp-1"]
        );
        assert!(rm_args(&json!({}), vec![7]).is_err());
        assert!(rm_args(&json!({ "ids": ["lp-1"], "all": true }), vec![7]).is_err());
    }

    #[test]
    fn unknown_op_and_no_process_are_host_errors() {
        let scope = (
            Scope {
                cmdline: None,
                netns: None,
            },
            Vec::new(),
        );
        let cmd = |op: &str, m: Option<&str>| Command {
            id: "cmd-1".into(),
            op: op.into(),
            match_cmdline: m.map(str::to_owned),
            args: json!({}),
            who: "test".into(),
        };
        let r = run_command("h", &cmd("rm -rf", None), &scope);
        assert!(r.error.unwrap().starts_with("unknown op \"rm -rf\""));
        let r = run_command("h", &cmd("processes", Some("no such program x9q")), &scope);
        assert_eq!(
            r.error.as_deref(),
            Some("no node process this agent traces matches \"no such program x9q\"")
        );
        assert!(r.processes.is_empty());
    }
}
