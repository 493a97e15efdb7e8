//! Events other than log lines, as rows of `events` (log lines are blocks,
//! `logs.rs`): the SQL for a filter, a page, a count and a tail's catch-up.

use rusqlite::{Connection, types::Value};

use super::stitch::TraceMembers;
use crate::{
    aggregator::store::{EventId, Filter, Query, Result, StoreError, Stored},
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
    if !f.kinds.is_empty() {
        list(sql, args, "kind", f.kinds.iter().map(|k| k.name()));
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
pub(super) fn read_rows(stmt: &mut rusqlite::Statement<'_>, args: &[Value]) -> Result<Vec<Stored>> {
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
        let id = EventId::from_raw(id);
        let mut event: Event =
            serde_json::from_str(&json).map_err(|source| StoreError::Corrupt { id, source })?;
        event.ts_ns = u64::try_from(ts).unwrap_or(0);
        out.push(Stored { id, event });
    }
    Ok(out)
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
    args.push(Value::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    sql.push_str(&format!(
        " ORDER BY ts_ns {dir}, id {dir} LIMIT ?{}",
        args.len()
    ));
    let mut stmt = c.prepare_cached(&sql)?;
    read_rows(&mut stmt, &args)
}

/// How many rows match `f`.
pub(super) fn count(c: &Connection, f: &Filter, members: Option<&TraceMembers>) -> Result<u64> {
    if !f.wants_other_kinds() {
        return Ok(0);
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
    let mut sql = String::from("SELECT id, ts_ns, json FROM events WHERE 1=1");
    let mut args = Vec::new();
    push_filter(f, members, &mut sql, &mut args);
    args.push(Value::Integer(cursor));
    sql.push_str(&format!(" AND id > ?{}", args.len()));
    args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    sql.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
    let mut stmt = c.prepare_cached(&sql)?;
    read_rows(&mut stmt, &args)
}
