//! The command channel (docs/logpoints.md, "Across the cluster";
//! endpoints in docs/aggregator.md):
//!
//! - `GET /v1/control/poll?host=H` (ingest token): an agent started with
//!   `--allow-control` waits here for commands; answered as soon as one is
//!   queued for H, else after [`POLL_HOLD`] with none (and asked again).
//! - `POST /v1/control/results` (ingest token): the agent's per-process
//!   results of one command.
//! - `POST /v1/control/commands` (admin token): run a command on the
//!   selected hosts; answered with every host's results, or a named
//!   timeout for a host that did not answer.
//! - `GET /v1/control/hosts` (admin token): which hosts take commands.
//!
//! The aggregator never connects to an agent: agents may be behind NAT,
//! and an outbound long poll needs nothing but the ingest route they
//! already use. A host takes commands while its agent polls; a host known
//! only from its events is reported as "control not allowed". Every
//! command is stored as `audit` events (before it is sent: `requested`,
//! with its results: `done`; a refused one: `refused`) under each host it
//! names.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Query, Request, State},
    http::{
        HeaderValue, StatusCode,
        header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE},
    },
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use tokio::sync::{Notify, oneshot};

use super::{ApiError, AppState, error, internal};
use crate::{
    aggregator::{body::read_limited, store::Batch},
    control::{AdminToken, Answer, Command, HostResult, OPS, Skipped, Submit},
    event::{AuditRecord, Event, EventData},
};

/// Longest a poll is held open without a command.
pub const POLL_HOLD: Duration = Duration::from_secs(25);
/// A host whose agent polled this recently still takes commands (between
/// two polls it is not waiting).
const POLL_GRACE: Duration = Duration::from_secs(40);
/// Default and longest wait for the hosts' answers.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Largest command or result body.
const MAX_BODY: u64 = 4 << 20;

/// The admin who sent a request (set by [`admin_auth`]).
#[derive(Clone)]
struct Who(String);

#[derive(Default)]
struct HostState {
    queue: VecDeque<Command>,
    notify: Arc<Notify>,
    /// Polls open now.
    polling: usize,
    last_poll: Option<Instant>,
    last_ingest: Option<Instant>,
}

impl HostState {
    fn takes_commands(&self) -> bool {
        self.polling > 0 || self.last_poll.is_some_and(|t| t.elapsed() < POLL_GRACE)
    }
}

/// Which hosts take commands, their queues, and who waits for results.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    hosts: HashMap<String, HostState>,
    /// command id -> host -> where its result goes.
    waiting: HashMap<String, HashMap<String, oneshot::Sender<HostResult>>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ingest saw a batch from `host`.
    pub fn saw_ingest(&self, host: &str) {
        let mut inner = self.lock();
        match inner.hosts.get_mut(host) {
            Some(h) => h.last_ingest = Some(Instant::now()),
            None => {
                inner.hosts.insert(
                    host.to_owned(),
                    HostState {
                        last_ingest: Some(Instant::now()),
                        ..HostState::default()
                    },
                );
            }
        }
    }

    /// Why `host` cannot take a command now, if it cannot.
    fn refusal(&self, host: &str) -> Option<String> {
        match self.lock().hosts.get(host) {
            Some(h) if h.takes_commands() => None,
            Some(h) if h.last_poll.is_some() => Some(format!(
                "host {host}: its agent stopped polling for commands {}s ago (is it running?)",
                h.last_poll.map_or(0, |t| t.elapsed().as_secs())
            )),
            Some(_) => Some(format!(
                "host {host}: control not allowed: its agent runs without --allow-control \
                 (its events arrive, but it takes no commands)"
            )),
            None => Some(format!(
                "host {host}: unknown: no agent has sent events or polled for commands as {host}"
            )),
        }
    }

    /// The hosts that take commands now, and the others with why not.
    fn controlled_hosts(&self) -> (Vec<String>, Vec<Skipped>) {
        let mut names: Vec<String> = self.lock().hosts.keys().cloned().collect();
        names.sort();
        let mut take = Vec::new();
        let mut skipped = Vec::new();
        for host in names {
            match self.refusal(&host) {
                None => take.push(host),
                Some(reason) => skipped.push(Skipped { host, reason }),
            }
        }
        (take, skipped)
    }
}

