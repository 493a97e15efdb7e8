//! Load generator for the aggregator benchmarks (`cargo xtask bench ingest`
//! and `cargo xtask bench grep`, xtask/src/bench/). It builds batches the way
//! agents do — the real `Event` types serialised as JSON, zstd level 3, up
//! to `forward::BATCH_EVENTS` events, several hosts — and either POSTs them
//! to a running `tracer aggregator` or writes them through the `Store`
//! trait directly. Each subcommand prints one JSON line of results on
//! stdout for xtask to read.
//!
//!     aggregator_load ingest --url URL[,URL..] --token-file F [--events N] [--senders S] [--hosts H]
//!                            [--in-flight K] [--start-s S]
//!     aggregator_load load-store (--data DIR | --store URL --password-file F) --lines N [--hosts H] [--mixed]
//!                                [--start-s S]
//!     aggregator_load count (--data DIR | --store URL --password-file F)
//!     aggregator_load groups --store URL --password-file F
//!     aggregator_load planted --lines N [--hosts H]
//!     aggregator_load clickhouse-server --password-file F [--tag T]
//!     aggregator_load history --store URL --password-file F --batches N
//!
//! `--store URL` is a ClickHouse store (`clickhouse://127.0.0.1:PORT/DB`)
//! logged into as the user `clickhouse-server` configures; that subcommand
//! runs a clickhouse-server of its own (the tests' `test_server`) until its
//! stdin closes, after printing its store URL.
//!
//! `--start-s S` starts the events' times S seconds later than by default,
//! so that a run continues the timeline of an earlier one.
//!
//! Grep needles are planted at fixed line numbers, so how many lines each
//! benchmark pattern matches is known exactly without scanning (`planted`).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tracer_user::{
    aggregator::{
        clickhouse::{ClickhouseStore, Config, test_server},
        sqlite::SqliteStore,
        store::{Batch, Filter, Store},
    },
    event::{Event, EventData, HttpExchange, HttpSide, StreamName, Tuple},
    forward::{BATCH_EVENTS, IN_FLIGHT},
};

/// The patterns `bench grep` times and the lines that match each: line `i`
/// (0-based, over all hosts' log lines in generation order) carries the
/// needle when `i % every == phase`. The base vocabulary contains none of
/// them (checked by the `vocabulary_has_no_needles` logic in `planted`).
pub const NEEDLES: &[(&str, &str, bool, u64, u64)] = &[
    // (name, regex, case-insensitive, every, phase)
    ("literal", "deadbeef-cafe", false, 100_003, 17),
    ("class", r"ERR-[0-9]{4}-[A-Z]{2}\b", false, 10_007, 5),
    ("ignore-case", "connection reset by peer", true, 4_999, 3),
];

const WORDS: &[&str] = &[
    "GET", "POST", "PUT", "user", "order", "cart", "session", "cache", "db", "query", "handled",
    "served", "request", "response", "upstream", "retry", "ok", "done", "queued", "worker",
];
const PATHS: &[&str] = &[
    "/api/users",
    "/api/orders",
    "/api/cart/items",
    "/healthz",
    "/api/search",
    "/static/app.js",
];

/// A small deterministic PRNG (xorshift64*): the same arguments always give
/// the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The text of log line `i`: a structured-looking line of 80-160 bytes like
/// a node service prints, with a needle when `i` is planted.
fn log_text(rng: &mut Rng, i: u64, ts_ns: u64) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(160);
    let secs = ts_ns / 1_000_000_000;
    let ms = (ts_ns / 1_000_000) % 1000;
    let level = ["info", "info", "info", "debug", "warn", "error"][rng.below(6) as usize];
    let _ = write!(
        s,
        "{secs}.{ms:03} {level} {} {} {}{} id={} took={}ms",
        WORDS[rng.below(WORDS.len() as u64) as usize],
        WORDS[rng.below(WORDS.len() as u64) as usize],
        PATHS[rng.below(PATHS.len() as u64) as usize],
        if rng.below(2) == 0 { "/42" } else { "" },
        rng.next() % 1_000_000,
        rng.below(900),
    );
    for _ in 0..rng.below(5) {
        let _ = write!(s, " {}", WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    for (n, (_, _, _, every, phase)) in NEEDLES.iter().enumerate() {
        if i % every == *phase {
            s.push(' ');
            s.push_str(&planted_text(n, i));
        }
    }
    s
}

/// What is written for needle `n` on line `i`.
fn planted_text(n: usize, i: u64) -> String {
    match n {
        0 => "deadbeef-cafe".into(),
        1 => format!("ERR-{:04}-QX", i % 10_000),
        // Mixed case, so only a case-insensitive search finds them all.
        _ => [
            "Connection reset by peer",
            "CONNECTION RESET BY PEER",
            "connection Reset by Peer",
        ][(i % 3) as usize]
            .into(),
    }
}

/// How many of `lines` log lines carry needle `n`.
fn planted(n: usize, lines: u64) -> u64 {
    let (_, _, _, every, phase) = NEEDLES[n];
    if lines <= phase {
        0
    } else {
        (lines - phase - 1) / every + 1
    }
}

/// Host `h`'s address (host-1 is 10.0.0.1).
fn host_ip(h: usize) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, (h % 250 + 1) as u8))
}

