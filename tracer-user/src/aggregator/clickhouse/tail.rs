//! Where a live tail's next events are.
//!
//! A live tail polls by commit: each poll reads the batches committed since
//! the last one, a group at a time ([`groups`], [`group_condition`]: their
//! commit ids, ids' range and hosts' raw times). A read of the events after
//! a cursor in id order (`Store::since_cursor`, which every backend
//! answers; live tails used it until 2026-12-06) goes window by window
//! ([`windows`]), as follows.
//!
//! Such a read wants the events after its cursor in id order, but `events` is
//! sorted by host and raw time, and merges make its parts as large as the
//! store: bounded by its ids alone, a read would cover every part whose ids
//! reach past the cursor. Each row of `batches` records its events' ids
//! (the commit id and the count) and their host's raw times (since schema
//! version 4), so a read can be bounded by the times of the batches it
//! needs instead.
//!
//! Those batches are cut, in id order, into windows of about
//! [`WINDOW_EVENTS`] events, and a page reads one window after another
//! until it is full. A window ends just before the next window's first id,
//! and it reads the times of every batch with an id inside it (a batch of
//! another aggregator may begin inside an earlier one's ids). So a tail
//! that follows a firehose reads about a window's events per page, not
//! every event committed since its cursor, which it used to sort by id to
//! keep the first page's worth (1.4M rows per page of 1000, measured).

use super::sql::{self, RawBounds};

/// Events per window: more than a tail's page (10,000), and enough that a
/// filtered tail (which may keep few of them) needs few reads.
pub const WINDOW_EVENTS: u64 = 16_384;
/// Batches per window, at most: each may add a range to the statement
/// (ClickHouse refuses statements over 256 KiB by default).
const WINDOW_BATCHES: usize = 256;
/// Raw times of one host closer than this are read as one range.
const SPAN_GAP_NS: i64 = 1_000_000_000;

/// A batch with ids past a tail's cursor: its host, the raw times of its
/// events, and its first and last id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    pub host: String,
    pub lo: i64,
    pub hi: i64,
    pub first: i64,
    pub last: i64,
    pub events: u64,
}

impl NewBatch {
    /// Whether its row records its events' raw times (since version 4;
    /// 0 and 0 before).
    pub fn timed(&self) -> bool {
        self.lo != 0 || self.hi != 0
    }
}

/// One read of a tail's page: the events with ids in (`after`, `upto`]
/// (no upper bound when `upto` is None) that meet `spans` (any, when it is
/// None), all within the raw times `raw`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub after: i64,
    pub upto: Option<i64>,
    pub spans: Option<String>,
    pub raw: RawBounds,
}

impl Window {
    /// The window's conditions, to add to a read's `WHERE`.
    pub fn condition(&self) -> String {
        let mut c = format!(" AND id > {}", self.after);
        if let Some(upto) = self.upto {
            c.push_str(&format!(" AND id <= {upto}"));
        }
        if let Some(spans) = &self.spans {
            c.push_str(&format!(" AND ({spans})"));
        }
        c
    }
}

/// The windows that hold every event after `cursor`, given `batches`: the
/// batches whose last id is past it, sorted by first id. `complete` is
/// false when more batches exist than were listed: those begin at or after
/// the last one listed, so the windows end just before it, and one last
/// window reads everything from there on without times.
pub fn windows(batches: &[NewBatch], cursor: i64, complete: bool) -> Vec<Window> {
    let mut out = Vec::new();
    let mut after = cursor;
    let (mut events, mut listed) = (0u64, 0usize);
    let cut = |after: &mut i64, upto: i64, out: &mut Vec<Window>| {
        let (spans, raw) = spans(batches, *after, upto);
        out.push(Window {
            after: *after,
            upto: Some(upto),
            spans: Some(spans),
            raw,
        });
        *after = upto;
    };
    for (i, b) in batches.iter().enumerate() {
        let Some(next) = batches.get(i + 1) else {
            break;
        };
        events += b.events;
        listed += 1;
        // The next batch begins a new window once this one is full, if an
        // id lies between (a batch that began before the cursor may
        // start after it in this order).
        if (events >= WINDOW_EVENTS || listed >= WINDOW_BATCHES) && next.first - 1 > after {
            cut(&mut after, next.first - 1, &mut out);
            (events, listed) = (0, 0);
        }
    }
    match (batches.last(), complete) {
        (None, true) => {}
        (Some(_), true) => {
            let (spans, raw) = spans(batches, after, i64::MAX);
            out.push(Window {
                after,
                upto: None,
                spans: Some(spans),
                raw,
            });
        }
        (last, false) => {
            if let Some(last) = last
                && last.first - 1 > after
            {
                cut(&mut after, last.first - 1, &mut out);
            }
            out.push(Window {
                after,
                upto: None,
                spans: None,
                raw: RawBounds::ALL,
            });
        }
    }
    out
}

