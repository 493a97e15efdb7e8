//! Unit tests: known events in, the exposition text parsed back, exact
//! values asserted.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::Arc,
    time::Duration,
};

use super::*;
use crate::event::{HttpExchange, Tuple};

const HOST: &str = "h1";

/// One sample line of the exposition: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (0.0.4): comments skipped, label values
/// unescaped. Panics on a line it does not understand, so a malformed
/// exposition fails the test.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("no value on line {line:?}"),
        };
        let mut labels = BTreeMap::new();
        let value_part = if let Some(mut rest) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    break after;
                }
                rest = rest.strip_prefix(',').unwrap_or(rest);
                let eq = rest.find('=').expect("label without =");
                let key = rest[..eq].to_string();
                rest = rest[eq + 1..]
                    .strip_prefix('"')
                    .expect("unquoted label value");
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let end = loop {
                    match chars.next().expect("unterminated label value") {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next().expect("dangling escape").1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        (_, c) => value.push(c),
                    }
                };
                rest = &rest[end + 1..];
                assert!(
                    labels.insert(key, value).is_none(),
                    "duplicate label: {line}"
                );
            }
        } else {
            rest
        };
        let value = match value_part.trim() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad value {v:?} ({e}) on {line:?}")),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// The samples of one exposition, queried by exact label set.
struct Scrape(Vec<Sample>);

impl Scrape {
    fn of(m: &Metrics) -> Self {
        Scrape(parse(&m.encode()))
    }

    /// The value of the series `name` whose labels are exactly `labels`;
    /// None when there is none. Panics if there are two (a duplicate series).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let hits: Vec<f64> = self
            .0
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
            .collect();
        assert!(hits.len() <= 1, "duplicate series {name} {want:?}");
        hits.first().copied()
    }

    /// As [`Scrape::get`] with the process labels of (`pid`, `comm`) added.
    fn proc(&self, name: &str, pid: u32, comm: &str, extra: &[(&str, &str)]) -> Option<f64> {
        let pid = pid.to_string();
        let mut labels = vec![("host", HOST), ("pid", pid.as_str()), ("comm", comm)];
        labels.extend_from_slice(extra);
        self.get(name, &labels)
    }

    fn names(&self) -> std::collections::BTreeSet<&str> {
        self.0.iter().map(|s| s.name.as_str()).collect()
    }

    /// Distinct values of `label` among the series named `name`.
    fn label_values(&self, name: &str, label: &str) -> std::collections::BTreeSet<String> {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

fn ev(pid: u32, comm: &str, data: EventData) -> Event {
    Event {
        ts_ns: 1_764_200_000_000_000_000,
        host: HOST.into(),
        pid,
        tid: pid,
        comm: comm.into(),
        data,
    }
}

fn tuple() -> Tuple {
    Tuple {
        saddr: "127.0.0.1".parse().unwrap(),
        sport: 8080,
        daddr: "127.0.0.1".parse().unwrap(),
        dport: 51234,
    }
}

fn http(side: HttpSide, method: &str, path: &str, status: u16, duration_ns: u64) -> EventData {
    EventData::Http(Box::new(HttpExchange {
        side,
        method: method.into(),
        path: path.into(),
        status,
        duration_ns,
        req_bytes: 100,
        resp_bytes: 200,
        tuple: tuple(),
        tls: false,
        req_id: "r-1".into(),
        parent_req_id: None,
        traceparent: None,
        request_id: None,
        complete: true,
        req_body: None,
        resp_body: None,
    }))
}

fn close(bytes_sent: u64, bytes_received: u64, preexisting: bool, failed: bool) -> EventData {
    EventData::TcpClose {
        tuple: tuple(),
        bytes_sent,
        bytes_received,
        retransmits: 0,
        duration_ns: (!preexisting).then_some(1_000_000),
        preexisting,
        failed,
    }
}

fn log(stream: StreamName, text: &str) -> EventData {
    EventData::Log {
        stream,
        path: (stream == StreamName::File).then(|| "/var/log/app.log".to_string()),
        text: text.into(),
        truncated: false,
        req_id: None,
    }
}

fn lost(count: u64, stage: LossStage) -> EventData {
    EventData::Lost {
        count,
        stage,
        for_kind: Some("log".into()),
    }
}

#[test]
fn metrics_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Metrics>();
}

