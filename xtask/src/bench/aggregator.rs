//! `cargo xtask bench ingest|grep|tail`: the aggregator's benchmarks
//! (issue 4). Each drives the real `tracer aggregator` binary; the load is
//! built by `tracer-user/examples/aggregator_load.rs` with the real `Event`
//! types (JSON, zstd), like agents send it. Every round checks its counts
//! exactly, so a fast wrong answer fails the run. Results go to the
//! terminal and to target/bench/<name>.md, with how busy the machine was.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use nix::sys::signal::Signal;

use super::{cpu, report::median};
use crate::{
    cmd,
    node::{self, Script, Scripts},
    procs::{Spawned, Stream},
    tracer,
};

/// The issue's aims.
pub(super) const INGEST_AIM_EVENTS_PER_SEC: f64 = 500_000.0;
pub(super) const GREP_AIM_BYTES_PER_SEC_PER_CORE: f64 = 1e9;
const TAIL_AIM_P99_MS: f64 = 100.0;

const STOP_GRACE: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct IngestArgs {
    /// Rounds (each on a fresh, empty store); the table shows medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Events per round (whole batches of 2000, as agents cut them).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Concurrent HTTP senders (agents).
    #[arg(long, default_value_t = 4)]
    senders: u32,
    /// Hosts the batches come from.
    #[arg(long, default_value_t = 8)]
    hosts: u32,
    /// Use the binaries in target/release as they are.
    #[arg(long)]
    no_build: bool,
}

#[derive(Args)]
pub struct GrepArgs {
    /// Rounds over the patterns; the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Log lines in the store.
    #[arg(long, default_value_t = 10_000_000)]
    lines: u64,
    /// Hosts the lines come from.
    #[arg(long, default_value_t = 8)]
    hosts: u32,
    /// Keep the loaded store here and reuse it when it already holds
    /// `--lines` lines (loading 10M lines takes minutes).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Use the binaries in target/release as they are.
    #[arg(long)]
    no_build: bool,
}

#[derive(Args)]
pub struct TailArgs {
    /// Seconds of measured lines.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// Lines per second node writes.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Use the binaries in target/release as they are.
    #[arg(long)]
    no_build: bool,
}

pub(super) fn load_gen() -> PathBuf {
    cmd::workspace_root().join("target/release/examples/aggregator_load")
}

pub(super) fn build(no_build: bool) -> Result<()> {
    if no_build {
        return Ok(());
    }
    tracer::build_release()?;
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "tracer-user",
        "--example",
        "aggregator_load",
    ]))
}

