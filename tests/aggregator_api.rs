//! The real `tracer aggregator` binary on a free loopback port, with a
//! temporary data directory and token file, driven over HTTP and through
//! the real `tracer timeline`, `tracer grep` and `tracer tail` clients.
//! Unprivileged.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::SocketAddr,
    path::Path,
    process::{Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aggregator_common::{Aggregator, TRACER, TempDir, auth, exactly_lines, follow, http, try_http};
use tracer_user::event::{Event, EventData, StreamName};

mod aggregator_common;

fn ingest_raw(addr: SocketAddr, body: &[u8], extra: &[(&str, &str)]) -> (u16, String) {
    let a = auth();
    let mut headers = vec![
        ("Authorization", a.as_str()),
        ("Content-Type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    http(addr, "POST", "/v1/ingest", &headers, body)
}

fn batch_json(host: &str, run_id: &str, seq: u64, events: &[Event]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "host": host, "run_id": run_id, "seq": seq, "events": events,
    }))
    .unwrap()
}

/// POSTs a batch (zstd-compressed when `zstd`) and returns (accepted, duplicate).
fn ingest(addr: SocketAddr, host: &str, seq: u64, events: &[Event], zstd: bool) -> (u64, bool) {
    let json = batch_json(host, "run-a", seq, events);
    let (status, body) = if zstd {
        let z = zstd::encode_all(&json[..], 3).unwrap();
        ingest_raw(addr, &z, &[("Content-Encoding", "zstd")])
    } else {
        ingest_raw(addr, &json, &[])
    };
    assert_eq!(status, 200, "ingest answered {status}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        v["accepted"].as_u64().unwrap(),
        v["duplicate"].as_bool().unwrap(),
    )
}

