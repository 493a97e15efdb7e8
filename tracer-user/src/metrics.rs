//! Prometheus metrics derived from the event stream (docs/metrics.md).
//!
//! [`Metrics::observe`] is fed every event the pipeline produces; it keeps
//! counters, gauges and histograms per process (`host`, `pid`, `comm`) in a
//! `prometheus-client` registry, and [`serve`] exposes them at `GET /metrics`
//! in the Prometheus text format. Nothing here reads the kernel: every number
//! comes from an [`Event`].
//!
//! Label values that come from traced traffic are bounded and scrubbed: HTTP
//! routes are normalised ([`normalize_route`]: query strings, fragments, path
//! parameters and the authority of absolute URLs are dropped, ids become
//! `:id`) and capped per process ([`MAX_ROUTES_PER_PROCESS`]); HTTP methods
//! outside the standard set become `other`.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicI64, Ordering},
    },
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::event::{Event, EventData, HttpSide, LossStage, StreamName};

/// Distinct routes one process may have in `tracer_http_*`; further routes
/// are counted under `route="other"`.
pub const MAX_ROUTES_PER_PROCESS: usize = 100;

/// A normalised route longer than this (bytes) is counted as `other`.
pub const MAX_ROUTE_LEN: usize = 256;

/// The route label of requests beyond the cap.
pub const OTHER_ROUTE: &str = "other";

/// HTTP request duration buckets (seconds): 0.5 ms .. 10 s.
pub const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Event-loop and GC buckets (seconds): 0.1 ms .. 5 s.
pub const RUNTIME_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Methods kept as label values; any other method is `other`.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcLabels {
    host: String,
    pid: u32,
    comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    #[prometheus(flatten)]
    proc: ProcLabels,
    side: &'static str,
    method: &'static str,
    status_class: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpDurationLabels {
    #[prometheus(flatten)]
    proc: ProcLabels,
    side: &'static str,
    method: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    #[prometheus(flatten)]
    proc: ProcLabels,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    #[prometheus(flatten)]
    proc: ProcLabels,
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    #[prometheus(flatten)]
    proc: ProcLabels,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS.iter().copied())
}

fn runtime_histogram() -> Histogram {
    Histogram::new(RUNTIME_BUCKETS.iter().copied())
}

/// The metric families. Cloning shares them (each is an `Arc` inside).
#[derive(Clone)]
struct Families {
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<HttpDurationLabels>,
    tcp_bytes_sent: Family<ProcLabels, Counter>,
    tcp_bytes_received: Family<ProcLabels, Counter>,
    tcp_opened: Family<DirectionLabels, Counter>,
    tcp_closed: Family<ProcLabels, Counter>,
    tcp_connect_failed: Family<ProcLabels, Counter>,
    tcp_open: Family<ProcLabels, Gauge>,
    tcp_retransmits: Family<ProcLabels, Counter>,
    loop_busy: HistogramFamily<ProcLabels>,
    loop_poll: HistogramFamily<ProcLabels>,
    gc_pause: HistogramFamily<ProcLabels>,
    log_lines: Family<StreamLabels, Counter>,
    events: Family<KindLabels, Counter>,
    lost: Family<StageLabels, Counter>,
}

impl Families {
    fn new() -> Self {
        Self {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(http_histogram),
            tcp_bytes_sent: Family::default(),
            tcp_bytes_received: Family::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_connect_failed: Family::default(),
            tcp_open: Family::default(),
            tcp_retransmits: Family::default(),
            loop_busy: Family::new_with_constructor(runtime_histogram),
            loop_poll: Family::new_with_constructor(runtime_histogram),
            gc_pause: Family::new_with_constructor(runtime_histogram),
            log_lines: Family::default(),
            events: Family::default(),
            lost: Family::default(),
        }
    }

