//! Cross-host stitching in the SQLite store, run inside each ingest
//! transaction (docs/aggregator.md, "Stitching"): index the new HTTP
//! exchanges, re-match the host pairs they belong to ([`super::stitch`]),
//! re-estimate clock offsets and re-time stored events when one moves, and
//! push trace ids down the request trees whose links changed.
//!
//! Everything is recomputed from stored rows, so the order in which batches
//! arrive does not matter: a link found late re-tags what hangs below it.

use std::collections::{BTreeSet, HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{
    sqlite::RETIME_MIN_NS,
    stitch::{self, Candidate, Edge, MAX_SKEW_NS, Side, TOLERANCE_NS},
    store::Result,
};
use crate::event::{HttpExchange, HttpSide};

/// The trace an exchange starts when nothing upstream is known: the W3C
/// trace id of its traceparent, else its x-request-id, else its req_id.
pub fn own_trace(h: &HttpExchange) -> String {
    h.traceparent
        .as_deref()
        .and_then(|tp| tp.split('-').nth(1))
        .filter(|t| t.len() == 32)
        .map(str::to_ascii_lowercase)
        .or_else(|| h.request_id.clone())
        .unwrap_or_else(|| h.req_id.clone())
}

/// Records `host` as seen from event `id` on, unless it was seen before
/// (once per batch: a batch is one host's).
pub fn note_host(conn: &Connection, host: &str, id: i64) -> Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO hosts (host, first_id) VALUES (?, ?)")?
        .execute(params![host, id])?;
    Ok(())
}

/// Indexes an http event for matching.
pub fn index_event(
    conn: &Connection,
    id: i64,
    host: &str,
    raw_ts: i64,
    h: &HttpExchange,
) -> Result<()> {
    let side = match h.side {
        HttpSide::Client => "client",
        HttpSide::Server => "server",
    };
    let end = raw_ts.saturating_add(i64::try_from(h.duration_ns).unwrap_or(i64::MAX));
    conn.prepare_cached(
        "INSERT OR REPLACE INTO http_index
         (id, host, side, conn, start_ns, end_ns, req_id, parent_req_id, own_trace)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        id,
        host,
        side,
        stitch::conn_key(h),
        raw_ts,
        end,
        h.req_id,
        h.parent_req_id,
        own_trace(h)
    ])?;
    Ok(())
}

/// Links, offsets and traces after `new_http` (ids of indexed exchanges)
/// were stored. Returns the hosts whose events were re-timed, with their
/// new offset.
pub fn after_ingest(conn: &Connection, new_http: &[i64]) -> Result<HashMap<String, i64>> {
    if new_http.is_empty() {
        return Ok(HashMap::new());
    }
    // Host pairs (client host, server host) with a candidate for a new
    // exchange.
    let mut pairs: BTreeSet<(String, String)> = BTreeSet::new();
    {
        let mut st = conn.prepare_cached(
            "SELECT n.host, n.side, o.host, n.conn FROM http_index n
             JOIN http_index o ON o.conn = n.conn AND o.side != n.side
             WHERE n.id = ?",
        )?;
        for id in new_http {
            let rows = st.query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            for row in rows {
                let (nh, side, oh, key) = row?;
                if nh != oh && stitch::is_loopback_key(&key) {
                    continue;
                }
                pairs.insert(if side == "client" { (nh, oh) } else { (oh, nh) });
            }
        }
    }
    let mut touched: Vec<i64> = new_http.to_vec();
    let mut edges_changed = false;
    for (ch, sh) in &pairs {
        let cands = candidates(conn, ch, sh)?;
        let m = stitch::match_pairs(&cands, ch == sh);
        let old: HashSet<(i64, i64)> = conn
            .prepare_cached(
                "SELECT client, server FROM links WHERE client_host = ? AND server_host = ?",
            )?
            .query_map(params![ch, sh], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let new: HashSet<(i64, i64)> = m.links.iter().copied().collect();
        for &(c, s) in old.difference(&new) {
            conn.prepare_cached("DELETE FROM links WHERE client = ?")?
                .execute([c])?;
            touched.extend([c, s]);
        }
        for &(c, s) in new.difference(&old) {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO links (client, server, client_host, server_host)
                 VALUES (?, ?, ?, ?)",
            )?
            .execute(params![c, s, ch, sh])?;
            touched.extend([c, s]);
        }
        if ch != sh {
            let n = i64::try_from(m.links.len()).unwrap_or(i64::MAX);
            let before: Option<(i64, i64)> = conn
                .prepare_cached("SELECT theta_ns, pairs FROM host_pairs WHERE client_host = ? AND server_host = ?")?
                .query_row(params![ch, sh], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if before != Some((m.theta, n)) {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO host_pairs (client_host, server_host, theta_ns, pairs)
                     VALUES (?, ?, ?, ?)",
                )?
                .execute(params![ch, sh, m.theta, n])?;
                edges_changed = true;
            }
        }
    }
    let retimed = if edges_changed {
        update_offsets(conn)?
    } else {
        HashMap::new()
    };
    retrace(conn, &touched)?;
    Ok(retimed)
}

