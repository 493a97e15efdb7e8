//! The ClickHouse store against a real server: Debian's clickhouse-server
//! 18.16 (`cargo xtask bootstrap` installs it), started by the tests
//! themselves with their own data directory, free loopback ports and
//! config (no system service), once per test process; each test gets a
//! database of its own. The conformance suite runs unchanged on it, and
//! every statement the store sends (DDL, RowBinary inserts, each query
//! shape) is replayed on a current ClickHouse (PyPI chdb-core 26.x,
//! installed by this test into target/pydeps/chdb-venv on first use),
//! which must accept it and return as many rows as 18.16 did.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

use super::{
    ClickhouseStore, Config, Sent,
    test_server::{Server, free_port},
};
use crate::{
    aggregator::{
        conformance::{self, Backend, store_conformance_suite},
        store::{
            Batch, EventId, EventKind, Filter, Query, Store as _, Stored, StreamName, TailMark,
            TextMatch,
        },
    },
    event::{Event, EventData, HttpExchange, HttpSide, Tuple},
};

/// The server the tests of this process share. It is started from a
/// thread that lives as long as the process: the kernel's parent-death
/// signal fires when the thread that forked the server ends, and test
/// threads end before the process does.
fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let s = Server::start("shared");
            let info = (s.http_port, s.dir.clone());
            // The server stays owned by this thread, which never ends.
            let _ = tx.send(info);
            loop {
                std::thread::park();
            }
        });
        let (http_port, dir) = rx.recv().expect("the shared ClickHouse server started");
        Server::handle(http_port, dir)
    })
}

/// A database of its own on the shared server.
fn fresh_db() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

struct Clickhouse(Config);

impl Backend for Clickhouse {
    type S = ClickhouseStore;
    fn open(&self) -> ClickhouseStore {
        ClickhouseStore::open(&self.0).expect("opening the ClickHouse store")
    }
}

store_conformance_suite!(Clickhouse(shared().config(&fresh_db())));

mod upgrade;

/// The same suite on two servers as two shards behind `Distributed`
/// tables (shared by the tests of this process like the single server).
mod two_shards {
    use super::*;

    fn cluster() -> &'static (u16, u16) {
        static PORTS: OnceLock<(u16, u16)> = OnceLock::new();
        PORTS.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let servers = Server::start_cluster("shards", 2);
                let _ = tx.send((servers[0].http_port, servers[1].http_port));
                // The servers stay owned by this thread, which never ends.
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("the two shards started")
        })
    }

    pub(super) fn config() -> Config {
        let (a, b) = *cluster();
        let dir = std::env::temp_dir();
        let servers = [Server::handle(a, dir.clone()), Server::handle(b, dir)];
        Server::cluster_config(&servers, &fresh_db())
    }

    store_conformance_suite!(Clickhouse(config()));

    #[test]
    fn events_land_on_both_shards() {
        let config = config();
        let store = ClickhouseStore::open(&config).unwrap();
        let events = (0..40)
            .map(|i| conformance::log(&format!("h{i}"), i, StreamName::Stdout, "x"))
            .collect::<Vec<_>>();
        for (i, e) in events.into_iter().enumerate() {
            let host = e.host.clone();
            store
                .ingest(conformance::batch(&host, i as u64, vec![e]))
                .unwrap();
        }
        assert_eq!(store.count(&Filter::default()).unwrap(), 40);
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct N {
            n: u64,
        }
        for url in &config.shards {
            let client = clickhouse::Client::default()
                .with_url(url)
                .with_user(USER_NAME)
                .with_password(super::super::test_server::PASSWORD)
                .with_validation(false);
            let n: Vec<N> = store
                .block_on(
                    client
                        .query_raw(&format!(
                            "SELECT count() AS n FROM {}.events_local",
                            store.db
                        ))
                        .fetch_all(),
                )
                .unwrap();
            assert!(n[0].n > 0 && n[0].n < 40, "{url}: {}", n[0].n);
        }
    }

    #[test]
    fn older_http_index_local_tables_are_found_and_rebuilt() {
        super::older_http_index_is_rebuilt(&config());
    }

    const USER_NAME: &str = super::super::test_server::USER;
}

#[test]
fn config_parses_urls() {
    let c = Config::parse("clickhouse://db1/tracer").unwrap();
    assert_eq!(
        (c.url.as_str(), c.database.as_str()),
        ("http://db1:8123", "tracer")
    );
    let c = Config::parse("clickhouses://db1:9443").unwrap();
    assert_eq!(
        (c.url.as_str(), c.database.as_str()),
        ("https://db1:9443", "tracer")
    );
    assert!(
        Config::parse("http://db1")
            .unwrap_err()
            .contains("clickhouse://")
    );
    assert!(
        Config::parse("clickhouse://u:p@db1/x")
            .unwrap_err()
            .contains("--clickhouse-user")
    );
    assert!(
        Config::parse("clickhouse://db1/a-b")
            .unwrap_err()
            .contains("database")
    );
}

#[test]
fn bad_login_unreachable_server_and_newer_schema_are_clear_errors() {
    let server = shared();
    let wrong = Config {
        password: Some("wrong".into()),
        ..server.config(&fresh_db())
    };
    let e = ClickhouseStore::open(&wrong)
        .err()
        .expect("a wrong password fails");
    let msg = e.to_string();
    assert!(
        msg.contains("refused us") && msg.contains("--clickhouse-password-file"),
        "{msg}"
    );
    let down = Config {
        url: format!("http://127.0.0.1:{}", free_port()),
        ..server.config(&fresh_db())
    };
    let msg = ClickhouseStore::open(&down)
        .err()
        .expect("no server fails")
        .to_string();
    assert!(
        msg.contains("cannot reach ClickHouse") && msg.contains("is it running"),
        "{msg}"
    );
    // A database a newer tracer wrote is refused, and left alone.
    let config = server.config(&fresh_db());
    let store = ClickhouseStore::open(&config).unwrap();
    store
        .exec(&format!(
            "INSERT INTO {}.schema_version (version, applied_ns) VALUES (99, 0)",
            store.db
        ))
        .unwrap();
    drop(store);
    let msg = ClickhouseStore::open(&config)
        .err()
        .expect("newer schema")
        .to_string();
    assert!(msg.contains("schema version 99"), "{msg}");
}

#[test]
fn a_batch_stored_twice_by_racing_aggregators_counts_once() {
    let config = shared().config(&fresh_db());
    let (a, b) = (
        ClickhouseStore::open(&config).unwrap(),
        ClickhouseStore::open(&config).unwrap(),
    );
    let batch = conformance::batch(
        "h",
        0,
        vec![
            conformance::log("h", 10, StreamName::Stdout, "once"),
            conformance::log("h", 20, StreamName::Stdout, "twice?"),
        ],
    );
    // Both check for the batch before either commits: both insert it.
    let first = a.ingest_group(std::slice::from_ref(&batch)).unwrap();
    let new = [(
        &batch,
        b.ids.reserve(2, super::now_ns() / 1_000_000).0,
        super::raw_span(&batch),
    )];
    b.insert_group(&new).unwrap();
    assert!(first[0].is_some());
    for s in [&a, &b] {
        assert_eq!(s.count(&Filter::default()).unwrap(), 2);
        let rows = s
            .query(&Query {
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 2);
        // The first commit wins: its ids.
        assert_eq!(rows[0].id.raw(), first[0].as_ref().unwrap().first);
    }
    // Aggregators have distinct id tags.
    assert_ne!(a.ids.reserve(1, 0).0 & 0xff, b.ids.reserve(1, 0).0 & 0xff);
    // Events inserted without their batch row (a crash between the two
    // inserts) are not visible; the batch sent again is stored.
    let orphan = conformance::batch(
        "h",
        1,
        vec![conformance::log("h", 30, StreamName::Stdout, "x")],
    );
    let id = a.ids.reserve(1, super::now_ns() / 1_000_000).0;
    let mut body = super::RowBinary::default();
    body.i64(id)
        .i64(id)
        .i64(30)
        .str("h")
        .u32(1)
        .str("log")
        .str("stdout")
        .str("x")
        .str("")
        .str(&serde_json::to_string(&orphan.events[0]).unwrap())
        .end_row();
    a.insert(
        &format!("INSERT INTO {}.events (id, commit_id, raw_ts, host, pid, kind, stream, text, req_id, json) FORMAT RowBinary", a.db),
        body,
    )
    .unwrap();
    assert_eq!(a.count(&Filter::default()).unwrap(), 2);
    assert!(!a.ingest(orphan).unwrap().duplicate);
    assert_eq!(a.count(&Filter::default()).unwrap(), 3);
}

/// Batch `seq` of `n` calls from "api" to "db" (whose clock is about 2 ms
/// ahead), 1 ms apart from `first`, each on a connection of its own
/// (client ports from `port`): the client batch and the server batch.
fn calls(seq: u64, first: u64, n: u64, port: u16) -> (Batch, Batch) {
    let (mut api, mut db) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t = first + i * 1_000_000;
        let port = port + i as u16;
        let (req, srv) = (format!("c{seq}-{i}"), format!("s{seq}-{i}"));
        api.push(http("api", HttpSide::Client, t, 800_000, &req, None, port));
        db.push(http(
            "db",
            HttpSide::Server,
            t + 2_100_000,
            400_000,
            &srv,
            None,
            port,
        ));
    }
    (
        conformance::batch("api", seq, api),
        conformance::batch("db", seq, db),
    )
}