/// Decrements a host's open polls when the poll ends (answered or dropped).
struct Polling<'a> {
    hub: &'a Hub,
    host: String,
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        if let Some(h) = inner.hosts.get_mut(&self.host) {
            h.polling = h.polling.saturating_sub(1);
            h.last_poll = Some(Instant::now());
        }
    }
}

fn json_response(status: StatusCode, v: &impl Serialize) -> Response {
    let body = serde_json::to_string(v).unwrap_or_default() + "\n";
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

fn control_enabled(st: &AppState) -> Result<&[AdminToken], ApiError> {
    st.admin.as_deref().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the control API is disabled on this aggregator: start it with --admin-token-file \
             FILE (docs/logpoints.md)",
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PollParams {
    host: String,
}

/// GET /v1/control/poll?host=H: the commands queued for H, waiting up to
/// [`POLL_HOLD`] for one.
pub(super) async fn poll(
    State(st): State<Arc<AppState>>,
    params: Result<Query<PollParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    control_enabled(&st)?;
    let Query(PollParams { host }) =
        params.map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))?;
    if host.is_empty() || host.len() > crate::aggregator::store::MAX_HOST_LEN {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "host must be 1 to 255 bytes",
        ));
    }
    let notify = {
        let mut inner = st.control.lock();
        let h = inner.hosts.entry(host.clone()).or_default();
        h.polling += 1;
        h.last_poll = Some(Instant::now());
        h.notify.clone()
    };
    let _polling = Polling {
        hub: &st.control,
        host: host.clone(),
    };
    let deadline = tokio::time::Instant::now() + POLL_HOLD;
    let mut shutdown = st.shutdown.clone();
    loop {
        let commands: Vec<Command> = {
            let mut inner = st.control.lock();
            let h = inner.hosts.entry(host.clone()).or_default();
            h.queue.drain(..).collect()
        };
        if !commands.is_empty() {
            return Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "commands": commands }),
            ));
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep_until(deadline) => break,
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "commands": [] }),
    ))
}

/// POST /v1/control/results: one host's results of one command.
pub(super) async fn results(
    State(st): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    control_enabled(&st)?;
    let raw = read_limited(body, MAX_BODY)
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let r: HostResult = serde_json::from_slice(&raw)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed result: {e}")))?;
    let waiter = {
        let mut inner = st.control.lock();
        inner
            .waiting
            .get_mut(&r.id)
            .and_then(|hosts| hosts.remove(&r.host))
    };
    match waiter {
        // The submitter may have given up (timeout); the result is logged.
        Some(tx) => {
            let _ = tx.send(r);
        }
        None => log::info!(
            "control: a result of {} from {} came after its command ended",
            r.id,
            r.host
        ),
    }
    Ok(json_response(StatusCode::OK, &serde_json::json!({})))
}

#[derive(Serialize)]
struct HostInfo {
    host: String,
    control: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
    last_poll_s: Option<u64>,
    last_events_s: Option<u64>,
}

/// GET /v1/control/hosts: every host seen, and whether it takes commands.
pub(super) async fn hosts(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    control_enabled(&st)?;
    let names: Vec<String> = st.control.lock().hosts.keys().cloned().collect();
    let mut out: Vec<HostInfo> = names
        .into_iter()
        .map(|host| {
            let refusal = st.control.refusal(&host);
            let inner = st.control.lock();
            let h = &inner.hosts[&host];
            HostInfo {
                control: refusal.is_none(),
                refusal,
                last_poll_s: h.last_poll.map(|t| t.elapsed().as_secs()),
                last_events_s: h.last_ingest.map(|t| t.elapsed().as_secs()),
                host,
            }
        })
        .collect();
    out.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "hosts": out }),
    ))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn audit_event(host: &str, record: AuditRecord) -> Event {
    Event {
        ts_ns: now_ns(),
        host: host.to_owned(),
        pid: 0,
        tid: 0,
        comm: "tracer".into(),
        data: EventData::Audit(Box::new(record)),
    }
}

