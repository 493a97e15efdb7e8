//! A store written by a tracer of schema version 1 is upgraded in place
//! when an aggregator opens it (`upgrade.rs`): by two aggregators at once,
//! on one server and on two shards, keeping every row it had; and the
//! statements of the upgrade run on a current ClickHouse too.

use std::thread;

use super::{
    super::{Count, SCHEMA_VERSION, layout::shard_client, schema::ADDED, sql},
    *,
};
use crate::aggregator::store::EventId;

/// `events` as schema version 1 created it (no `tid`, `comm`), under
/// `name`, with `engine`.
fn older_events(db: &str, name: &str, engine: &str) -> String {
    format!(
        "CREATE TABLE {db}.{name} (id Int64, commit_id Int64, raw_ts Int64, host String, \
         pid UInt32, kind String, stream String, text String, req_id String, json String) \
         ENGINE = {engine}"
    )
}

const OLDER_MERGE_TREE: &str =
    "MergeTree PARTITION BY intDiv(raw_ts, 86400000000000) ORDER BY (host, raw_ts, id)";

/// A log line as version 1 stored it: its JSON whole but for the text.
fn older_line() -> (Event, String) {
    let e = Event {
        pid: 41,
        tid: 42,
        comm: "worker".into(),
        ..conformance::log(
            "old",
            1_000,
            StreamName::Stderr,
            "written before the upgrade",
        )
    };
    let mut json = serde_json::to_value(&e).unwrap();
    json["text"] = "".into();
    (e, json.to_string())
}

/// The statements that make `schema_version` and record `version` in it.
fn recorded_version(db: &str, version: u32) -> [(Option<String>, String); 2] {
    [
        (
            None,
            format!(
                "CREATE TABLE {db}.schema_version (version UInt32, applied_ns Int64) \
                 ENGINE = MergeTree ORDER BY version"
            ),
        ),
        (
            None,
            format!("INSERT INTO {db}.schema_version (version, applied_ns) VALUES ({version}, 0)"),
        ),
    ]
}

/// An exchange as versions 1 and 2 stored it: its whole JSON.
fn older_exchange() -> (Event, String) {
    let e = http("old", HttpSide::Server, 1_500, 2, "r0", None, 81);
    let json = serde_json::to_string(&e).unwrap();
    (e, json)
}

/// The statements that leave `config`'s database as a tracer of version 1
/// did, with one committed batch of a log line ([`older_line`]) and an
/// exchange ([`older_exchange`]): (server, SQL), the server None for the
/// one the store talks to.
fn version_1(config: &Config, db: &str) -> Vec<(Option<String>, String)> {
    let mut out = vec![(None, format!("CREATE DATABASE IF NOT EXISTS {db}"))];
    out.extend(recorded_version(db, 1));
    let (e, json) = older_line();
    let (x, x_json) = older_exchange();
    let row = format!(
        "INSERT INTO {db}.{{table}} (id, commit_id, raw_ts, host, pid, kind, stream, text, \
         req_id, json) VALUES (5000, 5000, {}, 'old', 41, 'log', 'stderr', \
         'written before the upgrade', '', {}), (5256, 5000, {}, 'old', 1, 'http', '', '', \
         'r0', {})",
        e.ts_ns,
        sql::lit(&json),
        x.ts_ns,
        sql::lit(&x_json)
    );
    match &config.cluster {
        None => {
            out.push((None, older_events(db, "events", OLDER_MERGE_TREE)));
            out.push((None, row.replace("{table}", "events")));
        }
        Some(cluster) => {
            for shard in &config.shards {
                out.push((
                    Some(shard.clone()),
                    format!("CREATE DATABASE IF NOT EXISTS {db}"),
                ));
                out.push((
                    Some(shard.clone()),
                    older_events(db, "events_local", OLDER_MERGE_TREE),
                ));
            }
            out.push((
                None,
                older_events(
                    db,
                    "events",
                    &format!("Distributed({cluster}, {db}, events_local, cityHash64(host))"),
                ),
            ));
            // The line on the first shard (any shard serves it).
            out.push((
                Some(config.shards[0].clone()),
                row.replace("{table}", "events_local"),
            ));
        }
    }
    out.push((
        None,
        format!(
            "CREATE TABLE {db}.batches (host String, run_id String, seq Int64, commit_id Int64, \
             events UInt32, received_ns Int64) ENGINE = MergeTree ORDER BY (host, run_id, seq)"
        ),
    ));
    out.push((
        None,
        format!(
            "INSERT INTO {db}.batches (host, run_id, seq, commit_id, events, received_ns) \
             VALUES ('old', 'run-1', 0, 5000, 2, 0)"
        ),
    ));
    out
}

