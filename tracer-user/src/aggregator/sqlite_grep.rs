//! Grep over the SQLite store by log *blocks* (docs/aggregator.md, "Grep").
//!
//! Matching a regex row by row costs a SQLite step and a regex call per
//! line, a few hundred MB/s at best. Instead every ingested batch also
//! stores its log lines as one block: the texts joined with `\n`, the end
//! offset of each line and each line's `events.id`. A grep runs the regex
//! once over each block (the `regex` crate's literal prefilters skip
//! through non-matching text at memchr speed), blocks are spread over the
//! cores, and each hit is mapped back to its line and checked against that
//! line alone, so the result is exactly what a per-line match gives. The
//! matching ids then go through the ordinary SQL filters (time, host,
//! stream, trace, paging) as `id IN rarray(?)`.
//!
//! A hit found in the block text is checked on its line and the search
//! restarts at the next line, so a match that spans lines can hide nothing:
//! every per-line match is also a match in the block (multi-line mode makes
//! `^`/`$` match at the line breaks), so the search from the start of any
//! line finds a hit on that line or an earlier one. `\A` and `\z` are the
//! exception (they only match at the ends of the block): patterns that use
//! them, or turn multi-line mode off, are matched line by line.

use std::{
    sync::{Arc, Mutex, mpsc},
    thread,
};

use regex::bytes::{Regex, RegexBuilder};
use rusqlite::{Connection, params};

use super::store::{Filter, Result, TextMatch};

/// Schema version 3: the blocks.
pub const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS log_blocks (
    id       INTEGER PRIMARY KEY,
    host     TEXT NOT NULL,
    first_id INTEGER NOT NULL,        -- events.id of its first line
    last_id  INTEGER NOT NULL,
    min_ts   INTEGER NOT NULL,        -- corrected times of its lines (pruning)
    max_ts   INTEGER NOT NULL,
    min_raw  INTEGER NOT NULL,        -- raw times, to re-time min_ts/max_ts
    max_raw  INTEGER NOT NULL,
    ids      BLOB NOT NULL,           -- per line: events.id - first_id, u32 LE
    ends     BLOB NOT NULL,           -- per line: offset of its end in text, u32 LE
    text     BLOB NOT NULL            -- the lines, joined by \\n
);
CREATE INDEX IF NOT EXISTS log_blocks_host ON log_blocks(host);
-- (conn) is a prefix of http_conn_start (conn, start_ns): the second index
-- on random keys only doubled what every commit writes.
DROP INDEX IF EXISTS http_conn;
";

/// Same bound as `TextMatch::compile`.
const REGEX_SIZE_LIMIT: usize = 4 << 20;
/// A block is cut past this many bytes of text (offsets are u32; big
/// blocks also balance badly over the cores).
const MAX_BLOCK_BYTES: usize = 1 << 20;

/// Collects one batch's log lines into blocks.
#[derive(Default)]
pub struct BlockBuilder {
    host: String,
    first_id: i64,
    last_id: i64,
    min_ts: i64,
    max_ts: i64,
    min_raw: i64,
    max_raw: i64,
    ids: Vec<u8>,
    ends: Vec<u8>,
    text: Vec<u8>,
}

