//! SQL text for the ClickHouse store: literals, the corrected time, a
//! [`Filter`] as a WHERE clause, and the regex prefilter.
//!
//! Literals are written into the statement (ClickHouse 18.16 has no query
//! parameters), escaped here: in a ClickHouse string literal only the
//! backslash and the quote need escaping (and NUL, for safety).

use std::collections::BTreeSet;

use regex_syntax::hir::literal::{ExtractKind, Extractor};

use crate::aggregator::store::{EventKind, Filter, TEXT_KINDS, TextMatch, stream_name};

/// A string literal.
pub fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A database name as an identifier (letters, digits, `_` only: checked
/// when the store is configured).
pub fn ident(name: &str) -> String {
    format!("`{name}`")
}

/// Every host's clock correction, as the store reads them for a query.
#[derive(Debug, Clone, Default)]
pub struct Offsets(pub Vec<(String, i64)>);

impl Offsets {
    pub fn of(&self, host: &str) -> i64 {
        self.0
            .iter()
            .find(|(h, _)| h == host)
            .map_or(0, |(_, o)| *o)
    }

    /// The corrected time of a row (`raw + offset(host)`, at least 0), as
    /// an SQL expression.
    pub fn ts_expr(&self) -> String {
        if self.0.is_empty() {
            return "greatest(raw_ts, toInt64(0))".into();
        }
        let hosts: Vec<String> = self.0.iter().map(|(h, _)| lit(h)).collect();
        let offs: Vec<String> = self
            .0
            .iter()
            .map(|(_, o)| format!("toInt64({o})"))
            .collect();
        format!(
            "greatest(raw_ts + transform(host, [{}], [{}], toInt64(0)), toInt64(0))",
            hosts.join(", "),
            offs.join(", ")
        )
    }

    /// The least and largest correction (0 included: hosts without one).
    pub fn bounds(&self) -> (i64, i64) {
        self.0
            .iter()
            .fold((0, 0), |(lo, hi), (_, o)| (lo.min(*o), hi.max(*o)))
    }
}

/// `col IN ('a', 'b')`.
pub fn in_list<'a>(col: &str, items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.into_iter().map(lit).collect();
    format!("{col} IN ({})", items.join(", "))
}

/// The members of a trace, as the store found them (`stitch.rs`).
#[derive(Debug, Default, Clone)]
pub struct TraceSet {
    /// The trace id asked for (log lines with this req_id belong too).
    pub id: String,
    /// Ids of the http events.
    pub ids: Vec<i64>,
    /// `(host, req_id)` of those exchanges: their log lines.
    pub reqs: Vec<(String, String)>,
    /// The raw times all of the trace's events lie within, when it has
    /// exchanges: from the first one's start to the last one's end,
    /// give or take [`TRACE_SLACK_NS`]. A log line or logpoint hit
    /// belongs to a request when the agent saw it written while that
    /// request was in flight on its host, that is within the exchange's
    /// times on the same clock.
    pub raw: RawBounds,
}

/// Margin on a trace's raw times ([`TraceSet::raw`]): the line and the
/// exchange are timed by one host's clock, so this is only a margin.
pub const TRACE_SLACK_NS: i64 = 1_000_000_000;

/// The raw times (the agents' clocks, ns) a read's events lie within:
/// `lo <= raw_ts <= hi`, either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawBounds {
    pub lo: Option<i64>,
    pub hi: Option<i64>,
}

impl RawBounds {
    /// No bound: any raw time.
    pub const ALL: Self = Self { lo: None, hi: None };

    pub fn between(lo: i64, hi: i64) -> Self {
        Self {
            lo: Some(lo),
            hi: Some(hi),
        }
    }

    /// The times within both.
    pub fn and(self, other: Self) -> Self {
        let tighter = |a: Option<i64>, b: Option<i64>, pick: fn(i64, i64) -> i64| match (a, b) {
            (Some(a), Some(b)) => Some(pick(a, b)),
            (a, b) => a.or(b),
        };
        Self {
            lo: tighter(self.lo, other.lo, i64::max),
            hi: tighter(self.hi, other.hi, i64::min),
        }
    }
}

