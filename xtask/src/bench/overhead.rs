//! `cargo xtask bench overhead`: requests/s and p99 of a minimal node http
//! server with nothing attached vs tracer (all probes, each family alone) vs
//! bpftrace, measured round-robin in one run.

use std::{fs, process::Stdio, thread, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use nix::sys::signal::Signal;

use super::{
    bpftrace,
    report::{self, Series},
    wrk::{self, Sample},
};
use crate::{
    cmd,
    node::{self, BENCH_SERVER, Scripts},
    procs::{self, Spawned},
    tracer,
};

/// The server gets CPU 0 and the load generator CPU 1, so they don't steal
/// each other's time; the tracer itself is left unpinned, as in real use.
const SERVER_CPU: u32 = 0;
const WRK_CPU: u32 = 1;
const WARMUP_SECONDS: u32 = 2;
/// Below this many rounds a median says little on these noisy machines.
const MIN_TRUSTWORTHY_ROUNDS: u32 = 5;

#[derive(Args)]
pub struct OverheadArgs {
    /// Rounds per configuration. Rounds alternate configurations (base, full,
    /// logs, ..., base, full, ...) and the table shows medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Seconds of wrk load per configuration per round.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// Configurations to measure, comma-separated (`base` is always measured:
    /// the ratios need it).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "base,full,logs,tcp,runtime,bpftrace"
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
    /// An equivalent bpftrace script counting into maps.
    Bpftrace,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Base => "base",
            Config::Full => "full",
            Config::Logs => "logs",
            Config::Tcp => "tcp",
            Config::Runtime => "runtime",
            Config::Bpftrace => "bpftrace",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Config::Base => "nothing attached",
            Config::Full => "tracer attach, all probes",
            Config::Logs => "tracer attach --probes logs",
            Config::Tcp => "tracer attach --probes tcp",
            Config::Runtime => "tracer attach --probes runtime",
            Config::Bpftrace => "bpftrace: write/writev, TCP state and retransmit, uv__io_poll",
        }
    }

    fn tracer_args(self) -> Option<&'static [&'static str]> {
        match self {
            Config::Full => Some(&[]),
            Config::Logs => Some(&["--probes", "logs"]),
            Config::Tcp => Some(&["--probes", "tcp"]),
            Config::Runtime => Some(&["--probes", "runtime"]),
            Config::Base | Config::Bpftrace => None,
        }
    }
}

/// Whatever is attached to the server during one measurement.
enum Attached {
    Nothing,
    Tracer(Spawned),
    Bpftrace(Spawned),
}

impl Attached {
    /// Stops the tool with SIGINT (both exit cleanly on it) and checks that
    /// it did, so a tool that crashed mid-round can't pass as "cheap".
    fn detach(self) -> Result<()> {
        let (mut tool, is_bpftrace) = match self {
            Attached::Nothing => return Ok(()),
            Attached::Tracer(tool) => (tool, false),
            Attached::Bpftrace(tool) => (tool, true),
        };
        let status = tool.stop(Signal::SIGINT, Duration::from_secs(15))?;
        if !status.success() {
            bail!(
                "it exited with {status} when stopped; its output:\n{}",
                tool.output()
            );
        }
        if is_bpftrace {
            bpftrace::check_fired(&tool.final_stdout())?;
        }
        Ok(())
    }
}

