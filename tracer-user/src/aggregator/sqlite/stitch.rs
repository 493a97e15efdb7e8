//! Cross-host stitching in the SQLite store (docs/aggregator.md,
//! "Stitching"): inside each ingest transaction, index the new HTTP
//! exchanges, re-match the host pairs they belong to ([`crate::aggregator::stitch`]),
//! and re-estimate clock offsets, re-timing stored events when one moves;
//! at query time, walk a trace's request tree ([`trace_members`]).
//!
//! Everything is recomputed from stored rows, so the order in which batches
//! arrive does not matter: a link found late moves what hangs below it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{RETIME_MIN_NS, now_ns};
use crate::aggregator::{
    stitch::{self, Candidate, Edge, MAX_SKEW_NS, Side, TOLERANCE_NS, own_trace},
    store::Result,
};
use crate::event::{HttpExchange, HttpSide};

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
) -> Result<NewExchange> {
    let side = match h.side {
        HttpSide::Client => "client",
        HttpSide::Server => "server",
    };
    let end = raw_ts.saturating_add(i64::try_from(h.duration_ns).unwrap_or(i64::MAX));
    let key = stitch::conn_key(h);
    conn.prepare_cached(
        "INSERT OR REPLACE INTO http_index
         (id, host, side, conn, start_ns, end_ns, req_id, parent_req_id, own_trace)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        id,
        host,
        side,
        key,
        raw_ts,
        end,
        h.req_id,
        h.parent_req_id,
        own_trace(h)
    ])?;
    Ok(NewExchange {
        host: host.to_owned(),
        side: side.to_owned(),
        conn: key,
        start: raw_ts,
    })
}

/// How far (ns, on the client's clock once the pair's clock difference is
/// known) a candidate's start may be from a new exchange's. Far more than
/// a request's network delay; it keeps the work per batch proportional to
/// the batch and the traffic around it, not to the history.
const NEAR_NS: i64 = 250_000_000;
/// Matched pairs from which on a host pair's clock difference is trusted
/// enough to only re-match around new exchanges.
const CONFIDENT_PAIRS: i64 = 32;
/// Matched pairs (the latest) a host pair's clock difference is estimated
/// from.
const THETA_SAMPLE: i64 = 256;

/// (client host, server host).
type HostPair = (String, String);
/// Connection key -> the new exchanges on it: (is the client side, raw start).
type NewByConn = BTreeMap<String, Vec<(bool, i64)>>;

/// A new exchange as indexed ([`index_event`]'s answer, handed to
/// [`after_ingest`] so that it need not read the row back).
pub struct NewExchange {
    host: String,
    side: String,
    conn: String,
    start: i64,
}