/// A complete GET exchange as agents report one.
fn exchange(
    side: HttpSide,
    path: &str,
    duration_ns: u64,
    tuple: Tuple,
    req_id: String,
) -> HttpExchange {
    HttpExchange {
        side,
        method: "GET".into(),
        path: path.into(),
        status: 200,
        duration_ns,
        req_bytes: 120,
        resp_bytes: 900,
        tuple,
        tls: false,
        req_id,
        parent_req_id: None,
        traceparent: None,
        request_id: None,
        complete: true,
        req_body: None,
        resp_body: None,
    }
}

fn tuple(rng: &mut Rng) -> Tuple {
    Tuple {
        saddr: "10.0.0.2".parse().unwrap(),
        sport: 8080,
        daddr: "10.0.0.1".parse().unwrap(),
        dport: 30_000 + rng.below(30_000) as u16,
    }
}

/// Generates the events of every host, cut into batches, in the order
/// agents would send them. `logs_only` makes every event a log line (the
/// grep corpus); otherwise ~85% are logs, ~10% http, ~5% tcp. Half the
/// http exchanges are client calls from host `h` to host `h + 1`, whose
/// server half that host records in its next server slot (so the
/// aggregator's stitching finds host pairs and estimates their clocks, as
/// in a real cluster); the other half are server exchanges, answering
/// those calls or, when none wait, a client outside the hosts.
struct Generator {
    rng: Rng,
    hosts: Vec<String>,
    seq: Vec<u64>,
    /// Connections opened per host, for request ids.
    conns: Vec<u64>,
    /// Per host, the server halves of the calls made to it, not yet
    /// recorded, with their start times.
    calls: Vec<std::collections::VecDeque<(u64, HttpExchange)>>,
    run_id: String,
    ts: u64,
    next_line: u64,
    logs_only: bool,
}

/// The first event's time: 2026-11-27T00:00:00Z.
const FIRST_TS_NS: u64 = 1_795_737_600_000_000_000;

impl Generator {
    /// A fresh run id each time, so runs against one aggregator never
    /// collide with its dedupe. The first event is `start_s` seconds
    /// after [`FIRST_TS_NS`] (a later run of a benchmark continues the
    /// timeline instead of repeating it).
    fn new(hosts: usize, logs_only: bool, start_s: u64) -> Self {
        Self {
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            hosts: (1..=hosts).map(|h| format!("host-{h}")).collect(),
            seq: vec![0; hosts],
            conns: vec![0; hosts],
            calls: vec![std::collections::VecDeque::new(); hosts],
            run_id: uuid::Uuid::new_v4().to_string(),
            ts: FIRST_TS_NS + start_s * 1_000_000_000,
            next_line: 0,
            logs_only,
        }
    }

    /// A call from host `h` to host `h + 1` (as that host's client), with
    /// its server half queued for that host: it started a quarter of the
    /// call's duration later and took half of it (clocks in step).
    fn call(&mut self, h: usize) -> HttpExchange {
        let to = (h + 1) % self.hosts.len();
        let (client_ip, server_ip) = (host_ip(h), host_ip(to));
        let port = 30_000 + self.rng.below(30_000) as u16;
        let duration_ns = 200_000 + self.rng.below(5_000_000);
        let path = PATHS[self.rng.below(PATHS.len() as u64) as usize];
        let host = self.hosts[h].clone();
        let client = exchange(
            HttpSide::Client,
            path,
            duration_ns,
            Tuple {
                saddr: client_ip,
                sport: port,
                daddr: server_ip,
                dport: 8080,
            },
            self.req_id(&host),
        );
        let to_host = self.hosts[to].clone();
        let server = exchange(
            HttpSide::Server,
            path,
            duration_ns / 2,
            Tuple {
                saddr: server_ip,
                sport: 8080,
                daddr: client_ip,
                dport: port,
            },
            self.req_id(&to_host),
        );
        self.calls[to].push_back((self.ts + duration_ns / 4, server));
        client
    }

