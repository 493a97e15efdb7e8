//! `cargo xtask bench logpoint`: what a logpoint costs a saturated node
//! http server: one on a line that never runs (the aim: within 2% of
//! nothing), and one on the request handler, capped at the default 100
//! lines/s and uncapped (every request logs a line), from which the cost
//! of one hit follows.

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::{
    harness::{self, Bench, RoundArgs, Server, Tool},
    report::Series,
};
use crate::{
    node::{Script, Scripts},
    tracer,
};

const LOGPOINT_SERVER: Script = Script {
    name: "logpoint-server.js",
    source: include_str!("../../assets/logpoint-server.js"),
};

#[derive(Args)]
pub struct LogpointArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// Serve with an async handler that awaits twice per request (a
    /// logpoint keeps V8's debugger on, which makes every await slower).
    #[arg(long)]
    async_handler: bool,
}

/// `tracer logpoint add` arguments for the handler's `res.end` line, with
/// the default cap and logging every hit.
const ON_HANDLER: &[&str] = &["logpoint-server.js:18", "served ${served} ${req.url}"];
const ON_ASYNC_HANDLER: &[&str] = &["logpoint-server.js:24", "served ${served} ${req.url}"];
const EVERY_HIT: &[&str] = &[
    "logpoint-server.js:18",
    "served ${served} ${req.url}",
    "--rate",
    "100000",
];
const EVERY_ASYNC_HIT: &[&str] = &[
    "logpoint-server.js:24",
    "served ${served} ${req.url}",
    "--rate",
    "100000",
];

/// `tracer logpoint add --pid PID ARGS` (the audit log under target/bench).
pub fn add(pid: u32, args: &[&str]) -> Result<()> {
    run(&[&["logpoint", "add", "--pid", &pid.to_string()], args].concat())
}

/// `tracer logpoint rm --pid PID --all`.
pub fn remove_all(pid: u32) -> Result<()> {
    run(&["logpoint", "rm", "--pid", &pid.to_string(), "--all"])
}

fn run(args: &[&str]) -> Result<()> {
    let audit = crate::cmd::workspace_root().join("target/bench/logpoint-audit.jsonl");
    let out = Command::new(tracer::binary())
        .args(args)
        .env("TRACER_AUDIT_LOG", &audit)
        .output()
        .with_context(|| format!("running tracer {args:?}"))?;
    if !out.status.success() {
        bail!(
            "tracer {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn median_rps(series: &[Series], name: &str) -> Option<f64> {
    series
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.median_rps())
}

/// The never-run logpoint against the 2% aim, the capped one's cost per
/// request, and µs per hit when every request logs: the server is
/// saturated on one core, so the extra time per request is the hit.
fn verdict(series: &[Series]) -> Option<String> {
    let base = median_rps(series, "base")?;
    let mut out = String::new();
    if let Some(never) = median_rps(series, "never") {
        let cost = (1.0 - never / base) * 100.0;
        out.push_str(&format!(
            "Logpoint on a line that never runs: {cost:+.1}% throughput cost (aim: at most 2%). "
        ));
    }
    // Capped, most requests pass a lifted breakpoint: what it adds is per
    // request, not per hit.
    if let Some(rps) = median_rps(series, "capped") {
        let us = (1.0 / rps - 1.0 / base) * 1e6;
        out.push_str(&format!(
            "Capped at 100 lines/s: {us:.1} µs per request ({:+.1}%). ",
            (rps / base - 1.0) * 100.0
        ));
    }
    if let Some(rps) = median_rps(series, "every") {
        let us = (1.0 / rps - 1.0 / base) * 1e6;
        out.push_str(&format!("Per hit, logging every hit: {us:.1} µs. "));
    }
    Some(out.trim_end().to_owned())
}

const NOTES: &str = "\
`never`: a logpoint on a line no request runs. `capped`: on the handler's \
`res.end` line with the default rate cap (100 lines/s; as many hits again \
are counted as dropped, then the breakpoint is lifted for the rest of the \
second, so its cost is given per request). `every`: the same with \
`--rate 100000`, so every request renders and writes its line. The logpoint \
is added before each round's load and removed after it (the inspector port \
is closed during the load). Per-hit µs = 1/req/s(config) - 1/req/s(base), \
the server being saturated on one core.";

pub fn run_bench(args: &LogpointArgs) -> Result<()> {
    let config = |name, description: &str, args| harness::Config {
        name,
        description: description.into(),
        tool: Tool::Logpoint(args),
        traces_http: false,
    };
    let bench = Bench {
        id: "logpoint",
        title: "Logpoints: node http server under wrk",
        configs: vec![
            harness::Config::base(),
            config(
                "never",
                "logpoint on a line that never runs",
                &["logpoint-server.js:9", "never ${x}"],
            ),
            config(
                "capped",
                "logpoint on the handler, default cap 100 lines/s",
                if args.async_handler {
                    ON_ASYNC_HANDLER
                } else {
                    ON_HANDLER
                },
            ),
            config(
                "every",
                "logpoint on the handler, every hit logged",
                if args.async_handler {
                    EVERY_ASYNC_HIT
                } else {
                    EVERY_HIT
                },
            ),
        ],
        notes: NOTES.to_string(),
        verdict,
    };
    let server = Server {
        scripts: Scripts::write(&[LOGPOINT_SERVER])?,
        script: LOGPOINT_SERVER,
        env: if args.async_handler {
            vec![("BENCH_ASYNC", "1".into())]
        } else {
            Vec::new()
        },
        scheme: "http",
        about: if args.async_handler {
            "an async handler: two awaits, then `res.end('hello world')`"
        } else {
            "`res.end('hello world')`"
        },
    };
    harness::run(&bench, server, &args.rounds)
}
