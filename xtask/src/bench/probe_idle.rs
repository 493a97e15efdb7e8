//! `cargo xtask bench probe-idle`: what an ad-hoc probe on a function the
//! server never calls costs a saturated node http server (the aim: within
//! noise). A uprobe is installed only at its own address, so the server's
//! requests should not feel it; this measures that, as a ratio to nothing
//! attached in the same run, rounds alternated, medians.

use anyhow::Result;
use clap::Args;

use super::{
    harness::{self, Bench, RoundArgs, Server, Tool},
    report::Series,
};
use crate::node::{BENCH_SERVER, Scripts};

#[derive(Args)]
pub struct ProbeIdleArgs {
    #[command(flatten)]
    rounds: RoundArgs,
}

/// libuv's mkdtemp: linked into node, never called by an http server.
const NEVER_CALLED: &str = "uprobe:uv_fs_mkdtemp";

pub fn run(args: &ProbeIdleArgs) -> Result<()> {
    let bench = Bench {
        id: "probe-idle",
        title: "Ad-hoc probe on a function never called: node http server under wrk",
        configs: vec![
            harness::Config::base(),
            harness::Config {
                name: "idle-probe",
                description: format!("`tracer probe add --pid P {NEVER_CALLED}` (count mode)"),
                tool: Tool::Probe(&[NEVER_CALLED]),
                traces_http: false,
            },
        ],
        notes: NOTES.to_string(),
        verdict,
    };
    let server = Server {
        scripts: Scripts::write(&[BENCH_SERVER])?,
        script: BENCH_SERVER,
        env: Vec::new(),
        scheme: "http",
        about: "`res.end('hello world')`, one log line per 100 requests",
    };
    harness::run(&bench, server, &args.rounds)
}

fn verdict(series: &[Series]) -> Option<String> {
    let rps = |name: &str| {
        series
            .iter()
            .find(|s| s.name == name)
            .map(Series::median_rps)
    };
    let base = rps("base")?;
    let idle = rps("idle-probe")?;
    Some(format!(
        "Probe on a function never called: {:.3}x the throughput of nothing attached \
         ({:+.1}%; aim: within noise, which is ±20% between runs here).",
        idle / base,
        (idle / base - 1.0) * 100.0
    ))
}

const NOTES: &str = "\
`idle-probe`: `tracer probe add` with a uprobe (count mode) on libuv's \
`uv_fs_mkdtemp`, which the server never calls: the probe programs are \
loaded and the uprobe installed, and no request hits it. The tracer's own \
CPU column is its aggregation timer (one read of the counters a second).";
