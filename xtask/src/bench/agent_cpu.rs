//! `cargo xtask bench agent-cpu`: the CPU time `tracer agent` spends per
//! traced request, in its own process, next to the throughput cost the
//! server sees.

use anyhow::Result;
use clap::Args;

use super::{
    harness::{self, Bench, RoundArgs, Server, Tool},
    report::{Series, ratio_text},
};
use crate::node::{BENCH_SERVER, Scripts};

/// What the agent should stay under per request.
pub const TARGET_US_PER_REQUEST: f64 = 5.0;

#[derive(Args)]
pub struct AgentCpuArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// Probe families the agent runs (its `--probes`).
    #[arg(long, default_value = "logs,tcp,runtime,http")]
    probes: String,
}

pub fn run(args: &AgentCpuArgs) -> Result<()> {
    let agent = harness::Config {
        name: "agent",
        description: format!(
            "tracer agent --pid P --quiet --metrics-listen 127.0.0.1:FREE --probes {}",
            args.probes
        ),
        tool: Tool::Agent(vec!["--probes".into(), args.probes.clone()]),
        traces_http: args.probes.split(',').any(|f| f.trim() == "http"),
    };
    let notes = format!(
        "The agent's number is `tool CPU µs/req`: utime + stime of the agent \
         process (/proc/PID/stat, all threads) from just before wrk starts to \
         when the agent has caught up after it stops, over the requests wrk \
         completed (target: at most {TARGET_US_PER_REQUEST} µs). It is the \
         agent's user space (ring reading, decoding, HTTP parsing, metrics) \
         and the syscalls it makes. The tracer's kernel-side cost is NOT in \
         it: the BPF programs run in the server's context (syscall \
         tracepoints, uprobes) or in softirq, and show up as the server's \
         lost throughput, the `vs base` column. The agent is scraped once \
         after each round (outside the CPU window) to check its HTTP series."
    );
    let bench = Bench {
        id: "agent-cpu",
        title: "Agent CPU per traced request: node http server under wrk",
        configs: vec![harness::Config::base(), agent],
        notes,
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

/// `agent: 2.10 µs of agent CPU per request (target ≤ 5 µs: met); server
/// throughput 0.870 (-13.0%) of base.`
fn verdict(series: &[Series]) -> Option<String> {
    let base = series.iter().find(|s| s.name == "base")?;
    let agent = series.iter().find(|s| s.name == "agent")?;
    let us = agent.median_cpu_us_per_request()?;
    Some(format!(
        "**agent: {us:.2} µs of agent CPU per request** (target ≤ {TARGET_US_PER_REQUEST} µs: {}); \
         server throughput with the agent attached: {} of base.",
        if us <= TARGET_US_PER_REQUEST {
            "met"
        } else {
            "MISSED"
        },
        ratio_text(agent.median_rps(), base.median_rps())
    ))
}