    /// A server exchange on host `h`: the oldest call to it not yet
    /// recorded, else a request from outside the hosts. With its start.
    fn answer(&mut self, h: usize) -> (HttpExchange, Option<u64>) {
        if let Some((start, s)) = self.calls[h].pop_front() {
            return (s, Some(start));
        }
        let host = self.hosts[h].clone();
        let outside = Tuple {
            saddr: host_ip(h),
            sport: 8080,
            daddr: "192.0.2.1".parse().unwrap(),
            dport: 30_000 + self.rng.below(30_000) as u16,
        };
        let s = exchange(
            HttpSide::Server,
            PATHS[self.rng.below(PATHS.len() as u64) as usize],
            100_000 + self.rng.below(5_000_000),
            outside,
            self.req_id(&host),
        );
        (s, None)
    }

    /// A request id as agents make them (`conns.rs`): the agent run's
    /// salt in the high half of the connection id, the connections opened
    /// so far in the low half, then the request's number on it (one
    /// request per connection here).
    fn req_id(&mut self, host: &str) -> String {
        let h = self.hosts.iter().position(|x| x == host).unwrap_or(0);
        self.conns[h] += 1;
        let salt = (0x9e37_79b9u64.wrapping_mul(h as u64 + 1) & 0xffff_ffff) << 32;
        format!("{:016x}-1", salt | self.conns[h])
    }

    fn event(&mut self, host: &str) -> Event {
        self.ts += 1_000 + self.rng.below(20_000);
        let mut ts_ns = self.ts;
        let pid = 1000 + self.rng.below(4) as u32;
        let roll = if self.logs_only {
            0
        } else {
            self.rng.below(100)
        };
        let data = match roll {
            0..85 => {
                let i = self.next_line;
                self.next_line += 1;
                EventData::Log {
                    stream: if self.rng.below(10) == 0 {
                        StreamName::Stderr
                    } else {
                        StreamName::Stdout
                    },
                    path: None,
                    text: log_text(&mut self.rng, i, self.ts),
                    truncated: false,
                    req_id: None,
                }
            }
            85..90 => {
                let h = self.hosts.iter().position(|x| x == host).unwrap_or(0);
                EventData::Http(Box::new(self.call(h)))
            }
            90..95 => {
                let h = self.hosts.iter().position(|x| x == host).unwrap_or(0);
                let (exchange, start) = self.answer(h);
                ts_ns = start.unwrap_or(ts_ns);
                EventData::Http(Box::new(exchange))
            }
            95..98 => EventData::TcpAccept(tuple(&mut self.rng)),
            _ => EventData::TcpClose {
                tuple: tuple(&mut self.rng),
                bytes_sent: 900,
                bytes_received: 120,
                retransmits: 0,
                duration_ns: Some(2_000_000),
                preexisting: false,
                failed: false,
            },
        };
        Event {
            ts_ns,
            host: host.to_string(),
            pid,
            tid: pid,
            comm: "node".into(),
            data,
        }
    }

