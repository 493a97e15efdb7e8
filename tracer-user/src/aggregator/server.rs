//! The HTTP API (docs/aggregator.md): ingest, events, grep and tail.
//!
//! Store calls block, so they run on tokio's blocking pool. Ingest bodies
//! are decoded there in parallel, then handed to one writer thread that
//! commits whatever is waiting as one group (one fsync) and publishes what
//! it committed on a broadcast channel, in commit order, which is what
//! `/v1/tail?follow=1` streams; a follower that falls behind catches up
//! from the store by cursor, so it misses nothing.

use std::{
    borrow::Cow,
    convert::Infallible,
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    Router,
    body::Body,
    extract::{Query as QueryParams, Request, State, rejection::QueryRejection},
    http::{
        HeaderMap, HeaderValue, StatusCode,
        header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, WWW_AUTHENTICATE},
    },
    middleware::{self, Next},
    response::{
        IntoResponse, Response,
        sse::{self, KeepAlive, Sse},
    },
    routing::{get, post},
};
use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::{
    body::{BodyError, read_limited, zstd_decompress},
    store::{Batch, Filter, Position, Query, Store, StoreError, Stored, TextMatch},
    timespec::parse_time,
};

/// Rows fetched from the store per step of a streamed answer.
const PAGE: usize = 1000;
/// Committed batches buffered for live tails before a slow one must catch
/// up from the store.
const LIVE_CAPACITY: usize = 1024;
/// Most events `tail` shows before following.
const MAX_TAIL_LINES: usize = 100_000;
/// Event kinds (the `kind` values of docs/events.md).
pub const KINDS: [&str; 13] = [
    "log",
    "http",
    "tcp_connect",
    "tcp_accept",
    "tcp_close",
    "tcp_retransmit",
    "loop",
    "gc",
    "exec",
    "exit",
    "lost",
    "logpoint",
    "inspector",
];

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of request body on the wire.
    pub max_body: u64,
    /// Bytes of a zstd body once decompressed.
    pub max_decompressed: u64,
}

pub struct AppState {
    pub(super) store: Arc<dyn Store>,
    token: Vec<u8>,
    limits: Limits,
    live: broadcast::Sender<Arc<Vec<Stored>>>,
    /// Decoded batches waiting for the writer thread (group commit).
    writer: Mutex<std::sync::mpsc::Sender<Pending>>,
    shutdown: watch::Receiver<bool>,
}

/// A decoded batch and where its answer goes.
type Pending = (Batch, oneshot::Sender<Result<Ingested, String>>);

/// The writer's answer to one batch.
struct Ingested {
    accepted: usize,
    duplicate: bool,
    /// The stored events when no live tail was there to take them: freed
    /// by the request's task rather than by the one writer thread (2000
    /// events are ~4% of the writer's time).
    unpublished: Vec<Stored>,
}

/// Most events committed in one group: bounds the time a batch waits
/// behind the others in its group.
const GROUP_EVENTS: usize = 32_768;

