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

use regex::Regex;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension as _, TransactionBehavior,
    functions::FunctionFlags,
    params,
    types::{Value, ValueRef},
};

use super::sqlite_grep::{self, BlockBuilder, Matcher, Matches, SCHEMA_V3};
use super::stitch_sql::{after_ingest, index_event, note_host, own_trace, retime};
use super::store::{
    Batch, Filter, HostOffset, IngestOutcome, Query, Result, Store, StoreError, Stored, TextMatch,
    corrected, stream_name,
};
use crate::event::{Event, EventData};

/// The database file inside the data directory.
pub const DB_FILE: &str = "events.sqlite";
/// Reader connections kept open between queries.
const POOL_MAX: usize = 8;
/// Schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;

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
CREATE INDEX IF NOT EXISTS events_host_ts ON events(host, ts_ns);
CREATE INDEX IF NOT EXISTS events_trace ON events(trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_req ON events(req_id) WHERE req_id IS NOT NULL;
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
CREATE INDEX IF NOT EXISTS http_conn_start ON http_index(conn, start_ns);
CREATE INDEX IF NOT EXISTS http_host_side ON http_index(host, side);
CREATE INDEX IF NOT EXISTS http_req ON http_index(host, req_id);
CREATE INDEX IF NOT EXISTS http_parent ON http_index(host, parent_req_id)
    WHERE parent_req_id IS NOT NULL;
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
    /// The last grep's matches, so that its next pages (and a repeat)
    /// only scan the blocks stored since.
    grep_cache: Mutex<Option<GrepCache>>,
    /// Bumped whenever stored times move (a re-timed host), which can move
    /// blocks into or out of a cached grep's time range.
    retimes: std::sync::atomic::AtomicU64,
}

/// Past this many matching lines a grep filters row by row in SQL
/// (`tracer_match`) instead of by id: a frequent pattern fills a page of
/// the answer within the first rows in time order, where a list of
/// millions of ids would have to be built and joined for every page.
const GREP_MAX_IDS: usize = 100_000;

struct GrepCache {
    key: GrepKey,
    last_block: i64,
    found: std::sync::Arc<Matches>,
}

/// What a grep's block scan depends on.
#[derive(PartialEq)]
struct GrepKey {
    pattern: String,
    case_insensitive: bool,
    hosts: Vec<String>,
    since: Option<i64>,
    until: Option<i64>,
    retimes: u64,
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

/// `tracer_match(pattern, text)`: the `regex` crate over log text, row by
/// row, for greps matching too many lines to list by id. The compiled
/// regex is cached per statement by SQLite (auxdata).
fn register_match(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "tracer_match",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let re = ctx.get_or_create_aux(0, |pattern| -> Result<Regex, StoreError> {
                let pattern = pattern.as_str().map_err(|e| {
                    StoreError::Open(format!("tracer_match pattern is not text: {e}"))
                })?;
                Ok(TextMatch {
                    pattern: pattern.to_owned(),
                    case_insensitive: false,
                }
                .compile()?)
            })?;
            Ok(match ctx.get_raw(1) {
                ValueRef::Text(t) => std::str::from_utf8(t).is_ok_and(|s| re.is_match(s)),
                _ => false,
            })
        },
    )
}

/// The pattern as passed to `tracer_match` (case folding as an inline flag,
/// so one SQL parameter carries both).
fn sql_pattern(t: &TextMatch) -> String {
    if t.case_insensitive {
        format!("(?i:{})", t.pattern)
    } else {
        t.pattern.clone()
    }
}

