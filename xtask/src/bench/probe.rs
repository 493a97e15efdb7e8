//! `cargo xtask bench probe`: what one hit of an ad-hoc probe costs the
//! probed thread, in ns, for a USDT point and for a uprobe on a function
//! entry, against the same loop with nothing attached, in one run.
//!
//! A C program built here loops over a `noinline` function holding a USDT
//! point (and calling a leaf function) and prints, per batch, the batch's
//! start (CLOCK_MONOTONIC) and the ns per iteration. Rounds alternate base
//! / `tracer probe add usdt:…` / `uprobe:` on a function entry the kernel
//! emulates (`push`) / on one it must single-step (`mov`), in count mode
//! (the default); each takes the median of three batches that started
//! after tracer said ready. Results go to the terminal and to
//! target/bench/probe.md.

use std::{
    fmt::Write as _,
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use nix::{sys::signal::Signal, time::ClockId};

use super::report::{median, ratio_text};
use crate::{
    cmd,
    procs::{Spawned, Stream},
    tracer,
};

#[derive(Args)]
pub struct ProbeArgs {
    /// Rounds (each measures every configuration once).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Loop iterations per batch.
    #[arg(long, default_value_t = 50_000)]
    iterations: u32,
}

const PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/sdt.h>
#include <time.h>
#include <unistd.h>

/* Starts with `mov`: a uprobe here is single-stepped out of line. */
__attribute__((noinline)) int bench_leaf(int i) {
    __asm__ volatile("" ::: "memory");
    return i & 1;
}

/* Starts with `push %rbp`, as most functions (and node's uv_fs_open) do:
 * the kernel emulates it. Holds the USDT point (a `nop`, emulated too). */
__attribute__((noinline, optimize("no-omit-frame-pointer"))) int bench_fn(int i) {
    DTRACE_PROBE1(tracer_bench, hit, i);
    __asm__ volatile("" ::: "rbx", "memory");
    return bench_leaf(i) + 1;
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 50000;
    volatile int sink = 0;
    fprintf(stderr, "READY\n");
    for (;;) {
        long long start = now_ns();
        for (long i = 0; i < n; i++)
            sink += bench_fn((int)i);
        long long end = now_ns();
        printf("BATCH %lld %.3f\n", start, (double)(end - start) / n);
        fflush(stdout);
        usleep(20000);
    }
}
"#;

#[derive(Clone, Copy)]
enum Config {
    Base,
    Usdt,
    Uprobe,
    UprobeStepped,
}

impl Config {
    const ALL: [Config; 4] = [
        Config::Base,
        Config::Usdt,
        Config::Uprobe,
        Config::UprobeStepped,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::Base => "nothing attached",
            Config::Usdt => "usdt:tracer_bench:hit",
            Config::Uprobe => "uprobe:bench_fn",
            Config::UprobeStepped => "uprobe:bench_leaf",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Config::Base => "the loop alone (two calls per iteration)",
            Config::Usdt => "USDT point (a `nop`)",
            Config::Uprobe => "function entry at `push %rbp`",
            Config::UprobeStepped => "function entry at `mov` (single-stepped)",
        }
    }
}

fn monotonic_ns() -> Result<i64> {
    let t = nix::time::clock_gettime(ClockId::CLOCK_MONOTONIC)?;
    Ok(t.tv_sec() * 1_000_000_000 + t.tv_nsec())
}

/// ns per iteration: the median of three batches started after `after_ns`.
fn measure(target: &mut Spawned, after_ns: i64) -> Result<f64> {
    let mut got = Vec::new();
    while got.len() < 3 {
        let line = target.wait_for_line(Stream::Stdout, "BATCH ", Duration::from_secs(60))?;
        let mut parts = line.split_whitespace().skip(1);
        let start: i64 = parts.next().context("batch start")?.parse()?;
        let ns: f64 = parts.next().context("batch ns")?.parse()?;
        if start > after_ns {
            got.push(ns);
        }
    }
    Ok(median(got))
}

pub fn run(args: &ProbeArgs) -> Result<()> {
    cmd::require_root("cargo xtask bench probe")?;
    tracer::build_release()?;
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("bench.c");
    let bin = dir.path().join("probe_bench");
    fs::write(&src, PROGRAM)?;
    cmd::run(Command::new("gcc").args(["-O2", "-o"]).arg(&bin).arg(&src))
        .context("building the benchmark target (needs gcc and systemtap-sdt-dev)")?;
    let mut target_cmd = Command::new(&bin);
    target_cmd
        .arg(args.iterations.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut target = Spawned::start("probe_bench", &mut target_cmd)?;
    target.wait_for_line(Stream::Stderr, "READY", Duration::from_secs(10))?;
    let pid = target.pid().to_string();

    let mut results: Vec<Vec<f64>> = vec![Vec::new(); Config::ALL.len()];
    for round in 0..args.rounds {
        for (i, config) in Config::ALL.into_iter().enumerate() {
            let mut probe = match config {
                Config::Base => None,
                Config::Usdt | Config::Uprobe | Config::UprobeStepped => {
                    let mut c = Command::new(tracer::binary());
                    c.args(["probe", "add", "--pid", &pid, config.name()])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped());
                    let mut p = Spawned::start("tracer probe add", &mut c)?;
                    p.wait_for_line(Stream::Stderr, tracer::READY_LINE, Duration::from_secs(60))?;
                    Some(p)
                }
            };
            let ns = measure(&mut target, monotonic_ns()?)?;
            if let Some(p) = probe.as_mut() {
                let status = p.stop(Signal::SIGINT, Duration::from_secs(20))?;
                if !status.success() {
                    bail!("tracer probe add failed ({status}): {}", p.output());
                }
            }
            println!(
                "round {}: {:<22} {ns:>10.1} ns/iteration",
                round + 1,
                config.name()
            );
            results[i].push(ns);
        }
    }
    let _ = target.stop(Signal::SIGKILL, Duration::from_secs(5));

    let medians: Vec<f64> = results.iter().cloned().map(median).collect();
    let base = medians[0];
    let mut text = String::new();
    writeln!(
        text,
        "# Cost of a probe hit\n\n`cargo xtask bench probe` ({} rounds, {} iterations per \
         batch, median of 3 batches per round and configuration)\n",
        args.rounds, args.iterations
    )?;
    writeln!(
        text,
        "| attached | probed instruction | ns per iteration (median) | cost per hit | ratio |"
    )?;
    writeln!(text, "|---|---|---|---|---|")?;
    for (config, m) in Config::ALL.into_iter().zip(&medians) {
        writeln!(
            text,
            "| {} | {} | {m:.1} | {} | {} |",
            config.name(),
            config.what(),
            match config {
                Config::Base => "-".to_string(),
                _ => format!("{:.0} ns", m - base),
            },
            ratio_text(*m, base)
        )?;
    }
    println!("\n{text}");
    let out = cmd::workspace_root().join("target/bench");
    fs::create_dir_all(&out)?;
    fs::write(out.join("probe.md"), &text)?;
    println!("(written to {})", out.join("probe.md").display());
    Ok(())
}
