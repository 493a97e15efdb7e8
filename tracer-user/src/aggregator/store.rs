//! The aggregator's storage interface. Ingest and the query API only talk to
//! a [`Store`]; the backends (`super::sqlite`, `super::clickhouse`) are
//! folders of their own, and nothing here names one of them: filters are
//! typed ([`EventKind`], [`StreamName`]), positions are opaque
//! ([`EventId`]) and errors say what failed without a backend's types
//! ([`StoreError`]). One conformance suite (`super::conformance`) runs
//! against every backend.
//!
//! Times: every stored event keeps the `ts_ns` it was sent with (`raw`) and
//! gets a corrected time, `raw + host_offset(host)`, applied at ingest with
//! the offset in force when the batch arrived. Filters, ordering and the
//! `ts_ns` of events handed back all use the corrected time.

use std::collections::BTreeMap;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

pub use crate::event::StreamName;
use crate::event::{Event, EventData};

/// Event kinds (the `kind` values of docs/events.md).
pub const KINDS: [&str; 15] = [
    "log",
    "http",
    "tcp_connect",
    "tcp_accept",
    "tcp_close",
    "tcp_retransmit",
    "loop",
    "gc",
    "exec",
    "exit",
    "lost",
    "logpoint",
    "inspector",
    "probe",
    "audit",
];

/// One of [`KINDS`]: a filter can only name a kind that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKind(&'static str);

impl EventKind {
    pub const LOG: EventKind = EventKind("log");
    pub const HTTP: EventKind = EventKind("http");

    /// The kind named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        KINDS.iter().find(|k| **k == name).map(|k| EventKind(k))
    }

    /// The kind of an event.
    pub fn of(data: &EventData) -> Self {
        EventKind(data.kind())
    }

    pub fn name(self) -> &'static str {
        self.0
    }
}

/// An event's place in commit order, as a store hands it out: unique, and
/// ordered the way the store made its events visible (SQLite: one writer,
/// so strictly increasing; ClickHouse: by commit time, see
/// `super::clickhouse`). Callers only compare, print and parse it (a live
/// tail's SSE `id:`); what the number means is the backend's business.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(i64);

impl EventId {
    /// Before every event: a cursor that has seen nothing.
    pub const START: EventId = EventId(0);

    /// For backends: the id they stored.
    pub(super) fn from_raw(raw: i64) -> Self {
        EventId(raw)
    }

    /// For backends: the number to store or compare in their queries.
    pub(super) fn raw(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for EventId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(EventId)
    }
}

/// What an agent sends: one POST /v1/ingest body. `(host, run_id, seq)`
/// identifies it; a batch sent again (a retry after a lost reply) is stored
/// once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub host: String,
    /// Random per agent run (a uuid), so `seq` may restart at 0.
    pub run_id: String,
    pub seq: u64,
    pub events: Vec<Event>,
}

/// Longest host name and run id accepted.
pub const MAX_HOST_LEN: usize = 255;
pub const MAX_RUN_ID_LEN: usize = 128;
/// Most events in one batch. Agents send at most 2000
/// (`forward::BATCH_EVENTS`); the bound lets the ClickHouse store's live
/// tails find a batch whose ids reach past their cursor by its first id
/// (`clickhouse::ClickhouseStore::batches_past`).
pub const MAX_BATCH_EVENTS: usize = 1_000_000;

impl Batch {
    /// Checks what the store relies on; the message goes back to the sender.
    pub fn validate(&self) -> Result<(), String> {
        if self.host.is_empty() || self.host.len() > MAX_HOST_LEN {
            return Err(format!("host must be 1 to {MAX_HOST_LEN} bytes"));
        }
        if self.run_id.is_empty() || self.run_id.len() > MAX_RUN_ID_LEN {
            return Err(format!("run_id must be 1 to {MAX_RUN_ID_LEN} bytes"));
        }
        if i64::try_from(self.seq).is_err() {
            return Err("seq must be below 2^63".into());
        }
        check_event_count(self.events.len())?;
        for (i, e) in self.events.iter().enumerate() {
            if e.host != self.host {
                return Err(format!(
                    "events[{i}].host is {:?} but the batch is from {:?}",
                    e.host, self.host
                ));
            }
            if i64::try_from(e.ts_ns).is_err() {
                return Err(format!("events[{i}].ts_ns must be below 2^63"));
            }
        }
        Ok(())
    }
}

