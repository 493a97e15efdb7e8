//! The store conformance suite: what every backend must do, written once
//! and run against each (`store_conformance_suite!` in the backend's own
//! tests: SQLite in a temporary directory, ClickHouse on a server the test
//! starts). It holds the store tests that do not look inside a backend and
//! the model test: random batches (log lines, other events, times
//! overlapping across batches and hosts) and random queries, each answered
//! by the store and by filtering and sorting everything in memory; early
//! stops, merges and paging must give exactly the model's answer.

use rand::{RngExt as _, SeedableRng as _, rngs::StdRng};
use serde_json::json;

use super::{
    series::SeriesQuery,
    store::{
        Batch, EventId, EventKind, Filter, Position, Query, Store, Stored, StreamName, TailMark,
        TextMatch,
    },
};
use crate::event::{Event, EventData, HttpExchange, HttpSide, Tuple};

/// A backend under test: a place for its data, and a store opened on it
/// (again, for the tests that reopen).
pub trait Backend {
    type S: Store;
    fn open(&self) -> Self::S;
}

/// `#[test]` functions running every conformance test on the backend
/// `$backend` (an expression that builds a fresh [`Backend`], evaluated
/// once per test).
macro_rules! store_conformance_suite {
    ($backend:expr) => {
        $crate::aggregator::conformance::store_conformance_suite!(@each $backend;
            ingest_dedupes_by_host_run_seq,
            query_orders_by_time_then_commit_and_pages,
            grep_with_regex_and_case_folding,
            since_cursor_follows_commit_order,
            a_polled_tail_reads_each_commit_once,
            host_offset_applies_at_ingest,
            trace_links_logs_to_their_request,
            grep_finds_logpoint_and_probe_lines,
            ingest_many_commits_each_batch_whole_or_not,
            grep_pages_and_new_lines_after_the_cache,
            many_matching_lines_count_and_page,
            queries_match_a_model_of_the_store,
            series_from_stored_events,
            audit_events_round_trip);
    };
    (@each $backend:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                $crate::aggregator::conformance::$name(&$backend);
            }
        )*
    };
}
pub(crate) use store_conformance_suite;

/// A seeded generator: the same test every run.
struct Rng(StdRng);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn kind(name: &str) -> EventKind {
    EventKind::parse(name).unwrap()
}

