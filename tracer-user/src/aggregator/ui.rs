//! The web UI (docs/ui.md): static assets embedded in the binary, served
//! without a token (they hold no data), and `GET /v1/series`, the bucketed
//! series its graphs draw (behind the token like every data route).
//!
//! The page asks for the token (or takes it from `#token=` in the URL) and
//! sends it as `Authorization: Bearer` on every API call, the live tail
//! included (a streamed `fetch`, not `EventSource`, which cannot set
//! headers). No cookie is set, so there is nothing for another site to
//! ride on (no CSRF), and the Content-Security-Policy allows scripts from
//! this origin only, so even a mistake that put captured text into HTML
//! would not run it.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Query as QueryParams, State, rejection::QueryRejection},
    http::{
        HeaderName, HeaderValue, StatusCode,
        header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS},
    },
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

use super::{series::SeriesQuery, server::AppState, timespec::parse_time_at};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// (path, content type, body). Our own files are plain modules, no build
/// step; `vendor/` is uPlot as published (see its README.md).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../assets/ui/index.html"),
    ),
    (
        "/ui/style.css",
        CSS,
        include_str!("../../assets/ui/style.css"),
    ),
    ("/ui/util.js", JS, include_str!("../../assets/ui/util.js")),
    ("/ui/api.js", JS, include_str!("../../assets/ui/api.js")),
    (
        "/ui/timeline.js",
        JS,
        include_str!("../../assets/ui/timeline.js"),
    ),
    ("/ui/trace.js", JS, include_str!("../../assets/ui/trace.js")),
    (
        "/ui/search.js",
        JS,
        include_str!("../../assets/ui/search.js"),
    ),
    ("/ui/tail.js", JS, include_str!("../../assets/ui/tail.js")),
    (
        "/ui/graphs.js",
        JS,
        include_str!("../../assets/ui/graphs.js"),
    ),
    ("/ui/app.js", JS, include_str!("../../assets/ui/app.js")),
    (
        "/ui/vendor/uPlot.iife.min.js",
        JS,
        include_str!("../../assets/ui/vendor/uPlot.iife.min.js"),
    ),
    (
        "/ui/vendor/uPlot.min.css",
        CSS,
        include_str!("../../assets/ui/vendor/uPlot.min.css"),
    ),
];

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The page and its assets, open to anyone who can reach the port.
pub fn assets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS
        .iter()
        .fold(Router::new(), |r, &(path, content_type, body)| {
            r.route(path, get(move || async move { asset(content_type, body) }))
        })
}

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

    /// Every `/ui/...` path the page and its modules refer to is served,
    /// and nothing is loaded from elsewhere (no CDN: the UI works offline).
    #[test]
    fn every_referenced_asset_is_embedded() {
        let served: Vec<&str> = ASSETS.iter().map(|a| a.0).collect();
        let re = regex::Regex::new(r#"(?:src|href)="([^"]+)"|from '\./([^']+)'"#).unwrap();
        let mut checked = 0;
        for &(path, _, body) in ASSETS.iter().filter(|a| !a.0.contains("/vendor/")) {
            assert!(!body.is_empty(), "{path} is empty");
            for sink in [
                ".innerHTML",
                ".outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                assert!(
                    !body.contains(sink),
                    "{path} uses {sink}: captured text must stay text"
                );
            }
            for c in re.captures_iter(body) {
                let target = match (c.get(1), c.get(2)) {
                    (Some(href), _) if href.as_str().starts_with("data:") => continue,
                    (Some(href), _) => href.as_str().to_string(),
                    (None, Some(module)) => format!("/ui/{}", module.as_str()),
                    _ => continue,
                };
                assert!(
                    served.contains(&target.as_str()),
                    "{path} refers to {target}, which is not served"
                );
                checked += 1;
            }
        }
        assert!(checked >= 12, "only {checked} references found");
    }

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
