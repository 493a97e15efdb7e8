//! Grep over the log blocks of the SQLite store (docs/aggregator.md,
//! "Grep"; the blocks are `sqlite_logs`).
//!
//! Matching a regex row by row costs a call per line and the line's
//! decoding. Instead a grep runs the regex once over each block's text (the
//! lines joined with `\n`; the `regex` crate's literal prefilters skip
//! through non-matching text at memchr speed), and each hit is mapped back
//! to its line and checked against that line alone, so the result is
//! exactly what a per-line match gives. A count with no other condition
//! than hosts spreads the blocks over the cores ([`scan`]); queries match
//! block by block as they read them (`sqlite_logs`).
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
use rusqlite::Connection;

use crate::aggregator::store::{Filter, Result, TextMatch};

/// Same bound as `TextMatch::compile`.
const REGEX_SIZE_LIMIT: usize = 4 << 20;

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

    /// The indexes of the lines that match, in a block's `text` with the
    /// end offset of each line in `ends` (u32 LE).
    pub fn lines(&self, text: &[u8], ends: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let n = ends.len() / 4;
        let end = |i: usize| {
            u32::from_le_bytes(ends[i * 4..i * 4 + 4].try_into().unwrap_or_default()) as usize
        };
        let start = |i: usize| if i == 0 { 0 } else { end(i - 1) + 1 };
        let line = |i: usize| {
            text.get(start(i)..end(i).min(text.len()))
                .unwrap_or_default()
        };
        let Some(block) = &self.block else {
            for i in 0..n {
                if self.line.is_match(line(i)) {
                    out.push(i);
                }
            }
            return out;
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
                out.push(j);
            }
            j += 1;
            i = j;
        }
        out
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

/// What a scan read, for the benchmark and the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScanStats {
    pub blocks: u64,
    pub bytes: u64,
}

/// How many log lines match `m`, over the blocks that `f`'s hosts and
/// time range do not rule out (a count whose filter has nothing else).
/// Blocks are read on this thread and matched on `threads` others.
pub fn count(
    conn: &Connection,
    m: &Matcher,
    f: &Filter,
    threads: usize,
) -> Result<(u64, ScanStats)> {
    let mut sql = String::from("SELECT ends, text FROM log_blocks WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    super::logs::push_block_filter(f, &mut sql, &mut args);
    sql.push_str(" ORDER BY id");
    let mut stats = ScanStats::default();
    // (ends, text) of one block.
    let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, Vec<u8>)>(threads * 4);
    let rx = Arc::new(Mutex::new(rx));
    let found = thread::scope(|s| -> Result<u64> {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let rx = rx.clone();
                s.spawn(move || {
                    let mut n = 0u64;
                    loop {
                        let next = rx.lock().map(|r| r.recv());
                        let Ok(Ok((ends, text))) = next else {
                            return n;
                        };
                        n += m.lines(&text, &ends).len() as u64;
                    }
                })
            })
            .collect();
        let read = (|| -> Result<()> {
            let mut st = conn.prepare_cached(&sql)?;
            let mut rows = st.query(rusqlite::params_from_iter(&args))?;
            while let Some(r) = rows.next()? {
                let (ends, text): (Vec<u8>, Vec<u8>) = (r.get(0)?, r.get(1)?);
                stats.blocks += 1;
                stats.bytes += text.len() as u64;
                if tx.send((ends, text)).is_err() {
                    break;
                }
            }
            Ok(())
        })();
        drop(tx);
        let n = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
        read?;
        Ok(n)
    })?;
    Ok((found, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (text, ends) of a block holding `lines`.
    fn block(lines: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let (mut text, mut ends) = (Vec::new(), Vec::new());
        for (i, l) in lines.iter().enumerate() {
            if i > 0 {
                text.push(b'\n');
            }
            text.extend_from_slice(l.as_bytes());
            ends.extend_from_slice(&(text.len() as u32).to_le_bytes());
        }
        (text, ends)
    }

    fn hits(pattern: &str, ci: bool, lines: &[&str]) -> Vec<i64> {
        let m = Matcher::new(&TextMatch {
            pattern: pattern.into(),
            case_insensitive: ci,
        })
        .unwrap();
        let (text, ends) = block(lines);
        // As ids 100, 102, 104... (the line numbers doubled, offset).
        let out: Vec<i64> = m
            .lines(&text, &ends)
            .into_iter()
            .map(|i| 100 + 2 * i as i64)
            .collect();
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
