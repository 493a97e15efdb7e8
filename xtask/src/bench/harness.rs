//! What every benchmark shares: a node server pinned to CPU 0, wrk pinned to
//! CPU 1, configurations measured in alternation round by round, the attached
//! tool's own CPU time, how busy the rest of the machine was, and the report.

use std::{
    fmt::Write as _,
    fs,
    io::{Read, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use nix::sys::signal::Signal;

use super::{
    bpftrace, cpu,
    report::{self, FOREIGN_BUSY_CORES, Measured, Series},
    wrk,
};
use crate::{
    cmd,
    node::{self, Script, Scripts},
    procs::{self, Spawned, Stream},
    tracer,
};

/// The server gets CPU 0 and the load generator CPU 1, so they don't steal
/// each other's time; the tool under test is left unpinned, as in real use.
pub const SERVER_CPU: u32 = 0;
pub const WRK_CPU: u32 = 1;
const WARMUP_SECONDS: u32 = 2;
/// Below this many rounds a median says little on these noisy machines.
const MIN_TRUSTWORTHY_ROUNDS: u32 = 5;
/// With the server and wrk each keeping one of the two cores busy, anything
/// else running shows up directly in the numbers.
const BUSY_LOAD: f64 = 0.5;
/// Before each round: time for the previous tool's teardown (unregistering
/// probes), then a window in which nothing of ours runs, to see how busy
/// the machine is without us.
const TEARDOWN: Duration = Duration::from_millis(300);
const QUIET_WINDOW: Duration = Duration::from_millis(500);
/// After the load: the tool is done with its backlog once its CPU time has
/// not moved for this long.
const SETTLE_QUIET: Duration = Duration::from_millis(300);
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(15);

#[derive(Args)]
pub struct RoundArgs {
    /// Rounds per configuration. Rounds alternate configurations (base, A,
    /// B, ..., base, A, B, ...) and the table shows medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Seconds of wrk load per configuration per round.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    pub seconds: u32,
    /// Use target/release/tracer as it is instead of building it first.
    #[arg(long)]
    pub no_build: bool,
    /// Measure only these configurations (comma-separated names, as in the
    /// table), always with the base: e.g. `--only never` for more rounds of
    /// one comparison in the same time.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// The base and the configurations `--only` names (all when it names none).
fn selected<'a>(configs: &'a [Config], only: &[String]) -> Result<Vec<&'a Config>> {
    if let Some(unknown) = only
        .iter()
        .find(|name| !configs.iter().any(|c| c.name == name.as_str()))
    {
        bail!(
            "--only {unknown}: no such configuration; this benchmark has {}",
            configs
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(configs
        .iter()
        .enumerate()
        .filter(|(i, c)| *i == 0 || only.is_empty() || only.iter().any(|n| n == c.name))
        .map(|(_, c)| c)
        .collect())
}

/// What is attached to the server during a configuration's rounds.
pub enum Tool {
    Nothing,
    /// `tracer attach --pid P <args>`, its stdout to /dev/null.
    Attach(&'static [&'static str]),
    /// `tracer agent --pid P --quiet --metrics-listen 127.0.0.1:<free> <args>`.
    Agent(Vec<String>),
    /// `tracer probe add --pid P <args>`, its stdout to /dev/null.
    Probe(&'static [&'static str]),
    /// A logpoint in the server during the load: `tracer logpoint add --pid
    /// P <args>` before it, `tracer logpoint rm --pid P --all` after.
    Logpoint(&'static [&'static str]),
    /// `bpftrace -p P` running `script(P)`; the counter `must_fire` has to be
    /// above 0 when it stops.
    Bpftrace {
        script: fn(u32) -> String,
        must_fire: &'static str,
    },
}

impl Tool {
    fn is_tracer(&self) -> bool {
        matches!(
            self,
            Tool::Attach(_) | Tool::Agent(_) | Tool::Logpoint(_) | Tool::Probe(_)
        )
    }
}

pub struct Config {
    pub name: &'static str,
    pub description: String,
    pub tool: Tool,
    /// The tool traces HTTP: its summary's `http=N` is compared with the
    /// requests wrk completed, so a tool that saw nothing can't pass as cheap.
    pub traces_http: bool,
}

