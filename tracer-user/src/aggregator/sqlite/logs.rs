//! Log lines in the SQLite store, kept as *blocks* rather than rows
//! (docs/aggregator.md, "Storage").
//!
//! Log lines are most of what agents send (85% in the ingest benchmark).
//! As rows they cost ~1.8 µs each at ingest: the row with its JSON, the
//! `(ts)` and `(host, ts)` index entries, and the grep block that holds the
//! text again. Here a batch's lines become one `log_blocks` row: the texts
//! joined by `\n` (what grep scans), and per line its id, raw time, pid,
//! tid, stream and the short strings (comm, path, req_id) in columns of
//! their own. The block's time range, id range and host are what queries
//! prune by; `log_reqs` lists the request ids a block holds, for lookups by
//! trace. A block carries the clock correction its lines are shown with
//! (`offset_ns`), so re-timing a host rewrites one row per block.
//!
//! Queries read the blocks a filter does not rule out, in time order, and
//! stop once no later block can beat the lines already found.

use std::collections::HashSet;

use rusqlite::{Connection, params, types::Value};

use super::grep::Matcher;
use crate::aggregator::store::{
    EventId, Filter, Position, Query, Result, StoreError, Stored, corrected,
};
use crate::event::{Event, EventData, StreamName};

/// Schema version 4: the blocks and their request ids.
pub const SCHEMA_V4: &str = "
CREATE TABLE IF NOT EXISTS log_blocks (
    id        INTEGER PRIMARY KEY,
    host      TEXT NOT NULL,
    first_id  INTEGER NOT NULL,        -- id of its first line
    last_id   INTEGER NOT NULL,
    min_ts    INTEGER NOT NULL,        -- corrected times of its lines (pruning)
    max_ts    INTEGER NOT NULL,
    min_raw   INTEGER NOT NULL,        -- raw times, to re-time min_ts/max_ts
    max_raw   INTEGER NOT NULL,
    offset_ns INTEGER NOT NULL,        -- correction: a line's time is raw + offset_ns
    ids       BLOB NOT NULL,           -- per line: id - first_id, u32 LE
    ends      BLOB NOT NULL,           -- per line: offset of its end in text, u32 LE
    meta      BLOB NOT NULL,           -- per line: raw ts i64, pid u32, tid u32, flags u8 (LE)
    strs      BLOB NOT NULL,           -- per line: comm, path, req_id (u16 LE length, bytes)
    text      BLOB NOT NULL            -- the lines, joined by \\n
);
CREATE INDEX IF NOT EXISTS log_blocks_host ON log_blocks(host);
CREATE INDEX IF NOT EXISTS log_blocks_min_ts ON log_blocks(min_ts);
CREATE INDEX IF NOT EXISTS log_blocks_max_ts ON log_blocks(max_ts);
CREATE INDEX IF NOT EXISTS log_blocks_last_id ON log_blocks(last_id);
CREATE TABLE IF NOT EXISTS log_reqs (
    req_id TEXT NOT NULL,              -- a request id some line of the block has
    block  INTEGER NOT NULL,
    PRIMARY KEY (req_id, block)
) WITHOUT ROWID;
";

/// A block is cut past this many bytes of text (offsets are u32; big
/// blocks also balance badly over the cores when grep scans them).
const MAX_BLOCK_BYTES: usize = 1 << 20;
/// Bytes of `meta` per line.
const META_LEN: usize = 17;
/// The length written for an absent string.
const ABSENT: u16 = u16::MAX;
/// Longest string kept in `strs` (comm, path and req_id are far shorter;
/// a longer one is cut at a character boundary).
const MAX_STR: usize = (u16::MAX - 1) as usize;

const FLAG_STDERR: u8 = 1;
const FLAG_FILE: u8 = 2;
const FLAG_TRUNCATED: u8 = 4;

/// Collects one batch's log lines into blocks.
#[derive(Default)]
pub struct BlockBuilder {
    host: String,
    offset: i64,
    first_id: i64,
    last_id: i64,
    min_raw: i64,
    max_raw: i64,
    ids: Vec<u8>,
    ends: Vec<u8>,
    meta: Vec<u8>,
    strs: Vec<u8>,
    text: Vec<u8>,
    reqs: HashSet<String>,
}