/// Appends ` AND ...` conditions for `f` to `sql`. A text filter comes as
/// what the block scan found (`SqliteStore::grep_ids`): the ids of the
/// matching lines, or, for a frequent pattern, the regex row by row.
fn push_filter(f: &Filter, found: Option<&Matches>, sql: &mut String, args: &mut Vec<Value>) {
    fn list(sql: &mut String, args: &mut Vec<Value>, col: &str, items: &[String]) {
        sql.push_str(&format!(" AND {col} IN ("));
        for (i, it) in items.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ",?" });
            args.push(Value::Text(it.clone()));
        }
        sql.push(')');
    }
    if let Some(s) = f.since {
        sql.push_str(" AND ts_ns >= ?");
        args.push(Value::Integer(s));
    }
    if let Some(u) = f.until {
        sql.push_str(" AND ts_ns < ?");
        args.push(Value::Integer(u));
    }
    if !f.hosts.is_empty() {
        list(sql, args, "host", &f.hosts);
    }
    if !f.kinds.is_empty() {
        list(sql, args, "kind", &f.kinds);
    }
    if let Some(t) = &f.trace {
        // A trace id, or any req_id in it (then the whole trace).
        sql.push_str(
            " AND (trace_id = ? OR req_id = ? OR trace_id IN \
             (SELECT trace_id FROM events WHERE req_id = ? AND kind = 'http' \
              AND trace_id IS NOT NULL))",
        );
        args.push(Value::Text(t.clone()));
        args.push(Value::Text(t.clone()));
        args.push(Value::Text(t.clone()));
    }
    if f.stream.is_some() || f.text.is_some() {
        sql.push_str(" AND kind = 'log'");
    }
    if let Some(s) = &f.stream {
        sql.push_str(" AND stream = ?");
        args.push(Value::Text(s.clone()));
    }
    if let Some(t) = &f.text {
        let Some(Matches::Ids(ids)) = found else {
            sql.push_str(" AND tracer_match(?, text)");
            args.push(Value::Text(sql_pattern(t)));
            return;
        };
        let mut list = String::with_capacity(ids.len() * 9 + 2);
        list.push('[');
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                list.push(',');
            }
            list.push_str(&id.to_string());
        }
        list.push(']');
        sql.push_str(" AND id IN (SELECT value FROM json_each(?))");
        args.push(Value::Text(list));
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
fn backfill(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "INSERT OR IGNORE INTO hosts (host, first_id)
         SELECT host, min(id) FROM events GROUP BY host",
    )?;
    let rows: Vec<(i64, i64, String)> = tx
        .prepare("SELECT id, raw_ts_ns, json FROM events WHERE kind = 'http' ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut ids = Vec::with_capacity(rows.len());
    for (id, raw, json) in rows {
        let event: Event =
            serde_json::from_str(&json).map_err(|source| StoreError::Corrupt { id, source })?;
        if let EventData::Http(h) = &event.data {
            index_event(&tx, id, &event.host, raw, h)?;
            ids.push(id);
        }
    }
    after_ingest(&tx, &ids)?;
    tx.commit()?;
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
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(SCHEMA_V2)?;
        conn.execute_batch(SCHEMA_V3)?;
        let cols: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('host_offsets')")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !cols.iter().any(|c| c == "pairs") {
            conn.execute_batch(
                "ALTER TABLE host_offsets ADD COLUMN pairs INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE host_offsets ADD COLUMN reference TEXT;",
            )?;
        }
        let mut conn = conn;
        if version == 1 {
            backfill(&mut conn)?;
        }
        if (1..3).contains(&version) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            sqlite_grep::backfill(&tx)?;
            tx.commit()?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let checkpointer = Checkpointer::start(&path)?;
        Ok(Self {
            path,
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            checkpointer,
            grep_cache: Mutex::new(None),
            retimes: std::sync::atomic::AtomicU64::new(0),
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
                register_match(&c)?;
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
    fn ingest_in(&self, conn: &Connection, batch: &Batch) -> Result<Placed> {
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
                 (ts_ns, raw_ts_ns, offset_ns, host, pid, kind, stream, text, req_id, trace_id, json)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?;
            let mut trace_of_req = conn.prepare_cached(
                "SELECT trace_id FROM events
                 WHERE req_id = ? AND host = ? AND kind = 'http' AND trace_id IS NOT NULL
                 LIMIT 1",
            )?;
            // One buffer for every event's JSON (the events are all
            // serialised, one at a time).
            let mut json = Vec::with_capacity(512);
            let mut block = BlockBuilder::default();
            for event in &batch.events {
                json.clear();
                serde_json::to_writer(&mut json, event)
                    .map_err(|source| StoreError::Corrupt { id: 0, source })?;
                // serde_json writes UTF-8.
                let json = std::str::from_utf8(&json).unwrap_or_default();
                let raw = i64::try_from(event.ts_ns).unwrap_or(i64::MAX);
                let ts = corrected(raw, offset);
                let (stream, text, req_id, trace_id) = match &event.data {
                    EventData::Log {
                        stream,
                        text,
                        req_id,
                        ..
                    } => {
                        let trace = match req_id {
                            Some(r) => trace_of_req
                                .query_row(params![r, event.host], |row| row.get(0))
                                .optional()?,
                            None => None,
                        };
                        (
                            Some(stream_name(*stream)),
                            Some(text.as_str()),
                            req_id.clone(),
                            trace,
                        )
                    }
                    EventData::Http(h) => (None, None, Some(h.req_id.clone()), Some(own_trace(h))),
                    _ => (None, None, None, None),
                };
                insert.execute(params![
                    ts,
                    raw,
                    offset,
                    event.host,
                    event.pid,
                    event.data.kind(),
                    stream,
                    text,
                    req_id,
                    trace_id,
                    json
                ])?;
                let id = conn.last_insert_rowid();
                if stored.is_empty() {
                    note_host(conn, &event.host, id)?;
                }
                match &event.data {
                    EventData::Http(h) => {
                        new_http.push(id);
                        index_event(conn, id, &event.host, raw, h)?;
                    }
                    EventData::Log { text, .. } => {
                        block.push(conn, &event.host, id, ts, raw, text)?;
                    }
                    _ => {}
                }
                stored.push((id, raw, ts));
            }
            // Before stitching, which may re-time the host's blocks too.
            block.flush(conn)?;
        }
        // Links, offsets and traces (log lines stored before their exchange
        // join its trace here too).
        let retimed = after_ingest(conn, &new_http)?;
        if !retimed.is_empty() {
            self.retimes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let moved_to = retimed.get(&batch.host).copied();
        Ok(Some(
            stored
                .into_iter()
                .map(|(id, raw, ts)| (id, moved_to.map_or(ts, |off| corrected(raw, off))))
                .collect(),
        ))
    }

    /// Stores `batches` in one transaction on `conn`: their outcomes, or
    /// the first error (the caller rolls the whole group back).
    fn ingest_group(&self, conn: &mut Connection, batches: &[Batch]) -> Result<Vec<Placed>> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(batches.len());
        for batch in batches {
            out.push(self.ingest_in(&tx, batch)?);
        }
        tx.commit().map_err(|e| StoreError::Commit(e.to_string()))?;
        Ok(out)
    }
}

