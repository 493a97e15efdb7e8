//! Helpers for the root-only HTTP and agent integration tests
//! (`http_*.rs`, `agent_discovery.rs`), on top of `common`: a raw HTTP/1.1
//! client with exact byte counts, `tracer agent` as a [`Tracer`], scraping
//! and parsing `/metrics`, and the checks shared by the tests that drive
//! `tests/fixtures/http_client.js` against a server fixture.

#![allow(
    dead_code,
    reason = "each test binary compiles this module and uses a different part of it"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::common::{
    Lines, NODE, Proc, Run, StdoutTo, TRACER, Tracer, fixtures_dir, hostname, list_problems,
    now_ns, short, start_node, wait_ready_line,
};

/// Starts `node tests/fixtures/<script> [args]` with extra environment
/// variables, stdout piped, and waits for its READY line. Returns the
/// process and the rest of the READY line.
pub fn start_node_with_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> (Proc, String) {
    let mut cmd = Command::new(NODE);
    cmd.arg(fixtures_dir().join(script)).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut p = Proc::spawn(script, cmd, true);
    let ready = wait_ready_line(&mut p);
    (p, ready)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// One HTTP request the test made itself, with what went over the wire.
#[derive(Debug, Clone)]
pub struct RawExchange {
    /// The client's local port.
    pub port: u16,
    pub status: u16,
    /// Bytes written: exactly the request.
    pub req_bytes: u64,
    /// Bytes read until the server closed: exactly the response.
    pub resp_bytes: u64,
    pub body: String,
}

/// The bytes of a request; `Connection: close` so that the response ends
/// with the connection.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body);
    head.into_bytes()
}

/// A request sent on a connection of its own, its response not read yet.
pub struct PendingRaw {
    addr: SocketAddr,
    stream: TcpStream,
    port: u16,
    req_bytes: u64,
}

/// Sends `request` on a new connection to `addr`; [`PendingRaw::finish`]
/// reads the response.
pub fn send_raw(addr: SocketAddr, request: &[u8]) -> PendingRaw {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let port = stream.local_addr().expect("local address").port();
    stream
        .write_all(request)
        .unwrap_or_else(|e| panic!("writing a request to {addr}: {e}"));
    PendingRaw {
        addr,
        stream,
        port,
        req_bytes: request.len() as u64,
    }
}

impl PendingRaw {
    /// Reads the response until the server closes the connection (at most
    /// 20 s).
    pub fn finish(mut self) -> RawExchange {
        let addr = self.addr;
        let mut resp = Vec::new();
        self.stream
            .read_to_end(&mut resp)
            .unwrap_or_else(|e| panic!("reading the response from {addr}: {e}"));
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.1 response from {addr}: {}", short(&text)));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        RawExchange {
            port: self.port,
            status,
            req_bytes: self.req_bytes,
            resp_bytes: resp.len() as u64,
            body,
        }
    }
}

/// Sends `request` on a new connection to `addr` and reads the response
/// until the server closes the connection.
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> RawExchange {
    send_raw(addr, request).finish()
}

/// Starts `tracer agent --json <args>` and waits for `tracer: ready`.
pub fn start_agent(args: &[&str]) -> Tracer {
    let mut cmd = Command::new(TRACER);
    cmd.arg("agent").arg("--json").args(args);
    let started_ns = now_ns();
    let mut t = Tracer {
        proc: Proc::spawn("tracer agent", cmd, true),
        started_ns,
    };
    t.wait_ready();
    t
}

/// `GET /metrics` from the agent at `addr` (HTTP/1.0, so the body ends with
/// the connection); retried until the endpoint answers (at most 10 s).
pub fn scrape(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)?;
            Ok(String::from_utf8_lossy(&raw).into_owned())
        })();
        match attempt {
            Ok(text) => {
                let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| {
                    panic!("not an HTTP response from {addr}: {}", short(&text))
                });
                assert!(
                    head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
                    "GET /metrics from {addr} did not answer 200: {head}"
                );
                return body.to_owned();
            }
            Err(e) if Instant::now() < deadline => {
                log_retry(&format!("scraping {addr}: {e}"));
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("scraping http://{addr}/metrics: {e}"),
        }
    }
}

