//! The HTTP API (docs/aggregator.md), one file per resource: `ingest.rs`
//! (POST /v1/ingest and the group-committing writer thread), `events.rs`
//! (GET /v1/events, /v1/grep, /v1/offsets), `tail.rs` (GET /v1/tail),
//! `series.rs` (GET /v1/series, the web UI's graphs); `params.rs` parses
//! what they share. This file holds the state, the token check and the
//! router, which only wires; the UI's static assets are `super::ui`.
//!
//! Store calls block, so they run on tokio's blocking pool. Ingest bodies
//! are decoded there in parallel, then handed to one writer thread that
//! commits whatever is waiting as one group (one fsync) and publishes what
//! it committed on a broadcast channel, in commit order, which is what
//! `/v1/tail?follow=1` streams; a follower that falls behind catches up
//! from the store by cursor, so it misses nothing.

mod events;
mod ingest;
mod params;
mod series;
mod tail;

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    extract::{Request, State},
    http::{
        HeaderValue, StatusCode,
        header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE},
    },
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use subtle::ConstantTimeEq as _;
use tokio::sync::{broadcast, watch};

use super::store::{Store, StoreError, Stored};

/// Committed batches buffered for live tails before a slow one must catch
/// up from the store.
const LIVE_CAPACITY: usize = 1024;

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
    writer: Mutex<std::sync::mpsc::Sender<ingest::Pending>>,
    shutdown: watch::Receiver<bool>,
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
            .spawn(move || ingest::writer_thread(s, l, queue))
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
        .route("/v1/ingest", post(ingest::ingest))
        .route("/v1/events", get(events::events))
        .route("/v1/grep", get(events::grep))
        .route("/v1/tail", get(tail::tail))
        .route("/v1/offsets", get(events::offsets))
        .route("/v1/series", get(series::series))
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

pub(super) fn error(status: StatusCode, msg: impl std::fmt::Display) -> ApiError {
    ApiError {
        status,
        msg: msg.to_string(),
    }
}

pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
    log::error!("{e}");
    error(StatusCode::INTERNAL_SERVER_ERROR, e)
}

/// Runs a blocking store call on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
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