/// The one thread that writes: it takes every batch waiting, stores them
/// together (`Store::ingest_many`: one transaction, one fsync), publishes
/// what was stored to live tails in commit order, then answers each
/// batch. Ends when the state (and so every sender) is gone.
fn writer_thread(
    store: Arc<dyn Store>,
    live: broadcast::Sender<Arc<Vec<Stored>>>,
    queue: std::sync::mpsc::Receiver<Pending>,
) {
    while let Ok(first) = queue.recv() {
        let mut events = first.0.events.len();
        let mut group = vec![first];
        while events < GROUP_EVENTS {
            match queue.try_recv() {
                Ok(p) => {
                    events += p.0.events.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let (batches, replies): (Vec<Batch>, Vec<_>) = group.into_iter().unzip();
        let n = batches.len();
        // A panic in the store must not stop the only writer: the group is
        // answered with an error (before the commit, the dropped
        // transaction rolls back; a batch resent after a commit is found
        // a duplicate) and the next group goes on.
        let outcomes =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.ingest_many(batches)))
                .unwrap_or_else(|_| {
                    log::error!("the store panicked while ingesting {n} batches");
                    (0..n)
                        .map(|_| Err(StoreError::Commit("the store panicked".into())))
                        .collect()
                });
        for (outcome, reply) in outcomes.into_iter().zip(replies) {
            let answer = match outcome {
                Ok(o) => {
                    let accepted = o.stored.len();
                    // Committed before this check: a tail that subscribes
                    // after it finds these events in the store instead.
                    let unpublished = if accepted > 0 && live.receiver_count() > 0 {
                        // A tail gone since is not an error.
                        let _ = live.send(Arc::new(o.stored));
                        Vec::new()
                    } else {
                        o.stored
                    };
                    Ok(Ingested {
                        accepted,
                        duplicate: o.duplicate,
                        unpublished,
                    })
                }
                Err(e) => Err(e.to_string()),
            };
            // The client may have gone; the batch is stored either way.
            let _ = reply.send(answer);
        }
    }
}

impl AppState {
    /// `shutdown` turning true ends live tails (so a graceful shutdown does
    /// not wait for them forever).
    pub fn new(
        store: Arc<dyn Store>,
        token: Vec<u8>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let (writer, queue) = std::sync::mpsc::channel();
        let (s, l) = (store.clone(), live.clone());
        std::thread::Builder::new()
            .name("ingest-writer".into())
            .spawn(move || writer_thread(s, l, queue))
            .expect("spawning the ingest writer thread");
        Arc::new(Self {
            store,
            token,
            limits,
            live,
            writer: Mutex::new(writer),
            shutdown,
        })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/ingest", post(ingest))
        .route("/v1/events", get(events))
        .route("/v1/grep", get(grep))
        .route("/v1/tail", get(tail))
        .route("/v1/offsets", get(offsets))
        .route("/v1/series", get(super::ui::series))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth))
        // The web UI's page and assets hold no data: no token (docs/ui.md).
        .merge(super::ui::assets())
        .with_state(state)
}

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    msg: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.msg }).to_string() + "\n";
        (self.status, [(CONTENT_TYPE, "application/json")], body).into_response()
    }
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> ApiError {
    ApiError {
        status,
        msg: msg.to_string(),
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    log::error!("{e}");
    error(StatusCode::INTERNAL_SERVER_ERROR, e)
}

/// Runs a blocking store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(internal(e)),
        Err(e) => Err(internal(format!("store task failed: {e}"))),
    }
}

/// Every route needs `Authorization: Bearer <token>`; checked before the
/// body is read. The comparison takes the same time wherever the tokens
/// differ (only the length can be told apart).
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let ok = given.is_some_and(|t| bool::from(t.ct_eq(&st.token)));
    if !ok {
        log::info!(
            "{} {}: {} token",
            req.method(),
            req.uri().path(),
            if given.is_some() { "wrong" } else { "no" }
        );
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token (Authorization: Bearer <token>)",
        )
        .into_response();
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    next.run(req).await
}

/// Decompresses, parses and validates an ingest body (blocking).
fn decode_batch(raw: &[u8], zstd: bool, limits: Limits) -> Result<Batch, ApiError> {
    let json: Cow<'_, [u8]> = if zstd {
        match zstd_decompress(raw, limits.max_decompressed) {
            Ok(v) => Cow::Owned(v),
            Err(e @ BodyError::DecompressedTooLarge { .. }) => {
                return Err(error(StatusCode::PAYLOAD_TOO_LARGE, e));
            }
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, e)),
        }
    } else {
        Cow::Borrowed(raw)
    };
    let batch: Batch = serde_json::from_slice(&json)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed batch: {e}")))?;
    batch
        .validate()
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid batch: {e}")))?;
    Ok(batch)
}