pub fn log(host: &str, ts: u64, stream: StreamName, text: &str) -> Event {
    Event {
        ts_ns: ts,
        host: host.into(),
        pid: 7,
        tid: 7,
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

pub fn batch(host: &str, seq: u64, events: Vec<Event>) -> Batch {
    Batch {
        host: host.into(),
        run_id: "run-1".into(),
        seq,
        events,
    }
}

fn texts(rows: &[Stored]) -> Vec<String> {
    rows.iter()
        .map(|s| match &s.event.data {
            EventData::Log { text, .. } => format!("{}:{}", s.event.host, text),
            other => format!("{}:{}", s.event.host, other.kind()),
        })
        .collect()
}

pub fn all(limit: usize) -> Query {
    Query {
        limit,
        ..Query::default()
    }
}

/// Two hosts whose events interleave in time.
pub fn two_hosts(store: &impl Store) {
    let a = batch(
        "a",
        0,
        vec![
            log("a", 10, StreamName::Stdout, "a first"),
            log("a", 30, StreamName::Stderr, "a ERROR disk"),
            log("a", 50, StreamName::Stdout, "a third"),
        ],
    );
    let b = batch(
        "b",
        0,
        vec![
            log("b", 20, StreamName::Stdout, "b error net"),
            log("b", 30, StreamName::Stdout, "b tie"),
            Event {
                data: EventData::Gc { duration_ns: 5 },
                ..log("b", 40, StreamName::Stdout, "")
            },
        ],
    );
    assert_eq!(store.ingest(a).unwrap().stored.len(), 3);
    assert_eq!(store.ingest(b).unwrap().stored.len(), 3);
}

pub fn ingest_dedupes_by_host_run_seq(backend: &impl Backend) {
    let store = backend.open();
    let b = batch("a", 3, vec![log("a", 1, StreamName::Stdout, "x")]);
    let first = store.ingest(b.clone()).unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.stored.len(), 1);
    let again = store.ingest(b.clone()).unwrap();
    assert!(again.duplicate);
    assert!(again.stored.is_empty());
    assert_eq!(store.count(&Filter::default()).unwrap(), 1);
    // Another run or another seq is new.
    let other_run = Batch {
        run_id: "run-2".into(),
        ..b.clone()
    };
    assert!(!store.ingest(other_run).unwrap().duplicate);
    assert!(!store.ingest(Batch { seq: 4, ..b }).unwrap().duplicate);
    assert_eq!(store.count(&Filter::default()).unwrap(), 3);
    // Reopening keeps everything, including what was seen.
    drop(store);
    let store = backend.open();
    assert!(
        store
            .ingest(batch("a", 3, vec![log("a", 1, StreamName::Stdout, "x")]))
            .unwrap()
            .duplicate
    );
    assert_eq!(store.count(&Filter::default()).unwrap(), 3);
}

/// `audit` events (control commands, docs/events.md) are stored whole and
/// found by their kind, next to the logpoint lines they caused.
pub fn audit_events_round_trip(backend: &impl Backend) {
    use crate::event::{AuditRecord, ProcessOutcome};
    let store = backend.open();
    let audit = Event {
        ts_ns: 1_000,
        host: "h1".into(),
        pid: 0,
        tid: 0,
        comm: "tracer".into(),
        data: EventData::Audit(Box::new(AuditRecord {
            command: "cmd-0123456789ab".into(),
            phase: "done".into(),
            who: "alice".into(),
            op: "logpoint.add".into(),
            args: json!({ "id": "lp-00aa11bb", "location": "a.js:3", "template": "x=${x}" }),
            match_cmdline: Some("api".into()),
            processes: vec![ProcessOutcome {
                pid: 42,
                ok: true,
                result: Some(json!({ "id": "lp-00aa11bb", "line": 3 })),
                text: Some("logpoint lp-00aa11bb added\n".into()),
                error: None,
            }],
            error: None,
        })),
    };
    let hit = Event {
        ts_ns: 2_000,
        host: "h1".into(),
        pid: 42,
        tid: 42,
        comm: "node".into(),
        data: EventData::Logpoint {
            id: "lp-00aa11bb".into(),
            location: "/srv/a.js:3:5".into(),
            text: "x=1".into(),
            dropped: 0,
            unwatched_ms: 0,
            req_id: Some("r-1".into()),
        },
    };
    store
        .ingest(batch("h1", 0, vec![audit.clone(), hit.clone()]))
        .unwrap();
    let only = |k: &str| Query {
        filter: Filter {
            kinds: vec![kind(k)],
            ..Filter::default()
        },
        ..all(10)
    };
    let got: Vec<Event> = store
        .query(&only("audit"))
        .unwrap()
        .into_iter()
        .map(|s| s.event)
        .collect();
    assert_eq!(got, vec![audit]);
    let got: Vec<Event> = store
        .query(&only("logpoint"))
        .unwrap()
        .into_iter()
        .map(|s| s.event)
        .collect();
    assert_eq!(got, vec![hit]);
    assert_eq!(store.count(&only("audit").filter).unwrap(), 1);
}

pub fn query_orders_by_time_then_commit_and_pages(backend: &impl Backend) {
    let store = backend.open();
    two_hosts(&store);
    let rows = store.query(&all(100)).unwrap();
    assert_eq!(
        texts(&rows),
        [
            "a:a first",
            "b:b error net",
            "a:a ERROR disk",
            "b:b tie",
            "b:gc",
            "a:a third"
        ]
    );
    // Paging after a position gives the same sequence.
    let mut paged = Vec::new();
    let mut q = all(2);
    loop {
        let page = store.query(&q).unwrap();
        if page.is_empty() {
            break;
        }
        q.after = page.last().map(Position::from);
        paged.extend(page);
    }
    assert_eq!(paged, rows);
    // Newest first, as of a cursor: host b's events after its first
    // are not in the snapshot.
    let newest = store
        .query(&Query {
            newest_first: true,
            as_of: Some(rows[1].id),
            ..all(2)
        })
        .unwrap();
    assert_eq!(texts(&newest), ["a:a third", "a:a ERROR disk"]);
    // Filters: time range, host, kind, stream.
    let f = Filter {
        since: Some(20),
        until: Some(50),
        hosts: vec!["b".into()],
        ..Filter::default()
    };
    let rows = store
        .query(&Query {
            filter: f.clone(),
            ..all(100)
        })
        .unwrap();
    assert_eq!(texts(&rows), ["b:b error net", "b:b tie", "b:gc"]);
    assert_eq!(store.count(&f).unwrap(), 3);
    let kinds = Filter {
        kinds: vec![EventKind::parse("gc").unwrap()],
        ..Filter::default()
    };
    assert_eq!(store.count(&kinds).unwrap(), 1);
    let stderr = Filter {
        stream: Some(StreamName::Stderr),
        ..Filter::default()
    };
    assert_eq!(
        texts(
            &store
                .query(&Query {
                    filter: stderr,
                    ..all(10)
                })
                .unwrap()
        ),
        ["a:a ERROR disk"]
    );
}

pub fn grep_with_regex_and_case_folding(backend: &impl Backend) {
    let store = backend.open();
    two_hosts(&store);
    let grep = |pattern: &str, ci: bool| Filter {
        text: Some(TextMatch {
            pattern: pattern.into(),
            case_insensitive: ci,
        }),
        ..Filter::default()
    };
    let q = |f: Filter| {
        texts(
            &store
                .query(&Query {
                    filter: f,
                    ..all(100)
                })
                .unwrap(),
        )
    };
    assert_eq!(q(grep("error", false)), ["b:b error net"]);
    assert_eq!(q(grep("error", true)), ["b:b error net", "a:a ERROR disk"]);
    assert_eq!(q(grep(r"^a \w+ (disk|net)$", false)), ["a:a ERROR disk"]);
    assert_eq!(store.count(&grep("error", true)).unwrap(), 2);
    assert_eq!(store.count(&grep("e", false)).unwrap(), 2);
    // The gc event has no text and never matches, even `.*`.
    assert_eq!(store.count(&grep(".*", false)).unwrap(), 5);
    let both = Filter {
        hosts: vec!["a".into()],
        ..grep("ERROR|error", false)
    };
    assert_eq!(q(both), ["a:a ERROR disk"]);
}

pub fn since_cursor_follows_commit_order(backend: &impl Backend) {
    let store = backend.open();
    assert_eq!(store.cursor().unwrap(), EventId::START);
    two_hosts(&store);
    let c = store.cursor().unwrap();
    let rows = store
        .since_cursor(EventId::START, &Filter::default(), 100)
        .unwrap();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows.last().unwrap().id, c);
    // Commit order, not time order: host a's batch came first.
    assert_eq!(
        texts(&rows[..3]),
        ["a:a first", "a:a ERROR disk", "a:a third"]
    );
    let after = store
        .since_cursor(rows[2].id, &Filter::default(), 2)
        .unwrap();
    assert_eq!(texts(&after), ["b:b error net", "b:b tie"]);
}