impl BlockBuilder {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Adds a line; writes the block out first when it is full (or the
    /// host changes, or ids would not fit).
    pub fn push(
        &mut self,
        conn: &Connection,
        host: &str,
        id: i64,
        ts: i64,
        raw: i64,
        text: &str,
    ) -> Result<()> {
        if !self.is_empty()
            && (self.host != host
                || self.text.len() + text.len() + 1 > MAX_BLOCK_BYTES
                || u32::try_from(id - self.first_id).is_err())
        {
            self.flush(conn)?;
        }
        if self.is_empty() {
            host.clone_into(&mut self.host);
            self.first_id = id;
            (self.min_ts, self.max_ts, self.min_raw, self.max_raw) = (ts, ts, raw, raw);
        } else {
            self.text.push(b'\n');
        }
        self.last_id = id;
        self.min_ts = self.min_ts.min(ts);
        self.max_ts = self.max_ts.max(ts);
        self.min_raw = self.min_raw.min(raw);
        self.max_raw = self.max_raw.max(raw);
        // A single line over u32::MAX bytes cannot come through the API
        // (its body limit is far lower); saturate rather than panic.
        let delta = u32::try_from(id - self.first_id).unwrap_or(u32::MAX);
        self.ids.extend_from_slice(&delta.to_le_bytes());
        self.text.extend_from_slice(text.as_bytes());
        let end = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        self.ends.extend_from_slice(&end.to_le_bytes());
        Ok(())
    }

    /// Writes the block collected so far, if any.
    pub fn flush(&mut self, conn: &Connection) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        conn.prepare_cached(
            "INSERT INTO log_blocks
             (host, first_id, last_id, min_ts, max_ts, min_raw, max_raw, ids, ends, text)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            self.host,
            self.first_id,
            self.last_id,
            self.min_ts,
            self.max_ts,
            self.min_raw,
            self.max_raw,
            self.ids,
            self.ends,
            self.text
        ])?;
        self.ids.clear();
        self.ends.clear();
        self.text.clear();
        Ok(())
    }
}

/// Re-times the blocks of `host` with the events (`stitch_sql::retime`).
pub fn retime_blocks(conn: &Connection, host: &str, offset: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE log_blocks SET min_ts = max(0, min_raw + ?1), max_ts = max(0, max_raw + ?1)
         WHERE host = ?2",
    )?
    .execute(params![offset, host])?;
    Ok(())
}

/// When only the recent events of `host` were re-timed (`stitch_sql`'s
/// `retime_since`), a block may now hold lines on the old and on the new
/// offset: its time range is widened to cover both, so pruning by time
/// never skips a line that matches.
pub fn widen_blocks(conn: &Connection, host: &str, offset: i64, since: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE log_blocks SET min_ts = min(min_ts, max(0, min_raw + ?1)),
                               max_ts = max(max_ts, max(0, max_raw + ?1))
         WHERE host = ?2 AND max_ts >= ?3",
    )?
    .execute(params![offset, host, since])?;
    Ok(())
}

/// Upgrading a version 2 store: blocks for the log lines already stored,
/// one host's consecutive lines at a time.
pub fn backfill(conn: &Connection) -> Result<()> {
    let mut st = conn.prepare(
        "SELECT id, host, ts_ns, raw_ts_ns, text FROM events WHERE kind = 'log' ORDER BY id",
    )?;
    let mut rows = st.query([])?;
    let mut block = BlockBuilder::default();
    let mut lines = 0usize;
    while let Some(r) = rows.next()? {
        let host: String = r.get(1)?;
        let text: String = r.get::<_, Option<String>>(4)?.unwrap_or_default();
        if lines >= 2000 {
            block.flush(conn)?;
            lines = 0;
        }
        block.push(conn, &host, r.get(0)?, r.get(2)?, r.get(3)?, &text)?;
        lines += 1;
    }
    block.flush(conn)?;
    Ok(())
}

/// The compiled forms of a grep pattern.
pub struct Matcher {
    /// Over a whole block (multi-line), or None: line by line only.
    block: Option<Regex>,
    /// Over one line: exactly the semantics of `TextMatch::compile`.
    line: Regex,
}

impl Matcher {
    pub fn new(t: &TextMatch) -> Result<Self> {
        let build = |multi_line: bool| {
            RegexBuilder::new(&t.pattern)
                .case_insensitive(t.case_insensitive)
                .multi_line(multi_line)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
        };
        let line = build(false)?;
        // `\A`/`\z` only match at the ends of the haystack, and a pattern
        // may switch multi-line mode off: such patterns cannot be run over
        // a block. A false alarm (say `\\A` escaped) only costs speed.
        let block = if block_safe(&t.pattern) {
            Some(build(true)?)
        } else {
            None
        };
        Ok(Self { block, line })
    }

