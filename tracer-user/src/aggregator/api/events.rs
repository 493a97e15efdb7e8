//! GET /v1/events and /v1/grep (JSON Lines by corrected time, streamed a
//! store page at a time; a grep count), and GET /v1/offsets.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Query as QueryParams, State, rejection::QueryRejection},
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::stream;

use super::{
    ApiError, AppState, blocking, error,
    params::{Params, flag},
};
use crate::aggregator::store::{Filter, Position, Query, Store, Stored};

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
    /// Rows per store query (`Store::page_rows`).
    page: usize,
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
    let page = store.page_rows();
    let query = Query {
        filter,
        limit: page.min(remaining),
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
        page,
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
        p.query.limit = p.page.min(p.remaining.max(1));
        Some((Ok(json_lines(&rows)), p))
    });
    Ok((
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// GET /v1/events: JSON Lines, by corrected time.
pub(super) async fn events(
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
pub(super) async fn grep(
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
    let Some(text) = p.text()? else {
        return Err(error(StatusCode::BAD_REQUEST, "re= (a regex) is required"));
    };
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

/// GET /v1/offsets: every host's clock correction (docs/aggregator.md,
/// "Stitching"), as `{"offsets": [{"host", "offset_ns", "pairs",
/// "reference", "updated_ns"}, ...]}` sorted by host.
pub(super) async fn offsets(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let store = st.store.clone();
    let rows = blocking(move || store.offsets()).await?;
    let body = serde_json::json!({ "offsets": rows }).to_string() + "\n";
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}
