//! POST /v1/ingest: a body decoded on the blocking pool, then stored by
//! the one writer thread with whatever else is waiting (group commit:
//! `Store::ingest_many`), answered only once its group is durable.

use std::{
    borrow::Cow,
    sync::{Arc, PoisonError},
};

use axum::{
    body::Body,
    extract::State,
    http::{
        HeaderMap, HeaderValue, StatusCode,
        header::{CONTENT_ENCODING, CONTENT_TYPE},
    },
    response::{IntoResponse, Response},
};
use tokio::sync::{broadcast, oneshot};

use super::{ApiError, AppState, Limits, error, internal};
use crate::aggregator::{
    body::{BodyError, read_limited, zstd_decompress},
    store::{Batch, Store, StoreError, Stored},
};

/// A decoded batch and where its answer goes.
pub(super) type Pending = (Batch, oneshot::Sender<Result<Ingested, String>>);

/// The writer's answer to one batch.
pub(super) struct Ingested {
    accepted: usize,
    duplicate: bool,
    /// The stored events when no live tail was there to take them: freed
    /// by the request's task rather than by the one writer thread (2000
    /// events are ~4% of the writer's time).
    unpublished: Vec<Stored>,
}

/// The one thread that writes: it takes every batch waiting, stores them
/// together (`Store::ingest_many`: one transaction, one fsync), publishes
/// what was stored to live tails in commit order, then answers each
/// batch. Ends when the state (and so every sender) is gone.
pub(super) fn writer_thread(
    store: Arc<dyn Store>,
    live: broadcast::Sender<Arc<Vec<Stored>>>,
    queue: std::sync::mpsc::Receiver<Pending>,
) {
    // Most events committed in one group (`Store::max_group_events`).
    let group_events = store.max_group_events();
    while let Ok(first) = queue.recv() {
        let mut events = first.0.events.len();
        let mut group = vec![first];
        while events < group_events {
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
    let batch: Batch = crate::aggregator::batch_json::parse_batch(&json)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed batch: {e}")))?;
    batch
        .validate()
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid batch: {e}")))?;
    Ok(batch)
}

/// Stores a batch made by the aggregator itself (audit events) through
/// the writer thread, like an agent's; returns once it is committed.
pub(super) async fn store_batch(st: &AppState, batch: Batch) -> Result<(), ApiError> {
    let (tx, rx) = oneshot::channel();
    st.writer
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((batch, tx))
        .map_err(|_| internal("the ingest writer stopped"))?;
    match rx.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(internal(e)),
        Err(_) => Err(internal("the ingest writer stopped")),
    }
}

/// POST /v1/ingest: answered 200 only once the batch is committed.
pub(super) async fn ingest(
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
            st.control.saw_ingest(&batch.host);
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