fn push_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend_from_slice(&ABSENT.to_le_bytes()),
        Some(s) => {
            let mut end = s.len().min(MAX_STR);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            out.extend_from_slice(&(end as u16).to_le_bytes());
            out.extend_from_slice(&s.as_bytes()[..end]);
        }
    }
}

impl BlockBuilder {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Adds a log line (other events are ignored) with its id, raw time and
    /// the host's correction at ingest. Writes the block out first when it
    /// is full, or when the host or correction changes, or ids would not
    /// fit.
    pub fn push(
        &mut self,
        conn: &Connection,
        event: &Event,
        id: i64,
        raw: i64,
        offset: i64,
    ) -> Result<()> {
        let EventData::Log {
            stream,
            path,
            text,
            truncated,
            req_id,
        } = &event.data
        else {
            return Ok(());
        };
        if !self.is_empty()
            && (self.host != event.host
                || self.offset != offset
                || self.text.len() + text.len() + 1 > MAX_BLOCK_BYTES
                || u32::try_from(id - self.first_id).is_err())
        {
            self.flush(conn)?;
        }
        if self.is_empty() {
            event.host.clone_into(&mut self.host);
            self.offset = offset;
            self.first_id = id;
            (self.min_raw, self.max_raw) = (raw, raw);
        } else {
            self.text.push(b'\n');
        }
        self.last_id = id;
        self.min_raw = self.min_raw.min(raw);
        self.max_raw = self.max_raw.max(raw);
        // A single line over u32::MAX bytes cannot come through the API
        // (its body limit is far lower); saturate rather than panic.
        let delta = u32::try_from(id - self.first_id).unwrap_or(u32::MAX);
        self.ids.extend_from_slice(&delta.to_le_bytes());
        self.text.extend_from_slice(text.as_bytes());
        let end = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        self.ends.extend_from_slice(&end.to_le_bytes());
        let flags = match stream {
            StreamName::Stdout => 0,
            StreamName::Stderr => FLAG_STDERR,
            StreamName::File => FLAG_FILE,
        } | if *truncated { FLAG_TRUNCATED } else { 0 };
        self.meta.extend_from_slice(&raw.to_le_bytes());
        self.meta.extend_from_slice(&event.pid.to_le_bytes());
        self.meta.extend_from_slice(&event.tid.to_le_bytes());
        self.meta.push(flags);
        push_str(&mut self.strs, Some(&event.comm));
        push_str(&mut self.strs, path.as_deref());
        push_str(&mut self.strs, req_id.as_deref());
        if let Some(r) = req_id
            && !self.reqs.contains(r)
        {
            self.reqs.insert(r.clone());
        }
        Ok(())
    }

    /// Writes the block collected so far, if any.
    pub fn flush(&mut self, conn: &Connection) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        conn.prepare_cached(
            "INSERT INTO log_blocks
             (host, first_id, last_id, min_ts, max_ts, min_raw, max_raw, offset_ns,
              ids, ends, meta, strs, text)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            self.host,
            self.first_id,
            self.last_id,
            corrected(self.min_raw, self.offset),
            corrected(self.max_raw, self.offset),
            self.min_raw,
            self.max_raw,
            self.offset,
            self.ids,
            self.ends,
            self.meta,
            self.strs,
            self.text
        ])?;
        let block = conn.last_insert_rowid();
        for r in self.reqs.drain() {
            conn.prepare_cached("INSERT OR IGNORE INTO log_reqs (req_id, block) VALUES (?, ?)")?
                .execute(params![r, block])?;
        }
        self.ids.clear();
        self.ends.clear();
        self.meta.clear();
        self.strs.clear();
        self.text.clear();
        Ok(())
    }
}

/// A block's row without its columns of lines.
#[derive(Debug, Clone)]
struct BlockMeta {
    id: i64,
    host: String,
    first_id: i64,
    last_id: i64,
    min_ts: i64,
    max_ts: i64,
    offset: i64,
    /// How many lines it holds.
    lines: u64,
}