/// The clock estimates after ingest read exchanges without the commit
/// check (`stitch::distinct`): the two halves of a pair's exchanges, each
/// stored twice by racing aggregators, still count once in its estimate.
#[test]
fn a_clock_estimate_counts_an_exchange_stored_twice_once() {
    let config = shared().config(&fresh_db());
    let (a, b) = (
        ClickhouseStore::open(&config).unwrap(),
        ClickhouseStore::open(&config).unwrap(),
    );
    let (api, db) = calls(0, 1_800_000_000_000_000_000, 40, 20_000);
    // Both check for each batch before either commits: both insert it;
    // then a looks at its group.
    for batch in [&db, &api] {
        for s in [&a, &b] {
            let first = s
                .ids
                .reserve(batch.events.len(), super::now_ns() / 1_000_000)
                .0;
            s.insert_group(&[(batch, first, super::raw_span(batch))])
                .unwrap();
        }
    }
    assert_eq!(
        a.count(&Filter::default()).unwrap(),
        80,
        "the copies are not shown"
    );
    super::stitch::after_ingest(&a, &[&api]).unwrap();
    let pairs = a.pairs().unwrap();
    assert_eq!(pairs.len(), 1);
    assert_eq!(
        (
            pairs[0].client_host.as_str(),
            pairs[0].server_host.as_str(),
            pairs[0].pairs
        ),
        ("api", "db", 40)
    );
    assert!(
        (1_700_000..=2_100_000).contains(&pairs[0].theta_ns),
        "{}",
        pairs[0].theta_ns
    );
}

/// Two aggregators' rows of one host and day land in two partitions of
/// `events`, one per aggregator's tag (schema.rs says why), and read back
/// as one store.
#[test]
fn each_aggregator_writes_partitions_of_its_own() {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Part {
        partition: String,
    }
    let config = shared().config(&fresh_db());
    let (a, b) = (
        ClickhouseStore::open(&config).unwrap(),
        ClickhouseStore::open(&config).unwrap(),
    );
    let day = 86_400_000_000_000u64 * 20_000;
    for (store, seq) in [(&a, 0), (&b, 1), (&a, 2)] {
        let batch = conformance::batch(
            "h",
            seq,
            vec![conformance::log("h", day + seq, StreamName::Stdout, "x")],
        );
        assert!(!store.ingest(batch).unwrap().duplicate);
    }
    let tag = |s: &ClickhouseStore| s.ids.reserve(1, 0).0 & 0xff;
    let mut want = vec![
        format!("(20000,{})", tag(&a)),
        format!("(20000,{})", tag(&b)),
    ];
    want.sort();
    let got: Vec<String> = a
        .fetch::<Part>(&format!(
            "SELECT DISTINCT partition FROM system.parts WHERE database = '{}' \
             AND table = 'events' AND active ORDER BY partition",
            config.database
        ))
        .unwrap()
        .into_iter()
        .map(|p| p.partition)
        .collect();
    assert_eq!(got, want);
    for s in [&a, &b] {
        assert_eq!(s.count(&Filter::default()).unwrap(), 3);
    }
}

fn http(
    host: &str,
    side: HttpSide,
    ts: u64,
    dur: u64,
    req: &str,
    parent: Option<&str>,
    port: u16,
) -> Event {
    let (c, s) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    let tuple = match side {
        HttpSide::Client => Tuple {
            saddr: c,
            sport: port,
            daddr: s,
            dport: 80,
        },
        HttpSide::Server => Tuple {
            saddr: s,
            sport: 80,
            daddr: c,
            dport: port,
        },
    };
    Event {
        ts_ns: ts,
        host: host.into(),
        pid: 1,
        tid: 1,
        comm: "node".into(),
        data: EventData::Http(Box::new(HttpExchange {
            side,
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            duration_ns: dur,
            req_bytes: 1,
            resp_bytes: 1,
            tuple,
            tls: false,
            req_id: req.into(),
            parent_req_id: parent.map(str::to_owned),
            traceparent: None,
            request_id: None,
            complete: true,
            req_body: None,
            resp_body: None,
        })),
    }
}

#[test]
fn halves_ingested_through_two_aggregators_stitch_across_skewed_clocks() {
    let config = shared().config(&fresh_db());
    let (a, b) = (
        ClickhouseStore::open(&config).unwrap(),
        ClickhouseStore::open(&config).unwrap(),
    );
    // Host "api" calls host "db" whose clock is 3 s ahead; each request
    // on its own connection. api's halves go through aggregator a, db's
    // through b, db's first.
    const SKEW: u64 = 3_000_000_000;
    let base = 1_000_000_000_000u64;
    let (mut api, mut db) = (Vec::new(), Vec::new());
    for i in 0..40u64 {
        let t = base + i * 10_000_000;
        let req = format!("api-{i}");
        api.push(http(
            "api",
            HttpSide::Server,
            t,
            5_000_000,
            &format!("in-{i}"),
            None,
            40000 + i as u16 + 1000,
        ));
        api.push(http(
            "api",
            HttpSide::Client,
            t + 1_000_000,
            3_000_000,
            &req,
            Some(&format!("in-{i}")),
            40000 + i as u16,
        ));
        db.push(http(
            "db",
            HttpSide::Server,
            t + SKEW + 1_500_000,
            2_000_000,
            &format!("db-{i}"),
            None,
            40000 + i as u16,
        ));
        let mut line = conformance::log("db", t + SKEW + 2_000_000, StreamName::Stdout, "query");
        if let EventData::Log { req_id, .. } = &mut line.data {
            *req_id = Some(format!("db-{i}"));
        }
        db.push(line);
    }
    b.ingest(conformance::batch("db", 0, db)).unwrap();
    a.ingest(conformance::batch("api", 0, api)).unwrap();
    // db was seen first: it is the reference, and api's clock is moved
    // 3 s ahead to match it (within the 1 ms tolerance of the matching).
    let offsets = b.offsets().unwrap();
    let off = |h: &str| offsets.iter().find(|o| o.host == h).unwrap().clone();
    assert_eq!(
        (off("db").offset_ns, off("db").reference.as_deref()),
        (0, Some("db"))
    );
    assert_eq!(
        (off("api").pairs, off("api").reference.as_deref()),
        (40, Some("db"))
    );
    assert!(
        (off("api").offset_ns - SKEW as i64).abs() < 1_000_000,
        "{offsets:?}"
    );
    // A trace asked by the api's inbound req_id holds all three hops and
    // the db's log line, from either aggregator.
    for s in [&a, &b] {
        let f = Filter {
            trace: Some("in-7".into()),
            ..Filter::default()
        };
        let rows = s
            .query(&Query {
                filter: f.clone(),
                limit: 100,
                ..Query::default()
            })
            .unwrap();
        let kinds: Vec<&str> = rows.iter().map(|r| r.event.data.kind()).collect();
        assert_eq!(kinds, ["http", "http", "http", "log"], "{rows:#?}");
        // Causal once corrected: the db's server half inside the client's.
        assert!(rows[1].event.ts_ns <= rows[2].event.ts_ns);
        assert_eq!(s.count(&f).unwrap(), 4);
    }
}