/// [`Batch::validate`]'s bound on a batch's events.
fn check_event_count(n: usize) -> Result<(), String> {
    if n > MAX_BATCH_EVENTS {
        return Err(format!(
            "a batch holds at most {MAX_BATCH_EVENTS} events, this one {n}: send them in \
             several batches"
        ));
    }
    Ok(())
}

/// An event as stored: its position in commit order (`id`, increasing) and
/// the event with `ts_ns` set to the corrected time.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub id: EventId,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IngestOutcome {
    /// The batch was stored before; nothing was inserted.
    pub duplicate: bool,
    /// What this call inserted, in order.
    pub stored: Vec<Stored>,
}

/// A regular expression over log text (the `regex` crate's syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextMatch {
    pub pattern: String,
    pub case_insensitive: bool,
}

/// Compiled-program size limit for user regexes (the `regex` crate is
/// linear-time, so this bounds memory, not time).
const REGEX_SIZE_LIMIT: usize = 4 << 20;

impl TextMatch {
    pub fn compile(&self) -> Result<Regex, regex::Error> {
        RegexBuilder::new(&self.pattern)
            .case_insensitive(self.case_insensitive)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
    }
}

/// Which events. Every field narrows; the default matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Corrected time, inclusive.
    pub since: Option<i64>,
    /// Corrected time, exclusive.
    pub until: Option<i64>,
    /// Any of these hosts (empty: all).
    pub hosts: Vec<String>,
    /// Any of these kinds (empty: all).
    pub kinds: Vec<EventKind>,
    /// A trace id (W3C trace id or x-request-id) or a tracer `req_id`.
    pub trace: Option<String>,
    /// Log stream (implies kind `log`).
    pub stream: Option<StreamName>,
    /// Text matching this (implies one of [`TEXT_KINDS`]: a log line's
    /// text, a logpoint's line, a probe hit; [`EventData::search_text`]).
    pub text: Option<TextMatch>,
}

/// The kinds a text condition (grep) can match: those with a
/// [`EventData::search_text`]. Log lines are most of them; the others
/// are rows.
pub const TEXT_KINDS: [EventKind; 4] = [
    EventKind::LOG,
    EventKind("logpoint"),
    EventKind("inspector"),
    EventKind("probe"),
];

impl Filter {
    /// The same test as a store's query, for events not read from a store
    /// (the live tail). `trace` is not checked here: the trace id of a log
    /// line is resolved by the store.
    pub fn matches(&self, event: &Event, text_re: Option<&Regex>) -> bool {
        let ts = i64::try_from(event.ts_ns).unwrap_or(i64::MAX);
        if self.since.is_some_and(|s| ts < s) || self.until.is_some_and(|u| ts >= u) {
            return false;
        }
        if !self.hosts.is_empty() && !self.hosts.contains(&event.host) {
            return false;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&EventKind::of(&event.data)) {
            return false;
        }
        if let Some(want) = self.stream {
            match &event.data {
                EventData::Log { stream, .. } if *stream == want => {}
                _ => return false,
            }
        }
        if self.text.is_some() {
            let Some(text) = event.data.search_text() else {
                return false;
            };
            if let Some(re) = text_re
                && !re.is_match(&text)
            {
                return false;
            }
        }
        true
    }
}

impl Filter {
    /// Whether log lines can match.
    pub fn wants_logs(&self) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&EventKind::LOG)
    }

    /// Whether events of other kinds than log can match (a stream rules
    /// them out, a text condition all but [`TEXT_KINDS`]).
    pub fn wants_other_kinds(&self) -> bool {
        !self.row_kinds().is_empty_set()
    }

    /// The kinds other than log this filter can match.
    pub fn row_kinds(&self) -> RowKinds {
        if self.stream.is_some() {
            return RowKinds::Only(Vec::new());
        }
        let allowed = |k: &EventKind| *k != EventKind::LOG;
        match (self.text.is_some(), self.kinds.is_empty()) {
            (false, true) => RowKinds::All,
            (false, false) => RowKinds::Only(self.kinds.iter().copied().filter(allowed).collect()),
            (true, true) => RowKinds::Only(TEXT_KINDS.into_iter().filter(allowed).collect()),
            (true, false) => RowKinds::Only(
                self.kinds
                    .iter()
                    .copied()
                    .filter(|k| allowed(k) && TEXT_KINDS.contains(k))
                    .collect(),
            ),
        }
    }
}

