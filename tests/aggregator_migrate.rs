//! `tracer migrate`: an SQLite store filled through a real `tracer
//! aggregator` (logs, tcp, HTTP exchanges between two hosts whose clocks
//! are 3 s apart, so the store holds a clock offset) is copied into a real
//! ClickHouse 18.16 (the test's own server); an aggregator on ClickHouse
//! then gives exactly the answers the SQLite one gave: every event with
//! its time, grep counts, offsets and cross-host traces. A second run
//! stores nothing and changes no answer. Unprivileged.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use aggregator_common::{Aggregator, TRACER, TempDir, auth, http};
use tracer_user::{
    aggregator::clickhouse::test_server::{PASSWORD, Server, USER},
    event::{Event, EventData, HttpExchange, HttpSide, StreamName, Tuple},
};

mod aggregator_common;

const MS: i64 = 1_000_000;
const REQUESTS: usize = 12;
/// web-2's clock runs this far ahead of web-1's.
const SKEW: i64 = 3_000 * MS;

fn ingest(addr: SocketAddr, host: &str, seq: u64, events: &[Event]) {
    let body = serde_json::to_vec(&serde_json::json!({
        "host": host, "run_id": format!("run-{host}"), "seq": seq, "events": events,
    }))
    .unwrap();
    let a = auth();
    let headers = [
        ("Authorization", a.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, answer) = http(addr, "POST", "/v1/ingest", &headers, &body);
    assert_eq!(status, 200, "ingest {host}/{seq}: {answer}");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn event(host: &str, ts: i64, data: EventData) -> Event {
    Event {
        ts_ns: u64::try_from(ts).unwrap(),
        host: host.into(),
        pid: 200,
        tid: 201,
        comm: "node".into(),
        data,
    }
}

fn exchange(side: HttpSide, dur: i64, port: u16, req_id: String) -> EventData {
    let (local, remote) = match side {
        HttpSide::Client => (("10.88.0.1", port), ("10.88.0.2", 8080)),
        HttpSide::Server => (("10.88.0.2", 8080), ("10.88.0.1", port)),
    };
    EventData::Http(Box::new(HttpExchange {
        side,
        method: "POST".into(),
        path: "/orders".into(),
        status: 201,
        duration_ns: u64::try_from(dur).unwrap(),
        req_bytes: 300,
        resp_bytes: 40,
        tuple: Tuple {
            saddr: ip(local.0),
            sport: local.1,
            daddr: ip(remote.0),
            dport: remote.1,
        },
        tls: false,
        req_id,
        parent_req_id: None,
        traceparent: None,
        request_id: None,
        complete: true,
        req_body: None,
        resp_body: None,
    }))
}

fn line(text: String, stream: StreamName, req_id: Option<String>) -> EventData {
    EventData::Log {
        stream,
        path: None,
        text,
        truncated: false,
        req_id,
    }
}

/// Each host's events: web-1 calls web-2 once per request (a new
/// connection each), both log about it, web-1 also logs on its own.
fn events(base: i64) -> [(&'static str, Vec<Event>); 2] {
    let (mut w1, mut w2) = (Vec::new(), Vec::new());
    for i in 0..REQUESTS {
        let t = base + i as i64 * 40 * MS;
        let port = 41_000 + i as u16;
        let cli = format!("c{i}-cli");
        let srv = format!("s{i}-srv");
        w1.push(event(
            "web-1",
            t,
            line(format!("calling orders {i}"), StreamName::Stdout, None),
        ));
        w1.push(event(
            "web-1",
            t + MS,
            exchange(HttpSide::Client, 20 * MS, port, cli.clone()),
        ));
        w2.push(event(
            "web-2",
            t + 2 * MS + SKEW,
            exchange(HttpSide::Server, 16 * MS, port, srv.clone()),
        ));
        w2.push(event(
            "web-2",
            t + 3 * MS + SKEW,
            line(
                format!("order {i} stored ERROR-free"),
                StreamName::Stderr,
                Some(srv),
            ),
        ));
        w2.push(event(
            "web-2",
            t + 4 * MS + SKEW,
            EventData::TcpAccept(Tuple {
                saddr: ip("10.88.0.2"),
                sport: 8080,
                daddr: ip("10.88.0.1"),
                dport: port,
            }),
        ));
        w1.push(event(
            "web-1",
            t + 30 * MS,
            line(
                format!("orders {i} answered with ünïcödé and a\ttab"),
                StreamName::Stdout,
                Some(cli),
            ),
        ));
    }
    [("web-1", w1), ("web-2", w2)]
}

fn tracer_lines(agg: &Aggregator, token: &Path, args: &[&str]) -> Vec<String> {
    // The subcommand, the client's flags, then the rest (a `--` may end it).
    let out = Command::new(TRACER)
        .arg(args[0])
        .args(["--aggregator", &agg.url(), "--token-file"])
        .arg(token)
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .expect("running tracer");
    assert!(
        out.status.success(),
        "tracer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// What an aggregator answers about the store: the whole timeline, grep
/// counts, each host's offset and every request's trace.
#[derive(Debug, PartialEq)]
struct Answers {
    timeline: Vec<Event>,
    grep: Vec<String>,
    offsets: Vec<(String, i64)>,
    traces: Vec<Vec<Event>>,
}

fn answers(agg: &Aggregator, token: &Path) -> Answers {
    let parse = |lines: Vec<String>| -> Vec<Event> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    };
    let timeline = parse(tracer_lines(
        agg,
        token,
        &["timeline", "--since", "0", "--json", "--limit", "100000"],
    ));
    let grep = ["order", "ERROR", "ünïcödé", "orders 1[01]"]
        .iter()
        .map(|re| {
            tracer_lines(agg, token, &["grep", "-c", "--", re])
                .join("\n")
                .to_string()
        })
        .collect();
    let (status, body) = http(
        agg.addr,
        "GET",
        "/v1/offsets",
        &[("Authorization", &auth())],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut offsets: Vec<(String, i64)> = v["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap().to_string(),
                r["offset_ns"].as_i64().unwrap(),
            )
        })
        .filter(|(_, o)| *o != 0)
        .collect();
    offsets.sort();
    let traces = (0..REQUESTS)
        .map(|i| {
            let mut t = parse(tracer_lines(
                agg,
                token,
                &[
                    "timeline",
                    "--since",
                    "0",
                    "--json",
                    "--trace",
                    &format!("s{i}-srv"),
                ],
            ));
            t.sort_by_key(|e| (e.ts_ns, e.host.clone()));
            t
        })
        .collect();
    Answers {
        timeline,
        grep,
        offsets,
        traces,
    }
}

/// `tracer aggregator`'s arguments for the ClickHouse store at `url`.
fn on_clickhouse<'a>(url: &'a str, password: &'a Path, token: &'a Path) -> [&'a str; 8] {
    [
        "--store",
        url,
        "--clickhouse-user",
        USER,
        "--clickhouse-password-file",
        password.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
    ]
}

/// Now less 10 minutes, in ns: where the test's events start.
fn ten_minutes_ago() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
        - 600_000 * MS
}

fn migrate(data: &Path, url: &str, password: &Path) -> String {
    let out = Command::new(TRACER)
        .args(["migrate", "--from"])
        .arg(data)
        .args(["--to", url, "--clickhouse-user", USER])
        .arg("--clickhouse-password-file")
        .arg(password)
        .stdin(Stdio::null())
        .output()
        .expect("running tracer migrate");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "tracer migrate failed: {stderr}");
    stderr
}