impl Config {
    pub fn base() -> Self {
        Config {
            name: "base",
            description: "nothing attached".into(),
            tool: Tool::Nothing,
            traces_http: false,
        }
    }
}

/// The node server under load.
pub struct Server {
    /// Where its scripts live; the directory also holds the bpftrace scripts
    /// and anything else the benchmark writes (a TLS key, say).
    pub scripts: Scripts,
    pub script: Script,
    /// Extra environment for it (it always gets PORT).
    pub env: Vec<(&'static str, PathBuf)>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// One sentence for the report: what it does per request.
    pub about: &'static str,
}

pub struct Bench {
    /// `cargo xtask bench <id>`; the report goes to target/bench/<id>.md.
    pub id: &'static str,
    pub title: &'static str,
    /// Configurations in measuring order; the first is the base.
    pub configs: Vec<Config>,
    /// Markdown shown under the table (terminal and file).
    pub notes: String,
    /// A line about the results themselves (a target met or missed), if the
    /// benchmark has one.
    pub verdict: fn(&[Series]) -> Option<String>,
}

pub fn run(bench: &Bench, server: Server, args: &RoundArgs) -> Result<()> {
    let what = format!("cargo xtask bench {}", bench.id);
    cmd::require_root(&what)?;
    let configs = selected(&bench.configs, &args.only)?;
    let mut programs = vec![
        ("node", "install Node.js 20"),
        ("wrk", "cargo xtask bootstrap installs it"),
        ("taskset", "Debian package util-linux"),
        ("getconf", "Debian package libc-bin"),
    ];
    if configs
        .iter()
        .any(|c| matches!(c.tool, Tool::Bpftrace { .. }))
    {
        programs.push(("bpftrace", "cargo xtask bootstrap installs it"));
    }
    cmd::require_programs(&programs)?;
    if args.rounds < MIN_TRUSTWORTHY_ROUNDS {
        eprintln!(
            "[bench] warning: {} rounds; use at least {MIN_TRUSTWORTHY_ROUNDS} for medians worth comparing",
            args.rounds
        );
    }
    if configs.iter().any(|c| c.tool.is_tracer()) {
        if args.no_build {
            if !tracer::binary().is_file() {
                bail!(
                    "--no-build: {} does not exist; build it with `cargo build --release -p tracer-user`",
                    tracer::binary().display()
                );
            }
        } else {
            tracer::build_release()?;
        }
    }
    procs::catch_interrupts()?;
    let ticks_per_sec = cpu::clock_ticks_per_sec()?;

    // Before anything of ours runs: how busy is the machine?
    let started = utc_now();
    let machine = MachineBefore::sample()?;
    eprintln!("[bench] {}", machine.text());
    if machine.busy() {
        eprintln!(
            "[bench] warning: the machine is busy with other work: the numbers will be noisy \
             (compare only inside this run, and look at the rounds marked `*`)"
        );
    }

    let port = node::free_port()?;
    let mut server_cmd = server
        .scripts
        .command(&server.script, port, Some(SERVER_CPU));
    server_cmd.envs(server.env.iter().map(|(k, v)| (k, v)));
    // Its log lines are for the probes, not for us.
    server_cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut node_server = Spawned::start("bench server", &mut server_cmd)?;
    node::wait_for_port(&mut node_server, port, Duration::from_secs(15))?;
    let pid = node_server.pid();
    let url = format!("{}://127.0.0.1:{port}/", server.scheme);
    let mut bt_scripts = Vec::new();
    for config in &configs {
        bt_scripts.push(match config.tool {
            Tool::Bpftrace { script, .. } => {
                let path = server.scripts.path(&format!("{}.bt", config.name));
                fs::write(&path, script(pid))
                    .with_context(|| format!("could not write {}", path.display()))?;
                Some(path)
            }
            _ => None,
        });
    }

    eprintln!(
        "[bench] node pid {pid} on CPU {SERVER_CPU}, {url}; wrk -t1 -c50 on CPU {WRK_CPU}; \
         {} rounds x {} s per config: {}",
        args.rounds,
        args.seconds,
        configs
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("[bench] warm-up ({WARMUP_SECONDS} s, not counted)");
    wrk::run(&url, WARMUP_SECONDS, WRK_CPU).context("warm-up run failed")?;

    let mut series: Vec<Series> = configs
        .iter()
        .map(|c| Series {
            name: c.name,
            description: c.description.clone(),
            samples: Vec::new(),
        })
        .collect();
    let run = Round {
        pid,
        url: &url,
        seconds: args.seconds,
        ticks_per_sec,
    };
    for round in 1..=args.rounds {
        for ((config, series), bt_script) in configs.iter().zip(series.iter_mut()).zip(&bt_scripts)
        {
            let sample = run
                .measure(config, bt_script.as_deref())
                .with_context(|| format!("round {round}, config `{}`", config.name))?;
            if let Some(status) = node_server.try_exited()? {
                bail!(
                    "the bench server exited ({status}) during round {round}, config `{}`; its output:\n{}",
                    config.name,
                    node_server.output()
                );
            }
            eprintln!(
                "[bench] round {round}/{} {}",
                args.rounds,
                round_line(config, &sample)
            );
            series.samples.push(sample);
        }
    }

    let table = report::table(&series, args.seconds);
    let (noisy, total) = report::noisy_rounds(&series);
    let noise = format!(
        "{} {noisy} of {total} rounds started while other work kept more than \
         {FOREIGN_BUSY_CORES} cores busy (marked `*` below){}",
        machine.text(),
        if noisy * 2 > total {
            ". Most rounds ran next to other work: on a shared core req/s measures the \
             scheduler's share as much as the cost of tracing (a probe that slows syscalls \
             has been seen to *raise* it), so these ratios are not costs. The tool CPU \
             column is less affected. Rerun on a quiet machine."
        } else if machine.busy() || noisy > 0 {
            ": the machine was busy, so treat small differences as noise."
        } else {
            ": a quiet run."
        }
    );
    let verdict = (bench.verdict)(&series).map_or_else(String::new, |v| format!("{v}\n\n"));
    println!("\n{table}\n{verdict}{}\n\n{noise}", bench.notes);
    let markdown = format!(
        "# {}\n\n\
         Run {started}. node ({}) on CPU {SERVER_CPU}; wrk -t1 -c50 --latency against {}://127.0.0.1:PORT/ \
         on CPU {WRK_CPU}; {} rounds x {} s per config, alternating; medians.\n\n\
         {table}\n{verdict}{}\n\n{noise}\n\n\
         req/s per round, with [cores other work used in the half second before the round]:\n\n{}",
        bench.title,
        server.about,
        server.scheme,
        args.rounds,
        args.seconds,
        bench.notes,
        report::rounds(&series)
    );
    let path = cmd::workspace_root()
        .join("target/bench")
        .join(format!("{}.md", bench.id));
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    fs::write(&path, markdown).with_context(|| format!("could not write {}", path.display()))?;
    eprintln!("[bench] written to {}", path.display());
    Ok(())
}

fn round_line(config: &Config, m: &Measured) -> String {
    let mut line = format!(
        "{:<9} {:>8.0} req/s  p99 {:>6.2} ms",
        config.name,
        m.wrk.requests_per_sec,
        m.wrk.p99_us / 1000.0
    );
    if let Some(us) = m.cpu_us_per_request() {
        let _ = write!(line, "  tool {us:.2} µs/req");
    }
    if let Some(seen) = m.http_seen() {
        let _ = write!(line, "  http seen {:.1}%", seen * 100.0);
    }
    if m.wrk.errors > 0 {
        let _ = write!(line, "  ({} errors!)", m.wrk.errors);
    }
    if m.noisy() {
        let _ = write!(line, "  [machine busy: {:.2} cores]", m.foreign_cores);
    }
    line
}

/// The machine before the benchmark started anything.
struct MachineBefore {
    load: Option<f64>,
    busy_cores: f64,
}

impl MachineBefore {
    fn sample() -> Result<Self> {
        let load = cpu::load_average();
        let busy_cores = cpu::machine_busy_cores(Duration::from_secs(1))?;
        Ok(MachineBefore { load, busy_cores })
    }

    fn busy(&self) -> bool {
        self.load.is_some_and(|l| l > BUSY_LOAD) || self.busy_cores > FOREIGN_BUSY_CORES
    }

    fn text(&self) -> String {
        format!(
            "Before the run: 1-minute load average {}, {:.2} cores busy in the second before.",
            self.load
                .map_or_else(|| "unknown".to_string(), |l| format!("{l:.2}")),
            self.busy_cores
        )
    }
}

/// One benchmark run's fixed parameters.
struct Round<'a> {
    pid: u32,
    url: &'a str,
    seconds: u32,
    ticks_per_sec: u64,
}

/// A running tool and, for the agent, where it serves metrics.
struct Attached {
    process: Spawned,
    metrics_port: Option<u16>,
}

impl Round<'_> {
    /// One round of one configuration: quiet gap, attach, load, detach.
    fn measure(&self, config: &Config, bt_script: Option<&Path>) -> Result<Measured> {
        thread::sleep(TEARDOWN);
        let foreign_cores = cpu::machine_busy_cores(QUIET_WINDOW)?;
        if let Tool::Logpoint(args) = config.tool {
            super::logpoint::add(self.pid, args)?;
        }
        let attached = self.attach(config, bt_script)?;
        let loaded = self.load(config, attached.as_ref());
        if let Tool::Logpoint(_) = config.tool {
            super::logpoint::remove_all(self.pid)?;
        }
        // Detach even when the load failed; the load's error is the one to
        // report then.
        let detached = match attached {
            Some(attached) => detach(config, attached),
            None => Ok(None),
        };
        let (wrk, tool_cpu_us) = loaded?;
        let http_events = detached?;
        Ok(Measured {
            wrk,
            tool_cpu_us,
            http_events,
            foreign_cores,
        })
    }

