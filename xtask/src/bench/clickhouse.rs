//! `cargo xtask bench clickhouse`: the ClickHouse store against the SQLite
//! store (issue 13), in one run on one machine, so the ratios hold even
//! when the machine's speed swings. Three parts, each bounded (a few
//! minutes), each choosable with `--parts`:
//!
//! - **ingest**: events/s and CPU per event through the real `tracer
//!   aggregator` over HTTP, rounds alternating SQLite, ClickHouse behind
//!   one aggregator, ClickHouse behind two (senders split between them);
//! - **grep**: `tracer grep` over the same generated log lines stored in
//!   each backend (loaded through `Store::ingest_many` directly);
//! - **growth**: ingest rate into an empty store, then again after the
//!   store was filled to `--grow-to` events;
//! - **history**: the reads a user makes of recent events (a window, a
//!   grep count, a tail's start, an idle `tail -f`) on a ClickHouse store,
//!   then again once `batches` holds `--history-batches` rows of the month
//!   before (many hosts' small batches), and the store
//!   `--history-exchanges` older exchanges of the same hosts; and a trace
//!   looked up with no time, as the web UI's trace view does.
//!
//! The ClickHouse server is the tests' own (`test_server.rs`: Debian's
//! 18.16, its own directory and ports), started through
//! `aggregator_load clickhouse-server` and stopped at the end. Results go
//! to the terminal and to target/bench/clickhouse.md.

use std::{
    ffi::{OsStr, OsString},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{
    aggregator::{
        Aggregator, GREP_AIM_BYTES_PER_SEC_PER_CORE, INGEST_AIM_EVENTS_PER_SEC, build, json_num,
        load_gen, machine_state, met, now_text, planted_needles, publish, token_file,
    },
    cpu,
    report::median,
};
use crate::{
    cmd,
    procs::{Spawned, Stream},
    tracer,
};

#[derive(Args)]
pub struct ClickhouseArgs {
    /// Which parts to run, comma-separated: ingest, grep, growth, history.
    #[arg(
        long,
        default_value = "ingest,grep,growth,history",
        value_delimiter = ','
    )]
    parts: Vec<String>,
    /// Ingest rounds (each configuration once per round, on a fresh
    /// store); the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Events per ingest round (whole batches of 2000, as agents cut them).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Concurrent HTTP senders (agents), split evenly over the aggregators.
    #[arg(long, default_value_t = 8)]
    senders: u32,
    /// Batches each sender has in flight at once, as an agent with a
    /// backlog sends them (`forward::IN_FLIGHT`); 1: one at a time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    in_flight: u32,
    /// Hosts the batches come from.
    #[arg(long, default_value_t = 8)]
    hosts: u32,
    /// Log lines in each backend for the grep part.
    #[arg(long, default_value_t = 10_000_000)]
    grep_lines: u64,
    /// Rounds over the grep patterns; the table shows medians.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    grep_rounds: u32,
    /// Seconds one grep may take; a pattern that takes longer is reported
    /// as such and not asked again.
    #[arg(long, default_value_t = 60)]
    grep_timeout: u32,
    /// Events in the store before the growth part's second measurement.
    #[arg(long, default_value_t = 10_000_000)]
    grow_to: u64,
    /// The stores the growth part measures, comma-separated: sqlite,
    /// clickhouse (one alone halves its time).
    #[arg(long, default_value = "sqlite,clickhouse", value_delimiter = ',')]
    growth_stores: Vec<String>,
    /// Spread the growth part's load over this many days of event time
    /// (an equal share each day) and measure the grown store on the day
    /// after, as a store that grew over days is written; 0: the whole
    /// load minutes apart, in the same day as both measurements. On
    /// ClickHouse, whose `events` is partitioned by day, 0 measures what a
    /// day's partition of that size costs, N what the store's size does.
    #[arg(long, default_value_t = 0)]
    growth_days: u64,
    /// Rows of older batches the history part adds before its second
    /// measurement (10M: 50 hosts' agents, a batch every 50 ms each, for
    /// under three hours).
    #[arg(long, default_value_t = 10_000_000)]
    history_batches: u64,
    /// Older HTTP exchanges the history part adds too (each a row of
    /// `http_index` and `http_keys` and two of `events`), of the load's
    /// hosts over the same month.
    #[arg(long, default_value_t = 10_000_000)]
    history_exchanges: u64,
    /// Use the binaries in target/release as they are.
    #[arg(long)]
    no_build: bool,
}

/// A clickhouse-server of the benchmark's own (`aggregator_load
/// clickhouse-server`, which stops it when it is stopped).
struct Server {
    proc: Spawned,
    http_port: u16,
    pid: u32,
    dir: PathBuf,
    password_file: PathBuf,
}