fn log_retry(what: &str) {
    eprintln!("(retrying) {what}");
}

/// One sample of the Prometheus text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text exposition format (comments skipped); panics on a line
/// it cannot parse, with the line.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| -> ! { panic!("metrics line {line:?}: {why}") };
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => bad("no value"),
        };
        let mut labels = BTreeMap::new();
        let rest = if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    break after;
                }
                let eq = r.find('=').unwrap_or_else(|| bad("label without ="));
                let key = r[..eq].trim_start_matches(',').to_owned();
                let mut chars = r[eq + 1..].char_indices();
                if chars.next().map(|(_, c)| c) != Some('"') {
                    bad("label value not quoted");
                }
                let mut value = String::new();
                let mut end = None;
                let mut escaped = false;
                for (i, c) in chars {
                    match (escaped, c) {
                        (true, 'n') => {
                            value.push('\n');
                            escaped = false;
                        }
                        (true, c) => {
                            value.push(c);
                            escaped = false;
                        }
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(eq + 1 + i + 1);
                            break;
                        }
                        (false, c) => value.push(c),
                    }
                }
                let end = end.unwrap_or_else(|| bad("unterminated label value"));
                labels.insert(key, value);
                r = r[end..].trim_start_matches(',');
            }
        } else {
            rest
        };
        let value_text = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| bad("no value"));
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| bad("value is not a number")),
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

/// The `tracer_http_requests_total` series of `pid`, keyed by
/// (side, method, status_class, route); checks host and comm on the way.
pub fn http_request_series(
    samples: &[Sample],
    pid: u32,
) -> BTreeMap<(String, String, String, String), f64> {
    let mut out = BTreeMap::new();
    let host = hostname();
    for s in samples {
        if s.name != "tracer_http_requests_total"
            || s.labels.get("pid").map(String::as_str) != Some(pid.to_string().as_str())
        {
            continue;
        }
        let l = |k: &str| {
            s.labels
                .get(k)
                .unwrap_or_else(|| panic!("{} has no {k} label: {s:?}", s.name))
                .clone()
        };
        assert_eq!(l("host"), host, "host label: {s:?}");
        assert_eq!(l("comm"), "node", "comm label: {s:?}");
        let key = (l("side"), l("method"), l("status_class"), l("route"));
        assert!(out.insert(key, s.value).is_none(), "duplicate series {s:?}");
    }
    out
}

/// Every sample that carries `pid="<pid>"`.
pub fn samples_of_pid(samples: &[Sample], pid: u32) -> Vec<&Sample> {
    let pid = pid.to_string();
    samples
        .iter()
        .filter(|s| s.labels.get("pid") == Some(&pid))
        .collect()
}

/// Lines of `lines` starting with `prefix`, once at least `n` are there (at
/// most `timeout`); panics with the tail otherwise.
pub fn wait_prefixed(lines: &mut Lines, prefix: &str, n: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        lines.poll();
        let hits: Vec<String> = lines
            .seen()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect();
        if hits.len() >= n {
            return hits;
        }
        if Instant::now() >= deadline {
            panic!(
                "waited {timeout:?} for {n} lines starting with {prefix:?}, got {}. Last lines:\n{}",
                hits.len(),
                lines.tail(20)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// (side, method, path, status) of an `http` event.
pub type HttpKey = (String, String, String, u64);

pub fn http_key(e: &Value) -> HttpKey {
    (
        e["side"].as_str().unwrap_or("?").to_owned(),
        e["method"].as_str().unwrap_or("?").to_owned(),
        e["path"].as_str().unwrap_or("?").to_owned(),
        e["status"].as_u64().unwrap_or(u64::MAX),
    )
}

pub fn key(side: &str, method: &str, path: &str, status: u64) -> HttpKey {
    (side.to_owned(), method.to_owned(), path.to_owned(), status)
}

/// Counts of `http` events of `pid` per (side, method, path, status).
pub fn http_counts(events: &[Value], pid: u32) -> BTreeMap<HttpKey, usize> {
    let mut out = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e["kind"] == "http" && e["pid"] == pid)
    {
        *out.entry(http_key(e)).or_default() += 1;
    }
    out
}

/// Number of `http` events of `pid` printed so far.
pub fn count_http(events: &[Value], pid: u32) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == "http" && e["pid"] == pid)
        .count()
}