    fn attach(&self, config: &Config, bt_script: Option<&Path>) -> Result<Option<Attached>> {
        let pid = self.pid;
        Ok(Some(match &config.tool {
            Tool::Nothing | Tool::Logpoint(_) => return Ok(None),
            Tool::Attach(extra) => Attached {
                process: tracer::attach_ready(&[pid], extra, Stdio::null())?,
                metrics_port: None,
            },
            Tool::Agent(extra) => {
                let port = node::free_port()?;
                let mut command = Command::new(tracer::binary());
                command
                    .args(["agent", "--pid", &pid.to_string(), "--quiet"])
                    .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
                    .args(extra)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                let mut agent = Spawned::start("tracer agent", &mut command)?;
                agent.wait_for_line(Stream::Stderr, tracer::READY_LINE, READY_TIMEOUT)?;
                Attached {
                    process: agent,
                    metrics_port: Some(port),
                }
            }
            Tool::Probe(extra) => {
                let mut command = Command::new(tracer::binary());
                command
                    .args(["probe", "add", "--pid", &pid.to_string()])
                    .args(*extra)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                let mut probe = Spawned::start("tracer probe add", &mut command)?;
                probe.wait_for_line(Stream::Stderr, tracer::READY_LINE, READY_TIMEOUT)?;
                Attached {
                    process: probe,
                    metrics_port: None,
                }
            }
            Tool::Bpftrace { .. } => {
                let script = bt_script.context("internal error: no bpftrace script written")?;
                Attached {
                    process: bpftrace::attach_ready(script, pid)?,
                    metrics_port: None,
                }
            }
        }))
    }