    /// Registers every family. Counter names lack `_total`: the encoder
    /// appends it.
    fn register(&self, r: &mut Registry) {
        r.register(
            "tracer_http_requests",
            "HTTP/1.x exchanges seen, by side, method, status class and normalised route",
            self.http_requests.clone(),
        );
        r.register(
            "tracer_http_request_duration_seconds",
            "HTTP exchange duration, first request byte to last response byte",
            self.http_duration.clone(),
        );
        r.register(
            "tracer_tcp_bytes_sent",
            "TCP payload bytes acknowledged by the peer, counted when the connection closes",
            self.tcp_bytes_sent.clone(),
        );
        r.register(
            "tracer_tcp_bytes_received",
            "TCP payload bytes received, counted when the connection closes",
            self.tcp_bytes_received.clone(),
        );
        r.register(
            "tracer_tcp_connections_opened",
            "TCP connections established, by direction (connect or accept)",
            self.tcp_opened.clone(),
        );
        r.register(
            "tracer_tcp_connections_closed",
            "Established TCP connections closed (including ones opened before attach)",
            self.tcp_closed.clone(),
        );
        r.register(
            "tracer_tcp_connect_failed",
            "Outgoing TCP connections that never got established",
            self.tcp_connect_failed.clone(),
        );
        r.register(
            "tracer_tcp_connections_open",
            "TCP connections opened since attach and not yet closed (never negative)",
            self.tcp_open.clone(),
        );
        r.register(
            "tracer_tcp_retransmits",
            "TCP segments retransmitted",
            self.tcp_retransmits.clone(),
        );
        r.register(
            "tracer_event_loop_busy_seconds",
            "Event-loop delay: time from leaving uv__io_poll to entering it again",
            self.loop_busy.clone(),
        );
        r.register(
            "tracer_event_loop_poll_seconds",
            "Time the event loop spent blocked in uv__io_poll",
            self.loop_poll.clone(),
        );
        r.register(
            "tracer_gc_pause_seconds",
            "V8 garbage collection pauses (Heap::CollectGarbage calls)",
            self.gc_pause.clone(),
        );
        r.register(
            "tracer_log_lines",
            "Log lines written, by stream",
            self.log_lines.clone(),
        );
        r.register(
            "tracer_events",
            "Events observed, by kind",
            self.events.clone(),
        );
        r.register(
            "tracer_events_lost",
            "Records lost, by stage (ring, decode, or a user-space stage such as parse)",
            self.lost.clone(),
        );
    }
}

/// What is kept per process (per host and pid) besides its series.
struct Proc {
    labels: ProcLabels,
    /// Routes admitted for this process, at most [`MAX_ROUTES_PER_PROCESS`].
    routes: RwLock<HashSet<String>>,
    /// Handles to this process's series with fixed labels, made on first
    /// use, so a frequent event (a loop turn, a log line) costs no label
    /// clone or family lookup.
    series: Series,
}

/// `EventData` kinds counted per process (all but `lost`), in
/// [`kind_slot`] order.
const KINDS: usize = 10;

#[derive(Default)]
struct Series {
    events: [OnceLock<Counter>; KINDS],
    /// stdout, stderr, file.
    log_lines: [OnceLock<Counter>; 3],
    /// connect, accept.
    opened: [OnceLock<Counter>; 2],
    loop_busy: OnceLock<Histogram>,
    loop_poll: OnceLock<Histogram>,
}

/// The index of a per-process kind in [`Series::events`]; None for `lost`.
fn kind_slot(data: &EventData) -> Option<usize> {
    Some(match data {
        EventData::Log { .. } => 0,
        EventData::Http(_) => 1,
        EventData::TcpConnect(_) => 2,
        EventData::TcpAccept(_) => 3,
        EventData::TcpClose { .. } => 4,
        EventData::TcpRetransmit { .. } => 5,
        EventData::Loop { .. } => 6,
        EventData::Gc { .. } => 7,
        EventData::Exec { .. } => 8,
        EventData::Exit { .. } => 9,
        // Logpoint and inspector lines are counted by the summary only; ad-hoc
        // probes (`tracer probe`) carry their own counts.
        EventData::Lost { .. }
        | EventData::Logpoint { .. }
        | EventData::Inspector { .. }
        | EventData::Probe(_)
        | EventData::Audit(_) => {
            return None;
        }
    })
}