fn log(host: &str, pid: u32, ts_ns: u64, stream: StreamName, text: &str) -> Event {
    Event {
        ts_ns,
        host: host.into(),
        pid,
        tid: pid,
        comm: "node".into(),
        data: EventData::Log {
            stream,
            path: None,
            text: text.into(),
            truncated: false,
            req_id: None,
        },
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// Runs a client subcommand against `agg` and returns its output.
fn cli(agg: &Aggregator, token_file: &Path, args: &[&str]) -> Output {
    Command::new(TRACER)
        .args(args)
        .args(["--aggregator", &agg.url(), "--token-file"])
        .arg(token_file)
        .stdin(Stdio::null())
        .output()
        .expect("running the tracer client")
}

fn stdout_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// Two hosts whose lines interleave in time (sent out of order: web-2's
/// batch first, each batch itself unsorted).
fn two_host_events(base: u64) -> (Vec<Event>, Vec<Event>) {
    let ms = 1_000_000;
    let web1 = vec![
        log(
            "web-1",
            101,
            base + 30 * ms,
            StreamName::Stderr,
            "ERROR disk full",
        ),
        log(
            "web-1",
            101,
            base + 10 * ms,
            StreamName::Stdout,
            "GET /a 200",
        ),
        log(
            "web-1",
            101,
            base + 50 * ms,
            StreamName::Stdout,
            "GET /c 200",
        ),
    ];
    let web2 = vec![
        log(
            "web-2",
            202,
            base + 40 * ms,
            StreamName::Stdout,
            "upstream error: timeout",
        ),
        log(
            "web-2",
            202,
            base + 20 * ms,
            StreamName::Stdout,
            "GET /b 500",
        ),
        Event {
            data: EventData::Gc {
                duration_ns: 1_500_000,
            },
            ..log("web-2", 202, base + 45 * ms, StreamName::Stdout, "")
        },
    ];
    (web1, web2)
}

#[test]
fn two_hosts_in_one_timeline_grep_tail_and_dedupe() {
    let dir = TempDir::new("two");
    let token = dir.token_file();
    let agg = Aggregator::start(&dir.path().join("data"), &token, &[]);
    // A minute ago, so the default `--since 5m` window holds it.
    let base = (now_ns() - 60_000_000_000) / 1_000_000_000 * 1_000_000_000;
    let ms = 1_000_000;
    let (web1, web2) = two_host_events(base);
    assert_eq!(ingest(agg.addr, "web-2", 0, &web2, true), (3, false));
    assert_eq!(ingest(agg.addr, "web-1", 0, &web1, false), (3, false));

    // timeline: one order across hosts, by time.
    let out = stdout_ok(&cli(&agg, &token, &["timeline", "--json"]), "timeline");
    let got: Vec<(String, u64)> = out
        .lines()
        .map(|l| {
            let e: Event = serde_json::from_str(l).unwrap();
            (e.host, e.ts_ns)
        })
        .collect();
    let want: Vec<(String, u64)> = [
        ("web-1", 10),
        ("web-2", 20),
        ("web-1", 30),
        ("web-2", 40),
        ("web-2", 45),
        ("web-1", 50),
    ]
    .iter()
    .map(|(h, t)| (h.to_string(), base + t * ms))
    .collect();
    assert_eq!(got, want);
    let text = stdout_ok(&cli(&agg, &token, &["timeline"]), "timeline");
    assert_eq!(
        lines(&text),
        [
            format!(
                "{} web-1 101/101 node log stdout| GET /a 200",
                rfc3339(base + 10 * ms)
            ),
            format!(
                "{} web-2 202/202 node log stdout| GET /b 500",
                rfc3339(base + 20 * ms)
            ),
            format!(
                "{} web-1 101/101 node log stderr| ERROR disk full",
                rfc3339(base + 30 * ms)
            ),
            format!(
                "{} web-2 202/202 node log stdout| upstream error: timeout",
                rfc3339(base + 40 * ms)
            ),
            format!(
                "{} web-2 202/202 node gc pause=1.500ms",
                rfc3339(base + 45 * ms)
            ),
            format!(
                "{} web-1 101/101 node log stdout| GET /c 200",
                rfc3339(base + 50 * ms)
            ),
        ]
    );
    // Filters: host, kind, and a window.
    let text = stdout_ok(
        &cli(
            &agg,
            &token,
            &["timeline", "--host", "web-2", "--kind", "gc"],
        ),
        "timeline --host --kind",
    );
    assert_eq!(lines(&text).len(), 1);
    assert!(text.contains("web-2 202/202 node gc"));
    let since = (base + 20 * ms).to_string();
    let until = (base + 45 * ms).to_string();
    let text = stdout_ok(
        &cli(
            &agg,
            &token,
            &["timeline", "--since", &since, "--until", &until, "--json"],
        ),
        "timeline window",
    );
    assert_eq!(lines(&text).len(), 3);

    // grep: regex over log lines, by time, rg-like prefixes.
    let text = stdout_ok(&cli(&agg, &token, &["grep", "error"]), "grep");
    assert_eq!(
        lines(&text),
        [format!(
            "{} web-2 202 stdout| upstream error: timeout",
            rfc3339(base + 40 * ms)
        )]
    );
    let text = stdout_ok(&cli(&agg, &token, &["grep", "-i", "error"]), "grep -i");
    assert_eq!(
        lines(&text),
        [
            format!(
                "{} web-1 101 stderr| ERROR disk full",
                rfc3339(base + 30 * ms)
            ),
            format!(
                "{} web-2 202 stdout| upstream error: timeout",
                rfc3339(base + 40 * ms)
            ),
        ]
    );
    let text = stdout_ok(
        &cli(&agg, &token, &["grep", r"^GET /\w 200$"]),
        "grep regex",
    );
    assert_eq!(
        lines(&text),
        [
            format!("{} web-1 101 stdout| GET /a 200", rfc3339(base + 10 * ms)),
            format!("{} web-1 101 stdout| GET /c 200", rfc3339(base + 50 * ms)),
        ]
    );
    let count = |args: &[&str]| -> String {
        stdout_ok(&cli(&agg, &token, args), "grep -c")
            .trim()
            .to_string()
    };
    assert_eq!(count(&["grep", "-c", "GET"]), "3");
    assert_eq!(
        count(&["grep", "-c", "-i", "error", "--host", "web-2"]),
        "1"
    );
    assert_eq!(count(&["grep", "-c", ".", "--stream", "stderr"]), "1");
    assert_eq!(count(&["grep", "-c", "."]), "5");
    let json = stdout_ok(
        &cli(&agg, &token, &["grep", "disk", "--json"]),
        "grep --json",
    );
    let e: Event = serde_json::from_str(json.trim()).unwrap();
    assert_eq!((e.host.as_str(), e.ts_ns), ("web-1", base + 30 * ms));

    // tail (no -f): the latest events by time.
    let text = stdout_ok(&cli(&agg, &token, &["tail", "-n", "2"]), "tail");
    assert_eq!(
        lines(&text),
        [
            format!(
                "{} web-2 202/202 node gc pause=1.500ms",
                rfc3339(base + 45 * ms)
            ),
            format!(
                "{} web-1 101/101 node log stdout| GET /c 200",
                rfc3339(base + 50 * ms)
            ),
        ]
    );
    let text = stdout_ok(
        &cli(
            &agg,
            &token,
            &["tail", "--host", "web-2", "--kind", "log", "--json"],
        ),
        "tail --host --kind",
    );
    assert_eq!(lines(&text).len(), 2);
    assert!(lines(&text)[1].contains("upstream error: timeout"));

    // The same batch again (a retry after a lost answer) is stored once.
    assert_eq!(ingest(agg.addr, "web-1", 0, &web1, true), (0, true));
    assert_eq!(ingest(agg.addr, "web-2", 0, &web2, false), (0, true));
    assert_eq!(count(&["grep", "-c", "."]), "5");
    let out = stdout_ok(&cli(&agg, &token, &["timeline", "--json"]), "timeline");
    assert_eq!(lines(&out).len(), 6);
    // The next seq is new.
    assert_eq!(ingest(agg.addr, "web-1", 1, &web1[..1], false), (1, false));
    assert_eq!(count(&["grep", "-c", "."]), "6");
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// 1 GiB of zeros, zstd-compressed (a few tens of KiB).
fn zstd_bomb() -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    let zeros = vec![0u8; 4 << 20];
    for _ in 0..256 {
        enc.write_all(&zeros).unwrap();
    }
    enc.finish().unwrap()
}

/// 100 KB of zeros compressed in one call (which records the size in the
/// frame header), the recorded size then changed to `claim`.
fn sized_frame_claiming(claim: u32) -> Vec<u8> {
    let mut frame = zstd::bulk::compress(&vec![0u8; 100_000], 1).unwrap();
    // The frame header descriptor after the 4-byte magic number: the
    // size field's width (bits 7-6; 2 = 4 bytes), single segment (bit 5:
    // no window byte), dictionary id width (bits 1-0).
    let descriptor = frame[4];
    assert_eq!(descriptor >> 6, 2, "a 4-byte size field");
    let at = 5 + usize::from(descriptor & 0x20 == 0) + [0, 1, 2, 4][usize::from(descriptor & 3)];
    assert_eq!(frame[at..at + 4], 100_000u32.to_le_bytes());
    frame[at..at + 4].copy_from_slice(&claim.to_le_bytes());
    frame
}

#[test]
fn rejections_do_not_stop_the_server() {
    let dir = TempDir::new("reject");
    let token = dir.token_file();
    let agg = Aggregator::start(
        &dir.path().join("data"),
        &token,
        &["--max-body", "1048576", "--max-decompressed", "16777216"],
    );
    let now = now_ns();
    let good = batch_json(
        "h",
        "run-r",
        0,
        &[log("h", 1, now, StreamName::Stdout, "ok")],
    );

    // Wrong or missing token: 401, on every route.
    let (s, body) = http(
        agg.addr,
        "POST",
        "/v1/ingest",
        &[("Authorization", "Bearer wrong-token-0123456789abcdef")],
        &good,
    );
    assert_eq!(s, 401, "{body}");
    assert_eq!(http(agg.addr, "POST", "/v1/ingest", &[], &good).0, 401);
    assert_eq!(http(agg.addr, "GET", "/v1/events?since=0", &[], b"").0, 401);
    assert_eq!(
        http(
            agg.addr,
            "GET",
            "/v1/grep?re=x",
            &[("Authorization", "Bearer ")],
            b""
        )
        .0,
        401
    );
    let bad_token = dir.path().join("bad-token");
    fs::write(&bad_token, "nope-nope-nope-nope").unwrap();
    let out = cli(&agg, &bad_token, &["timeline"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the aggregator rejected the token (check --token-file)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Malformed JSON, and JSON that is not a batch: 400.
    let (s, body) = ingest_raw(agg.addr, b"{\"host\": \"h\", \"run_id\": ", &[]);
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("malformed batch"), "{body}");
    assert_eq!(ingest_raw(agg.addr, b"[1,2,3]", &[]).0, 400);
    let foreign = batch_json(
        "h",
        "run-r",
        9,
        &[log("other", 1, now, StreamName::Stdout, "x")],
    );
    assert_eq!(ingest_raw(agg.addr, &foreign, &[]).0, 400);
    // Not zstd although it says so: 400. An unknown encoding: 415.
    assert_eq!(
        ingest_raw(agg.addr, b"plain", &[("Content-Encoding", "zstd")]).0,
        400
    );
    assert_eq!(
        ingest_raw(agg.addr, &good, &[("Content-Encoding", "gzip")]).0,
        415
    );

    // A body over --max-body: 413.
    let big = vec![b' '; 2 << 20];
    let (s, body) = ingest_raw(agg.addr, &big, &[]);
    assert_eq!(s, 413, "{body}");

    // A zstd bomb: 1 GiB of zeros in a small body; 413 quickly, and the
    // server never holds much more than --max-decompressed.
    let bomb = zstd_bomb();
    assert!(bomb.len() < 100 << 10, "bomb is {} bytes", bomb.len());
    let start = Instant::now();
    let (s, body) = ingest_raw(agg.addr, &bomb, &[("Content-Encoding", "zstd")]);
    let took = start.elapsed();
    assert_eq!(s, 413, "{body}");
    assert!(took < Duration::from_secs(3), "the bomb took {took:?}");
    let peak = vm_kib(agg.pid(), "VmHWM:");
    eprintln!(
        "zstd bomb: {} bytes -> 413 in {took:?}; aggregator peak RSS {peak} KiB",
        bomb.len()
    );
    assert!(peak < 96 * 1024, "peak RSS {peak} KiB after the bomb");

    // Frames that record their size (as agents send): one that claims
    // 1 GiB is refused by its header alone; one that claims 5 MB (under
    // the cap, and under the 8 MiB window limit that a single-segment
    // frame's size counts against) but holds 100 KB is refused as bad
    // zstd, its buffer never written past what it held.
    let start = Instant::now();
    let (s, body) = ingest_raw(
        agg.addr,
        &sized_frame_claiming(1 << 30),
        &[("Content-Encoding", "zstd")],
    );
    assert_eq!(s, 413, "{body}");
    assert!(body.contains("decompressed"), "{body}");
    let (s, body) = ingest_raw(
        agg.addr,
        &sized_frame_claiming(5_000_000),
        &[("Content-Encoding", "zstd")],
    );
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("not valid zstd"), "{body}");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the sized frames took {took:?}"
    );
    let peak = vm_kib(agg.pid(), "VmHWM:");
    assert!(
        peak < 96 * 1024,
        "peak RSS {peak} KiB after the sized frames"
    );

    // Bad queries: 400 with a reason.
    let a = auth();
    let (s, body) = http(
        agg.addr,
        "GET",
        "/v1/grep?re=(unclosed",
        &[("Authorization", &a)],
        b"",
    );
    assert_eq!(s, 400);
    assert!(body.contains("invalid regex"), "{body}");
    let (s, body) = http(
        agg.addr,
        "GET",
        "/v1/events?kind=logs",
        &[("Authorization", &a)],
        b"",
    );
    assert_eq!(s, 400);
    assert!(body.contains("unknown kind"), "{body}");

    // Still serving: a valid batch is accepted and visible.
    let (s, body) = ingest_raw(agg.addr, &good, &[]);
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"accepted\":1"), "{body}");
    let (s, body) = http(
        agg.addr,
        "GET",
        "/v1/grep?re=.&count=1",
        &[("Authorization", &a)],
        b"",
    );
    assert_eq!((s, body.trim()), (200, "{\"count\":1}"));
}