/// Runs the workload every query shape comes from, on 18.16, recording.
fn workload(store: &ClickhouseStore) {
    let mut events = vec![
        conformance::log("a", 10, StreamName::Stdout, "GET /x error"),
        conformance::log("a", 20, StreamName::Stderr, "it's \\ quoted"),
        http("a", HttpSide::Client, 30, 10, "r1", None, 5000),
    ];
    events.push(Event {
        data: EventData::Gc { duration_ns: 3 },
        ..events[0].clone()
    });
    store.ingest(conformance::batch("a", 0, events)).unwrap();
    store
        .ingest(conformance::batch(
            "b",
            0,
            vec![http("b", HttpSide::Server, 32, 5, "r2", None, 5000)],
        ))
        .unwrap();
    store.ingest(conformance::batch("a", 0, vec![])).unwrap();
    store.set_host_offset("b", 7).unwrap();
    let filters = [
        Filter::default(),
        Filter {
            since: Some(5),
            until: Some(100),
            hosts: vec!["a".into()],
            ..Filter::default()
        },
        Filter {
            kinds: vec![EventKind::LOG, EventKind::HTTP],
            stream: Some(StreamName::Stderr),
            ..Filter::default()
        },
        Filter {
            text: Some(TextMatch {
                pattern: "error|quoted".into(),
                case_insensitive: true,
            }),
            ..Filter::default()
        },
        Filter {
            text: Some(TextMatch {
                pattern: r"\d$".into(),
                case_insensitive: false,
            }),
            ..Filter::default()
        },
        Filter {
            trace: Some("r1".into()),
            ..Filter::default()
        },
    ];
    let cursor = store.cursor().unwrap();
    for f in &filters {
        store.count(f).unwrap();
        store
            .since_cursor(crate::aggregator::store::EventId::START, f, 10)
            .unwrap();
        for newest_first in [false, true] {
            let page = store
                .query(&Query {
                    filter: f.clone(),
                    limit: 2,
                    newest_first,
                    as_of: Some(cursor),
                    ..Query::default()
                })
                .unwrap();
            if let Some(last) = page.last() {
                store
                    .query(&Query {
                        filter: f.clone(),
                        limit: 2,
                        newest_first,
                        after: Some(last.position()),
                        ..Query::default()
                    })
                    .unwrap();
            }
        }
    }
    // A tail's read of a backlog in windows (ids bounded above, `tail.rs`).
    let backlog = (0..super::tail::WINDOW_EVENTS)
        .map(|i| conformance::log("c", 1000 + i, StreamName::Stdout, "backlog"))
        .collect();
    store.ingest(conformance::batch("c", 0, backlog)).unwrap();
    store
        .ingest(conformance::batch(
            "c",
            1,
            vec![conformance::log("c", 9000, StreamName::Stdout, "last")],
        ))
        .unwrap();
    store
        .since_cursor(crate::aggregator::store::EventId::START, &filters[0], 10)
        .unwrap();
    // A polling tail's start and its reads by commit ids.
    store.tail_mark().unwrap();
    for f in &filters[..2] {
        store.poll_tail(&mut TailMark::default(), f, 10).unwrap();
    }
    store.offsets().unwrap();
    store.host_offset("a").unwrap();
    store
        .series(&crate::aggregator::series::SeriesQuery::new(0, 1_000, 100, vec![]).unwrap())
        .unwrap();
}

fn chdb_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pydeps/chdb-venv");
    let python = root.join("bin/python3");
    let ready = Command::new(&python)
        .args(["-c", "import chdb"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let venv = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&root)
            .status()
            .expect("running python3 -m venv (Debian: python3-venv)");
        assert!(
            venv.success(),
            "python3 -m venv {} failed (Debian: apt-get install python3-venv)",
            root.display()
        );
        let pip = Command::new(root.join("bin/pip"))
            .args(["install", "--quiet", "chdb-core==26.9.0"])
            .status()
            .expect("running pip");
        assert!(pip.success(), "pip install chdb-core==26.9.0 failed");
    }
    python
}

/// Replays `sent` on chdb: each statement must run, each SELECT return
/// `rows[i]` rows (what 18.16 returned), each insert body decode as
/// RowBinary into the table's columns.
const REPLAY: &str = r#"
import json, re, sys, tempfile, os
import chdb
from chdb import session
sent = json.load(open(sys.argv[1]))
s = session.Session(tempfile.mkdtemp())
done = 0
for i, st in enumerate(sent):
    sql = st["sql"]
    try:
        if st.get("body") is not None:
            m = re.match(r"INSERT INTO (\S+) \((.*?)\) FORMAT RowBinary$", sql, re.S)
            table, cols = m.group(1), [c.strip() for c in m.group(2).split(",")]
            types = {r.split("\t")[0]: r.split("\t")[1] for r in str(s.query(f"DESCRIBE TABLE {table}", "TSV")).strip().split("\n")}
            path = os.path.join(tempfile.mkdtemp(), "body.bin")
            open(path, "wb").write(bytes(st["body"]))
            structure = ", ".join(f"{c} {types[c]}" for c in cols)
            s.query(f"INSERT INTO {table} ({', '.join(cols)}) SELECT * FROM file('{path}', 'RowBinary', '{structure}')")
        elif sql.lstrip().upper().startswith("SELECT"):
            out = str(s.query(sql, "JSONEachRow"))
            n = len([l for l in out.split("\n") if l.strip()])
            if n != st["rows"]:
                print(f"statement {i}: 18.16 returned {st['rows']} rows, current ClickHouse {n}:\n{sql}")
                sys.exit(1)
        else:
            s.query(sql)
    except Exception as e:
        print(f"statement {i} failed on current ClickHouse: {e}\n{sql}")
        sys.exit(1)
    done += 1
print(f"replayed {done} statements on ClickHouse {str(s.query('SELECT version()', 'TSV')).strip()}")
"#;

#[test]
fn every_statement_runs_on_a_current_clickhouse_too() {
    let config = shared().config(&fresh_db());
    let store = ClickhouseStore::open_recording(&config).unwrap();
    workload(&store);
    let sent: Vec<Sent> = store.recorded();
    let shapes = sent.iter().filter(|s| s.sql.starts_with("SELECT")).count();
    assert!(shapes > 60, "only {shapes} queries recorded");
    replay_on_chdb(&sent.iter().map(sent_json).collect::<Vec<_>>());
}

/// A statement sent, as [`REPLAY`] reads it.
fn sent_json(s: &Sent) -> serde_json::Value {
    serde_json::json!({"sql": s.sql, "body": s.body, "rows": s.rows})
}

/// Replays `sent` ([`sent_json`]) on chdb; panics with what it said
/// unless every statement ran.
fn replay_on_chdb(sent: &[serde_json::Value]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sent.json");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(serde_json::to_string(sent).unwrap().as_bytes()))
        .unwrap();
    let out = Command::new(chdb_python())
        .args(["-c", REPLAY])
        .arg(&path)
        .output()
        .expect("running the chdb replay");
    let mut msg = String::new();
    let _ = write!(
        msg,
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{msg}");
    assert!(
        msg.contains("replayed") && msg.contains("ClickHouse 26."),
        "{msg}"
    );
    eprintln!("{}", msg.trim());
}

/// The connections looked up after a group (`stitch::lookup_keys`): a
/// bounded sample in which every host, side and peer of the group has one
/// before any has a second, whatever the group's size.
#[test]
fn a_groups_connection_lookup_is_a_bounded_sample_of_every_host_side_and_peer() {
    use std::collections::BTreeMap;

    use crate::aggregator::stitch::conn_key;
    // 40 hosts, each with 300 server and 300 client exchanges on their own
    // connections.
    let mut batches = Vec::new();
    let mut side_of = BTreeMap::new();
    for h in 0..40u16 {
        let host = format!("h{h}");
        let mut events = Vec::new();
        for i in 0..600u16 {
            let side = if i % 2 == 0 {
                HttpSide::Server
            } else {
                HttpSide::Client
            };
            let e = http(&host, side, 1_000, 1, "r", None, 1000 + h * 600 + i);
            if let EventData::Http(x) = &e.data {
                side_of.insert(conn_key(x), (host.clone(), side == HttpSide::Client));
            }
            events.push(e);
        }
        batches.push(conformance::batch(&host, 0, events));
    }
    let all: Vec<&crate::aggregator::store::Batch> = batches.iter().collect();
    let keys = super::stitch::lookup_keys(&all);
    assert_eq!(keys.len(), 32, "{keys:?}");
    let mut per_side: BTreeMap<(String, bool), usize> = BTreeMap::new();
    for k in &keys {
        *per_side.entry(side_of[k].clone()).or_default() += 1;
    }
    // 80 hosts-and-sides (one peer address each), 32 keys: 32 of them one
    // key each.
    assert_eq!(per_side.len(), 32);
    assert!(per_side.values().all(|n| *n == 1), "{per_side:?}");
    // A small group: every connection of it.
    let small = conformance::batch(
        "api",
        0,
        vec![
            http("api", HttpSide::Server, 1, 1, "a", None, 7),
            http("api", HttpSide::Client, 1, 1, "b", None, 8),
            http("db", HttpSide::Server, 1, 1, "c", None, 9),
        ],
    );
    assert_eq!(super::stitch::lookup_keys(&[&small]).len(), 3);
    // One host and side with many connections to one peer: 1 of them.
    let one = conformance::batch(
        "api",
        0,
        (0..500u16)
            .map(|i| http("api", HttpSide::Server, 1, 1, "a", None, 2000 + i))
            .collect(),
    );
    assert_eq!(super::stitch::lookup_keys(&[&one]).len(), 1);
    // The same host with one exchange from another peer among its 500: that
    // connection is looked up too (a rare host pair is not starved).
    let mut rare = http("api", HttpSide::Server, 1, 1, "z", None, 9999);
    if let EventData::Http(x) = &mut rare.data {
        x.tuple.daddr = "10.0.0.9".parse().unwrap();
    }
    let rare_key = match &rare.data {
        EventData::Http(x) => conn_key(x),
        _ => unreachable!(),
    };
    let mut with_rare = one.events.clone();
    with_rare.insert(250, rare);
    let keys = super::stitch::lookup_keys(&[&conformance::batch("api", 0, with_rare)]);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&rare_key), "{keys:?}");
}