/// A block as read: its lines, decoded on demand.
struct Block {
    meta: BlockMeta,
    ids: Vec<u8>,
    ends: Vec<u8>,
    lines: Vec<u8>,
    strs: Vec<u8>,
    text: Vec<u8>,
    /// Where each line's strings start in `strs` (filled on first use).
    str_at: Vec<usize>,
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    b.get(i * 4..i * 4 + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

impl Block {
    fn read(conn: &Connection, meta: BlockMeta) -> Result<Self> {
        let (ids, ends, lines, strs, text) = conn
            .prepare_cached("SELECT ids, ends, meta, strs, text FROM log_blocks WHERE id = ?")?
            .query_row([meta.id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
        let b = Block {
            meta,
            ids,
            ends,
            lines,
            strs,
            text,
            str_at: Vec::new(),
        };
        let n = b.ids.len() / 4;
        if b.ends.len() != n * 4 || b.lines.len() != n * META_LEN {
            return Err(StoreError::Damaged(format!(
                "log block {}: its columns disagree on the number of lines",
                b.meta.id
            )));
        }
        Ok(b)
    }

    fn len(&self) -> usize {
        self.ids.len() / 4
    }

    fn id(&self, i: usize) -> i64 {
        self.meta.first_id + i64::from(u32_at(&self.ids, i))
    }

    fn meta_at(&self, i: usize) -> &[u8] {
        &self.lines[i * META_LEN..(i + 1) * META_LEN]
    }

    fn raw(&self, i: usize) -> i64 {
        i64::from_le_bytes(self.meta_at(i)[0..8].try_into().unwrap_or_default())
    }

    fn ts(&self, i: usize) -> i64 {
        corrected(self.raw(i), self.meta.offset)
    }

    fn pid(&self, i: usize) -> u32 {
        u32::from_le_bytes(self.meta_at(i)[8..12].try_into().unwrap_or_default())
    }

    fn tid(&self, i: usize) -> u32 {
        u32::from_le_bytes(self.meta_at(i)[12..16].try_into().unwrap_or_default())
    }

    fn stream(&self, i: usize) -> StreamName {
        let f = self.meta_at(i)[16];
        if f & FLAG_STDERR != 0 {
            StreamName::Stderr
        } else if f & FLAG_FILE != 0 {
            StreamName::File
        } else {
            StreamName::Stdout
        }
    }

    fn text(&self, i: usize) -> &[u8] {
        let end = u32_at(&self.ends, i) as usize;
        let start = if i == 0 {
            0
        } else {
            u32_at(&self.ends, i - 1) as usize + 1
        };
        self.text.get(start..end).unwrap_or_default()
    }

    /// Line `i`'s comm, path and req_id.
    fn strings(&mut self, i: usize) -> [Option<&str>; 3] {
        if self.str_at.is_empty() {
            let mut at = 0usize;
            for _ in 0..self.len() {
                self.str_at.push(at);
                for _ in 0..3 {
                    let len = self
                        .strs
                        .get(at..at + 2)
                        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                    at += 2 + if len == ABSENT { 0 } else { usize::from(len) };
                }
            }
        }
        let mut at = self.str_at.get(i).copied().unwrap_or(usize::MAX);
        let mut out = [None; 3];
        for slot in &mut out {
            let Some(b) = self.strs.get(at..at + 2) else {
                break;
            };
            let len = u16::from_le_bytes([b[0], b[1]]);
            at += 2;
            if len != ABSENT {
                let s = self.strs.get(at..at + usize::from(len)).unwrap_or_default();
                *slot = Some(std::str::from_utf8(s).unwrap_or_default());
                at += usize::from(len);
            }
        }
        out
    }

    fn req_id(&mut self, i: usize) -> Option<&str> {
        self.strings(i)[2]
    }

    fn event(&mut self, i: usize) -> Stored {
        let ts = u64::try_from(self.ts(i)).unwrap_or(0);
        let (pid, tid, stream, id) = (self.pid(i), self.tid(i), self.stream(i), self.id(i));
        let truncated = self.meta_at(i)[16] & FLAG_TRUNCATED != 0;
        let text = String::from_utf8_lossy(self.text(i)).into_owned();
        let host = self.meta.host.clone();
        let [comm, path, req_id] = self.strings(i);
        Stored {
            id: EventId::from_raw(id),
            event: Event {
                ts_ns: ts,
                host,
                pid,
                tid,
                comm: comm.unwrap_or_default().to_owned(),
                data: EventData::Log {
                    stream,
                    path: path.map(str::to_owned),
                    text,
                    truncated,
                    req_id: req_id.map(str::to_owned),
                },
            },
        }
    }
}

/// The log lines of a trace: those whose `(host, req_id)` is one of the
/// trace's exchanges, and those whose req_id is the looked-up id itself.
pub struct TraceLines<'a> {
    pub id: &'a str,
    pub reqs: &'a HashSet<(String, String)>,
}

/// Appends the conditions on `log_blocks` rows that `f`'s time range and
/// hosts imply (` AND ...`, with `?` parameters pushed to `args`).
pub fn push_block_filter(f: &Filter, sql: &mut String, args: &mut Vec<Value>) {
    if let Some(s) = f.since {
        sql.push_str(" AND max_ts >= ?");
        args.push(s.into());
    }
    if let Some(u) = f.until {
        sql.push_str(" AND min_ts < ?");
        args.push(u.into());
    }
    if !f.hosts.is_empty() {
        sql.push_str(" AND host IN (");
        for (i, h) in f.hosts.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ",?" });
            args.push(h.clone().into());
        }
        sql.push(')');
    }
}