    /// The next batch, from the hosts in turn.
    fn batch(&mut self, n: usize, events: usize) -> Batch {
        let h = n % self.hosts.len();
        let host = self.hosts[h].clone();
        let events = (0..events).map(|_| self.event(&host)).collect();
        let seq = self.seq[h];
        self.seq[h] += 1;
        Batch {
            host,
            run_id: self.run_id.clone(),
            seq,
            events,
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .ok()
            .with_context(|| format!("{name}: bad value")),
        None => default.with_context(|| format!("{name} is required")),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ingest") => ingest(&args),
        Some("load-store") => load_store(&args),
        Some("profile") => profile(&args),
        Some("count") => {
            let store = open_store(&args)?;
            println!("{{\"events\":{}}}", store.count(&Filter::default())?);
            Ok(())
        }
        Some("groups") => {
            // `--store URL --password-file F`: the batches stored and the
            // groups they were stored in.
            let (batches, groups) = test_server::groups(&clickhouse_store(&args)?)?;
            println!(
                "{}",
                serde_json::json!({"batches": batches, "groups": groups})
            );
            Ok(())
        }
        Some("clickhouse-server") => clickhouse_server(&args),
        Some("history") => {
            // `--store URL --password-file F --batches N [--exchanges M
            // --hosts K]`: N batch rows of the month before the load's
            // events (`test_server::insert_history`), and M exchanges of
            // its hosts host-1..host-K with a log line each
            // (`test_server::insert_exchange_history`).
            let store = clickhouse_store(&args)?;
            let rows: u64 = arg(&args, "--batches", None)?;
            let exchanges: u64 = arg(&args, "--exchanges", Some(0))?;
            let hosts: usize = arg(&args, "--hosts", Some(50))?;
            let t0 = Instant::now();
            test_server::insert_history(&store, rows, FIRST_TS_NS as i64)?;
            let batches_s = t0.elapsed().as_secs_f64();
            let mut keys_filled_s = 0.0;
            if exchanges > 0 {
                let names: Vec<String> = (1..=hosts).map(|h| format!("host-{h}")).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                keys_filled_s = test_server::insert_exchange_history(
                    &store,
                    exchanges,
                    FIRST_TS_NS as i64,
                    &names,
                )?
                .as_secs_f64();
            }
            println!(
                "{}",
                serde_json::json!({
                    "batches": rows,
                    "batches_seconds": batches_s,
                    "exchanges": exchanges,
                    "http_keys_filled_seconds": keys_filled_s,
                    "seconds": t0.elapsed().as_secs_f64(),
                })
            );
            Ok(())
        }
        Some("planted") => {
            let lines: u64 = arg(&args, "--lines", None)?;
            let out: Vec<serde_json::Value> = NEEDLES
                .iter()
                .enumerate()
                .map(|(n, (name, re, ci, _, _))| {
                    serde_json::json!({"name": name, "re": re, "i": ci, "count": planted(n, lines)})
                })
                .collect();
            println!("{}", serde_json::Value::Array(out));
            Ok(())
        }
        _ => bail!(
            "usage: aggregator_load ingest|load-store|count|planted|clickhouse-server|history|\
             profile ... (see the source)"
        ),
    }
}

/// The store `--store URL --password-file F` (ClickHouse) or `--data DIR`
/// (SQLite) names.
fn open_store(args: &[String]) -> Result<Box<dyn Store>> {
    if args.iter().any(|a| a == "--store") {
        return Ok(Box::new(clickhouse_store(args)?));
    }
    Ok(Box::new(SqliteStore::open(&arg::<PathBuf>(
        args, "--data", None,
    )?)?))
}

/// The ClickHouse store of `--store URL --password-file F`, logged into
/// as `clickhouse-server` configures.
fn clickhouse_store(args: &[String]) -> Result<ClickhouseStore> {
    let url: String = arg(args, "--store", None)?;
    let password = std::fs::read_to_string(arg::<PathBuf>(args, "--password-file", None)?)?;
    Ok(ClickhouseStore::open(&Config {
        user: Some(test_server::USER.into()),
        password: Some(password.trim().to_string()),
        ..Config::parse(&url).map_err(anyhow::Error::msg)?
    })?)
}

/// Runs a clickhouse-server of its own (own directory, config and free
/// loopback ports; killed with this process), writes its password to
/// `--password-file`, prints `{"store":URL,"http_port":P}` and serves until
/// stdin closes.
fn clickhouse_server(args: &[String]) -> Result<()> {
    let tag: String = arg(args, "--tag", Some("bench".to_string()))?;
    let password_file: PathBuf = arg(args, "--password-file", None)?;
    std::fs::write(&password_file, test_server::PASSWORD)?;
    let server = test_server::Server::start(&tag);
    println!(
        "{}",
        serde_json::json!({
            "store": format!("clickhouse://127.0.0.1:{}/tracer", server.http_port),
            "http_port": server.http_port,
            "pid": server.pid(),
            "dir": server.dir,
        })
    );
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink)? > 0 {
        sink.clear();
    }
    drop(server);
    Ok(())
}