#[test]
fn only_loopback_servers_are_sent_uncompressed() {
    use super::on_loopback;
    for url in [
        "http://127.0.0.1:8123",
        "https://localhost:8443",
        "http://[::1]:8123",
    ] {
        assert!(on_loopback(url), "{url}");
    }
    for url in [
        "http://10.0.0.5:8123",
        "https://ch.example.com:8443",
        "http://[fe80::1]:8123",
    ] {
        assert!(!on_loopback(url), "{url}");
    }
}

/// What a group reads after it is stored (`stitch::after_ingest`: the
/// other ends of its connections, the client host's latest exchanges, the
/// server exchanges on them) is bounded by the group's times, so it does
/// not grow with older traffic in the store: each of those reads, run
/// again with ClickHouse's `max_rows_to_read`, stays far below the rows of
/// older traffic, which the same read without its time bound exceeds.
/// Merges are stopped first, so that the new exchanges stay in parts of
/// their own, as they are between merges; then everything is merged into
/// one part, as merges do in time, and the client host's latest exchanges
/// are still read within their bound (from `http_keys`), where the
/// same read on `http_index` would read the older traffic too.
#[test]
fn reads_after_a_group_skip_older_traffic() {
    let config = shared().config(&fresh_db());
    let a = ClickhouseStore::open(&config).unwrap();
    // Each load in parts of its own first (merges stopped), then all of
    // it in one part (below).
    for table in ["http_index", "http_keys"] {
        a.exec(&format!("SYSTEM STOP MERGES {}.{table}", a.db))
            .unwrap();
    }
    // 20 batches of 500 calls, through aggregator a.
    const DAY: u64 = 86_400_000_000_000;
    let base = 20_000 * DAY + 3_600_000_000_000;
    for seq in 0..20 {
        let (api, db) = calls(seq, base + seq * 1_000_000_000, 500, 10_000);
        a.ingest(db).unwrap();
        a.ingest(api).unwrap();
    }
    let old_rows = 20 * 2 * 500;
    // An hour later (the same day: one partition), 100 calls through
    // aggregator b, which has not estimated the pair yet.
    let b = ClickhouseStore::open_recording(&config).unwrap();
    // The same ports again, as connections reuse them.
    let (api, db) = calls(20, base + 3_600_000_000_000, 100, 10_000);
    b.ingest(db).unwrap();
    let known = b.pairs().unwrap();
    assert_eq!(known.len(), 1);
    assert!(known[0].pairs >= 500, "{}", known[0].pairs);
    let before = b.recorded().len();
    b.ingest(api).unwrap();
    let reads: Vec<Sent> = b.recorded()[before..]
        .iter()
        .filter(|s| {
            s.sql.starts_with("SELECT")
                && (s.sql.contains(".http_index ") || s.sql.contains(".http_keys "))
        })
        .cloned()
        .collect();
    // The ends lookup, then the known pair's recent client exchanges (the
    // last 5 s, then, as those are fewer than 256, the last minute) and
    // the server exchanges at its clock difference: exactly the new ones.
    let rows: Vec<Option<usize>> = reads.iter().map(|s| s.rows).collect();
    assert_eq!(
        rows,
        [Some(2), Some(100), Some(100), Some(100)],
        "{reads:#?}"
    );
    // The new exchanges are 200 rows in 2 parts of their own; the older
    // traffic, 20,000 in 40. ClickHouse checks the limit against the
    // granules (1024 rows here) it will read. These reads make no commit
    // check (`stitch::distinct` says why): it would read all of `batches`.
    let bound = 4096;
    let rows_at_most = |sql: &str| {
        assert!(!sql.contains(".batches"), "{sql}");
        read_at_most(&b, sql, bound)
    };
    // Without their time bounds, each of them reads the older traffic.
    let bound_re =
        regex::Regex::new(r" AND start_ns (>= -?[0-9]+|BETWEEN -?[0-9]+ AND -?[0-9]+)").unwrap();
    for Sent { sql, .. } in &reads {
        let r = rows_at_most(sql);
        assert!(r.is_ok(), "{sql}\nread more than {bound} rows: {r:?}");
        assert!(bound_re.is_match(sql), "{sql}");
        let unbounded = bound_re.replace(sql, "");
        assert!(
            rows_at_most(&unbounded).is_err(),
            "{unbounded}\nread at most {bound} of {old_rows} rows"
        );
    }
    // Once merges joined the new exchanges to the older ones (here all in
    // one part), a part's range of times no longer keeps the older out:
    // the client host's latest exchanges, read from `http_index` (sorted
    // by connection), would read them all; from `http_keys` (a client
    // host's calls sorted by time) the primary key still bounds the read.
    for table in ["http_index", "http_keys"] {
        b.exec(&format!("SYSTEM START MERGES {}.{table}", b.db))
            .unwrap();
        merge_into_one_part(&b, table);
    }
    let latest: Vec<&str> = reads
        .iter()
        .map(|s| s.sql.as_str())
        .filter(|sql| sql.contains(".http_keys "))
        .collect();
    assert_eq!(latest.len(), 2, "{reads:#?}");
    for sql in latest {
        let r = rows_at_most(sql);
        assert!(r.is_ok(), "{sql}\nread more than {bound} rows: {r:?}");
        let on_index = sql.replace(
            ".http_keys WHERE kind = 'client' AND key = 'api'",
            ".http_index WHERE host = 'api' AND side = 'client'",
        );
        assert_ne!(on_index, sql);
        assert!(
            rows_at_most(&on_index).is_err(),
            "{on_index}\nread at most {bound} of {old_rows} rows"
        );
    }
    // 100 new links agree with the estimate on more: it stays (at db's
    // lead: the server half inside the client's, 1.7 to 2.1 ms).
    let pairs = b.pairs().unwrap();
    assert_eq!(pairs.len(), 1);
    let p = &pairs[0];
    assert_eq!(
        (
            p.client_host.as_str(),
            p.server_host.as_str(),
            p.pairs,
            p.theta_ns
        ),
        ("api", "db", known[0].pairs, known[0].theta_ns)
    );
    assert!(
        (1_700_000..=2_100_000).contains(&p.theta_ns),
        "{}",
        p.theta_ns
    );
}

/// Runs `sql` on `store`'s server, refused if it would read more than
/// `bound` rows (ClickHouse's `max_rows_to_read`: planned from the
/// primary key, before reading).
fn read_at_most(store: &ClickhouseStore, sql: &str, bound: u64) -> clickhouse::error::Result<()> {
    store.block_on(
        store
            .client
            .query_raw(sql)
            .with_setting("max_rows_to_read", bound.to_string())
            .execute(),
    )
}

/// Panics unless `sql` runs within `bound` rows ([`read_at_most`]).
fn assert_reads_at_most(store: &ClickhouseStore, sql: &str, bound: u64) {
    let r = read_at_most(store, sql, bound);
    assert!(r.is_ok(), "{sql}\nread more than {bound} rows: {r:?}");
}

/// The reads of `events` past a cursor that `store` sent since its
/// `before`th statement.
fn cursor_reads(store: &ClickhouseStore, before: usize) -> Vec<String> {
    store.recorded()[before..]
        .iter()
        .map(|s| s.sql.clone())
        .filter(|sql| sql.contains(".events ") && sql.contains(" AND id > "))
        .collect()
}