#[test]
fn client_errors_are_plain() {
    let dir = TempDir::new("down");
    let token = dir.token_file();
    // Nothing listens on this port once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = Command::new(TRACER)
        .args(["grep", "x", "--aggregator", &url, "--token-file"])
        .arg(&token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach the aggregator at {url} (is `tracer aggregator` running?)"
        )),
        "{err}"
    );
    let out = Command::new(TRACER)
        .args(["timeline", "--aggregator", &url])
        .env_remove("TRACER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token"));
}

#[test]
fn tail_follow_prints_a_new_line_within_a_second() {
    let dir = TempDir::new("follow");
    let token = dir.token_file();
    let agg = Aggregator::start(&dir.path().join("data"), &token, &[]);
    // Something older, which -n 0 leaves out.
    ingest(
        agg.addr,
        "web-1",
        0,
        &[log("web-1", 1, now_ns(), StreamName::Stdout, "old line")],
        false,
    );
    let (mut child, line_rx) = follow(&agg, &token, &["-n", "0", "--host", "web-1"]);
    // Another host's line is filtered out; web-1's arrives.
    ingest(
        agg.addr,
        "web-2",
        0,
        &[log(
            "web-2",
            2,
            now_ns(),
            StreamName::Stdout,
            "not this one",
        )],
        false,
    );
    let sent = Instant::now();
    ingest(
        agg.addr,
        "web-1",
        1,
        &[log("web-1", 1, now_ns(), StreamName::Stdout, "fresh line")],
        true,
    );
    let (at, line) = line_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("tail -f printed nothing within 5 s");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.ends_with("web-1 1/1 node log stdout| fresh line"),
        "{line}"
    );
    let delay = at.saturating_duration_since(sent);
    eprintln!("tail -f printed the line {delay:?} after the ingest was sent");
    assert!(delay < Duration::from_secs(1), "printed after {delay:?}");
}