    /// Ids of the block's lines that match, appended to `out`.
    fn scan(&self, b: &RawBlock, out: &mut Vec<i64>) {
        let n = b.ends.len() / 4;
        let end = |i: usize| {
            u32::from_le_bytes(b.ends[i * 4..i * 4 + 4].try_into().unwrap_or_default()) as usize
        };
        let start = |i: usize| if i == 0 { 0 } else { end(i - 1) + 1 };
        let id = |i: usize| {
            b.first_id
                + i64::from(u32::from_le_bytes(
                    b.ids[i * 4..i * 4 + 4].try_into().unwrap_or_default(),
                ))
        };
        let text = &b.text[..];
        let line = |i: usize| {
            text.get(start(i)..end(i).min(text.len()))
                .unwrap_or_default()
        };
        let Some(block) = &self.block else {
            for i in 0..n {
                if self.line.is_match(line(i)) {
                    out.push(id(i));
                }
            }
            return;
        };
        let mut i = 0;
        while i < n {
            let Some(m) = block.find_at(text, start(i)) else {
                break;
            };
            // The line holding the hit's start: the first whose end is at
            // or after it.
            let (mut lo, mut hi) = (i, n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if end(mid) < m.start() {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let mut j = lo;
            if j >= n {
                break;
            }
            if self.line.is_match(line(j)) {
                out.push(id(j));
            }
            j += 1;
            i = j;
        }
    }
}

/// Whether matching over a block gives every per-line match: not with
/// `\A`/`\z` (they only match at the ends of the block), nor when a flag
/// group turns multi-line mode off (`(?-m)`, `(?i-sm:...)`). A false alarm
/// (an escaped `\\A`, say) only costs speed.
fn block_safe(p: &str) -> bool {
    if p.contains(r"\A") || p.contains(r"\z") {
        return false;
    }
    !p.match_indices("(?").any(|(i, _)| {
        let flags: String = p[i + 2..]
            .chars()
            .take_while(|c| *c != ')' && *c != ':')
            .collect();
        flags
            .split_once('-')
            .is_some_and(|(_, off)| off.contains('m'))
    })
}

/// A block as read for a scan.
struct RawBlock {
    first_id: i64,
    ids: Vec<u8>,
    ends: Vec<u8>,
    text: Vec<u8>,
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matches {
    /// The ids of the matching lines, ascending.
    Ids(Vec<i64>),
    /// More lines than the scan's cap matched: only their number is kept
    /// (a frequent pattern is better filtered row by row, where the
    /// query's `LIMIT` stops early).
    Many(u64),
    /// More lines than the cap matched, and the scan stopped there (a query
    /// needs no count).
    Frequent,
}

impl Matches {
    /// How many lines matched (`u64::MAX` for `Frequent`: unknown).
    pub fn count(&self) -> u64 {
        match self {
            Matches::Ids(v) => v.len() as u64,
            Matches::Many(n) => *n,
            Matches::Frequent => u64::MAX,
        }
    }
}

/// What a scan read, for the benchmark and the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScanStats {
    pub blocks: u64,
    pub bytes: u64,
}

/// The log lines matching `m`, over the blocks that `f`'s hosts and time
/// range do not rule out, with `id > after_block` (blocks already
/// scanned): their ids, or only their number past `cap`. Blocks are read
/// on this thread and matched on `threads` others. Returns the matches,
/// the last block id read, and stats.
pub fn scan(
    conn: &Connection,
    m: &Matcher,
    f: &Filter,
    after_block: i64,
    threads: usize,
    cap: usize,
    stop_past_cap: bool,
) -> Result<(Matches, i64, ScanStats)> {
    let mut sql = String::from("SELECT id, first_id, ids, ends, text FROM log_blocks WHERE id > ?");
    let mut args: Vec<rusqlite::types::Value> = vec![after_block.into()];
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
    sql.push_str(" ORDER BY id");
    let mut stats = ScanStats::default();
    let mut last_block = after_block;
    let (tx, rx) = mpsc::sync_channel::<RawBlock>(threads * 4);
    let rx = Arc::new(Mutex::new(rx));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stop = &stop;
    let found = thread::scope(|s| -> Result<Matches> {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let rx = rx.clone();
                s.spawn(move || {
                    // Ids up to the cap; past it, only how many.
                    let (mut out, mut counted, mut over) = (Vec::new(), 0u64, false);
                    loop {
                        let next = rx.lock().map(|r| r.recv());
                        let Ok(Ok(b)) = next else {
                            return (out, counted, over);
                        };
                        m.scan(&b, &mut out);
                        if out.len() > cap {
                            counted += out.len() as u64;
                            out.clear();
                            over = true;
                            if stop_past_cap {
                                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        let read = (|| -> Result<()> {
            let mut st = conn.prepare_cached(&sql)?;
            let mut rows = st.query(rusqlite::params_from_iter(&args))?;
            while let Some(r) = rows.next()? {
                let b = RawBlock {
                    first_id: r.get(1)?,
                    ids: r.get(2)?,
                    ends: r.get(3)?,
                    text: r.get(4)?,
                };
                last_block = r.get(0)?;
                stats.blocks += 1;
                stats.bytes += b.text.len() as u64;
                if stop.load(std::sync::atomic::Ordering::Relaxed) || tx.send(b).is_err() {
                    break;
                }
            }
            Ok(())
        })();
        drop(tx);
        let mut ids = Vec::new();
        let (mut counted, mut over) = (0u64, false);
        for w in workers {
            let (out, n, o) = w.join().unwrap_or_default();
            ids.extend(out);
            counted += n;
            over |= o;
        }
        read?;
        Ok(if stop.load(std::sync::atomic::Ordering::Relaxed) {
            Matches::Frequent
        } else if over || ids.len() > cap {
            Matches::Many(counted + ids.len() as u64)
        } else {
            ids.sort_unstable();
            Matches::Ids(ids)
        })
    })?;
    Ok((found, last_block, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(lines: &[&str]) -> RawBlock {
        let mut b = RawBlock {
            first_id: 100,
            ids: Vec::new(),
            ends: Vec::new(),
            text: Vec::new(),
        };
        for (i, l) in lines.iter().enumerate() {
            if i > 0 {
                b.text.push(b'\n');
            }
            b.text.extend_from_slice(l.as_bytes());
            b.ids.extend_from_slice(&(i as u32 * 2).to_le_bytes());
            b.ends
                .extend_from_slice(&(b.text.len() as u32).to_le_bytes());
        }
        b
    }

    fn hits(pattern: &str, ci: bool, lines: &[&str]) -> Vec<i64> {
        let m = Matcher::new(&TextMatch {
            pattern: pattern.into(),
            case_insensitive: ci,
        })
        .unwrap();
        let mut out = Vec::new();
        m.scan(&block(lines), &mut out);
        // The same, line by line, with the per-line regex.
        let t = TextMatch {
            pattern: pattern.into(),
            case_insensitive: ci,
        }
        .compile()
        .unwrap();
        let expect: Vec<i64> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| t.is_match(l))
            .map(|(i, _)| 100 + 2 * i as i64)
            .collect();
        assert_eq!(out, expect, "{pattern}");
        out
    }

    #[test]
    fn block_scan_is_exactly_per_line() {
        let lines = [
            "GET /a 200",
            "error: disk",
            "",
            "ERROR net",
            "a\u{e9}b error",
            "x",
            "end error",
        ];
        assert_eq!(hits("error", false, &lines), [102, 108, 112]);
        assert_eq!(hits("error", true, &lines), [102, 106, 108, 112]);
        assert_eq!(hits("^error", false, &lines), [102]);
        assert_eq!(hits("error$", false, &lines), [108, 112]);
        assert_eq!(hits("^$", false, &lines), [104]);
        assert_eq!(hits(".*", false, &lines).len(), lines.len());
        assert_eq!(hits(r"\d+$", false, &lines), [100]);
        // Spanning matches in the block must not hide the next line's.
        hits(r"disk\s*ERROR", false, &lines);
        hits(r"[^z]*error", false, &lines);
        hits(r"(?s).*net", false, &lines);
        hits(r"\s", false, &lines);
        hits(r"\Aerror", false, &lines);
        hits(r"x\z", false, &lines);
        hits(r"(?-m)^x$", false, &lines);
        hits(r"(?i-sm)^X$", false, &lines);
        assert!(!block_safe(r"(?i-sm)^X$") && !block_safe(r"\Ax") && block_safe("(?i)x-m"));
        hits(r"\bnet\b", false, &lines);
        hits("zzz", false, &lines);
        hits("é", false, &lines);
    }
}
