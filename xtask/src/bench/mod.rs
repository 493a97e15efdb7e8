//! `cargo xtask bench ...`: benchmarks. On these 2-core shared machines the
//! same setup swings by up to ±20% between runs, so every benchmark compares
//! configurations inside one run, alternating them round by round, and
//! reports medians.

mod bpftrace;
mod overhead;
mod report;
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
}

pub fn run(command: &BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Overhead(args) => overhead::run(args),
    }
}