/// Metrics derived from events. `Send + Sync`; an update is a couple of
/// read-locked map lookups and atomic adds.
pub struct Metrics {
    registry: Registry,
    f: Families,
    /// host -> pid -> process. Written when a process is first seen, execs,
    /// or exits.
    procs: RwLock<HashMap<String, HashMap<u32, Arc<Proc>>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn stream_name(stream: StreamName) -> &'static str {
    match stream {
        StreamName::Stdout => "stdout",
        StreamName::Stderr => "stderr",
        StreamName::File => "file",
    }
}

fn side_name(side: HttpSide) -> &'static str {
    match side {
        HttpSide::Server => "server",
        HttpSide::Client => "client",
    }
}

fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

fn status_class(status: u16) -> &'static str {
    match status {
        0 => "none",
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Subtracts one from a gauge, stopping at zero.
fn dec_to_zero(gauge: &AtomicI64) {
    // Err means it was already 0: a close whose open was never seen (lost
    // record), which must not make the gauge negative.
    _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        (v > 0).then(|| v - 1)
    });
}

impl Metrics {
    pub fn new() -> Self {
        let f = Families::new();
        let mut registry = Registry::default();
        f.register(&mut registry);
        // Losses are worth seeing at 0 (an alert on them needs the series).
        for stage in [LossStage::Ring, LossStage::Decode] {
            f.lost
                .get_or_create(&StageLabels {
                    stage: stage.name().to_string(),
                })
                .inc_by(0);
        }
        Self {
            registry,
            f,
            procs: RwLock::new(HashMap::new()),
        }
    }

    /// Updates the metrics for one event. Call it for every event,
    /// including loop turns below the display threshold.
    pub fn observe(&self, event: &Event) {
        let data = &event.data;
        if let EventData::Lost { count, stage, .. } = data {
            self.count_lost(stage.name(), *count);
            return;
        }
        let p = self.proc_of(event);
        let pl = &p.labels;
        if let Some(slot) = kind_slot(data) {
            p.series.events[slot]
                .get_or_init(|| {
                    self.f.events.get_or_create_owned(&KindLabels {
                        proc: pl.clone(),
                        kind: data.kind(),
                    })
                })
                .inc();
        }
        match data {
            EventData::Http(h) => {
                let route = self.admit_route(&p, normalize_route(&h.path));
                let side = side_name(h.side);
                let method = method_label(&h.method);
                self.f
                    .http_requests
                    .get_or_create(&HttpLabels {
                        proc: pl.clone(),
                        side,
                        method,
                        status_class: status_class(h.status),
                        route: route.clone(),
                    })
                    .inc();
                self.f
                    .http_duration
                    .get_or_create(&HttpDurationLabels {
                        proc: pl.clone(),
                        side,
                        method,
                        route,
                    })
                    .observe(seconds(h.duration_ns));
            }
            EventData::TcpConnect(_) | EventData::TcpAccept(_) => {
                let (slot, direction) = match data {
                    EventData::TcpConnect(_) => (0, "connect"),
                    _ => (1, "accept"),
                };
                p.series.opened[slot]
                    .get_or_init(|| {
                        self.f.tcp_opened.get_or_create_owned(&DirectionLabels {
                            proc: pl.clone(),
                            direction,
                        })
                    })
                    .inc();
                self.f.tcp_open.get_or_create(pl).inc();
            }
            EventData::TcpClose {
                bytes_sent,
                bytes_received,
                preexisting,
                failed,
                ..
            } => {
                self.f.tcp_bytes_sent.get_or_create(pl).inc_by(*bytes_sent);
                self.f
                    .tcp_bytes_received
                    .get_or_create(pl)
                    .inc_by(*bytes_received);
                if *failed {
                    // Never established: it was not counted as opened.
                    self.f.tcp_connect_failed.get_or_create(pl).inc();
                } else {
                    self.f.tcp_closed.get_or_create(pl).inc();
                    if !*preexisting {
                        dec_to_zero(self.f.tcp_open.get_or_create(pl).inner());
                    }
                }
            }
            EventData::TcpRetransmit { segments, .. } => {
                self.f
                    .tcp_retransmits
                    .get_or_create(pl)
                    .inc_by(u64::from(*segments));
            }
            EventData::Loop { poll_ns, busy_ns } => {
                p.series
                    .loop_busy
                    .get_or_init(|| self.f.loop_busy.get_or_create_owned(pl))
                    .observe(seconds(*busy_ns));
                p.series
                    .loop_poll
                    .get_or_init(|| self.f.loop_poll.get_or_create_owned(pl))
                    .observe(seconds(*poll_ns));
            }
            EventData::Gc { duration_ns } => {
                self.f
                    .gc_pause
                    .get_or_create(pl)
                    .observe(seconds(*duration_ns));
            }
            EventData::Log { stream, .. } => {
                let slot = match stream {
                    StreamName::Stdout => 0,
                    StreamName::Stderr => 1,
                    StreamName::File => 2,
                };
                p.series.log_lines[slot]
                    .get_or_init(|| {
                        self.f.log_lines.get_or_create_owned(&StreamLabels {
                            proc: pl.clone(),
                            stream: stream_name(*stream),
                        })
                    })
                    .inc();
            }
            EventData::Exit { .. } => self.on_exit(event, &p),
            EventData::Exec { .. }
            | EventData::Lost { .. }
            | EventData::Logpoint { .. }
            | EventData::Inspector { .. }
            | EventData::Probe(_)
            | EventData::Audit(_) => {}
        }
    }