/// POST /v1/ingest: answered 200 only once the batch is committed.
async fn ingest(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let zstd = match headers.get(CONTENT_ENCODING).map(HeaderValue::to_str) {
        None => false,
        Some(Ok(v)) if v.eq_ignore_ascii_case("zstd") => true,
        Some(Ok(v)) if v.eq_ignore_ascii_case("identity") => false,
        Some(_) => {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Encoding must be zstd (or absent for plain JSON)",
            ));
        }
    };
    let raw = match read_limited(body, st.limits.max_body).await {
        Ok(b) => b,
        Err(e @ BodyError::TooLarge { .. }) => {
            log::info!("ingest: {e}");
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, e));
        }
        Err(e) => return Err(error(StatusCode::BAD_REQUEST, e)),
    };
    // Decoding runs on the blocking pool, one batch per task, so several
    // decode in parallel while the writer thread commits the previous group.
    let limits = st.limits;
    let result = match tokio::task::spawn_blocking(move || decode_batch(&raw, zstd, limits)).await {
        Ok(Ok(batch)) => {
            let (tx, rx) = oneshot::channel();
            let queued = st
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .send((batch, tx));
            match queued {
                Ok(()) => match rx.await {
                    Ok(Ok(v)) => Ok(Ok(v)),
                    Ok(Err(e)) => Ok(Err(internal(e))),
                    Err(_) => Ok(Err(internal("the ingest writer stopped"))),
                },
                Err(_) => Ok(Err(internal("the ingest writer stopped"))),
            }
        }
        Ok(Err(e)) => Ok(Err(e)),
        Err(e) => Err(e),
    };
    match result {
        Ok(Ok(Ingested {
            accepted,
            duplicate,
            unpublished,
        })) => {
            drop(unpublished);
            let body = serde_json::json!({ "accepted": accepted, "duplicate": duplicate });
            Ok((
                StatusCode::OK,
                [(CONTENT_TYPE, "application/json")],
                body.to_string() + "\n",
            )
                .into_response())
        }
        Ok(Err(e)) => {
            log::info!("ingest rejected: {} {}", e.status, e.msg);
            Err(e)
        }
        Err(e) => Err(internal(format!("ingest task failed: {e}"))),
    }
}

/// Parses a comma-separated list (`host=a,b`).
fn list(v: Option<&str>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

fn flag(v: Option<&str>) -> Result<bool, ApiError> {
    match v {
        None | Some("" | "0" | "false" | "no") => Ok(false),
        Some("1" | "true" | "yes") => Ok(true),
        Some(other) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("{other:?} is not a flag value (use 1 or 0)"),
        )),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    since: Option<String>,
    until: Option<String>,
    host: Option<String>,
    kind: Option<String>,
    trace: Option<String>,
    stream: Option<String>,
    limit: Option<usize>,
    re: Option<String>,
    i: Option<String>,
    count: Option<String>,
    follow: Option<String>,
    n: Option<usize>,
}

impl Params {
    fn from(p: Result<QueryParams<Params>, QueryRejection>) -> Result<Self, ApiError> {
        p.map(|QueryParams(p)| p)
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))
    }

    fn filter(&self) -> Result<Filter, ApiError> {
        let time = |name: &str, v: &Option<String>| {
            v.as_deref()
                .map(parse_time)
                .transpose()
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("{name}: {e}")))
        };
        let kinds = list(self.kind.as_deref());
        if let Some(k) = kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("unknown kind {k:?} (kinds: {})", KINDS.join(", ")),
            ));
        }
        if let Some(s) = self.stream.as_deref()
            && !["stdout", "stderr", "file"].contains(&s)
        {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("unknown stream {s:?} (streams: stdout, stderr, file)"),
            ));
        }
        Ok(Filter {
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            hosts: list(self.host.as_deref()),
            kinds,
            trace: self.trace.clone().filter(|t| !t.is_empty()),
            stream: self.stream.clone(),
            text: None,
        })
    }

    fn reject(&self, what: &[(&str, bool)], route: &str) -> Result<(), ApiError> {
        match what.iter().find(|(_, present)| *present) {
            Some((name, _)) => Err(error(
                StatusCode::BAD_REQUEST,
                format!("{route} takes no {name}= parameter"),
            )),
            None => Ok(()),
        }
    }
}

fn json_lines(rows: &[Stored]) -> Bytes {
    let mut buf = Vec::with_capacity(rows.len() * 160);
    for s in rows {
        // Serialising an `Event` to memory cannot fail.
        if serde_json::to_writer(&mut buf, &s.event).is_ok() {
            buf.push(b'\n');
        }
    }
    Bytes::from(buf)
}

struct Pages {
    store: Arc<dyn Store>,
    query: Query,
    remaining: usize,
    next: Option<Vec<Stored>>,
    done: bool,
}