/// Compares two count maps; one problem per differing key.
pub fn diff_counts<K: Ord + std::fmt::Debug, V: PartialEq + Default + Copy + std::fmt::Debug>(
    who: &str,
    want: &BTreeMap<K, V>,
    got: &BTreeMap<K, V>,
    problems: &mut Vec<String>,
) {
    let keys: BTreeSet<&K> = want.keys().chain(got.keys()).collect();
    for k in keys {
        let w = want.get(k).copied().unwrap_or_default();
        let g = got.get(k).copied().unwrap_or_default();
        if w != g {
            problems.push(format!("{who}: {k:?}: expected {w:?}, got {g:?}"));
        }
    }
}

/// Checks the fields every `http` event of these tests must have: common
/// fields, no TLS, `complete` absent (true), a non-empty `req_id`, a
/// positive duration, the main thread, addresses on loopback.
pub fn check_http_fields(e: &Value, pid: u32, problems: &mut Vec<String>) {
    let show = || e.to_string();
    let mut wrong = Vec::new();
    if e["tid"] != pid {
        wrong.push(format!(
            "tid {} (the main thread {pid} does the I/O)",
            e["tid"]
        ));
    }
    if e["comm"] != "node" {
        wrong.push(format!("comm {}", e["comm"]));
    }
    if e["tls"] != false {
        wrong.push(format!("tls {} (plain TCP)", e["tls"]));
    }
    if let Some(c) = e.get("complete") {
        wrong.push(format!(
            "complete {c} (must be absent: every exchange is whole)"
        ));
    }
    if e["req_id"].as_str().is_none_or(str::is_empty) {
        wrong.push(format!("req_id {}", e["req_id"]));
    }
    if e["duration_ns"].as_u64().is_none_or(|d| d == 0) {
        wrong.push(format!("duration_ns {} (must be > 0)", e["duration_ns"]));
    }
    for f in ["saddr", "daddr"] {
        if e[f] != "127.0.0.1" {
            wrong.push(format!("{f} {}", e[f]));
        }
    }
    if !wrong.is_empty() {
        problems.push(format!("{}: {}", wrong.join(", "), show()));
    }
}

/// Checks that every `req_id` of these `http` events is distinct.
pub fn check_unique_req_ids<'a>(
    events: impl IntoIterator<Item = &'a Value>,
    problems: &mut Vec<String>,
) {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for e in events {
        let Some(id) = e["req_id"].as_str() else {
            continue;
        };
        if let Some(other) = seen.insert(id.to_owned(), e.to_string()) {
            problems.push(format!("req_id {id} used twice: {other} and {e}"));
        }
    }
}