    /// wrk's run, and the tool's CPU time from just before it to when the
    /// tool has caught up afterwards.
    fn load(
        &self,
        config: &Config,
        attached: Option<&Attached>,
    ) -> Result<(wrk::Sample, Option<f64>)> {
        let tool_pid = attached.map(|a| a.process.pid());
        // Whatever the tool still does after printing ready (seeding from
        // /proc, say) is setup, not per-request work: wait for it.
        let before = tool_pid
            .map(|pid| cpu::ticks_when_settled(pid, SETTLE_QUIET, SETTLE_LIMIT))
            .transpose()?;
        let sample = wrk::run(self.url, self.seconds, WRK_CPU)?;
        let cpu_us = match (tool_pid, before) {
            (Some(pid), Some(before)) => {
                let after = cpu::ticks_when_settled(pid, SETTLE_QUIET, SETTLE_LIMIT)?;
                Some(after.saturating_sub(before) as f64 * 1e6 / self.ticks_per_sec as f64)
            }
            _ => None,
        };
        if let Some(port) = attached.and_then(|a| a.metrics_port) {
            // After the CPU reading: a scrape is not per-request work.
            check_metrics(port, config.traces_http)?;
        }
        Ok((sample, cpu_us))
    }
}

/// Stops the tool with SIGINT (all of them exit cleanly on it) and checks
/// that it did and that it saw the load, so a tool that crashed or missed
/// its probes can't pass as cheap. Returns the HTTP exchanges it reported.
fn detach(config: &Config, mut attached: Attached) -> Result<Option<u64>> {
    let tool = &mut attached.process;
    let status = tool.stop(Signal::SIGINT, STOP_GRACE)?;
    if !status.success() {
        bail!(
            "it exited with {status} when stopped; its output:\n{}",
            tool.output()
        );
    }
    match &config.tool {
        Tool::Bpftrace { must_fire, .. } => {
            bpftrace::check_fired(&tool.final_stdout(), must_fire)?;
            Ok(None)
        }
        Tool::Attach(_) | Tool::Agent(_) if config.traces_http => {
            let summary = summary_line(tool)?;
            let http = event_count(&summary, "http")
                .with_context(|| format!("could not read the summary `{summary}`"))?;
            Ok(Some(http))
        }
        _ => Ok(None),
    }
}

