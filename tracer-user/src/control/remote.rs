//! The CLI side of control across the cluster: `tracer logpoint ...` and
//! `tracer eval ...` with `--aggregator URL --admin-token-file F` send one
//! command to the aggregator, which hands it to the selected agents and
//! answers with every host's per-process results.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use super::{Answer, Submit, check_transport, read_admin_tokens};
use crate::{
    client_tls::{ClientTls, http_client, transport_error},
    inspector::{
        eval::EvalArgs,
        logpoint::{LogpointArgs, LogpointCommand, new_id},
    },
};

/// Most a command may wait for its hosts.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Where to send a command instead of running it on this host.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// Run on the agents of the cluster through this aggregator
    /// (https://, or http:// on this machine only); needs
    /// --admin-token-file. Agents must run with --allow-control.
    #[arg(long, value_name = "URL", requires = "admin_token_file")]
    pub aggregator: Option<String>,
    /// File holding an admin token of the aggregator's --admin-token-file
    /// (`TOKEN`, or the `NAME:TOKEN` line); not the ingest token.
    #[arg(long, value_name = "FILE", requires = "aggregator")]
    pub admin_token_file: Option<PathBuf>,
    /// With --aggregator: only these hosts (repeat or comma-separate;
    /// default: every host whose agent allows control).
    #[arg(
        long = "host",
        value_name = "HOST",
        value_delimiter = ',',
        requires = "aggregator"
    )]
    pub hosts: Vec<String>,
    /// With --aggregator: how to reach an https:// one (--ca-cert,
    /// --client-cert/--client-key).
    #[command(flatten)]
    pub tls: ClientTls,
    /// With --aggregator: how long to wait for the hosts' answers; a host
    /// that has not answered by then is reported by name.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration,
          value_name = "DURATION")]
    pub wait: Duration,
}

/// Sends `submit` and returns the aggregator's answer.
async fn send(remote: &RemoteArgs, submit: Submit) -> Result<Answer> {
    let url = remote
        .aggregator
        .as_deref()
        .context("--aggregator URL is required")?;
    check_transport(url, "--aggregator")?;
    let token_file = remote
        .admin_token_file
        .as_ref()
        .context("--aggregator needs --admin-token-file FILE")?;
    let tokens = read_admin_tokens(token_file)?;
    if tokens.len() != 1 {
        bail!(
            "{} holds {} tokens; give a file with just yours",
            token_file.display(),
            tokens.len()
        );
    }
    if remote.wait.is_zero() || remote.wait > MAX_WAIT {
        bail!("--wait must be more than 0 and at most 5m");
    }
    let http = http_client(
        &remote.tls,
        Duration::from_secs(5),
        Some(remote.wait + Duration::from_secs(15)),
    )?;
    let endpoint = format!("{}/v1/control/commands", url.trim_end_matches('/'));
    let sent = http
        .post(&endpoint)
        .bearer_auth(&tokens[0].token)
        .json(&Submit {
            timeout_ms: Some(remote.wait.as_millis() as u64),
            ..submit
        })
        .send()
        .await;
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => return Err(transport_error(e, url, &remote.tls).await),
    };
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let msg = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        bail!(
            "the aggregator refused the command ({status}): {}",
            msg.trim()
        );
    }
    serde_json::from_str(&body).with_context(|| format!("reading the aggregator's answer: {body}"))
}

/// Prints every host's report; fails when any process or host failed.
fn print(answer: &Answer, json_out: bool) -> Result<()> {
    for s in &answer.skipped {
        eprintln!("tracer: skipped {}", s.reason);
    }
    let mut failed = 0;
    let mut total = 0;
    for h in &answer.hosts {
        if let Some(e) = &h.error {
            failed += 1;
            total += 1;
            if json_out {
                println!("{}", json!({ "host": h.host, "ok": false, "error": e }));
            } else {
                eprintln!("error: host {}: {e}", h.host);
            }
            continue;
        }
        for p in &h.processes {
            total += 1;
            if json_out {
                println!(
                    "{}",
                    json!({ "host": h.host, "pid": p.pid, "ok": p.ok, "result": p.result,
                            "error": p.error })
                );
            } else if p.ok {
                for line in p.text.as_deref().unwrap_or("ok\n").lines() {
                    println!("[{}] {line}", h.host);
                }
            } else {
                eprintln!(
                    "error: host {} PID {}: {}",
                    h.host,
                    p.pid,
                    p.error.as_deref().unwrap_or("failed")
                );
            }
            if !p.ok {
                failed += 1;
            }
        }
    }
    if !json_out {
        eprintln!(
            "tracer: command {} by {}: {} host(s), {} process(es), {failed} failed",
            answer.id,
            answer.who,
            answer.hosts.len(),
            total - answer.hosts.iter().filter(|h| h.error.is_some()).count()
        );
    }
    if failed > 0 {
        bail!("{failed} of {total} failed");
    }
    Ok(())
}

pub async fn logpoint(args: &LogpointArgs) -> Result<()> {
    let (op, targets, json_out, op_args) = match &args.command {
        LogpointCommand::Add(a) => {
            // Checked here too, so a typo fails before anything is sent.
            if a.ttl.is_zero() || a.ttl > Duration::from_secs(24 * 3600) {
                bail!("--ttl must be more than 0 and at most 24h");
            }
            crate::inspector::logpoint::parse_location(&a.location)?;
            crate::inspector::logpoint::template_literal(&a.template)?;
            (
                "logpoint.add",
                &a.targets,
                a.json,
                json!({
                    "id": new_id(),
                    "location": a.location,
                    "template": a.template,
                    "condition": a.condition,
                    "ttl_ms": a.ttl.as_millis() as u64,
                    "max_hits": a.max_hits,
                    "rate": a.rate,
                }),
            )
        }
        LogpointCommand::List(a) => ("logpoint.list", &a.targets, a.json, json!({})),
        LogpointCommand::Rm(a) => (
            "logpoint.rm",
            &a.targets,
            a.json,
            json!({ "ids": a.ids, "all": a.all }),
        ),
    };
    let answer = send(
        &targets.remote,
        Submit {
            op: op.into(),
            hosts: targets.remote.hosts.clone(),
            match_cmdline: targets.match_cmdline.clone(),
            args: op_args,
            timeout_ms: None,
        },
    )
    .await?;
    print(&answer, json_out)
}

pub async fn eval(args: &EvalArgs) -> Result<()> {
    // The answer must be able to arrive before the command gives up on it.
    if args.timeout >= args.remote.wait {
        bail!(
            "--timeout {} is not shorter than --wait {}: the hosts' answers would be given up \
             first; give a longer --wait",
            humantime::format_duration(args.timeout),
            humantime::format_duration(args.remote.wait)
        );
    }
    let answer = send(
        &args.remote,
        Submit {
            op: "eval".into(),
            hosts: args.remote.hosts.clone(),
            match_cmdline: args.match_cmdline.clone(),
            args: json!({
                "expression": args.expression,
                "timeout_ms": args.timeout.as_millis() as u64,
            }),
            timeout_ms: None,
        },
    )
    .await?;
    print(&answer, args.json)
}
