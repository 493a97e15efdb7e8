//! GET /v1/tail: Server-Sent Events, the last `n` events then, with
//! `follow=1`, every new one as its batch commits.

use std::{collections::BTreeSet, convert::Infallible, sync::Arc};

use axum::{
    extract::{Query as QueryParams, State, rejection::QueryRejection},
    response::{
        IntoResponse, Response,
        sse::{self, KeepAlive, Sse},
    },
};
use futures_util::{StreamExt as _, stream};
use tokio::sync::{broadcast, mpsc};

use super::{
    ApiError, AppState, blocking,
    params::{Params, flag},
};
use crate::aggregator::store::{EventId, Filter, Query, Stored};

/// Most events `tail` shows before following.
const MAX_TAIL_LINES: usize = 100_000;
/// Events per read while following or catching up. On ClickHouse a read
/// costs about the same for 1,000 events as for 10,000 (the granules of
/// the new batches' times, `clickhouse/tail.rs`), and with 1,000 a tail
/// read 25k events a second: far behind a firehose of 300k.
const PAGE: usize = 10_000;

fn sse_event(s: &Stored) -> sse::Event {
    let data = serde_json::to_string(&s.event).unwrap_or_default();
    sse::Event::default().id(s.id.to_string()).data(data)
}

/// GET /v1/tail: Server-Sent Events. The last `n` events (default 10), by
/// corrected time; with `follow=1`, then every new matching event as it is
/// committed, in commit order.
pub(super) async fn tail(
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
    let polled = st.store.polled_by_tails();
    let live = (follow && polled.is_none()).then(|| st.live.subscribe());
    let (store, f) = (st.store.clone(), filter.clone());
    let (cursor, mut rows, seen) = blocking(move || {
        let cursor = store.cursor()?;
        let rows = store.query(&Query {
            filter: f.clone(),
            as_of: Some(cursor),
            newest_first: true,
            limit: n,
            ..Query::default()
        })?;
        // A polling follower shows what becomes visible after the
        // snapshot, older ids included, and nothing the snapshot saw.
        let seen = match (follow, polled) {
            (true, Some(_)) => store.ids_between(store.rewind(cursor), cursor, &f)?,
            _ => BTreeSet::new(),
        };
        Ok((cursor, rows, seen))
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
    let (tx, rx) = mpsc::channel(256);
    match (live, polled) {
        (Some(live), _) => {
            tokio::spawn(follow_live(st.clone(), live, filter, cursor, tx));
        }
        (None, Some(every)) if follow => {
            tokio::spawn(follow_polled(st.clone(), filter, cursor, seen, every, tx));
        }
        _ => return Ok(Sse::new(snapshot).into_response()),
    }
    let rest = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(snapshot.chain(rest))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Follows a store other aggregators write to (`Store::polled_by_tails`):
/// every `every`, reads what is visible from a little before the newest
/// event seen (`Store::rewind`) and sends what was not sent yet, so an
/// event ingested through another aggregator, or committed late, is
/// shown once.
async fn follow_polled(
    st: Arc<AppState>,
    filter: Filter,
    cursor: EventId,
    mut seen: BTreeSet<EventId>,
    every: std::time::Duration,
    tx: mpsc::Sender<sse::Event>,
) {
    let mut shutdown = st.shutdown.clone();
    // From the snapshot's cursor: when nothing was committed in the
    // rewind before it, `seen` is empty, and starting from the first id
    // would send the whole store.
    let mut high = seen.last().copied().unwrap_or(cursor).max(cursor);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(every) => {}
        }
        // Page by page, each sent before the next is read: a backlog of
        // millions (a tail following a bulk load) is neither held in
        // memory nor read on after the client left or the server began
        // to stop.
        let mut after = match late_start(&st, &filter, high, &seen).await {
            Ok(after) => after,
            Err(e) => {
                report(&tx, e).await;
                return;
            }
        };
        loop {
            if tx.is_closed() || *shutdown.borrow() {
                return;
            }
            let (store, f) = (st.store.clone(), filter.clone());
            let page = match tokio::task::spawn_blocking(move || {
                store.since_cursor(after, &f, PAGE)
            })
            .await
            {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => {
                    report(&tx, e.to_string()).await;
                    return;
                }
                Err(e) => {
                    report(&tx, e.to_string()).await;
                    return;
                }
            };
            let done = page.len() < PAGE;
            for s in &page {
                if seen.insert(s.id) && tx.send(sse_event(s)).await.is_err() {
                    return;
                }
                high = high.max(s.id);
                after = s.id;
            }
            // Ids below the next read's start are never read again.
            seen = seen.split_off(&st.store.rewind(high));
            if done {
                break;
            }
        }
    }
}

/// Where a poll reads from: just before the first event matching
/// `filter` that became visible behind `high` (ids up to `Store::rewind`
/// before it) since it was read, a late commit; `high` when none did. The
/// ids alone are read for that: re-reading the whole rewind as events, each
/// poll, would read 2 s of a firehose (600k events at 300k a second) to
/// find none.
async fn late_start(
    st: &AppState,
    filter: &Filter,
    high: EventId,
    seen: &BTreeSet<EventId>,
) -> Result<EventId, String> {
    let from = st.store.rewind(high);
    if from == high {
        return Ok(high);
    }
    let (store, f) = (st.store.clone(), filter.clone());
    let ids = tokio::task::spawn_blocking(move || store.ids_between(from, high, &f))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(ids
        .difference(seen)
        .next()
        .map_or(high, |late| EventId::from_raw(late.raw() - 1)))
}

/// Sends every committed event matching `filter` with id > `last` to `tx`
/// until the client goes away or the server shuts down.
async fn follow_live(
    st: Arc<AppState>,
    mut live: broadcast::Receiver<Arc<Vec<Stored>>>,
    filter: Filter,
    mut last: EventId,
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
    last: &mut EventId,
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