#[test]
fn known_events_give_exact_values() {
    let m = Metrics::new();
    let events = vec![
        ev(
            10,
            "node",
            http(HttpSide::Server, "GET", "/users/1", 200, 2_000_000),
        ),
        ev(
            10,
            "node",
            http(HttpSide::Server, "GET", "/users/2?x=1", 204, 30_000_000),
        ),
        ev(
            10,
            "node",
            http(HttpSide::Server, "POST", "/orders", 503, 700_000_000),
        ),
        ev(
            10,
            "node",
            http(HttpSide::Client, "GET", "/api/42", 0, 20_000_000_000),
        ),
        ev(
            10,
            "node",
            http(HttpSide::Server, "BREW", "/pot", 418, 1_000),
        ),
        ev(10, "node", EventData::TcpAccept(tuple())),
        ev(10, "node", EventData::TcpConnect(tuple())),
        ev(10, "node", EventData::TcpConnect(tuple())),
        ev(10, "node", close(1000, 250, false, false)),
        ev(10, "node", close(7, 3, true, false)),
        ev(
            10,
            "node",
            EventData::TcpRetransmit {
                tuple: tuple(),
                segments: 1,
            },
        ),
        ev(
            10,
            "node",
            EventData::TcpRetransmit {
                tuple: tuple(),
                segments: 3,
            },
        ),
        ev(
            10,
            "node",
            EventData::Loop {
                poll_ns: 50_000,
                busy_ns: 3_000_000,
            },
        ),
        ev(
            10,
            "node",
            EventData::Loop {
                poll_ns: 2_000_000_000,
                busy_ns: 20_000,
            },
        ),
        ev(
            10,
            "node",
            EventData::Gc {
                duration_ns: 4_000_000,
            },
        ),
        ev(10, "node", log(StreamName::Stdout, "a")),
        ev(10, "node", log(StreamName::Stdout, "b")),
        ev(10, "node", log(StreamName::Stderr, "c")),
        ev(10, "node", log(StreamName::File, "d")),
        ev(0, "", lost(5, LossStage::Ring)),
        ev(0, "", lost(1, LossStage::Decode)),
        ev(11, "worker", log(StreamName::Stdout, "other process")),
    ];
    for e in &events {
        m.observe(e);
    }
    m.count_lost("parse", 3);
    m.count_lost("parse", 4);

    let s = Scrape::of(&m);
    let p = |name: &str, extra: &[(&str, &str)]| s.proc(name, 10, "node", extra);
    let req = |side, method, class, route| {
        p(
            "tracer_http_requests_total",
            &[
                ("side", side),
                ("method", method),
                ("status_class", class),
                ("route", route),
            ],
        )
    };
    assert_eq!(req("server", "GET", "2xx", "/users/:id"), Some(2.0));
    assert_eq!(req("server", "POST", "5xx", "/orders"), Some(1.0));
    assert_eq!(req("client", "GET", "none", "/api/:id"), Some(1.0));
    assert_eq!(req("server", "other", "4xx", "/pot"), Some(1.0));
    assert_eq!(
        s.label_values("tracer_http_requests_total", "route").len(),
        4
    );

    // Histogram: cumulative buckets, count and sum.
    let dur = |suffix: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![
            ("side", "server"),
            ("method", "GET"),
            ("route", "/users/:id"),
        ];
        labels.extend_from_slice(extra);
        p(
            &format!("tracer_http_request_duration_seconds{suffix}"),
            &labels,
        )
    };
    assert_eq!(dur("_bucket", &[("le", "0.001")]), Some(0.0));
    assert_eq!(dur("_bucket", &[("le", "0.0025")]), Some(1.0));
    assert_eq!(dur("_bucket", &[("le", "0.025")]), Some(1.0));
    assert_eq!(dur("_bucket", &[("le", "0.05")]), Some(2.0));
    assert_eq!(dur("_bucket", &[("le", "+Inf")]), Some(2.0));
    assert_eq!(dur("_count", &[]), Some(2.0));
    assert!((dur("_sum", &[]).unwrap() - 0.032).abs() < 1e-12);
    // 20 s lands only in +Inf (the largest bucket is 10 s).
    let client = |le| {
        p(
            "tracer_http_request_duration_seconds_bucket",
            &[
                ("side", "client"),
                ("method", "GET"),
                ("route", "/api/:id"),
                ("le", le),
            ],
        )
    };
    assert_eq!(client("10"), Some(0.0));
    assert_eq!(client("+Inf"), Some(1.0));
    let les = s.label_values("tracer_http_request_duration_seconds_bucket", "le");
    assert_eq!(les.len(), HTTP_BUCKETS.len() + 1);
    assert!(les.contains("0.0005") && les.contains("10") && les.contains("+Inf"));

    assert_eq!(p("tracer_tcp_bytes_sent_total", &[]), Some(1007.0));
    assert_eq!(p("tracer_tcp_bytes_received_total", &[]), Some(253.0));
    assert_eq!(
        p(
            "tracer_tcp_connections_opened_total",
            &[("direction", "connect")]
        ),
        Some(2.0)
    );
    assert_eq!(
        p(
            "tracer_tcp_connections_opened_total",
            &[("direction", "accept")]
        ),
        Some(1.0)
    );
    assert_eq!(p("tracer_tcp_connections_closed_total", &[]), Some(2.0));
    assert_eq!(p("tracer_tcp_connections_open", &[]), Some(2.0));
    assert_eq!(p("tracer_tcp_retransmits_total", &[]), Some(4.0));
    assert_eq!(p("tracer_tcp_connect_failed_total", &[]), None);

    let busy = |le| p("tracer_event_loop_busy_seconds_bucket", &[("le", le)]);
    assert_eq!(busy("0.0001"), Some(1.0));
    assert_eq!(busy("0.0025"), Some(1.0));
    assert_eq!(busy("0.005"), Some(2.0));
    assert_eq!(p("tracer_event_loop_busy_seconds_count", &[]), Some(2.0));
    let poll = |le| p("tracer_event_loop_poll_seconds_bucket", &[("le", le)]);
    assert_eq!(poll("0.0001"), Some(1.0));
    assert_eq!(poll("1"), Some(1.0));
    assert_eq!(poll("2.5"), Some(2.0));
    assert!((p("tracer_event_loop_poll_seconds_sum", &[]).unwrap() - 2.00005).abs() < 1e-9);
    assert_eq!(
        s.label_values("tracer_gc_pause_seconds_bucket", "le").len(),
        RUNTIME_BUCKETS.len() + 1
    );
    assert_eq!(
        p("tracer_gc_pause_seconds_bucket", &[("le", "0.0025")]),
        Some(0.0)
    );
    assert_eq!(
        p("tracer_gc_pause_seconds_bucket", &[("le", "0.005")]),
        Some(1.0)
    );
    assert_eq!(p("tracer_gc_pause_seconds_count", &[]), Some(1.0));

    assert_eq!(
        p("tracer_log_lines_total", &[("stream", "stdout")]),
        Some(2.0)
    );
    assert_eq!(
        p("tracer_log_lines_total", &[("stream", "stderr")]),
        Some(1.0)
    );
    assert_eq!(
        p("tracer_log_lines_total", &[("stream", "file")]),
        Some(1.0)
    );
    assert_eq!(
        s.proc(
            "tracer_log_lines_total",
            11,
            "worker",
            &[("stream", "stdout")]
        ),
        Some(1.0)
    );

    assert_eq!(p("tracer_events_total", &[("kind", "http")]), Some(5.0));
    assert_eq!(
        p("tracer_events_total", &[("kind", "tcp_close")]),
        Some(2.0)
    );
    assert_eq!(p("tracer_events_total", &[("kind", "loop")]), Some(2.0));

    // Losses are not per process.
    assert_eq!(
        s.get("tracer_events_lost_total", &[("stage", "ring")]),
        Some(5.0)
    );
    assert_eq!(
        s.get("tracer_events_lost_total", &[("stage", "decode")]),
        Some(1.0)
    );
    assert_eq!(
        s.get("tracer_events_lost_total", &[("stage", "parse")]),
        Some(7.0)
    );
    assert_eq!(s.label_values("tracer_events_lost_total", "stage").len(), 3);
    // No series for pid 0 (the loss events' placeholder).
    assert!(
        s.0.iter()
            .all(|x| x.labels.get("pid").map(String::as_str) != Some("0"))
    );
}