/// Asserts that an agent run ended well: like `Run::assert_clean_end`, but
/// the summary also counts the loop turns the agent feeds to its histogram
/// without printing them (below `--loop-threshold-ms`), so `loop` is not
/// compared. Losses must be 0 at every stage, `parse` included.
pub fn assert_agent_clean_end(run: &Run) {
    assert!(
        run.status.success(),
        "the agent should exit with status 0, got {}. Its stderr:\n{}",
        run.status,
        run.stderr_text()
    );
    assert!(
        !run.stderr_text().contains("panicked"),
        "the agent panicked:\n{}",
        run.stderr_text()
    );
    let ready = run.stderr.iter().filter(|l| *l == "tracer: ready").count();
    assert_eq!(
        ready,
        1,
        "`tracer: ready` exactly once:\n{}",
        run.stderr_text()
    );
    let (summary, events) = run
        .events
        .split_last()
        .expect("the agent printed nothing on stdout; expected at least the summary");
    assert_eq!(summary["kind"], "summary", "last line: {summary}");
    let host = hostname();
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        crate::common::check_common_fields(e, &host, run.started_ns, run.ended_ns);
        *counted
            .entry(e["kind"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let counts = summary["counts"].as_object().expect("summary.counts");
    let kinds: BTreeSet<&str> = counts
        .keys()
        .map(String::as_str)
        .chain(counted.keys().map(String::as_str))
        .collect();
    for kind in kinds.into_iter().filter(|k| *k != "loop") {
        let printed = counted.get(kind).copied().unwrap_or(0);
        let summed = counts.get(kind).and_then(Value::as_u64).unwrap_or(0);
        assert_eq!(
            printed, summed,
            "summary.counts.{kind} = {summed} but {printed} `{kind}` events were printed; \
             summary: {summary}"
        );
    }
    assert_no_losses(summary);
    assert!(
        events.iter().all(|e| e["kind"] != "lost"),
        "no `lost` event expected for this small workload"
    );
}

/// Asserts that a summary reports no loss at any stage (ring, decode and
/// HTTP parse).
pub fn assert_no_losses(summary: &Value) {
    for stage in ["ring", "decode", "parse"] {
        assert_eq!(
            summary["lost"][stage].as_u64(),
            Some(0),
            "summary.lost.{stage} must be 0 for this small workload; summary: {summary}"
        );
    }
}

/// A request of a plan run by `tests/fixtures/http_client.js`.
#[derive(Debug, Clone)]
pub struct PlanItem {
    pub method: &'static str,
    pub path: String,
    pub body: Option<String>,
    /// Through the keep-alive agent (one shared connection), or on a
    /// connection of its own (`agent: false`).
    pub keep_alive: bool,
    /// The status the server must answer.
    pub status: u64,
}

impl PlanItem {
    pub fn new(method: &'static str, path: &str, keep_alive: bool, status: u64) -> Self {
        Self {
            method,
            path: path.to_owned(),
            body: None,
            keep_alive,
            status,
        }
    }

    pub fn with_body(mut self, body: &str) -> Self {
        self.body = Some(body.to_owned());
        self
    }
}

/// The plan as the client fixture takes it (one JSON argument).
pub fn plan_json(plan: &[PlanItem]) -> String {
    let items: Vec<Value> = plan
        .iter()
        .map(|p| json!({"method": p.method, "path": p.path, "body": p.body, "ka": p.keep_alive}))
        .collect();
    Value::Array(items).to_string()
}

/// What the client fixture measured for one request.
#[derive(Debug, Clone)]
pub struct ClientResult {
    pub method: String,
    pub path: String,
    pub status: u64,
    pub port: u16,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    pub dur_ns: u64,
    pub body: String,
}

/// Parses the client's `RESULTS [...]` line.
pub fn parse_results(line: &str) -> Vec<ClientResult> {
    let json = line
        .strip_prefix("RESULTS ")
        .unwrap_or_else(|| panic!("not a RESULTS line: {}", short(line)));
    let v: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("the RESULTS line is not JSON ({e}): {}", short(line)));
    let field = |r: &Value, f: &str| {
        r[f].as_u64()
            .unwrap_or_else(|| panic!("RESULTS entry without a numeric {f}: {r}"))
    };
    v.as_array()
        .expect("RESULTS is an array")
        .iter()
        .map(|r| ClientResult {
            method: r["method"].as_str().expect("method").to_owned(),
            path: r["path"].as_str().expect("path").to_owned(),
            status: field(r, "status"),
            port: u16::try_from(field(r, "port")).expect("port"),
            req_bytes: field(r, "req_bytes"),
            resp_bytes: field(r, "resp_bytes"),
            dur_ns: field(r, "dur_ns"),
            body: r["body"].as_str().expect("body").to_owned(),
        })
        .collect()
}

/// What the server fixture measured for one response (served_report.js).
#[derive(Debug, Clone)]
pub struct Served {
    pub method: String,
    pub url: String,
    pub status: u64,
    pub port: u16,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    pub warmup: bool,
}

/// Parses `SERVED {...}` lines.
pub fn parse_served(lines: &[String]) -> Vec<Served> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(
                l.strip_prefix("SERVED ")
                    .unwrap_or_else(|| panic!("not a SERVED line: {l}")),
            )
            .unwrap_or_else(|e| panic!("SERVED line is not JSON ({e}): {l}"));
            let n = |f: &str| {
                v[f].as_u64()
                    .unwrap_or_else(|| panic!("SERVED without a numeric {f}: {l}"))
            };
            Served {
                method: v["method"].as_str().expect("method").to_owned(),
                url: v["url"].as_str().expect("url").to_owned(),
                status: n("status"),
                port: u16::try_from(n("port")).expect("port"),
                req_bytes: n("req_bytes"),
                resp_bytes: n("resp_bytes"),
                warmup: v["warmup"] == true,
            }
        })
        .collect()
}