/// Which kinds of rows (events other than log lines) a filter can match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowKinds {
    /// Any kind.
    All,
    /// Only these (none: no row matches).
    Only(Vec<EventKind>),
}

impl RowKinds {
    fn is_empty_set(&self) -> bool {
        matches!(self, RowKinds::Only(k) if k.is_empty())
    }
}

/// A point in (corrected ts, id) order, for paging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub ts_ns: i64,
    pub id: EventId,
}

impl From<&Stored> for Position {
    fn from(s: &Stored) -> Self {
        Position {
            ts_ns: i64::try_from(s.event.ts_ns).unwrap_or(i64::MAX),
            id: s.id,
        }
    }
}

impl Stored {
    /// Where it sorts in a query's (corrected time, id) order.
    pub fn position(&self) -> Position {
        Position::from(self)
    }
}

/// One page of a query in corrected-time order (ties by id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub filter: Filter,
    /// Strictly after this position (before it when `newest_first`).
    pub after: Option<Position>,
    /// Only events with `id <= as_of` (a snapshot at a cursor).
    pub as_of: Option<EventId>,
    pub newest_first: bool,
    pub limit: usize,
}

pub fn stream_name(s: StreamName) -> &'static str {
    match s {
        StreamName::Stdout => "stdout",
        StreamName::Stderr => "stderr",
        StreamName::File => "file",
    }
}

/// The stream named `name` (`stdout`, `stderr`, `file`).
pub fn parse_stream(name: &str) -> Option<StreamName> {
    [StreamName::Stdout, StreamName::Stderr, StreamName::File]
        .into_iter()
        .find(|s| stream_name(*s) == name)
}

/// What went wrong in a store, in terms a caller (and an operator) can act
/// on; the backend's own error is kept as text in the message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend refused or failed a statement (`backend` names it).
    #[error("{backend}: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
    /// The backend could not be reached (a server down, a network error):
    /// the operation may succeed when retried.
    #[error("{backend} is unreachable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
    #[error("opening the store: {0}")]
    Open(String),
    #[error("stored event {id} is not valid JSON for this version: {source}")]
    Corrupt {
        id: EventId,
        #[source]
        source: serde_json::Error,
    },
    /// Stored data that does not decode (a damaged log block, a row of the
    /// wrong shape).
    #[error("stored data is damaged: {0}")]
    Damaged(String),
    #[error("invalid regex: {0}")]
    Regex(#[from] regex::Error),
    /// The transaction holding these batches did not commit.
    #[error("commit failed: {0}")]
    Commit(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where a polling tail is ([`Store::poll_tail`]): every commit whose
/// ids end at or below `upto` is read, except late ones still possible
/// (a backend that polls knows how late), and so is each commit in `read`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailMark {
    pub upto: EventId,
    /// Commits read that could still be followed by a late one: first id
    /// to last id.
    pub read: BTreeMap<EventId, EventId>,
}

/// One poll's events, and whether more were left for the next poll.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TailPage {
    pub events: Vec<Stored>,
    pub more: bool,
}

/// How the API's writer gathers a group after its first batch, as an
/// agent cuts a batch (`forward.rs`): it closes once no batch came for
/// `quiet`, `most` after its first batch, or at the store's
/// [`Store::max_group_events`], whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupWait {
    pub quiet: std::time::Duration,
    pub most: std::time::Duration,
}

impl GroupWait {
    /// A group of what is waiting when its first batch is taken.
    pub const NONE: Self = Self {
        quiet: std::time::Duration::ZERO,
        most: std::time::Duration::ZERO,
    };
}