/// Stores audit events (one batch per host) and returns once they are
/// committed: a command whose intent cannot be recorded is not sent.
async fn store_audit(st: &AppState, events: Vec<Event>) -> Result<(), ApiError> {
    let mut by_host: Vec<(String, Vec<Event>)> = Vec::new();
    for e in events {
        match by_host.iter_mut().find(|(h, _)| *h == e.host) {
            Some((_, v)) => v.push(e),
            None => by_host.push((e.host.clone(), vec![e])),
        }
    }
    for (host, events) in by_host {
        let batch = Batch {
            host,
            run_id: st.audit_run_id.clone(),
            seq: st
                .audit_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            events,
        };
        super::ingest::store_batch(st, batch)
            .await
            .map_err(|e| internal(format!("recording the audit event: {}", e.msg)))?;
    }
    Ok(())
}

/// POST /v1/control/commands: runs a command on the selected hosts and
/// answers with their results.
pub(super) async fn commands(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = req
        .extensions()
        .get::<Who>()
        .map(|w| w.0.clone())
        .unwrap_or_default();
    let raw = read_limited(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let submit: Submit = serde_json::from_slice(&raw)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed command: {e}")))?;
    if !OPS.contains(&submit.op.as_str()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("unknown op {:?} (ops: {})", submit.op, OPS.join(", ")),
        ));
    }
    if let Some(m) = &submit.match_cmdline {
        regex::Regex::new(m).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("match is not a valid regular expression: {e}"),
            )
        })?;
    }
    let wait = submit
        .timeout_ms
        .map_or(DEFAULT_WAIT, Duration::from_millis);
    if wait.is_zero() || wait > MAX_WAIT {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "timeout_ms must be more than 0 and at most 300000",
        ));
    }
    let id = format!("cmd-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let record = |phase: &str, processes, error: Option<String>| AuditRecord {
        command: id.clone(),
        phase: phase.into(),
        who: who.clone(),
        op: submit.op.clone(),
        args: submit.args.clone(),
        match_cmdline: submit.match_cmdline.clone(),
        processes,
        error,
    };
    if submit
        .hosts
        .iter()
        .any(|h| h.is_empty() || h.len() > crate::aggregator::store::MAX_HOST_LEN)
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "host names must be 1 to 255 bytes",
        ));
    }
    let mut hosts = submit.hosts.clone();
    hosts.sort();
    hosts.dedup();
    let mut skipped = Vec::new();
    if hosts.is_empty() {
        (hosts, skipped) = st.control.controlled_hosts();
        if hosts.is_empty() {
            return Err(error(
                StatusCode::CONFLICT,
                "no agent takes commands: start agents with --allow-control (and the same \
                 --aggregator)",
            ));
        }
    } else {
        let refused: Vec<(String, String)> = hosts
            .iter()
            .filter_map(|h| st.control.refusal(h).map(|why| (h.clone(), why)))
            .collect();
        if !refused.is_empty() {
            let events = refused
                .iter()
                .map(|(h, why)| audit_event(h, record("refused", Vec::new(), Some(why.clone()))))
                .collect();
            store_audit(&st, events).await?;
            let why: Vec<&str> = refused.iter().map(|(_, w)| w.as_str()).collect();
            return Err(error(
                StatusCode::CONFLICT,
                format!("refused, nothing was run: {}", why.join("; ")),
            ));
        }
    }
    store_audit(
        &st,
        hosts
            .iter()
            .map(|h| audit_event(h, record("requested", Vec::new(), None)))
            .collect(),
    )
    .await?;
    let command = Command {
        id: id.clone(),
        op: submit.op.clone(),
        match_cmdline: submit.match_cmdline.clone(),
        args: submit.args.clone(),
        who: who.clone(),
    };
    let mut answers = Vec::new();
    {
        let mut inner = st.control.lock();
        let mut waiters = HashMap::new();
        for h in &hosts {
            let (tx, rx) = oneshot::channel();
            waiters.insert(h.clone(), tx);
            answers.push((h.clone(), rx));
            let state = inner.hosts.entry(h.clone()).or_default();
            state.queue.push_back(command.clone());
            state.notify.notify_one();
        }
        inner.waiting.insert(id.clone(), waiters);
    }
    log::info!(
        "control: {id} {} by {who} to {}",
        submit.op,
        hosts.join(",")
    );
    let deadline = tokio::time::Instant::now() + wait;
    let mut results = Vec::new();
    let mut shutdown = st.shutdown.clone();
    for (host, rx) in answers {
        let answered = tokio::select! {
            r = tokio::time::timeout_at(deadline, rx) => r.ok().and_then(Result::ok),
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        let r = match answered {
            Some(r) => r,
            None if *st.shutdown.borrow() => HostResult {
                host: host.clone(),
                id: id.clone(),
                processes: Vec::new(),
                error: Some(format!(
                    "the aggregator stopped before host {host} answered (the command may \
                     still run there)"
                )),
            },
            None => HostResult {
                host: host.clone(),
                id: id.clone(),
                processes: Vec::new(),
                error: Some(format!(
                    "no answer from host {host} within {} (its agent may be busy, stuck or \
                     gone; the command may still run there)",
                    humantime::format_duration(wait)
                )),
            },
        };
        results.push(r);
    }
    {
        let mut inner = st.control.lock();
        inner.waiting.remove(&id);
        // A host that never took the command must not get it later.
        for h in &hosts {
            if let Some(state) = inner.hosts.get_mut(h) {
                state.queue.retain(|c| c.id != id);
            }
        }
    }
    store_audit(
        &st,
        results
            .iter()
            .map(|r| {
                audit_event(
                    &r.host,
                    record("done", r.processes.clone(), r.error.clone()),
                )
            })
            .collect(),
    )
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &Answer {
            id,
            who,
            hosts: results,
            skipped,
        },
    ))
}

