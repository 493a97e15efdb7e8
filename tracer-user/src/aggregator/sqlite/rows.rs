//! Events other than log lines, as rows of `events` (log lines are blocks,
//! `logs.rs`): the SQL for a filter, a page, a count and a tail's catch-up.

use regex::Regex;
use rusqlite::{Connection, types::Value};

use super::stitch::TraceMembers;
use crate::{
    aggregator::store::{EventId, Filter, Query, Result, RowKinds, StoreError, Stored, TextMatch},
    event::Event,
};

/// Appends ` AND ...` conditions for `f` to `sql`, over `events` rows
/// (callers check [`Filter::wants_other_kinds`] first), with `trace` the members of
/// `f.trace` ([`trace_members`]). Parameters are numbered (`?n`), so
/// callers number theirs after `args.len()`.
pub(super) fn push_filter(
    f: &Filter,
    trace: Option<&TraceMembers>,
    sql: &mut String,
    args: &mut Vec<Value>,
) {
    fn list<'a>(
        sql: &mut String,
        args: &mut Vec<Value>,
        col: &str,
        items: impl Iterator<Item = &'a str>,
    ) {
        sql.push_str(&format!(" AND {col} IN ("));
        for (i, it) in items.enumerate() {
            if i > 0 {
                sql.push(',');
            }
            args.push(Value::Text(it.to_owned()));
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
        list(sql, args, "host", f.hosts.iter().map(String::as_str));
    }
    if let RowKinds::Only(kinds) = f.row_kinds() {
        list(sql, args, "kind", kinds.iter().map(|k| k.name()));
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

/// Reads `id, ts_ns, json` rows into events with the corrected time: the
/// first `limit` whose search text `text` matches (all rows without it).
/// A text condition is checked here, not in SQL: rows with text (logpoint,
/// probe, inspector) are few next to log lines, and the regex must be the
/// `regex` crate's, as for the log blocks. So a statement with a text
/// condition has no LIMIT, and rows are read lazily until `limit` match.
fn read_rows(
    stmt: &mut rusqlite::Statement<'_>,
    args: &[Value],
    text: Option<&Regex>,
    limit: usize,
) -> Result<Vec<Stored>> {
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(r) = rows.next()? else { break };
        let id = EventId::from_raw(r.get::<_, i64>(0)?);
        let ts: i64 = r.get(1)?;
        let json: String = r.get(2)?;
        let mut event: Event =
            serde_json::from_str(&json).map_err(|source| StoreError::Corrupt { id, source })?;
        if let Some(re) = text
            && !event.data.search_text().is_some_and(|t| re.is_match(&t))
        {
            continue;
        }
        event.ts_ns = u64::try_from(ts).unwrap_or(0);
        out.push(Stored { id, event });
    }
    Ok(out)
}

/// The compiled text condition of `f`, if any.
fn text_regex(f: &Filter) -> Result<Option<Regex>> {
    Ok(f.text.as_ref().map(TextMatch::compile).transpose()?)
}

/// ` LIMIT ?n` for `limit`, unless rows are filtered by text after SQL.
fn push_limit(sql: &mut String, args: &mut Vec<Value>, text: Option<&Regex>, limit: usize) {
    if text.is_none() {
        args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" LIMIT ?{}", args.len()));
    }
}

/// A page of rows for `q`, in its order.
pub(super) fn query(
    c: &Connection,
    q: &Query,
    members: Option<&TraceMembers>,
) -> Result<Vec<Stored>> {
    if !q.filter.wants_other_kinds() {
        return Ok(Vec::new());
    }
    let text = text_regex(&q.filter)?;
    let mut sql = String::from("SELECT id, ts_ns, json FROM events WHERE 1=1");
    let mut args = Vec::new();
    push_filter(&q.filter, members, &mut sql, &mut args);
    if let Some(as_of) = q.as_of {
        args.push(Value::Integer(as_of.raw()));
        sql.push_str(&format!(" AND id <= ?{}", args.len()));
    }
    let (cmp, dir) = if q.newest_first {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some(p) = q.after {
        args.push(Value::Integer(p.ts_ns));
        args.push(Value::Integer(p.id.raw()));
        let n = args.len();
        sql.push_str(&format!(" AND (ts_ns, id) {cmp} (?{}, ?{n})", n - 1));
    }
    sql.push_str(&format!(" ORDER BY ts_ns {dir}, id {dir}"));
    push_limit(&mut sql, &mut args, text.as_ref(), q.limit);
    let mut stmt = c.prepare_cached(&sql)?;
    read_rows(&mut stmt, &args, text.as_ref(), q.limit)
}

/// How many rows match `f`.
pub(super) fn count(c: &Connection, f: &Filter, members: Option<&TraceMembers>) -> Result<u64> {
    if !f.wants_other_kinds() {
        return Ok(0);
    }
    if let Some(re) = text_regex(f)? {
        let mut sql = String::from("SELECT id, ts_ns, json FROM events WHERE 1=1");
        let mut args = Vec::new();
        push_filter(f, members, &mut sql, &mut args);
        let mut stmt = c.prepare_cached(&sql)?;
        let n = read_rows(&mut stmt, &args, Some(&re), usize::MAX)?.len();
        return Ok(n as u64);
    }
    let mut sql = String::from("SELECT count(*) FROM events WHERE 1=1");
    let mut args = Vec::new();
    push_filter(f, members, &mut sql, &mut args);
    let rows: i64 = c.query_row(&sql, rusqlite::params_from_iter(&args), |r| r.get(0))?;
    Ok(u64::try_from(rows).unwrap_or(0))
}

/// Up to `limit` rows with id above `cursor`, in id order.
pub(super) fn since(
    c: &Connection,
    cursor: i64,
    f: &Filter,
    members: Option<&TraceMembers>,
    limit: usize,
) -> Result<Vec<Stored>> {
    if !f.wants_other_kinds() {
        return Ok(Vec::new());
    }
    let text = text_regex(f)?;
    let mut sql = String::from("SELECT id, ts_ns, json FROM events WHERE 1=1");
    let mut args = Vec::new();
    push_filter(f, members, &mut sql, &mut args);
    args.push(Value::Integer(cursor));
    sql.push_str(&format!(" AND id > ?{}", args.len()));
    sql.push_str(" ORDER BY id");
    push_limit(&mut sql, &mut args, text.as_ref(), limit);
    let mut stmt = c.prepare_cached(&sql)?;
    read_rows(&mut stmt, &args, text.as_ref(), limit)
}

/// Adds to a trace's rows the logpoint hits of its requests: those whose
/// `req_id` is one of `members.reqs` on the same host, or is `trace`
/// itself (as for log lines).
pub(super) fn add_logpoints(c: &Connection, trace: &str, members: &mut TraceMembers) -> Result<()> {
    let mut st =
        c.prepare_cached("SELECT id, host FROM events WHERE kind = 'logpoint' AND req_id = ?")?;
    let mut reqs: Vec<&str> = members.reqs.iter().map(|(_, r)| r.as_str()).collect();
    reqs.push(trace);
    reqs.sort_unstable();
    reqs.dedup();
    let mut found = Vec::new();
    for req in reqs {
        let rows = st.query_map([req], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (id, host) = row?;
            if req == trace || members.reqs.contains(&(host, req.to_owned())) {
                found.push(id);
            }
        }
    }
    if !found.is_empty() {
        members.ids.extend(found);
        members.ids.sort_unstable();
        members.ids.dedup();
    }
    Ok(())
}