/// A live tail that polls ([`Store::poll_tail`]): from where its
/// snapshot was ([`Store::tail_mark`]), the events of each commit made
/// since, once each, matching its filter, in commit order, page by page;
/// none when nothing new was committed, or only a retried batch. A filter
/// that matches nothing goes on past what it has read: it does not show
/// an earlier commit again later.
pub fn a_polled_tail_reads_each_commit_once(backend: &impl Backend) {
    let store = backend.open();
    two_hosts(&store);
    let errors = Filter {
        text: Some(TextMatch {
            pattern: "error".into(),
            case_insensitive: true,
        }),
        ..Filter::default()
    };
    let all = Filter::default();
    let mut every = store.tail_mark().unwrap();
    assert_eq!(every.upto, store.cursor().unwrap());
    let mut rare = every.clone();
    let poll = |mark: &mut TailMark, f: &Filter, limit: usize| {
        let mut got = Vec::new();
        loop {
            let page = store.poll_tail(mark, f, limit).unwrap();
            got.extend(texts(&page.events));
            if !page.more {
                return got;
            }
        }
    };
    assert!(poll(&mut every, &all, 10).is_empty());
    let later = |host: &str, seq: u64, texts: &[&str]| {
        let lines = texts
            .iter()
            .enumerate()
            .map(|(i, t)| log(host, 60 + i as u64, StreamName::Stdout, t))
            .collect();
        store.ingest(batch(host, seq, lines)).unwrap()
    };
    assert_eq!(later("a", 1, &["a later", "a later error"]).stored.len(), 2);
    assert_eq!(later("b", 1, &["b quiet"]).stored.len(), 1);
    assert_eq!(
        poll(&mut every, &all, 1),
        ["a:a later", "a:a later error", "b:b quiet"]
    );
    assert!(poll(&mut every, &all, 10).is_empty());
    assert_eq!(poll(&mut rare, &errors, 10), ["a:a later error"]);
    assert_eq!(later("b", 2, &["b more"]).stored.len(), 1);
    assert!(poll(&mut rare, &errors, 10).is_empty());
    assert!(poll(&mut rare, &errors, 10).is_empty());
    assert_eq!(poll(&mut every, &all, 10), ["b:b more"]);
    assert!(later("b", 2, &["b more"]).duplicate);
    assert!(poll(&mut every, &all, 10).is_empty());
    assert_eq!(later("b", 3, &["b error again"]).stored.len(), 1);
    assert_eq!(poll(&mut rare, &errors, 10), ["b:b error again"]);
    assert_eq!(poll(&mut every, &all, 10), ["b:b error again"]);
}