    /// Counts records lost at a user-space stage (e.g. `parse` for bytes the
    /// HTTP parser had to give up on). `stage` should be a fixed name: it
    /// becomes a label value.
    pub fn count_lost(&self, stage: &str, n: u64) {
        let labels = StageLabels {
            stage: stage.to_string(),
        };
        self.f.lost.get_or_create(&labels).inc_by(n);
    }

    /// The Prometheus text exposition (format 0.0.4) of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail: fmt::Write for String never errors");
        out
    }

    /// The process an event belongs to, created on first sight. Its `comm`
    /// label is the one first seen for the pid; an `exec` to a program with
    /// another name starts series under the new name (the open-connections
    /// gauge moves with it).
    fn proc_of(&self, event: &Event) -> Arc<Proc> {
        let relabel = |p: &Proc| {
            !event.comm.is_empty()
                && p.labels.comm != event.comm
                && (p.labels.comm.is_empty() || matches!(event.data, EventData::Exec { .. }))
        };
        {
            let procs = self.procs.read().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = procs.get(&event.host).and_then(|h| h.get(&event.pid))
                && !relabel(p)
            {
                return Arc::clone(p);
            }
        }
        let mut procs = self.procs.write().unwrap_or_else(|e| e.into_inner());
        let slot = procs
            .entry(event.host.clone())
            .or_default()
            .entry(event.pid);
        let new = |routes: HashSet<String>| {
            Arc::new(Proc {
                labels: ProcLabels {
                    host: event.host.clone(),
                    pid: event.pid,
                    comm: event.comm.clone(),
                },
                routes: RwLock::new(routes),
                series: Series::default(),
            })
        };
        match slot {
            std::collections::hash_map::Entry::Vacant(v) => {
                Arc::clone(v.insert(new(HashSet::new())))
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if !relabel(o.get()) {
                    return Arc::clone(o.get());
                }
                let old = o.get();
                let routes =
                    std::mem::take(&mut *old.routes.write().unwrap_or_else(|e| e.into_inner()));
                let p = new(routes);
                let open = self.f.tcp_open.get_or_create(&old.labels).set(0);
                self.f.tcp_open.get_or_create(&p.labels).set(open);
                o.insert(Arc::clone(&p));
                p
            }
        }
    }

    /// The route label for `route` in process `p`: itself while the process
    /// has fewer than [`MAX_ROUTES_PER_PROCESS`] routes (or already has this
    /// one), else `other`.
    fn admit_route(&self, p: &Proc, route: String) -> String {
        if route.len() > MAX_ROUTE_LEN {
            return OTHER_ROUTE.to_string();
        }
        {
            let routes = p.routes.read().unwrap_or_else(|e| e.into_inner());
            if routes.contains(&route) {
                return route;
            }
            if routes.len() >= MAX_ROUTES_PER_PROCESS {
                return OTHER_ROUTE.to_string();
            }
        }
        let mut routes = p.routes.write().unwrap_or_else(|e| e.into_inner());
        if routes.contains(&route) || routes.len() < MAX_ROUTES_PER_PROCESS {
            routes.insert(route.clone());
            route
        } else {
            OTHER_ROUTE.to_string()
        }
    }

    /// A process exited: it holds no connections any more, and its pid may
    /// be reused by an unrelated process, which starts afresh (new comm, new
    /// route budget). Its series stay (counters must not go backwards).
    fn on_exit(&self, event: &Event, p: &Arc<Proc>) {
        self.f.tcp_open.get_or_create(&p.labels).set(0);
        let mut procs = self.procs.write().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = procs.get_mut(&event.host) {
            if h.get(&event.pid).is_some_and(|cur| Arc::ptr_eq(cur, p)) {
                h.remove(&event.pid);
            }
            if h.is_empty() {
                procs.remove(&event.host);
            }
        }
    }
}