/// Links, offsets and traces after `new_http` (ids of indexed exchanges)
/// were stored. Returns the hosts whose events were re-timed, with their
/// new offset.
///
/// While a host pair has fewer than [`CONFIDENT_PAIRS`] links, all of its
/// exchanges are re-matched. From then on only the neighbourhood of the
/// new exchanges is: for each connection they are on, the candidates whose
/// start lies within [`NEAR_NS`] of theirs (shifted by the pair's clock
/// difference), and the links those candidates already have; the clock
/// difference follows the latest [`THETA_SAMPLE`] links. So the work per
/// batch stays proportional to the batch, not to the stored history.
pub fn after_ingest(conn: &Connection, new_http: &[NewExchange]) -> Result<HashMap<String, i64>> {
    if new_http.is_empty() {
        return Ok(HashMap::new());
    }
    // The new exchanges by host pair and connection.
    let mut groups: BTreeMap<HostPair, NewByConn> = BTreeMap::new();
    for n in new_http {
        // The other end's host, from the latest exchanges on this
        // connection key (a port reused by another host shows up there).
        // Latest by start time, which the (conn, start_ns) index gives in
        // order: by id, SQLite sorted in a temporary B-tree every time
        // (~8% of ingest's CPU); clocks skewed by seconds do not change
        // which hosts a reused port went to. The side is a literal: with a
        // bound `side != ?` SQLite re-planned the statement on every run.
        let other_side = if n.side == "client" {
            "SELECT host FROM http_index WHERE conn = ? AND side = 'server'
             ORDER BY start_ns DESC LIMIT 8"
        } else {
            "SELECT host FROM http_index WHERE conn = ? AND side = 'client'
             ORDER BY start_ns DESC LIMIT 8"
        };
        let others: BTreeSet<String> = conn
            .prepare_cached(other_side)?
            .query_map([&n.conn], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for other in others {
            if other != n.host && stitch::is_loopback_key(&n.conn) {
                continue;
            }
            let client_side = n.side == "client";
            let pair = if client_side {
                (n.host.clone(), other)
            } else {
                (other, n.host.clone())
            };
            groups
                .entry(pair)
                .or_default()
                .entry(n.conn.clone())
                .or_default()
                .push((client_side, n.start));
        }
    }
    let mut edges_changed = false;
    for ((ch, sh), conns) in &groups {
        let same_host = ch == sh;
        let known: Option<(i64, i64)> = conn
            .prepare_cached(
                "SELECT theta_ns, pairs FROM host_pairs WHERE client_host = ? AND server_host = ?",
            )?
            .query_row(params![ch, sh], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        // Until enough pairs agree on the clock difference, the whole pair
        // is re-matched (early estimates can be off by a request's spacing
        // on a keep-alive connection); then only around the new exchanges.
        let theta_known = if same_host {
            Some(0)
        } else {
            known.filter(|k| k.1 >= CONFIDENT_PAIRS).map(|k| k.0)
        };
        let mut cands = Vec::new();
        match theta_known {
            Some(_) => {
                for (key, news) in conns {
                    nearby_candidates(conn, ch, sh, key, news, theta_known, &mut cands)?;
                }
            }
            None => cands = candidates(conn, ch, sh)?,
        }
        // Servers linked to a client outside this neighbourhood stay so.
        let clients: HashSet<i64> = cands.iter().map(|c| c.client.id).collect();
        let mut linked_elsewhere = HashSet::new();
        for c in &cands {
            let holder: Option<i64> = conn
                .prepare_cached("SELECT client FROM links WHERE server = ?")?
                .query_row([c.server.id], |r| r.get(0))
                .optional()?;
            if holder.is_some_and(|h| !clients.contains(&h)) {
                linked_elsewhere.insert(c.server.id);
            }
        }
        cands.retain(|c| !linked_elsewhere.contains(&c.server.id));
        let m = match theta_known {
            Some(theta) => stitch::match_pairs_at(&cands, theta),
            None => stitch::match_pairs(&cands, same_host),
        };
        let mut old: HashSet<(i64, i64)> = HashSet::new();
        if theta_known.is_some() {
            for c in &clients {
                let server: Option<i64> = conn
                    .prepare_cached("SELECT server FROM links WHERE client = ?")?
                    .query_row([c], |r| r.get(0))
                    .optional()?;
                old.extend(server.map(|s| (*c, s)));
            }
        } else {
            old = conn
                .prepare_cached(
                    "SELECT client, server FROM links WHERE client_host = ? AND server_host = ?",
                )?
                .query_map(params![ch, sh], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
        }
        let new: HashSet<(i64, i64)> = m.links.iter().copied().collect();
        let (mut added, mut removed) = (0i64, 0i64);
        for &(c, _) in old.difference(&new) {
            conn.prepare_cached("DELETE FROM links WHERE client = ?")?
                .execute([c])?;
            removed += 1;
        }
        for &(c, s) in new.difference(&old) {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO links (client, server, client_host, server_host)
                 VALUES (?, ?, ?, ?)",
            )?
            .execute(params![c, s, ch, sh])?;
            added += 1;
        }
        if !same_host && (added > 0 || removed > 0) {
            let pairs = known.map_or(0, |k| k.1) + added - removed;
            let theta = match theta_known {
                Some(_) => recent_theta(conn, ch, sh)?.unwrap_or(m.theta),
                None => m.theta,
            };
            let before = known.map(|k| k.0);
            conn.prepare_cached(
                "INSERT OR REPLACE INTO host_pairs (client_host, server_host, theta_ns, pairs)
                 VALUES (?, ?, ?, ?)",
            )?
            .execute(params![ch, sh, theta, pairs])?;
            edges_changed |= before != Some(theta) || known.map(|k| k.1 > 0) != Some(pairs > 0);
        }
    }
    let retimed = if edges_changed {
        update_offsets(conn)?
    } else {
        HashMap::new()
    };
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

/// Appends the candidate pairs on connection `key` between client host
/// `ch` and server host `sh` around the new exchanges `news`
/// ((is client side, raw start)).
fn nearby_candidates(
    conn: &Connection,
    ch: &str,
    sh: &str,
    key: &str,
    news: &[(bool, i64)],
    theta: Option<i64>,
    out: &mut Vec<Candidate>,
) -> Result<()> {
    if ch != sh && stitch::is_loopback_key(key) {
        return Ok(());
    }
    let (theta, near) = match theta {
        Some(t) => (t, NEAR_NS),
        None => (0, MAX_SKEW_NS),
    };
    // New exchanges' starts on the client's clock.
    let on_client = news
        .iter()
        .map(|&(client, start)| if client { start } else { start - theta });
    let (lo, hi) = on_client.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let mut st = conn.prepare_cached(
        "SELECT c.id, c.start_ns, c.end_ns, s.id, s.start_ns, s.end_ns
         FROM http_index c JOIN http_index s
           ON s.conn = c.conn AND s.side = 'server' AND s.host = ?3
          AND s.start_ns BETWEEN c.start_ns + ?5 - ?6 AND c.start_ns + ?5 + ?6
         WHERE c.conn = ?1 AND c.side = 'client' AND c.host = ?2
           AND c.start_ns BETWEEN ?7 - ?6 AND ?8 + ?6
           AND s.end_ns - s.start_ns <= c.end_ns - c.start_ns + ?4",
    )?;
    let rows = st.query_map(
        params![key, ch, sh, 2 * TOLERANCE_NS, theta, near, lo, hi],
        |r| {
            Ok(Candidate {
                conn: 0,
                client: Side {
                    id: r.get(0)?,
                    start: r.get(1)?,
                    end: r.get(2)?,
                },
                server: Side {
                    id: r.get(3)?,
                    start: r.get(4)?,
                    end: r.get(5)?,
                },
            })
        },
    )?;
    // Candidates of one connection share its group number.
    let group = out.last().map_or(0, |c| c.conn + 1);
    for row in rows {
        let mut c = row?;
        c.conn = group;
        out.push(c);
    }
    Ok(())
}

/// The clock difference of a host pair from its latest matched pairs
/// ([`THETA_SAMPLE`]): a sliding sample, so it follows drift, and large
/// enough that it hardly moves from one batch to the next (each move
/// re-times events).
fn recent_theta(conn: &Connection, ch: &str, sh: &str) -> Result<Option<i64>> {
    let mut st = conn.prepare_cached(
        "SELECT c.start_ns, c.end_ns, s.start_ns, s.end_ns
         FROM links l
         JOIN http_index c ON c.id = l.client
         JOIN http_index s ON s.id = l.server
         WHERE l.client_host = ? AND l.server_host = ?
         ORDER BY l.client DESC LIMIT ?",
    )?;
    let pairs: Vec<Candidate> = st
        .query_map(params![ch, sh, THETA_SAMPLE], |r| {
            Ok(Candidate {
                conn: 0,
                client: Side {
                    id: 0,
                    start: r.get(0)?,
                    end: r.get(1)?,
                },
                server: Side {
                    id: 0,
                    start: r.get(2)?,
                    end: r.get(3)?,
                },
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let refs: Vec<&Candidate> = pairs.iter().collect();
    Ok(stitch::robust_theta(&refs))
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
            // A refinement: only recent events move (older ones keep a
            // correction within RETIME_ALL_NS of it).
            Some(c) if (c - o.offset_ns).abs() <= RETIME_ALL_NS => {
                let since = now_ns().saturating_sub(RETIME_RECENT_NS);
                retime_since(conn, &host, o.offset_ns, since)?;
                retimed.insert(host.clone(), o.offset_ns);
                o.offset_ns
            }
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
        .execute(params![host, offset, now_ns(), o.pairs, o.reference])?;
    }
    Ok(retimed)
}

/// An offset that moves by more than this re-times all of the host's
/// events (a first estimate, a clock step); smaller moves only the last
/// [`RETIME_RECENT_NS`] (by corrected time), so that a steady stream of
/// refinements costs little.
const RETIME_ALL_NS: i64 = 5_000_000;
const RETIME_RECENT_NS: i64 = 600_000_000_000;

/// Sets the stored events of `host` with a corrected time from `since` on
/// to `raw + offset` (a log block with a line from `since` on moves whole).
fn retime_since(conn: &Connection, host: &str, offset: i64, since: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE events SET ts_ns = max(0, raw_ts_ns + ?1), offset_ns = ?1
         WHERE host = ?2 AND ts_ns >= ?3 AND offset_ns != ?1",
    )?
    .execute(params![offset, host, since])?;
    super::logs::retime_blocks_since(conn, host, offset, since)
}

/// Sets every stored event of `host` to `raw + offset`.
pub fn retime(conn: &Connection, host: &str, offset: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE events SET ts_ns = max(0, raw_ts_ns + ?1), offset_ns = ?1
         WHERE host = ?2 AND offset_ns != ?1",
    )?
    .execute(params![offset, host])?;
    super::logs::retime_blocks(conn, host, offset)
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

/// The exchanges of one trace, found when it is asked for.
#[derive(Debug, Default)]
pub struct TraceMembers {
    /// Their rows: `events.id` of the http events, and of the logpoint
    /// hits fired while serving them (`rows::add_logpoints`).
    pub ids: Vec<i64>,
    /// Their `(host, req_id)`: the log lines written while serving them.
    pub reqs: HashSet<(String, String)>,
}

/// The whole trace `t` names: `t` is a trace id (a root exchange's own
/// trace: its traceparent's trace id, x-request-id or req_id) or the
/// req_id of any exchange in it. The roots with that own trace are found
/// by index, and everything below them is walked from the links and the
/// parent requests, as they are now: a link found late moves a subtree
/// without rewriting anything at ingest.
pub fn trace_members(conn: &Connection, t: &str) -> Result<TraceMembers> {
    let mut traces = BTreeSet::from([t.to_owned()]);
    let by_req: Vec<i64> = conn
        .prepare_cached("SELECT id FROM http_index WHERE req_id = ?")?
        .query_map([t], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in by_req {
        traces.extend(resolve(conn, id)?);
    }
    let mut stack = Vec::new();
    for trace in &traces {
        // An own trace is a req_id (then http_req_id finds it) or not
        // (then the partial index http_own).
        let ids: Vec<i64> = conn
            .prepare_cached(
                "SELECT id FROM http_index WHERE own_trace = ?1 AND own_trace != req_id
                 UNION ALL
                 SELECT id FROM http_index WHERE req_id = ?1 AND own_trace = req_id",
            )?
            .query_map([trace], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for id in ids {
            if let Some(n) = node(conn, id)?
                && up(conn, id, &n)?.is_none()
            {
                stack.push((id, n));
            }
        }
    }
    let mut out = TraceMembers::default();
    let mut seen = HashSet::new();
    while let Some((id, n)) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for child in down(conn, id, &n)? {
            if let Some(c) = node(conn, child)? {
                stack.push((child, c));
            }
        }
        out.ids.push(id);
        out.reqs.insert((n.host, n.req_id));
    }
    out.ids.sort_unstable();
    Ok(out)
}