/// Runs the main thread of `pid` (a node client whose own timings are the
/// reference for the tracer's durations) under SCHED_FIFO, so that other
/// load on the machine (builds, other tests; these machines have two
/// cores) does not preempt it between a syscall and the JS callback that
/// takes its timestamp. The client is short-lived and waits on I/O; the
/// kernel's RT throttling bounds it anyway.
pub fn make_realtime(pid: u32) {
    let param = libc::sched_param { sched_priority: 10 };
    let tid = libc::pid_t::try_from(pid).expect("pid fits in pid_t");
    // SAFETY: param is a valid sched_param for the call's duration; the
    // call only changes the scheduling policy of thread `tid`.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) };
    assert_eq!(
        rc,
        0,
        "sched_setscheduler({pid}, SCHED_FIFO): {}",
        std::io::Error::last_os_error()
    );
}

/// Most the tracer's client-side duration may differ from the client's own
/// measurement of the same request.
pub const CLIENT_DURATION_SLACK_NS: u64 = 1_000_000;

/// Everything the tracer must have reported for a plan run by
/// http_client.js (pid `cpid`) against a server fixture (pid `spid`,
/// listening on 127.0.0.1:`port`), checked against the plan, the client's
/// own measurements and the server's. Returns the problems found.
pub fn check_plan_run(
    run: &Run,
    spid: u32,
    cpid: u32,
    port: u16,
    plan: &[PlanItem],
    results: &[ClientResult],
    served: &[Served],
) -> Vec<String> {
    let mut problems = Vec::new();

    // The fixtures did what the plan says (else the rest is meaningless).
    assert_eq!(
        results.len(),
        plan.len(),
        "the client reports one result per planned request"
    );
    for (p, r) in plan.iter().zip(results) {
        assert!(
            r.method == p.method && r.path == p.path && r.status == p.status,
            "the client got {} {} -> {} but the plan expects {} {} -> {}",
            r.method,
            r.path,
            r.status,
            p.method,
            p.path,
            p.status
        );
    }
    let served: Vec<&Served> = served.iter().filter(|s| !s.warmup).collect();
    assert_eq!(
        served.len(),
        plan.len(),
        "the server reports one response per planned request: {served:?}"
    );
    // The two fixtures' byte counts agree: they are the truth the tracer is
    // held to.
    for r in results {
        let nth = results[..]
            .iter()
            .take_while(|x| !std::ptr::eq(*x, r))
            .filter(|x| x.port == r.port)
            .count();
        let s = served
            .iter()
            .filter(|s| s.port == r.port)
            .nth(nth)
            .unwrap_or_else(|| panic!("no server report for {r:?}: {served:?}"));
        assert!(
            s.method == r.method
                && s.url == r.path
                && s.status == r.status
                && s.req_bytes == r.req_bytes
                && s.resp_bytes == r.resp_bytes,
            "client and server measured different exchanges: {r:?} vs {s:?}"
        );
    }
    // Keep-alive requests shared one connection; the others had one each.
    let ka_ports: BTreeSet<u16> = plan
        .iter()
        .zip(results)
        .filter(|(p, _)| p.keep_alive)
        .map(|(_, r)| r.port)
        .collect();
    let other_ports: Vec<u16> = plan
        .iter()
        .zip(results)
        .filter(|(p, _)| !p.keep_alive)
        .map(|(_, r)| r.port)
        .collect();
    assert_eq!(
        ka_ports.len(),
        1,
        "the keep-alive requests must share one connection, used ports {ka_ports:?}"
    );
    let distinct: BTreeSet<u16> = other_ports.iter().copied().collect();
    assert!(
        distinct.len() == other_ports.len() && distinct.is_disjoint(&ka_ports),
        "each agent:false request must have its own connection: {other_ports:?} (keep-alive: {ka_ports:?})"
    );

    // Exact counts per (side, method, path, status), each side.
    let mut want_server: BTreeMap<HttpKey, usize> = BTreeMap::new();
    let mut want_client: BTreeMap<HttpKey, usize> = BTreeMap::new();
    for p in plan {
        *want_server
            .entry(key("server", p.method, &p.path, p.status))
            .or_default() += 1;
        *want_client
            .entry(key("client", p.method, &p.path, p.status))
            .or_default() += 1;
    }
    diff_counts(
        &format!("server pid {spid} http events"),
        &want_server,
        &http_counts(&run.events, spid),
        &mut problems,
    );
    diff_counts(
        &format!("client pid {cpid} http events"),
        &want_client,
        &http_counts(&run.events, cpid),
        &mut problems,
    );

    // Request by request: events of one connection come in request order.
    let server_events = run.of("http", spid);
    let client_events = run.of("http", cpid);
    for e in server_events.iter().chain(&client_events) {
        let pid = u32::try_from(e["pid"].as_u64().unwrap_or(0)).unwrap_or(0);
        check_http_fields(e, pid, &mut problems);
        for absent in ["parent_req_id", "traceparent", "request_id"] {
            if let Some(v) = e.get(absent) {
                problems.push(format!(
                    "{absent} must be absent (no such header, no server request in flight in \
                     the client), got {v}: {e}"
                ));
            }
        }
    }
    check_unique_req_ids(
        server_events.iter().chain(&client_events).copied(),
        &mut problems,
    );
    let ports: BTreeSet<u16> = results.iter().map(|r| r.port).collect();
    for p in ports {
        let mine: Vec<&ClientResult> = results.iter().filter(|r| r.port == p).collect();
        let cev: Vec<&&Value> = client_events.iter().filter(|e| e["sport"] == p).collect();
        let sev: Vec<&&Value> = server_events.iter().filter(|e| e["dport"] == p).collect();
        if cev.len() != mine.len() || sev.len() != mine.len() {
            problems.push(format!(
                "connection from client port {p}: {} requests made, {} client-side and {} \
                 server-side http events",
                mine.len(),
                cev.len(),
                sev.len()
            ));
            continue;
        }
        for ((r, c), s) in mine.iter().zip(&cev).zip(&sev) {
            for (side, e, local, remote) in [("client", c, p, port), ("server", s, port, p)] {
                let mut wrong = Vec::new();
                let want = [
                    ("method", json!(r.method)),
                    ("path", json!(r.path)),
                    ("status", json!(r.status)),
                    ("req_bytes", json!(r.req_bytes)),
                    ("resp_bytes", json!(r.resp_bytes)),
                    ("sport", json!(local)),
                    ("dport", json!(remote)),
                    ("side", json!(side)),
                ];
                for (f, w) in want {
                    if e[f] != w {
                        wrong.push(format!("{f} {} (want {w})", e[f]));
                    }
                }
                let d = e["duration_ns"].as_u64().unwrap_or(0);
                // The client measured from just before its request went out
                // to just after its response came in, on the same clock
                // (CLOCK_MONOTONIC) as the kernel's timestamps: the tracer's
                // client-side duration lies inside, within the slack.
                if side == "client" && !(d <= r.dur_ns && r.dur_ns - d <= CLIENT_DURATION_SLACK_NS)
                {
                    wrong.push(format!(
                        "duration_ns {d}: the client measured {} ns; want duration_ns <= that \
                         and at most {CLIENT_DURATION_SLACK_NS} ns less",
                        r.dur_ns
                    ));
                }
                // The server's view of the exchange is inside the client's
                // (its first read follows the client's write, its last
                // write precedes the client's last read), up to the same
                // slack for the order in which two CPUs stamp a write and
                // the read that sees it.
                if side == "server" && d > r.dur_ns + CLIENT_DURATION_SLACK_NS {
                    wrong.push(format!(
                        "duration_ns {d} exceeds the client's own measurement {} ns by more \
                         than {CLIENT_DURATION_SLACK_NS} ns",
                        r.dur_ns
                    ));
                }
                if !wrong.is_empty() {
                    problems.push(format!(
                        "{side} event for {} {} on port {p}: {}: {e}",
                        r.method,
                        r.path,
                        wrong.join(", "),
                    ));
                }
            }
        }
    }
    problems
}