impl Server {
    fn start(tmp: &Path) -> Result<Self> {
        let password_file = tmp.join("clickhouse-password");
        let mut command = Command::new(load_gen());
        command
            .arg("clickhouse-server")
            .arg("--password-file")
            .arg(&password_file)
            .args(["--tag", "bench"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proc = Spawned::start("clickhouse-server", &mut command)?;
        let line = proc.wait_for_line(Stream::Stdout, "\"store\"", Duration::from_secs(60))?;
        let dir = line
            .split("\"dir\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .context("no dir in the server's line")?;
        Ok(Self {
            http_port: json_num(&line, "http_port")? as u16,
            pid: json_num(&line, "pid")? as u32,
            dir: PathBuf::from(dir),
            proc,
            password_file,
        })
    }

    fn url(&self, database: &str) -> String {
        format!("clickhouse://127.0.0.1:{}/{database}", self.http_port)
    }

    fn cpu_ticks(&self) -> Result<u64> {
        cpu::process_ticks(self.pid)
    }

    fn stop(self) {
        drop(self.proc);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Where one measurement stores its events.
enum Backend<'a> {
    Sqlite(PathBuf),
    Clickhouse {
        server: &'a Server,
        database: String,
    },
}

impl Backend<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "SQLite",
            Self::Clickhouse { .. } => "ClickHouse",
        }
    }

    /// `tracer aggregator`'s arguments for this store.
    fn aggregator_args(&self) -> Vec<OsString> {
        match self {
            Self::Sqlite(dir) => vec!["--data".into(), dir.into()],
            Self::Clickhouse { server, database } => vec![
                "--store".into(),
                server.url(database).into(),
                "--clickhouse-user".into(),
                "tracer".into(),
                "--clickhouse-password-file".into(),
                server.password_file.clone().into(),
            ],
        }
    }

    /// `aggregator_load count|load-store`'s arguments for this store.
    fn load_args(&self) -> Vec<OsString> {
        match self {
            Self::Sqlite(dir) => vec!["--data".into(), dir.into()],
            Self::Clickhouse { server, database } => vec![
                "--store".into(),
                server.url(database).into(),
                "--password-file".into(),
                server.password_file.clone().into(),
            ],
        }
    }

    fn server(&self) -> Option<&Server> {
        match self {
            Self::Sqlite(_) => None,
            Self::Clickhouse { server, .. } => Some(server),
        }
    }

    fn start_aggregators(&self, n: usize, token: &Path) -> Result<Vec<Aggregator>> {
        let args = self.aggregator_args();
        let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        (0..n).map(|_| Aggregator::start_on(&args, token)).collect()
    }

    fn count(&self) -> Result<f64> {
        json_num(
            &cmd::output(Command::new(load_gen()).arg("count").args(self.load_args()))?,
            "events",
        )
    }

    /// ClickHouse's batches and the groups they were stored in (the
    /// batches of a group share their receive time); SQLite keeps no
    /// such record: NaN.
    fn groups(&self) -> Result<(f64, f64)> {
        if let Self::Sqlite(_) = self {
            return Ok((f64::NAN, f64::NAN));
        }
        let out = cmd::output(
            Command::new(load_gen())
                .arg("groups")
                .args(self.load_args()),
        )?;
        Ok((json_num(&out, "batches")?, json_num(&out, "groups")?))
    }
}

/// CPU ticks of the aggregators and of the server, summed.
fn ticks(aggs: &[Aggregator], server: Option<&Server>) -> Result<(u64, u64)> {
    let mut a = 0;
    for agg in aggs {
        a += agg.cpu_ticks()?;
    }
    Ok((a, server.map(Server::cpu_ticks).transpose()?.unwrap_or(0)))
}

/// One ingest measurement.
#[derive(Clone, Copy)]
struct Ingest {
    rate: f64,
    agg_cpu_us: f64,
    server_cpu_us: f64,
    /// The server's CPU after the load, until it was idle again: merges
    /// of the parts the load wrote (µs per event acknowledged).
    settle_cpu_us: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Batches per group stored (ClickHouse; NaN on SQLite).
    per_group: f64,
    first_tenth: f64,
    last_tenth: f64,
    load: f64,
}

struct Ctx {
    ticks: f64,
    token: PathBuf,
    senders: u32,
    in_flight: u32,
    hosts: u32,
}

/// Waits until the server is idle (no CPU for 2 s: its background merges
/// are done; at most 3 min) and returns the CPU ticks it spent until then.
fn settle(server: &Server) -> Result<u64> {
    let start = server.cpu_ticks()?;
    let idle =
        cpu::ticks_when_settled(server.pid, Duration::from_secs(2), Duration::from_secs(180))?;
    Ok(idle - start)
}

/// Sends `events` through `n` new aggregators on `backend` and checks
/// the store holds `expect_before` + what was acknowledged.
fn ingest_once(
    ctx: &Ctx,
    backend: &Backend,
    n: usize,
    events: u64,
    expect_before: f64,
    start_s: u64,
) -> Result<Ingest> {
    let aggs = backend.start_aggregators(n, &ctx.token)?;
    let result = ingest_through(ctx, backend, &aggs, events, expect_before, start_s);
    for a in aggs {
        a.stop()?;
    }
    result
}

/// Sends `events` through `aggs` (running on `backend`), checks the
/// store holds `expect_before` + what was acknowledged, and measures.
fn ingest_through(
    ctx: &Ctx,
    backend: &Backend,
    aggs: &[Aggregator],
    events: u64,
    expect_before: f64,
    start_s: u64,
) -> Result<Ingest> {
    // The previous measurement's merges are its own cost, not this one's.
    if let Some(server) = backend.server() {
        settle(server)?;
    }
    let load = cpu::load_average().unwrap_or(f64::NAN);
    let (b0, g0) = backend.groups()?;
    let (a0, s0) = ticks(aggs, backend.server())?;
    let out = send(ctx, aggs, events, start_s)?;
    let (a1, s1) = ticks(aggs, backend.server())?;
    let acked = json_num(&out, "events")?;
    let count = backend.count()?;
    if count != expect_before + acked {
        bail!(
            "{}: {acked} events acknowledged but the store holds {} new",
            backend.name(),
            count - expect_before
        );
    }
    let (b1, g1) = backend.groups()?;
    let settle_ticks = match backend.server() {
        Some(server) => settle(server)?,
        None => 0,
    };
    Ok(Ingest {
        rate: json_num(&out, "events_per_sec")?,
        agg_cpu_us: (a1 - a0) as f64 / ctx.ticks * 1e6 / acked,
        server_cpu_us: (s1 - s0) as f64 / ctx.ticks * 1e6 / acked,
        settle_cpu_us: settle_ticks as f64 / ctx.ticks * 1e6 / acked,
        p50_ms: json_num(&out, "batch_ms_p50")?,
        p99_ms: json_num(&out, "batch_ms_p99")?,
        per_group: (b1 - b0) / (g1 - g0),
        first_tenth: json_num(&out, "first_tenth_events_per_sec")?,
        last_tenth: json_num(&out, "last_tenth_events_per_sec")?,
        load,
    })
}

/// `aggregator_load ingest`: `events` of the ingest mix through `aggs`,
/// the first `start_s` seconds into the generator's timeline. Its JSON
/// summary.
fn send(ctx: &Ctx, aggs: &[Aggregator], events: u64, start_s: u64) -> Result<String> {
    let urls: Vec<&str> = aggs.iter().map(|a| a.url.as_str()).collect();
    cmd::output(
        Command::new(load_gen())
            .arg("ingest")
            .args(["--url", &urls.join(",")])
            .arg("--token-file")
            .arg(&ctx.token)
            .args(["--events", &events.to_string()])
            .args(["--senders", &ctx.senders.to_string()])
            .args(["--in-flight", &ctx.in_flight.to_string()])
            .args(["--hosts", &ctx.hosts.to_string()])
            .args(["--start-s", &start_s.to_string()]),
    )
}

pub fn run(args: &ClickhouseArgs) -> Result<()> {
    for p in &args.parts {
        if !matches!(p.as_str(), "ingest" | "grep" | "growth" | "history") {
            bail!("--parts: unknown part {p:?} (ingest, grep, growth, history)");
        }
    }
    for s in &args.growth_stores {
        if !matches!(s.as_str(), "sqlite" | "clickhouse") {
            bail!("--growth-stores: unknown store {s:?} (sqlite, clickhouse)");
        }
    }
    build(args.no_build)?;
    let tmp = tempfile::Builder::new()
        .prefix("tracer-bench-clickhouse-")
        .tempdir()?;
    let before = machine_state();
    let started = now_text();
    let server = Server::start(tmp.path())?;
    let ctx = Ctx {
        ticks: cpu::clock_ticks_per_sec()? as f64,
        token: token_file(tmp.path())?,
        senders: args.senders,
        in_flight: args.in_flight,
        hosts: args.hosts,
    };
    let mut text = format!(
        "## ClickHouse vs SQLite ({started})\n\nClickHouse 18.16 (Debian's, the \
         benchmark's own server on loopback) and the SQLite store on the same \
         machine, in one run. Machine: {before}.\n"
    );
    let want = |p: &str| args.parts.iter().any(|x| x == p);
    let result = (|| {
        if want("ingest") {
            text.push_str(&ingest_part(args, &ctx, &server, tmp.path())?);
        }
        if want("grep") {
            text.push_str(&grep_part(args, &ctx, &server, tmp.path())?);
        }
        if want("growth") {
            text.push_str(&growth_part(args, &ctx, &server, tmp.path())?);
        }
        if want("history") {
            text.push_str(&history_part(args, &ctx, &server)?);
        }
        Ok::<_, anyhow::Error>(())
    })();
    server.stop();
    result?;
    publish("clickhouse", &text)
}

fn ingest_part(args: &ClickhouseArgs, ctx: &Ctx, server: &Server, tmp: &Path) -> Result<String> {
    // (label, aggregators, ClickHouse?)
    let configs = [
        ("SQLite, 1 aggregator", 1, false),
        ("ClickHouse, 1 aggregator", 1, true),
        ("ClickHouse, 2 aggregators", 2, true),
    ];
    let mut rows: Vec<Vec<Ingest>> = vec![Vec::new(); configs.len()];
    for round in 1..=args.rounds {
        for (k, (label, n, ch)) in configs.iter().enumerate() {
            let backend = if *ch {
                Backend::Clickhouse {
                    server,
                    database: format!("bench_ingest_{round}_{n}"),
                }
            } else {
                Backend::Sqlite(tmp.join(format!("ingest-{round}")))
            };
            let r = ingest_once(ctx, &backend, *n, args.events, 0.0, 0)?;
            println!(
                "round {round}: {label}: {:.0} events/s, CPU µs/event aggregator {:.2} server {:.2} \
                 (+{:.2} merging after), batch p50 {:.0} ms p99 {:.0} ms, {} batches per \
                 group (count exact; load {:.2})",
                r.rate,
                r.agg_cpu_us,
                r.server_cpu_us,
                r.settle_cpu_us,
                r.p50_ms,
                r.p99_ms,
                per_group_text(r.per_group),
                r.load
            );
            rows[k].push(r);
            if let Backend::Sqlite(dir) = &backend {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
    let med = |k: usize, f: fn(&Ingest) -> f64| median(rows[k].iter().map(f).collect());
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n### Ingest\n\n`cargo xtask bench clickhouse --parts ingest --rounds {} --events {} \
         --senders {} --in-flight {} --hosts {}`: the real `tracer aggregator` on 127.0.0.1, a fresh \
         store per measurement (a new SQLite directory, a new ClickHouse database), \
         rounds alternating the three setups; {} HTTP senders POST zstd batches of \
         2000 events (85% log lines, 10% http, 5% tcp), built beforehand, each sender \
         like an agent with a backlog ({} batches at once, the next window when all \
         are answered), split evenly over the aggregators. The rate is events acknowledged over the time \
         from the first send to the last answer; afterwards the store's count must \
         equal the events acknowledged. CPU per event from /proc/PID/stat \
         (utime+stime) of the aggregators and of clickhouse-server over the load. \
         Each ClickHouse measurement starts with the server idle (its merges \
         of earlier measurements done) and ends when it is idle again; the \
         server's CPU in that wait, the merges of the parts the load wrote, is \
         the \"after\" column. Batches per group: ClickHouse's batch rows over \
         the groups they were stored in (the rows of a group share their \
         receive time). \
         The senders, the aggregators and the server share the 2 cores.\n",
        args.rounds,
        args.events,
        args.senders,
        args.in_flight,
        args.hosts,
        args.senders,
        args.in_flight
    );
    let _ = writeln!(
        t,
        "| setup | median events/s | vs SQLite | aggregator CPU µs/event | server CPU µs/event | server after the load | batch answer p50 / p99 | batches per group |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let base = med(0, |r| r.rate);
    for (k, (label, _, _)) in configs.iter().enumerate() {
        let rate = med(k, |r| r.rate);
        let _ = writeln!(
            t,
            "| {label} | {rate:.0} | {:.2}× | {:.2} | {:.2} | {:.2} | {:.0} / {:.0} ms | {} |",
            rate / base,
            med(k, |r| r.agg_cpu_us),
            med(k, |r| r.server_cpu_us),
            med(k, |r| r.settle_cpu_us),
            med(k, |r| r.p50_ms),
            med(k, |r| r.p99_ms),
            per_group_text(med(k, |r| r.per_group)),
        );
    }
    let _ = writeln!(t, "\nRounds (events/s per setup, load average):");
    for round in 0..args.rounds as usize {
        let _ = writeln!(
            t,
            "- {}: {}; load {:.2}",
            round + 1,
            rows.iter()
                .map(|r| format!("{:.0}", r[round].rate))
                .collect::<Vec<_>>()
                .join(", "),
            rows[0][round].load
        );
    }
    let ch1 = med(1, |r| r.rate);
    let ch2 = med(2, |r| r.rate);
    let _ = writeln!(
        t,
        "\nClickHouse with 2 aggregators: **{ch2:.0} events/s**, {:.2}× one aggregator \
         (aim ≥ {INGEST_AIM_EVENTS_PER_SEC:.0}: {}).",
        ch2 / ch1,
        met(ch2 >= INGEST_AIM_EVENTS_PER_SEC)
    );
    Ok(t)
}

/// Batches per group as the tables show it ("-" for SQLite, which keeps
/// no record of its groups).
fn per_group_text(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.1}")
    }
}

/// The stdout of `c` if it exits successfully within `limit`; None (and
/// the command killed) if it does not.
fn output_within(c: &mut Command, limit: Duration) -> Result<Option<String>> {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{}`", cmd::display(c)))?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            let out = reader.join().unwrap_or_default();
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!("`{}` failed ({status}): {}", cmd::display(c), err.trim());
            }
            return Ok(Some(out));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Loads `lines` log lines (`mixed`: events of the ingest mix) into
/// `backend` directly: the text bytes and the rate.
/// Loads `lines` events into `backend` directly: log lines, or with
/// `mixed` the ingest mix; their times start `start_s` seconds into the
/// generator's timeline.
fn load_lines(
    backend: &Backend,
    lines: u64,
    hosts: u32,
    mixed: bool,
    start_s: u64,
) -> Result<(f64, f64)> {
    let out = cmd::output(
        Command::new(load_gen())
            .arg("load-store")
            .args(backend.load_args())
            .args(["--lines", &lines.to_string()])
            .args(["--hosts", &hosts.to_string()])
            .args(mixed.then_some("--mixed"))
            .args(["--start-s", &start_s.to_string()]),
    )?;
    Ok((
        json_num(&out, "text_bytes")?,
        json_num(&out, "lines_per_sec")?,
    ))
}

fn grep_part(args: &ClickhouseArgs, ctx: &Ctx, server: &Server, tmp: &Path) -> Result<String> {
    let needles = planted_needles(args.grep_lines)?;
    let backends = [
        Backend::Sqlite(tmp.join("grep")),
        Backend::Clickhouse {
            server,
            database: "bench_grep".into(),
        },
    ];
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n### Grep\n\n`cargo xtask bench clickhouse --parts grep --grep-lines {} \
         --grep-rounds {} --grep-timeout {}`: the same {} log lines from {} hosts loaded into each \
         store through `Store::ingest_many` directly (groups of 16 batches of \
         2000; no HTTP); then the real `tracer aggregator` on it and `tracer grep` \
         over HTTP for each planted pattern (`-c`, then listing every line). Every \
         answer must be exactly the planted count. GB/s is log text over the \
         command's wall time; per core is log text over the CPU time the \
         aggregator and clickhouse-server spent on the query (/proc, 10 ms \
         ticks). A pattern with no answer within the timeout is stopped and \
         not asked again.\n",
        args.grep_lines, args.grep_rounds, args.grep_timeout, args.grep_lines, args.hosts
    );
    let _ = writeln!(
        t,
        "| store | pattern | matches | median wall | GB/s (wall) | GB/s per core (CPU) |\n\
         |---|---|---:|---:|---:|---:|"
    );
    let mut loads = Vec::new();
    let mut worst = Vec::new();
    for backend in &backends {
        println!(
            "loading {} log lines into {} ...",
            args.grep_lines,
            backend.name()
        );
        let (text_bytes, lps) = load_lines(backend, args.grep_lines, args.hosts, false, 0)?;
        loads.push(format!("{} {lps:.0} lines/s", backend.name()));
        let mut aggs = backend.start_aggregators(1, &ctx.token)?;
        let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); needles.len() * 2];
        // Patterns that ran out of time once are not asked again.
        let mut timed_out = vec![false; needles.len() * 2];
        for round in 1..=args.grep_rounds {
            let mut k = 0;
            for count in [true, false] {
                for (name, re, ci, expect) in &needles {
                    if timed_out[k] {
                        k += 1;
                        continue;
                    }
                    let mut c = Command::new(tracer::binary());
                    c.args(["grep", "--aggregator", &aggs[0].url])
                        .arg("--token-file")
                        .arg(&ctx.token);
                    if *ci {
                        c.arg("-i");
                    }
                    if count {
                        c.arg("-c");
                    }
                    c.arg("--").arg(re);
                    let (a0, s0) = ticks(&aggs, backend.server())?;
                    let t0 = Instant::now();
                    let limit = Duration::from_secs(u64::from(args.grep_timeout));
                    let Some(out) = output_within(&mut c, limit)? else {
                        println!(
                            "round {round}: {} {name}{} {re:?}: no answer within {} s, stopped",
                            backend.name(),
                            if count { " -c" } else { "" },
                            args.grep_timeout
                        );
                        timed_out[k] = true;
                        // The aggregator would go on scanning: a new one
                        // for the next pattern.
                        for a in aggs.drain(..) {
                            a.kill();
                        }
                        aggs = backend.start_aggregators(1, &ctx.token)?;
                        k += 1;
                        continue;
                    };
                    let wall = t0.elapsed().as_secs_f64();
                    let (a1, s1) = ticks(&aggs, backend.server())?;
                    let n = if count {
                        out.trim().parse().context("grep -c printed no number")?
                    } else {
                        out.lines().count() as u64
                    };
                    if n != *expect {
                        bail!(
                            "{}: {name} ({re}): {n} lines, but {expect} were planted",
                            backend.name()
                        );
                    }
                    let cpu_s = ((a1 - a0) + (s1 - s0)) as f64 / ctx.ticks;
                    println!(
                        "round {round}: {} {name}{} {re:?}: {n} lines (exact), {wall:.3} s, CPU {cpu_s:.2} s",
                        backend.name(),
                        if count { " -c" } else { "" },
                    );
                    samples[k].push((wall, cpu_s));
                    k += 1;
                }
            }
        }
        for a in aggs {
            a.stop()?;
        }
        let mut k = 0;
        let mut slowest = f64::INFINITY;
        for count in [true, false] {
            for (name, re, ci, expect) in &needles {
                let label = format!(
                    "{name}{} `{re}`{}",
                    if count { " -c" } else { "" },
                    if *ci { " -i" } else { "" }
                );
                if timed_out[k] {
                    slowest = slowest.min(text_bytes / f64::from(args.grep_timeout) / 1e9);
                    let _ = writeln!(
                        t,
                        "| {} | {label} | {expect} | > {} s (stopped) | < {:.2} | |",
                        backend.name(),
                        args.grep_timeout,
                        text_bytes / f64::from(args.grep_timeout) / 1e9
                    );
                    k += 1;
                    continue;
                }
                let wall = median(samples[k].iter().map(|s| s.0).collect());
                let cpu_s = median(samples[k].iter().map(|s| s.1).collect());
                let per_core = text_bytes / cpu_s.max(0.01) / 1e9;
                slowest = slowest.min(text_bytes / wall / 1e9);
                let _ = writeln!(
                    t,
                    "| {} | {label} | {expect} | {wall:.3} s | {:.2} | {per_core:.2} |",
                    backend.name(),
                    text_bytes / wall / 1e9
                );
                k += 1;
            }
        }
        worst.push((backend.name(), slowest, text_bytes));
        if let Backend::Sqlite(dir) = backend {
            let _ = fs::remove_dir_all(dir);
        }
    }
    let _ = writeln!(
        t,
        "\n{:.0} MB of log text; loaded at {}. Slowest pattern (wall): {}; \
         ClickHouse/SQLite {:.2}× (aim ≥ {:.0} GB/s per core).",
        worst[0].2 / 1e6,
        loads.join(", "),
        worst
            .iter()
            .map(|(n, g, _)| format!("{n} {g:.2} GB/s"))
            .collect::<Vec<_>>()
            .join(", "),
        worst[1].1 / worst[0].1,
        GREP_AIM_BYTES_PER_SEC_PER_CORE / 1e9,
    );
    Ok(t)
}

/// Largest load of one `aggregator_load ingest` run while a store grows
/// (its batches are built in memory first).
const LOAD_CHUNK: u64 = 4_000_000;
const DAY_S: u64 = 86_400;

/// The growth steps through `agg`: `step` events into the empty store,
/// the load, then `step` events into the grown store. Returns both
/// measurements, the load's rate, the seconds the server took to go idle
/// after it, and the store's size before the second measurement.
fn grow(
    ctx: &Ctx,
    args: &ClickhouseArgs,
    backend: &Backend,
    agg: &[Aggregator],
    step: u64,
) -> Result<(Ingest, Ingest, f64, f64, f64)> {
    // Each step's events come after the previous step's, as they do in a
    // store that grew over time (events are 1-21 µs apart), or a day's
    // share of the load a day after the previous one's.
    let load_events = args.grow_to - 2 * step;
    let load_start_s = step * 21 / 1_000_000 + 60;
    let start_of = |loaded: u64| match args.growth_days {
        0 => load_start_s + loaded * 21 / 1_000_000,
        days => {
            let day = loaded * days / load_events;
            let into_day = loaded - day * load_events / days;
            load_start_s + day * DAY_S + into_day * 21 / 1_000_000
        }
    };
    let full_start_s = match args.growth_days {
        0 => start_of(load_events) + 60,
        days => load_start_s + days * DAY_S,
    };
    let empty = ingest_through(ctx, backend, agg, step, 0.0, 0)?;
    println!(
        "{}: empty store {:.0} events/s; loading {load_events} events ...",
        backend.name(),
        empty.rate,
    );
    let load_started = Instant::now();
    let mut loaded = 0;
    while loaded < load_events {
        // A chunk stays within its day.
        let n = match args.growth_days {
            0 => LOAD_CHUNK,
            days => {
                let day = loaded * days / load_events;
                ((day + 1) * load_events).div_ceil(days) - loaded
            }
        }
        .min(LOAD_CHUNK)
        .min(load_events - loaded);
        let chunk_started = Instant::now();
        send(ctx, agg, n, start_of(loaded))?;
        loaded += n;
        println!(
            "{}: loaded {loaded} of {load_events} ({:.0} events/s)",
            backend.name(),
            n as f64 / chunk_started.elapsed().as_secs_f64()
        );
    }
    let lps = load_events as f64 / load_started.elapsed().as_secs_f64();
    // The server merges the load's parts for a while after it: the second
    // measurement starts once it is idle, so it measures the store's size
    // rather than the load's backlog.
    let settling = Instant::now();
    if let Some(s) = backend.server() {
        settle(s)?;
    }
    let settled_s = settling.elapsed().as_secs_f64();
    let before = backend.count()?;
    if before != (step + load_events) as f64 {
        bail!(
            "{}: {} events sent but the store holds {before}",
            backend.name(),
            step + load_events
        );
    }
    let full = ingest_through(ctx, backend, agg, step, before, full_start_s)?;
    Ok((empty, full, lps, settled_s, before))
}

fn growth_part(args: &ClickhouseArgs, ctx: &Ctx, server: &Server, tmp: &Path) -> Result<String> {
    let step = args.events;
    if args.grow_to < 3 * step {
        bail!("--grow-to must be at least 3 × --events");
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n### Ingest as the store grows\n\n`cargo xtask bench clickhouse --parts growth \
         --events {step} --grow-to {}`: per store, {step} events through one \
         aggregator over HTTP into the empty store (as in Ingest), then {} events \
         of the same mix through the same aggregator (on ClickHouse each aggregator \
         writes partitions of its own, so this is the store it writes to), then, \
         once clickhouse-server is idle again (its merges of the load's parts \
         done; at most 3 min), {step} events over HTTP again, now into a store of {} \
         events. Each step's events are later than the step before's (the load \
         generator's `--start-s`), as in a store that grew over time{}. First/last \
         tenth: the rate over the first and the last 10% of a measurement's events.\n",
        args.grow_to,
        args.grow_to - 2 * step,
        args.grow_to - step,
        match args.growth_days {
            0 => "; the load's events span minutes, all in the day of both \
                  measurements (on ClickHouse, one day's partition of that size)"
                .to_string(),
            days => format!(
                " (`--growth-days {days}`): the load's events spread over {days} days, \
                 an equal share a day, and the second measurement on the day after"
            ),
        }
    );
    let _ = writeln!(
        t,
        "| store | empty: events/s (first / last tenth) | at {:.0}M: events/s (first / last tenth) | ratio | CPU µs/event aggregator, server: empty → at {:.0}M |\n\
         |---|---:|---:|---:|---|",
        (args.grow_to - step) as f64 / 1e6,
        (args.grow_to - step) as f64 / 1e6
    );
    let mut backends = Vec::new();
    if args.growth_stores.iter().any(|s| s == "sqlite") {
        backends.push(Backend::Sqlite(tmp.join("growth")));
    }
    if args.growth_stores.iter().any(|s| s == "clickhouse") {
        backends.push(Backend::Clickhouse {
            server,
            database: "bench_growth".into(),
        });
    }
    for backend in &backends {
        let started = Instant::now();
        // One aggregator for the three steps: on ClickHouse each
        // aggregator writes partitions of its own (schema.rs), so the
        // store it grows is the one it writes to, as for an aggregator
        // that has run all day.
        let agg = backend.start_aggregators(1, &ctx.token)?;
        let grown = grow(ctx, args, backend, &agg, step);
        for a in agg {
            a.stop()?;
        }
        let (empty, full, lps, settled_s, before) = grown?;
        println!(
            "{}: at {before} events {:.0} events/s (loaded at {lps:.0} events/s; server idle after {settled_s:.0} s; {:.0} s)",
            backend.name(),
            full.rate,
            started.elapsed().as_secs_f64()
        );
        let _ = writeln!(
            t,
            "| {} | {:.0} ({:.0} / {:.0}) | {:.0} ({:.0} / {:.0}) | {:.2}× | {:.2}, {:.2} → {:.2}, {:.2} |",
            backend.name(),
            empty.rate,
            empty.first_tenth,
            empty.last_tenth,
            full.rate,
            full.first_tenth,
            full.last_tenth,
            full.rate / empty.rate,
            empty.agg_cpu_us,
            empty.server_cpu_us,
            full.agg_cpu_us,
            full.server_cpu_us
        );
        if let Backend::Sqlite(dir) = backend {
            let _ = fs::remove_dir_all(dir);
        }
    }
    Ok(t)
}

/// The first event time of `aggregator_load`'s timeline (its
/// `FIRST_TS_NS`).
const LOAD_FIRST_TS_NS: i64 = 1_795_737_600_000_000_000;

/// How long the reads of recent events took, and what an idle follower
/// costs the server.
struct Reads {
    /// `tracer timeline` of one second of the load, `--limit 100`.
    window_s: f64,
    /// `tracer grep -c` over the same second.
    grep_s: f64,
    /// `tracer tail -n 10`: a tail's cursor and its last lines.
    snapshot_s: f64,
    /// `tracer timeline --since 0 --trace ID`: a trace as the web UI's
    /// trace view asks for it (no time), for a client call of the
    /// window's.
    trace_s: f64,
    /// clickhouse-server's CPU seconds over 5 s of `tracer tail -f` with
    /// nothing arriving, from 3 s after its start.
    idle_tail_cpu_s: f64,
}

/// Runs `tracer SUBCOMMAND ARGS --aggregator URL --token-file T` (at
/// most 120 s): its output and wall seconds.
fn timed_cli(ctx: &Ctx, agg: &Aggregator, cli_args: &[&str]) -> Result<(String, f64)> {
    let mut c = Command::new(tracer::binary());
    c.args(cli_args)
        .args(["--aggregator", &agg.url])
        .arg("--token-file")
        .arg(&ctx.token);
    let t0 = Instant::now();
    let out = output_within(&mut c, Duration::from_secs(120))?
        .with_context(|| format!("`{}` gave no answer within 120 s", cmd::display(&c)))?;
    Ok((out, t0.elapsed().as_secs_f64()))
}

/// The answers of [`measure_reads`]: lines of the window, the grep
/// count, the trace's lines.
type Answers = (usize, u64, usize);

/// The request id of the window's first client call (the load's calls
/// cross to the next host, so its trace spans two).
fn a_client_call(ctx: &Ctx, agg: &Aggregator, since: &str, until: &str) -> Result<String> {
    let (out, _) = timed_cli(
        ctx,
        agg,
        &[
            "timeline", "--since", since, "--until", until, "--kind", "http", "--limit", "100",
            "--json",
        ],
    )?;
    for line in out.lines() {
        let e: serde_json::Value = serde_json::from_str(line).context("timeline --json")?;
        if e["side"] == "client"
            && let Some(id) = e["req_id"].as_str()
        {
            return Ok(id.to_string());
        }
    }
    bail!("no client call among the window's first 100 exchanges")
}

/// Each read of [`Reads`], the median of 3, and their [`Answers`].
fn measure_reads(ctx: &Ctx, agg: &Aggregator, server: &Server) -> Result<(Reads, Answers)> {
    let since = (LOAD_FIRST_TS_NS + 1_000_000_000).to_string();
    let until = (LOAD_FIRST_TS_NS + 2_000_000_000).to_string();
    let window = [
        "timeline", "--since", &since, "--until", &until, "--limit", "100",
    ];
    let grep = ["grep", "-c", "--since", &since, "--until", &until, "error"];
    let call = a_client_call(ctx, agg, &since, &until)?;
    let trace = ["timeline", "--since", "0", "--trace", &call];
    let (mut w, mut g, mut t, mut tr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut answers = (0, 0, 0);
    for _ in 0..3 {
        let (out, s) = timed_cli(ctx, agg, &window)?;
        answers.0 = out.lines().count();
        w.push(s);
        let (out, s) = timed_cli(ctx, agg, &grep)?;
        answers.1 = out.trim().parse().context("grep -c printed no number")?;
        g.push(s);
        let (out, s) = timed_cli(ctx, agg, &["tail", "-n", "10"])?;
        if out.lines().count() != 10 {
            bail!("tail -n 10 printed {} lines", out.lines().count());
        }
        t.push(s);
        let (out, s) = timed_cli(ctx, agg, &trace)?;
        answers.2 = out.lines().count();
        tr.push(s);
    }
    let mut follow = Command::new(tracer::binary());
    follow
        .args(["tail", "-f", "-n", "0", "--aggregator", &agg.url])
        .arg("--token-file")
        .arg(&ctx.token)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let tail = Spawned::start("tracer tail -f", &mut follow)?;
    std::thread::sleep(Duration::from_secs(3));
    let s0 = server.cpu_ticks()?;
    std::thread::sleep(Duration::from_secs(5));
    let s1 = server.cpu_ticks()?;
    drop(tail);
    Ok((
        Reads {
            window_s: median(w),
            grep_s: median(g),
            snapshot_s: median(t),
            trace_s: median(tr),
            idle_tail_cpu_s: (s1 - s0) as f64 / ctx.ticks,
        },
        answers,
    ))
}

fn history_part(args: &ClickhouseArgs, ctx: &Ctx, server: &Server) -> Result<String> {
    let backend = Backend::Clickhouse {
        server,
        database: "bench_history".into(),
    };
    let aggs = backend.start_aggregators(1, &ctx.token)?;
    let result = (|| {
        println!("history: {} events, then reads ...", args.events);
        send(ctx, &aggs, args.events, 0)?;
        settle(server)?;
        let (empty, answers) = measure_reads(ctx, &aggs[0], server)?;
        println!(
            "history: adding {} rows of older batches and {} older exchanges ...",
            args.history_batches, args.history_exchanges
        );
        let added = cmd::output(
            Command::new(load_gen())
                .arg("history")
                .args(backend.load_args())
                .args(["--batches", &args.history_batches.to_string()])
                .args(["--exchanges", &args.history_exchanges.to_string()])
                .args(["--hosts", &ctx.hosts.to_string()]),
        )?;
        println!("history: added {}", added.trim());
        settle(server)?;
        let (full, again) = measure_reads(ctx, &aggs[0], server)?;
        if again != answers {
            bail!("the reads answered {again:?} with the older batches, {answers:?} without");
        }
        Ok::<_, anyhow::Error>((empty, full, answers))
    })();
    for a in aggs {
        a.stop()?;
    }
    let (empty, full, (lines, matches, trace_lines)) = result?;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n### Reads as `batches` grows\n\n`cargo xtask bench clickhouse --parts history \
         --events {} --history-batches {}`: one aggregator on ClickHouse, {} events of the \
         ingest mix over HTTP; then the reads a user makes of recent events through the \
         `tracer` CLI (medians of 3; each answer the same both times: {lines} lines of the \
         window, {matches} grep matches, {trace_lines} lines of the trace), and \
         clickhouse-server's CPU over 5 s of an idle `tracer tail -f`; then again after {} \
         rows of older batches (a month before the events, committed a month before now) \
         were added to `batches`, as agents' small batches leave them, and {} older \
         exchanges of the same hosts (over the same month, each with a log line of its \
         request) to `http_index`, `http_keys` and `events`.\n",
        args.events,
        args.history_batches,
        args.events,
        args.history_batches,
        args.history_exchanges
    );
    let _ = writeln!(
        t,
        "| read | without | with {}M older batch rows, {}M older exchanges | ratio |\n\
         |---|---:|---:|---:|",
        args.history_batches / 1_000_000,
        args.history_exchanges / 1_000_000
    );
    for (name, a, b, unit) in [
        (
            "`timeline` of 1 s, `--limit 100`",
            empty.window_s,
            full.window_s,
            "s",
        ),
        ("`grep -c` over 1 s", empty.grep_s, full.grep_s, "s"),
        ("`tail -n 10`", empty.snapshot_s, full.snapshot_s, "s"),
        (
            "`timeline --since 0 --trace ID`",
            empty.trace_s,
            full.trace_s,
            "s",
        ),
        (
            "idle `tail -f`: server CPU over 5 s",
            empty.idle_tail_cpu_s,
            full.idle_tail_cpu_s,
            "s",
        ),
    ] {
        let _ = writeln!(
            t,
            "| {name} | {a:.3} {unit} | {b:.3} {unit} | {:.2}× |",
            b / a.max(0.001)
        );
    }
    Ok(t)
}