/// The rows of `db.events` that are committed (module docs of
/// `super`): a batch's events count once its batch row exists, and only
/// the first commit of a batch stored twice.
///
/// Only the batches whose events' raw times overlap `within` are read: a
/// batch's row records the least and the largest raw time of its events
/// (0 and 0 in rows from before version 4, which are always read), so a
/// batch none of whose events lie within cannot hold an event the read
/// wants, and every copy of a batch records the same times, so the first
/// commit of each batch read is still found. Unbounded, this read every
/// batch ever stored for every query and every poll of a live tail: 5 s
/// with 10M batch rows, the few hours that agents sending a small batch
/// every 50 ms fill (docs/aggregator.md, "Flat as the store grows").
/// With `sharded` the set is built here and sent to the shards (`GLOBAL
/// IN`): `batches` lives on this server only.
pub fn committed(db: &str, sharded: bool, within: RawBounds) -> String {
    let global = if sharded { "GLOBAL " } else { "" };
    let mut conds = Vec::new();
    if let Some(hi) = within.hi {
        conds.push(format!("min_raw_ts <= {hi}"));
    }
    if let Some(lo) = within.lo {
        conds.push(format!("(max_raw_ts >= {lo} OR max_raw_ts = 0)"));
    }
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    format!(
        "commit_id {global}IN (SELECT min(commit_id) FROM {db}.batches{where_} \
         GROUP BY host, run_id, seq)"
    )
}

/// The WHERE clause (without `WHERE`) for `f` over `db.events`, with `ts`
/// the corrected time (an alias the SELECT defines). The text condition
/// here is only a prefilter ([`prefilter`]); the regex itself is applied
/// by the caller to the rows returned. `within`: the raw times the
/// caller's read is bounded by besides the filter's (a live tail's window
/// of batches), which bound its commit check too ([`committed`]).
pub fn filter_sql(
    db: &str,
    sharded: bool,
    f: &Filter,
    offsets: &Offsets,
    trace: Option<&TraceSet>,
    within: RawBounds,
) -> String {
    let mut conds = Vec::new();
    let (lo, hi) = offsets.bounds();
    let mut raw = RawBounds::ALL;
    if let Some(s) = f.since {
        conds.push(format!("ts >= {s}"));
        // The same bound on the raw time, which the primary key can use.
        let r = s.saturating_sub(hi);
        conds.push(format!("raw_ts >= {r}"));
        raw.lo = Some(r);
    }
    if let Some(u) = f.until {
        conds.push(format!("ts < {u}"));
        let r = u.saturating_sub(lo);
        conds.push(format!("raw_ts < {r}"));
        raw.hi = Some(r.saturating_sub(1));
    }
    let trace = trace.filter(|_| f.trace.is_some());
    let trace_raw = trace.map_or(RawBounds::ALL, |t| t.raw);
    if let (Some(lo), Some(hi), Some(t)) = (trace_raw.lo, trace_raw.hi, trace) {
        // The primary key (host, raw_ts, id) then reads only the trace's
        // hosts at its times, however long the store has been written.
        let hosts: BTreeSet<&str> = t.reqs.iter().map(|(h, _)| h.as_str()).collect();
        conds.push(in_list("host", hosts));
        conds.push(format!("raw_ts BETWEEN {lo} AND {hi}"));
    }
    conds.insert(0, committed(db, sharded, raw.and(within).and(trace_raw)));
    if !f.hosts.is_empty() {
        conds.push(in_list("host", f.hosts.iter().map(String::as_str)));
    }
    if !f.kinds.is_empty() {
        conds.push(in_list("kind", f.kinds.iter().map(|k| k.name())));
    }
    if f.stream.is_some() {
        conds.push(format!("kind = {}", lit(EventKind::LOG.name())));
    } else if f.text.is_some() {
        conds.push(in_list("kind", TEXT_KINDS.iter().map(|k| k.name())));
    }
    if let Some(s) = f.stream {
        conds.push(format!("stream = {}", lit(stream_name(s))));
    }
    if let Some(t) = &f.text
        && let Some(p) = prefilter(t)
    {
        conds.push(p);
    }
    if f.trace.is_some() {
        let t = trace.cloned().unwrap_or_default();
        // Log lines and logpoint hits belong to the request they fired in.
        let lines = "kind IN ('log', 'logpoint')";
        let mut any = vec![format!("({lines} AND req_id = {})", lit(&t.id))];
        if !t.ids.is_empty() {
            let ids: Vec<String> = t.ids.iter().map(i64::to_string).collect();
            any.push(format!("(kind = 'http' AND id IN ({}))", ids.join(", ")));
        }
        if !t.reqs.is_empty() {
            let pairs: Vec<String> = t
                .reqs
                .iter()
                .map(|(h, r)| format!("({}, {})", lit(h), lit(r)))
                .collect();
            any.push(format!(
                "({lines} AND (host, req_id) IN ({}))",
                pairs.join(", ")
            ));
        }
        conds.push(format!("({})", any.join(" OR ")));
    }
    conds.join(" AND ")
}

/// Literals longest first kept at most: more make the statement long and
/// the scan slower than the regex would be.
const MAX_PREFILTER_LITERALS: usize = 64;

