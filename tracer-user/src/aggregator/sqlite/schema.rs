//! The SQLite store's schema and its upgrades (`PRAGMA user_version`):
//! version 1 events and batches, 2 cross-host stitching, 3 grep blocks,
//! 4 log lines as blocks (`logs.rs`). Every upgrade runs in the
//! transaction that opens the store.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::{
    logs::SCHEMA_V4,
    stitch::{after_ingest, index_event},
};
use crate::{
    aggregator::store::{EventId, Result, StoreError},
    event::{Event, EventData},
};

/// Schema version in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY,      -- commit order (one writer: increasing)
    ts_ns     INTEGER NOT NULL,         -- corrected: raw_ts_ns + offset_ns
    raw_ts_ns INTEGER NOT NULL,         -- as the agent sent it
    offset_ns INTEGER NOT NULL,         -- host_offset(host) at ingest
    host      TEXT NOT NULL,
    pid       INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    stream    TEXT,                     -- log: stdout | stderr | file
    text      TEXT,                     -- log: the line
    req_id    TEXT,                     -- log, http: tracer's request id
    trace_id  TEXT,                     -- W3C trace id or x-request-id
    json      TEXT NOT NULL             -- the event as received
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts_ns);
CREATE TABLE IF NOT EXISTS batches (
    host        TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    events      INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    PRIMARY KEY (host, run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS host_offsets (
    host       TEXT PRIMARY KEY,
    offset_ns  INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 2: cross-host stitching (docs/aggregator.md, "Stitching").
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS hosts (
    host     TEXT PRIMARY KEY,
    first_id INTEGER NOT NULL          -- first event stored: who is seen first
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS http_index (
    id            INTEGER PRIMARY KEY, -- events.id of an http event
    host          TEXT NOT NULL,
    side          TEXT NOT NULL,       -- client | server
    conn          TEXT NOT NULL,       -- stitch::conn_key: cip:cport>sip:sport
    start_ns      INTEGER NOT NULL,    -- raw (the host's own clock)
    end_ns        INTEGER NOT NULL,
    req_id        TEXT NOT NULL,
    parent_req_id TEXT,
    own_trace     TEXT NOT NULL        -- traceparent's trace id, x-request-id, or req_id
);
-- Every lookup by connection is for one side; with the host in the index
-- too, the lookup of who was on the other end reads no table rows.
CREATE INDEX IF NOT EXISTS http_conn_side ON http_index(conn, side, start_ns, host);
CREATE INDEX IF NOT EXISTS http_host_side ON http_index(host, side);
CREATE INDEX IF NOT EXISTS http_req_id ON http_index(req_id);
CREATE INDEX IF NOT EXISTS http_parent ON http_index(host, parent_req_id)
    WHERE parent_req_id IS NOT NULL;
-- Every index on random keys (connections, request and trace ids) costs
-- ingest a page write per event and commit, so there is one per lookup:
-- (conn) and (conn, start_ns) are served by http_conn_side; requests are
-- found by id through http_req_id, for the events rows too; and a host's
-- rows in time order come from events_ts (log lines, most of a host's
-- events, are in blocks).
DROP INDEX IF EXISTS http_conn;
DROP INDEX IF EXISTS http_conn_start;
DROP INDEX IF EXISTS http_req;
DROP INDEX IF EXISTS events_req;
DROP INDEX IF EXISTS events_host_ts;
-- Traces are resolved when asked for (stitch_sql::trace_members): no
-- trace id is kept per event, and an own trace that is not the req_id
-- (a traceparent's or an x-request-id) has an index of its own.
DROP INDEX IF EXISTS events_trace;
CREATE INDEX IF NOT EXISTS http_own ON http_index(own_trace) WHERE own_trace != req_id;
-- A request's logpoint hits, for its trace (its log lines are found
-- through the blocks' request lists); logpoints are rare, so the index is
-- small and costs ingest nothing for the other kinds.
CREATE INDEX IF NOT EXISTS events_logpoint_req ON events(req_id) WHERE kind = 'logpoint';
CREATE TABLE IF NOT EXISTS links (
    client      INTEGER PRIMARY KEY,   -- http_index.id (side client)
    server      INTEGER NOT NULL UNIQUE,
    client_host TEXT NOT NULL,
    server_host TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS links_hosts ON links(client_host, server_host);
CREATE TABLE IF NOT EXISTS host_pairs (
    client_host TEXT NOT NULL,
    server_host TEXT NOT NULL,
    theta_ns    INTEGER NOT NULL,      -- server clock minus client clock
    pairs       INTEGER NOT NULL,
    PRIMARY KEY (client_host, server_host)
) WITHOUT ROWID;
";

/// Upgrading a version 1 store: index its HTTP exchanges and stitch them.
fn backfill(tx: &Connection) -> Result<()> {
    tx.execute_batch(
        "INSERT OR IGNORE INTO hosts (host, first_id)
         SELECT host, min(id) FROM events GROUP BY host",
    )?;
    let rows: Vec<(i64, i64, String)> = tx
        .prepare("SELECT id, raw_ts_ns, json FROM events WHERE kind = 'http' ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut indexed = Vec::with_capacity(rows.len());
    for (id, raw, json) in rows {
        let event: Event = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
            id: EventId::from_raw(id),
            source,
        })?;
        if let EventData::Http(h) = &event.data {
            indexed.push(index_event(tx, id, &event.host, raw, h)?);
        }
    }
    after_ingest(tx, &indexed)?;
    Ok(())
}

/// Creates the tables of a new store, or upgrades an older one in place,
/// in one transaction: a crash half-way leaves the store as it was.
pub fn create_or_upgrade(conn: &mut Connection, path: &Path) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Open(format!(
            "{} has schema version {version}; this tracer knows up to {SCHEMA_VERSION}",
            path.display()
        )));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let upgrading = (1..SCHEMA_VERSION).contains(&version);
    if upgrading {
        // Before version 4 blocks held only the text of lines that
        // were rows; they are rebuilt from the rows below.
        tx.execute_batch("DROP TABLE IF EXISTS log_blocks; DROP TABLE IF EXISTS log_reqs;")?;
    }
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(SCHEMA_V2)?;
    tx.execute_batch(SCHEMA_V4)?;
    let cols: Vec<String> = tx
        .prepare("SELECT name FROM pragma_table_info('host_offsets')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if !cols.iter().any(|c| c == "pairs") {
        tx.execute_batch(
            "ALTER TABLE host_offsets ADD COLUMN pairs INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE host_offsets ADD COLUMN reference TEXT;",
        )?;
    }
    if version == 1 {
        backfill(&tx)?;
    }
    if upgrading {
        let moved = super::logs::move_rows_into_blocks(&tx)?;
        log::info!(
            "{}: upgraded from schema version {version}; {moved} log lines moved into blocks",
            path.display()
        );
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}