/// The route label for a request target: the path without query string,
/// fragment, `;`-parameters or the scheme and authority of an absolute URL,
/// with id-like segments replaced by `:id`:
/// - all digits (`123`);
/// - a UUID (`550e8400-e29b-41d4-a716-446655440000`);
/// - 8 or more hex digits (`deadbeef`, a commit hash, a Mongo id);
/// - token-like: 16 or more characters with both a letter and a digit, or
///   longer than 32 characters (keys, encoded tokens, slugs).
///
/// `/users/123?x=1` -> `/users/:id`. The result starts with `/` (or is `*`).
pub fn normalize_route(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    // Absolute form (a request through a proxy): drop scheme and authority,
    // which may carry credentials.
    let path = match path.find("://") {
        Some(i) if path[..i].bytes().all(|b| b.is_ascii_alphabetic()) => {
            let rest = &path[i + 3..];
            rest.find('/').map_or("", |j| &rest[j..])
        }
        _ => path,
    };
    if path == "*" {
        return "*".to_string();
    }
    let mut out = String::with_capacity(path.len() + 1);
    for (i, segment) in path.split('/').enumerate() {
        if i == 0 && segment.is_empty() {
            continue;
        }
        let segment = segment.split(';').next().unwrap_or_default();
        out.push('/');
        if is_id(segment) {
            out.push_str(":id");
        } else {
            out.push_str(segment);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn is_id(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    let digits = b.iter().all(u8::is_ascii_digit);
    let hex = b.len() >= 8 && b.iter().all(u8::is_ascii_hexdigit);
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    let token = (b.len() >= 16
        && b.iter().any(u8::is_ascii_digit)
        && b.iter().any(u8::is_ascii_alphabetic))
        || b.len() > 32;
    digits || hex || uuid || token
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        metrics.encode(),
    )
}

async fn not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}

/// Serves `GET /metrics` on `listen` until `shutdown` completes; every other
/// path is 404.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics endpoint to {listen}"))?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .fallback(not_found)
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .with_context(|| format!("serving metrics on {listen}"))
}

#[cfg(test)]
mod tests;
