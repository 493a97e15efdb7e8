//! `GET /v1/series` on SQLite: reads the window's events reduced to the
//! fields the graphs need (one indexed range scan on `ts_ns`, JSON fields
//! pulled out by SQLite's `json_extract`) and hands them to the pure
//! bucketing in `series.rs`.

use rusqlite::{Connection, types::Value};

use super::{
    series::{Sample, Series, SeriesBuilder, SeriesQuery},
    store::Result,
};

/// The event kinds a series is computed from.
/// (Log lines are counted from their blocks.)
const KINDS: &str = "('http', 'loop', 'gc', 'tcp_retransmit', 'lost')";

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
            _ => continue,
        };
        builder.add(ts, &host, pid, sample);
    }
    super::sqlite_logs::each_line(conn, q.since, q.until, &q.hosts, |ts, host, pid| {
        builder.add(ts, host, pid, Sample::Log);
    })?;
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{
        sqlite::SqliteStore,
        store::{Batch, Store as _},
    };
    use super::*;
    use crate::event::Event;

    const S: i64 = 1_000_000_000;

    fn event(ts: i64, pid: u32, kind: &str, fields: serde_json::Value) -> Event {
        let mut v = json!({"ts_ns": ts, "host": "h1", "pid": pid, "tid": pid,
                           "comm": "node", "kind": kind});
        if let (Some(o), Some(f)) = (v.as_object_mut(), fields.as_object()) {
            o.extend(f.clone());
        }
        serde_json::from_value(v).expect("a valid event")
    }

    fn http(ts: i64, side: &str, status: u16, ms: i64) -> Event {
        event(
            ts,
            7,
            "http",
            json!({"side": side, "method": "GET", "path": "/", "status": status,
                   "duration_ns": ms * 1_000_000, "req_bytes": 100, "resp_bytes": 1000,
                   "saddr": "10.0.0.1", "sport": 8080, "daddr": "10.0.0.2", "dport": 40000,
                   "tls": false, "req_id": format!("r{ts}")}),
        )
    }

    #[test]
    fn series_from_stored_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut events: Vec<Event> = (1..=4)
            .map(|ms| http(10 * S + ms, "server", 200, ms))
            .collect();
        events.push(http(11 * S, "server", 503, 100));
        events.push(http(11 * S, "client", 200, 3));
        events.push(event(
            11 * S,
            7,
            "log",
            json!({"stream": "stdout", "text": "x"}),
        ));
        events.push(event(12 * S, 7, "gc", json!({"duration_ns": 2_000_000})));
        events.push(event(
            12 * S,
            7,
            "loop",
            json!({"poll_ns": 1, "busy_ns": 40_000_000}),
        ));
        events.push(event(
            12 * S,
            7,
            "tcp_retransmit",
            json!({"saddr": "10.0.0.1", "sport": 1, "daddr": "10.0.0.2", "dport": 2}),
        ));
        events.push(event(
            13 * S,
            0,
            "lost",
            json!({"count": 6, "stage": "ring", "for_kind": "log"}),
        ));
        // Outside the window.
        events.push(event(
            14 * S,
            7,
            "log",
            json!({"stream": "stdout", "text": "late"}),
        ));
        store
            .ingest(Batch {
                host: "h1".into(),
                run_id: "r".into(),
                seq: 0,
                events,
            })
            .unwrap();
        let q = SeriesQuery::new(10 * S, 14 * S, 2 * S, vec![]).unwrap();
        let s = store.series(&q).unwrap();
        assert_eq!(s.times_ns, vec![10 * S, 12 * S]);
        assert_eq!(s.procs.len(), 2);
        let (agent, p) = (&s.procs[0], &s.procs[1]);
        assert_eq!(agent.pid, 0);
        assert_eq!(agent.lost_per_s, vec![0.0, 3.0]);
        assert_eq!(p.pid, 7);
        assert_eq!(p.requests_per_s, vec![2.5, 0.0]);
        // Nearest rank of [1, 2, 3, 4, 100] ms: p50 is the 3rd, p99 the 5th.
        assert_eq!(p.latency_p50_ms, vec![Some(3.0), None]);
        assert_eq!(p.latency_p99_ms, vec![Some(100.0), None]);
        assert_eq!(p.error_rate, vec![Some(0.2), None]);
        assert_eq!(p.bytes_in_per_s, vec![(500.0 + 1000.0) / 2.0, 0.0]);
        assert_eq!(p.bytes_out_per_s, vec![(5000.0 + 100.0) / 2.0, 0.0]);
        assert_eq!(p.log_lines_per_s, vec![0.5, 0.0]);
        assert_eq!(p.gc_pause_ms, vec![0.0, 2.0]);
        assert_eq!(p.loop_delay_ms, vec![None, Some(40.0)]);
        assert_eq!(p.retransmits_per_s, vec![0.0, 0.5]);
        // Another host only: nothing.
        let q = SeriesQuery::new(10 * S, 14 * S, 2 * S, vec!["h2".into()]).unwrap();
        assert!(store.series(&q).unwrap().procs.is_empty());
    }
}
