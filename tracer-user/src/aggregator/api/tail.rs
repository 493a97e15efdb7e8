//! GET /v1/tail: Server-Sent Events, the last `n` events then, with
//! `follow=1`, every new one as its batch commits.

use std::{convert::Infallible, sync::Arc};

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
use crate::aggregator::store::{EventId, Filter, Query, StoreError, Stored, TailMark, TailPage};

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
            ("count", p.count.is_some()),
            ("limit", p.limit.is_some()),
        ],
        "/v1/tail",
    )?;
    let follow = flag(p.follow.as_deref())?;
    // `re` (and `i`): a live grep, the events whose text matches.
    let filter = Filter {
        text: p.text()?,
        ..p.filter()?
    };
    let n = p.n.unwrap_or(10).min(MAX_TAIL_LINES);
    // Subscribe before the snapshot: whatever commits after it is in the
    // channel, and ids at or below the snapshot's cursor are skipped.
    let polled = st.store.polled_by_tails();
    let live = (follow && polled.is_none()).then(|| st.live.subscribe());
    let (store, f) = (st.store.clone(), filter.clone());
    let (mark, mut rows) = blocking(move || {
        // A polling follower goes on from the commits its snapshot saw:
        // what becomes visible after it, older ids included, is shown.
        let mark = match polled {
            Some(_) if follow => store.tail_mark()?,
            _ => TailMark {
                upto: store.cursor()?,
                ..TailMark::default()
            },
        };
        let rows = store.query(&Query {
            filter: f.clone(),
            as_of: Some(mark.upto),
            newest_first: true,
            limit: n,
            ..Query::default()
        })?;
        Ok((mark, rows))
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
            tokio::spawn(follow_live(st.clone(), live, filter, mark.upto, tx));
        }
        (None, Some(every)) if follow => {
            tokio::spawn(follow_polled(st.clone(), filter, mark, every, tx));
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
/// every `every`, reads the commits made since the last poll
/// (`Store::poll_tail`), an event ingested through another aggregator or
/// committed late included, each once.
async fn follow_polled(
    st: Arc<AppState>,
    filter: Filter,
    mut mark: TailMark,
    every: std::time::Duration,
    tx: mpsc::Sender<sse::Event>,
) {
    let mut shutdown = st.shutdown.clone();
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(every) => {}
        }
        // Page by page, the next read while this one is sent, and no
        // further: a backlog of millions (a tail following a bulk load)
        // is neither held in memory nor read on after the client left or
        // the server began to stop.
        let mut next = Some(poll(&st, &filter, mark.clone()));
        while let Some(reading) = next.take() {
            let page = match reading.await {
                Ok(Ok((page, m))) => {
                    mark = m;
                    page
                }
                Ok(Err(e)) => {
                    report(&tx, e.to_string()).await;
                    return;
                }
                Err(e) => {
                    report(&tx, e.to_string()).await;
                    return;
                }
            };
            if tx.is_closed() || *shutdown.borrow() {
                return;
            }
            if page.more {
                next = Some(poll(&st, &filter, mark.clone()));
            }
            for s in &page.events {
                if tx.send(sse_event(s)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One `Store::poll_tail` from `mark`, off the async workers: the page
/// and the mark after it.
fn poll(
    st: &AppState,
    filter: &Filter,
    mut mark: TailMark,
) -> tokio::task::JoinHandle<Result<(TailPage, TailMark), StoreError>> {
    let (store, f) = (st.store.clone(), filter.clone());
    tokio::task::spawn_blocking(move || store.poll_tail(&mut mark, &f, PAGE).map(|p| (p, mark)))
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
    // Checked when the tail began (`Params::text`).
    let re = filter.text.as_ref().and_then(|t| t.compile().ok());
    loop {
        let msg = tokio::select! {
            _ = tx.closed() => return,
            _ = shutdown.wait_for(|stop| *stop) => return,
            msg = live.recv() => msg,
        };
        match msg {
            Ok(batch) => {
                for s in batch.iter() {
                    if s.id > last && filter.matches(&s.event, re.as_ref()) {
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
