//! The SQLite backend: one file, `events.sqlite`, in the data directory.
//!
//! Durability: WAL journal with `synchronous=FULL`, so each COMMIT fsyncs
//! the WAL before it returns; a batch acknowledged after its commit
//! survives a crash of the process and of the machine. The WAL is folded
//! into the database by SQLite's automatic checkpoint (every 1000 pages,
//! run by the committing connection) and truncated back to
//! `journal_size_limit` afterwards. docs/aggregator.md has the reasoning.
//!
//! One writer connection behind a mutex (SQLite has one writer at a time
//! anyway); readers take a connection from a small pool, so queries run
//! beside ingest (WAL readers see the last commit and never block it).

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError, mpsc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{
    Connection, OpenFlags, OptionalExtension as _, TransactionBehavior, params, types::Value,
};

use super::sqlite_grep::{self, Matcher};
use super::sqlite_logs::{self, BlockBuilder, LineQuery, SCHEMA_V4, TraceLines};
use super::stitch_sql::{
    TraceMembers, after_ingest, index_event, note_host, retime, trace_members,
};
use super::store::{
    Batch, Filter, HostOffset, IngestOutcome, Position, Query, Result, Store, StoreError, Stored,
    corrected,
};
use crate::event::{Event, EventData};

/// The database file inside the data directory.
pub const DB_FILE: &str = "events.sqlite";
/// Reader connections kept open between queries.
const POOL_MAX: usize = 8;
/// Schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 4;

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

/// An estimated offset is applied to stored events again only when it
/// moves by more than this (each change rewrites the host's events).
pub(super) const RETIME_MIN_NS: i64 = 50_000;

pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    checkpointer: Checkpointer,
}

