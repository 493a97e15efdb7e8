//! POST /v1/ingest: a body decoded on the blocking pool, then stored by
//! the one writer thread with whatever else is waiting, and on ClickHouse
//! what comes within a few milliseconds more (group commit:
//! `Store::ingest_many`, `Store::group_wait`), answered only once its
//! group is durable.

use std::{
    borrow::Cow,
    sync::{Arc, PoisonError, mpsc::Receiver},
    time::Instant,
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
    store::{Batch, GroupWait, Store, StoreError, Stored},
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

/// The one thread that writes: it takes every batch waiting (and those
/// that come within the store's [`GroupWait`]), stores them
/// together (`Store::ingest_many`: one transaction, one fsync), publishes
/// what was stored to live tails in commit order, then answers each
/// batch. Ends when the state (and so every sender) is gone.
pub(super) fn writer_thread(
    store: Arc<dyn Store>,
    live: broadcast::Sender<Arc<Vec<Stored>>>,
    queue: Receiver<Pending>,
) {
    // Most events committed in one group (`Store::max_group_events`).
    let group_events = store.max_group_events();
    let wait = store.group_wait();
    while let Ok(first) = queue.recv() {
        let group = gather(first, &queue, group_events, wait);
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

/// A group: `first`, then what `queue` holds and what comes within the
/// store's `wait` ([`GroupWait`]), up to `most_events` events.
fn gather<T: Grouped>(
    first: T,
    queue: &Receiver<T>,
    most_events: usize,
    wait: GroupWait,
) -> Vec<T> {
    let started = Instant::now();
    let mut events = first.events();
    let mut group = vec![first];
    while events < most_events {
        let left = wait.most.saturating_sub(started.elapsed());
        let next = if left.is_zero() || wait.quiet.is_zero() {
            queue.try_recv().ok()
        } else {
            queue.recv_timeout(wait.quiet.min(left)).ok()
        };
        let Some(p) = next else { break };
        events += p.events();
        group.push(p);
    }
    group
}

/// What [`gather`] counts in a group.
trait Grouped {
    fn events(&self) -> usize;
}

impl Grouped for Pending {
    fn events(&self) -> usize {
        self.0.events.len()
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

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, thread, time::Duration};

    use super::*;

    /// A pending batch of this many events.
    struct Events(usize);

    impl Grouped for Events {
        fn events(&self) -> usize {
            self.0
        }
    }

    fn wait(quiet_ms: u64, most_ms: u64) -> GroupWait {
        GroupWait {
            quiet: Duration::from_millis(quiet_ms),
            most: Duration::from_millis(most_ms),
        }
    }

    #[test]
    fn without_a_wait_a_group_is_what_is_waiting() {
        let (tx, rx) = mpsc::channel();
        for _ in 0..3 {
            tx.send(Events(2000)).unwrap();
        }
        let started = Instant::now();
        let group = gather(Events(2000), &rx, 131_072, GroupWait::NONE);
        assert_eq!(group.len(), 4);
        // Nothing more waiting: the next group is its first batch alone,
        // at once, though the sender is still there.
        assert_eq!(gather(Events(1), &rx, 131_072, GroupWait::NONE).len(), 1);
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn a_group_takes_the_batches_that_come_within_the_quiet_time() {
        let (tx, rx) = mpsc::channel();
        let sender = thread::spawn(move || {
            for _ in 0..4 {
                thread::sleep(Duration::from_millis(20));
                tx.send(Events(2000)).unwrap();
            }
            // Past the quiet time: the next group's.
            thread::sleep(Duration::from_millis(1500));
            tx.send(Events(7)).unwrap();
        });
        let started = Instant::now();
        let group = gather(Events(2000), &rx, 131_072, wait(400, 10_000));
        assert_eq!(group.len(), 5, "the four sent 20 ms apart join the first");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "closed {:?} after its first batch",
            started.elapsed()
        );
        let next = rx.recv().unwrap();
        assert_eq!(next.0, 7);
        sender.join().unwrap();
    }

    #[test]
    fn a_group_closes_at_most_its_longest_wait_after_its_first_batch() {
        let (tx, rx) = mpsc::channel();
        let sender = thread::spawn(move || {
            // Every 10 ms for 3 s, until the receiver is gone.
            for _ in 0..300 {
                thread::sleep(Duration::from_millis(10));
                if tx.send(Events(1)).is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let group = gather(Events(1), &rx, 131_072, wait(1000, 300));
        let took = started.elapsed();
        drop(rx);
        assert!(group.len() > 1, "{} batches", group.len());
        assert!(group.len() < 300, "{} batches", group.len());
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "closed {took:?} after its first batch"
        );
        sender.join().unwrap();
    }

    #[test]
    fn a_group_stops_at_the_stores_most_events() {
        let (tx, rx) = mpsc::channel();
        for _ in 0..10 {
            tx.send(Events(2000)).unwrap();
        }
        let group = gather(Events(2000), &rx, 8000, wait(1000, 5000));
        assert_eq!(group.len(), 4, "8000 events reached with the fourth batch");
        assert_eq!(rx.try_iter().count(), 7);
    }
}
