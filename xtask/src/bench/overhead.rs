//! `cargo xtask bench overhead`: requests/s and p99 of a minimal node http
//! server with nothing attached vs tracer (all probes, each family alone) vs
//! bpftrace, measured round-robin in one run.

use anyhow::Result;
use clap::{Args, ValueEnum};

use super::{
    bpftrace,
    harness::{self, Bench, RoundArgs, Server, Tool},
};
use crate::node::{BENCH_SERVER, Scripts};

#[derive(Args)]
pub struct OverheadArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// Configurations to measure, comma-separated (`base` is always measured:
    /// the ratios need it).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "base,full,logs,tcp,runtime,http,bpftrace"
    )]
    configs: Vec<Config>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Config {
    /// Nothing attached.
    Base,
    /// `tracer attach --pid P` (every probe family).
    Full,
    /// `tracer attach --pid P --probes logs`.
    Logs,
    /// `tracer attach --pid P --probes tcp`.
    Tcp,
    /// `tracer attach --pid P --probes runtime`.
    Runtime,
    /// `tracer attach --pid P --probes tcp,http` (HTTP/1.x from the
    /// connections' TCP segments, cgroup_skb programs).
    Http,
    /// `tracer attach --pid P --probes tcp,http --http-capture syscalls`
    /// (HTTP/1.x from the connections' read/write syscalls).
    HttpSyscalls,
    /// An equivalent bpftrace script counting into maps.
    Bpftrace,
}

impl Config {
    fn harness(self) -> harness::Config {
        let (name, description, tool, traces_http) = match self {
            Config::Base => return harness::Config::base(),
            Config::Full => ("full", "tracer attach, all probes", Tool::Attach(&[]), true),
            Config::Logs => (
                "logs",
                "tracer attach --probes logs",
                Tool::Attach(&["--probes", "logs"]),
                false,
            ),
            Config::Tcp => (
                "tcp",
                "tracer attach --probes tcp",
                Tool::Attach(&["--probes", "tcp"]),
                false,
            ),
            Config::Runtime => (
                "runtime",
                "tracer attach --probes runtime",
                Tool::Attach(&["--probes", "runtime"]),
                false,
            ),
            Config::Http => (
                "http",
                "tracer attach --probes tcp,http",
                Tool::Attach(&["--probes", "tcp,http"]),
                true,
            ),
            Config::HttpSyscalls => (
                "http-syscalls",
                "tracer attach --probes tcp,http --http-capture syscalls",
                Tool::Attach(&["--probes", "tcp,http", "--http-capture", "syscalls"]),
                true,
            ),
            Config::Bpftrace => (
                "bpftrace",
                "bpftrace -p: write/writev, TCP state and retransmit, uv__io_poll",
                Tool::Bpftrace {
                    script: bpftrace::overhead_script,
                    must_fire: "@loop_turns",
                },
                false,
            ),
        };
        harness::Config {
            name,
            description: description.into(),
            tool,
            traces_http,
        }
    }
}

const NOTES: &str = "\
`vs base` is the median req/s over the base's median from the same run. \
`tool CPU` is the attached process's own CPU time (user space and its \
syscalls) during the load, per completed request and as a share of one core; \
the BPF programs themselves run in the server's context, so their cost is in \
the req/s column, not there. `HTTP seen` is HTTP events reported over \
requests wrk completed (a little over 100% is the requests in flight when \
wrk stopped). The bpftrace script is a lower bound, not a twin: tracer also \
hooks `sched:sched_process_*`, and its `logs` and `http` families hook more \
syscall tracepoints (read, write/writev exits, openat).";

pub fn run(args: &OverheadArgs) -> Result<()> {
    let mut configs = vec![harness::Config::base()];
    for config in &args.configs {
        if *config != Config::Base {
            let config = config.harness();
            if !configs.iter().any(|c| c.name == config.name) {
                configs.push(config);
            }
        }
    }
    let bench = Bench {
        id: "overhead",
        title: "Overhead: node http server under wrk",
        configs,
        notes: NOTES.to_string(),
        verdict: |_| None,
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
