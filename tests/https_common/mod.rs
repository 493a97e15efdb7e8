//! Helpers for the root-only HTTPS integration tests (`https_*.rs`), on top
//! of `common`: a self-signed certificate made with `openssl`, the plans
//! `tests/fixtures/https_client.js` runs against
//! `tests/fixtures/https_server.js`, the exact bytes of every request and
//! response (both fixtures fix every header), and the checks of the `http`
//! events both ends of every connection must produce.

#![allow(
    dead_code,
    reason = "each test binary compiles this module and uses a different part of it"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::common::{Lines, Proc, Run, StdoutTo, list_problems, short, start_node};

/// How far the client-side `duration_ns` may be from what the client
/// measured itself with `process.hrtime.bigint()`.
pub const DURATION_SLACK_NS: u64 = 1_000_000;

/// Writes `key.pem` and `cert.pem` (self-signed, CN=localhost, RSA 2048,
/// valid one day) into `dir` with the `openssl` command. Returns the
/// certificate's path (the clients' CA).
pub fn make_cert(dir: &Path) -> PathBuf {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "1", "-subj", "/CN=localhost"]);
    let mut p = Proc::spawn("openssl req", cmd, true);
    let status = p.expect_exit(Duration::from_secs(60));
    p.drain(Duration::from_secs(5));
    assert!(
        status.success(),
        "openssl req -x509 failed ({status}):\n{}",
        p.stderr.tail(20)
    );
    for f in [&key, &cert] {
        let text = std::fs::read_to_string(f)
            .unwrap_or_else(|e| panic!("openssl did not write {}: {e}", f.display()));
        assert!(
            text.contains("-----BEGIN "),
            "{} is not PEM: {}",
            f.display(),
            short(&text)
        );
    }
    cert
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn tls(self) -> bool {
        self == Scheme::Https
    }
}

/// One request of a plan.
#[derive(Debug, Clone)]
pub struct Item {
    pub scheme: Scheme,
    pub method: &'static str,
    pub path: String,
    pub body: Option<String>,
    /// 0: a connection of its own (`agent: false`); k > 0: the lane's
    /// keep-alive agent k for this scheme (one connection).
    pub conn: u32,
}

impl Item {
    /// `GET /users/<n>` → 200.
    pub fn user(scheme: Scheme, n: u32, conn: u32) -> Self {
        Self {
            scheme,
            method: "GET",
            path: format!("/users/{n}"),
            body: None,
            conn,
        }
    }

