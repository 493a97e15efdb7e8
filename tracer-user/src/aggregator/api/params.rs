//! Query parameters shared by /v1/events, /v1/grep and /v1/tail.

use axum::extract::{Query as QueryParams, rejection::QueryRejection};
use axum::http::StatusCode;
use serde::Deserialize;

use super::{ApiError, error};
use crate::aggregator::{
    store::{EventKind, Filter, KINDS, TextMatch, parse_stream},
    timespec::parse_time,
};

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

pub(super) fn flag(v: Option<&str>) -> Result<bool, ApiError> {
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
pub(super) struct Params {
    pub(super) since: Option<String>,
    pub(super) until: Option<String>,
    pub(super) host: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) trace: Option<String>,
    pub(super) stream: Option<String>,
    pub(super) limit: Option<usize>,
    pub(super) re: Option<String>,
    pub(super) i: Option<String>,
    pub(super) count: Option<String>,
    pub(super) follow: Option<String>,
    pub(super) n: Option<usize>,
}

impl Params {
    pub(super) fn from(p: Result<QueryParams<Params>, QueryRejection>) -> Result<Self, ApiError> {
        p.map(|QueryParams(p)| p)
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))
    }

    pub(super) fn filter(&self) -> Result<Filter, ApiError> {
        let time = |name: &str, v: &Option<String>| {
            v.as_deref()
                .map(parse_time)
                .transpose()
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("{name}: {e}")))
        };
        let kinds = list(self.kind.as_deref())
            .iter()
            .map(|k| {
                EventKind::parse(k).ok_or_else(|| {
                    error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown kind {k:?} (kinds: {})", KINDS.join(", ")),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stream = self
            .stream
            .as_deref()
            .map(|s| {
                parse_stream(s).ok_or_else(|| {
                    error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown stream {s:?} (streams: stdout, stderr, file)"),
                    )
                })
            })
            .transpose()?;
        Ok(Filter {
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            hosts: list(self.host.as_deref()),
            kinds,
            trace: self.trace.clone().filter(|t| !t.is_empty()),
            stream,
            text: None,
        })
    }

    /// `re` (a regex over an event's text) and `i` (case-insensitive),
    /// checked: a bad regex is a 400 that says why.
    pub(super) fn text(&self) -> Result<Option<TextMatch>, ApiError> {
        let Some(pattern) = self.re.clone() else {
            return Ok(None);
        };
        let text = TextMatch {
            pattern,
            case_insensitive: flag(self.i.as_deref())?,
        };
        text.compile()
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid regex: {e}")))?;
        Ok(Some(text))
    }

    pub(super) fn reject(&self, what: &[(&str, bool)], route: &str) -> Result<(), ApiError> {
        match what.iter().find(|(_, present)| *present) {
            Some((name, _)) => Err(error(
                StatusCode::BAD_REQUEST,
                format!("{route} takes no {name}= parameter"),
            )),
            None => Ok(()),
        }
    }
}