/// A condition every line the regex can match satisfies: one of the
/// literals every match starts with occurs in the text (`position`, a
/// byte search, over the text column only; `positionCaseInsensitive` for
/// a case-insensitive pattern). None when the regex has no
/// such finite set of literals (then every line of the other conditions
/// is read and the regex decides). Found with regex-syntax's literal
/// extractor on the same pattern and flags the `regex` crate compiles, so
/// case-insensitive patterns give all their case variants.
pub fn prefilter(t: &TextMatch) -> Option<String> {
    let hir = regex_syntax::ParserBuilder::new()
        .case_insensitive(t.case_insensitive)
        .build()
        .parse(&t.pattern)
        .ok()?;
    let mut ex = Extractor::new();
    // Past the limit the extractor shortens the literals (a shorter
    // prefix of every match is still one) rather than giving up, so
    // `ERR-[0-9]{4}` keeps `ERR-0`..`ERR-9` and a long `-i` phrase its
    // first letters' case variants.
    ex.kind(ExtractKind::Prefix)
        .limit_total(MAX_PREFILTER_LITERALS);
    let seq = ex.extract(&hir);
    let lits = seq.literals()?;
    if lits.is_empty() || lits.len() > MAX_PREFILTER_LITERALS {
        return None;
    }
    // Case-insensitive: the variants that differ in ASCII case only are
    // one `positionCaseInsensitive` (ASCII case folding; any other byte
    // compared as is, so every variant still finds itself): one search
    // per row instead of up to 64 (`-i 'connection reset by peer'`: 5-6 s
    // for -c over 10M lines with 64 `position`s, 0.65 s with one).
    let mut strs = Vec::with_capacity(lits.len());
    for l in lits {
        let s = std::str::from_utf8(l.as_bytes()).ok()?;
        if s.is_empty() {
            return None;
        }
        strs.push(if t.case_insensitive {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        });
    }
    strs.sort();
    strs.dedup();
    // Several literals with a long common prefix (`ERR-0`..`ERR-9`): the
    // prefix alone, one search instead of ten. Every match contains it.
    if strs.len() > 1 {
        let first = &strs[0];
        let mut common = first.len();
        for s in &strs[1..] {
            common = common.min(
                first
                    .char_indices()
                    .zip(s.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(first.len().min(s.len()), |((i, _), _)| i),
            );
        }
        if common >= MIN_COMMON_PREFIX {
            strs = vec![first[..common].to_string()];
        }
    }
    let search = if t.case_insensitive {
        "positionCaseInsensitive"
    } else {
        "position"
    };
    let conds: Vec<String> = strs
        .iter()
        .map(|s| format!("{search}(text, {}) > 0", lit(s)))
        .collect();
    Some(format!("({})", conds.join(" OR ")))
}

/// A common prefix at least this long (bytes) replaces the literals that
/// share it.
const MIN_COMMON_PREFIX: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(lit(r"it's a \d"), r"'it\'s a \\d'");
        assert_eq!(lit("a\0b"), r"'a\0b'");
    }

    #[test]
    fn prefilters_are_sound() {
        let p = |pattern: &str, ci: bool| {
            prefilter(&TextMatch {
                pattern: pattern.into(),
                case_insensitive: ci,
            })
        };
        assert_eq!(p("error", false).unwrap(), "(position(text, 'error') > 0)");
        assert_eq!(
            p("disk|net", false).unwrap(),
            "(position(text, 'disk') > 0 OR position(text, 'net') > 0)"
        );
        // Every case variant, Unicode's included (o/O times k/K/U+212A),
        // those differing in ASCII case only as one.
        assert_eq!(
            p("ok", true).unwrap(),
            "(positionCaseInsensitive(text, 'ok') > 0 OR \
             positionCaseInsensitive(text, 'o\u{212a}') > 0)"
        );
        // Too many literals: shorter prefixes of them, still sound.
        let class = p(r"ERR-[0-9]{4}-[A-Z]{2}\b", false).unwrap();
        let n = class.matches("position").count();
        assert!((1..=MAX_PREFILTER_LITERALS).contains(&n), "{class}");
        assert_eq!(class, "(position(text, 'ERR-') > 0)");
        let phrase = p("connection reset by peer", true).unwrap();
        let n = phrase.matches("position").count();
        assert!((1..=MAX_PREFILTER_LITERALS).contains(&n), "{phrase}");
        assert!(
            phrase.starts_with("(positionCaseInsensitive(text, 'conn"),
            "{phrase}"
        );
        assert_eq!(phrase.matches("position").count(), 1, "{phrase}");
        // No literal every match starts with: no prefilter.
        assert_eq!(p(r"\d9$", false), None);
        assert_eq!(p(".*", false), None);
        assert_eq!(p("(", false), None);
    }
}