    /// `POST /orders` with a JSON body → 201.
    pub fn order(scheme: Scheme, item: &str, qty: u32, conn: u32) -> Self {
        assert!(
            item.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "keep order items free of JSON escapes: {item:?}"
        );
        Self {
            scheme,
            method: "POST",
            path: "/orders".into(),
            body: Some(format!(r#"{{"item":"{item}","qty":{qty}}}"#)),
            conn,
        }
    }

    /// `GET <path>` that is no route → 404.
    pub fn missing(scheme: Scheme, path: &str, conn: u32) -> Self {
        assert!(!path.starts_with("/users/") && path != "/orders");
        Self {
            scheme,
            method: "GET",
            path: path.into(),
            body: None,
            conn,
        }
    }

    fn connection(&self) -> &'static str {
        if self.conn == 0 {
            "close"
        } else {
            "keep-alive"
        }
    }

    /// The exact request https_client.js sends (after the handshake, in
    /// plaintext for https).
    pub fn request_bytes(&self) -> String {
        let mut s = format!(
            "{} {} HTTP/1.1\r\nhost: localhost\r\nconnection: {}\r\n",
            self.method,
            self.path,
            self.connection()
        );
        if let Some(body) = &self.body {
            s.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        s.push_str("\r\n");
        s.push_str(self.body.as_deref().unwrap_or(""));
        s
    }

    /// The status and body https_server.js answers with.
    pub fn expected_answer(&self) -> (u16, String) {
        if let Some(n) = self.path.strip_prefix("/users/")
            && self.method == "GET"
        {
            return (200, format!(r#"{{"id":{n},"name":"user-{n}"}}"#));
        }
        if self.method == "POST" && self.path == "/orders" {
            let order: Value = serde_json::from_str(self.body.as_deref().unwrap_or("null"))
                .expect("order bodies are JSON");
            return (
                201,
                format!(
                    r#"{{"created":true,"item":{},"qty":{}}}"#,
                    order["item"], order["qty"]
                ),
            );
        }
        (404, r#"{"error":"not found"}"#.into())
    }

    /// The exact response https_server.js sends.
    pub fn response_bytes(&self) -> String {
        let (status, body) = self.expected_answer();
        let reason = match status {
            200 => "OK",
            201 => "Created",
            404 => "Not Found",
            other => panic!("no reason phrase for {other}"),
        };
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: {}\r\n\r\n{body}",
            body.len(),
            self.connection()
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "scheme": self.scheme.name(),
            "method": self.method,
            "path": self.path,
            "body": self.body,
            "conn": self.conn,
        })
    }
}

/// What one client process does: lanes run concurrently, the items of a
/// lane one after the other.
#[derive(Debug, Clone)]
pub struct Plan {
    pub lanes: Vec<Vec<Item>>,
}

impl Plan {
    pub fn to_json(&self) -> String {
        let lanes: Vec<Value> = self
            .lanes
            .iter()
            .map(|l| Value::Array(l.iter().map(Item::to_json).collect()))
            .collect();
        json!({ "lanes": lanes }).to_string()
    }

    pub fn len(&self) -> usize {
        self.lanes.iter().map(Vec::len).sum()
    }

    /// Connections the plan opens: one per `conn: 0` item, one per run of
    /// items of a lane with the same keep-alive agent for a scheme.
    pub fn connections(&self) -> usize {
        let mut n = 0;
        for lane in &self.lanes {
            let mut current: BTreeMap<Scheme, u32> = BTreeMap::new();
            for item in lane {
                if item.conn == 0 || current.insert(item.scheme, item.conn) != Some(item.conn) {
                    n += 1;
                }
            }
        }
        n
    }

    /// The item a result reports.
    pub fn item(&self, r: &ClientResult) -> &Item {
        &self.lanes[r.lane][r.idx]
    }
}

/// https_server.js, started and READY: (process, https port, http port or 0).
pub fn start_server(cert_dir: &Path, plain: bool) -> (Proc, u16, u16) {
    let dir = cert_dir.to_str().expect("utf-8 temp dir");
    let mut args = vec![dir];
    if plain {
        args.push("--plain");
    }
    let (server, ready) = start_node("https_server.js", &[], &args, StdoutTo::Pipe);
    let ports: Vec<u16> = ready
        .split_whitespace()
        .map(|p| {
            p.parse().unwrap_or_else(|e| {
                panic!("https_server.js READY must carry ports ({ready:?}): {e}")
            })
        })
        .collect();
    let [tls_port, plain_port] = ports[..] else {
        panic!("https_server.js READY must carry two ports, got {ready:?}");
    };
    assert!(tls_port > 0 && (plain_port > 0) == plain, "READY {ready}");
    (server, tls_port, plain_port)
}

/// https_client.js, started, warmed up and READY (it waits for `go`).
pub fn start_client(tls_port: u16, plain_port: u16, ca: &Path, plan: &Plan) -> Proc {
    let (client, _) = start_node(
        "https_client.js",
        // 64 MiB semi-spaces: the whole run allocates less, so no
        // scavenge pauses the client inside what it measures.
        &["--min-semi-space-size=64", "--max-semi-space-size=64"],
        &[
            &tls_port.to_string(),
            &plain_port.to_string(),
            ca.to_str().expect("utf-8 path"),
            &plan.to_json(),
        ],
        StdoutTo::Pipe,
    );
    client
}

/// One request as the client saw it (a RESULTS entry of https_client.js).
#[derive(Debug, Clone)]
pub struct ClientResult {
    pub lane: usize,
    pub idx: usize,
    pub status: u16,
    /// The client's local (ephemeral) port.
    pub port: u16,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    pub dur_ns: u64,
    /// Time the client's thread waited for a CPU around its measurement.
    pub wait_ns: u64,
    pub body: String,
}

fn field_u64(v: &Value, name: &str, what: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: `{name}` must be a count: {v}"))
}

/// Waits for the client to exit 0 and returns its RESULTS, checked against
/// the plan item by item (status, body, and the exact plaintext sizes,
/// which the client measured on its sockets and this file computes from
/// the fixtures' fixed headers — both must agree).
pub fn client_results(client: &mut Proc, plan: &Plan) -> Vec<ClientResult> {
    let status = client.expect_exit(Duration::from_secs(60));
    assert!(
        status.success(),
        "{} failed ({status}):\n{}",
        client.name,
        client.stderr.tail(20)
    );
    let line = client.stdout.as_mut().expect("piped").wait_for(
        "the client's RESULTS line",
        Duration::from_secs(5),
        |l| l.starts_with("RESULTS "),
    );
    let v: Value = serde_json::from_str(&line["RESULTS ".len()..])
        .unwrap_or_else(|e| panic!("RESULTS is not JSON ({e}): {}", short(&line)));
    let arr = v.as_array().expect("RESULTS is an array");
    let out: Vec<ClientResult> = arr
        .iter()
        .map(|r| {
            let w = "a RESULTS entry";
            ClientResult {
                lane: field_u64(r, "lane", w) as usize,
                idx: field_u64(r, "idx", w) as usize,
                status: field_u64(r, "status", w) as u16,
                port: field_u64(r, "port", w) as u16,
                req_bytes: field_u64(r, "req_bytes", w),
                resp_bytes: field_u64(r, "resp_bytes", w),
                dur_ns: field_u64(r, "dur_ns", w),
                wait_ns: field_u64(r, "wait_ns", w),
                body: r["body"].as_str().expect("body").to_owned(),
            }
        })
        .collect();
    assert_eq!(
        out.len(),
        plan.len(),
        "one RESULTS entry per planned request"
    );
    for r in &out {
        let item = plan.item(r);
        let (status, body) = item.expected_answer();
        let want = (
            status,
            body.as_str(),
            item.request_bytes().len() as u64,
            item.response_bytes().len() as u64,
        );
        assert_eq!(
            (r.status, r.body.as_str(), r.req_bytes, r.resp_bytes),
            want,
            "the client's own view of {} {} {} (lane {}, #{}) differs from what the \
             fixtures are built to send: (status, body, plaintext request bytes, \
             plaintext response bytes)",
            item.scheme.name(),
            item.method,
            item.path,
            r.lane,
            r.idx
        );
        assert!(r.port > 0 && r.dur_ns > 0, "{r:?}");
    }
    // Keep-alive items of one agent share a connection; others have their own.
    for (lane_no, lane) in plan.lanes.iter().enumerate() {
        let res: Vec<&ClientResult> = out.iter().filter(|r| r.lane == lane_no).collect();
        for w in res.windows(2) {
            let (a, b) = (&lane[w[0].idx], &lane[w[1].idx]);
            if a.conn != 0 && a.conn == b.conn && a.scheme == b.scheme {
                assert_eq!(
                    w[0].port, w[1].port,
                    "lane {lane_no} #{} and #{} share a keep-alive connection",
                    w[0].idx, w[1].idx
                );
            }
        }
    }
    out
}

/// One response as the server saw it (a SERVED line of https_server.js).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Served {
    pub scheme: String,
    pub method: String,
    pub url: String,
    pub status: u16,
    pub port: u16,
    pub req_bytes: u64,
    pub resp_bytes: u64,
}

/// Waits (bounded) for `n` non-warm-up SERVED lines of the server.
pub fn served(lines: &mut Lines, n: usize, timeout: Duration) -> Vec<Served> {
    let deadline = Instant::now() + timeout;
    let parsed = loop {
        lines.poll();
        let parsed: Vec<Value> = lines
            .seen()
            .iter()
            .filter_map(|l| l.strip_prefix("SERVED "))
            .map(|l| serde_json::from_str::<Value>(l).expect("SERVED is JSON"))
            .filter(|v| v["warmup"] == false)
            .collect();
        if parsed.len() >= n {
            break parsed;
        }
        assert!(
            Instant::now() < deadline,
            "the server printed {} SERVED lines of the {n} expected within {timeout:?}:\n{}",
            parsed.len(),
            lines.tail(20)
        );
        thread::sleep(Duration::from_millis(20));
    };
    parsed
        .iter()
        .map(|v| {
            let w = "a SERVED line";
            Served {
                scheme: v["scheme"].as_str().expect("scheme").to_owned(),
                method: v["method"].as_str().expect("method").to_owned(),
                url: v["url"].as_str().expect("url").to_owned(),
                status: field_u64(v, "status", w) as u16,
                port: field_u64(v, "port", w) as u16,
                req_bytes: field_u64(v, "req_bytes", w),
                resp_bytes: field_u64(v, "resp_bytes", w),
            }
        })
        .collect()
}

/// The server's measurements must be the client's, request for request.
pub fn assert_served_matches(
    served: &[Served],
    clients: &[(&Plan, &[ClientResult])],
    ports: (u16, u16),
) {
    let mut want: Vec<Served> = Vec::new();
    for (plan, results) in clients {
        for r in *results {
            let item = plan.item(r);
            want.push(Served {
                scheme: item.scheme.name().into(),
                method: item.method.into(),
                url: item.path.clone(),
                status: r.status,
                port: r.port,
                req_bytes: r.req_bytes,
                resp_bytes: r.resp_bytes,
            });
        }
    }
    let mut got = served.to_vec();
    want.sort();
    got.sort();
    assert_eq!(
        got, want,
        "the server's SERVED lines (scheme, method, url, status, client port, plaintext \
         bytes) must be the client's results (https port {}, http port {})",
        ports.0, ports.1
    );
}

/// A connection seen from the test: (server port, client port).
type ConnKey = (u16, u16);

/// What an `http` event must say, in the order of its connection.
#[derive(Debug, Clone, PartialEq)]
struct Want {
    method: String,
    path: String,
    status: u64,
    req_bytes: u64,
    resp_bytes: u64,
    tls: bool,
}

fn want_of(item: &Item, r: &ClientResult) -> Want {
    Want {
        method: item.method.into(),
        path: item.path.clone(),
        status: u64::from(r.status),
        req_bytes: r.req_bytes,
        resp_bytes: r.resp_bytes,
        tls: item.scheme.tls(),
    }
}

fn got_of(e: &Value) -> Want {
    Want {
        method: e["method"].as_str().unwrap_or("?").into(),
        path: e["path"].as_str().unwrap_or("?").into(),
        status: e["status"].as_u64().unwrap_or(u64::MAX),
        req_bytes: e["req_bytes"].as_u64().unwrap_or(u64::MAX),
        resp_bytes: e["resp_bytes"].as_u64().unwrap_or(u64::MAX),
        // docs/events.md: plaintext HTTP has `tls` absent or false.
        tls: e["tls"].as_bool().unwrap_or(false),
    }
}

fn show(w: &Want) -> String {
    format!(
        "{} {} {} req={} resp={}{}",
        w.method,
        w.path,
        w.status,
        w.req_bytes,
        w.resp_bytes,
        if w.tls { " tls" } else { "" }
    )
}

/// `http` events of `pid`.
pub fn http_of(events: &[Value], pid: u32) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "http" && e["pid"] == pid)
        .collect()
}