#[test]
fn losses_show_at_zero_and_families_have_types() {
    let m = Metrics::new();
    let s = Scrape::of(&m);
    assert_eq!(
        s.get("tracer_events_lost_total", &[("stage", "ring")]),
        Some(0.0)
    );
    assert_eq!(
        s.get("tracer_events_lost_total", &[("stage", "decode")]),
        Some(0.0)
    );
    // A family without series is not printed at all.
    assert_eq!(s.names().len(), 1);

    for data in [
        http(HttpSide::Server, "GET", "/", 200, 1),
        EventData::TcpConnect(tuple()),
        EventData::Loop {
            poll_ns: 1,
            busy_ns: 1,
        },
        EventData::Gc { duration_ns: 1 },
        log(StreamName::Stdout, "x"),
    ] {
        m.observe(&ev(1, "node", data));
    }
    let text = m.encode();
    for (name, ty) in [
        ("tracer_http_requests_total", "counter"),
        ("tracer_http_request_duration_seconds", "histogram"),
        ("tracer_tcp_connections_opened_total", "counter"),
        ("tracer_tcp_connections_open", "gauge"),
        ("tracer_event_loop_busy_seconds", "histogram"),
        ("tracer_event_loop_poll_seconds", "histogram"),
        ("tracer_gc_pause_seconds", "histogram"),
        ("tracer_log_lines_total", "counter"),
        ("tracer_events_total", "counter"),
        ("tracer_events_lost_total", "counter"),
    ] {
        let line = format!("# TYPE {name} {ty}");
        assert!(text.lines().any(|l| l == line), "missing {line:?}");
    }
}