/// The number after `"key":` in a JSON line (the load generator's output).
pub(super) fn json_num(text: &str, key: &str) -> Result<f64> {
    let pat = format!("\"{key}\":");
    let at = text
        .find(&pat)
        .with_context(|| format!("no {key} in {text:?}"))?;
    let rest = &text[at + pat.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .with_context(|| format!("{key} in {text:?} is not a number"))
}

/// A running `tracer aggregator` on a free loopback port.
pub(super) struct Aggregator {
    proc: Spawned,
    pub(super) url: String,
}

impl Aggregator {
    fn start(data: &Path, token_file: &Path) -> Result<Self> {
        Self::start_on(&[OsStr::new("--data"), data.as_os_str()], token_file)
    }

    /// An aggregator on the store `store_args` name (`--data DIR` or
    /// `--store URL ...`).
    pub(super) fn start_on(store_args: &[&OsStr], token_file: &Path) -> Result<Self> {
        let mut command = Command::new(tracer::binary());
        command
            .arg("aggregator")
            .args(store_args)
            .arg("--token-file")
            .arg(token_file)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Spawned::start("tracer aggregator", &mut command)?;
        let line = proc.wait_for_line(Stream::Stderr, "listening on", Duration::from_secs(60))?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .context("no URL in the aggregator's listening line")?
            .to_string();
        Ok(Self { proc, url })
    }

    /// SIGKILL (a query it is busy with would delay a graceful stop).
    pub(super) fn kill(mut self) {
        let _ = self.proc.stop(Signal::SIGKILL, STOP_GRACE);
    }

    pub(super) fn cpu_ticks(&self) -> Result<u64> {
        cpu::process_ticks(self.proc.pid())
    }

    pub(super) fn stop(mut self) -> Result<()> {
        self.proc.stop(Signal::SIGTERM, STOP_GRACE)?;
        Ok(())
    }
}

pub(super) fn token_file(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("token");
    fs::write(&path, "bench-token-0123456789abcdef\n")?;
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(path)
}

/// The machine before a run: 1-minute load and cores busy in the last
/// half second (nothing of ours running).
pub(super) fn machine_state() -> String {
    let busy = cpu::machine_busy_cores(Duration::from_millis(500)).unwrap_or(f64::NAN);
    format!(
        "load average {:.2}, {busy:.2} cores busy before the run",
        cpu::load_average().unwrap_or(f64::NAN)
    )
}

pub(super) fn now_text() -> String {
    cmd::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Prints the report and writes it to target/bench/<name>.md.
pub(super) fn publish(name: &str, text: &str) -> Result<()> {
    println!("\n{text}");
    let dir = cmd::workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.md"));
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("(written to {})", path.display());
    Ok(())
}

pub(super) fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Ingest: events acknowledged per second by the real aggregator over HTTP.
pub fn ingest(args: &IngestArgs) -> Result<()> {
    build(args.no_build)?;
    let ticks = cpu::clock_ticks_per_sec()? as f64;
    let before = machine_state();
    let started = now_text();
    let mut rows = Vec::new();
    for round in 1..=args.rounds {
        let tmp = tempfile::Builder::new()
            .prefix("tracer-bench-ingest-")
            .tempdir()?;
        let token = token_file(tmp.path())?;
        let data = tmp.path().join("data");
        let agg = Aggregator::start(&data, &token)?;
        let load = cpu::load_average().unwrap_or(f64::NAN);
        let cpu0 = agg.cpu_ticks()?;
        let out = cmd::output(
            Command::new(load_gen())
                .arg("ingest")
                .args(["--url", &agg.url])
                .arg("--token-file")
                .arg(&token)
                .args(["--events", &args.events.to_string()])
                .args(["--senders", &args.senders.to_string()])
                // One batch at a time per sender, as this benchmark has
                // always measured (its results stay comparable); `bench
                // clickhouse --in-flight` sends like agents with a backlog.
                .args(["--in-flight", "1"])
                .args(["--hosts", &args.hosts.to_string()]),
        )?;
        let cpu_s = (agg.cpu_ticks()? - cpu0) as f64 / ticks;
        agg.stop()?;
        let acked = json_num(&out, "events")?;
        let count = json_num(
            &cmd::output(
                Command::new(load_gen())
                    .arg("count")
                    .arg("--data")
                    .arg(&data),
            )?,
            "events",
        )?;
        if count != acked {
            bail!("round {round}: {acked} events acknowledged but {count} stored");
        }
        let rate = json_num(&out, "events_per_sec")?;
        let row = [
            rate,
            cpu_s * 1e6 / acked,
            json_num(&out, "batch_ms_p50")?,
            json_num(&out, "batch_ms_p99")?,
            load,
        ];
        println!(
            "round {round}: {rate:.0} events/s, aggregator CPU {:.2} µs/event, batch p50 {:.0} ms p99 {:.0} ms (stored {count}, exact; load {load:.2})",
            row[1], row[2], row[3]
        );
        rows.push(row);
    }
    let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
    let rate = col(0);
    let cpu_us = col(1);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "## Aggregator ingest ({started})\n\n\
         `cargo xtask bench ingest --rounds {} --events {} --senders {} --hosts {}`: \
         the real `tracer aggregator` on 127.0.0.1, a fresh store per round; \
         {} HTTP senders POST zstd batches of 2000 events (85% log lines, 10% \
         http, 5% tcp; {} hosts), all built and compressed before the clock \
         starts; the rate is events acknowledged (committed, `synchronous=FULL`) \
         over the time from the first send to the last answer. After each round \
         the store is reopened and its event count must equal the events \
         acknowledged. Machine: {before}.\n",
        args.rounds, args.events, args.senders, args.hosts, args.senders, args.hosts
    );
    let _ = writeln!(
        text,
        "| median events/s | aggregator CPU µs/event | batch answer p50 | batch answer p99 |\n\
         |---:|---:|---:|---:|\n| {rate:.0} | {cpu_us:.2} | {:.0} ms | {:.0} ms |\n",
        col(2),
        col(3)
    );
    let _ = writeln!(text, "Rounds (events/s, CPU µs/event, load average):");
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(text, "- {}: {:.0}, {:.2}, {:.2}", i + 1, r[0], r[1], r[4]);
    }
    let _ = writeln!(
        text,
        "\n**{rate:.0} events/s** (aim ≥ {INGEST_AIM_EVENTS_PER_SEC:.0}: {}). At \
         {cpu_us:.2} µs of aggregator CPU per event, both cores of this machine \
         would ingest at most {:.0} events/s with nothing else running (the \
         senders share the machine).",
        met(rate >= INGEST_AIM_EVENTS_PER_SEC),
        2e6 / cpu_us
    );
    publish("ingest", &text)
}