impl SqliteStore {
    /// The log lines matching `f.text` (None without one), from the block
    /// scan (`sqlite_grep`). The last grep is cached, so the pages of one
    /// answer scan only blocks stored since the first. Without
    /// `need_count`, a scan stops once the pattern is known to be frequent
    /// (the query then filters row by row).
    fn grep_ids(&self, f: &Filter, need_count: bool) -> Result<Option<std::sync::Arc<Matches>>> {
        let Some(t) = &f.text else { return Ok(None) };
        let key = GrepKey {
            pattern: t.pattern.clone(),
            case_insensitive: t.case_insensitive,
            hosts: f.hosts.clone(),
            since: f.since,
            until: f.until,
            retimes: self.retimes.load(std::sync::atomic::Ordering::Relaxed),
        };
        let (old, after) = match lock(&self.grep_cache).as_ref() {
            Some(c) if c.key == key => match c.found.as_ref() {
                Matches::Frequent if !need_count => return Ok(Some(c.found.clone())),
                // Frequent, but how many is not known: scan everything.
                Matches::Frequent => (None, 0),
                _ => (Some(c.found.clone()), c.last_block),
            },
            _ => (None, 0),
        };
        let matcher = Matcher::new(t)?;
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let (new, last_block, stats) = self.read(|c| {
            sqlite_grep::scan(c, &matcher, f, after, threads, GREP_MAX_IDS, !need_count)
        })?;
        log::debug!(
            "grep {:?}: {} blocks, {} bytes scanned, new matches: {:?}",
            t.pattern,
            stats.blocks,
            stats.bytes,
            match &new {
                Matches::Ids(v) => Some(v.len() as u64),
                Matches::Many(n) => Some(*n),
                Matches::Frequent => None,
            }
        );
        let all = match (old, new) {
            (_, Matches::Frequent) => std::sync::Arc::new(Matches::Frequent),
            (Some(old), new) if new.count() == 0 => old,
            (Some(old), Matches::Ids(new)) => match old.as_ref() {
                Matches::Ids(o) if o.len() + new.len() <= GREP_MAX_IDS => {
                    // Newer blocks hold newer ids: still ascending.
                    std::sync::Arc::new(Matches::Ids([o.as_slice(), &new].concat()))
                }
                o => std::sync::Arc::new(Matches::Many(o.count() + new.len() as u64)),
            },
            (Some(old), Matches::Many(n)) => std::sync::Arc::new(Matches::Many(old.count() + n)),
            (None, new) => std::sync::Arc::new(new),
        };
        *lock(&self.grep_cache) = Some(GrepCache {
            key,
            last_block,
            found: all.clone(),
        });
        Ok(Some(all))
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

    fn query(&self, q: &Query) -> Result<Vec<Stored>> {
        let found = self.grep_ids(&q.filter, false)?;
        let mut sql = String::from("SELECT id, ts_ns, json FROM events WHERE 1=1");
        let mut args = Vec::new();
        push_filter(&q.filter, found.as_deref(), &mut sql, &mut args);
        if let Some(as_of) = q.as_of {
            sql.push_str(" AND id <= ?");
            args.push(Value::Integer(as_of));
        }
        let (cmp, dir) = if q.newest_first {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if let Some(p) = q.after {
            sql.push_str(&format!(" AND (ts_ns, id) {cmp} (?, ?)"));
            args.push(Value::Integer(p.ts_ns));
            args.push(Value::Integer(p.id));
        }
        sql.push_str(&format!(" ORDER BY ts_ns {dir}, id {dir} LIMIT ?"));
        args.push(Value::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));
        self.read(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            read_rows(&mut stmt, &args)
        })
    }