fn run(config: &Config, statements: &[(Option<String>, String)]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (server, sql) in statements {
        let client = shard_client(config, server.as_deref().unwrap_or(config.url.as_str()));
        rt.block_on(client.query_raw(sql).execute())
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

fn everything(store: &ClickhouseStore) -> Vec<Event> {
    let mut all: Vec<Event> = store
        .query(&Query {
            limit: 100,
            ..Query::default()
        })
        .unwrap()
        .into_iter()
        .map(|s| s.event)
        .collect();
    all.sort_by_key(|e| e.ts_ns);
    all
}

fn columns_of_events(store: &ClickhouseStore, config: &Config) -> Vec<String> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Name {
        name: String,
    }
    store
        .with_columns_of(config, "events")
        .iter()
        .map(|t| {
            let names: Vec<Name> = store
                .block_on(
                    t.client
                        .query_raw(&format!(
                            "SELECT name FROM system.columns WHERE database = {} AND table = {}",
                            sql::lit(&config.database),
                            sql::lit(&t.name)
                        ))
                        .fetch_all(),
                )
                .unwrap();
            let names: Vec<String> = names.into_iter().map(|n| n.name).collect();
            format!("{}: {}", t.name, names.join(","))
        })
        .collect()
}

/// Two aggregators open a version 1 store at once: both open it, every
/// `events` table gets `tid` and `comm` after `pid`, the events written
/// before read back as they were, events written after read back exactly
/// (a plain log line with its JSON empty, the others with their data
/// alone as JSON), and a third open changes nothing.
fn older_schema_is_upgraded(config: &Config) {
    let db = sql::ident(&config.database);
    run(config, &version_1(config, &db));
    let opened: Vec<_> = (0..2)
        .map(|_| {
            let config = config.clone();
            thread::spawn(move || ClickhouseStore::open(&config).map(|_| ()))
        })
        .collect();
    for o in opened {
        o.join()
            .unwrap()
            .expect("opening a version 1 store upgrades it");
    }
    let store = ClickhouseStore::open_recording(config).unwrap();
    let expected_columns = "id,commit_id,raw_ts,host,pid,tid,comm,kind,stream,text,req_id,json";
    for table in columns_of_events(&store, config) {
        assert!(table.ends_with(expected_columns), "{table}");
    }
    let version: Vec<Count> = store
        .fetch(&format!(
            "SELECT toUInt64(max(version)) AS n FROM {db}.schema_version"
        ))
        .unwrap();
    assert_eq!(version[0].n, u64::from(SCHEMA_VERSION));
    assert!(
        store.recorded().iter().all(|s| !s.sql.starts_with("ALTER")),
        "an upgraded store was altered again"
    );
    let (old, _) = older_line();
    let (old_exchange, _) = older_exchange();
    let before = vec![old, old_exchange];
    assert_eq!(everything(&store), before);
    // After: a plain line, one with a path, one with an empty request id,
    // and an exchange.
    let plain = Event {
        tid: 9,
        ..conformance::log("new", 2_000, StreamName::Stdout, "after")
    };
    let mut with_path = conformance::log("new", 3_000, StreamName::File, "to a file");
    let mut empty_req = conformance::log("new", 4_000, StreamName::Stdout, "empty id");
    if let EventData::Log {
        path, truncated, ..
    } = &mut with_path.data
    {
        *path = Some("/var/log/app.log".into());
        *truncated = true;
    }
    if let EventData::Log { req_id, .. } = &mut empty_req.data {
        *req_id = Some(String::new());
    }
    let exchange = http("new", HttpSide::Server, 5_000, 1, "r1", None, 80);
    let after = vec![plain, with_path, empty_req, exchange];
    store
        .ingest(conformance::batch("new", 0, after.clone()))
        .unwrap();
    let mut all = before;
    all.extend(after);
    all.sort_by_key(|e| e.ts_ns);
    assert_eq!(everything(&store), all);
    assert_eq!(json_shapes(&store, &db), (1, 2, 3));
}

/// How many `events` rows have no JSON, their whole event's (written
/// before version 3), and their data's alone.
fn json_shapes(store: &ClickhouseStore, db: &str) -> (u64, u64, u64) {
    let count = |cond: &str| {
        store
            .fetch::<Count>(&format!(
                "SELECT toUInt64(count()) AS n FROM {db}.events WHERE {cond}"
            ))
            .unwrap()[0]
            .n
    };
    (
        count("json = ''"),
        count("position(json, '\"ts_ns\":') > 0"),
        count("json != '' AND position(json, '\"ts_ns\":') = 0"),
    )
}

/// A store of version 2 (its `events` columns current, its JSON whole,
/// `batches` without raw times) becomes the current version with no
/// `ALTER` of `events`; what it held reads back as it was, and tails over
/// it, whose batch rows have no raw times.
#[test]
fn a_version_2_store_is_upgraded_without_altering_events() {
    let config = shared().config(&fresh_db());
    let db = sql::ident(&config.database);
    let store = ClickhouseStore::open(&config).unwrap();
    // As version 2 wrote a batch: a plain log line without JSON, an
    // exchange with its whole JSON.
    let line = Event {
        tid: 7,
        comm: "worker".into(),
        ..conformance::log("v2", 1_000, StreamName::Stdout, "plain")
    };
    let (exchange, exchange_json) = older_exchange();
    let exchange = Event {
        host: "v2".into(),
        ..exchange
    };
    let exchange_json = exchange_json.replace("\"host\":\"old\"", "\"host\":\"v2\"");
    let mut statements = vec![
        (None, format!("DROP TABLE {db}.schema_version")),
        // `batches` as version 2 made it, without the raw times.
        (None, format!("DROP TABLE {db}.batches")),
        (
            None,
            format!(
                "CREATE TABLE {db}.batches (host String, run_id String, seq Int64, \
                 commit_id Int64, events UInt32, received_ns Int64) \
                 ENGINE = MergeTree ORDER BY (host, run_id, seq)"
            ),
        ),
    ];
    statements.extend(recorded_version(&db, 2));
    statements.extend([
        (
            None,
            format!(
                "INSERT INTO {db}.events (id, commit_id, raw_ts, host, pid, tid, comm, kind, \
                     stream, text, req_id, json) VALUES (5000, 5000, 1000, 'v2', 7, 7, 'worker', \
                     'log', 'stdout', 'plain', '', ''), (5256, 5000, {}, 'v2', 1, 1, 'node', \
                     'http', '', '', 'r0', {})",
                exchange.ts_ns,
                sql::lit(&exchange_json)
            ),
        ),
        (
            None,
            format!(
                "INSERT INTO {db}.batches (host, run_id, seq, commit_id, events, received_ns) \
                     VALUES ('v2', 'run-1', 0, 5000, 2, 0)"
            ),
        ),
    ]);
    run(&config, &statements);
    drop(store);
    let store = ClickhouseStore::open_recording(&config).unwrap();
    let alters: Vec<String> = store
        .recorded()
        .iter()
        .filter(|s| s.sql.starts_with("ALTER"))
        .map(|s| s.sql.clone())
        .collect();
    assert_eq!(
        alters,
        [
            format!("ALTER TABLE {db}.batches ADD COLUMN min_raw_ts Int64 AFTER received_ns"),
            format!("ALTER TABLE {db}.batches ADD COLUMN max_raw_ts Int64 AFTER min_raw_ts"),
        ],
        "a version 2 store's events need no ALTER"
    );
    let version: Vec<Count> = store
        .fetch(&format!(
            "SELECT toUInt64(max(version)) AS n FROM {db}.schema_version"
        ))
        .unwrap();
    assert_eq!(version[0].n, u64::from(SCHEMA_VERSION));
    assert_eq!(everything(&store), vec![line.clone(), exchange.clone()]);
    assert_eq!(json_shapes(&store, &db), (1, 1, 0));
    // A tail over them: their batch row has no raw times, so it reads
    // without them (`since_cursor`).
    let tailed: Vec<Event> = store
        .since_cursor(EventId::from_raw(0), &Filter::default(), 10)
        .unwrap()
        .into_iter()
        .map(|s| s.event)
        .collect();
    assert_eq!(tailed, vec![line, exchange]);
}

#[test]
fn an_older_schema_is_upgraded_in_place() {
    older_schema_is_upgraded(&shared().config(&fresh_db()));
}

#[test]
fn an_older_schema_is_upgraded_in_place_on_two_shards() {
    older_schema_is_upgraded(&two_shards::config());
}

/// The upgrade's statements (after version 1's, as that tracer sent
/// them) run on a current ClickHouse too.
#[test]
fn the_upgrade_runs_on_a_current_clickhouse_too() {
    let config = shared().config(&fresh_db());
    let db = sql::ident(&config.database);
    let older = version_1(&config, &db);
    run(&config, &older);
    let store = ClickhouseStore::open_recording(&config).unwrap();
    let sent = store.recorded();
    assert!(
        sent.iter().filter(|s| s.sql.starts_with("ALTER")).count() == ADDED.len(),
        "{:#?}",
        sent.iter().map(|s| &s.sql).collect::<Vec<_>>()
    );
    let mut replay: Vec<serde_json::Value> = older
        .iter()
        .map(|(_, sql)| serde_json::json!({"sql": sql, "body": null, "rows": null}))
        .collect();
    replay.extend(sent.iter().map(sent_json));
    replay_on_chdb(&replay);
}