pub fn host_offset_applies_at_ingest(backend: &impl Backend) {
    let store = backend.open();
    assert_eq!(store.host_offset("slow").unwrap(), 0);
    store.set_host_offset("slow", 1_000).unwrap();
    assert_eq!(store.host_offset("slow").unwrap(), 1_000);
    let out = store
        .ingest(batch(
            "slow",
            0,
            vec![log("slow", 5, StreamName::Stdout, "x")],
        ))
        .unwrap();
    assert_eq!(out.stored[0].event.ts_ns, 1_005);
    store
        .ingest(batch(
            "fast",
            0,
            vec![log("fast", 500, StreamName::Stdout, "y")],
        ))
        .unwrap();
    let rows = store.query(&all(10)).unwrap();
    assert_eq!(texts(&rows), ["fast:y", "slow:x"]);
    assert_eq!(rows[1].event.ts_ns, 1_005);
    // The raw time is kept beside the corrected one.
    store.set_host_offset("slow", 0).unwrap();
    assert_eq!(store.query(&all(10)).unwrap()[0].event.ts_ns, 5);
}

pub fn trace_links_logs_to_their_request(backend: &impl Backend) {
    let store = backend.open();
    let tid = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut line = log("a", 10, StreamName::Stdout, "handling");
    if let EventData::Log { req_id, .. } = &mut line.data {
        *req_id = Some("r1".into());
    }
    let http = Event {
        data: EventData::Http(Box::new(HttpExchange {
            side: HttpSide::Server,
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            duration_ns: 1,
            req_bytes: 1,
            resp_bytes: 1,
            tuple: Tuple {
                saddr: "127.0.0.1".parse().unwrap(),
                sport: 80,
                daddr: "127.0.0.1".parse().unwrap(),
                dport: 5000,
            },
            tls: false,
            req_id: "r1".into(),
            parent_req_id: None,
            traceparent: Some(format!("00-{}-00f067aa0ba902b7-01", tid.to_uppercase())),
            request_id: None,
            complete: true,
            req_body: None,
            resp_body: None,
        })),
        ..log("a", 20, StreamName::Stdout, "")
    };
    // The line arrives in an earlier batch than its exchange.
    store.ingest(batch("a", 0, vec![line.clone()])).unwrap();
    store.ingest(batch("a", 1, vec![http])).unwrap();
    let mut late = line;
    late.ts_ns = 30;
    store.ingest(batch("a", 2, vec![late])).unwrap();
    // Logpoint hits belong to the request they fired in, like log lines.
    let hit = |ts, req: &str| Event {
        data: EventData::Logpoint {
            id: "lp1".into(),
            location: "/srv/app.js:7:3".into(),
            text: format!("hit in {req}"),
            dropped: 0,
            unwatched_ms: 0,
            req_id: Some(req.into()),
        },
        ..log("a", ts, StreamName::Stdout, "")
    };
    store
        .ingest(batch("a", 3, vec![hit(25, "r1"), hit(26, "r2")]))
        .unwrap();
    let f = Filter {
        trace: Some(tid.into()),
        ..Filter::default()
    };
    assert_eq!(store.count(&f).unwrap(), 4);
    let rows = store
        .query(&Query {
            filter: f,
            ..all(10)
        })
        .unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.event.data.kind()).collect();
    assert_eq!(kinds, ["log", "http", "logpoint", "log"]);
    assert!(
        matches!(&rows[2].event.data, EventData::Logpoint { text, .. } if text == "hit in r1"),
        "{rows:#?}"
    );
    let by_req = Filter {
        trace: Some("r1".into()),
        ..Filter::default()
    };
    assert_eq!(store.count(&by_req).unwrap(), 4);
    let other = Filter {
        trace: Some("r2".into()),
        ..Filter::default()
    };
    assert_eq!(store.count(&other).unwrap(), 1);
}