/// Every candidate pair between a client host and a server host.
fn candidates(conn: &Connection, ch: &str, sh: &str) -> Result<Vec<Candidate>> {
    let mut st = conn.prepare_cached(
        "SELECT c.conn, c.id, c.start_ns, c.end_ns, s.id, s.start_ns, s.end_ns
         FROM http_index c JOIN http_index s ON s.conn = c.conn AND s.side = 'server'
         WHERE c.host = ? AND c.side = 'client' AND s.host = ?
           AND s.start_ns - c.start_ns BETWEEN ? AND ?
           AND s.end_ns - s.start_ns <= c.end_ns - c.start_ns + ?",
    )?;
    let mut keys: HashMap<String, usize> = HashMap::new();
    let rows = st.query_map(
        params![ch, sh, -MAX_SKEW_NS, MAX_SKEW_NS, 2 * TOLERANCE_NS],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                Side {
                    id: r.get(1)?,
                    start: r.get(2)?,
                    end: r.get(3)?,
                },
                Side {
                    id: r.get(4)?,
                    start: r.get(5)?,
                    end: r.get(6)?,
                },
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (key, client, server) = row?;
        if ch != sh && stitch::is_loopback_key(&key) {
            continue;
        }
        let n = keys.len();
        let conn = *keys.entry(key).or_insert(n);
        out.push(Candidate {
            conn,
            client,
            server,
        });
    }
    Ok(out)
}

