//! Cross-host stitching in the real `tracer aggregator` (unprivileged):
//! synthetic but realistic batches from a 3-host chain, gateway (h1) →
//! api (h2) → store (h3), with h2's clock 3 s ahead and h3's 2 s behind,
//! keep-alive between hops, an ephemeral port reused by a second
//! connection, and batches sent out of order across hosts. Checks, through
//! the real `tracer timeline` client and the API: every request's trace has
//! exactly its hops and log lines, the full timeline is causal for every
//! request, and `/v1/offsets` recovers the skews.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use aggregator_common::{Aggregator, TRACER, TempDir, auth, http};
use tracer_user::event::{Event, EventData, HttpExchange, HttpSide, StreamName, Tuple};

mod aggregator_common;

const MS: i64 = 1_000_000;
const REQUESTS: usize = 20;

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

const H1: &str = "10.77.0.1";
const H2: &str = "10.77.0.2";
const H3: &str = "10.77.0.3";

/// Real-time skew of each host's clock.
fn skew(host: &str) -> i64 {
    match host {
        "h2" => 3_000 * MS,
        "h3" => -2_000 * MS,
        _ => 0,
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one synthetic exchange, every field named at the call"
)]
fn http_event(
    host: &str,
    true_start: i64,
    dur: i64,
    side: HttpSide,
    local: (&str, u16),
    remote: (&str, u16),
    req_id: String,
    parent: Option<String>,
    traceparent: Option<String>,
) -> Event {
    // Server sockets on `::` see IPv4 peers as IPv4-mapped addresses.
    let addr = |a: &str| match side {
        HttpSide::Server => ip(&format!("::ffff:{a}")),
        HttpSide::Client => ip(a),
    };
    Event {
        ts_ns: u64::try_from(true_start + skew(host)).unwrap(),
        host: host.into(),
        pid: 100,
        tid: 100,
        comm: "node".into(),
        data: EventData::Http(Box::new(HttpExchange {
            side,
            method: "GET".into(),
            path: "/x".into(),
            status: 200,
            duration_ns: u64::try_from(dur).unwrap(),
            req_bytes: 80,
            resp_bytes: 120,
            tuple: Tuple {
                saddr: addr(local.0),
                sport: local.1,
                daddr: addr(remote.0),
                dport: remote.1,
            },
            tls: false,
            req_id,
            parent_req_id: parent,
            traceparent,
            request_id: None,
            complete: true,
            req_body: None,
            resp_body: None,
        })),
    }
}

fn log_event(host: &str, true_ts: i64, req_id: &str, text: String) -> Event {
    Event {
        ts_ns: u64::try_from(true_ts + skew(host)).unwrap(),
        host: host.into(),
        pid: 100,
        tid: 100,
        comm: "node".into(),
        data: EventData::Log {
            stream: StreamName::Stdout,
            path: None,
            text,
            truncated: false,
            req_id: Some(req_id.into()),
        },
    }
}

/// The events of each host, and the id to ask `--trace` for each request.
fn cluster(base: i64) -> (BTreeMap<&'static str, Vec<Event>>, Vec<String>) {
    let mut hosts: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    let mut ids = Vec::new();
    for i in 0..REQUESTS {
        let t = base + i as i64 * 50 * MS;
        // gateway → api: requests 0..9 on one keep-alive connection, 10..19
        // on a second one that reuses the same ephemeral port.
        let gw_port = 40_001;
        // The outside client of the gateway: a new connection each time.
        let outside = 50_000 + i as u16;
        let tp = (i % 2 == 0).then(|| format!("00-{:032x}-00f067aa0ba902b7-01", 0xabc0 + i));
        let (g, a, s) = (format!("g{i}"), format!("a{i}"), format!("s{i}"));
        ids.push(match &tp {
            Some(_) => format!("{:032x}", 0xabc0 + i),
            None => format!("{g}-srv"),
        });
        let h1 = hosts.entry("h1").or_default();
        h1.push(http_event(
            "h1",
            t,
            40 * MS,
            HttpSide::Server,
            (H1, 80),
            ("10.77.0.9", outside),
            format!("{g}-srv"),
            None,
            tp.clone(),
        ));
        h1.push(log_event(
            "h1",
            t + MS,
            &format!("{g}-srv"),
            format!("gateway req {i}"),
        ));
        h1.push(http_event(
            "h1",
            t + 2 * MS,
            36 * MS,
            HttpSide::Client,
            (H1, gw_port),
            (H2, 8080),
            format!("{g}-cli"),
            Some(format!("{g}-srv")),
            tp.clone(),
        ));
        let h2 = hosts.entry("h2").or_default();
        h2.push(http_event(
            "h2",
            t + 3 * MS,
            34 * MS,
            HttpSide::Server,
            (H2, 8080),
            (H1, gw_port),
            format!("{a}-srv"),
            None,
            tp.clone(),
        ));
        h2.push(log_event(
            "h2",
            t + 4 * MS,
            &format!("{a}-srv"),
            format!("api req {i}"),
        ));
        // api → store: one keep-alive connection for everything.
        h2.push(http_event(
            "h2",
            t + 5 * MS,
            30 * MS,
            HttpSide::Client,
            (H2, 45_555),
            (H3, 9090),
            format!("{a}-cli"),
            Some(format!("{a}-srv")),
            tp.clone(),
        ));
        let h3 = hosts.entry("h3").or_default();
        h3.push(http_event(
            "h3",
            t + 6 * MS,
            28 * MS,
            HttpSide::Server,
            (H3, 9090),
            (H2, 45_555),
            format!("{s}-srv"),
            None,
            tp,
        ));
        h3.push(log_event(
            "h3",
            t + 10 * MS,
            &format!("{s}-srv"),
            format!("store req {i}"),
        ));
    }
    (hosts, ids)
}