/// Grep searches logpoint lines and probe hits as well as log lines (each
/// by its [`EventData::search_text`]); a stream condition keeps only log
/// lines.
pub fn grep_finds_logpoint_and_probe_lines(backend: &impl Backend) {
    let store = backend.open();
    let lp = Event {
        data: EventData::Logpoint {
            id: "lp1".into(),
            location: "/srv/app.js:7:3".into(),
            text: "order 42 total=9.5".into(),
            dropped: 0,
            unwatched_ms: 0,
            req_id: None,
        },
        ..log("a", 20, StreamName::Stdout, "")
    };
    let probe = Event {
        data: probe_hit("/tmp/order-42.json"),
        ..log("a", 30, StreamName::Stdout, "")
    };
    let gc = Event {
        data: EventData::Gc { duration_ns: 42 },
        ..log("a", 40, StreamName::Stdout, "")
    };
    store
        .ingest(batch(
            "a",
            0,
            vec![
                log("a", 10, StreamName::Stdout, "order 42 received"),
                lp,
                probe,
                gc,
                log("a", 50, StreamName::Stderr, "order 43 failed"),
            ],
        ))
        .unwrap();
    let grep = |pattern: &str| Filter {
        text: Some(TextMatch {
            pattern: pattern.into(),
            case_insensitive: false,
        }),
        ..Filter::default()
    };
    let found = |f: Filter| {
        let rows = store
            .query(&Query {
                filter: f.clone(),
                ..all(10)
            })
            .unwrap();
        assert_eq!(store.count(&f).unwrap(), rows.len() as u64, "{f:?}");
        rows.iter().map(|r| r.event.data.kind()).collect::<Vec<_>>()
    };
    assert_eq!(found(grep("order.42")), ["log", "logpoint", "probe"]);
    assert_eq!(found(grep(r"total=\d")), ["logpoint"]);
    assert_eq!(
        found(grep(
            r#"^usdt:app:op app:app:op arg0="/tmp/order-42\.json" arg1=7$"#
        )),
        ["probe"]
    );
    assert_eq!(found(grep("42")), ["log", "logpoint", "probe"]);
    // One page at a time, as `tracer grep --limit` reads them.
    assert_eq!(
        texts(
            &store
                .query(&Query {
                    filter: grep("42"),
                    ..all(2)
                })
                .unwrap()
        ),
        ["a:order 42 received", "a:logpoint"]
    );
    let logpoints = Filter {
        kinds: vec![kind("logpoint")],
        ..grep("42")
    };
    assert_eq!(found(logpoints), ["logpoint"]);
    let stdout = Filter {
        stream: Some(StreamName::Stdout),
        ..grep("42")
    };
    assert_eq!(found(stdout), ["log"]);
    // The tail's own check agrees with the store.
    let since = store
        .since_cursor(EventId::START, &grep("order"), 10)
        .unwrap();
    assert_eq!(since.len(), 4);
    let re = grep("order").text.unwrap().compile().unwrap();
    let all_events = store.query(&all(10)).unwrap();
    let matching = all_events
        .iter()
        .filter(|s| grep("order").matches(&s.event, Some(&re)))
        .count();
    assert_eq!(matching, 4);
}

pub fn ingest_many_commits_each_batch_whole_or_not(backend: &impl Backend) {
    let store = backend.open();
    let b = |seq, text: &str| batch("a", seq, vec![log("a", seq + 1, StreamName::Stdout, text)]);
    let out = store.ingest_many(vec![b(0, "one"), b(0, "one again"), b(1, "two")]);
    let out: Vec<_> = out.into_iter().map(Result::unwrap).collect();
    assert!(!out[0].duplicate && out[1].duplicate && !out[2].duplicate);
    assert_eq!(
        out[0].stored.len() + out[1].stored.len() + out[2].stored.len(),
        2
    );
    assert!(out[0].stored[0].id < out[2].stored[0].id);
    assert_eq!(store.count(&Filter::default()).unwrap(), 2);
}

pub fn grep_pages_and_new_lines_after_the_cache(backend: &impl Backend) {
    let store = backend.open();
    let lines = |seq: u64| {
        (0..10)
            .map(|i| {
                log(
                    "a",
                    seq * 100 + i,
                    StreamName::Stdout,
                    &format!("line {i} hit"),
                )
            })
            .collect()
    };
    store.ingest(batch("a", 0, lines(0))).unwrap();
    let f = Filter {
        text: Some(TextMatch {
            pattern: r"[13579] hit$".into(),
            case_insensitive: false,
        }),
        ..Filter::default()
    };
    let page = |after| {
        store
            .query(&Query {
                filter: f.clone(),
                after,
                limit: 3,
                ..Query::default()
            })
            .unwrap()
    };
    let first = page(None);
    assert_eq!(first.len(), 3);
    // Lines stored between two pages are found by the next one.
    store.ingest(batch("a", 1, lines(1))).unwrap();
    let rest = page(first.last().map(Position::from));
    assert_eq!(rest.len(), 3);
    assert_eq!(store.count(&f).unwrap(), 10);
    let since = Filter {
        since: Some(100),
        ..f.clone()
    };
    assert_eq!(store.count(&since).unwrap(), 5);
    // A re-timed host moves its lines (and blocks) in time.
    store.set_host_offset("a", 1_000).unwrap();
    assert_eq!(store.count(&since).unwrap(), 10);
}