/// A poll's new batches (`ClickhouseStore::poll_tail`), in commit order,
/// cut into groups of about [`WINDOW_EVENTS`] events and at most
/// [`WINDOW_BATCHES`] batches, each read at once.
pub fn groups(batches: &[NewBatch]) -> Vec<&[NewBatch]> {
    let mut out = Vec::new();
    let (mut start, mut events) = (0, 0u64);
    for (i, b) in batches.iter().enumerate() {
        events += b.events;
        if events >= WINDOW_EVENTS || i + 1 - start >= WINDOW_BATCHES {
            out.push(&batches[start..=i]);
            (start, events) = (i + 1, 0);
        }
    }
    if start < batches.len() {
        out.push(&batches[start..]);
    }
    out
}

/// The conditions that read a group's events and no others: their commit
/// ids, and (to read only their granules) their ids' range and their
/// hosts' raw times, when every row records them; and the raw times its
/// events lie within (any, when a row does not record them).
pub fn group_condition(group: &[NewBatch]) -> (String, RawBounds) {
    let commits: Vec<String> = group.iter().map(|b| b.first.to_string()).collect();
    let lo = group.iter().map(|b| b.first).min().unwrap_or(0);
    let hi = group.iter().map(|b| b.last).max().unwrap_or(0);
    let mut c = format!(
        " AND commit_id IN ({}) AND id >= {lo} AND id <= {hi}",
        commits.join(", ")
    );
    if !group.iter().all(NewBatch::timed) {
        return (c, RawBounds::ALL);
    }
    let (spans, within) = spans(group, i64::MIN, i64::MAX);
    c.push_str(&format!(" AND ({spans})"));
    (c, within)
}