#[test]
fn route_normalisation() {
    for (path, want) in [
        ("/users/123?x=1", "/users/:id"),
        ("/users/123/orders/456", "/users/:id/orders/:id"),
        ("/items/550e8400-e29b-41d4-a716-446655440000", "/items/:id"),
        (
            "/items/550E8400-E29B-41D4-A716-446655440000/x",
            "/items/:id/x",
        ),
        ("/commits/deadbeef", "/commits/:id"),
        ("/commits/DEADBEEF01", "/commits/:id"),
        ("/commits/deadbee", "/commits/deadbee"),
        ("/cafe", "/cafe"),
        ("/api/v2/users", "/api/v2/users"),
        ("/reset/Zm9vYmFyYmF6cXV4MTIzNDU2", "/reset/:id"),
        (
            "/blog/a-very-long-article-slug-with-no-digits-at-all",
            "/blog/:id",
        ),
        ("/users/", "/users/"),
        ("/", "/"),
        ("", "/"),
        ("/?q=1", "/"),
        ("?q=1", "/"),
        ("/a#frag", "/a"),
        ("/v1/files;jsessionid=abc/7", "/v1/files/:id"),
        ("http://user:pw@example.com:8080/x/42?y=1", "/x/:id"),
        ("https://example.com", "/"),
        ("*", "*"),
        ("relative/1", "/relative/:id"),
        ("/users/123.json", "/users/123.json"),
    ] {
        assert_eq!(normalize_route(path), want, "path {path:?}");
    }
}

#[test]
fn routes_are_capped_per_process() {
    let m = Metrics::new();
    let get = |pid, path: &str| {
        ev(
            pid,
            "node",
            http(HttpSide::Server, "GET", path, 200, 1_000_000),
        )
    };
    for i in 0..150 {
        m.observe(&get(20, &format!("/p{i}")));
    }
    // An admitted route keeps its own series after the cap is reached.
    m.observe(&get(20, "/p0"));
    // Another process has its own budget.
    m.observe(&get(21, "/p149"));
    let s = Scrape::of(&m);
    let routes: Vec<_> =
        s.0.iter()
            .filter(|x| x.name == "tracer_http_requests_total")
            .filter(|x| x.labels["pid"] == "20")
            .map(|x| x.labels["route"].clone())
            .collect();
    assert_eq!(routes.len(), MAX_ROUTES_PER_PROCESS + 1);
    let labels = |route| {
        [
            ("side", "server"),
            ("method", "GET"),
            ("status_class", "2xx"),
            ("route", route),
        ]
    };
    assert_eq!(
        s.proc("tracer_http_requests_total", 20, "node", &labels("other")),
        Some(50.0)
    );
    assert_eq!(
        s.proc("tracer_http_requests_total", 20, "node", &labels("/p0")),
        Some(2.0)
    );
    assert_eq!(
        s.proc("tracer_http_requests_total", 20, "node", &labels("/p99")),
        Some(1.0)
    );
    assert_eq!(
        s.proc("tracer_http_requests_total", 20, "node", &labels("/p100")),
        None
    );
    assert_eq!(
        s.proc("tracer_http_requests_total", 21, "node", &labels("/p149")),
        Some(1.0)
    );
    assert_eq!(
        s.proc(
            "tracer_http_request_duration_seconds_count",
            20,
            "node",
            &[("side", "server"), ("method", "GET"), ("route", "other")]
        ),
        Some(50.0)
    );

    // A normalised route longer than the limit is `other` too.
    m.observe(&get(22, &format!("/{}", "a-b/".repeat(100))));
    let s = Scrape::of(&m);
    assert_eq!(
        s.proc("tracer_http_requests_total", 22, "node", &labels("other")),
        Some(1.0)
    );
}