pub fn many_matching_lines_count_and_page(backend: &impl Backend) {
    let store = backend.open();
    let n = 100_500;
    let mut seq = 0;
    let mut i = 0;
    while i < n {
        let events = (i..(i + 2000).min(n))
            .map(|k| log("a", k + 1, StreamName::Stdout, &format!("line {k} hit")))
            .collect::<Vec<_>>();
        i += events.len() as u64;
        store.ingest(batch("a", seq, events)).unwrap();
        seq += 1;
    }
    let f = |pattern: &str| Filter {
        text: Some(TextMatch {
            pattern: pattern.into(),
            case_insensitive: false,
        }),
        ..Filter::default()
    };
    assert_eq!(store.count(&f("hit$")).unwrap(), n);
    let page = store
        .query(&Query {
            filter: f("hit$"),
            limit: 3,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(
        texts(&page),
        ["a:line 0 hit", "a:line 1 hit", "a:line 2 hit"]
    );
    let stdout = Filter {
        stream: Some(StreamName::Stdout),
        ..f("hit$")
    };
    assert_eq!(store.count(&stdout).unwrap(), n);
    assert_eq!(store.count(&f(r"^line 1\d{5} ")).unwrap(), 500);
}

const HOSTS: [&str; 3] = ["a", "b", "c"];
const WORDS: [&str; 6] = ["GET /x", "error disk", "ok", "Error net", "slow", "retry"];

fn event(rng: &mut Rng, host: &str, ts: u64) -> Event {
    let data = match rng.below(10) {
        6 => EventData::Logpoint {
            id: format!("lp{}", rng.below(3)),
            location: "/srv/app.js:7:3".into(),
            text: format!("{} {}", rng.pick(&WORDS), rng.below(1000)),
            dropped: 0,
            unwatched_ms: 0,
            req_id: (rng.below(2) == 0).then(|| format!("r{}", rng.below(5))),
        },
        9 if rng.below(2) == 0 => probe_hit(&format!("{} {}", rng.pick(&WORDS), rng.below(1000))),
        0..6 => EventData::Log {
            stream: *rng.pick(&[StreamName::Stdout, StreamName::Stderr, StreamName::File]),
            path: (rng.below(4) == 0).then(|| "/var/log/app.log".to_string()),
            text: format!("{} {}", rng.pick(&WORDS), rng.below(1000)),
            truncated: rng.below(8) == 0,
            req_id: (rng.below(3) == 0).then(|| format!("r{}", rng.below(5))),
        },
        7 => EventData::Gc {
            duration_ns: rng.below(1000),
        },
        8 => EventData::Loop {
            poll_ns: rng.below(1000),
            busy_ns: rng.below(1000),
        },
        _ => EventData::Lost {
            count: rng.below(5) + 1,
            stage: crate::event::LossStage::Ring,
            for_kind: None,
        },
    };
    Event {
        ts_ns: ts,
        host: host.into(),
        pid: 1 + rng.below(3) as u32,
        tid: 1,
        comm: "node".into(),
        data,
    }
}

fn filter(rng: &mut Rng) -> Filter {
    let mut f = Filter::default();
    if rng.below(3) == 0 {
        f.since = Some(rng.below(2_000) as i64);
    }
    if rng.below(3) == 0 {
        f.until = Some(500 + rng.below(2_000) as i64);
    }
    if rng.below(3) == 0 {
        f.hosts = vec![rng.pick(&HOSTS).to_string()];
    }
    match rng.below(5) {
        0 => f.kinds = vec![EventKind::LOG],
        1 => f.kinds = vec![kind("gc"), kind("lost")],
        2 => f.kinds = vec![EventKind::LOG, kind("loop")],
        3 => f.kinds = vec![kind("logpoint"), kind("probe"), kind("gc")],
        _ => {}
    }
    if rng.below(4) == 0 {
        f.stream = Some(*rng.pick(&[StreamName::Stdout, StreamName::Stderr, StreamName::File]));
    }
    if rng.below(3) == 0 {
        f.text = Some(TextMatch {
            pattern: rng.pick(&["error", "^ok", r"\d9$", "net|disk"]).to_string(),
            case_insensitive: rng.below(2) == 0,
        });
    }
    f
}

/// A `tracer probe` hit with one string argument.
fn probe_hit(arg: &str) -> EventData {
    EventData::Probe(Box::new(crate::event::ProbeHit {
        probe: "usdt:app:op".into(),
        object: "/srv/app".into(),
        point: "app:op".into(),
        record: "args".into(),
        count: None,
        interval_ns: None,
        args: Some(vec![json!(arg), json!(7)]),
        latency_ns: None,
    }))
}

fn key(s: &Stored) -> Position {
    s.position()
}

pub fn queries_match_a_model_of_the_store(backend: &impl Backend) {
    let store = backend.open();
    let mut rng = Rng(StdRng::seed_from_u64(0x5eed_1234_abcd_0001));
    let mut all: Vec<Stored> = Vec::new();
    let mut seq = [0u64; 3];
    for _ in 0..80 {
        let h = rng.below(3) as usize;
        // Batches overlap in time, within a host and across hosts.
        let start = rng.below(2_000);
        let events: Vec<Event> = (0..1 + rng.below(40))
            .map(|_| {
                let ts = start + rng.below(300);
                event(&mut rng, HOSTS[h], ts)
            })
            .collect();
        let out = store
            .ingest(Batch {
                host: HOSTS[h].into(),
                run_id: "run".into(),
                seq: seq[h],
                events,
            })
            .unwrap();
        seq[h] += 1;
        all.extend(out.stored);
    }
    // A re-timed host moves its rows and its blocks alike.
    store.set_host_offset("b", 250).unwrap();
    for s in &mut all {
        if s.event.host == "b" {
            s.event.ts_ns += 250;
        }
    }
    let mut by_time = all.clone();
    by_time.sort_by_key(key);
    let max_id = all.iter().map(|s| s.id).max().unwrap();
    assert_eq!(store.cursor().unwrap(), max_id);
    // Cursors are opaque: the ones a store hands out, and the start.
    let mut ids: Vec<EventId> = all.iter().map(|s| s.id).collect();
    ids.push(EventId::START);
    for round in 0..400 {
        let f = filter(&mut rng);
        let re = f.text.as_ref().map(|t| t.compile().unwrap());
        let matching: Vec<&Stored> = by_time
            .iter()
            .filter(|s| f.matches(&s.event, re.as_ref()))
            .collect();
        assert_eq!(
            store.count(&f).unwrap(),
            matching.len() as u64,
            "round {round}: count {f:?}"
        );
        let newest_first = rng.below(2) == 0;
        let limit = 1 + rng.below(30) as usize;
        let as_of = (rng.below(3) == 0).then(|| *rng.pick(&ids));
        let after =
            (rng.below(2) == 0 && !by_time.is_empty()).then(|| Position::from(rng.pick(&by_time)));
        let q = Query {
            filter: f.clone(),
            after,
            as_of,
            newest_first,
            limit,
        };
        let mut want: Vec<Stored> = matching
            .iter()
            .filter(|s| as_of.is_none_or(|a| s.id <= a))
            .filter(|s| {
                after.is_none_or(|p| {
                    let k = key(s);
                    if newest_first { k < p } else { k > p }
                })
            })
            .map(|s| (*s).clone())
            .collect();
        if newest_first {
            want.reverse();
        }
        want.truncate(limit);
        assert_eq!(store.query(&q).unwrap(), want, "round {round}: {q:?}");
        let cursor = *rng.pick(&ids);
        let mut since: Vec<Stored> = matching
            .iter()
            .filter(|s| s.id > cursor)
            .map(|s| (*s).clone())
            .collect();
        since.sort_by_key(|s| s.id);
        since.truncate(limit);
        assert_eq!(
            store.since_cursor(cursor, &f, limit).unwrap(),
            since,
            "round {round}: since {cursor} {f:?}"
        );
    }
}

const S: i64 = 1_000_000_000;

fn series_event(ts: i64, pid: u32, kind: &str, fields: serde_json::Value) -> Event {
    let mut v = json!({"ts_ns": ts, "host": "h1", "pid": pid, "tid": pid,
                           "comm": "node", "kind": kind});
    if let (Some(o), Some(f)) = (v.as_object_mut(), fields.as_object()) {
        o.extend(f.clone());
    }
    serde_json::from_value(v).expect("a valid event")
}

fn series_http(ts: i64, side: &str, status: u16, ms: i64) -> Event {
    series_event(
        ts,
        7,
        "http",
        json!({"side": side, "method": "GET", "path": "/", "status": status,
                   "duration_ns": ms * 1_000_000, "req_bytes": 100, "resp_bytes": 1000,
                   "saddr": "10.0.0.1", "sport": 8080, "daddr": "10.0.0.2", "dport": 40000,
                   "tls": false, "req_id": format!("r{ts}")}),
    )
}

pub fn series_from_stored_events(backend: &impl Backend) {
    let store = backend.open();
    let mut events: Vec<Event> = (1..=4)
        .map(|ms| series_http(10 * S + ms, "server", 200, ms))
        .collect();
    events.push(series_http(11 * S, "server", 503, 100));
    events.push(series_http(11 * S, "client", 200, 3));
    events.push(series_event(
        11 * S,
        7,
        "log",
        json!({"stream": "stdout", "text": "x"}),
    ));
    events.push(series_event(
        12 * S,
        7,
        "gc",
        json!({"duration_ns": 2_000_000}),
    ));
    events.push(series_event(
        12 * S,
        7,
        "loop",
        json!({"poll_ns": 1, "busy_ns": 40_000_000}),
    ));
    events.push(series_event(
        12 * S,
        7,
        "tcp_retransmit",
        json!({"saddr": "10.0.0.1", "sport": 1, "daddr": "10.0.0.2", "dport": 2}),
    ));
    events.push(series_event(
        13 * S,
        0,
        "lost",
        json!({"count": 6, "stage": "ring", "for_kind": "log"}),
    ));
    // Probe hits: an aggregate of 7 in the first bucket, two args events
    // and an aggregate of 4 in the second.
    let probe = |count: Option<u64>| {
        let mut v = json!({"probe": "uprobe:uv_fs_open", "object": "/usr/bin/node",
                           "point": "uv_fs_open", "record": "count"});
        match count {
            Some(n) => v["count"] = json!(n),
            None => {
                v["record"] = json!("args");
                v["args"] = json!([0]);
            }
        }
        v
    };
    events.push(series_event(11 * S, 7, "probe", probe(Some(7))));
    events.push(series_event(12 * S, 7, "probe", probe(None)));
    events.push(series_event(13 * S, 7, "probe", probe(None)));
    events.push(series_event(13 * S, 7, "probe", probe(Some(4))));
    // Outside the window.
    events.push(series_event(
        14 * S,
        7,
        "log",
        json!({"stream": "stdout", "text": "late"}),
    ));
    store
        .ingest(Batch {
            host: "h1".into(),
            run_id: "r".into(),
            seq: 0,
            events,
        })
        .unwrap();
    let q = SeriesQuery::new(10 * S, 14 * S, 2 * S, vec![]).unwrap();
    let s = store.series(&q).unwrap();
    assert_eq!(s.times_ns, vec![10 * S, 12 * S]);
    assert_eq!(s.procs.len(), 2);
    let (agent, p) = (&s.procs[0], &s.procs[1]);
    assert_eq!(agent.pid, 0);
    assert_eq!(agent.lost_per_s, vec![0.0, 3.0]);
    assert_eq!(p.pid, 7);
    assert_eq!(p.requests_per_s, vec![2.5, 0.0]);
    // Nearest rank of [1, 2, 3, 4, 100] ms: p50 is the 3rd, p99 the 5th.
    assert_eq!(p.latency_p50_ms, vec![Some(3.0), None]);
    assert_eq!(p.latency_p99_ms, vec![Some(100.0), None]);
    assert_eq!(p.error_rate, vec![Some(0.2), None]);
    assert_eq!(p.bytes_in_per_s, vec![(500.0 + 1000.0) / 2.0, 0.0]);
    assert_eq!(p.bytes_out_per_s, vec![(5000.0 + 100.0) / 2.0, 0.0]);
    assert_eq!(p.log_lines_per_s, vec![0.5, 0.0]);
    assert_eq!(p.gc_pause_ms, vec![0.0, 2.0]);
    assert_eq!(p.loop_delay_ms, vec![None, Some(40.0)]);
    assert_eq!(p.retransmits_per_s, vec![0.0, 0.5]);
    assert_eq!(p.probe_hits_per_s, vec![3.5, 3.0]);
    // Another host only: nothing.
    let q = SeriesQuery::new(10 * S, 14 * S, 2 * S, vec!["h2".into()]).unwrap();
    assert!(store.series(&q).unwrap().procs.is_empty());
}