#[test]
fn kill_9_mid_ingest_keeps_every_acknowledged_batch_exactly_once() {
    const PER_BATCH: usize = 50;
    let dir = TempDir::new("crash");
    let token = dir.token_file();
    let data = dir.path().join("data");
    let agg = Aggregator::start(&data, &token, &[]);
    let addr = agg.addr;
    let base = now_ns();
    let batch = move |seq: u64| -> Vec<Event> {
        (0..PER_BATCH)
            .map(|i| {
                log(
                    "crash",
                    9,
                    base + seq * 1_000_000 + i as u64,
                    StreamName::Stdout,
                    &format!("seq={seq} i={i}"),
                )
            })
            .collect()
    };
    // An ingest loop that records what was acknowledged, until the server dies.
    let stop = Arc::new(AtomicBool::new(false));
    let (acked_tx, acked_rx) = mpsc::channel::<u64>();
    let sender = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut seq = 0u64;
            loop {
                if stop.load(Ordering::Relaxed) || seq >= 100_000 {
                    break (seq, None);
                }
                let json = batch_json("crash", "run-c", seq, &batch(seq));
                let body = zstd::encode_all(&json[..], 3).unwrap();
                let a = auth();
                let headers = [("Authorization", a.as_str()), ("Content-Encoding", "zstd")];
                match try_http(addr, "POST", "/v1/ingest", &headers, &body) {
                    Ok((200, _)) => {
                        let _ = acked_tx.send(seq);
                    }
                    // The server is gone; this batch may or may not be stored.
                    other => break (seq + 1, Some(other)),
                }
                seq += 1;
            }
        })
    };
    // Let some batches through, then kill -9 while the loop is running.
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.len() < 40 && Instant::now() < deadline {
        if let Ok(s) = acked_rx.recv_timeout(Duration::from_millis(100)) {
            acked.push(s);
        }
    }
    let mut agg = agg;
    agg.kill(); // SIGKILL, waited for
    stop.store(true, Ordering::Relaxed);
    let (attempted, last) = sender.join().unwrap();
    eprintln!("kill -9: the last request got {last:?}");
    acked.extend(acked_rx.try_iter());
    assert!(
        acked.len() >= 40,
        "only {} batches acknowledged",
        acked.len()
    );
    drop(agg);

    // Restart on the same data directory.
    let agg = Aggregator::start(&data, &token, &[]);
    let a = auth();
    let (s, body) = http(
        agg.addr,
        "GET",
        "/v1/events?host=crash&since=0",
        &[("Authorization", &a)],
        b"",
    );
    assert_eq!(s, 200);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for line in body.lines() {
        let e: Event = serde_json::from_str(line).unwrap();
        let EventData::Log { text, .. } = e.data else {
            panic!("not a log line: {line}")
        };
        *seen.entry(text).or_default() += 1;
    }
    for &seq in &acked {
        for i in 0..PER_BATCH {
            let key = format!("seq={seq} i={i}");
            assert_eq!(seen.get(&key), Some(&1), "{key} (acknowledged)");
        }
    }
    eprintln!(
        "kill -9: {} batches acknowledged, {attempted} attempted, {} stored after restart",
        acked.len(),
        seen.len() / PER_BATCH
    );
    assert!(seen.values().all(|&n| n == 1), "a line is stored twice");
    // Whole batches only: the one in flight at the kill is all there or absent.
    assert_eq!(seen.len() % PER_BATCH, 0);

    // The agent resends what it has not seen acknowledged: nothing doubles.
    for seq in 0..attempted {
        let json = batch_json("crash", "run-c", seq, &batch(seq));
        let (s, body) = ingest_raw(agg.addr, &json, &[]);
        assert_eq!(s, 200, "{body}");
        let dup = body.contains("\"duplicate\":true");
        if acked.contains(&seq) {
            assert!(dup, "acknowledged batch {seq} stored again: {body}");
        }
    }
    let (_, body) = http(
        agg.addr,
        "GET",
        "/v1/grep?re=%5Eseq%3D&host=crash&count=1",
        &[("Authorization", &a)],
        b"",
    );
    assert_eq!(
        body.trim(),
        format!("{{\"count\":{}}}", attempted as usize * PER_BATCH)
    );
}