/// The storage backend. Calls block (run them off the async workers).
pub trait Store: Send + Sync {
    /// Stores a validated batch in one transaction and returns only once it
    /// is durable, or reports it as a duplicate and stores nothing.
    fn ingest(&self, batch: Batch) -> Result<IngestOutcome>;

    /// Stores several batches, each whole or not at all, with one outcome
    /// per batch in the same order; every `Ok` is durable when this returns.
    /// A backend makes this cheaper than one `ingest` per batch by
    /// committing them together (one fsync); the API's ingest groups the
    /// batches that arrive while the previous group commits.
    fn ingest_many(&self, batches: Vec<Batch>) -> Vec<Result<IngestOutcome>> {
        batches.into_iter().map(|b| self.ingest(b)).collect()
    }

    /// Most events the API's writer puts in one `ingest_many` group: it
    /// bounds the time a batch waits behind the others in its group.
    /// SQLite: 32768 (the transaction's dirty pages stay small). A store
    /// whose cost is per insert rather than per event (ClickHouse) takes
    /// more.
    fn max_group_events(&self) -> usize {
        32_768
    }

    /// Rows the API reads per store query of a streamed answer
    /// (`/v1/events`, `/v1/grep`: `query` with `after` the previous page's
    /// last row). SQLite: 1000, each page a short read of its blocks.
    fn page_rows(&self) -> usize {
        1000
    }

    /// How long the API's writer waits for more batches after a group's
    /// first (and those already waiting) before storing it: none by
    /// default, since a backend whose groups fill while the previous one
    /// commits (SQLite, at [`Store::max_group_events`]) gains nothing
    /// from waiting. ClickHouse makes a part of every insert, whatever
    /// its size, so its server's cost per event falls as groups grow.
    fn group_wait(&self) -> GroupWait {
        GroupWait::NONE
    }

    /// A page of events matching `q`, ordered by corrected time then id.
    fn query(&self, q: &Query) -> Result<Vec<Stored>>;

    /// How many events match.
    fn count(&self, f: &Filter) -> Result<u64>;

    /// Events with `id > cursor` matching `f`, in id (commit) order, at
    /// most `limit`: how a live tail catches up.
    fn since_cursor(&self, cursor: EventId, f: &Filter, limit: usize) -> Result<Vec<Stored>>;

    /// The id of the last committed event ([`EventId::START`] when empty).
    fn cursor(&self) -> Result<EventId>;

    /// For a store other processes write to as well (several aggregators
    /// on one ClickHouse): how often a live tail polls it, since this
    /// process does not see the others' commits. None (SQLite): every
    /// commit goes through this process, which publishes it.
    fn polled_by_tails(&self) -> Option<std::time::Duration> {
        None
    }

    /// Where a polling tail starts: after every commit visible now. Its
    /// `upto` is the snapshot's cursor. Here, [`Store::cursor`]: a store
    /// whose ids become visible in order needs nothing more.
    fn tail_mark(&self) -> Result<TailMark> {
        Ok(TailMark {
            upto: self.cursor()?,
            ..TailMark::default()
        })
    }

    /// The events matching `f` of the commits `mark` has not read, in
    /// commit order, each commit's once, and `mark` moved past them. Stops
    /// after the commit that reaches `limit` events (`more` set). Here,
    /// from [`Store::since_cursor`], for a store whose ids become visible
    /// in order; a store written by other processes too overrides it.
    fn poll_tail(&self, mark: &mut TailMark, f: &Filter, limit: usize) -> Result<TailPage> {
        let newest = self.cursor()?;
        let events = self.since_cursor(mark.upto, f, limit)?;
        let more = events.len() >= limit;
        let last = events.last().map_or(mark.upto, |s| s.id);
        mark.upto = if more {
            last
        } else {
            // Every commit up to `newest` was visible, and read (and any
            // after it that this read returned).
            mark.upto.max(newest).max(last)
        };
        Ok(TailPage { events, more })
    }

    /// Clock correction for `host`: ns added to its events' `ts_ns` at
    /// ingest. 0 until an estimator sets one.
    fn host_offset(&self, host: &str) -> Result<i64>;

    /// Sets the correction for `host` and re-times its stored events. The
    /// estimator (docs/aggregator.md, "Stitching") overrides it for hosts
    /// it has matched pairs for.
    fn set_host_offset(&self, host: &str, offset_ns: i64) -> Result<()>;

