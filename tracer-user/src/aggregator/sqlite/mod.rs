//! The SQLite backend: one file, `events.sqlite`, in the data directory.
//!
//! Files: `schema.rs` (tables and upgrades), `rows.rs` (events other than
//! log lines, as rows), `logs.rs` (log lines as blocks) and `grep.rs`
//! (regex scans over them), `series.rs` (the graphs), `stitch.rs`
//! (cross-host matching and clock offsets inside the ingest transaction,
//! traces walked at query time; the pure matching is `super::stitch`),
//! `checkpoint.rs`, `error.rs` (rusqlite errors into [`StoreError`]).
//! Ids are SQLite's own commit order ([`EventId`] holds the number).
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

mod checkpoint;
mod error;
mod grep;
mod logs;
mod rows;
mod schema;
mod series;
mod stitch;
#[cfg(test)]
mod tests;

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, TransactionBehavior, params};

use self::{
    checkpoint::{Checkpointer, WRITER_AUTOCHECKPOINT},
    grep::Matcher,
    logs::{BlockBuilder, LineQuery, TraceLines},
    stitch::{TraceMembers, after_ingest, index_event, note_host, retime, trace_members},
};
use super::store::{
    Batch, EventId, EventKind, Filter, HostOffset, IngestOutcome, Query, Result, Store, StoreError,
    Stored, corrected,
};
use crate::event::EventData;

/// The database file inside the data directory.
pub const DB_FILE: &str = "events.sqlite";
/// An estimated offset is applied to stored events again only when it
/// moves by more than this (each change rewrites the host's events).
const RETIME_MIN_NS: i64 = 50_000;

pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    checkpointer: Checkpointer,
}

/// Reader connections kept open between queries.
const POOL_MAX: usize = 8;

/// A connection left in a consistent state by a panicking holder (an open
/// transaction rolls back when dropped) stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
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
        let mut conn = conn;
        schema::create_or_upgrade(&mut conn, &path)?;
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
                serde_json::to_writer(&mut json, event).map_err(|source| StoreError::Corrupt {
                    id: EventId::from_raw(id),
                    source,
                })?;
                // serde_json writes UTF-8.
                let json = std::str::from_utf8(&json).unwrap_or_default();
                let req_id = match &event.data {
                    EventData::Http(h) => Some(h.req_id.as_str()),
                    other => other.line_req_id(),
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
        Ok(rows.max(logs::last_id(conn)?) + 1)
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
        let Some(t) = f.trace.as_deref() else {
            return Ok(None);
        };
        let mut members = trace_members(conn, t)?;
        rows::add_logpoints(conn, t, &mut members)?;
        Ok(Some(members))
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
                                Stored {
                                    id: EventId::from_raw(id),
                                    event,
                                }
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
            let mut out = rows::query(c, q, members.as_ref())?;
            let as_of = q.as_of.map(EventId::raw);
            let lines = Self::with_lines(&q.filter, members.as_ref(), as_of, None, |lq| {
                logs::query(c, q, lq)
            })?;
            if !lines.is_empty() {
                out.extend(lines);
                if q.newest_first {
                    out.sort_by_key(|s| std::cmp::Reverse(s.position()));
                } else {
                    out.sort_by_key(Stored::position);
                }
                out.truncate(q.limit);
            }
            Ok(out)
        })
    }

    fn count(&self, f: &Filter) -> Result<u64> {
        self.read(|c| {
            let members = Self::members(c, f)?;
            let n = rows::count(c, f, members.as_ref())?;
            // A grep with no condition but hosts: every core scans.
            let only_text = Filter {
                text: f.text.clone(),
                hosts: f.hosts.clone(),
                kinds: f
                    .kinds
                    .iter()
                    .filter(|k| **k == EventKind::LOG)
                    .copied()
                    .collect(),
                ..Filter::default()
            };
            if let Some(t) = &f.text
                && *f == only_text
            {
                let threads = std::thread::available_parallelism().map_or(2, usize::from);
                let (found, stats) = grep::count(c, &Matcher::new(t)?, f, threads)?;
                log::debug!(
                    "grep -c {:?}: {} blocks, {} bytes scanned",
                    t.pattern,
                    stats.blocks,
                    stats.bytes
                );
                return Ok(n + found);
            }
            Ok(n + Self::with_lines(f, members.as_ref(), None, None, |lq| logs::count(c, lq))?)
        })
    }

    fn since_cursor(&self, cursor: EventId, f: &Filter, limit: usize) -> Result<Vec<Stored>> {
        self.read(|c| {
            let members = Self::members(c, f)?;
            let mut out = rows::since(c, cursor.raw(), f, members.as_ref(), limit)?;
            let lines = Self::with_lines(f, members.as_ref(), None, Some(cursor.raw()), |lq| {
                logs::since(c, lq, limit)
            })?;
            if !lines.is_empty() {
                out.extend(lines);
                out.sort_by_key(|s| s.id);
                out.truncate(limit);
            }
            Ok(out)
        })
    }

    fn cursor(&self) -> Result<EventId> {
        self.read(|c| Ok(EventId::from_raw(Self::next_id(c)? - 1)))
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
        self.read(|c| series::series(c, q))
    }
}