fn timeline(agg: &Aggregator, token: &Path, extra: &[&str]) -> Vec<Event> {
    let out = Command::new(TRACER)
        .args(["timeline", "--since", "0", "--json"])
        .args(extra)
        .args([
            "--aggregator",
            &format!("http://{}", agg.addr),
            "--token-file",
        ])
        .arg(token)
        .stdin(Stdio::null())
        .output()
        .expect("running tracer timeline");
    assert!(
        out.status.success(),
        "timeline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The req_id an event belongs to (the http exchange's own, or the log's).
fn req_of(e: &Event) -> String {
    match &e.data {
        EventData::Http(h) => h.req_id.clone(),
        EventData::Log { req_id, .. } => req_id.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

fn end_of(e: &Event) -> i64 {
    let d = match &e.data {
        EventData::Http(h) => h.duration_ns,
        _ => 0,
    };
    (e.ts_ns + d) as i64
}

#[test]
fn three_host_chain_is_stitched_and_causal() {
    let dir = TempDir::new("cluster-stitch");
    let token = dir.token_file();
    let agg = Aggregator::start(&dir.path().join("data"), &token, &[]);
    chain_is_stitched_and_causal(&[&agg], &agg, &token);
}

/// The same chain on ClickHouse — two 18.16 servers the test starts, as
/// two shards behind `Distributed` tables — through two aggregators: h1's
/// batches go to one, h2's and h3's to the other, so each hop's halves
/// were ingested by different aggregators; the answers are read through
/// the first.
#[test]
fn three_host_chain_through_two_aggregators_on_two_shards() {
    use tracer_user::aggregator::clickhouse::test_server::{CLUSTER, PASSWORD, Server, USER};
    let servers = Server::start_cluster("stitch", 2);
    let dir = TempDir::new("cluster-stitch-ch");
    let token = dir.token_file();
    let password = dir.path().join("ch-password");
    std::fs::write(&password, PASSWORD).unwrap();
    let url = format!("clickhouse://127.0.0.1:{}/tracer", servers[0].http_port);
    let shards = servers
        .iter()
        .map(|s| format!("http://127.0.0.1:{}", s.http_port))
        .collect::<Vec<_>>()
        .join(",");
    let args = [
        "--store",
        &url,
        "--clickhouse-user",
        USER,
        "--clickhouse-password-file",
        password.to_str().unwrap(),
        "--clickhouse-cluster",
        CLUSTER,
        "--clickhouse-shards",
        &shards,
        "--token-file",
        token.to_str().unwrap(),
    ];
    let a = Aggregator::start_with(&args);
    let b = Aggregator::start_with(&args);
    chain_is_stitched_and_causal(&[&a, &b], &a, &token);
}

/// Sends the chain's batches (h1's to `send[0]`, the others' to the last
/// of `send`) and checks offsets, traces and causal order through `agg`.
fn chain_is_stitched_and_causal(send: &[&Aggregator], agg: &Aggregator, token: &Path) {
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
        - 120_000 * MS;
    let (hosts, ids) = cluster(base);

    // Batches of 7 events; sent out of order across hosts: h3's last batch
    // first, then the hosts' batches interleaved from the end backwards, so
    // servers arrive before the clients that called them and log lines
    // before or after their exchange.
    let mut batches: Vec<(&str, u64, Vec<Event>)> = Vec::new();
    for (host, events) in &hosts {
        for (seq, chunk) in events.chunks(7).enumerate() {
            batches.push((host, seq as u64, chunk.to_vec()));
        }
    }
    batches.sort_by_key(|(host, seq, _)| {
        let rank = match *host {
            "h3" => 0,
            "h1" => 1,
            _ => 2,
        };
        (std::cmp::Reverse(*seq), rank)
    });
    // Send the second half of h2's batches before everything else.
    let (late, early): (Vec<_>, Vec<_>) = batches
        .into_iter()
        .partition(|(h, seq, _)| *h == "h2" && seq % 2 == 0);
    for (host, seq, events) in early.iter().chain(late.iter()) {
        let to = if *host == "h1" {
            send[0]
        } else {
            send[send.len() - 1]
        };
        ingest(to.addr, host, *seq, events);
    }

    // Offsets: h2's clock is 3 s ahead of h1's, h3's 2 s behind.
    let (status, body) = http(
        agg.addr,
        "GET",
        "/v1/offsets",
        &[("Authorization", &auth())],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let off = |h: &str| -> (i64, i64) {
        let row = v["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["host"] == h)
            .unwrap_or_else(|| panic!("no offset for {h} in {body}"));
        (
            row["offset_ns"].as_i64().unwrap(),
            row["pairs"].as_i64().unwrap(),
        )
    };
    let (o1, _) = off("h1");
    let (o2, _) = off("h2");
    let (o3, _) = off("h3");
    eprintln!("offsets: {body}");
    assert!(
        ((o2 - o1) + 3_000 * MS).abs() <= 2 * MS,
        "h2 vs h1: {} ns",
        o2 - o1
    );
    assert!(
        ((o3 - o1) - 2_000 * MS).abs() <= 2 * MS,
        "h3 vs h1: {} ns",
        o3 - o1
    );
    // The first-seen host is the reference (offset 0, no pairs); the
    // other two rest on the 20 requests of their hop each.
    let mut pairs: Vec<i64> = ["h1", "h2", "h3"].iter().map(|h| off(h).1).collect();
    pairs.sort();
    assert_eq!(pairs, [0, REQUESTS as i64, REQUESTS as i64]);
    assert!([o1, o2, o3].contains(&0));

    // Every request: exactly its 5 exchanges (3 servers, 2 clients) and 3
    // log lines, whichever of its ids is asked for.
    for (i, id) in ids.iter().enumerate() {
        let mut want: Vec<String> = [
            format!("g{i}-srv"),
            format!("g{i}-srv"),
            format!("g{i}-cli"),
            format!("a{i}-srv"),
            format!("a{i}-srv"),
            format!("a{i}-cli"),
            format!("s{i}-srv"),
            format!("s{i}-srv"),
        ]
        .into();
        want.sort();
        for ask in [id.clone(), format!("s{i}-srv")] {
            let events = timeline(agg, token, &["--trace", &ask]);
            let mut got: Vec<String> = events.iter().map(req_of).collect();
            got.sort();
            assert_eq!(got, want, "request {i}, --trace {ask}");
            let logs = events.iter().filter(|e| e.data.kind() == "log").count();
            assert_eq!(logs, 3, "request {i}: log lines");
        }
    }

    // The full timeline is causal for every request once corrected.
    let all = timeline(agg, token, &[]);
    assert_eq!(all.len(), REQUESTS * 8);
    let by_req: BTreeMap<String, &Event> = all
        .iter()
        .map(|e| (format!("{}:{}", e.data.kind(), req_of(e)), e))
        .collect();
    for i in 0..REQUESTS {
        let ev = |k: &str, r: String| *by_req.get(&format!("{k}:{r}")).unwrap();
        let g = ev("http", format!("g{i}-srv"));
        let a = ev("http", format!("a{i}-srv"));
        let s = ev("http", format!("s{i}-srv"));
        let chain = [
            g.ts_ns as i64,
            a.ts_ns as i64,
            s.ts_ns as i64,
            end_of(s),
            end_of(a),
            end_of(g),
        ];
        assert!(
            chain.windows(2).all(|w| w[0] <= w[1]),
            "request {i} not causal: {chain:?}"
        );
        for (srv, lg) in [("g", g), ("a", a), ("s", s)] {
            let l = ev("log", format!("{srv}{i}-srv"));
            assert!(
                lg.ts_ns <= l.ts_ns && l.ts_ns as i64 <= end_of(lg),
                "request {i}: the {srv} log line is outside its request"
            );
        }
        // And the order in the answer follows: gateway, api, store.
        let pos = |e: &Event| all.iter().position(|x| x == e).unwrap();
        assert!(
            pos(g) < pos(a) && pos(a) < pos(s),
            "request {i}: timeline order"
        );
    }
}
