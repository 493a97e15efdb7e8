//! GET /v1/series: the bucketed series the web UI's graphs draw
//! (docs/ui.md), behind the token like every data route.

use std::sync::Arc;

use axum::{
    extract::{Query as QueryParams, State, rejection::QueryRejection},
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::AppState;
use crate::aggregator::{series::SeriesQuery, timespec::parse_time_at};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesParams {
    since: Option<String>,
    until: Option<String>,
    step: Option<String>,
    host: Option<String>,
}

/// Buckets when `step` is absent.
const AUTO_BUCKETS: i64 = 120;

fn bad(msg: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "error": msg.to_string() }).to_string() + "\n";
    (
        StatusCode::BAD_REQUEST,
        [(CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

impl SeriesParams {
    /// `since` defaults to 5 minutes ago, `until` to now; `step` is a
    /// duration (`1s`, `500ms`) or ns, else about 120 buckets.
    fn query(&self) -> Result<SeriesQuery, String> {
        let now = std::time::SystemTime::now();
        let time = |name: &str, v: &Option<String>, default: &str| {
            parse_time_at(v.as_deref().unwrap_or(default), now).map_err(|e| format!("{name}: {e}"))
        };
        let since = time("since", &self.since, "5m")?;
        let until = time("until", &self.until, "now")?;
        let step = match self.step.as_deref().map(str::trim) {
            None | Some("") => SeriesQuery::auto_step(since, until, AUTO_BUCKETS),
            Some(s) if s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse::<i64>()
                .map_err(|_| format!("step: {s:?} is too large"))?,
            Some(s) => humantime::parse_duration(s)
                .ok()
                .and_then(|d| i64::try_from(d.as_nanos()).ok())
                .ok_or_else(|| format!("step: {s:?} is not a duration (1s, 500ms) or ns"))?,
        };
        let hosts = self
            .host
            .as_deref()
            .map(|h| {
                h.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        SeriesQuery::new(since, until, step, hosts)
    }
}

/// GET /v1/series?since=&until=&step=&host=: `series::Series` as JSON.
pub async fn series(
    State(st): State<Arc<AppState>>,
    params: Result<QueryParams<SeriesParams>, QueryRejection>,
) -> Response {
    let q = match params.map_err(|e| e.body_text()).and_then(|p| p.0.query()) {
        Ok(q) => q,
        Err(e) => return bad(e),
    };
    let store = st.store.clone();
    match tokio::task::spawn_blocking(move || store.series(&q)).await {
        Ok(Ok(s)) => (
            [(CONTENT_TYPE, "application/json")],
            serde_json::to_string(&s).unwrap_or_default(),
        )
            .into_response(),
        Ok(Err(e)) => {
            log::error!("series: {e}");
            let body = serde_json::json!({ "error": e.to_string() }).to_string() + "\n";
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Err(e) => {
            log::error!("series task failed: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_params() {
        let p = SeriesParams {
            since: Some("1000000000".into()),
            until: Some("3000000000".into()),
            step: Some("500ms".into()),
            host: Some("h1, h2".into()),
        };
        let q = p.query().unwrap();
        assert_eq!(
            (q.since, q.until, q.step),
            (1_000_000_000, 3_000_000_000, 500_000_000)
        );
        assert_eq!(q.hosts, vec!["h1".to_string(), "h2".to_string()]);
        let q = SeriesParams { step: None, ..p };
        assert_eq!(q.query().unwrap().step, 17_000_000);
        let bad = SeriesParams {
            since: Some("0".into()),
            until: Some("1000000000000".into()),
            step: Some("1ms".into()),
            host: None,
        };
        assert!(bad.query().unwrap_err().contains("buckets"));
    }
}