/// The raw times, per host, of the batches with ids in (`after`, `upto`],
/// as a condition on `events` (ranges of a host less than [`SPAN_GAP_NS`]
/// apart are read as one), and the times all of them lie within.
fn spans(batches: &[NewBatch], after: i64, upto: i64) -> (String, RawBounds) {
    let mut inside: Vec<&NewBatch> = batches
        .iter()
        .filter(|b| b.first <= upto && b.last > after)
        .collect();
    inside.sort_by(|a, b| (&a.host, a.lo).cmp(&(&b.host, b.lo)));
    let mut merged: Vec<(&str, i64, i64)> = Vec::new();
    for b in inside {
        match merged.last_mut() {
            Some((host, _, hi)) if *host == b.host && b.lo <= hi.saturating_add(SPAN_GAP_NS) => {
                *hi = (*hi).max(b.hi);
            }
            _ => merged.push((&b.host, b.lo, b.hi)),
        }
    }
    let within = RawBounds {
        lo: merged.iter().map(|m| m.1).min(),
        hi: merged.iter().map(|m| m.2).max(),
    };
    let sql = merged
        .iter()
        .map(|(host, lo, hi)| format!("host = {} AND raw_ts BETWEEN {lo} AND {hi}", sql::lit(host)))
        .collect::<Vec<_>>()
        .join(" OR ");
    (sql, within)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(host: &str, lo: i64, first: i64, events: u64) -> NewBatch {
        NewBatch {
            host: host.to_owned(),
            lo,
            hi: lo + 10,
            first,
            last: first + (i64::try_from(events).unwrap() - 1) * 256,
            events,
        }
    }

    #[test]
    fn a_few_batches_are_one_window_without_an_upper_bound() {
        let b = [
            batch("a", 100, 1000, 10),
            batch("b", 5_000_000_000, 9000, 10),
        ];
        assert_eq!(
            windows(&b, 500, true),
            vec![Window {
                after: 500,
                upto: None,
                spans: Some(
                    "host = 'a' AND raw_ts BETWEEN 100 AND 110 OR \
                     host = 'b' AND raw_ts BETWEEN 5000000000 AND 5000000010"
                        .to_owned()
                ),
                raw: RawBounds::between(100, 5_000_000_010),
            }]
        );
    }

    #[test]
    fn a_backlog_is_cut_where_a_window_is_full() {
        // Three batches of a window's events each (ids 256 apart), their
        // first ids 20M apart.
        let n = WINDOW_EVENTS;
        let b = [
            batch("a", 0, 10_000_000, n),
            batch("a", 2_000_000_000, 30_000_000, n),
            batch("a", 4_000_000_000, 50_000_000, n),
        ];
        let w = windows(&b, 0, true);
        let bounds: Vec<(i64, Option<i64>)> = w.iter().map(|w| (w.after, w.upto)).collect();
        assert_eq!(
            bounds,
            vec![
                (0, Some(29_999_999)),
                (29_999_999, Some(49_999_999)),
                (49_999_999, None)
            ]
        );
        assert_eq!(
            w[1].spans.as_deref(),
            Some("host = 'a' AND raw_ts BETWEEN 2000000000 AND 2000000010")
        );
        // The commit check of each window reads the batches of its times.
        assert_eq!(w[1].raw, RawBounds::between(2_000_000_000, 2_000_000_010));
        assert_eq!(w[2].raw, RawBounds::between(4_000_000_000, 4_000_000_010));
    }

    #[test]
    fn a_group_is_within_its_batches_times_when_all_record_them() {
        let mut g = vec![batch("a", 500, 1000, 3), batch("b", 70, 5000, 3)];
        assert_eq!(group_condition(&g).1, RawBounds::between(70, 510));
        // A row from before version 4 (no times): the check reads all.
        g.push(batch("c", 0, 9000, 1));
        g[2].hi = 0;
        assert_eq!(group_condition(&g).1, RawBounds::ALL);
    }

    #[test]
    fn many_small_batches_are_cut_into_windows_of_a_few_hundred() {
        let b: Vec<NewBatch> = (0..1000)
            .map(|i| batch(&format!("h{i}"), 0, 1000 + i * 256, 1))
            .collect();
        let w = windows(&b, 0, true);
        assert_eq!(w.len(), 4);
        for w in &w {
            let ranges = w.spans.as_deref().unwrap().matches(" OR ").count() + 1;
            assert!(ranges <= WINDOW_BATCHES, "{ranges}");
        }
    }

    #[test]
    fn a_window_reads_an_earlier_batch_whose_ids_reach_into_it() {
        // Aggregator 1's big batch spans ids that aggregator 2's batches
        // begin inside.
        let n = WINDOW_EVENTS;
        let big = batch("a", 0, 1_000, 2 * n);
        let b = [big.clone(), batch("b", 7_000_000_000, big.first + 1_000, n)];
        let w = windows(&b, 0, true);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].upto, Some(big.first + 999));
        assert_eq!(
            w[1].spans.as_deref(),
            Some(
                "host = 'a' AND raw_ts BETWEEN 0 AND 10 OR \
                 host = 'b' AND raw_ts BETWEEN 7000000000 AND 7000000010"
            )
        );
    }

    #[test]
    fn past_the_listed_batches_one_window_reads_the_rest_unbounded() {
        let b = [batch("a", 0, 1000, 5), batch("b", 0, 9000, 5)];
        let w = windows(&b, 0, false);
        assert_eq!(
            w,
            vec![
                Window {
                    after: 0,
                    upto: Some(8999),
                    spans: Some("host = 'a' AND raw_ts BETWEEN 0 AND 10".to_owned()),
                    raw: RawBounds::between(0, 10),
                },
                Window {
                    after: 8999,
                    upto: None,
                    spans: None,
                    raw: RawBounds::ALL,
                }
            ]
        );
        assert_eq!(
            w[0].condition(),
            " AND id > 0 AND id <= 8999 AND (host = 'a' AND raw_ts BETWEEN 0 AND 10)"
        );
        // Nothing listed and more to come: one unbounded read.
        assert_eq!(
            windows(&[], 7, false),
            vec![Window {
                after: 7,
                upto: None,
                spans: None,
                raw: RawBounds::ALL,
            }]
        );
        assert!(windows(&[], 7, true).is_empty());
    }
}