/// tracer's last stderr line: `tracer: stopped after ... events: k=N ...`.
/// The reader thread may still be catching up with it when the process has
/// exited.
fn summary_line(tool: &Spawned) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let output = tool.output();
        if let Some(line) = output
            .lines()
            .rev()
            .find(|l| l.starts_with("tracer: stopped"))
        {
            return Ok(line.to_string());
        }
        if Instant::now() >= deadline {
            bail!("tracer printed no `tracer: stopped` summary; its output:\n{output}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `N` of `kind=N` in the summary's `events: a=1 b=2.` list; a kind with no
/// events is left out of the list, so it counts 0.
fn event_count(summary: &str, kind: &str) -> Option<u64> {
    let (_, events) = summary.split_once("events: ")?;
    let events = events.split('.').next()?;
    let wanted = format!("{kind}=");
    for item in events.split_whitespace() {
        if let Some(n) = item.strip_prefix(&wanted) {
            return n.parse().ok();
        }
    }
    Some(0)
}

/// Scrapes the agent's /metrics once and checks it has what the load must
/// have produced.
fn check_metrics(port: u16, traces_http: bool) -> Result<()> {
    let body = scrape(port).with_context(|| format!("scraping 127.0.0.1:{port}/metrics failed"))?;
    let wanted = if traces_http {
        "tracer_http_requests_total{"
    } else {
        "tracer_events_total{"
    };
    if !body.contains(wanted) {
        bail!("the agent's /metrics has no `{wanted}` series after the load:\n{body}");
    }
    Ok(())
}

fn scrape(port: u16) -> Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("answered `{status}`");
    }
    Ok(response)
}

/// `2026-11-27 00:15 UTC`, without a date library.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_text(secs)
}

fn utc_text(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts() {
        let line = "tracer: stopped after 4.0s (interrupted). events: http=49942 tcp_accept=51 \
                    tcp_close=51. lost: 0 (ring=0, decode=0, http parse=0)";
        assert_eq!(event_count(line, "http"), Some(49942));
        assert_eq!(event_count(line, "tcp_close"), Some(51));
        assert_eq!(event_count(line, "log"), Some(0));
        let none = "tracer: stopped after 1.0s (interrupted). events: none. lost: 0 (ring=0)";
        assert_eq!(event_count(none, "http"), Some(0));
        assert_eq!(event_count("garbage", "http"), None);
    }

    #[test]
    fn dates() {
        assert_eq!(utc_text(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_text(1_795_742_100), "2026-11-27 01:15 UTC");
    }
}