/// Recomputes every host's offset from the host pairs; re-times the
/// stored events of hosts whose offset moved.
fn update_offsets(conn: &Connection) -> Result<HashMap<String, i64>> {
    let hosts: Vec<String> = conn
        .prepare_cached("SELECT host FROM hosts ORDER BY first_id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let edges: Vec<Edge> = conn
        .prepare_cached(
            "SELECT client_host, server_host, theta_ns, pairs FROM host_pairs WHERE pairs > 0",
        )?
        .query_map([], |r| {
            Ok(Edge {
                client_host: r.get(0)?,
                server_host: r.get(1)?,
                theta: r.get(2)?,
                pairs: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut retimed = HashMap::new();
    for (host, o) in stitch::offsets(&hosts, &edges) {
        let current: Option<i64> = conn
            .prepare_cached("SELECT offset_ns FROM host_offsets WHERE host = ?")?
            .query_row([&host], |r| r.get(0))
            .optional()?;
        let offset = match current {
            Some(c) if (c - o.offset_ns).abs() <= RETIME_MIN_NS => c,
            _ => {
                retime(conn, &host, o.offset_ns)?;
                retimed.insert(host.clone(), o.offset_ns);
                o.offset_ns
            }
        };
        conn.prepare_cached(
            "INSERT INTO host_offsets (host, offset_ns, updated_ns, pairs, reference)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (host) DO UPDATE SET offset_ns = excluded.offset_ns,
                 updated_ns = excluded.updated_ns, pairs = excluded.pairs,
                 reference = excluded.reference",
        )?
        .execute(params![
            host,
            offset,
            super::sqlite::now_ns(),
            o.pairs,
            o.reference
        ])?;
    }
    Ok(retimed)
}

/// Sets every stored event of `host` to `raw + offset`.
pub fn retime(conn: &Connection, host: &str, offset: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE events SET ts_ns = max(0, raw_ts_ns + ?1), offset_ns = ?1
         WHERE host = ?2 AND offset_ns != ?1",
    )?
    .execute(params![offset, host])?;
    super::sqlite_grep::retime_blocks(conn, host, offset)
}

struct Node {
    host: String,
    side: String,
    req_id: String,
    parent: Option<String>,
    own: String,
}

fn node(conn: &Connection, id: i64) -> Result<Option<Node>> {
    Ok(conn
        .prepare_cached(
            "SELECT host, side, req_id, parent_req_id, own_trace FROM http_index WHERE id = ?",
        )?
        .query_row([id], |r| {
            Ok(Node {
                host: r.get(0)?,
                side: r.get(1)?,
                req_id: r.get(2)?,
                parent: r.get(3)?,
                own: r.get(4)?,
            })
        })
        .optional()?)
}

/// The exchange one level up: a server's matched client on another host,
/// or a client's parent server request in its own process.
fn up(conn: &Connection, id: i64, n: &Node) -> Result<Option<i64>> {
    if n.side == "server" {
        Ok(conn
            .prepare_cached("SELECT client FROM links WHERE server = ?")?
            .query_row([id], |r| r.get(0))
            .optional()?)
    } else if let Some(p) = &n.parent {
        Ok(conn
            .prepare_cached(
                "SELECT id FROM http_index WHERE host = ? AND req_id = ? AND side = 'server'
                 ORDER BY id LIMIT 1",
            )?
            .query_row(params![n.host, p], |r| r.get(0))
            .optional()?)
    } else {
        Ok(None)
    }
}

/// The exchanges one level down.
fn down(conn: &Connection, id: i64, n: &Node) -> Result<Vec<i64>> {
    let rows = if n.side == "server" {
        conn.prepare_cached(
            "SELECT id FROM http_index WHERE host = ? AND parent_req_id = ? AND side = 'client'",
        )?
        .query_map(params![n.host, n.req_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?
    } else {
        conn.prepare_cached("SELECT server FROM links WHERE client = ?")?
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    Ok(rows)
}

/// The trace of the root above `id`.
fn resolve(conn: &Connection, id: i64) -> Result<Option<String>> {
    let mut seen = HashSet::new();
    let mut cur = id;
    let mut last = None;
    while seen.insert(cur) {
        let Some(n) = node(conn, cur)? else { break };
        match up(conn, cur, &n)? {
            Some(next) => {
                last = Some(n.own);
                cur = next;
            }
            None => return Ok(Some(n.own)),
        }
    }
    // A cycle (or a dangling link): the last exchange reached decides.
    Ok(last)
}

/// Gives each touched exchange the trace of its root, and pushes it down to
/// everything below (exchanges and the log lines with their req_id).
/// Below an exchange whose trace did not change, nothing changes either.
fn retrace(conn: &Connection, touched: &[i64]) -> Result<()> {
    for &start in touched {
        let Some(trace) = resolve(conn, start)? else {
            continue;
        };
        let mut stack = vec![(start, true)];
        let mut seen = HashSet::new();
        while let Some((id, force)) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            let current: Option<String> = conn
                .prepare_cached("SELECT trace_id FROM events WHERE id = ?")?
                .query_row([id], |r| r.get(0))
                .optional()?
                .flatten();
            // An exchange already carrying the trace has its subtree right
            // too, unless something in it changed (then that is touched).
            if !force && current.as_deref() == Some(trace.as_str()) {
                continue;
            }
            let Some(n) = node(conn, id)? else { continue };
            conn.prepare_cached("UPDATE events SET trace_id = ? WHERE id = ?")?
                .execute(params![trace, id])?;
            conn.prepare_cached(
                "UPDATE events SET trace_id = ?1
                 WHERE host = ?2 AND req_id = ?3 AND kind = 'log' AND trace_id IS NOT ?1",
            )?
            .execute(params![trace, n.host, n.req_id])?;
            for child in down(conn, id, &n)? {
                stack.push((child, false));
            }
        }
    }
    Ok(())
}
