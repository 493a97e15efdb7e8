//! The web UI (docs/ui.md): static assets embedded in the binary, served
//! without a token (they hold no data). The data its graphs draw is
//! `GET /v1/series` (`super::api`, behind the token like every data route).
//!
//! The page asks for the token (or takes it from `#token=` in the URL) and
//! sends it as `Authorization: Bearer` on every API call, the live tail
//! included (a streamed `fetch`, not `EventSource`, which cannot set
//! headers). No cookie is set, so there is nothing for another site to
//! ride on (no CSRF), and the Content-Security-Policy allows scripts from
//! this origin only, so even a mistake that put captured text into HTML
//! would not run it.

use axum::{
    Router,
    http::{
        HeaderName, HeaderValue,
        header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS},
    },
    response::{IntoResponse, Response},
    routing::get,
};

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
        "/ui/control.js",
        JS,
        include_str!("../../assets/ui/control.js"),
    ),
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
}