pub fn run(args: &OverheadArgs) -> Result<()> {
    cmd::require_root("cargo xtask bench overhead")?;
    let configs = with_base_first(&args.configs);
    let mut programs = vec![
        ("node", "install Node.js 20"),
        ("wrk", "cargo xtask bootstrap installs it"),
        ("taskset", "Debian package util-linux"),
    ];
    if configs.contains(&Config::Bpftrace) {
        programs.push(("bpftrace", "cargo xtask bootstrap installs it"));
    }
    cmd::require_programs(&programs)?;
    if args.rounds < MIN_TRUSTWORTHY_ROUNDS {
        eprintln!(
            "[bench] warning: {} rounds; use at least {MIN_TRUSTWORTHY_ROUNDS} for medians worth comparing",
            args.rounds
        );
    }
    if configs.iter().any(|c| c.tracer_args().is_some()) {
        tracer::build_release()?;
    }
    procs::catch_interrupts()?;
    let load_before = load_average();
    if load_before.is_some_and(|load| load > BUSY_LOAD) {
        eprintln!(
            "[bench] warning: load average {:.2} before starting: other work on this machine \
             will make the numbers noisy",
            load_before.unwrap_or_default()
        );
    }

    let scripts = Scripts::write(&[BENCH_SERVER])?;
    let port = node::free_port()?;
    let mut server_cmd = scripts.command(&BENCH_SERVER, port, Some(SERVER_CPU));
    // Its log lines are for the probes, not for us.
    server_cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut server = Spawned::start("bench server", &mut server_cmd)?;
    node::wait_for_port(&mut server, port, Duration::from_secs(15))?;
    let pid = server.pid();
    let bpftrace_script = scripts.path("overhead.bt");
    fs::write(&bpftrace_script, bpftrace::script(pid))
        .with_context(|| format!("could not write {}", bpftrace_script.display()))?;

    eprintln!(
        "[bench] node pid {pid} on CPU {SERVER_CPU}, port {port}; wrk -t1 -c50 on CPU {WRK_CPU}; \
         {} rounds x {} s per config: {}",
        args.rounds,
        args.seconds,
        configs
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("[bench] warm-up ({WARMUP_SECONDS} s, not counted)");
    wrk::run(port, WARMUP_SECONDS, WRK_CPU).context("warm-up run failed")?;

    let mut series: Vec<Series> = configs
        .iter()
        .map(|c| Series {
            name: c.name(),
            description: c.description(),
            samples: Vec::new(),
        })
        .collect();
    for round in 1..=args.rounds {
        for (config, series) in configs.iter().zip(series.iter_mut()) {
            let sample = measure(*config, pid, port, args.seconds, &bpftrace_script)
                .with_context(|| format!("round {round}, config `{}`", config.name()))?;
            if let Some(status) = server.try_exited()? {
                bail!(
                    "the bench server exited ({status}) during round {round}, config `{}`; its output:\n{}",
                    config.name(),
                    server.output()
                );
            }
            eprintln!(
                "[bench] round {round}/{} {:<8} {:>9.0} req/s  p99 {:>6.2} ms{}",
                args.rounds,
                config.name(),
                sample.requests_per_sec,
                sample.p99_us / 1000.0,
                if sample.errors > 0 {
                    format!("  ({} errors!)", sample.errors)
                } else {
                    String::new()
                }
            );
            series.samples.push(sample);
        }
    }

    let table = report::table(&series);
    println!("\n{table}");
    // Our own load (server + wrk) keeps it near 2 afterwards, so only the
    // value from before says whether something else was running.
    let load = format!(
        "1-minute load average before the run: {}.",
        load_text(load_before)
    );
    let path = cmd::workspace_root().join("target/bench/overhead.md");
    let markdown = format!(
        "# Overhead: node http server under wrk\n\n\
         node (`res.end('hello world')`, one log line per 100 requests) on CPU {SERVER_CPU}; \
         wrk -t1 -c50 --latency on CPU {WRK_CPU}; {} rounds x {} s per config, alternating; \
         medians. {load}\n\n{table}\nreq/s per round:\n\n{}",
        args.rounds,
        args.seconds,
        report::rounds(&series)
    );
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    fs::write(&path, markdown).with_context(|| format!("could not write {}", path.display()))?;
    eprintln!("[bench] written to {}", path.display());
    Ok(())
}

/// With the server and wrk each keeping one of the two cores busy, anything
/// else running shows up directly in the numbers.
const BUSY_LOAD: f64 = 0.5;

fn load_average() -> Option<f64> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn load_text(load: Option<f64>) -> String {
    load.map_or_else(|| "unknown".to_string(), |l| format!("{l:.2}"))
}

fn with_base_first(configs: &[Config]) -> Vec<Config> {
    let mut out = vec![Config::Base];
    for config in configs {
        if !out.contains(config) {
            out.push(*config);
        }
    }
    out
}

/// One round of one configuration: attach, load, detach.
fn measure(
    config: Config,
    pid: u32,
    port: u16,
    seconds: u32,
    bpftrace_script: &std::path::Path,
) -> Result<Sample> {
    let attached = match (config, config.tracer_args()) {
        (_, Some(extra)) => Attached::Tracer(tracer::attach_ready(&[pid], extra, Stdio::null())?),
        (Config::Bpftrace, None) => Attached::Bpftrace(bpftrace::attach_ready(bpftrace_script)?),
        _ => Attached::Nothing,
    };
    let sample = wrk::run(port, seconds, WRK_CPU)?;
    attached.detach()?;
    // Let the previous tool's teardown (unregistering probes) finish before
    // the next configuration is measured.
    thread::sleep(Duration::from_millis(300));
    Ok(sample)
}