/// `tail -f --grep RE -i`, a live grep: first the latest matching line,
/// then exactly the new lines that match, of any host; a bad regex is
/// refused with the reason.
#[test]
fn tail_follow_greps_new_lines() {
    let dir = TempDir::new("follow-grep");
    let token = dir.token_file();
    let agg = Aggregator::start(&dir.path().join("data"), &token, &[]);
    let line = |host: &str, text: &str| log(host, 1, now_ns(), StreamName::Stdout, text);
    ingest(
        agg.addr,
        "web-1",
        0,
        &[
            line("web-1", "old error one"),
            line("web-1", "old ERROR two"),
            line("web-1", "old fine"),
        ],
        false,
    );
    let (mut child, line_rx) = follow(&agg, &token, &["-n", "1", "--grep", "error", "-i"]);
    ingest(
        agg.addr,
        "web-1",
        1,
        &[
            line("web-1", "fine"),
            line("web-1", "disk Error"),
            line("web-1", "fine again"),
        ],
        false,
    );
    ingest(
        agg.addr,
        "web-2",
        0,
        &[line("web-2", "an ERROR on web-2"), line("web-2", "errand")],
        false,
    );
    let got = exactly_lines(&line_rx, 3, "tail -f --grep");
    let _ = child.kill();
    let _ = child.wait();
    let texts: Vec<&str> = got.iter().map(|l| l.rsplit_once("| ").unwrap().1).collect();
    assert_eq!(texts, ["old ERROR two", "disk Error", "an ERROR on web-2"]);
    let bad = cli(&agg, &token, &["tail", "--grep", "(unclosed"]);
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("invalid regex"), "{said}");
}