/// (side, tls, method, path, status) -> count.
type CountKey = (String, bool, String, String, u64);

fn count_key(side: &str, w: &Want) -> CountKey {
    (
        side.into(),
        w.tls,
        w.method.clone(),
        w.path.clone(),
        w.status,
    )
}

/// Differences between two count maps, one line each.
fn diff_counts(want: &BTreeMap<CountKey, usize>, got: &BTreeMap<CountKey, usize>) -> Vec<String> {
    let keys: BTreeSet<&CountKey> = want.keys().chain(got.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (w, g) = (
                want.get(k).copied().unwrap_or(0),
                got.get(k).copied().unwrap_or(0),
            );
            (w != g).then(|| {
                format!(
                    "count of {} {} {} {} {}: expected {w}, got {g}",
                    k.0,
                    if k.1 { "tls" } else { "plain" },
                    k.2,
                    k.3,
                    k.4
                )
            })
        })
        .collect()
}

/// How the durations are checked.
#[derive(Debug, Clone, Copy)]
pub struct DurationCheck {
    /// Client-side `duration_ns` within this of the client's own
    /// measurement (plus the time the client waited for a CPU meanwhile).
    pub client_slack_ns: u64,
}

/// A client preempted for longer than this around one measurement was on a
/// contended CPU, where it also loses time no counter gives it (interrupts
/// and softirqs of other connections run on its CPU meanwhile, and are
/// charged to it as running): such a measurement is noisy beyond its run
/// queue delay.
const CONTENDED_WAIT_NS: u64 = 1_000_000;
/// How far beyond the slack one contended measurement per run may be. In
/// 432 exchanges measured here the client's clock was at most 0.32 ms off
/// ours beyond its run queue delay; a clean-clone CI run once saw 1.19 ms
/// (0.19 over the slack) with a 2.76 ms run queue delay.
const CONTENDED_EXTRA_NS: u64 = 1_000_000;

