//! Two real `tracer aggregator` processes on one ClickHouse (Debian's
//! clickhouse-server 18.16, started by the test with its own directory,
//! config and ports): any agent may send to either, any query may go to
//! either. Exact answers through both, a batch resent to the other
//! aggregator stored once, `tail -f` on one showing what the other
//! ingested, one aggregator SIGKILLed and ClickHouse stopped and started
//! under the other, and the clear errors of a bad start. Unprivileged.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aggregator_common::{Aggregator, TRACER, TempDir, auth, exactly_lines, follow, http, try_http};
use tracer_user::{
    aggregator::clickhouse::{
        SCHEMA_VERSION,
        test_server::{PASSWORD, Server, USER, free_port},
    },
    event::{Event, EventData, StreamName},
};

mod aggregator_common;

fn log(host: &str, ts_ns: u64, text: &str) -> Event {
    Event {
        ts_ns,
        host: host.into(),
        pid: 7,
        tid: 7,
        comm: "node".into(),
        data: EventData::Log {
            stream: StreamName::Stdout,
            path: None,
            text: text.into(),
            truncated: false,
            req_id: None,
        },
    }
}

/// POSTs a batch; Some((accepted, duplicate)) on 200, None otherwise.
fn try_ingest(addr: SocketAddr, host: &str, seq: u64, events: &[Event]) -> Option<(u64, bool)> {
    let body = serde_json::to_vec(&serde_json::json!({
        "host": host, "run_id": "run-1", "seq": seq, "events": events,
    }))
    .unwrap();
    let a = auth();
    let (status, answer) = try_http(
        addr,
        "POST",
        "/v1/ingest",
        &[
            ("Authorization", a.as_str()),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .ok()?;
    if status != 200 {
        eprintln!("ingest answered {status}: {answer}");
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    Some((
        v["accepted"].as_u64().unwrap(),
        v["duplicate"].as_bool().unwrap(),
    ))
}

fn ingest(addr: SocketAddr, host: &str, seq: u64, events: &[Event]) -> (u64, bool) {
    try_ingest(addr, host, seq, events).expect("ingest answered 200")
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A temporary directory `name` holding an API token file and
/// ClickHouse's password file, and the store URL of `server`'s `tracer`
/// database: (directory, token, password, url).
fn store_files(server: &Server, name: &str) -> (TempDir, PathBuf, PathBuf, String) {
    let dir = TempDir::new(name);
    let token = dir.token_file();
    let password = dir.path().join("ch-password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let url = format!("clickhouse://127.0.0.1:{}/tracer", server.http_port);
    (dir, token, password, url)
}

fn store_args<'a>(url: &'a str, password_file: &'a Path, token: &'a Path) -> Vec<&'a str> {
    vec![
        "--store",
        url,
        "--clickhouse-user",
        USER,
        "--clickhouse-password-file",
        password_file.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
    ]
}

/// Event texts of `GET path` on `addr`, in order.
fn texts(addr: SocketAddr, path: &str) -> Vec<String> {
    let (status, body) = http(addr, "GET", path, &[("Authorization", &auth())], b"");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .map(|l| {
            let e: Event = serde_json::from_str(l).unwrap();
            match e.data {
                EventData::Log { text, .. } => format!("{}:{text}", e.host),
                other => other.kind().to_string(),
            }
        })
        .collect()
}

#[test]
fn two_aggregators_share_one_clickhouse() {
    let mut server = Server::start("agg");
    let (_dir, token, password, url) = store_files(&server, "clickhouse");
    let args = store_args(&url, &password, &token);
    let mut a = Aggregator::start_with(&args);
    let b = Aggregator::start_with(&args);

    // tail -f on a, before anything is stored; and a live grep on b.
    let (mut tail, line_rx) = follow(&a, &token, &["-n", "0"]);
    let (mut grep, grep_rx) = follow(
        &b,
        &token,
        &["-n", "0", "--grep", "(one|two) [13] ERROR", "-i"],
    );

    // web-1 sends through a, web-2 through b; times interleave.
    let t0 = now_ns();
    let web1: Vec<Event> = (0..5)
        .map(|i| log("web-1", t0 + i * 20, &format!("one {i} error")))
        .collect();
    let web2: Vec<Event> = (0..5)
        .map(|i| log("web-2", t0 + i * 20 + 10, &format!("two {i}")))
        .collect();
    assert_eq!(ingest(a.addr, "web-1", 0, &web1), (5, false));
    let sent = Instant::now();
    assert_eq!(ingest(b.addr, "web-2", 0, &web2), (5, false));
    // A retry of web-1's batch to the other aggregator is a duplicate.
    assert_eq!(ingest(b.addr, "web-1", 0, &web1), (0, true));

    let want: Vec<String> = (0..5)
        .flat_map(|i| [format!("web-1:one {i} error"), format!("web-2:two {i}")])
        .collect();
    for agg in [&a, &b] {
        assert_eq!(texts(agg.addr, "/v1/events?since=0"), want);
        let (_, count) = http(
            agg.addr,
            "GET",
            "/v1/grep?re=ERROR&i=1&count=1",
            &[("Authorization", &auth())],
            b"",
        );
        assert_eq!(count.trim(), r#"{"count":5}"#);
    }
    // tail -f on a printed web-2's lines, ingested through b.
    let mut got = Vec::new();
    while got.len() < 10 {
        let (at, line) = line_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("tail -f on a printed only {got:?}"));
        if line.contains("two 0") {
            eprintln!(
                "tail -f on a printed b's line {:?} after it was sent",
                at - sent
            );
            assert!(at - sent < Duration::from_secs(2));
        }
        got.push(line);
    }
    assert_eq!(
        got.iter().filter(|l| l.contains("web-2")).count(),
        5,
        "{got:?}"
    );
    let _ = tail.kill();
    let _ = tail.wait();
    // The live grep on b printed exactly the matching lines, ingested
    // through a.
    let grepped = exactly_lines(&grep_rx, 2, "tail -f --grep on b");
    let _ = grep.kill();
    let _ = grep.wait();
    assert!(grepped[0].ends_with("| one 1 error"), "{grepped:?}");
    assert!(grepped[1].ends_with("| one 3 error"), "{grepped:?}");

    // a dies; b goes on. ClickHouse stops: b answers 500 (the agent would
    // keep its spool) and stores nothing; once it is back, the resent
    // batch is stored once.
    a.kill();
    let late = [log("web-2", t0 + 500, "late")];
    server.kill();
    assert_eq!(try_ingest(b.addr, "web-2", 1, &late), None);
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let stored = loop {
        if let Some(r) = try_ingest(b.addr, "web-2", 1, &late) {
            break r;
        }
        assert!(Instant::now() < deadline, "ClickHouse did not come back");
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stored, (1, false));
    assert_eq!(ingest(b.addr, "web-2", 1, &late), (0, true));
    let all = texts(b.addr, "/v1/events?since=0");
    assert_eq!(all.len(), 11);
    assert_eq!(all.last().map(String::as_str), Some("web-2:late"));
}

#[test]
fn bad_store_settings_are_clear_errors() {
    let server = Server::start("bad");
    let dir = TempDir::new("clickhouse-bad");
    let token = dir.token_file();
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "nope\n").unwrap();
    let run = |url: &str, password: &Path| {
        let out = Command::new(TRACER)
            .args(["aggregator", "--listen", "127.0.0.1:0"])
            .args(store_args(url, password, &token))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let url = format!("clickhouse://127.0.0.1:{}/tracer", server.http_port);
    let msg = run(&url, &wrong);
    assert!(
        msg.contains("refused us") && msg.contains("--clickhouse-password-file"),
        "{msg}"
    );
    // Nothing listens there: the message names the URL and what to check.
    let port = free_port();
    let msg = run(&format!("clickhouse://127.0.0.1:{port}/tracer"), &wrong);
    assert!(
        msg.contains(&format!(
            "cannot reach ClickHouse at http://127.0.0.1:{port}"
        )) && msg.contains("is it running")
            && msg.contains("--store"),
        "{msg}"
    );
    let msg = run("clickhouse://127.0.0.1:1/bad-name", &wrong);
    assert!(msg.contains("not a database name"), "{msg}");
}

/// An agent's forwarder given two aggregators, the first down: every
/// event reaches ClickHouse through the second, once.
#[test]
fn the_forwarder_fails_over_to_the_next_aggregator() {
    let server = Server::start("failover");
    let (dir, token, password, url) = store_files(&server, "clickhouse-failover");
    let live = Aggregator::start_with(&store_args(&url, &password, &token));
    let dead = format!("http://127.0.0.1:{}", free_port());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stats = rt.block_on(async {
        let (handle, task) = tracer_user::forward::start(
            tracer_user::forward::ForwardConfig {
                url: format!("{dead},{}", live.url()),
                token: aggregator_common::TOKEN.into(),
                host: "agent-1".into(),
                spool_dir: dir.path().join("spool"),
                spool_max_bytes: 1 << 30,
                tls: Default::default(),
            },
            Duration::from_secs(20),
        )
        .unwrap();
        let t0 = now_ns();
        for i in 0..300 {
            handle.push(&log("agent-1", t0 + i, &format!("line {i}")));
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let stats = handle.stats.clone();
        drop(handle);
        task.await.unwrap();
        stats
    });
    assert!(
        stats
            .acked_batches
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    let all = texts(live.addr, "/v1/events?since=0");
    let want: Vec<String> = (0..300).map(|i| format!("agent-1:line {i}")).collect();
    assert_eq!(all, want);
}

/// A database written by a newer tracer (schema version above this one's):
/// the aggregator refuses to start, names both versions and the way out,
/// and leaves the database alone.
#[test]
fn a_newer_schema_version_stops_the_start() {
    let server = Server::start("schema");
    let (_dir, token, password, url) = store_files(&server, "clickhouse-schema");
    let args = store_args(&url, &password, &token);
    // A first start creates the tables and records this version.
    drop(Aggregator::start_with(&args));
    let newer = SCHEMA_VERSION + 1;
    let sql = |q: &str| {
        let ch: SocketAddr = format!("127.0.0.1:{}", server.http_port).parse().unwrap();
        let (status, body) = http(
            ch,
            "POST",
            "/",
            &[("X-ClickHouse-User", USER), ("X-ClickHouse-Key", PASSWORD)],
            q.as_bytes(),
        );
        assert_eq!(status, 200, "{q}: {body}");
        body
    };
    sql(&format!(
        "INSERT INTO tracer.schema_version (version, applied_ns) VALUES ({newer}, 0)"
    ));
    let out = Command::new(TRACER)
        .args(["aggregator", "--listen", "127.0.0.1:0"])
        .args(&args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains(&format!("schema version {newer}"))
            && msg.contains(&format!("knows up to {SCHEMA_VERSION}"))
            && msg.contains("upgrade tracer"),
        "{msg}"
    );
    // Left as it was: both versions still recorded, nothing dropped.
    assert_eq!(sql("SELECT count() FROM tracer.schema_version").trim(), "2");
}

/// ClickHouse lost while an agent's forwarder sends: the aggregator
/// answers 500, the forwarder keeps its batches (in its spool) and sends
/// them once the server is back; every event arrives, once.
#[test]
fn clickhouse_lost_mid_run_the_agent_spools_and_nothing_is_lost() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut server = Server::start("lost");
    let (dir, token, password, url) = store_files(&server, "clickhouse-lost");
    let agg = Aggregator::start_with(&store_args(&url, &password, &token));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let count = |addr| texts(addr, "/v1/events?since=0").len();
    rt.block_on(async {
        let (handle, task) = tracer_user::forward::start(
            tracer_user::forward::ForwardConfig {
                url: agg.url(),
                token: aggregator_common::TOKEN.into(),
                host: "agent-1".into(),
                spool_dir: dir.path().join("spool"),
                spool_max_bytes: 1 << 30,
                tls: Default::default(),
            },
            Duration::from_secs(60),
        )
        .unwrap();
        let t0 = now_ns();
        for i in 0..200 {
            handle.push(&log("agent-1", t0 + i, &format!("before {i}")));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(agg.addr) < 200 {
            assert!(Instant::now() < deadline, "the first 200 did not arrive");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server.kill();
        let acked = handle.stats.acked_batches.load(Relaxed);
        for i in 0..200 {
            handle.push(&log("agent-1", t0 + 1000 + i, &format!("during {i}")));
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            handle.stats.acked_batches.load(Relaxed),
            acked,
            "nothing is acknowledged while ClickHouse is down"
        );
        let spooled = std::fs::read_dir(dir.path().join("spool"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".zst"))
            })
            .count();
        assert!(spooled > 0, "the batches wait in the spool");
        server.restart();
        let stats = handle.stats.clone();
        drop(handle);
        task.await.unwrap();
        assert_eq!(stats.queue_dropped.load(Relaxed), 0);
        assert_eq!(stats.spool_dropped.load(Relaxed), 0);
    });
    let want: Vec<String> = (0..200)
        .map(|i| format!("agent-1:before {i}"))
        .chain((0..200).map(|i| format!("agent-1:during {i}")))
        .collect();
    assert_eq!(texts(agg.addr, "/v1/events?since=0"), want);
}

/// `tail -f -n 0 --host quiet`, where quiet's newest line is older than
/// the 2 s a polling tail reads again behind the store's newest event
/// (400,000 lines of quiet, then a pause, then another host's), prints
/// only quiet's lines that come after it started, and stops being read
/// for as soon as its client leaves: the aggregator then stops at once
/// when told to.
#[test]
fn a_tail_on_a_store_with_history_prints_only_new_lines() {
    let server = Server::start("tail-history");
    let (_dir, token, password, url) = store_files(&server, "clickhouse-tail");
    let mut a = Aggregator::start_with(&store_args(&url, &password, &token));
    let t0 = now_ns();
    for seq in 0..200u64 {
        let lines: Vec<Event> = (0..2000)
            .map(|i| log("quiet", t0 + seq * 2000 + i, &format!("old {seq}-{i}")))
            .collect();
        assert_eq!(ingest(a.addr, "quiet", seq, &lines), (2000, false));
    }
    // Past the 2 s a polling tail reads again behind the newest event,
    // which is another host's.
    thread::sleep(Duration::from_millis(2500));
    let busy: Vec<Event> = (0..10)
        .map(|i| log("busy", now_ns() + i, &format!("busy {i}")))
        .collect();
    assert_eq!(ingest(a.addr, "busy", 0, &busy), (10, false));
    let (mut tail, line_rx) = follow(&a, &token, &["-n", "0", "--host", "quiet"]);
    let t1 = now_ns();
    let new: Vec<Event> = (0..3)
        .map(|i| log("quiet", t1 + i, &format!("new {i}")))
        .collect();
    assert_eq!(ingest(a.addr, "quiet", 200, &new), (3, false));
    let got = exactly_lines(&line_rx, 3, "tail -f");
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, l)| l.contains(&format!("new {i}"))),
        "{got:?}"
    );
    let _ = tail.kill();
    let _ = tail.wait();
    thread::sleep(Duration::from_millis(300));
    assert!(
        a.terminate_within(Duration::from_secs(3)),
        "the aggregator went on reading for a tail whose client left"
    );
}

/// `tail -f` started while a firehose arrives prints its first new line
/// at once, the firehose still running. A polling tail reads what its
/// snapshot saw (the 2 s behind its cursor) to skip it later; that read
/// used to go on while every page was full, so during a firehose the tail
/// printed nothing at all, for as long as the firehose lasted.
#[test]
fn a_tail_started_during_a_firehose_prints_at_once() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    let server = Server::start("tail-firehose");
    let (_dir, token, password, url) = store_files(&server, "clickhouse-firehose");
    let a = Aggregator::start_with(&store_args(&url, &password, &token));
    // Two senders, 2000 lines a batch, until told to stop (at most 2,000
    // batches each: a bounded load).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = ["fire-a", "fire-b"]
        .into_iter()
        .map(|host| {
            let (stop, sent, addr) = (stop.clone(), sent.clone(), a.addr);
            thread::spawn(move || {
                for seq in 0..2000u64 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let t = now_ns();
                    let lines: Vec<Event> = (0..2000)
                        .map(|i| log(host, t + i, &format!("{host} {seq}-{i}")))
                        .collect();
                    assert_eq!(ingest(addr, host, seq, &lines), (2000, false));
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // The firehose well under way: more than its 2 s of rewind behind.
    thread::sleep(Duration::from_secs(3));
    let before = sent.load(Ordering::Relaxed);
    assert!(before > 10, "only {before} batches in 3 s");
    let started = Instant::now();
    let (mut tail, line_rx) = follow(&a, &token, &["-n", "0"]);
    let first = line_rx.recv_timeout(Duration::from_secs(10));
    let running = sent.load(Ordering::Relaxed) < 4000;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let (at, line) = first.expect("tail -f printed nothing within 10 s of a firehose");
    assert!(line.contains("fire-"), "{line}");
    assert!(running, "the firehose ended before the tail printed");
    eprintln!(
        "first line {:?} after the tail started, {before} batches of 2000 before it",
        at - started
    );
}

/// A grep whose lines fill more than one page of the answer (ClickHouse
/// reads 10,000 rows per page, `Store::page_rows`) lists every match
/// exactly once, in time order, through both pages; a limit cuts it
/// exactly; the whole timeline, 2.5 pages, comes back whole.
#[test]
fn a_long_grep_listing_is_exact_across_pages() {
    let server = Server::start("pages");
    let (_dir, token, password, url) = store_files(&server, "clickhouse-pages");
    let a = Aggregator::start_with(&store_args(&url, &password, &token));
    let t0 = now_ns();
    let all: Vec<Event> = (0..25_000u64)
        .map(|i| {
            let text = if i % 2 == 0 {
                format!("match {i}")
            } else {
                format!("other {i}")
            };
            log("pages", t0 + i * 1000, &text)
        })
        .collect();
    for (seq, chunk) in all.chunks(2000).enumerate() {
        assert_eq!(
            ingest(a.addr, "pages", seq as u64, chunk),
            (chunk.len() as u64, false)
        );
    }
    let matches: Vec<String> = (0..25_000u64)
        .step_by(2)
        .map(|i| format!("pages:match {i}"))
        .collect();
    assert_eq!(texts(a.addr, "/v1/grep?re=match"), matches);
    assert_eq!(
        texts(a.addr, "/v1/grep?re=match&limit=10001"),
        matches[..10_001]
    );
    let timeline = texts(a.addr, "/v1/events");
    assert_eq!(timeline.len(), 25_000);
    assert!(
        timeline
            .iter()
            .enumerate()
            .all(|(i, t)| t.ends_with(&format!(" {i}"))),
        "the timeline is out of order"
    );
}
