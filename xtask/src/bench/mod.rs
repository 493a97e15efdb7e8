//! `cargo xtask bench ...`: benchmarks. On these 2-core shared machines the
//! same setup swings by up to ±20% between runs, so every benchmark compares
//! configurations inside one run, alternating them round by round, and
//! reports medians, with how busy the rest of the machine was.

mod agent_cpu;
mod aggregator;
mod bpftrace;
mod clickhouse;
mod cpu;
mod harness;
mod logpoint;
mod overhead;
mod probe;
mod probe_idle;
mod report;
mod tls;
mod wrk;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// What attaching costs a busy node http server: requests/s and p99
    /// latency with nothing attached, with tracer (all probes, then each probe
    /// family alone) and with an equivalent bpftrace script.
    ///
    /// node runs on CPU 0, wrk (1 thread, 50 keep-alive connections) on CPU 1.
    /// Results go to the terminal and to target/bench/overhead.md.
    Overhead(overhead::OverheadArgs),
    /// What TLS plaintext capture costs a busy node https server: nothing
    /// attached vs `tracer attach --probes tcp,http` (uprobes on node's
    /// SSL_write/SSL_read) vs all probes vs bpftrace on the same functions.
    ///
    /// A self-signed key and certificate are generated for the run. Results go
    /// to the terminal and to target/bench/tls.md.
    Tls(tls::TlsArgs),
    /// The CPU time `tracer agent` itself spends per traced request (from
    /// /proc/PID/stat around the load window), next to the server's
    /// requests/s with and without it.
    ///
    /// The tracer's kernel-side cost is not in that number: it shows in the
    /// server's throughput. Results go to the terminal and to
    /// target/bench/agent-cpu.md.
    AgentCpu(agent_cpu::AgentCpuArgs),
    /// Aggregator ingest in events/s: the real `tracer aggregator` on
    /// loopback, several concurrent senders POSTing zstd batches like
    /// agents; the stored count is checked exactly afterwards.
    ///
    /// Results go to the terminal and to target/bench/ingest.md.
    Ingest(aggregator::IngestArgs),
    /// Grep scan speed over stored log lines (10M by default): `tracer
    /// grep` for planted patterns, bytes of log text per second and per
    /// core, counts checked exactly.
    ///
    /// Results go to the terminal and to target/bench/grep.md.
    Grep(aggregator::GrepArgs),
    /// The ClickHouse store against SQLite in one run (ClickHouse 18.16,
    /// the benchmark's own server): ingest events/s and CPU per event
    /// (SQLite, ClickHouse behind 1 and 2 aggregators), grep GB/s over the
    /// same log lines in each, and ingest into an empty vs a grown store.
    ///
    /// Results go to the terminal and to target/bench/clickhouse.md.
    Clickhouse(clickhouse::ClickhouseArgs),
    /// Tail latency p50/p99 from a node process's write() to the line
    /// printed by `tracer tail -f --json`, through a real agent and
    /// aggregator (root).
    ///
    /// Results go to the terminal and to target/bench/tail.md.
    Tail(aggregator::TailArgs),
    /// What a logpoint costs a saturated node http server: on a line that
    /// never runs, and on the request handler (capped, and every hit
    /// logged), with µs per hit (root).
    ///
    /// Results go to the terminal and to target/bench/logpoint.md.
    Logpoint(logpoint::LogpointArgs),
    /// Cost per hit of `tracer probe add` (root): a USDT point and a uprobe
    /// on a function entry, against the same loop with nothing attached,
    /// in one run. Results go to the terminal and to target/bench/probe.md.
    Probe(probe::ProbeArgs),
    /// What an ad-hoc probe on a function the server never calls costs a
    /// saturated node http server (root): throughput with `tracer probe
    /// add uprobe:uv_fs_mkdtemp` attached against nothing, rounds
    /// alternated, medians. Results go to target/bench/probe-idle.md.
    ProbeIdle(probe_idle::ProbeIdleArgs),
}

pub fn run(command: &BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Overhead(args) => overhead::run(args),
        BenchCommand::Tls(args) => tls::run(args),
        BenchCommand::AgentCpu(args) => agent_cpu::run(args),
        BenchCommand::Ingest(args) => aggregator::ingest(args),
        BenchCommand::Grep(args) => aggregator::grep(args),
        BenchCommand::Clickhouse(args) => clickhouse::run(args),
        BenchCommand::Tail(args) => aggregator::tail(args),
        BenchCommand::Logpoint(args) => logpoint::run_bench(args),
        BenchCommand::Probe(args) => probe::run(args),
        BenchCommand::ProbeIdle(args) => probe_idle::run(args),
    }
}