/// WAL pages after which the writer checkpoints by itself: a backstop for
/// when the checkpoint thread cannot keep up (~40 MiB).
const WRITER_AUTOCHECKPOINT: i64 = 10_000;
/// Least time between two background checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Runs WAL checkpoints on its own thread and connection, so that commits
/// do not wait for them: a checkpoint copies WAL pages into the database
/// and fsyncs it, which SQLite's automatic checkpoint would do inside the
/// committing call. PASSIVE checkpoints never block the writer or readers.
struct Checkpointer {
    poke: Option<mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA busy_timeout=5000;")?;
        let (poke, pokes) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while pokes.recv().is_ok() {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        log::warn!("WAL checkpoint failed (retried after the next commit): {e}");
                    }
                    std::thread::sleep(CHECKPOINT_EVERY);
                }
            })
            .map_err(|e| StoreError::Open(format!("starting the checkpoint thread: {e}")))?;
        Ok(Self {
            poke: Some(poke),
            thread: Some(thread),
        })
    }

    /// After a commit: checkpoint soon (pokes while one runs coalesce).
    fn poke(&self) {
        if let Some(p) = &self.poke {
            let _ = p.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.poke = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection left in a consistent state by a panicking holder (an open
/// transaction rolls back when dropped) stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Whether `f` can match an `events` row: log lines are in blocks
/// (`sqlite_logs`), so a stream or text condition rules rows out.
fn wants_rows(f: &Filter) -> bool {
    f.stream.is_none()
        && f.text.is_none()
        && (f.kinds.is_empty() || f.kinds.iter().any(|k| k != "log"))
}

/// Appends ` AND ...` conditions for `f` to `sql`, over `events` rows
/// (callers check [`wants_rows`] first), with `trace` the members of
/// `f.trace` ([`trace_members`]). Parameters are numbered (`?n`), so
/// callers number theirs after `args.len()`.
fn push_filter(f: &Filter, trace: Option<&TraceMembers>, sql: &mut String, args: &mut Vec<Value>) {
    fn list(sql: &mut String, args: &mut Vec<Value>, col: &str, items: &[String]) {
        sql.push_str(&format!(" AND {col} IN ("));
        for (i, it) in items.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            args.push(Value::Text(it.clone()));
            sql.push_str(&format!("?{}", args.len()));
        }
        sql.push(')');
    }
    let num = |sql: &mut String, args: &mut Vec<Value>, cond: &str, v: i64| {
        args.push(Value::Integer(v));
        sql.push_str(&format!(" AND {cond} ?{}", args.len()));
    };
    if let Some(s) = f.since {
        num(sql, args, "ts_ns >=", s);
    }
    if let Some(u) = f.until {
        num(sql, args, "ts_ns <", u);
    }
    if !f.hosts.is_empty() {
        list(sql, args, "host", &f.hosts);
    }
    if !f.kinds.is_empty() {
        list(sql, args, "kind", &f.kinds);
    }
    if f.trace.is_some() {
        let ids = trace.map_or(&[][..], |m| &m.ids[..]);
        args.push(Value::Text(
            serde_json::to_string(ids).unwrap_or_else(|_| "[]".into()),
        ));
        sql.push_str(&format!(
            " AND id IN (SELECT value FROM json_each(?{}))",
            args.len()
        ));
    }
}

/// Reads `id, ts_ns, json` rows into events with the corrected time.
fn read_rows(stmt: &mut rusqlite::Statement<'_>, args: &[Value]) -> Result<Vec<Stored>> {
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, ts, json) = row?;
        let mut event: Event =
            serde_json::from_str(&json).map_err(|source| StoreError::Corrupt { id, source })?;
        event.ts_ns = u64::try_from(ts).unwrap_or(0);
        out.push(Stored { id, event });
    }
    Ok(out)
}

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
        let event: Event =
            serde_json::from_str(&json).map_err(|source| StoreError::Corrupt { id, source })?;
        if let EventData::Http(h) = &event.data {
            indexed.push(index_event(tx, id, &event.host, raw, h)?);
        }
    }
    after_ingest(tx, &indexed)?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating) `dir/events.sqlite`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open(format!(
                "{}: SQLite refused WAL mode (got {mode}); is the directory on a network \
                 file system?",
                path.display()
            )));
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             PRAGMA journal_size_limit=67108864;
             PRAGMA busy_timeout=5000;",
        )?;
        // 64 MiB of page cache for the writer (SQLite's default is 2 MiB):
        // each batch inserts into every index, and with many hosts the
        // (host, ts) index is written at as many places; keeping those
        // pages cached saved ~12% of the writer's CPU per event.
        conn.execute_batch("PRAGMA cache_size=-65536;")?;
        // Plans must not depend on bound values: otherwise SQLite re-plans
        // some statements (the stitcher's lookup by connection) each time
        // they are bound again, ~7% of the writer's CPU.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Open(format!(
                "{} has schema version {version}; this tracer knows up to {SCHEMA_VERSION}",
                path.display()
            )));
        }
        let mut conn = conn;
        // Creating and upgrading the schema is one transaction: a crash
        // half-way leaves the store as it was.
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
            let moved = sqlite_logs::move_rows_into_blocks(&tx)?;
            log::info!(
                "{}: upgraded from schema version {version}; {moved} log lines moved into blocks",
                path.display()
            );
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        let checkpointer = Checkpointer::start(&path)?;
        Ok(Self {
            path,
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            checkpointer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a pooled read connection.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = lock(&self.readers).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.execute_batch("PRAGMA query_only=1; PRAGMA busy_timeout=5000;")?;
                c
            }
        };
        let out = f(&conn);
        let mut pool = lock(&self.readers);
        if pool.len() < POOL_MAX {
            pool.push(conn);
        }
        out
    }

    fn offset_in(conn: &Connection, host: &str) -> Result<i64> {
        Ok(conn
            .query_row(
                "SELECT offset_ns FROM host_offsets WHERE host = ?",
                [host],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }
}

/// Where a batch's events went: `(id, corrected ts)` for each, in order;
/// None when the batch was a duplicate.
type Placed = Option<Vec<(i64, i64)>>;

impl SqliteStore {
    /// Stores one batch on `conn` (inside the caller's transaction): the
    /// dedupe row, its events, the stitching. Returns each event's id and
    /// corrected time, or None for a duplicate. The batch is only read, so
    /// that a group whose transaction fails can be stored again batch by
    /// batch.
    fn ingest_in(&self, conn: &Connection, batch: &Batch, next_id: &mut i64) -> Result<Placed> {
        let seq = i64::try_from(batch.seq).unwrap_or(i64::MAX);
        let new = conn
            .prepare_cached(
                "INSERT OR IGNORE INTO batches (host, run_id, seq, events, received_ns)
                 VALUES (?, ?, ?, ?, ?)",
            )?
            .execute(params![
                batch.host,
                batch.run_id,
                seq,
                i64::try_from(batch.events.len()).unwrap_or(i64::MAX),
                now_ns()
            ])?;
        if new == 0 {
            return Ok(None);
        }
        let offset = Self::offset_in(conn, &batch.host)?;
        let mut stored = Vec::with_capacity(batch.events.len());
        let mut new_http = Vec::new();
        {
            let mut insert = conn.prepare_cached(
                "INSERT INTO events
                 (id, ts_ns, raw_ts_ns, offset_ns, host, pid, kind, req_id, json)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?;
            // One buffer for every event's JSON (the events are all
            // serialised, one at a time).
            let mut json = Vec::with_capacity(512);
            let mut block = BlockBuilder::default();
            for event in &batch.events {
                let id = *next_id;
                *next_id += 1;
                let raw = i64::try_from(event.ts_ns).unwrap_or(i64::MAX);
                let ts = corrected(raw, offset);
                if stored.is_empty() {
                    note_host(conn, &event.host, id)?;
                }
                stored.push((id, raw, ts));
                if let EventData::Log { .. } = &event.data {
                    block.push(conn, event, id, raw, offset)?;
                    continue;
                }
                json.clear();
                serde_json::to_writer(&mut json, event)
                    .map_err(|source| StoreError::Corrupt { id, source })?;
                // serde_json writes UTF-8.
                let json = std::str::from_utf8(&json).unwrap_or_default();
                let req_id = match &event.data {
                    EventData::Http(h) => Some(h.req_id.as_str()),
                    _ => None,
                };
                insert.execute(params![
                    id,
                    ts,
                    raw,
                    offset,
                    event.host,
                    event.pid,
                    event.data.kind(),
                    req_id,
                    json
                ])?;
                if let EventData::Http(h) = &event.data {
                    new_http.push(index_event(conn, id, &event.host, raw, h)?);
                }
            }
            // Before stitching, which may re-time the host's blocks too.
            block.flush(conn)?;
        }
        // Links, offsets and traces.
        let retimed = after_ingest(conn, &new_http)?;
        let moved_to = retimed.get(&batch.host).copied();
        Ok(Some(
            stored
                .into_iter()
                .map(|(id, raw, ts)| (id, moved_to.map_or(ts, |off| corrected(raw, off))))
                .collect(),
        ))
    }

    /// The id after the last event stored, rows and log lines alike.
    fn next_id(conn: &Connection) -> Result<i64> {
        let rows: i64 =
            conn.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?;
        Ok(rows.max(sqlite_logs::last_id(conn)?) + 1)
    }

    /// Stores `batches` in one transaction on `conn`: their outcomes, or
    /// the first error (the caller rolls the whole group back).
    fn ingest_group(&self, conn: &mut Connection, batches: &[Batch]) -> Result<Vec<Placed>> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Ids are given here rather than by SQLite: log lines have no row.
        let mut next_id = Self::next_id(&tx)?;
        let mut out = Vec::with_capacity(batches.len());
        for batch in batches {
            out.push(self.ingest_in(&tx, batch, &mut next_id)?);
        }
        tx.commit().map_err(|e| StoreError::Commit(e.to_string()))?;
        Ok(out)
    }
}

impl SqliteStore {
    /// The exchanges of `f.trace`'s trace, when it has one.
    fn members(conn: &Connection, f: &Filter) -> Result<Option<TraceMembers>> {
        f.trace
            .as_deref()
            .map(|t| trace_members(conn, t))
            .transpose()
    }

    /// Runs `f` with the block-side view of a filter: its compiled text
    /// pattern and its trace's requests.
    fn with_lines<T>(
        f: &Filter,
        members: Option<&TraceMembers>,
        as_of: Option<i64>,
        after_id: Option<i64>,
        run: impl FnOnce(&LineQuery<'_>) -> Result<T>,
    ) -> Result<T> {
        let matcher = f.text.as_ref().map(Matcher::new).transpose()?;
        let none = std::collections::HashSet::new();
        let trace = f.trace.as_deref().map(|id| TraceLines {
            id,
            reqs: members.map_or(&none, |m| &m.reqs),
        });
        run(&LineQuery {
            filter: f,
            matcher: matcher.as_ref(),
            trace,
            as_of,
            after_id,
        })
    }
}

impl Store for SqliteStore {
    fn ingest(&self, batch: Batch) -> Result<IngestOutcome> {
        self.ingest_many(vec![batch])
            .pop()
            .unwrap_or_else(|| Err(StoreError::Commit("no outcome".into())))
    }

    /// Group commit: one transaction (one WAL fsync) for all the batches.
    /// With `synchronous=FULL` the fsync is most of a small commit's cost
    /// (~5 ms on this machine class), so batches that arrive together
    /// share it. A duplicate inserts nothing, so it needs no rollback. If
    /// anything fails, the group is rolled back and stored again one batch
    /// per transaction, so only the failing batch gets the error. (A
    /// savepoint per batch would do the same without the retry, but it
    /// makes SQLite copy every page a batch touches into a sub-journal
    /// first: ~15% of the writer's CPU, measured.)
    fn ingest_many(&self, batches: Vec<Batch>) -> Vec<Result<IngestOutcome>> {
        let mut conn = lock(&self.writer);
        let results: Vec<Result<Placed>> = match self.ingest_group(&mut conn, &batches) {
            Ok(all) => all.into_iter().map(Ok).collect(),
            Err(e) if batches.len() == 1 => vec![Err(e)],
            Err(e) => {
                log::warn!(
                    "storing a group of {} batches failed ({e}); storing them one by one",
                    batches.len()
                );
                batches
                    .chunks(1)
                    .map(|one| {
                        self.ingest_group(&mut conn, one)
                            .map(|mut v| v.pop().flatten())
                    })
                    .collect()
            }
        };
        drop(conn);
        self.checkpointer.poke();
        batches
            .into_iter()
            .zip(results)
            .map(|(batch, result)| {
                Ok(match result? {
                    None => IngestOutcome {
                        duplicate: true,
                        stored: Vec::new(),
                    },
                    Some(times) => IngestOutcome {
                        duplicate: false,
                        stored: batch
                            .events
                            .into_iter()
                            .zip(times)
                            .map(|(mut event, (id, ts))| {
                                event.ts_ns = u64::try_from(ts).unwrap_or(0);
                                Stored { id, event }
                            })
                            .collect(),
                    },
                })
            })
            .collect()
    }

    /// Rows (every kind but log) from SQL and log lines from the blocks,
    /// each a sorted page of at most `limit`, merged.
    fn query(&self, q: &Query) -> Result<Vec<Stored>> {
        self.read(|c| {
            let members = Self::members(c, &q.filter)?;
            let mut out = Vec::new();
            if wants_rows(&q.filter) {
                let mut sql = String::from("SELECT id, ts_ns, json FROM events WHERE 1=1");
                let mut args = Vec::new();
                push_filter(&q.filter, members.as_ref(), &mut sql, &mut args);
                if let Some(as_of) = q.as_of {
                    args.push(Value::Integer(as_of));
                    sql.push_str(&format!(" AND id <= ?{}", args.len()));
                }
                let (cmp, dir) = if q.newest_first {
                    ("<", "DESC")
                } else {
                    (">", "ASC")
                };
                if let Some(p) = q.after {
                    args.push(Value::Integer(p.ts_ns));
                    args.push(Value::Integer(p.id));
                    let n = args.len();
                    sql.push_str(&format!(" AND (ts_ns, id) {cmp} (?{}, ?{n})", n - 1));
                }
                args.push(Value::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));
                sql.push_str(&format!(
                    " ORDER BY ts_ns {dir}, id {dir} LIMIT ?{}",
                    args.len()
                ));
                let mut stmt = c.prepare_cached(&sql)?;
                out = read_rows(&mut stmt, &args)?;
            }
            let lines = Self::with_lines(&q.filter, members.as_ref(), q.as_of, None, |lq| {
                sqlite_logs::query(c, q, lq)
            })?;
            if !lines.is_empty() {
                out.extend(lines);
                let key = |s: &Stored| {
                    let p = Position::from(s);
                    (p.ts_ns, p.id)
                };
                if q.newest_first {
                    out.sort_by_key(|s| std::cmp::Reverse(key(s)));
                } else {
                    out.sort_by_key(key);
                }
                out.truncate(q.limit);
            }
            Ok(out)
        })
    }

    fn count(&self, f: &Filter) -> Result<u64> {
        self.read(|c| {
            let members = Self::members(c, f)?;
            let mut n = 0u64;
            if wants_rows(f) {
                let mut sql = String::from("SELECT count(*) FROM events WHERE 1=1");
                let mut args = Vec::new();
                push_filter(f, members.as_ref(), &mut sql, &mut args);
                let rows: i64 =
                    c.query_row(&sql, rusqlite::params_from_iter(&args), |r| r.get(0))?;
                n += u64::try_from(rows).unwrap_or(0);
            }
            // A grep with no condition but hosts: every core scans.
            let only_text = Filter {
                text: f.text.clone(),
                hosts: f.hosts.clone(),
                kinds: f.kinds.iter().filter(|k| *k == "log").cloned().collect(),
                ..Filter::default()
            };
            if let Some(t) = &f.text
                && *f == only_text
            {
                let threads = std::thread::available_parallelism().map_or(2, usize::from);
                let (found, stats) = sqlite_grep::count(c, &Matcher::new(t)?, f, threads)?;
                log::debug!(
                    "grep -c {:?}: {} blocks, {} bytes scanned",
                    t.pattern,
                    stats.blocks,
                    stats.bytes
                );
                return Ok(n + found);
            }
            Ok(n + Self::with_lines(f, members.as_ref(), None, None, |lq| {
                sqlite_logs::count(c, lq)
            })?)
        })
    }

    fn since_cursor(&self, cursor: i64, f: &Filter, limit: usize) -> Result<Vec<Stored>> {
        self.read(|c| {
            let members = Self::members(c, f)?;
            let mut out = Vec::new();
            if wants_rows(f) {
                let mut sql = String::from("SELECT id, ts_ns, json FROM events WHERE 1=1");
                let mut args = Vec::new();
                push_filter(f, members.as_ref(), &mut sql, &mut args);
                args.push(Value::Integer(cursor));
                sql.push_str(&format!(" AND id > ?{}", args.len()));
                args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
                sql.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
                let mut stmt = c.prepare_cached(&sql)?;
                out = read_rows(&mut stmt, &args)?;
            }
            let lines = Self::with_lines(f, members.as_ref(), None, Some(cursor), |lq| {
                sqlite_logs::since(c, lq, limit)
            })?;
            if !lines.is_empty() {
                out.extend(lines);
                out.sort_by_key(|s| s.id);
                out.truncate(limit);
            }
            Ok(out)
        })
    }

    fn cursor(&self) -> Result<i64> {
        self.read(|c| Ok(Self::next_id(c)? - 1))
    }

    fn host_offset(&self, host: &str) -> Result<i64> {
        self.read(|c| Self::offset_in(c, host))
    }

    fn set_host_offset(&self, host: &str, offset_ns: i64) -> Result<()> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO host_offsets (host, offset_ns, updated_ns) VALUES (?, ?, ?)
             ON CONFLICT (host) DO UPDATE SET offset_ns = excluded.offset_ns,
                                              updated_ns = excluded.updated_ns",
            params![host, offset_ns, now_ns()],
        )?;
        retime(&tx, host, offset_ns)?;
        tx.commit()?;
        Ok(())
    }

    fn offsets(&self) -> Result<Vec<HostOffset>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT host, offset_ns, pairs, reference, updated_ns FROM host_offsets
                 ORDER BY host",
            )?;
            let rows = st.query_map([], |r| {
                Ok(HostOffset {
                    host: r.get(0)?,
                    offset_ns: r.get(1)?,
                    pairs: r.get(2)?,
                    reference: r.get(3)?,
                    updated_ns: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn series(&self, q: &super::series::SeriesQuery) -> Result<super::series::Series> {
        self.read(|c| super::sqlite_series::series(c, q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregator::store::{TextMatch, stream_name},
        event::{HttpExchange, HttpSide, StreamName, Tuple},
    };

    fn log(host: &str, ts: u64, stream: StreamName, text: &str) -> Event {
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

    fn batch(host: &str, seq: u64, events: Vec<Event>) -> Batch {
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

    fn all(limit: usize) -> Query {
        Query {
            limit,
            ..Query::default()
        }
    }

    /// Two hosts whose events interleave in time.
    fn two_hosts(store: &SqliteStore) {
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

    #[test]
    fn ingest_dedupes_by_host_run_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
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
        let store = SqliteStore::open(dir.path()).unwrap();
        assert!(
            store
                .ingest(batch("a", 3, vec![log("a", 1, StreamName::Stdout, "x")]))
                .unwrap()
                .duplicate
        );
        assert_eq!(store.count(&Filter::default()).unwrap(), 3);
    }

    #[test]
    fn query_orders_by_time_then_commit_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
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
            kinds: vec!["gc".into()],
            ..Filter::default()
        };
        assert_eq!(store.count(&kinds).unwrap(), 1);
        let stderr = Filter {
            stream: Some("stderr".into()),
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

    #[test]
    fn grep_with_regex_and_case_folding() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
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

    #[test]
    fn since_cursor_follows_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.cursor().unwrap(), 0);
        two_hosts(&store);
        let c = store.cursor().unwrap();
        let rows = store.since_cursor(0, &Filter::default(), 100).unwrap();
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

    #[test]
    fn host_offset_applies_at_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
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
        let raw: i64 = lock(&store.writer)
            .query_row(
                "SELECT min_raw FROM log_blocks WHERE host = 'slow'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(raw, 5);
    }

    #[test]
    fn trace_links_logs_to_their_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
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
        let f = Filter {
            trace: Some(tid.into()),
            ..Filter::default()
        };
        assert_eq!(store.count(&f).unwrap(), 3);
        let by_req = Filter {
            trace: Some("r1".into()),
            ..Filter::default()
        };
        assert_eq!(store.count(&by_req).unwrap(), 3);
    }

    #[test]
    fn ingest_many_commits_each_batch_whole_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let b =
            |seq, text: &str| batch("a", seq, vec![log("a", seq + 1, StreamName::Stdout, text)]);
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
                            s.id,
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
            before.iter().map(|s| s.id).max().unwrap() + 1
        );
    }

    #[test]
    fn grep_pages_and_new_lines_after_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
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

    #[test]
    fn many_matching_lines_count_and_page() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
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
            stream: Some("stdout".into()),
            ..f("hit$")
        };
        assert_eq!(store.count(&stdout).unwrap(), n);
        assert_eq!(store.count(&f(r"^line 1\d{5} ")).unwrap(), 500);
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
}
