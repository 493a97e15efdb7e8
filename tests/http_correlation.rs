//! `tracer attach --json` on a node front server that logs a line per
//! request and calls a node backend over HTTP before it responds, and on
//! the backend (docs/correlation.md):
//! - one request at a time: each line the front server writes carries the
//!   `req_id` of the request it serves, and each backend call its
//!   `parent_req_id`;
//! - two requests at once, each with an `x-request-id` (or a W3C
//!   `traceparent`) that its lines mention and its backend call forwards:
//!   every line and call is tied to the right request;
//! - two requests at once without ids: no line and no call gets a
//!   `req_id` / `parent_req_id` (never guessed).
//!
//! Needs root (loads BPF programs).

mod common;
mod http_common;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use common::{Run, StdoutTo, Tracer, now_ns, require_root, start_node};
use http_common::{
    assert_no_losses, assert_no_problems, check_http_fields, check_unique_req_ids, count_http,
    raw_request, request_bytes, send_raw,
};
use serde_json::Value;

/// Requests made one at a time.
const SEQ: usize = 4;

/// Ids of one pair of concurrent requests.
enum PairIds {
    /// `x-request-id: <id>` on each.
    RequestId([String; 2]),
    /// `traceparent: 00-<trace-id>-<parent-id>-01` on each.
    TraceParent([String; 2]),
    None,
}

/// One pair of concurrent requests `/pair/<group>/1` and `/pair/<group>/2`.
struct Pair {
    group: &'static str,
    ids: PairIds,
}

impl Pair {
    fn headers(&self, k: usize) -> Vec<(&'static str, String)> {
        match &self.ids {
            PairIds::RequestId(ids) => vec![("x-request-id", ids[k - 1].clone())],
            PairIds::TraceParent(traces) => vec![(
                "traceparent",
                format!("00-{}-{:016x}-01", traces[k - 1], 0xa0 + k),
            )],
            PairIds::None => vec![],
        }
    }

    /// The tag corr_frontend.js puts in front of the lines of member k.
    fn tag(&self, k: usize) -> String {
        match &self.ids {
            PairIds::RequestId(ids) => format!("[{}] ", ids[k - 1]),
            PairIds::TraceParent(traces) => format!("[trace {}] ", traces[k - 1]),
            PairIds::None => String::new(),
        }
    }

    /// Lines and backend calls of member k can be tied to its request.
    fn correlated(&self) -> bool {
        !matches!(self.ids, PairIds::None)
    }
}

/// Sends both requests of a pair, then reads both responses (the front
/// server answers neither before it has both).
fn run_pair(addr: SocketAddr, pair: &Pair) {
    let pending: Vec<_> = (1..=2)
        .map(|k| {
            let headers = pair.headers(k);
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let path = format!("/pair/{}/{k}", pair.group);
            send_raw(addr, &request_bytes("GET", &path, &headers, ""))
        })
        .collect();
    for (k, p) in (1..=2).zip(pending) {
        let r = p.finish();
        let name = format!("{}/{k}", pair.group);
        assert_eq!(r.status, 200, "GET /pair/{name}");
        assert_eq!(
            r.body,
            format!("pair {name}: backend /lookup/pair/{name}"),
            "the front server's answer to /pair/{name}"
        );
    }
}

/// The only `http` event of `pid` on `side` for `path`, or a problem.
fn one_event<'a>(
    run: &'a Run,
    pid: u32,
    side: &str,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<&'a Value> {
    let hits: Vec<&Value> = run
        .of("http", pid)
        .into_iter()
        .filter(|e| e["side"] == side && e["path"] == path)
        .collect();
    match hits.as_slice() {
        [e] => Some(e),
        _ => {
            problems.push(format!(
                "pid {pid}: expected exactly one {side} http event for GET {path}, got {}: {hits:?}",
                hits.len()
            ));
            None
        }
    }
}

/// Checks an optional string field: `want` None means absent.
fn check_field(e: &Value, field: &str, want: Option<&str>, why: &str, problems: &mut Vec<String>) {
    let got = e.get(field);
    let ok = match want {
        Some(w) => got.and_then(Value::as_str) == Some(w),
        None => got.is_none(),
    };
    if !ok {
        problems.push(format!(
            "{field} must be {} ({why}), got {}: {e}",
            want.map_or_else(|| "absent".to_owned(), |w| format!("{w:?}")),
            got.map_or_else(|| "nothing".to_owned(), Value::to_string),
        ));
    }
}