#[test]
fn open_connections_never_go_negative() {
    let m = Metrics::new();
    let open = |m: &Metrics| Scrape::of(m).proc("tracer_tcp_connections_open", 30, "node", &[]);
    let closed =
        |m: &Metrics| Scrape::of(m).proc("tracer_tcp_connections_closed_total", 30, "node", &[]);
    let feed = |data| m.observe(&ev(30, "node", data));

    // Connections open before attach close first: the gauge stays at 0.
    feed(close(1, 1, true, false));
    feed(close(1, 1, true, false));
    assert_eq!(open(&m), None);
    assert_eq!(closed(&m), Some(2.0));

    feed(EventData::TcpConnect(tuple()));
    feed(EventData::TcpAccept(tuple()));
    feed(EventData::TcpAccept(tuple()));
    assert_eq!(open(&m), Some(3.0));
    feed(close(1, 1, false, false));
    feed(close(1, 1, true, false));
    assert_eq!(open(&m), Some(2.0));
    // A failed connect was never opened: it neither closes nor lowers.
    feed(close(0, 0, false, true));
    assert_eq!(open(&m), Some(2.0));
    assert_eq!(
        Scrape::of(&m).proc("tracer_tcp_connect_failed_total", 30, "node", &[]),
        Some(1.0)
    );
    assert_eq!(closed(&m), Some(4.0));
    // More closes than opens seen (an open record was lost): clamp at 0.
    for _ in 0..4 {
        feed(close(1, 1, false, false));
    }
    assert_eq!(open(&m), Some(0.0));
    feed(EventData::TcpConnect(tuple()));
    assert_eq!(open(&m), Some(1.0));

    // Exit: nothing is open any more; the series stay.
    feed(EventData::Exit {
        exit_code: Some(0),
        signal: None,
    });
    assert_eq!(open(&m), Some(0.0));
    assert_eq!(closed(&m), Some(8.0));
    // A straggling close after the exit does not go below 0.
    feed(close(1, 1, false, false));
    assert_eq!(open(&m), Some(0.0));
}