/// The grep needles planted in `lines` generated log lines: (name, regex,
/// case-insensitive, how many lines carry it).
pub(super) fn planted_needles(lines: u64) -> Result<Vec<(String, String, bool, u64)>> {
    let planted = cmd::output(
        Command::new(load_gen())
            .arg("planted")
            .args(["--lines", &lines.to_string()]),
    )?;
    // [{"count":N,"i":B,"name":"..","re":".."}, ...]
    planted
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split("},{")
        .map(|obj| {
            let field = |k: &str| -> Result<String> {
                let pat = format!("\"{k}\":\"");
                let at = obj.find(&pat).context("planted: bad output")? + pat.len();
                let rest = &obj[at..];
                Ok(
                    rest[..rest.find("\",").or(rest.find('"')).unwrap_or(rest.len())]
                        .replace("\\\\", "\\"),
                )
            };
            Ok((
                field("name")?,
                field("re")?,
                obj.contains("\"i\":true"),
                json_num(obj, "count")? as u64,
            ))
        })
        .collect()
}

/// One timed grep.
struct GrepSample {
    seconds: f64,
    cpu_s: f64,
}

/// Grep: bytes of log text scanned per second and per core.
pub fn grep(args: &GrepArgs) -> Result<()> {
    build(args.no_build)?;
    let ticks = cpu::clock_ticks_per_sec()? as f64;
    let tmp = tempfile::Builder::new()
        .prefix("tracer-bench-grep-")
        .tempdir()?;
    let data = args.data.clone().unwrap_or_else(|| tmp.path().join("data"));
    let token = token_file(tmp.path())?;
    let lines_file = data.join("bench-lines.json");
    let reuse = fs::read_to_string(&lines_file)
        .ok()
        .filter(|t| json_num(t, "lines").ok() == Some(args.lines as f64));
    let load_note;
    let loaded = match reuse {
        Some(t) => {
            load_note = format!("reused the store in {}", data.display());
            t
        }
        None => {
            if data.exists() {
                fs::remove_dir_all(&data)?;
            }
            println!(
                "loading {} log lines through Store::ingest into {} ...",
                args.lines,
                data.display()
            );
            let out = cmd::output(
                Command::new(load_gen())
                    .arg("load-store")
                    .arg("--data")
                    .arg(&data)
                    .args(["--lines", &args.lines.to_string()])
                    .args(["--hosts", &args.hosts.to_string()]),
            )?;
            fs::write(&lines_file, &out)?;
            load_note = format!(
                "loaded through `Store::ingest` directly (no HTTP), {:.0} lines/s",
                json_num(&out, "lines_per_sec")?
            );
            out
        }
    };
    let text_bytes = json_num(&loaded, "text_bytes")?;
    let needles = planted_needles(args.lines)?;
    let before = machine_state();
    let started = now_text();
    let agg = Aggregator::start(&data, &token)?;
    let run = |re: &str, ci: bool, count: bool| -> Result<(u64, GrepSample)> {
        let mut c = Command::new(tracer::binary());
        c.args(["grep", "--aggregator", &agg.url])
            .arg("--token-file")
            .arg(&token);
        if ci {
            c.arg("-i");
        }
        if count {
            c.arg("-c");
        }
        c.arg("--").arg(re);
        let cpu0 = agg.cpu_ticks()?;
        let t = Instant::now();
        let out = cmd::output(&mut c)?;
        let seconds = t.elapsed().as_secs_f64();
        let cpu_s = (agg.cpu_ticks()? - cpu0) as f64 / ticks;
        let n = if count {
            out.trim().parse().context("grep -c printed no number")?
        } else {
            out.lines().count() as u64
        };
        Ok((n, GrepSample { seconds, cpu_s }))
    };
    // (needle, mode) -> samples; the patterns alternate, so no query is a
    // repeat of the one before (the store caches only the last grep).
    let mut samples: Vec<Vec<GrepSample>> = Vec::new();
    let modes = [true, false];
    for round in 1..=args.rounds {
        let mut k = 0;
        for count in modes {
            for (name, re, ci, expect) in &needles {
                let (n, s) = run(re, *ci, count)?;
                if n != *expect {
                    bail!("{name} ({re}): {n} lines, but {expect} were planted");
                }
                println!(
                    "round {round}: {name}{} {re:?}: {n} lines (exact), {:.3} s, aggregator CPU {:.3} s",
                    if count { " -c" } else { "" },
                    s.seconds,
                    s.cpu_s
                );
                if samples.len() <= k {
                    samples.push(Vec::new());
                }
                samples[k].push(s);
                k += 1;
            }
        }
    }
    agg.stop()?;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "## Aggregator grep ({started})\n\n\
         `cargo xtask bench grep --lines {} --rounds {}`: {} log lines from {} \
         hosts ({:.0} MB of log text, {:.0} bytes a line), {load_note}; then \
         the real `tracer aggregator` on that store, and `tracer grep` over \
         HTTP for each pattern (`-c`, then listing every line), patterns \
         alternating. Every answer must be exactly the planted count. GB/s is \
         log text over the wall time of the whole command (process start, \
         HTTP, SQL for the matches); per core is log text over the \
         aggregator's CPU time for the query. Machine: {before}.\n",
        args.lines,
        args.rounds,
        args.lines,
        args.hosts,
        text_bytes / 1e6,
        text_bytes / args.lines as f64
    );
    let _ = writeln!(
        text,
        "| pattern | matches | median wall | GB/s (wall) | GB/s per core (CPU) |\n|---|---:|---:|---:|---:|"
    );
    let mut k = 0;
    let mut worst = f64::INFINITY;
    for count in modes {
        for (name, re, ci, expect) in &needles {
            let s = &samples[k];
            let wall = median(s.iter().map(|x| x.seconds).collect());
            let cpu_s = median(s.iter().map(|x| x.cpu_s).collect());
            let per_core = text_bytes / cpu_s.max(1e-9) / 1e9;
            worst = worst.min(per_core);
            let _ = writeln!(
                text,
                "| {name}{} `{re}`{} | {expect} | {wall:.3} s | {:.2} | {per_core:.2} |",
                if count { " -c" } else { "" },
                if *ci { " -i" } else { "" },
                text_bytes / wall / 1e9
            );
            k += 1;
        }
    }
    let _ = writeln!(
        text,
        "\nSlowest per core: **{worst:.2} GB/s** (aim ≥ {:.0} GB/s per core: {}). \
         The aggregator's CPU time is read from /proc in 10 ms ticks, so short \
         queries are coarse.",
        GREP_AIM_BYTES_PER_SEC_PER_CORE / 1e9,
        met(worst * 1e9 >= GREP_AIM_BYTES_PER_SEC_PER_CORE)
    );
    publish("grep", &text)
}