#[test]
fn log_lines_and_backend_calls_carry_the_request_they_belong_to() {
    if !require_root("log_lines_and_backend_calls_carry_the_request_they_belong_to") {
        return;
    }
    let stamp = now_ns();
    let pairs = [
        Pair {
            group: "A",
            ids: PairIds::RequestId([format!("req-{stamp:x}-one"), format!("req-{stamp:x}-two")]),
        },
        Pair {
            group: "B",
            ids: PairIds::None,
        },
        Pair {
            group: "C",
            ids: PairIds::TraceParent([
                format!("{stamp:016x}{:016x}", 0x1111_u64),
                format!("{stamp:016x}{:016x}", 0x2222_u64),
            ]),
        },
    ];

    let (backend, bport) = start_node("corr_backend.js", &[], &[], StdoutTo::Pipe);
    let (frontend, fport) = start_node("corr_frontend.js", &[], &[&bport], StdoutTo::Pipe);
    let fport: u16 = fport
        .parse()
        .unwrap_or_else(|e| panic!("corr_frontend.js READY must carry its port ({fport:?}): {e}"));
    let (fpid, bpid) = (frontend.pid(), backend.pid());
    let addr = SocketAddr::from(([127, 0, 0, 1], fport));

    let mut tracer = Tracer::attach(&[fpid, bpid], &["--duration", "60"]);
    for i in 1..=SEQ {
        let r = raw_request(addr, &request_bytes("GET", &format!("/seq/{i}"), &[], ""));
        assert_eq!(r.status, 200, "GET /seq/{i}");
        assert_eq!(r.body, format!("seq {i}: backend /lookup/seq/{i}"));
    }
    for pair in &pairs {
        run_pair(addr, pair);
    }

    let n = SEQ + 2 * pairs.len();
    let lines = 2 * n;
    tracer.wait_events(Duration::from_secs(15), |evs| {
        count_http(evs, fpid) >= 2 * n
            && count_http(evs, bpid) >= n
            && evs
                .iter()
                .filter(|e| e["kind"] == "log" && e["pid"] == fpid)
                .count()
                >= lines
    });
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(15));
    drop(frontend);
    drop(backend);
    run.assert_clean_end();
    assert_no_losses(run.events.last().expect("summary"));

    let mut problems = Vec::new();
    let all_http: Vec<&Value> = run.events.iter().filter(|e| e["kind"] == "http").collect();
    for e in run.of("http", fpid).into_iter().chain(run.of("http", bpid)) {
        check_http_fields(
            e,
            u32::try_from(e["pid"].as_u64().unwrap_or(0)).unwrap_or(0),
            &mut problems,
        );
        if e["status"] != 200 || e["method"] != "GET" {
            problems.push(format!("every exchange is a GET answered 200: {e}"));
        }
    }
    check_unique_req_ids(all_http.iter().copied(), &mut problems);
    let front_counts = run.of("http", fpid).len();
    let back_counts = run.of("http", bpid).len();
    if front_counts != 2 * n || back_counts != n {
        problems.push(format!(
            "expected {} http events of the front server ({n} served, {n} backend calls) and {n} \
             of the backend, got {front_counts} and {back_counts}",
            2 * n
        ));
    }

    // Every line the front server wrote, with the path of the request whose
    // req_id it must carry (None: no req_id).
    let mut want_lines: BTreeMap<String, Option<String>> = BTreeMap::new();
    // Every backend call: (front server path it serves, whether it must
    // carry that request's req_id as parent_req_id, the x-request-id and
    // traceparent it forwards).
    struct Call {
        served: String,
        linked: bool,
        request_id: Option<String>,
        traceparent: Option<String>,
    }
    let mut calls: BTreeMap<String, Call> = BTreeMap::new();
    // Ids the test sent on each front request.
    let mut sent: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    for i in 1..=SEQ {
        let served = format!("/seq/{i}");
        for what in ["start", "done"] {
            want_lines.insert(format!("seq {i} {what}"), Some(served.clone()));
        }
        calls.insert(
            format!("/lookup/seq/{i}"),
            Call {
                served: served.clone(),
                linked: true,
                request_id: None,
                traceparent: None,
            },
        );
        sent.insert(served, (None, None));
    }
    for pair in &pairs {
        // The forwarded traceparent keeps the trace id with a new parent id
        // (corr_frontend.js numbers its spans from 1, in arrival order, so
        // only the trace id is compared for calls).
        for k in 1..=2 {
            let name = format!("{}/{k}", pair.group);
            let served = format!("/pair/{name}");
            let tag = pair.tag(k);
            for what in ["working", "done"] {
                want_lines.insert(
                    format!("{tag}pair {name} {what}"),
                    pair.correlated().then(|| served.clone()),
                );
            }
            let (request_id, traceparent) = match &pair.ids {
                PairIds::RequestId(ids) => (Some(ids[k - 1].clone()), None),
                PairIds::TraceParent(_) => (None, Some(pair.headers(k)[0].1.clone())),
                PairIds::None => (None, None),
            };
            calls.insert(
                format!("/lookup/pair/{name}"),
                Call {
                    served: served.clone(),
                    linked: pair.correlated(),
                    request_id: request_id.clone(),
                    traceparent: match &pair.ids {
                        PairIds::TraceParent(traces) => Some(traces[k - 1].clone()),
                        _ => None,
                    },
                },
            );
            sent.insert(served, (request_id, traceparent));
        }
    }

    // The front server's requests: ids as sent, no parent.
    let mut served_ids: BTreeMap<String, String> = BTreeMap::new();
    for (path, (request_id, traceparent)) in &sent {
        let Some(e) = one_event(&run, fpid, "server", path, &mut problems) else {
            continue;
        };
        check_field(
            e,
            "request_id",
            request_id.as_deref(),
            "the x-request-id sent",
            &mut problems,
        );
        check_field(
            e,
            "traceparent",
            traceparent.as_deref(),
            "the traceparent sent",
            &mut problems,
        );
        check_field(
            e,
            "parent_req_id",
            None,
            "a served request has no parent",
            &mut problems,
        );
        served_ids.insert(path.clone(), e["req_id"].as_str().unwrap_or("?").to_owned());
    }

    // Its log lines: each exactly once, with exactly the expected req_id.
    let logs = run.of("log", fpid);
    for (text, served) in &want_lines {
        let hits: Vec<&&Value> = logs.iter().filter(|e| e["text"] == text.as_str()).collect();
        let [e] = hits.as_slice() else {
            problems.push(format!(
                "the line {text:?} must be seen once on stdout, seen {} times",
                hits.len()
            ));
            continue;
        };
        if e["stream"] != "stdout" {
            problems.push(format!("{text:?} was written to stdout: {e}"));
        }
        let want = served.as_ref().and_then(|p| served_ids.get(p));
        let why = match served {
            Some(p) => format!("written while serving GET {p}"),
            None => "two requests without ids were in flight".to_owned(),
        };
        check_field(e, "req_id", want.map(String::as_str), &why, &mut problems);
    }
    for e in &logs {
        let text = e["text"].as_str().unwrap_or("?");
        if !want_lines.contains_key(text) {
            problems.push(format!("unexpected log line of the front server: {e}"));
        }
    }

    // Its backend calls and the backend's view of them.
    for (path, call) in &calls {
        if let Some(e) = one_event(&run, fpid, "client", path, &mut problems) {
            if e["dport"].as_u64().map(|p| p.to_string()) != Some(bport.clone()) {
                problems.push(format!("a backend call goes to port {bport}: {e}"));
            }
            let want = call.linked.then(|| served_ids.get(&call.served)).flatten();
            let why = if call.linked {
                format!("made while serving GET {}", call.served)
            } else {
                "two requests without ids were in flight".to_owned()
            };
            check_field(
                e,
                "parent_req_id",
                want.map(String::as_str),
                &why,
                &mut problems,
            );
            check_field(
                e,
                "request_id",
                call.request_id.as_deref(),
                "forwarded",
                &mut problems,
            );
            check_trace(e, call.traceparent.as_deref(), &mut problems);
        }
        if let Some(e) = one_event(&run, bpid, "server", path, &mut problems) {
            check_field(
                e,
                "parent_req_id",
                None,
                "a served request has no parent",
                &mut problems,
            );
            check_field(
                e,
                "request_id",
                call.request_id.as_deref(),
                "forwarded",
                &mut problems,
            );
            check_trace(e, call.traceparent.as_deref(), &mut problems);
        }
    }
    if !run.of("log", bpid).is_empty() {
        problems.push(format!(
            "the backend writes no lines, yet: {:?}",
            run.of("log", bpid)
        ));
    }
    assert_no_problems("request correlation", &problems, &run);
}

/// A forwarded traceparent carries `trace` as its trace id (None: absent).
fn check_trace(e: &Value, trace: Option<&str>, problems: &mut Vec<String>) {
    let got = e.get("traceparent").and_then(Value::as_str);
    let ok = match (trace, got) {
        (None, None) => true,
        (Some(t), Some(g)) => g.split('-').nth(1) == Some(t) && g.starts_with("00-"),
        _ => false,
    };
    if !ok {
        problems.push(format!(
            "traceparent must carry trace id {trace:?} (forwarded), got {got:?}: {e}"
        ));
    }
}