/// POSTs `--events` events (rounded up to whole batches) from `--senders`
/// senders, each like an agent with a backlog: `--in-flight` batches at
/// once (default: the agent's `forward::IN_FLIGHT`), then the next window
/// once all are answered; all batches built and compressed beforehand;
/// prints events acknowledged, seconds from the first send to the last
/// acknowledgement, and the rate.
fn ingest(args: &[String]) -> Result<()> {
    let urls: String = arg(args, "--url", None)?;
    let urls: Vec<String> = urls
        .split(',')
        .map(|u| format!("{}/v1/ingest", u.trim_end_matches('/')))
        .collect();
    let token = std::fs::read_to_string(arg::<PathBuf>(args, "--token-file", None)?)?
        .trim()
        .to_string();
    let events: usize = arg(args, "--events", Some(1_000_000))?;
    let senders: usize = arg(args, "--senders", Some(4))?;
    let hosts: usize = arg(args, "--hosts", Some(8))?;
    let per_batch: usize = arg(args, "--batch", Some(BATCH_EVENTS))?;
    let in_flight: usize = arg(args, "--in-flight", Some(IN_FLIGHT))?;
    if in_flight == 0 {
        bail!("--in-flight must be at least 1");
    }
    let batches = events.div_ceil(per_batch);
    let start_s: u64 = arg(args, "--start-s", Some(0))?;
    let mut generator = Generator::new(hosts, false, start_s);
    let t0 = Instant::now();
    let mut bodies = Vec::with_capacity(batches);
    let (mut json_bytes, mut wire_bytes) = (0usize, 0usize);
    for n in 0..batches {
        let b = generator.batch(n, per_batch);
        let json = serde_json::to_vec(&b)?;
        // As agents compress (`forward.rs`): one frame that records its size.
        let body = zstd::bulk::compress(&json, 3)?;
        json_bytes += json.len();
        wire_bytes += body.len();
        bodies.push((b.events.len(), bytes::Bytes::from(body)));
    }
    let prepare_s = t0.elapsed().as_secs_f64();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (acked, seconds, latencies) = rt.block_on(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..senders {
            // Sender k sends to aggregator k mod n, like agents spread
            // over a list of aggregators.
            let url = &urls[k % urls.len()];
            let (client, url, token, bodies, next) = (
                client.clone(),
                url.clone(),
                token.clone(),
                bodies.clone(),
                next.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut acked = 0usize;
                let mut lat = Vec::new();
                loop {
                    // Like an agent with a backlog (`forward.rs`): up to
                    // `in_flight` batches at once, the next window once
                    // all of them are answered.
                    let window: Vec<usize> = (0..in_flight)
                        .map(|_| next.fetch_add(1, Ordering::Relaxed))
                        .filter(|i| *i < bodies.len())
                        .collect();
                    if window.is_empty() {
                        return Ok::<_, anyhow::Error>((acked, lat));
                    }
                    let sends = window.iter().map(|&i| {
                        let (n, body) = &bodies[i];
                        let req = client
                            .post(&url)
                            .bearer_auth(&token)
                            .header("content-encoding", "zstd")
                            .header("content-type", "application/json")
                            .body(body.clone());
                        async move {
                            let sent = Instant::now();
                            let resp = req.send().await?;
                            let status = resp.status();
                            let answer: serde_json::Value = resp.json().await?;
                            if !status.is_success() || answer["accepted"] != *n {
                                bail!("batch {i}: {status} {answer}");
                            }
                            Ok((
                                sent.elapsed().as_secs_f64() * 1e3,
                                start.elapsed().as_secs_f64(),
                                *n,
                            ))
                        }
                    });
                    for r in futures_util::future::join_all(sends).await {
                        let r = r?;
                        acked += r.2;
                        lat.push(r);
                    }
                }
            }));
        }
        let mut acked = 0;
        let mut latencies = Vec::new();
        for t in tasks {
            let (a, l) = t.await??;
            acked += a;
            latencies.extend(l);
        }
        Ok::<_, anyhow::Error>((acked, start.elapsed().as_secs_f64(), latencies))
    })?;
    // (answer ms, answered at s, events) per batch.
    let mut done: Vec<(f64, f64, usize)> = latencies;
    done.sort_by(|a, b| a.1.total_cmp(&b.1));
    // The rate over the first and the last tenth of the events
    // acknowledged: does ingest slow down as the store grows?
    let tenth = acked / 10;
    let (mut sum, mut t_first) = (0usize, seconds);
    for d in &done {
        sum += d.2;
        if sum >= tenth {
            t_first = d.1;
            break;
        }
    }
    let (mut sum, mut t_last) = (0usize, 0.0);
    for d in done.iter().rev() {
        sum += d.2;
        if sum >= tenth {
            t_last = d.1;
            break;
        }
    }
    let mut latencies: Vec<f64> = done.iter().map(|d| d.0).collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{}",
        serde_json::json!({
            "events": acked,
            "batches": batches,
            "seconds": seconds,
            "events_per_sec": acked as f64 / seconds,
            "json_bytes": json_bytes,
            "wire_bytes": wire_bytes,
            "prepare_seconds": prepare_s,
            "batch_ms_p50": pct(0.5),
            "batch_ms_p99": pct(0.99),
            "first_tenth_events_per_sec": tenth as f64 / t_first.max(1e-9),
            "last_tenth_events_per_sec": tenth as f64 / (seconds - t_last).max(1e-9),
        })
    );
    Ok(())
}