/// Every check of the `http` events against what the fixtures did:
///
/// - exact counts per (side, tls, method, path, status) for the server and
///   for each client process;
/// - per connection (server port, client port), on each side, the exact
///   sequence of exchanges in request order: method, path, status,
///   `req_bytes`/`resp_bytes` equal to the plaintext message sizes, `tls`
///   true for https and absent/false for http, `complete` not false;
/// - the 4-tuple: client events from 127.0.0.1:<its port> to the server
///   port, server events from the server port to the client's port;
/// - durations: client-side within `DurationCheck::client_slack_ns` of the
///   client's own measurement, plus the run queue delay the client had
///   meanwhile (a preemption delays its clock readings, not the probes'),
///   except that one exchange per run whose client waited over 1 ms for a
///   CPU may be up to 1 ms further off (`CONTENDED_WAIT_NS`);
///   server-side above 0 and not above the
///   client side's (the server reads the request after the client wrote
///   it and writes the response before the client reads it);
/// - distinct `req_id`s.
pub fn check_http(
    run: &Run,
    server_pid: u32,
    clients: &[(u32, &Plan, &[ClientResult])],
    ports: (u16, u16),
    durations: DurationCheck,
) -> Vec<String> {
    let mut problems = Vec::new();
    let server_port = |s: Scheme| match s {
        Scheme::Https => ports.0,
        Scheme::Http => ports.1,
    };
    let server_events = http_of(&run.events, server_pid);

    // Counts.
    let mut want_server: BTreeMap<CountKey, usize> = BTreeMap::new();
    for (pid, plan, results) in clients {
        let mut want_client: BTreeMap<CountKey, usize> = BTreeMap::new();
        for r in *results {
            let w = want_of(plan.item(r), r);
            *want_client.entry(count_key("client", &w)).or_default() += 1;
            *want_server.entry(count_key("server", &w)).or_default() += 1;
        }
        let mut got: BTreeMap<CountKey, usize> = BTreeMap::new();
        for e in http_of(&run.events, *pid) {
            let side = e["side"].as_str().unwrap_or("?");
            *got.entry(count_key(side, &got_of(e))).or_default() += 1;
        }
        for d in diff_counts(&want_client, &got) {
            problems.push(format!("client pid {pid}: {d}"));
        }
    }
    let mut got: BTreeMap<CountKey, usize> = BTreeMap::new();
    for e in &server_events {
        let side = e["side"].as_str().unwrap_or("?");
        *got.entry(count_key(side, &got_of(e))).or_default() += 1;
    }
    for d in diff_counts(&want_server, &got) {
        problems.push(format!("server pid {server_pid}: {d}"));
    }

    // Per connection, both sides.
    let mut server_by_conn: BTreeMap<ConnKey, Vec<&Value>> = BTreeMap::new();
    for e in &server_events {
        let sport = e["sport"].as_u64().unwrap_or(0) as u16;
        let dport = e["dport"].as_u64().unwrap_or(0) as u16;
        server_by_conn.entry((sport, dport)).or_default().push(e);
    }
    let mut server_conns_expected: BTreeSet<ConnKey> = BTreeSet::new();
    let mut contended_excused: Option<String> = None;
    for (pid, plan, results) in clients {
        let client_events = http_of(&run.events, *pid);
        let mut client_by_conn: BTreeMap<ConnKey, Vec<&Value>> = BTreeMap::new();
        for e in &client_events {
            let sport = e["sport"].as_u64().unwrap_or(0) as u16;
            let dport = e["dport"].as_u64().unwrap_or(0) as u16;
            client_by_conn.entry((dport, sport)).or_default().push(e);
        }
        // Expected, per connection, in request order (one lane uses a
        // connection at a time, and a lane's results are in order).
        let mut expected: BTreeMap<ConnKey, Vec<(&Item, &ClientResult)>> = BTreeMap::new();
        for r in *results {
            let item = plan.item(r);
            expected
                .entry((server_port(item.scheme), r.port))
                .or_default()
                .push((item, r));
        }
        for key in client_by_conn.keys() {
            if !expected.contains_key(key) {
                problems.push(format!(
                    "client pid {pid}: http events on a connection the client never used \
                     (server port {}, client port {}): {}",
                    key.0,
                    key.1,
                    client_by_conn[key]
                        .iter()
                        .map(|e| show(&got_of(e)))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
        for (key, items) in &expected {
            server_conns_expected.insert(*key);
            let want: Vec<Want> = items.iter().map(|(i, r)| want_of(i, r)).collect();
            let empty = Vec::new();
            let client_evs = client_by_conn.get(key).unwrap_or(&empty);
            let server_evs = server_by_conn.get(key).unwrap_or(&empty);
            for (side, evs) in [("client", client_evs), ("server", server_evs)] {
                let got: Vec<Want> = evs.iter().map(|e| got_of(e)).collect();
                if got != want {
                    problems.push(format!(
                        "{side} side of connection 127.0.0.1:{} <-> 127.0.0.1:{} (client pid \
                         {pid}): expected [{}], got [{}]",
                        key.1,
                        key.0,
                        want.iter().map(show).collect::<Vec<_>>().join("; "),
                        got.iter().map(show).collect::<Vec<_>>().join("; ")
                    ));
                }
                for e in evs {
                    let (want_s, want_d) = match side {
                        "client" => (key.1, key.0),
                        _ => (key.0, key.1),
                    };
                    let ok = e["side"] == side
                        && e["saddr"] == "127.0.0.1"
                        && e["daddr"] == "127.0.0.1"
                        && e["sport"] == want_s
                        && e["dport"] == want_d
                        && e.get("complete").is_none_or(|c| c == true);
                    if !ok {
                        problems.push(format!(
                            "{side} event must be side {side}, 127.0.0.1:{want_s} -> \
                             127.0.0.1:{want_d}, complete: {}",
                            short(&e.to_string())
                        ));
                    }
                }
            }
            // Durations, exchange by exchange, when both sides are right.
            if client_evs.len() == items.len() && server_evs.len() == items.len() {
                for (((item, r), c), s) in items.iter().zip(client_evs).zip(server_evs) {
                    let cd = c["duration_ns"].as_u64().unwrap_or(u64::MAX);
                    let sd = s["duration_ns"].as_u64().unwrap_or(u64::MAX);
                    let what = format!(
                        "{} {} {} on 127.0.0.1:{} (lane {}, #{})",
                        item.scheme.name(),
                        item.method,
                        item.path,
                        r.port,
                        r.lane,
                        r.idx
                    );
                    // A preemption of the client delays its clock
                    // readings, not the probes': its run queue delay
                    // around the measurement is added to the slack.
                    let slack = durations.client_slack_ns + r.wait_ns;
                    let off = cd.abs_diff(r.dur_ns);
                    if off > slack
                        && r.wait_ns > CONTENDED_WAIT_NS
                        && off <= slack + CONTENDED_EXTRA_NS
                        && contended_excused.is_none()
                    {
                        // One noisy measurement of a preempted client is
                        // allowed (see CONTENDED_WAIT_NS); a second fails.
                        contended_excused =
                            Some(format!("{what}: off by {off} ns, slack {slack} ns"));
                    } else if off > slack {
                        problems.push(format!(
                            "{what}: client-side duration_ns {cd} is not within {slack} ns \
                             ({} + {} ns the client waited for a CPU) of the {} ns the client \
                             measured (off by {} ns; {})",
                            durations.client_slack_ns,
                            r.wait_ns,
                            r.dur_ns,
                            cd.abs_diff(r.dur_ns),
                            pauses_near(&run.events, *pid, c, r.dur_ns)
                        ));
                    }
                    if sd == 0 || sd > cd {
                        problems.push(format!(
                            "{what}: server-side duration_ns {sd} must be > 0 and <= the \
                             client side's {cd}"
                        ));
                    }
                }
            }
        }
    }
    for (key, evs) in &server_by_conn {
        if !server_conns_expected.contains(key) {
            problems.push(format!(
                "server: http events on a connection no client used (server port {}, client \
                 port {}): {}",
                key.0,
                key.1,
                evs.iter()
                    .map(|e| show(&got_of(e)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }

    // Every event: a server event says side server, a distinct req_id.
    let mut ids = BTreeSet::new();
    let pids: Vec<u32> = std::iter::once(server_pid)
        .chain(clients.iter().map(|c| c.0))
        .collect();
    for pid in pids {
        for e in http_of(&run.events, pid) {
            let want_side = if pid == server_pid {
                "server"
            } else {
                "client"
            };
            if e["side"] != want_side {
                problems.push(format!(
                    "pid {pid} must only report side {want_side}: {}",
                    short(&e.to_string())
                ));
            }
            match e["req_id"].as_str() {
                Some(id) if ids.insert(id.to_owned()) => {}
                _ => problems.push(format!(
                    "req_id missing or repeated: {}",
                    short(&e.to_string())
                )),
            }
        }
    }
    if let Some(excused) = contended_excused {
        eprintln!("one duration measured by a preempted client allowed past the slack: {excused}");
    }
    problems
}

/// For a failure message: the client's GC pauses and long event-loop
/// turns around an exchange (its start to the end of what the client
/// measured, plus 2 ms either side), which delay the client's own clock
/// readings but not the probes'.
fn pauses_near(events: &[Value], pid: u32, exchange: &Value, measured_ns: u64) -> String {
    const MARGIN: u64 = 2_000_000;
    let start = exchange["ts_ns"].as_u64().unwrap_or(0);
    let (lo, hi) = (start.saturating_sub(MARGIN), start + measured_ns + MARGIN);
    let near: Vec<String> = events
        .iter()
        .filter(|e| e["pid"] == pid && (e["kind"] == "gc" || e["kind"] == "loop"))
        .filter(|e| e["ts_ns"].as_u64().is_some_and(|t| t >= lo && t <= hi))
        .map(|e| {
            let t = e["ts_ns"].as_u64().unwrap_or(0) as i128 - start as i128;
            match e["kind"].as_str() {
                Some("gc") => format!("gc {} ns at {t:+} ns", e["duration_ns"]),
                _ => format!("loop turn busy {} ns at {t:+} ns", e["busy_ns"]),
            }
        })
        .collect();
    if near.is_empty() {
        "no gc or long loop turn of the client around it".into()
    } else {
        format!("around it in the client: {}", near.join(", "))
    }
}

/// Losses the run shows, one problem each: the summary's `lost` at every
/// stage, `parse` included (an HTTP parser that resynchronised, as it would
/// on ciphertext), and every `lost` event.
pub fn loss_problems(run: &Run) -> Vec<String> {
    let mut problems = Vec::new();
    let summary = run.events.last().expect("summary");
    for stage in ["ring", "decode", "parse"] {
        if summary["lost"][stage].as_u64() != Some(0) {
            problems.push(format!(
                "summary.lost.{stage} must be 0, got {}; summary: {}",
                summary["lost"][stage],
                short(&summary.to_string())
            ));
        }
    }
    for e in run.events.iter().filter(|e| e["kind"] == "lost") {
        problems.push(format!(
            "no `lost` event expected, got: {}",
            short(&e.to_string())
        ));
    }
    problems
}

/// Panics with every problem, then the tracer's stderr, when there are any.
pub fn assert_no_problems(what: &str, problems: &[String], run: &Run) {
    assert!(
        problems.is_empty(),
        "{what}: {} problems:\n{}\ntracer stderr:\n{}",
        problems.len(),
        list_problems(problems),
        run.stderr_text()
    );
}

/// Counts events of `kind` for `pid`.
pub fn count_kind(events: &[Value], kind: &str, pid: u32) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["pid"] == pid)
        .count()
}

/// `tcp_*` events of `pid` of `kind` whose `port_field` is one of `ports`.
fn tcp_of<'a>(
    events: &'a [Value],
    kind: &str,
    pid: u32,
    port_field: &str,
    ports: &[u16],
) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["kind"] == kind
                && e["pid"] == pid
                && e[port_field]
                    .as_u64()
                    .is_some_and(|p| ports.iter().any(|q| u64::from(*q) == p))
        })
        .collect()
}

fn server_ports(ports: (u16, u16)) -> Vec<u16> {
    [ports.0, ports.1].into_iter().filter(|p| *p != 0).collect()
}

/// Waits (bounded) until everything the run must show has been printed:
/// each client's exit and its `http` events, the server's `http` events
/// and the server-side close of every connection (a keep-alive exchange
/// cut short would only show up at the close). Returns whether it did.
pub fn wait_for_all(
    tracer: &mut crate::common::Tracer,
    server_pid: u32,
    clients: &[(u32, &Plan)],
    ports: (u16, u16),
    timeout: Duration,
) -> bool {
    let sp = server_ports(ports);
    let requests: usize = clients.iter().map(|c| c.1.len()).sum();
    let conns: usize = clients.iter().map(|c| c.1.connections()).sum();
    tracer.wait_events(timeout, |evs| {
        clients.iter().all(|(pid, plan)| {
            count_kind(evs, "exit", *pid) == 1 && http_of(evs, *pid).len() >= plan.len()
        }) && http_of(evs, server_pid).len() >= requests
            && tcp_of(evs, "tcp_close", server_pid, "sport", &sp).len() >= conns
    })
}

/// The connections behind the `http` events, from the `tcp_*` events:
/// each client connected exactly as many times as its plan opens
/// connections, the server accepted as many, both ends closed each, and
/// every client port of the results is among them.
pub fn check_tcp(
    run: &Run,
    server_pid: u32,
    clients: &[(u32, &Plan, &[ClientResult])],
    ports: (u16, u16),
) -> Vec<String> {
    let sp = server_ports(ports);
    let mut problems = Vec::new();
    let mut total = 0;
    let accepted: BTreeSet<(u64, u64)> =
        tcp_of(&run.events, "tcp_accept", server_pid, "sport", &sp)
            .iter()
            .map(|e| {
                (
                    e["sport"].as_u64().unwrap_or(0),
                    e["dport"].as_u64().unwrap_or(0),
                )
            })
            .collect();
    for (pid, plan, results) in clients {
        let n = plan.connections();
        total += n;
        for kind in ["tcp_connect", "tcp_close"] {
            let got = tcp_of(&run.events, kind, *pid, "dport", &sp).len();
            if got != n {
                problems.push(format!(
                    "client pid {pid}: {kind} events to the server: expected {n}, got {got}"
                ));
            }
        }
        let connected: BTreeSet<(u64, u64)> =
            tcp_of(&run.events, "tcp_connect", *pid, "dport", &sp)
                .iter()
                .map(|e| {
                    (
                        e["dport"].as_u64().unwrap_or(0),
                        e["sport"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
        for r in *results {
            let item = plan.item(r);
            let key = (
                u64::from(match item.scheme {
                    Scheme::Https => ports.0,
                    Scheme::Http => ports.1,
                }),
                u64::from(r.port),
            );
            if !connected.contains(&key) || !accepted.contains(&key) {
                problems.push(format!(
                    "connection 127.0.0.1:{} -> 127.0.0.1:{} of {} {} {} (client pid {pid}): \
                     tcp_connect seen: {}, tcp_accept seen: {}",
                    key.1,
                    key.0,
                    item.scheme.name(),
                    item.method,
                    item.path,
                    connected.contains(&key),
                    accepted.contains(&key)
                ));
            }
        }
    }
    for kind in ["tcp_accept", "tcp_close"] {
        let got = tcp_of(&run.events, kind, server_pid, "sport", &sp).len();
        if got != total {
            problems.push(format!(
                "server pid {server_pid}: {kind} events on its ports: expected {total}, got {got}"
            ));
        }
    }
    problems
}