#[test]
fn an_sqlite_store_moves_to_clickhouse_exactly_and_idempotently() {
    let dir = TempDir::new("migrate");
    let token = dir.token_file();
    let data = dir.path().join("data");
    let base = ten_minutes_ago();
    let hosts = events(base);
    let total: usize = hosts.iter().map(|(_, e)| e.len()).sum();

    let sqlite = {
        let agg = Aggregator::start(&data, &token, &[]);
        // Batches of 5, the hosts interleaved.
        let chunks: Vec<Vec<(usize, &[Event])>> = hosts
            .iter()
            .map(|(_, e)| e.chunks(5).enumerate().collect())
            .collect();
        for k in 0..chunks.iter().map(Vec::len).max().unwrap() {
            for (h, (host, _)) in hosts.iter().enumerate() {
                if let Some((seq, events)) = chunks[h].get(k) {
                    ingest(agg.addr, host, *seq as u64, events);
                }
            }
        }
        answers(&agg, &token)
    };
    // What the SQLite store answered is what this test sent, stitched.
    assert_eq!(sqlite.timeline.len(), total);
    assert_eq!(sqlite.grep, ["36", "12", "12", "4"]);
    assert_eq!(sqlite.offsets.len(), 1, "{:?}", sqlite.offsets);
    assert!(
        (sqlite.offsets[0].1.abs() - SKEW).abs() <= 2 * MS,
        "{:?}",
        sqlite.offsets
    );
    for (i, t) in sqlite.traces.iter().enumerate() {
        assert_eq!(t.len(), 4, "request {i}'s trace: {t:?}");
    }

    let server = Server::start("migrate");
    let password = dir.path().join("ch-password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let url = format!("clickhouse://127.0.0.1:{}/moved", server.http_port);
    let first = migrate(&data, &url, &password);
    assert!(
        first.contains(&format!(
            "copied {total} events from 2 hosts ({total} stored now"
        )),
        "{first}"
    );
    let store_args = on_clickhouse(&url, &password, &token);
    let moved = {
        let agg = Aggregator::start_with(&store_args);
        answers(&agg, &token)
    };
    assert_eq!(moved, sqlite);

    // Again: every batch is found copied already; nothing changes.
    let second = migrate(&data, &url, &password);
    assert!(
        second.contains(&format!("copied {total} events from 2 hosts (0 stored now")),
        "{second}"
    );
    let agg = Aggregator::start_with(&store_args);
    assert_eq!(answers(&agg, &token), sqlite);
}

#[test]
fn migrate_names_a_missing_store() {
    let dir = TempDir::new("migrate-missing");
    let out = Command::new(TRACER)
        .args(["migrate", "--from"])
        .arg(dir.path().join("nowhere"))
        .args(["--to", "clickhouse://127.0.0.1:1/x"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not an SQLite store"), "{stderr}");
}

/// A ClickHouse store whose `http_index` a tracer before 2026-12-06
/// created (one partition, so ingest slows as it grows): `tracer migrate
/// --rebuild-http-index` says what it finds and does, rebuilds it with
/// every row, and the aggregator then answers exactly as before; a second
/// run has nothing to do.
#[test]
fn migrate_rebuilds_an_older_http_index_in_place() {
    let dir = TempDir::new("migrate-rebuild");
    let token = dir.token_file();
    let server = Server::start("rebuild");
    let password = dir.path().join("ch-password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let ch: SocketAddr = format!("127.0.0.1:{}", server.http_port).parse().unwrap();
    let sql = |q: &str| {
        let path = format!("/?user={USER}&password={PASSWORD}");
        let (status, answer) = http(ch, "POST", &path, &[], q.as_bytes());
        assert_eq!(status, 200, "{q}: {answer}");
    };
    // The table as that tracer created it, before the aggregator starts.
    sql("CREATE DATABASE older");
    sql(
        "CREATE TABLE older.http_index (id Int64, commit_id Int64, host String, \
         side String, conn String, start_ns Int64, end_ns Int64, req_id String, \
         parent_req_id String, own_trace String) ENGINE = MergeTree \
         ORDER BY (conn, side, start_ns)",
    );
    let url = format!("clickhouse://127.0.0.1:{}/older", server.http_port);
    let store_args = on_clickhouse(&url, &password, &token);
    let base = ten_minutes_ago();
    let hosts = events(base);
    let exchanges = hosts
        .iter()
        .flat_map(|(_, e)| e)
        .filter(|e| matches!(e.data, EventData::Http(_)))
        .count();
    let before = {
        let agg = Aggregator::start_with(&store_args);
        for (host, events) in &hosts {
            for (seq, chunk) in events.chunks(5).enumerate() {
                ingest(agg.addr, host, seq as u64, chunk);
            }
        }
        answers(&agg, &token)
    };
    for (i, t) in before.traces.iter().enumerate() {
        assert_eq!(t.len(), 4, "request {i}'s trace: {t:?}");
    }
    let rebuild = || {
        let out = Command::new(TRACER)
            .args(["migrate", "--rebuild-http-index", "--to", &url])
            .args(["--clickhouse-user", USER, "--clickhouse-password-file"])
            .arg(&password)
            .stdin(Stdio::null())
            .output()
            .expect("running tracer migrate --rebuild-http-index");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let first = rebuild();
    for said in [
        "`older`.http_index was created by a tracer before 2026-12-06".to_string(),
        format!("copying `older`.http_index ({exchanges} rows) into the current layout"),
        "`older`.http_index rebuilt".to_string(),
        "tracer: 1 http_index table(s) rebuilt".to_string(),
    ] {
        assert!(first.contains(&said), "{said:?} not in:\n{first}");
    }
    let agg = Aggregator::start_with(&store_args);
    assert_eq!(answers(&agg, &token), before);
    drop(agg);
    let second = rebuild();
    assert!(
        second.contains("`older`.http_index is current")
            && second.contains("tracer: 0 http_index table(s) rebuilt")
            && !second.contains("was created by a tracer before"),
        "{second}"
    );
}
