//! The SQLite store: the conformance suite (`super::super::conformance`)
//! on a temporary directory, and what only SQLite has (its pragmas, its
//! upgrades, a statement refused half-way through a group).

use super::{schema::SCHEMA_VERSION, *};
use crate::{
    aggregator::{
        conformance::{Backend, all, batch, log, store_conformance_suite, two_hosts},
        store::{TextMatch, stream_name},
    },
    event::StreamName,
};

/// A temporary directory; each `open` opens the store in it again.
struct Sqlite(tempfile::TempDir);

impl Backend for Sqlite {
    type S = SqliteStore;
    fn open(&self) -> SqliteStore {
        SqliteStore::open(self.0.path()).unwrap()
    }
}

store_conformance_suite!(Sqlite(tempfile::tempdir().unwrap()));

#[test]
fn a_failing_batch_fails_alone_in_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    // A batch SQLite refuses half-way (as a full disk would).
    lock(&store.writer)
        .execute_batch(
            "CREATE TEMP TRIGGER refuse BEFORE INSERT ON main.log_blocks
                 WHEN CAST(NEW.text AS TEXT) LIKE '%refused%'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
    let b = |seq, texts: &[&str]| {
        batch(
            "a",
            seq,
            texts
                .iter()
                .map(|t| log("a", seq + 1, StreamName::Stdout, t))
                .collect(),
        )
    };
    let out = store.ingest_many(vec![
        b(0, &["one"]),
        b(1, &["fine", "refused"]),
        b(2, &["two", "three"]),
    ]);
    assert_eq!(out[0].as_ref().unwrap().stored.len(), 1);
    assert!(out[1].as_ref().unwrap_err().to_string().contains("refused"));
    assert_eq!(out[2].as_ref().unwrap().stored.len(), 2);
    // Nothing of the failed batch is stored, not even its dedupe row:
    // sent again, it is stored (here it fails again, whole).
    assert_eq!(store.count(&Filter::default()).unwrap(), 3);
    assert!(store.ingest(b(1, &["fine", "refused"])).is_err());
    assert!(!store.ingest(b(1, &["fine", "now"])).unwrap().duplicate);
    assert_eq!(store.count(&Filter::default()).unwrap(), 5);
}

#[test]
fn upgrade_to_v4_moves_log_rows_into_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    two_hosts(&store);
    store.set_host_offset("b", 3).unwrap();
    let before = store.query(&all(100)).unwrap();
    {
        // As version 3 left it: log lines as rows, blocks of text only.
        let c = lock(&store.writer);
        for s in &before {
            if let EventData::Log { text, stream, .. } = &s.event.data {
                let off: i64 = if s.event.host == "b" { 3 } else { 0 };
                let ts = i64::try_from(s.event.ts_ns).unwrap();
                let mut raw = s.event.clone();
                raw.ts_ns = u64::try_from(ts - off).unwrap();
                c.execute(
                    "INSERT INTO events (id, ts_ns, raw_ts_ns, offset_ns, host, pid, kind,
                                             stream, text, json)
                         VALUES (?, ?, ?, ?, ?, 7, 'log', ?, ?, ?)",
                    params![
                        s.id.raw(),
                        ts,
                        ts - off,
                        off,
                        s.event.host,
                        stream_name(*stream),
                        text,
                        serde_json::to_string(&raw).unwrap()
                    ],
                )
                .unwrap();
            }
        }
        c.execute_batch(
            "DROP TABLE log_blocks; DROP TABLE log_reqs;
                 CREATE TABLE log_blocks (id INTEGER PRIMARY KEY, text BLOB);
                 PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    drop(store);
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.query(&all(100)).unwrap(), before);
    let grep = Filter {
        text: Some(TextMatch {
            pattern: "error".into(),
            case_insensitive: true,
        }),
        ..Filter::default()
    };
    assert_eq!(store.count(&grep).unwrap(), 2);
    let rows: i64 = lock(&store.writer)
        .query_row("SELECT count(*) FROM events WHERE kind = 'log'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(rows, 0);
    let v: i64 = lock(&store.writer)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    // New ids continue after the moved lines.
    let next = store
        .ingest(batch(
            "a",
            9,
            vec![log("a", 60, StreamName::Stdout, "later")],
        ))
        .unwrap();
    assert_eq!(
        next.stored[0].id,
        EventId::from_raw(before.iter().map(|s| s.id.raw()).max().unwrap() + 1)
    );
}

#[test]
fn wal_and_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let c = lock(&store.writer);
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "synchronous=FULL");
}