/// Streams the events matching `filter` as JSON Lines in corrected-time
/// order, one store page at a time (memory stays at a page whatever the
/// size of the answer). The first page is read before answering, so a
/// failing store gives a 500 rather than a cut stream.
async fn stream_events(
    store: Arc<dyn Store>,
    filter: Filter,
    limit: Option<usize>,
) -> Result<Response, ApiError> {
    let remaining = limit.unwrap_or(usize::MAX);
    let query = Query {
        filter,
        limit: PAGE.min(remaining),
        ..Query::default()
    };
    let first = if remaining == 0 {
        Vec::new()
    } else {
        let (s, q) = (store.clone(), query.clone());
        blocking(move || s.query(&q)).await?
    };
    let pages = Pages {
        store,
        query,
        remaining,
        next: Some(first),
        done: false,
    };
    let body = stream::unfold(pages, |mut p| async move {
        let rows = match p.next.take() {
            Some(rows) => rows,
            None if p.done => return None,
            None => {
                let (s, q) = (p.store.clone(), p.query.clone());
                match tokio::task::spawn_blocking(move || s.query(&q)).await {
                    Ok(Ok(rows)) => rows,
                    failed => {
                        let msg = match failed {
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => e.to_string(),
                            Ok(Ok(_)) => String::new(),
                        };
                        log::error!("query failed mid-answer: {msg}");
                        p.done = true;
                        return Some((Err(std::io::Error::other(msg)), p));
                    }
                }
            }
        };
        p.remaining = p.remaining.saturating_sub(rows.len());
        if rows.len() < p.query.limit || p.remaining == 0 {
            p.done = true;
        }
        if rows.is_empty() {
            return None;
        }
        p.query.after = rows.last().map(Position::from);
        p.query.limit = PAGE.min(p.remaining.max(1));
        Some((Ok(json_lines(&rows)), p))
    });
    Ok((
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// GET /v1/events: JSON Lines, by corrected time.
async fn events(
    State(st): State<Arc<AppState>>,
    params: Result<QueryParams<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = Params::from(params)?;
    p.reject(
        &[
            ("re", p.re.is_some()),
            ("i", p.i.is_some()),
            ("count", p.count.is_some()),
            ("follow", p.follow.is_some()),
            ("n", p.n.is_some()),
        ],
        "/v1/events",
    )?;
    let filter = p.filter()?;
    stream_events(st.store.clone(), filter, p.limit).await
}

/// GET /v1/grep: log lines whose text matches `re`, by corrected time, or
/// with `count=1` their number as `{"count": N}`.
async fn grep(
    State(st): State<Arc<AppState>>,
    params: Result<QueryParams<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = Params::from(params)?;
    p.reject(
        &[
            ("kind", p.kind.is_some()),
            ("follow", p.follow.is_some()),
            ("n", p.n.is_some()),
        ],
        "/v1/grep",
    )?;
    let Some(pattern) = p.re.clone() else {
        return Err(error(StatusCode::BAD_REQUEST, "re= (a regex) is required"));
    };
    let text = TextMatch {
        pattern,
        case_insensitive: flag(p.i.as_deref())?,
    };
    text.compile()
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid regex: {e}")))?;
    let filter = Filter {
        text: Some(text),
        ..p.filter()?
    };
    if flag(p.count.as_deref())? {
        let store = st.store.clone();
        let n = blocking(move || store.count(&filter)).await?;
        let body = serde_json::json!({ "count": n }).to_string() + "\n";
        return Ok(([(CONTENT_TYPE, "application/json")], body).into_response());
    }
    stream_events(st.store.clone(), filter, p.limit).await
}

fn sse_event(s: &Stored) -> sse::Event {
    let data = serde_json::to_string(&s.event).unwrap_or_default();
    sse::Event::default().id(s.id.to_string()).data(data)
}

/// GET /v1/tail: Server-Sent Events. The last `n` events (default 10), by
/// corrected time; with `follow=1`, then every new matching event as it is
/// committed, in commit order.
async fn tail(
    State(st): State<Arc<AppState>>,
    params: Result<QueryParams<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = Params::from(params)?;
    p.reject(
        &[
            ("since", p.since.is_some()),
            ("until", p.until.is_some()),
            ("trace", p.trace.is_some()),
            ("re", p.re.is_some()),
            ("i", p.i.is_some()),
            ("count", p.count.is_some()),
            ("limit", p.limit.is_some()),
        ],
        "/v1/tail",
    )?;
    let follow = flag(p.follow.as_deref())?;
    let filter = p.filter()?;
    let n = p.n.unwrap_or(10).min(MAX_TAIL_LINES);
    // Subscribe before the snapshot: whatever commits after it is in the
    // channel, and ids at or below the snapshot's cursor are skipped.
    let live = follow.then(|| st.live.subscribe());
    let (store, f) = (st.store.clone(), filter.clone());
    let (cursor, mut rows) = blocking(move || {
        let cursor = store.cursor()?;
        let rows = store.query(&Query {
            filter: f,
            as_of: Some(cursor),
            newest_first: true,
            limit: n,
            ..Query::default()
        })?;
        Ok((cursor, rows))
    })
    .await?;
    rows.reverse();
    let hello = sse::Event::default().comment("tracer tail");
    let snapshot = stream::iter(
        std::iter::once(hello)
            .chain(rows.iter().map(sse_event))
            .map(Ok::<_, Infallible>)
            .collect::<Vec<_>>(),
    );
    let Some(live) = live else {
        return Ok(Sse::new(snapshot).into_response());
    };
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(follow_live(st.clone(), live, filter, cursor, tx));
    let rest = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(snapshot.chain(rest))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Sends every committed event matching `filter` with id > `last` to `tx`
/// until the client goes away or the server shuts down.
async fn follow_live(
    st: Arc<AppState>,
    mut live: broadcast::Receiver<Arc<Vec<Stored>>>,
    filter: Filter,
    mut last: i64,
    tx: mpsc::Sender<sse::Event>,
) {
    let mut shutdown = st.shutdown.clone();
    loop {
        let msg = tokio::select! {
            _ = tx.closed() => return,
            _ = shutdown.wait_for(|stop| *stop) => return,
            msg = live.recv() => msg,
        };
        match msg {
            Ok(batch) => {
                for s in batch.iter() {
                    if s.id > last && filter.matches(&s.event, None) {
                        last = s.id;
                        if tx.send(sse_event(s)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                log::info!("tail fell {skipped} batches behind; catching up from the store");
                if let Err(e) = catch_up(&st, &filter, &mut last, &tx).await {
                    // The client is gone, or the store failed (said to it).
                    log::info!("tail stopped: {e}");
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn catch_up(
    st: &AppState,
    filter: &Filter,
    last: &mut i64,
    tx: &mpsc::Sender<sse::Event>,
) -> Result<(), String> {
    {
        loop {
            let (store, f, cursor) = (st.store.clone(), filter.clone(), *last);
            let rows =
                match tokio::task::spawn_blocking(move || store.since_cursor(cursor, &f, PAGE))
                    .await
                {
                    Ok(Ok(rows)) => rows,
                    Ok(Err(e)) => return Err(report(tx, e.to_string()).await),
                    Err(e) => return Err(report(tx, e.to_string()).await),
                };
            for s in &rows {
                *last = s.id;
                tx.send(sse_event(s))
                    .await
                    .map_err(|_| "client gone".to_string())?;
            }
            if rows.len() < PAGE {
                return Ok(());
            }
        }
    }
}

async fn report(tx: &mpsc::Sender<sse::Event>, msg: String) -> String {
    log::error!("tail catch-up failed: {msg}");
    // The client may already be gone; the error is logged either way.
    let _ = tx
        .send(sse::Event::default().event("error").data(msg.clone()))
        .await;
    msg
}

/// GET /v1/offsets: every host's clock correction (docs/aggregator.md,
/// "Stitching"), as `{"offsets": [{"host", "offset_ns", "pairs",
/// "reference", "updated_ns"}, ...]}` sorted by host.
async fn offsets(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let store = st.store.clone();
    let rows = blocking(move || store.offsets()).await?;
    let body = serde_json::json!({ "offsets": rows }).to_string() + "\n";
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}