/// Writes `--lines` log lines through `Store::ingest_many` (no HTTP, no
/// JSON parsing), in groups of `--group` batches: the grep corpus. With
/// `--mixed`, `--lines` events of the ingest mix instead (85% logs).
fn load_store(args: &[String]) -> Result<()> {
    let lines: usize = arg(args, "--lines", None)?;
    let hosts: usize = arg(args, "--hosts", Some(8))?;
    let group: usize = arg(args, "--group", Some(16))?;
    let store = open_store(args)?;
    let start_s: u64 = arg(args, "--start-s", Some(0))?;
    let mut generator = Generator::new(hosts, !args.iter().any(|a| a == "--mixed"), start_s);
    let start = Instant::now();
    let (mut done, mut text_bytes, mut n) = (0usize, 0u64, 0usize);
    while done < lines {
        let mut batches = Vec::with_capacity(group);
        while done < lines && batches.len() < group {
            let b = generator.batch(n, BATCH_EVENTS.min(lines - done));
            for e in &b.events {
                if let EventData::Log { text, .. } = &e.data {
                    text_bytes += text.len() as u64;
                }
            }
            done += b.events.len();
            n += 1;
            batches.push(b);
        }
        for out in store.ingest_many(batches) {
            out?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "lines": done,
            "text_bytes": text_bytes,
            "seconds": seconds,
            "lines_per_sec": done as f64 / seconds,
        })
    );
    Ok(())
}

/// Where ingest time goes, on one thread: zstd + JSON parsing of the
/// batches (the aggregator's parser, and serde's derived one it must agree
/// with), then `Store::ingest` alone. `--logs-only`: log lines only.
fn profile(args: &[String]) -> Result<()> {
    let dir: PathBuf = arg(args, "--data", None)?;
    let events: usize = arg(args, "--events", Some(200_000))?;
    let hosts: usize = arg(args, "--hosts", Some(8))?;
    let mut generator = Generator::new(hosts, args.iter().any(|a| a == "--logs-only"), 0);
    let bodies: Vec<Vec<u8>> = (0..events.div_ceil(BATCH_EVENTS))
        .map(|n| {
            let json = serde_json::to_vec(&generator.batch(n, BATCH_EVENTS)).unwrap();
            zstd::bulk::compress(&json, 3).unwrap()
        })
        .collect();
    let t = Instant::now();
    let jsons: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| zstd::decode_all(&b[..]).unwrap())
        .collect();
    let unzstd = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let derived: Vec<Batch> = jsons
        .iter()
        .map(|j| serde_json::from_slice(j).unwrap())
        .collect();
    let parse_derived = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let batches: Vec<Batch> = jsons
        .iter()
        .map(|j| tracer_user::aggregator::batch_json::parse_batch(j).unwrap())
        .collect();
    let parse = t.elapsed().as_secs_f64();
    anyhow::ensure!(batches == derived, "the two parsers disagree");
    drop(derived);
    let group: usize = arg(args, "--group", Some(1))?;
    let store = SqliteStore::open(&dir)?;
    let cpu0 = process_cpu_s();
    let t = Instant::now();
    let n: usize = batches.iter().map(|b| b.events.len()).sum();
    let mut batches = batches.into_iter().peekable();
    while batches.peek().is_some() {
        for out in store.ingest_many(batches.by_ref().take(group).collect()) {
            out?;
        }
    }
    let ingest = t.elapsed().as_secs_f64();
    let ingest_cpu = process_cpu_s() - cpu0;
    let us = |s: f64| s * 1e6 / n as f64;
    println!(
        "{}",
        serde_json::json!({"events": n, "unzstd_us": us(unzstd), "parse_us": us(parse),
            "parse_derived_us": us(parse_derived),
            "ingest_us": us(ingest), "ingest_cpu_us": us(ingest_cpu)})
    );
    Ok(())
}

/// CPU time of this process (all threads), in seconds.
fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