/// Which lines a query wants, beyond what prunes whole blocks.
pub struct LineQuery<'a> {
    pub filter: &'a Filter,
    pub matcher: Option<&'a Matcher>,
    pub trace: Option<TraceLines<'a>>,
    /// Only ids up to this (a snapshot).
    pub as_of: Option<i64>,
    /// Only ids after this (a live tail's cursor).
    pub after_id: Option<i64>,
}

impl LineQuery<'_> {
    /// Whether any log line can match at all.
    pub fn wants_logs(&self) -> bool {
        self.filter.wants_logs()
    }

    /// The blocks not ruled out, by `order` (an SQL ORDER BY).
    fn blocks(&self, conn: &Connection, extra: &str, order: &str) -> Result<Vec<BlockMeta>> {
        let f = self.filter;
        let mut sql = String::from(
            "SELECT id, host, first_id, last_id, min_ts, max_ts, offset_ns, length(ids) / 4
             FROM log_blocks WHERE 1=1",
        );
        let mut args: Vec<Value> = Vec::new();
        push_block_filter(f, &mut sql, &mut args);
        if let Some(a) = self.as_of {
            sql.push_str(" AND first_id <= ?");
            args.push(a.into());
        }
        if let Some(c) = self.after_id {
            sql.push_str(" AND last_id > ?");
            args.push(c.into());
        }
        if let Some(t) = &self.trace {
            let mut reqs: Vec<&str> = t.reqs.iter().map(|(_, r)| r.as_str()).collect();
            reqs.push(t.id);
            sql.push_str(
                " AND id IN (SELECT block FROM log_reqs WHERE req_id IN \
                 (SELECT value FROM json_each(?)))",
            );
            args.push(Value::Text(
                serde_json::to_string(&reqs).unwrap_or_else(|_| "[]".into()),
            ));
        }
        sql.push_str(extra);
        sql.push_str(order);
        let mut st = conn.prepare_cached(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
            Ok(BlockMeta {
                id: r.get(0)?,
                host: r.get(1)?,
                first_id: r.get(2)?,
                last_id: r.get(3)?,
                min_ts: r.get(4)?,
                max_ts: r.get(5)?,
                offset: r.get(6)?,
                lines: r.get::<_, i64>(7)?.try_into().unwrap_or(0),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The lines of `b` that pass every per-line condition, by index.
    fn lines(&self, b: &mut Block) -> Vec<usize> {
        let f = self.filter;
        let candidates: Vec<usize> = match self.matcher {
            Some(m) => m.lines(&b.text, &b.ends),
            None => (0..b.len()).collect(),
        };
        let stream = f.stream;
        candidates
            .into_iter()
            .filter(|&i| {
                let (id, ts) = (b.id(i), b.ts(i));
                if f.since.is_some_and(|s| ts < s) || f.until.is_some_and(|u| ts >= u) {
                    return false;
                }
                if self.as_of.is_some_and(|a| id > a) || self.after_id.is_some_and(|c| id <= c) {
                    return false;
                }
                if stream.is_some_and(|s| s != b.stream(i)) {
                    return false;
                }
                if let Some(t) = &self.trace {
                    let host = b.meta.host.clone();
                    match b.req_id(i) {
                        Some(r) if r == t.id || t.reqs.contains(&(host, r.to_owned())) => {}
                        _ => return false,
                    }
                }
                true
            })
            .collect()
    }
}

/// The best `limit` lines by (ts, id), ascending or descending; the bound
/// (the worst line kept) once full tells which blocks can still matter.
struct TopN {
    limit: usize,
    desc: bool,
    items: Vec<Stored>,
    bound: Option<Position>,
}

impl TopN {
    fn key(s: &Stored) -> (i64, i64) {
        let p = Position::from(s);
        (p.ts_ns, p.id.raw())
    }

    fn better(&self, a: (i64, i64), b: (i64, i64)) -> bool {
        if self.desc { a > b } else { a < b }
    }

    fn admits(&self, key: (i64, i64)) -> bool {
        self.bound
            .is_none_or(|b| self.better(key, (b.ts_ns, b.id.raw())))
    }

    fn compact(&mut self) {
        let desc = self.desc;
        self.items.sort_by(|a, b| {
            let o = Self::key(a).cmp(&Self::key(b));
            if desc { o.reverse() } else { o }
        });
        self.items.truncate(self.limit);
        if self.items.len() == self.limit {
            self.bound = self.items.last().map(Position::from);
        }
    }
}

/// A page of log lines for `q` (ordered like `Store::query`).
pub fn query(conn: &Connection, q: &Query, lq: &LineQuery<'_>) -> Result<Vec<Stored>> {
    if q.limit == 0 || !lq.wants_logs() {
        return Ok(Vec::new());
    }
    let (extra, order) = match (q.after, q.newest_first) {
        (Some(p), false) => (
            format!(" AND max_ts >= {}", p.ts_ns),
            " ORDER BY min_ts, id",
        ),
        (Some(p), true) => (
            format!(" AND min_ts <= {}", p.ts_ns),
            " ORDER BY max_ts DESC, id DESC",
        ),
        (None, false) => (String::new(), " ORDER BY min_ts, id"),
        (None, true) => (String::new(), " ORDER BY max_ts DESC, id DESC"),
    };
    let mut top = TopN {
        limit: q.limit,
        desc: q.newest_first,
        items: Vec::new(),
        bound: None,
    };
    for meta in lq.blocks(conn, &extra, order)? {
        if let Some(b) = top.bound {
            // Every line of this block and of the blocks after it is at or
            // past this time: none can make the page.
            let past = if q.newest_first {
                meta.max_ts < b.ts_ns
            } else {
                meta.min_ts > b.ts_ns
            };
            if past {
                break;
            }
        }
        let mut block = Block::read(conn, meta)?;
        for i in lq.lines(&mut block) {
            let key = (block.ts(i), block.id(i));
            let after_ok = q.after.is_none_or(|p| {
                if q.newest_first {
                    key < (p.ts_ns, p.id.raw())
                } else {
                    key > (p.ts_ns, p.id.raw())
                }
            });
            if after_ok && top.admits(key) {
                top.items.push(block.event(i));
            }
        }
        if top.items.len() > top.limit || (top.bound.is_none() && top.items.len() == top.limit) {
            top.compact();
        }
    }
    top.compact();
    Ok(top.items)
}

/// How many log lines match.
pub fn count(conn: &Connection, lq: &LineQuery<'_>) -> Result<u64> {
    if !lq.wants_logs() {
        return Ok(0);
    }
    let f = lq.filter;
    let per_line = f.stream.is_some() || lq.matcher.is_some() || lq.trace.is_some();
    let mut n = 0u64;
    for meta in lq.blocks(conn, "", " ORDER BY id")? {
        let whole = !per_line
            && f.since.is_none_or(|s| meta.min_ts >= s)
            && f.until.is_none_or(|u| meta.max_ts < u)
            && lq.as_of.is_none_or(|a| meta.last_id <= a)
            && lq.after_id.is_none_or(|c| meta.first_id > c);
        if whole {
            n += meta.lines;
        } else {
            let mut block = Block::read(conn, meta)?;
            n += lq.lines(&mut block).len() as u64;
        }
    }
    Ok(n)
}

/// Up to `limit` lines with id above `lq.after_id`, in id order.
pub fn since(conn: &Connection, lq: &LineQuery<'_>, limit: usize) -> Result<Vec<Stored>> {
    if limit == 0 || !lq.wants_logs() {
        return Ok(Vec::new());
    }
    // Blocks never share ids (each is a run of one batch's lines, and a
    // batch's ids are consecutive), so in first-id order the lines come
    // out in id order and the first `limit` are the answer.
    let mut out: Vec<Stored> = Vec::new();
    for meta in lq.blocks(conn, "", " ORDER BY first_id")? {
        let mut block = Block::read(conn, meta)?;
        for i in lq.lines(&mut block) {
            out.push(block.event(i));
            if out.len() == limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Calls `f(ts, host, pid)` for every line with `since <= ts < until` on
/// one of `hosts` (all when empty): the graphs' log counts.
pub fn each_line(
    conn: &Connection,
    since: i64,
    until: i64,
    hosts: &[String],
    mut f: impl FnMut(i64, &str, u32),
) -> Result<()> {
    let filter = Filter {
        since: Some(since),
        until: Some(until),
        hosts: hosts.to_vec(),
        ..Filter::default()
    };
    let lq = LineQuery {
        filter: &filter,
        matcher: None,
        trace: None,
        as_of: None,
        after_id: None,
    };
    for meta in lq.blocks(conn, "", " ORDER BY id")? {
        // Only the per-line columns: the text is most of a block.
        let lines: Vec<u8> = conn
            .prepare_cached("SELECT meta FROM log_blocks WHERE id = ?")?
            .query_row([meta.id], |r| r.get(0))?;
        for line in lines.chunks_exact(META_LEN) {
            let raw = i64::from_le_bytes(line[0..8].try_into().unwrap_or_default());
            let pid = u32::from_le_bytes(line[8..12].try_into().unwrap_or_default());
            let ts = corrected(raw, meta.offset);
            if ts >= since && ts < until {
                f(ts, &meta.host, pid);
            }
        }
    }
    Ok(())
}

/// The id of the last line stored (0 when none).
pub fn last_id(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT coalesce(max(last_id), 0) FROM log_blocks",
        [],
        |r| r.get(0),
    )?)
}

/// Re-times every block of `host` to `offset` (`stitch_sql::retime`).
pub fn retime_blocks(conn: &Connection, host: &str, offset: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE log_blocks SET offset_ns = ?1,
                               min_ts = max(0, min_raw + ?1), max_ts = max(0, max_raw + ?1)
         WHERE host = ?2 AND offset_ns != ?1",
    )?
    .execute(params![offset, host])?;
    Ok(())
}

/// Re-times the recent blocks of `host`: those with a line at or after
/// `since` (corrected), each as a whole (`stitch_sql::retime_since`).
pub fn retime_blocks_since(conn: &Connection, host: &str, offset: i64, since: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE log_blocks SET offset_ns = ?1,
                               min_ts = max(0, min_raw + ?1), max_ts = max(0, max_raw + ?1)
         WHERE host = ?2 AND max_ts >= ?3 AND offset_ns != ?1",
    )?
    .execute(params![offset, host, since])?;
    Ok(())
}

/// Upgrading a store from before version 4, where log lines were rows of
/// `events` (and blocks held only their text): moves them into blocks,
/// one host's consecutive lines at a time, and deletes the rows.
pub fn move_rows_into_blocks(conn: &Connection) -> Result<u64> {
    let mut st = conn.prepare(
        "SELECT id, raw_ts_ns, offset_ns, json FROM events WHERE kind = 'log' ORDER BY id",
    )?;
    let mut rows = st.query([])?;
    let mut block = BlockBuilder::default();
    let (mut lines, mut moved) = (0usize, 0u64);
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let json: String = r.get(3)?;
        let event: Event = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
            id: EventId::from_raw(id),
            source,
        })?;
        if lines >= 2000 {
            block.flush(conn)?;
            lines = 0;
        }
        block.push(conn, &event, id, r.get(1)?, r.get(2)?)?;
        lines += 1;
        moved += 1;
    }
    block.flush(conn)?;
    drop(rows);
    conn.execute("DELETE FROM events WHERE kind = 'log'", [])?;
    Ok(moved)
}