/// The control routes take an admin token (`--admin-token-file`), never
/// the ingest token: that one is on every agent's disk.
pub(super) async fn admin_auth(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let admins = match control_enabled(&st) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::to_vec);
    let admin = given.as_ref().and_then(|t| {
        admins
            .iter()
            .find(|a| bool::from(t.as_slice().ct_eq(a.token.as_bytes())))
    });
    if let Some(a) = admin {
        req.extensions_mut().insert(Who(a.who()));
        return next.run(req).await;
    }
    let ingest = given
        .as_ref()
        .is_some_and(|t| bool::from(t.as_slice().ct_eq(&st.token)));
    log::info!(
        "{} {}: {} admin token",
        req.method(),
        req.uri().path(),
        if ingest {
            "the ingest token as"
        } else {
            "no or a wrong"
        }
    );
    let mut resp = if ingest {
        error(
            StatusCode::FORBIDDEN,
            "this is the control API: it takes an admin token (the aggregator's \
             --admin-token-file), not the ingest token",
        )
        .into_response()
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer <a token of the aggregator's \
             --admin-token-file>)",
        )
        .into_response()
    };
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_host_and_why() {
        let hub = Hub::default();
        assert_eq!(
            hub.refusal("h9").unwrap(),
            "host h9: unknown: no agent has sent events or polled for commands as h9"
        );
        hub.saw_ingest("h3");
        assert!(hub.refusal("h3").unwrap().contains("control not allowed"));
        {
            let mut inner = hub.lock();
            let h = inner.hosts.entry("h1".into()).or_default();
            h.polling = 1;
            let h = inner.hosts.entry("h2".into()).or_default();
            h.last_poll = Some(Instant::now() - POLL_GRACE - Duration::from_secs(1));
        }
        assert_eq!(hub.refusal("h1"), None);
        assert!(
            hub.refusal("h2")
                .unwrap()
                .starts_with("host h2: its agent stopped polling for commands 41s ago")
        );
        let (take, skipped) = hub.controlled_hosts();
        assert_eq!(take, ["h1"]);
        let names: Vec<&str> = skipped.iter().map(|s| s.host.as_str()).collect();
        assert_eq!(names, ["h2", "h3"]);
    }
}