#[test]
fn pid_reuse_and_exec_relabel() {
    let m = Metrics::new();
    m.observe(&ev(40, "node", EventData::TcpConnect(tuple())));
    m.observe(&ev(40, "node", EventData::TcpConnect(tuple())));
    // A thread with another name does not split the process's series.
    let mut thread = ev(40, "libuv-worker", log(StreamName::Stdout, "x"));
    thread.tid = 41;
    m.observe(&thread);
    m.observe(&ev(
        40,
        "python3",
        EventData::Exec {
            exe: "/usr/bin/python3".into(),
        },
    ));
    m.observe(&ev(40, "python3", close(1, 1, false, false)));
    let s = Scrape::of(&m);
    assert_eq!(
        s.proc("tracer_tcp_connections_open", 40, "node", &[]),
        Some(0.0)
    );
    assert_eq!(
        s.proc("tracer_tcp_connections_open", 40, "python3", &[]),
        Some(1.0)
    );
    assert_eq!(
        s.proc(
            "tracer_log_lines_total",
            40,
            "node",
            &[("stream", "stdout")]
        ),
        Some(1.0)
    );
    assert_eq!(s.label_values("tracer_log_lines_total", "comm").len(), 1);

    // Exit, then the pid is reused by an unrelated program.
    m.observe(&ev(
        40,
        "python3",
        EventData::Exit {
            exit_code: None,
            signal: Some(9),
        },
    ));
    m.observe(&ev(40, "bash", log(StreamName::Stderr, "y")));
    let s = Scrape::of(&m);
    assert_eq!(
        s.proc(
            "tracer_log_lines_total",
            40,
            "bash",
            &[("stream", "stderr")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s.proc("tracer_tcp_connections_open", 40, "python3", &[]),
        Some(0.0)
    );
    assert_eq!(
        s.proc("tracer_events_total", 40, "python3", &[("kind", "exit")]),
        Some(1.0)
    );
}

#[test]
fn secrets_do_not_reach_labels() {
    let m = Metrics::new();
    let mut exchanges = vec![
        http(
            HttpSide::Server,
            "GET",
            "/login?token=SECRET-A&password=SECRET-B",
            200,
            1,
        ),
        http(
            HttpSide::Server,
            "GET",
            "/download;jsessionid=SECRET-C/report",
            200,
            1,
        ),
        http(
            HttpSide::Client,
            "GET",
            "http://admin:SECRET-D@10.0.0.1:8080/api?key=SECRET-E",
            200,
            1,
        ),
        http(
            HttpSide::Client,
            "GET",
            "/reset/SECRET0F0123456789abcdef",
            200,
            1,
        ),
        http(HttpSide::Client, "GET", "/x#SECRET-G", 200, 1),
        http(HttpSide::Server, "SECRET-H", "/", 200, 1),
    ];
    if let EventData::Http(h) = &mut exchanges[0] {
        h.traceparent = Some("00-SECRET-I-01".into());
        h.request_id = Some("SECRET-J".into());
        h.req_id = "SECRET-K".into();
    }
    for data in exchanges {
        m.observe(&ev(50, "node", data));
    }
    m.observe(&ev(50, "node", log(StreamName::File, "password=SECRET-L")));
    let text = m.encode();
    assert!(!text.contains("SECRET"), "a secret leaked:\n{text}");
    let routes = Scrape(parse(&text)).label_values("tracer_http_requests_total", "route");
    let want: std::collections::BTreeSet<String> = [
        "/login",
        "/download/report",
        "/api",
        "/reset/:id",
        "/x",
        "/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(routes, want);
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new();
    m.observe(&ev(60, "we\"ird\\na\nme", log(StreamName::Stdout, "x")));
    let s = Scrape::of(&m);
    assert_eq!(
        s.proc(
            "tracer_log_lines_total",
            60,
            "we\"ird\\na\nme",
            &[("stream", "stdout")]
        ),
        Some(1.0)
    );
    assert!(s.names().contains("tracer_log_lines_total"));
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// A plain HTTP/1.0 GET; returns the status, the Content-Type and the body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_string()))
}

#[test]
fn endpoint_serves_metrics_and_404s_elsewhere() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let m = Arc::new(Metrics::new());
    m.observe(&ev(70, "node", log(StreamName::Stdout, "x")));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(serve(addr, Arc::clone(&m), async {
        _ = stop_rx.await;
    }));

    let mut got = None;
    for _ in 0..100 {
        if let Ok(r) = http_get(addr, "/metrics") {
            got = Some(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, content_type, body) = got.expect("the endpoint never answered");
    assert_eq!(status, 200);
    assert_eq!(content_type, prometheus_text::CONTENT_TYPE);
    assert_eq!(
        Scrape(parse(&body)).proc(
            "tracer_log_lines_total",
            70,
            "node",
            &[("stream", "stdout")]
        ),
        Some(1.0)
    );
    // Updates show in the next scrape.
    m.observe(&ev(70, "node", log(StreamName::Stdout, "y")));
    let (_, _, body) = http_get(addr, "/metrics").expect("second scrape");
    assert_eq!(
        Scrape(parse(&body)).proc(
            "tracer_log_lines_total",
            70,
            "node",
            &[("stream", "stdout")]
        ),
        Some(2.0)
    );
    for path in ["/", "/metrics/x", "/favicon.ico"] {
        let (status, _, _) = http_get(addr, path).expect("request");
        assert_eq!(status, 404, "{path}");
    }

    stop_tx.send(()).expect("server still running");
    let result = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), server).await })
        .expect("serve did not stop on shutdown")
        .expect("serve task panicked");
    result.expect("serve returned an error");
    // Nothing listens there any more. (Not checked by binding the port
    // again: the other tests running meanwhile may hold it as an ephemeral
    // client port.)
    // A connect can still succeed without our server: the kernel may pick
    // the port itself as the ephemeral source (a TCP self-connect), or a
    // process running meanwhile may listen there. Neither serves metrics.
    match std::net::TcpStream::connect(addr) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        Ok(s) if s.local_addr().ok() == s.peer_addr().ok() => {}
        Ok(_) => {
            let served = http_get(addr, "/metrics")
                .is_ok_and(|(status, _, body)| status == 200 && body.contains("tracer_"));
            assert!(
                !served,
                "the metrics endpoint still serves metrics after shutdown"
            );
        }
    }
}

#[test]
fn serve_reports_a_port_in_use() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = rt
        .block_on(serve(
            addr,
            Arc::new(Metrics::new()),
            std::future::pending(),
        ))
        .expect_err("binding a taken port must fail");
    assert!(
        format!("{err:#}").contains(&addr.to_string()),
        "error does not name the address: {err:#}"
    );
}