/// Merges `table` into one part (`OPTIMIZE ... FINAL` does nothing while
/// a merge of its parts is under way: tried again until it did).
fn merge_into_one_part(store: &ClickhouseStore, table: &str) {
    for _ in 0..100 {
        store
            .exec(&format!("OPTIMIZE TABLE {}.{table} FINAL", store.db))
            .unwrap();
        let parts: Vec<super::Count> = store
            .fetch(&format!(
                "SELECT count() AS n FROM system.parts WHERE active AND database = {} \
                 AND table = {}",
                super::sql::lit(store.db.trim_matches('`')),
                super::sql::lit(table)
            ))
            .unwrap();
        if parts.first().is_some_and(|p| p.n == 1) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{table} did not merge into one part");
}

/// A live tail's poll (`since_cursor`, from just behind its newest event)
/// reads the new batches' hosts and raw times (`batches.min_raw_ts`,
/// `max_raw_ts`), not the older traffic that merges joined them to: run
/// again with `max_rows_to_read`, it stays below the rows of the older
/// traffic, which the same read without those bounds exceeds. With no
/// batch past the cursor it reads no events at all, and a batch row
/// without times (written before version 4) makes it read as before, with
/// the same answer.
#[test]
fn a_tail_poll_reads_only_the_new_batches_times() {
    let config = shared().config(&fresh_db());
    let a = ClickhouseStore::open(&config).unwrap();
    const HOUR: u64 = 3_600_000_000_000;
    let base = 20_000 * 86_400_000_000_000 + HOUR;
    // 40,000 lines of 4 hosts, then (its cursor taken) 10 lines of h1 an
    // hour later; then all in one part, as merges make them in time.
    for seq in 0..20u64 {
        let host = format!("h{}", seq % 4);
        let lines = (0..2000)
            .map(|i| {
                let t = base + seq * 1_000_000_000 + i * 1000;
                conformance::log(&host, t, StreamName::Stdout, "older")
            })
            .collect();
        a.ingest(conformance::batch(&host, seq, lines)).unwrap();
    }
    let cursor = a.cursor().unwrap();
    let new: Vec<Event> = (0..10)
        .map(|i| {
            conformance::log(
                "h1",
                base + HOUR + i,
                StreamName::Stdout,
                &format!("new {i}"),
            )
        })
        .collect();
    a.ingest(conformance::batch("h1", 100, new)).unwrap();
    merge_into_one_part(&a, "events");
    let b = ClickhouseStore::open_recording(&config).unwrap();
    let poll = |store: &ClickhouseStore| -> Vec<String> {
        store
            .since_cursor(cursor, &Filter::default(), 100)
            .unwrap()
            .into_iter()
            .map(|s| match s.event.data {
                EventData::Log { text, .. } => text,
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let want: Vec<String> = (0..10).map(|i| format!("new {i}")).collect();
    let before = b.recorded().len();
    assert_eq!(poll(&b), want);
    let reads = cursor_reads(&b, before);
    assert_eq!(reads.len(), 1, "{reads:#?}");
    let read = &reads[0];
    // Granules of 8192 rows: the new lines' one (or two), against the
    // five of all 40,010.
    let bound = 16_384;
    let rows_at_most = |sql: &str| read_at_most(&b, sql, bound);
    let r = rows_at_most(read);
    assert!(r.is_ok(), "{read}\nread more than {bound} rows: {r:?}");
    let spans = regex::Regex::new(r" AND \(host = 'h1' AND raw_ts BETWEEN -?[0-9]+ AND -?[0-9]+\)")
        .unwrap();
    assert!(spans.is_match(read), "{read}");
    let unbounded = spans.replace(read, "");
    assert!(
        rows_at_most(&unbounded).is_err(),
        "{unbounded}\nread at most {bound} of 40,010 rows"
    );
    // Past the newest event: no events read.
    let newest = b.cursor().unwrap();
    let before = b.recorded().len();
    assert!(
        b.since_cursor(newest, &Filter::default(), 100)
            .unwrap()
            .is_empty()
    );
    assert!(
        b.recorded()[before..]
            .iter()
            .all(|s| !s.sql.contains(".events ")),
        "{:#?}",
        &b.recorded()[before..]
    );
    // A batch row without times past the cursor: read as before.
    b.exec(&format!(
        "INSERT INTO {}.batches (host, run_id, seq, commit_id, events, received_ns) \
         VALUES ('h9', 'run-1', 0, {}, 1, 0)",
        b.db,
        newest.raw() - 256
    ))
    .unwrap();
    let before = b.recorded().len();
    assert_eq!(poll(&b), want);
    let read = b.recorded()[before..]
        .iter()
        .map(|s| s.sql.clone())
        .find(|sql| sql.contains(".events ") && sql.contains(" AND id > "))
        .unwrap();
    assert!(!read.contains("raw_ts BETWEEN"), "{read}");
}

/// A tail far behind (a backlog of 400,000 events, merged into one part)
/// reads its first page from the first window of batches: the first 1000
/// events by id, reading the granules of that window's batches' times, not
/// every event past its cursor (which the read bounded by all of their
/// times did, to sort them by id).
#[test]
fn a_tail_page_on_a_backlog_reads_one_window() {
    const BATCHES: u64 = 200;
    const PER_BATCH: u64 = 2000;
    let config = shared().config(&fresh_db());
    let a = ClickhouseStore::open(&config).unwrap();
    let base = 20_000 * 86_400_000_000_000u64;
    for seq in 0..BATCHES {
        let host = format!("h{}", seq % 4);
        let lines = (0..PER_BATCH)
            .map(|i| {
                let t = base + seq * 1_000_000_000 + i * 1000;
                conformance::log(&host, t, StreamName::Stdout, &format!("{seq} {i}"))
            })
            .collect();
        a.ingest(conformance::batch(&host, seq, lines)).unwrap();
    }
    merge_into_one_part(&a, "events");
    let b = ClickhouseStore::open_recording(&config).unwrap();
    let text = |s: &Stored| match &s.event.data {
        EventData::Log { text, .. } => text.clone(),
        other => panic!("{other:?}"),
    };
    let before = b.recorded().len();
    let page: Vec<String> = b
        .since_cursor(EventId::START, &Filter::default(), 1000)
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let want: Vec<String> = (0..1000).map(|i| format!("0 {i}")).collect();
    assert_eq!(page, want);
    let reads = cursor_reads(&b, before);
    assert_eq!(reads.len(), 1, "{reads:#?}");
    // The first window: its batches' times (each host's a second apart,
    // so a range each), at most two granules of 8192 rows each.
    let window_batches = super::tail::WINDOW_EVENTS.div_ceil(PER_BATCH);
    let bound = window_batches * 2 * 8192;
    assert!(bound * 2 < BATCHES * PER_BATCH);
    let rows_at_most = |sql: &str| read_at_most(&b, sql, bound);
    let read = &reads[0];
    let r = rows_at_most(read);
    assert!(r.is_ok(), "{read}\nread more than {bound} rows: {r:?}");
    let window = regex::Regex::new(r" AND id <= [0-9]+ AND \(.*\)").unwrap();
    assert!(window.is_match(read), "{read}");
    let all_times = format!(
        " AND (raw_ts BETWEEN {base} AND {})",
        base + BATCHES * 1_000_000_000
    );
    let unwindowed = window.replace(read, all_times.as_str());
    assert!(
        rows_at_most(&unwindowed).is_err(),
        "{unwindowed}\nread at most {bound} of {} rows",
        BATCHES * PER_BATCH
    );
    // Every page after it, to the end, in order.
    let mut cursor = EventId::START;
    let mut seen = 0;
    loop {
        let page = b.since_cursor(cursor, &Filter::default(), 10_000).unwrap();
        for s in &page {
            assert_eq!(
                text(s),
                format!("{} {}", seen / PER_BATCH, seen % PER_BATCH)
            );
            seen += 1;
        }
        match page.last() {
            Some(last) if page.len() == 10_000 => cursor = last.id,
            _ => break,
        }
    }
    assert_eq!(seen, BATCHES * PER_BATCH);
    // A polling tail this far behind reads a group of batches at a time,
    // by their commit ids and times, and every event once, in order.
    let mut mark = TailMark::default();
    let before = b.recorded().len();
    let mut seen = 0;
    loop {
        let page = b.poll_tail(&mut mark, &Filter::default(), 10_000).unwrap();
        for s in &page.events {
            assert_eq!(
                text(s),
                format!("{} {}", seen / PER_BATCH, seen % PER_BATCH)
            );
            seen += 1;
        }
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, BATCHES * PER_BATCH);
    let reads: Vec<String> = b.recorded()[before..]
        .iter()
        .map(|s| s.sql.clone())
        .filter(|sql| sql.contains(".events "))
        .collect();
    assert_eq!(
        reads.len() as u64,
        BATCHES.div_ceil(window_batches),
        "{reads:#?}"
    );
    for read in &reads {
        assert!(read.contains(" AND commit_id IN ("), "{read}");
        let r = rows_at_most(read);
        assert!(r.is_ok(), "{read}\nread more than {bound} rows: {r:?}");
    }
    assert!(
        b.poll_tail(&mut mark, &Filter::default(), 10_000)
            .unwrap()
            .events
            .is_empty()
    );
}

/// `http_index` as a tracer before 2026-12-06 created it (one partition,
/// granules of 8192 rows), under `name`.
fn older_http_index(db: &str, name: &str) -> String {
    format!(
        "CREATE TABLE {db}.{name} (id Int64, commit_id Int64, host String, side String, \
         conn String, start_ns Int64, end_ns Int64, req_id String, parent_req_id String, \
         own_trace String) ENGINE = MergeTree ORDER BY (conn, side, start_ns)"
    )
}

/// A store whose `http_index` tables have the older layout works, is
/// found out when opened, and `rebuild_http_index` brings every table to
/// the current layout with every row (ids, commits): traces still cross
/// hosts, and a second rebuild has nothing to do.
fn older_http_index_is_rebuilt(config: &Config) {
    // The tables as that tracer left them.
    let first = ClickhouseStore::open(config).unwrap();
    let db = first.db.clone();
    let tables = first.holding(config, "http_index");
    for t in &tables {
        for sql in [
            format!("DROP TABLE {db}.{}", t.name),
            older_http_index(&db, &t.name),
        ] {
            first.block_on(t.client.query_raw(&sql).execute()).unwrap();
        }
    }
    drop(first);
    let store = ClickhouseStore::open(config).unwrap();
    let older: Vec<String> = tables
        .iter()
        .map(|t| format!("{}: {db}.{}", t.url, t.name))
        .collect();
    assert_eq!(store.older_http_index(config).unwrap(), older);
    // 30 calls from "api" to "db" (clock 3 s ahead), stitched on it.
    let (mut api, mut srv) = (Vec::new(), Vec::new());
    for i in 0..30u64 {
        let t = 5_000_000_000_000 + i * 10_000_000;
        let port = 20_000 + i as u16;
        api.push(http(
            "api",
            HttpSide::Client,
            t,
            3_000_000,
            &format!("c{i}"),
            None,
            port,
        ));
        srv.push(http(
            "db",
            HttpSide::Server,
            t + 3_001_000_000,
            1_000_000,
            &format!("s{i}"),
            None,
            port,
        ));
    }
    store.ingest(conformance::batch("db", 0, srv)).unwrap();
    store.ingest(conformance::batch("api", 0, api)).unwrap();
    let in_trace = |s: &ClickhouseStore| {
        s.count(&Filter {
            trace: Some("c7".into()),
            ..Filter::default()
        })
        .unwrap()
    };
    assert_eq!(in_trace(&store), 2);
    let mut said = Vec::new();
    let n = store
        .rebuild_http_index(config, &mut |line| said.push(line.to_string()))
        .unwrap();
    assert_eq!(n, tables.len(), "{said:#?}");
    assert!(store.older_http_index(config).unwrap().is_empty());
    // Every row is there: all 60 exchanges, over the tables.
    let copied: usize = said
        .iter()
        .filter_map(|l| {
            l.split(" (")
                .nth(1)?
                .split(" rows)")
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert_eq!(copied, 60, "{said:#?}");
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct N {
        n: u64,
    }
    let n: Vec<N> = store
        .fetch(&format!("SELECT count() AS n FROM {db}.http_index"))
        .unwrap();
    assert_eq!(n[0].n, 60);
    assert_eq!(in_trace(&store), 2);
    // New exchanges go into the rebuilt tables.
    store
        .ingest(conformance::batch(
            "api",
            1,
            vec![http(
                "api",
                HttpSide::Client,
                6_000_000_000_000,
                1,
                "late",
                None,
                9,
            )],
        ))
        .unwrap();
    let n: Vec<N> = store
        .fetch(&format!("SELECT count() AS n FROM {db}.http_index"))
        .unwrap();
    assert_eq!(n[0].n, 61);
    let mut again = Vec::new();
    assert_eq!(
        store
            .rebuild_http_index(config, &mut |line| again.push(line.to_string()))
            .unwrap(),
        0
    );
    assert!(
        again.iter().all(|l| l.ends_with("is current")),
        "{again:#?}"
    );
}

#[test]
fn an_older_http_index_is_found_and_rebuilt() {
    older_http_index_is_rebuilt(&shared().config(&fresh_db()));
}

/// A polling tail shows a batch committed late (its ids below what the
/// tail has read: another aggregator's clock behind) once; and a tail
/// whose filter matches nothing reads, each poll, only the batches
/// committed since the last one, not every event since its last match.
#[test]
fn a_polled_tail_reads_late_commits_once_and_only_new_batches() {
    let config = shared().config(&fresh_db());
    let a = ClickhouseStore::open(&config).unwrap();
    let b = ClickhouseStore::open_recording(&config).unwrap();
    // Aggregator a's clock a second ahead of b's.
    let now_ms = super::now_ns() / 1_000_000;
    a.ids.reserve(1, now_ms + 1000);
    let base = 20_000 * 86_400_000_000_000u64;
    let lines = |host: &str, seq: u64, text: &str| {
        let lines = (0..100)
            .map(|i| conformance::log(host, base + seq * 1000 + i, StreamName::Stdout, text))
            .collect();
        conformance::batch(host, seq, lines)
    };
    a.ingest(lines("h1", 0, "ahead")).unwrap();
    let needle = Filter {
        text: Some(TextMatch {
            pattern: "needle".into(),
            case_insensitive: false,
        }),
        ..Filter::default()
    };
    let mut every = b.tail_mark().unwrap();
    let mut rare = b.tail_mark().unwrap();
    let texts = |page: super::TailPage| -> Vec<String> {
        assert!(!page.more);
        page.events
            .iter()
            .map(|s| match &s.event.data {
                EventData::Log { text, .. } => text.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    // b commits after the tail read a's batch, with lower ids.
    let late = b.ingest(lines("h2", 0, "behind")).unwrap();
    assert!(late.stored[0].id < every.upto, "{late:?} {every:?}");
    assert_eq!(
        texts(b.poll_tail(&mut every, &Filter::default(), 1000).unwrap()),
        vec!["behind"; 100]
    );
    assert!(texts(b.poll_tail(&mut every, &Filter::default(), 1000).unwrap()).is_empty());
    assert!(texts(b.poll_tail(&mut rare, &needle, 1000).unwrap()).is_empty());
    // Nine batches more, matching nothing; one poll reads them.
    for seq in 1..10 {
        a.ingest(lines("h1", seq, "hay")).unwrap();
    }
    assert!(texts(b.poll_tail(&mut rare, &needle, 1000).unwrap()).is_empty());
    // One more batch: the next poll reads it alone.
    let last = a.ingest(lines("h1", 10, "hay and a needle")).unwrap();
    let before = b.recorded().len();
    assert_eq!(
        texts(b.poll_tail(&mut rare, &needle, 1000).unwrap()),
        vec!["hay and a needle"; 100]
    );
    let reads: Vec<String> = b.recorded()[before..]
        .iter()
        .map(|s| s.sql.clone())
        .filter(|sql| sql.contains(".events "))
        .collect();
    assert_eq!(reads.len(), 1, "{reads:#?}");
    assert!(
        reads[0].contains(&format!(" AND commit_id IN ({}) ", last.stored[0].id.raw())),
        "{}",
        reads[0]
    );
    assert!(texts(b.poll_tail(&mut rare, &needle, 1000).unwrap()).is_empty());
    assert_eq!(
        texts(b.poll_tail(&mut every, &Filter::default(), 1000).unwrap()).len(),
        1000
    );
}

/// More batches in a polling tail's 2 s than one listing holds (many
/// hosts' small batches): it reads past them, each once, and a tail that
/// starts then shows none of them again.
#[test]
fn a_polled_tail_lists_past_more_batches_than_one_listing() {
    let config = shared().config(&fresh_db());
    let store = ClickhouseStore::open(&config).unwrap();
    let n = super::MAX_TAIL_BATCHES + 52;
    let mut mark = store.tail_mark().unwrap();
    let batches: Vec<Batch> = (0..n)
        .map(|i| {
            let host = format!("h{}", i % 100);
            let line =
                conformance::log(&host, 1000 + i as u64, StreamName::Stdout, &format!("{i}"));
            conformance::batch(&host, (i / 100) as u64, vec![line])
        })
        .collect();
    for group in batches.chunks(300) {
        for r in store.ingest_many(group.to_vec()) {
            assert_eq!(r.unwrap().stored.len(), 1);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let page = store
            .poll_tail(&mut mark, &Filter::default(), 10_000)
            .unwrap();
        for s in &page.events {
            assert!(seen.insert(s.id), "{} twice", s.id);
        }
        if !page.more {
            break;
        }
    }
    assert_eq!(seen.len(), n);
    let mut late = store.tail_mark().unwrap();
    assert_eq!(late.read.len(), n);
    let page = store
        .poll_tail(&mut late, &Filter::default(), 10_000)
        .unwrap();
    assert!(page.events.is_empty() && !page.more, "{page:?}");
}

/// The lookup of a group's batches among those stored (`known`) reads the
/// day partitions of their first events only: a batch sent again has the
/// same events, so it is still found, on whatever day it is sent again,
/// while the rows of other days are not read. Run again with ClickHouse's
/// `max_rows_to_read`, the lookup stays below the older day's rows, which
/// the same lookup without its day bound exceeds.
#[test]
fn the_lookup_of_stored_batches_reads_only_their_days() {
    let config = shared().config(&fresh_db());
    let store = ClickhouseStore::open_recording(&config).unwrap();
    const DAY: u64 = 86_400_000_000_000;
    let base = 20_000 * DAY + 3_600_000_000_000;
    let one = |seq: u64, ts: u64| {
        conformance::batch(
            "web",
            seq,
            vec![conformance::log("web", ts, StreamName::Stdout, "x")],
        )
    };
    // 3000 batches of one event on one day, 300 to a group.
    let old: Vec<Batch> = (0..3000).map(|seq| one(seq, base + seq)).collect();
    for group in old.chunks(300) {
        for outcome in store.ingest_many(group.to_vec()) {
            assert!(!outcome.unwrap().duplicate);
        }
    }
    // One the next day.
    let new = one(3000, base + DAY);
    let before = store.recorded().len();
    assert!(!store.ingest(new.clone()).unwrap().duplicate);
    let lookup = store.recorded()[before..]
        .iter()
        .find(|s| s.sql.starts_with("SELECT host, run_id, seq FROM"))
        .map(|s| s.sql.clone())
        .unwrap();
    let bound = 1024;
    let r = read_at_most(&store, &lookup, bound);
    assert!(r.is_ok(), "{lookup}\nread more than {bound} rows: {r:?}");
    let (unbounded, _) = lookup.split_once(" AND (min_raw_ts").unwrap();
    assert!(
        read_at_most(&store, unbounded, bound).is_err(),
        "{unbounded}\nread at most {bound} rows without its day bound"
    );
    // Sent again, either of them, later: found, not stored twice.
    assert!(store.ingest(new).unwrap().duplicate);
    assert!(store.ingest(old[1234].clone()).unwrap().duplicate);
    let both = store
        .ingest_many(vec![old[7].clone(), one(3001, base + 2 * DAY)])
        .into_iter()
        .map(|o| o.unwrap().duplicate)
        .collect::<Vec<_>>();
    assert_eq!(both, [true, false]);
    assert_eq!(store.count(&Filter::default()).unwrap(), 3002);
}

/// Reads of recent events (a time window, grep, graphs, a live tail, a
/// trace walk's exchanges) read the batch rows of their times and of the
/// latest commits only, however many older batches the store holds: their
/// commit checks once read every batch row, 5 s per query with 10M rows.
#[test]
fn reads_of_recent_events_read_only_recent_batches() {
    let config = shared().config(&fresh_db());
    let store = ClickhouseStore::open_recording(&config).unwrap();
    const HISTORY: u64 = 400_000;
    let now = super::now_ns();
    super::test_server::insert_history(&store, HISTORY, super::now_ns()).unwrap();
    // The last seconds: "web" logs and calls "api" twice.
    let t = u64::try_from(now - 5_000_000_000).unwrap();
    let mut web: Vec<Event> = (0..10)
        .map(|i| {
            conformance::log(
                "web",
                t + i * 1000,
                StreamName::Stdout,
                &format!("line {i}"),
            )
        })
        .collect();
    web.push(http(
        "web",
        HttpSide::Client,
        t + 20_000,
        3_000,
        "w1",
        None,
        40001,
    ));
    web.push(http(
        "web",
        HttpSide::Client,
        t + 30_000,
        3_000,
        "w2",
        None,
        40002,
    ));
    let api = vec![
        http(
            "api",
            HttpSide::Server,
            t + 21_000,
            1_000,
            "a1",
            None,
            40001,
        ),
        http(
            "api",
            HttpSide::Server,
            t + 31_000,
            1_000,
            "a2",
            None,
            40002,
        ),
    ];
    store.ingest(conformance::batch("web", 0, web)).unwrap();
    store.ingest(conformance::batch("api", 0, api)).unwrap();
    let mark = store.recorded().len();
    let since = i64::try_from(t).unwrap() - 1_000_000_000;
    let recent = Filter {
        since: Some(since),
        ..Filter::default()
    };
    let rows = store
        .query(&Query {
            filter: recent.clone(),
            limit: 100,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 14);
    let grep = Filter {
        text: Some(TextMatch {
            pattern: "line [3-5]".into(),
            case_insensitive: false,
        }),
        ..recent.clone()
    };
    assert_eq!(store.count(&grep).unwrap(), 3);
    let graphs = store
        .series(
            &crate::aggregator::series::SeriesQuery::new(
                since,
                now + 60_000_000_000,
                1_000_000_000,
                vec![],
            )
            .unwrap(),
        )
        .unwrap();
    assert!(!graphs.procs.is_empty());
    // A live tail: its start, then a poll that finds one new batch.
    let mut tail = store.tail_mark().unwrap();
    let before = store.cursor().unwrap();
    let more: Vec<Event> = (0..3)
        .map(|i| conformance::log("web", t + 50_000 + i, StreamName::Stderr, "late"))
        .collect();
    // Its ingest is not a read (the test above bounds the ingest's lookup).
    let ingest_from = store.recorded().len();
    store.ingest(conformance::batch("web", 1, more)).unwrap();
    let reads_from = store.recorded().len();
    let page = store.poll_tail(&mut tail, &Filter::default(), 100).unwrap();
    assert_eq!(page.events.len(), 3);
    assert_eq!(
        store
            .since_cursor(before, &Filter::default(), 100)
            .unwrap()
            .len(),
        3
    );
    // A tail's snapshot: its last lines, newest first.
    let last = store
        .query(&Query {
            newest_first: true,
            limit: 5,
            as_of: Some(store.cursor().unwrap()),
            ..Query::default()
        })
        .unwrap();
    let got: Vec<(&str, u64)> = last
        .iter()
        .map(|r| (r.event.data.kind(), r.event.ts_ns - t))
        .collect();
    assert_eq!(
        got,
        [
            ("log", 50_002),
            ("log", 50_001),
            ("log", 50_000),
            ("http", 31_000),
            ("http", 30_000)
        ]
    );
    // A trace walk's exchanges.
    let trace = Filter {
        trace: Some("w2".into()),
        ..recent
    };
    assert_eq!(store.count(&trace).unwrap(), 2);
    let recorded = store.recorded();
    let reads: Vec<String> = recorded[mark..ingest_from]
        .iter()
        .chain(&recorded[reads_from..])
        .filter(|s| s.rows.is_some() && s.sql.contains(".batches"))
        .map(|s| s.sql.clone())
        .collect();
    assert!(reads.len() >= 8, "{reads:#?}");
    // A read is planned by granules (8192 rows of `events`, 1024 of
    // `batches`), so the few parts of recent rows count for up to ~40k.
    let bound = HISTORY / 4;
    let unbounded = super::sql::committed(&store.db, false, super::RawBounds::ALL);
    let mut checked_unbounded = 0;
    for sql in &reads {
        assert_reads_at_most(&store, sql, bound);
        // The same read with the commit check of old read the history.
        if let Some(start) = sql.find("commit_id IN (SELECT min(commit_id)") {
            let end = start + sql[start..].find("GROUP BY host, run_id, seq)").unwrap() + 27;
            let old = format!("{}{unbounded}{}", &sql[..start], &sql[end..]);
            assert!(read_at_most(&store, &old, bound).is_err(), "{old}");
            checked_unbounded += 1;
        }
    }
    assert!(checked_unbounded >= 5, "{reads:#?}");
    // Fewer events in the last day than asked: then all are read.
    let all = Query {
        newest_first: true,
        limit: 100,
        ..Query::default()
    };
    assert_eq!(store.query(&all).unwrap().len(), 17);
}

/// The order of hosts by first commit, which picks the reference clocks,
/// reads `hosts` (a row per host and aggregator start), never `batches`:
/// the same cost however many batches the store holds.
#[test]
fn the_host_order_reads_hosts_not_batches() {
    let config = shared().config(&fresh_db());
    let store = ClickhouseStore::open_recording(&config).unwrap();
    const HISTORY: u64 = 400_000;
    super::test_server::insert_history(&store, HISTORY, super::now_ns()).unwrap();
    // "web" calls "api" (api's clock 2 ms ahead): web is seen first.
    let t = u64::try_from(super::now_ns() - 5_000_000_000).unwrap();
    let calls = |from: u64, n: u64| {
        let (mut web, mut api) = (Vec::new(), Vec::new());
        for i in from..from + n {
            let at = t + i * 10_000_000;
            let port = 41000 + u16::try_from(i).unwrap();
            web.push(http(
                "web",
                HttpSide::Client,
                at,
                3_000_000,
                &format!("w{i}"),
                None,
                port,
            ));
            api.push(http(
                "api",
                HttpSide::Server,
                at + 2_000_000 + 1_000_000,
                1_000_000,
                &format!("a{i}"),
                None,
                port,
            ));
        }
        (web, api)
    };
    let (web, api) = calls(0, 4);
    store.ingest(conformance::batch("web", 0, web)).unwrap();
    store.ingest(conformance::batch("api", 0, api)).unwrap();
    // More exchanges: a better-founded estimate, offsets updated again.
    let (web, api) = calls(4, 8);
    store.ingest(conformance::batch("web", 1, web)).unwrap();
    store.ingest(conformance::batch("api", 1, api)).unwrap();
    let offsets = store.offsets().unwrap();
    let api = offsets.iter().find(|o| o.host == "api").unwrap();
    assert_eq!(
        (api.reference.as_deref(), api.pairs),
        (Some("web"), 12),
        "{offsets:?}"
    );
    assert!((api.offset_ns + 2_000_000).abs() < 1_000_000, "{offsets:?}");
    // The 50 hosts of a month ago first (by their first commits), then
    // web, then api.
    let order = super::stitch::hosts_by_first_commit(&store).unwrap();
    let mut old: Vec<String> = (0..50).map(|i| format!("old{i}")).collect();
    old.sort_by_key(|h| h[3..].parse::<u32>().unwrap());
    assert_eq!(order[..50], old[..]);
    assert_eq!(order[50..], ["web", "api"]);
    let reads: Vec<String> = store
        .recorded()
        .iter()
        .map(|s| s.sql.clone())
        .filter(|sql| sql.starts_with("SELECT") && sql.contains(".hosts "))
        .collect();
    // Each offset update's, and none reads `batches`.
    assert!(reads.len() >= 2, "{reads:#?}");
    assert!(
        store
            .recorded()
            .iter()
            .filter(|s| s.sql.starts_with("SELECT") && s.sql.contains(".batches"))
            .all(|s| !s.sql.ends_with("GROUP BY host")),
        "the host order was read from batches"
    );
    // Planned by granules (8192 rows of each part of `hosts`).
    let bound = HISTORY / 8;
    for sql in &reads {
        assert_reads_at_most(&store, sql, bound);
    }
    // As it was read before (every batch row's host and commit).
    let before = format!(
        "SELECT host, min(commit_id) AS first FROM {}.batches GROUP BY host",
        store.db
    );
    assert!(read_at_most(&store, &before, bound).is_err());
}

/// "web" serves w0 at `t`, and within it logs a line and calls "api"
/// twice (w1 and w2, served as a1 and a2, a2 with a log line of its own):
/// one trace of five exchanges and two lines, as the agents send it.
fn traced_request(store: &ClickhouseStore, t: u64) {
    let line = |host: &str, at: u64, req: &str| {
        let mut e = conformance::log(host, at, StreamName::Stdout, &format!("in {req}"));
        if let EventData::Log { req_id, .. } = &mut e.data {
            *req_id = Some(req.into());
        }
        e
    };
    let mut web = vec![
        http("web", HttpSide::Server, t, 100_000, "w0", None, 40000),
        line("web", t + 10_000, "w0"),
    ];
    let mut api = Vec::new();
    // Call n starts at t + n * 10 µs + 10 µs and is served 1 µs later.
    for n in 1..=2u16 {
        let (at, port) = (t + u64::from(n) * 10_000 + 10_000, 40000 + n);
        let (call, served) = (format!("w{n}"), format!("a{n}"));
        web.push(http(
            "web",
            HttpSide::Client,
            at,
            3_000,
            &call,
            Some("w0"),
            port,
        ));
        api.push(http(
            "api",
            HttpSide::Server,
            at + 1_000,
            1_000,
            &served,
            None,
            port,
        ));
    }
    api.push(line("api", t + 31_500, "a2"));
    store.ingest(conformance::batch("web", 0, web)).unwrap();
    store.ingest(conformance::batch("api", 0, api)).unwrap();
}

/// A trace's reads (its lookups by request id, of its connections, of its
/// events) read the granules of its keys and the rows of its hosts and
/// times only, however many older exchanges the store holds. Each once
/// read all of `http_index` (looked up by request id, which it is not
/// sorted by) or all of `events` (no time bound).
#[test]
fn a_trace_reads_only_its_keys_hosts_and_times() {
    let config = shared().config(&fresh_db());
    let store = ClickhouseStore::open_recording(&config).unwrap();
    const HISTORY: u64 = 400_000;
    let now = super::now_ns();
    super::test_server::insert_exchange_history(&store, HISTORY, now, &["web", "api"]).unwrap();
    let t = u64::try_from(now - 5_000_000_000).unwrap();
    traced_request(&store, t);
    let mark = store.recorded().len();
    let trace = Filter {
        trace: Some("w2".into()),
        ..Filter::default()
    };
    assert_eq!(store.count(&trace).unwrap(), 7);
    let rows = store
        .query(&Query {
            filter: trace,
            limit: 100,
            ..Query::default()
        })
        .unwrap();
    let got: Vec<(&str, &str, u64)> = rows
        .iter()
        .map(|r| {
            (
                r.event.host.as_str(),
                r.event.data.kind(),
                r.event.ts_ns - t,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("web", "http", 0),
            ("web", "log", 10_000),
            ("web", "http", 20_000),
            ("api", "http", 21_000),
            ("web", "http", 30_000),
            ("api", "http", 31_000),
            ("api", "log", 31_500),
        ]
    );
    let reads: Vec<String> = store.recorded()[mark..]
        .iter()
        .filter(|s| s.rows.is_some())
        .map(|s| s.sql.clone())
        .filter(|sql| {
            [".http_keys ", ".http_index ", ".events "]
                .iter()
                .any(|t| sql.contains(t))
        })
        .collect();
    // Per trace: its lookups by key (w2, its root's trace, the calls
    // within w0, w0 above w2), its connections, its events.
    let keyed = reads.iter().filter(|s| s.contains(".http_keys ")).count();
    assert!(keyed >= 4, "{reads:#?}");
    let bound = HISTORY / 4;
    for sql in &reads {
        assert_reads_at_most(&store, sql, bound);
    }
    // The same lookups on `http_index`, and the same read of the events
    // without the trace's hosts and times, read the history.
    let by_req = format!(
        "SELECT count() FROM {}.http_index WHERE req_id = 'w2'",
        store.db
    );
    assert!(read_at_most(&store, &by_req, bound).is_err());
    let bounds =
        regex::Regex::new(r"host IN \([^)]*\) AND raw_ts BETWEEN \d+ AND \d+ AND ").unwrap();
    let events: Vec<&String> = reads.iter().filter(|s| s.contains(".events ")).collect();
    assert_eq!(events.len(), 2, "{reads:#?}");
    for sql in events {
        assert!(bounds.is_match(sql), "{sql}");
        let unbounded = bounds.replace(sql, "");
        assert!(
            read_at_most(&store, &unbounded, bound).is_err(),
            "{unbounded}"
        );
    }
}

/// A store of version 4 gets `http_keys` filled from `http_index` when an
/// aggregator opens it: the same rows ingest writes (each client call
/// under its host; each exchange under its request id, its trace and its
/// parent request, each once), and its traces are whole again; and
/// `hosts` from `batches`, giving the same order of hosts.
fn http_keys_are_filled_on_upgrade(config: &Config) {
    let store = ClickhouseStore::open(config).unwrap();
    let t = u64::try_from(super::now_ns() - 5_000_000_000).unwrap();
    traced_request(&store, t);
    // An exchange with a W3C trace: its own trace is the trace id.
    let mut traced = http(
        "api",
        HttpSide::Server,
        t + 50_000,
        1_000,
        "a3",
        None,
        40003,
    );
    if let EventData::Http(h) = &mut traced.data {
        h.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    }
    store
        .ingest(conformance::batch("api", 1, vec![traced]))
        .unwrap();
    let trace = Filter {
        trace: Some("w2".into()),
        ..Filter::default()
    };
    assert_eq!(store.count(&trace).unwrap(), 7);
    let keys = |store: &ClickhouseStore| -> Vec<String> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Key {
            k: String,
        }
        let rows: Vec<Key> = store
            .fetch(&format!(
                "SELECT concat(kind, ' ', key, ' ', req_id) AS k FROM {}.http_keys ORDER BY k",
                store.db
            ))
            .unwrap();
        rows.into_iter().map(|r| r.k).collect()
    };
    let written = keys(&store);
    assert_eq!(
        written,
        [
            "client web w1",
            "client web w2",
            "request 4bf92f3577b34da6a3ce929d0e0e4736 a3",
            "request a1 a1",
            "request a2 a2",
            "request a3 a3",
            "request w0 w0",
            "request w0 w1",
            "request w0 w2",
            "request w1 w1",
            "request w2 w2",
        ]
    );
    let order = super::stitch::hosts_by_first_commit(&store).unwrap();
    assert_eq!(order, ["web", "api"]);
    // Version 4: no `http_keys`, no `hosts`.
    let db = &store.db;
    store.exec(&format!("DROP TABLE {db}.hosts")).unwrap();
    for t in store.with_columns_of(config, "http_keys") {
        store
            .block_on(
                t.client
                    .query_raw(&format!("DROP TABLE {db}.{}", t.name))
                    .execute(),
            )
            .unwrap();
    }
    store
        .exec(&format!("DROP TABLE {db}.schema_version"))
        .unwrap();
    store
        .exec(&format!(
            "CREATE TABLE {db}.schema_version (version UInt32, applied_ns Int64) \
             ENGINE = MergeTree ORDER BY version"
        ))
        .unwrap();
    store
        .exec(&format!(
            "INSERT INTO {db}.schema_version (version, applied_ns) VALUES (4, 0)"
        ))
        .unwrap();
    drop(store);
    let store = ClickhouseStore::open(config).unwrap();
    assert_eq!(keys(&store), written);
    assert_eq!(super::stitch::hosts_by_first_commit(&store).unwrap(), order);
    assert_eq!(store.count(&trace).unwrap(), 7);
    let by_trace = Filter {
        trace: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        ..Filter::default()
    };
    assert_eq!(store.count(&by_trace).unwrap(), 1);
}

#[test]
fn http_keys_are_filled_on_upgrade_on_one_server() {
    http_keys_are_filled_on_upgrade(&shared().config(&fresh_db()));
}

#[test]
fn http_keys_are_filled_on_upgrade_on_two_shards() {
    http_keys_are_filled_on_upgrade(&two_shards::config());
}