const TAIL_WRITER: Script = Script {
    name: "tail-writer.js",
    source: r#"// Writes a line with its wall-clock write time (µs since the epoch)
// every 1000/RATE ms until killed.
const every = 1000 / Number(process.env.RATE || 200);
let seq = 0;
setInterval(() => {
  const us = Math.round((performance.timeOrigin + performance.now()) * 1000);
  console.log(`tail-bench seq=${seq++} t=${us} pad=abcdefghijklmnopqrstuvwxyz`);
}, every);
"#,
};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The digits after `key` in `line`.
fn field_after(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    let rest = &line[at..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Tail: from node's write() to the line read from `tracer tail -f`.
pub fn tail(args: &TailArgs) -> Result<()> {
    cmd::require_root("cargo xtask bench tail")?;
    cmd::require_programs(&[("node", "install Node.js 20")])?;
    build(args.no_build)?;
    let before = machine_state();
    let started = now_text();
    let tmp = tempfile::Builder::new()
        .prefix("tracer-bench-tail-")
        .tempdir()?;
    let token = token_file(tmp.path())?;
    let agg = Aggregator::start(&tmp.path().join("data"), &token)?;
    let scripts = Scripts::write(&[TAIL_WRITER])?;
    let out = fs::File::create(tmp.path().join("node.out"))?;
    let mut writer = Command::new("node");
    writer
        .arg(scripts.path(TAIL_WRITER.name))
        .env("RATE", args.rate.to_string())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null());
    let mut node = Spawned::start("node tail-writer", &mut writer)?;
    let mut agent_cmd = Command::new(tracer::binary());
    agent_cmd
        .args(["agent", "--pid", &node.pid().to_string()])
        .args(["--aggregator", &agg.url])
        .arg("--token-file")
        .arg(&token)
        .arg("--spool")
        .arg(tmp.path().join("spool"))
        .args(["--quiet", "--probes", "logs"])
        .args([
            "--metrics-listen",
            &format!("127.0.0.1:{}", node::free_port()?),
        ])
        .args(["--host", "bench-host"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut agent = Spawned::start("tracer agent", &mut agent_cmd)?;
    agent.wait_for_line(Stream::Stderr, tracer::READY_LINE, Duration::from_secs(60))?;
    // `tracer tail -f --json`, read here line by line as it prints them.
    let mut tail = Command::new(tracer::binary())
        .args(["tail", "-f", "--json", "-n", "0", "--kind", "log"])
        .args(["--aggregator", &agg.url])
        .arg("--token-file")
        .arg(&token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting tracer tail -f")?;
    let stdout = tail.stdout.take().context("tail stdout")?;
    let (tx, rx) = mpsc::channel::<(u64, String)>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((now_us(), line)).is_err() {
                break;
            }
        }
    });
    // Let the first batches through, then measure lines written from now.
    thread::sleep(Duration::from_secs(2));
    let from_us = now_us();
    let until = Instant::now() + Duration::from_secs(u64::from(args.seconds));
    let mut got: Vec<(u64, u64)> = Vec::new(); // (seq, latency µs)
    while Instant::now() < until + Duration::from_secs(2) {
        let Ok((recv, line)) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let (Some(seq), Some(t)) = (field_after(&line, "seq="), field_after(&line, " t=")) else {
            continue;
        };
        if t >= from_us && t < from_us + u64::from(args.seconds) * 1_000_000 {
            got.push((seq, recv.saturating_sub(t)));
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    agent.stop(Signal::SIGINT, STOP_GRACE)?;
    node.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    agg.stop()?;
    if got.is_empty() {
        bail!("no line reached `tracer tail -f`");
    }
    got.sort_unstable();
    let (first, last) = (got[0].0, got[got.len() - 1].0);
    let missing = (last - first + 1) - got.len() as u64;
    let mut lat: Vec<f64> = got.iter().map(|g| g.1 as f64 / 1e3).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    let (p50, p99, max) = (pct(0.5), pct(0.99), lat[lat.len() - 1]);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "## Tail latency ({started})\n\n\
         `cargo xtask bench tail --seconds {} --rate {}`: a node process writes a \
         line with its wall-clock time every {:.1} ms (console.log to a file); \
         `tracer agent --pid P --probes logs` forwards to `tracer aggregator` on \
         127.0.0.1; `tracer tail -f --json --kind log` prints it; the latency is \
         the time this benchmark read the line from tail's stdout minus the time \
         written in it (one machine, one clock). Machine: {before}.\n\n\
         | lines | p50 | p99 | max | missing |\n|---:|---:|---:|---:|---:|\n\
         | {} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms | {missing} |\n\n\
         **p99 {p99:.1} ms** (aim ≤ {TAIL_AIM_P99_MS:.0} ms: {}).",
        args.seconds,
        args.rate,
        1000.0 / f64::from(args.rate),
        got.len(),
        met(p99 <= TAIL_AIM_P99_MS && missing == 0)
    );
    publish("tail", &text)
}
