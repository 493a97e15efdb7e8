//! `GET /v1/series` on SQLite: reads the window's events reduced to the
//! fields the graphs need (one indexed range scan on `ts_ns`, JSON fields
//! pulled out by SQLite's `json_extract`) and hands them to the pure
//! bucketing in `series.rs`.

use rusqlite::{Connection, types::Value};

use crate::aggregator::{
    series::{Sample, Series, SeriesBuilder, SeriesQuery},
    store::Result,
};

/// The event kinds a series is computed from.
/// (Log lines are counted from their blocks.)
const KINDS: &str = "('http', 'loop', 'gc', 'tcp_retransmit', 'lost', 'probe')";

pub(super) fn series(conn: &Connection, q: &SeriesQuery) -> Result<Series> {
    let mut sql = format!(
        "SELECT ts_ns, host, pid, kind,
                json_extract(json, '$.side'), json_extract(json, '$.status'),
                json_extract(json, '$.duration_ns'), json_extract(json, '$.req_bytes'),
                json_extract(json, '$.resp_bytes'), json_extract(json, '$.busy_ns'),
                json_extract(json, '$.count'), json_extract(json, '$.segments')
           FROM events
          WHERE ts_ns >= ? AND ts_ns < ? AND kind IN {KINDS}"
    );
    let mut args = vec![Value::Integer(q.since), Value::Integer(q.until)];
    if !q.hosts.is_empty() {
        sql.push_str(" AND host IN (");
        sql.push_str(&vec!["?"; q.hosts.len()].join(", "));
        sql.push(')');
        args.extend(q.hosts.iter().cloned().map(Value::Text));
    }
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut builder = SeriesBuilder::new(q.clone());
    let num = |v: Option<i64>| v.and_then(|x| u64::try_from(x).ok()).unwrap_or(0);
    while let Some(r) = rows.next()? {
        let ts: i64 = r.get(0)?;
        let host: String = r.get(1)?;
        let pid = u32::try_from(r.get::<_, i64>(2)?).unwrap_or(0);
        let kind: String = r.get(3)?;
        let sample = match kind.as_str() {
            "http" => Sample::Http {
                server: r.get::<_, Option<String>>(4)?.as_deref() == Some("server"),
                status: u16::try_from(num(r.get(5)?)).unwrap_or(0),
                duration_ns: num(r.get(6)?),
                req_bytes: num(r.get(7)?),
                resp_bytes: num(r.get(8)?),
            },
            "loop" => Sample::Loop {
                busy_ns: num(r.get(9)?),
            },
            "gc" => Sample::Gc {
                duration_ns: num(r.get(6)?),
            },
            "tcp_retransmit" => Sample::Retransmit {
                // Stored before segments were recorded: one.
                segments: r.get::<_, Option<i64>>(11)?.map_or(1, |v| num(Some(v))),
            },
            "lost" => Sample::Lost {
                count: num(r.get(10)?),
            },
            // A count or latency aggregate has its hits; an args event is one.
            "probe" => Sample::Probe {
                hits: r.get::<_, Option<i64>>(10)?.map_or(1, |v| num(Some(v))),
            },
            _ => continue,
        };
        builder.add(ts, &host, pid, sample);
    }
    super::logs::each_line(conn, q.since, q.until, &q.hosts, |ts, host, pid| {
        builder.add(ts, host, pid, Sample::Log);
    })?;
    Ok(builder.finish())
}