    fn count(&self, f: &Filter) -> Result<u64> {
        let found = self.grep_ids(f, true)?;
        if let Some(found) = &found {
            // Every id is a log line of one of `f.hosts`: with no other
            // condition, the count is the number of ids.
            let only_text = Filter {
                text: f.text.clone(),
                hosts: f.hosts.clone(),
                kinds: f.kinds.iter().filter(|k| *k != "log").cloned().collect(),
                ..Filter::default()
            };
            if *f == only_text && only_text.kinds.is_empty() {
                return Ok(found.count());
            }
        }
        let mut sql = String::from("SELECT count(*) FROM events WHERE 1=1");
        let mut args = Vec::new();
        push_filter(f, found.as_deref(), &mut sql, &mut args);
        self.read(|c| {
            let n: i64 = c.query_row(&sql, rusqlite::params_from_iter(&args), |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn since_cursor(&self, cursor: i64, f: &Filter, limit: usize) -> Result<Vec<Stored>> {
        let found = self.grep_ids(f, false)?;
        let mut sql = String::from("SELECT id, ts_ns, json FROM events WHERE id > ?");
        let mut args = vec![Value::Integer(cursor)];
        push_filter(f, found.as_deref(), &mut sql, &mut args);
        sql.push_str(" ORDER BY id LIMIT ?");
        args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        self.read(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            read_rows(&mut stmt, &args)
        })
    }

    fn cursor(&self) -> Result<i64> {
        self.read(|c| Ok(c.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?))
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
        self.retimes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        aggregator::store::{Position, TextMatch},
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
                "SELECT raw_ts_ns FROM events WHERE host = 'slow'",
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
                "CREATE TEMP TRIGGER refuse BEFORE INSERT ON main.events
                 WHEN NEW.text = 'refused' BEGIN SELECT RAISE(ABORT, 'refused'); END;",
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
    fn upgrade_to_v3_builds_grep_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        two_hosts(&store);
        {
            // As a version 2 store left it: no blocks.
            let c = lock(&store.writer);
            c.execute_batch("DELETE FROM log_blocks; PRAGMA user_version = 2;")
                .unwrap();
        }
        drop(store);
        let store = SqliteStore::open(dir.path()).unwrap();
        let grep = Filter {
            text: Some(TextMatch {
                pattern: "error".into(),
                case_insensitive: true,
            }),
            ..Filter::default()
        };
        assert_eq!(store.count(&grep).unwrap(), 2);
        let v: i64 = lock(&store.writer)
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
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
    fn frequent_patterns_filter_row_by_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let n = GREP_MAX_IDS as u64 + 500;
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