    /// Every host's correction, by host name.
    fn offsets(&self) -> Result<Vec<HostOffset>>;

    /// Per host and process, bucketed series over a window (the web UI's
    /// graphs, `GET /v1/series`; the bucketing is `series.rs`).
    fn series(&self, q: &super::series::SeriesQuery) -> Result<super::series::Series>;
}

/// A host's clock correction, as `GET /v1/offsets` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostOffset {
    pub host: String,
    /// Added to the host's raw times.
    pub offset_ns: i64,
    /// Matched request pairs the estimate rests on (0: the reference host,
    /// or set by hand).
    pub pairs: i64,
    /// The host the offset is relative to (absent: set by hand).
    pub reference: Option<String>,
    pub updated_ns: i64,
}

/// `raw + offset`, kept in 0..=i64::MAX.
pub fn corrected(raw: i64, offset: i64) -> i64 {
    raw.saturating_add(offset).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(host: &str, ts: u64, stream: StreamName, text: &str) -> Event {
        Event {
            ts_ns: ts,
            host: host.into(),
            pid: 1,
            tid: 1,
            comm: "node".into(),
            data: EventData::Log {
                stream,
                path: None,
                text: text.into(),
                truncated: false,
                req_id: None,
            },
        }
    }

    #[test]
    fn validate_rejects_foreign_host_and_huge_values() {
        let mut b = Batch {
            host: "a".into(),
            run_id: "r".into(),
            seq: 0,
            events: vec![log("a", 1, StreamName::Stdout, "x")],
        };
        assert_eq!(b.validate(), Ok(()));
        b.events.push(log("b", 1, StreamName::Stdout, "x"));
        assert!(b.validate().unwrap_err().contains("events[1].host"));
        b.events.pop();
        b.seq = u64::MAX;
        assert!(b.validate().unwrap_err().contains("seq"));
        b.seq = 0;
        b.events[0].ts_ns = u64::MAX;
        assert!(b.validate().unwrap_err().contains("ts_ns"));
        b.run_id.clear();
        assert!(b.validate().unwrap_err().contains("run_id"));
        assert_eq!(check_event_count(MAX_BATCH_EVENTS), Ok(()));
        assert_eq!(
            check_event_count(MAX_BATCH_EVENTS + 1).unwrap_err(),
            "a batch holds at most 1000000 events, this one 1000001: send them in several batches"
        );
    }

    #[test]
    fn filter_matches_like_the_store() {
        let e = log("a", 100, StreamName::Stderr, "Boom here");
        let all = Filter::default();
        assert!(all.matches(&e, None));
        let f = Filter {
            since: Some(100),
            until: Some(101),
            hosts: vec!["b".into(), "a".into()],
            kinds: vec![EventKind::LOG],
            stream: Some(StreamName::Stderr),
            text: Some(TextMatch {
                pattern: "boom".into(),
                case_insensitive: true,
            }),
            trace: None,
        };
        let re = f.text.as_ref().unwrap().compile().unwrap();
        assert!(f.matches(&e, Some(&re)));
        assert!(
            !Filter {
                until: Some(100),
                ..f.clone()
            }
            .matches(&e, Some(&re))
        );
        assert!(
            !Filter {
                hosts: vec!["b".into()],
                ..f.clone()
            }
            .matches(&e, Some(&re))
        );
        assert!(
            !Filter {
                stream: Some(StreamName::Stdout),
                ..f.clone()
            }
            .matches(&e, Some(&re))
        );
        let cs = TextMatch {
            pattern: "boom".into(),
            case_insensitive: false,
        }
        .compile()
        .unwrap();
        assert!(!f.matches(&e, Some(&cs)));
        let gc = Event {
            data: EventData::Gc { duration_ns: 1 },
            ..e.clone()
        };
        assert!(!Filter { kinds: vec![], ..f }.matches(&gc, Some(&re)));
    }

    #[test]
    fn corrected_saturates() {
        assert_eq!(corrected(10, -3), 7);
        assert_eq!(corrected(10, -30), 0);
        assert_eq!(corrected(i64::MAX, 5), i64::MAX);
    }
}