/// Panics with the problems, if any, and the tracer's stderr.
pub fn assert_no_problems(what: &str, problems: &[String], run: &Run) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n{}\ntracer stderr:\n{}",
        problems.len(),
        list_problems(problems),
        run.stderr_text()
    );
}

/// A plan that `tests/fixtures/http_client.js` ran against a server
/// fixture, traced from before its first request.
pub struct PlanRun {
    /// Still attached to both processes.
    pub tracer: Tracer,
    pub results: Vec<ClientResult>,
    /// The server's SERVED lines: two warm-up rounds of the plan (made
    /// before the client said READY), then the plan itself.
    pub served: Vec<Served>,
    pub spid: u32,
    pub cpid: u32,
}

/// Starts http_client.js for `plan` against `server` (READY on `port`,
/// stdout piped), attaches the tracer to both, lets the client run the plan
/// and waits for its RESULTS line and the server's SERVED lines.
pub fn run_plan(server: &mut Proc, port: u16, plan: &[PlanItem]) -> PlanRun {
    let (mut client, _) = start_node(
        "http_client.js",
        &[],
        &[&port.to_string(), &plan_json(plan)],
        StdoutTo::Pipe,
    );
    let (spid, cpid) = (server.pid(), client.pid());
    make_realtime(cpid);

    let tracer = Tracer::attach(&[spid, cpid], &["--duration", "60"]);
    client.send_line("go");
    let status = client.expect_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "http_client.js failed ({status}):\n{}",
        client.stderr.tail(20)
    );
    let results_line = client.stdout.as_mut().expect("piped").wait_for(
        "the client's RESULTS line",
        Duration::from_secs(5),
        |l| l.starts_with("RESULTS "),
    );
    let served = parse_served(&wait_prefixed(
        server.stdout.as_mut().expect("piped"),
        "SERVED ",
        3 * plan.len(),
        Duration::from_secs(10),
    ));
    PlanRun {
        tracer,
        results: parse_results(&results_line),
        served,
        spid,
        cpid,
    }
}
