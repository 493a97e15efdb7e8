//! Stitching on ClickHouse (docs/aggregator.md, "Stitching"; module docs
//! of `super` for what is stored). The matching itself is the pure
//! `crate::aggregator::stitch`, shared with SQLite:
//! - after a group with http events ([`after_ingest`]), each host pair the
//!   new exchanges are on (found from a sample of their connections,
//!   [`lookup_keys`]) is re-estimated from its client host's latest
//!   exchanges (at most [`SAMPLE`]) and the server exchanges on their
//!   connections: once the pair has an estimate, only those of the last
//!   [`RECENT_NS`] and near its clock difference ([`Window`]), and a
//!   settled pair at most every [`RE_ESTIMATE_EVERY`] per aggregator; a
//!   better-founded or moved clock difference is recorded in `host_pairs`
//!   ([`replaces`]) and the offsets recomputed from all pairs;
//! - when a trace is asked for ([`trace`]), the walk over exchanges
//!   (parents in a process, links across hosts) matches each connection
//!   it crosses at its host pair's clock difference.
//!
//! Every step reads only what is in ClickHouse, so any aggregator computes
//! the same thing, whichever ingested which half of a request.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use clickhouse::Row;
use serde::Deserialize;

use super::{
    ClickhouseStore,
    schema::{BY_CLIENT, BY_REQUEST},
    sql::{RawBounds, TRACE_SLACK_NS, TraceSet, in_list, lit},
};
use crate::{
    aggregator::{
        stitch::{self, Candidate, Edge, MAX_SKEW_NS, Side, TOLERANCE_NS, conn_ends, conn_key},
        store::{Batch, Result, Store as _},
    },
    event::{EventData, HttpExchange, HttpSide},
};

/// Client exchanges per host pair a clock difference is estimated from
/// (the latest).
const SAMPLE: usize = 1024;
/// How far back a known pair's estimate looks for those exchanges
/// (before the client host's latest): first the last [`RECENT_SHORT_NS`],
/// and when they hold fewer than a quarter of [`SAMPLE`], the last
/// [`RECENT_NS`].
const RECENT_SHORT_NS: i64 = 5_000_000_000;
const RECENT_NS: i64 = 60_000_000_000;
/// How far from a known clock difference a known pair's server exchanges
/// are looked for (estimates move by far less between two groups).
const SLACK_NS: i64 = 1_000_000_000;
/// Matched exchanges an estimate needs to record a moved clock over a
/// known estimate on more.
const MOVED_LINKS: i64 = 32;
/// A new estimate is recorded (and applied to every query) when it moves
/// by more than this.
const MOVE_MIN_NS: i64 = 50_000;
/// A host pair whose estimate rests on [`SETTLED_LINKS`] or more matched
/// exchanges is re-estimated by one aggregator at most this often: clock
/// differences move slowly, and each estimate reads the client host's
/// latest exchanges (after every group, several a second under load). A
/// pair seen for the first time, or on few exchanges yet, is estimated
/// after every group it is in.
const RE_ESTIMATE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Matched exchanges after which a pair's estimate is taken as settled.
const SETTLED_LINKS: i64 = 256;
/// Connection keys per `IN (...)` list (statements stay well below
/// ClickHouse's 256 KiB query size limit).
const KEYS_PER_QUERY: usize = 512;
/// Connections per (host, side, peer address) of a group whose other
/// ends are looked up after it (see [`lookup_keys`]): one shows the pair.
const KEYS_PER_PEER: usize = 1;
/// Most connections looked up after one group: each reads a granule of
/// every part of `http_index`, so this bounds what a group costs the
/// server however large the store grows.
const KEYS_PER_GROUP: usize = 32;

#[derive(Row, Deserialize, Clone, Debug)]
struct Exchange {
    id: i64,
    host: String,
    side: String,
    conn: String,
    start_ns: i64,
    end_ns: i64,
    req_id: String,
    parent_req_id: String,
    own_trace: String,
}

const EXCHANGE_COLS: &str =
    "id, host, side, conn, start_ns, end_ns, req_id, parent_req_id, own_trace";

#[derive(Clone, Row, Deserialize)]
pub(super) struct PairRow {
    pub client_host: String,
    pub server_host: String,
    pub theta_ns: i64,
    pub pairs: i64,
}

impl ClickhouseStore {
    /// The committed exchanges of `http_index` that meet `cond`.
    fn exchanges(&self, cond: &str) -> Result<Vec<Exchange>> {
        self.committed_exchanges(&format!("{}.http_index WHERE {cond}", self.db))
    }

    /// The committed exchanges whose `column` (`req_id`, `own_trace` or
    /// `parent_req_id`) is `key`, of one (host, side) if given, each once:
    /// read from `http_keys`, sorted by key, where an exchange is under
    /// each of its request ids (filled twice if two aggregators upgraded
    /// a store at once, `upgrade.rs`).
    fn exchanges_by(
        &self,
        column: &str,
        key: &str,
        of: Option<(&str, &str)>,
    ) -> Result<Vec<Exchange>> {
        let k = lit(key);
        let of = of.map_or(String::new(), |(host, side)| {
            format!(" AND host = {} AND side = {}", lit(host), lit(side))
        });
        let mut rows = self.committed_exchanges(&format!(
            "{}.http_keys WHERE kind = '{BY_REQUEST}' AND key = {k} AND {column} = {k}{of}",
            self.db
        ))?;
        let mut seen = HashSet::new();
        rows.retain(|e| seen.insert(e.id));
        Ok(rows)
    }

    /// The committed exchanges of `from_where` (a table and its
    /// condition): those that meet it, read again with the commit check
    /// of the batches within their start times (an exchange's start is
    /// its event's raw time), which reads those batches only
    /// (`sql::committed`).
    fn committed_exchanges(&self, from_where: &str) -> Result<Vec<Exchange>> {
        let select = format!("SELECT {EXCHANGE_COLS} FROM {from_where}");
        let any: Vec<Exchange> = self.fetch(&select)?;
        let lo = any.iter().map(|e| e.start_ns).min();
        let hi = any.iter().map(|e| e.start_ns).max();
        let (Some(lo), Some(hi)) = (lo, hi) else {
            return Ok(Vec::new());
        };
        self.fetch(&format!(
            "{select} AND start_ns BETWEEN {lo} AND {hi} AND {}",
            self.committed(RawBounds::between(lo, hi))
        ))
    }

    /// Every host pair's latest clock difference.
    pub(super) fn pairs(&self) -> Result<Vec<PairRow>> {
        self.fetch(&format!(
            "SELECT client_host, server_host, argMax(theta_ns, updated_ns) AS theta, \
             argMax(pairs, updated_ns) AS n FROM {}.host_pairs \
             GROUP BY client_host, server_host ORDER BY client_host, server_host",
            self.db
        ))
    }
}

/// Candidate pairs from client and server exchanges of one host pair.
fn candidates(clients: &[&Exchange], servers: &[&Exchange], cross_host: bool) -> Vec<Candidate> {
    let mut by_conn: HashMap<&str, Vec<&Exchange>> = HashMap::new();
    for s in servers {
        by_conn.entry(s.conn.as_str()).or_default().push(s);
    }
    let mut groups: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for c in clients {
        if cross_host && stitch::is_loopback_key(&c.conn) {
            continue;
        }
        let Some(ss) = by_conn.get(c.conn.as_str()) else {
            continue;
        };
        let n = groups.len();
        let group = *groups.entry(c.conn.as_str()).or_insert(n);
        for s in ss {
            let ok = (s.start_ns - c.start_ns).abs() <= MAX_SKEW_NS
                && s.end_ns - s.start_ns <= c.end_ns - c.start_ns + 2 * TOLERANCE_NS;
            if ok {
                out.push(Candidate {
                    conn: group,
                    client: Side {
                        id: c.id,
                        start: c.start_ns,
                        end: c.end_ns,
                    },
                    server: Side {
                        id: s.id,
                        start: s.start_ns,
                        end: s.end_ns,
                    },
                });
            }
        }
    }
    out
}

/// The connections of `batches`' exchanges whose other ends
/// [`after_ingest`] looks up: a sample of at most [`KEYS_PER_PEER`] per
/// host, side and peer address (the ones whose connections hash lowest, so a
/// different sample each time a host's connections change),
/// [`KEYS_PER_GROUP`] in all, every (host, side, peer) of the group taking
/// its turn before any takes a second (in an order that changes from group
/// to group, when there are more than fit).
///
/// Why a sample: `http_index` is sorted by connection, so each key looked
/// up reads a granule of every part it may be in. All of a group's
/// connections (hundreds to thousands) read the whole table, once per
/// group: the ingest rate then fell as the store grew (0.6x at 9M events,
/// docs/benchmarks.md). A host pair with traffic has many connections, and
/// any one of them shows the pair; the pair's clock difference is then
/// estimated from its latest exchanges, not from the sample. Why per peer
/// address: a pair with a few exchanges among thousands of a host's others
/// is still looked up in every group it has an exchange in (until more
/// than [`KEYS_PER_GROUP`] (host, side, peer) meet in one group).
#[cfg(test)]
pub fn lookup_keys(batches: &[&Batch]) -> Vec<String> {
    let mut keys: Vec<String> = lookup_peers(batches).into_iter().map(|(_, k)| k).collect();
    keys.sort_unstable();
    keys
}

/// A group's (host, client side?, peer address): what a connection's
/// other end is looked up for.
pub type Peer = (String, bool, std::net::IpAddr);

/// Per (host, side, peer), the host pairs an aggregator found behind it,
/// and when.
pub type Resolved = HashMap<Peer, (std::time::Instant, Vec<(String, String)>)>;

/// [`lookup_keys`] with the (host, side, peer) each key was chosen for.
/// Keys are ranked by a hash of their connection's ends and written out
/// only for the connections kept: a group has tens of thousands of
/// exchanges, and formatting every one's key took ~2% of the aggregator's
/// CPU under load.
fn lookup_peers(batches: &[&Batch]) -> Vec<(Peer, String)> {
    use std::hash::{BuildHasher as _, BuildHasherDefault};
    // Fixed keys: the same connection ranks the same in every group.
    let rank_of = |h: &HttpExchange| {
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(conn_ends(h))
    };
    let mut by_peer: HashMap<(&str, bool, std::net::IpAddr), BTreeMap<u64, &HttpExchange>> =
        HashMap::new();
    for b in batches {
        for e in &b.events {
            if let EventData::Http(h) = &e.data {
                // The remote end, from this host's side of the connection.
                let peer = h.tuple.daddr.to_canonical();
                let kept = by_peer
                    .entry((e.host.as_str(), h.side == HttpSide::Client, peer))
                    .or_default();
                kept.insert(rank_of(h), h);
                if kept.len() > KEYS_PER_PEER {
                    kept.pop_last();
                }
            }
        }
    }
    let mut lists: Vec<(u64, Peer, Vec<String>)> = by_peer
        .into_iter()
        .map(|((host, client, ip), m)| {
            let first = m.keys().next().copied().unwrap_or(0);
            (
                first,
                (host.to_string(), client, ip),
                m.into_values().map(conn_key).collect(),
            )
        })
        .collect();
    // By rank, then by peer: the same order whatever the map's.
    lists.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut out: Vec<(Peer, String)> = Vec::new();
    let mut taken = BTreeSet::new();
    for round in 0..KEYS_PER_PEER {
        for (_, peer, l) in &lists {
            if taken.len() < KEYS_PER_GROUP
                && let Some(k) = l.get(round)
                && taken.insert(k.clone())
            {
                out.push((peer.clone(), k.clone()));
            }
        }
    }
    out
}

/// The client's and the server's address in a connection key
/// (`stitch::conn_key`: `CLIENT:PORT>SERVER:PORT`).
fn key_addresses(key: &str) -> Option<(std::net::IpAddr, std::net::IpAddr)> {
    let ip = |end: &str| {
        let (ip, _) = end.rsplit_once(':')?;
        ip.trim_matches(['[', ']']).parse().ok()
    };
    let (client, server) = key.split_once('>')?;
    Some((ip(client)?, ip(server)?))
}

/// The raw start times of a group's exchanges.
struct GroupTimes<'a> {
    earliest: i64,
    latest: i64,
    /// The latest start of each host's client exchanges.
    clients: HashMap<&'a str, i64>,
    /// The latest start of each host's server exchanges.
    servers: HashMap<&'a str, i64>,
}

/// None when `batches` hold no exchanges.
fn group_times<'a>(batches: &[&'a Batch]) -> Option<GroupTimes<'a>> {
    let mut g: Option<GroupTimes> = None;
    for b in batches {
        for e in &b.events {
            if let EventData::Http(h) = &e.data {
                let t = i64::try_from(e.ts_ns).unwrap_or(i64::MAX);
                let g = g.get_or_insert_with(|| GroupTimes {
                    earliest: t,
                    latest: t,
                    clients: HashMap::new(),
                    servers: HashMap::new(),
                });
                g.earliest = g.earliest.min(t);
                g.latest = g.latest.max(t);
                let by_host = if h.side == HttpSide::Client {
                    &mut g.clients
                } else {
                    &mut g.servers
                };
                let latest = by_host.entry(e.host.as_str()).or_insert(t);
                *latest = (*latest).max(t);
            }
        }
    }
    g
}

/// Where a pair's estimate looks for exchanges.
#[derive(Clone, Copy)]
enum Window {
    /// Around a known clock difference `theta`: the client host's
    /// exchanges of the last [`RECENT_SHORT_NS`] (or [`RECENT_NS`]) before
    /// `anchor` (its clock),
    /// the server host's within [`SLACK_NS`] of them at `theta`.
    Known { anchor: i64, theta: i64 },
    /// As far as the skew allowed between hosts goes: the client host's
    /// exchanges since `since` (None: all of them), the server host's
    /// within [`MAX_SKEW_NS`] of them.
    Wide { since: Option<i64> },
}

/// `exchanges` without the copies of one exchange that a batch stored
/// twice leaves (two aggregators racing on a retried batch: the same
/// exchange under two ids), the first of each kept.
///
/// Why the reads after ingest skip the commit check that queries make
/// (`committed`): that check reads all of `batches` (every batch's first
/// commit), so each read would cost more as the store grows, and these
/// reads run after every group. What it keeps out does not change a
/// clock estimate: a copy shows the same clock difference again (and is
/// dropped here, so it does not count twice), and an exchange whose batch
/// is not committed yet (or never will be, its aggregator having died
/// between the inserts) happened all the same.
fn distinct(mut exchanges: Vec<Exchange>) -> Vec<Exchange> {
    let mut seen = HashSet::new();
    exchanges.retain(|e| {
        seen.insert((
            e.host.clone(),
            e.side.clone(),
            e.conn.clone(),
            e.start_ns,
            e.end_ns,
        ))
    });
    exchanges
}

/// A pair's clock difference from its client host's latest exchanges in
/// `window` (at most [`SAMPLE`]) and the server host's on their
/// connections; None when no exchange matched.
fn estimate(
    store: &ClickhouseStore,
    ch: &str,
    sh: &str,
    window: Window,
) -> Result<Option<stitch::Matched>> {
    let latest_clients = |since: Option<i64>| {
        store
            .fetch::<Exchange>(&format!(
                "SELECT {EXCHANGE_COLS} FROM {db}.http_keys WHERE kind = '{BY_CLIENT}' \
                 AND key = {h}{bound} \
                 ORDER BY start_ns DESC LIMIT {SAMPLE}",
                db = store.db,
                h = lit(ch),
                bound = since.map_or(String::new(), |t| format!(" AND start_ns >= {t}")),
            ))
            .map(distinct)
    };
    let clients = match window {
        // The last RECENT_SHORT_NS hold enough of a busy host's exchanges
        // and are a few recent parts; a quieter host's, the last
        // RECENT_NS.
        Window::Known { anchor, .. } => {
            let short = latest_clients(Some(anchor.saturating_sub(RECENT_SHORT_NS)))?;
            if short.len() >= SAMPLE / 4 {
                short
            } else {
                latest_clients(Some(anchor.saturating_sub(RECENT_NS)))?
            }
        }
        Window::Wide { since } => latest_clients(since)?,
    };
    let Some(first) = clients.iter().map(|c| c.start_ns).min() else {
        return Ok(None);
    };
    let last = clients.iter().map(|c| c.start_ns).max().unwrap_or(first);
    let last_end = clients.iter().map(|c| c.end_ns).max().unwrap_or(last);
    let (a, b) = match window {
        Window::Known { theta, .. } => (
            first.saturating_add(theta).saturating_sub(SLACK_NS),
            last_end.saturating_add(theta).saturating_add(SLACK_NS),
        ),
        Window::Wide { .. } => (
            first.saturating_sub(MAX_SKEW_NS),
            last.saturating_add(MAX_SKEW_NS),
        ),
    };
    let keys: BTreeSet<&str> = clients.iter().map(|c| c.conn.as_str()).collect();
    let keys: Vec<&str> = keys.into_iter().collect();
    let mut servers = Vec::new();
    for chunk in keys.chunks(KEYS_PER_QUERY) {
        servers.extend(store.fetch::<Exchange>(&format!(
            "SELECT {EXCHANGE_COLS} FROM {db}.http_index WHERE host = {h} AND side = 'server' \
             AND {keys} AND start_ns BETWEEN {a} AND {b}",
            db = store.db,
            h = lit(sh),
            keys = in_list("conn", chunk.iter().copied())
        ))?);
    }
    let servers = distinct(servers);
    let cs: Vec<&Exchange> = clients.iter().collect();
    let ss: Vec<&Exchange> = servers.iter().collect();
    let m = stitch::match_pairs(&candidates(&cs, &ss, true), false);
    Ok((!m.links.is_empty()).then_some(m))
}

/// Whether a new estimate (`theta` on `links` matched exchanges) is
/// recorded over the pair's `known` one (clock difference, links): when
/// it rests on more exchanges, or the clock moved by more than
/// [`MOVE_MIN_NS`] and it rests on at least as many or on
/// [`MOVED_LINKS`]. A recent window of a quiet pair holds few exchanges:
/// its estimate does not replace a better-founded one that it agrees with.
fn replaces(known: Option<(i64, i64)>, theta: i64, links: i64) -> bool {
    let Some((was, on)) = known else {
        return true;
    };
    let moved = (was - theta).abs() > MOVE_MIN_NS;
    links > on || (moved && (links >= on || links >= MOVED_LINKS))
}

/// Re-estimates the host pairs the http exchanges of `batches` are on
/// (those [`lookup_keys`] finds), and the offsets when a pair moved.
///
/// Every read is bounded in time by the group's own exchanges (raw times,
/// give or take [`MAX_SKEW_NS`] between hosts), and by keys its table is
/// sorted by: connections in `http_index` (sorted by connection, side,
/// start), a client host's latest exchanges in `http_keys` (sorted by
/// kind, key, start: its host's client calls by start). None makes the commit check, which reads all of
/// `batches` ([`distinct`] says why it is not needed). What a group reads
/// then depends on the recent traffic, not on the size of the store
/// (docs/aggregator.md, "Flat as the store grows").
pub fn after_ingest(store: &ClickhouseStore, batches: &[&Batch]) -> Result<()> {
    let Some(GroupTimes {
        earliest: lo,
        latest: hi,
        clients: own_clients,
        servers: own_servers,
    }) = group_times(batches)
    else {
        return Ok(());
    };
    // The host pairs of the group's connections: each sampled (host, side,
    // peer)'s, as this aggregator found them within RE_ESTIMATE_EVERY,
    // or else from both ends of its connection in `http_index`, whoever
    // ingested them (the other end of an exchange started within the
    // clock skew allowed between two hosts of it). A (host, side, peer) is
    // looked up again only after RE_ESTIMATE_EVERY: a new pair is still
    // found at once, through the key of the end that arrives second.
    let mut pairs: BTreeSet<(String, String)> = BTreeSet::new();
    let mut to_look: HashMap<String, Peer> = HashMap::new();
    {
        let resolved = store
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (peer, key) in lookup_peers(batches) {
            match resolved.get(&peer) {
                Some((at, found)) if at.elapsed() < RE_ESTIMATE_EVERY => {
                    pairs.extend(found.iter().cloned());
                }
                _ => {
                    to_look.insert(key, peer);
                }
            }
        }
    }
    let keys: Vec<&str> = to_look.keys().map(String::as_str).collect();
    let mut ends: HashMap<String, (BTreeSet<String>, BTreeSet<String>)> = HashMap::new();
    for chunk in keys.chunks(KEYS_PER_QUERY) {
        #[derive(Row, Deserialize)]
        struct End {
            host: String,
            side: String,
            conn: String,
        }
        let rows: Vec<End> = store.fetch(&format!(
            "SELECT DISTINCT host, side, conn FROM {db}.http_index WHERE {keys} \
             AND start_ns BETWEEN {a} AND {b}",
            db = store.db,
            keys = in_list("conn", chunk.iter().copied()),
            a = lo.saturating_sub(MAX_SKEW_NS),
            b = hi.saturating_add(MAX_SKEW_NS),
        ))?;
        for r in rows {
            let e = ends.entry(r.conn).or_default();
            if r.side == "client" {
                e.0.insert(r.host);
            } else {
                e.1.insert(r.host);
            }
        }
    }
    {
        let mut resolved = store
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        for (key, peer) in to_look {
            let mut found = Vec::new();
            if let Some((clients, servers)) = ends.get(&key)
                && !stitch::is_loopback_key(&key)
            {
                for c in clients {
                    for s in servers {
                        if c != s {
                            found.push((c.clone(), s.clone()));
                        }
                    }
                }
            }
            // The other end's (host, side, peer) is behind the same pairs:
            // it learns them now, even if it was looked up (and found
            // nothing) before this end's exchanges were in.
            if let Some((client_ip, server_ip)) = key_addresses(&key) {
                for (c, s) in &found {
                    let mirror = if peer.1 {
                        (s.clone(), false, client_ip)
                    } else {
                        (c.clone(), true, server_ip)
                    };
                    let entry = resolved.entry(mirror).or_insert((now, Vec::new()));
                    if !entry.1.contains(&(c.clone(), s.clone())) {
                        entry.1.push((c.clone(), s.clone()));
                    }
                }
            }
            pairs.extend(found.iter().cloned());
            resolved.insert(peer, (now, found));
        }
    }
    if pairs.is_empty() {
        return Ok(());
    }
    let known: HashMap<(String, String), (i64, i64)> = store
        .pairs_seen
        .get(|| store.pairs())?
        .into_iter()
        .map(|p| ((p.client_host, p.server_host), (p.theta_ns, p.pairs)))
        .collect();
    let mut changed = Vec::new();
    for (ch, sh) in pairs {
        let pair = (ch.clone(), sh.clone());
        let recent = store
            .estimated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&pair)
            .is_some_and(|t| t.elapsed() < RE_ESTIMATE_EVERY);
        let settled = known
            .get(&pair)
            .is_some_and(|&(_, links)| links >= SETTLED_LINKS);
        if recent && settled {
            continue;
        }
        // Where to look: around the known clock difference, else (and
        // when that finds nothing: the clock may have jumped) anywhere
        // the skew allows, at most every RE_ESTIMATE_EVERY per pair.
        let anchor = |theta: i64| {
            own_clients
                .get(ch.as_str())
                .copied()
                .or_else(|| {
                    own_servers
                        .get(sh.as_str())
                        .map(|t| t.saturating_sub(theta))
                })
                .unwrap_or_else(|| hi.saturating_sub(MAX_SKEW_NS))
        };
        // (estimate, whether it looked wide)
        let (found, wide) = match known.get(&pair) {
            Some(&(theta, _)) => {
                let anchor = anchor(theta);
                match estimate(store, &ch, &sh, Window::Known { anchor, theta })? {
                    Some(m) => (Some(m), false),
                    None if !recent => {
                        let since = anchor.saturating_sub(MAX_SKEW_NS + RECENT_NS);
                        let w = Window::Wide { since: Some(since) };
                        (estimate(store, &ch, &sh, w)?, true)
                    }
                    None => continue,
                }
            }
            None if !recent => (
                estimate(store, &ch, &sh, Window::Wide { since: None })?,
                true,
            ),
            None => continue,
        };
        // What limits the next estimates: a success, or a wide look.
        if found.is_some() || wide {
            store
                .estimated
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(pair.clone(), std::time::Instant::now());
        }
        let Some(m) = found else {
            continue;
        };
        let n = i64::try_from(m.links.len()).unwrap_or(i64::MAX);
        if replaces(known.get(&pair).copied(), m.theta, n) {
            changed.push((ch, sh, m.theta, n));
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let mut body = super::RowBinary::default();
    let now = super::now_ns();
    for (ch, sh, theta, n) in &changed {
        body.str(ch).str(sh).i64(*theta).i64(*n).i64(now).end_row();
    }
    store.insert(
        &format!(
            "INSERT INTO {}.host_pairs (client_host, server_host, theta_ns, pairs, updated_ns) \
             FORMAT RowBinary",
            store.db
        ),
        body,
    )?;
    store.pairs_seen.clear();
    update_offsets(store)
}

/// Every host with a batch, in the order of its first commit (the order
/// [`stitch::offsets`] picks references in, the same on every
/// aggregator): from `hosts`, where each aggregator records each host it
/// stores with the commit of its first group of that host
/// (`ClickhouseStore::new_hosts`), so the least of a host's rows is its
/// first commit. A row per host and aggregator start: the read costs the
/// same however many batches the store holds. Before, it read the host
/// and commit id of every row of `batches`: 0.3 s with 10M rows (which 50
/// quiet hosts send in under three hours), minutes after a month.
pub(super) fn hosts_by_first_commit(store: &ClickhouseStore) -> Result<Vec<String>> {
    #[derive(Row, Deserialize)]
    struct Host {
        host: String,
    }
    let rows: Vec<Host> = store.fetch(&format!(
        "SELECT host FROM {}.hosts GROUP BY host ORDER BY min(first_commit), host",
        store.db
    ))?;
    Ok(rows.into_iter().map(|r| r.host).collect())
}

/// Offsets from every host pair (`stitch::offsets`), recorded where they
/// moved.
fn update_offsets(store: &ClickhouseStore) -> Result<()> {
    let hosts = hosts_by_first_commit(store)?;
    let edges: Vec<Edge> = store
        .pairs()?
        .into_iter()
        .filter(|p| p.pairs > 0)
        .map(|p| Edge {
            client_host: p.client_host,
            server_host: p.server_host,
            theta: p.theta_ns,
            pairs: p.pairs,
        })
        .collect();
    let current: HashMap<String, (i64, i64, Option<String>)> = store
        .offsets()?
        .into_iter()
        .map(|o| (o.host, (o.offset_ns, o.pairs, o.reference)))
        .collect();
    let mut rows = Vec::new();
    let mut estimated: Vec<_> = stitch::offsets(&hosts, &edges).into_iter().collect();
    estimated.sort_by(|a, b| a.0.cmp(&b.0));
    for (host, o) in estimated {
        let moved = current.get(&host).is_none_or(|(off, pairs, reference)| {
            (off - o.offset_ns).abs() > MOVE_MIN_NS
                || *pairs != o.pairs
                || reference.as_deref() != Some(&o.reference)
        });
        if moved {
            // A move under MOVE_MIN_NS keeps the offset in force (each
            // move changes every time shown for the host).
            let keep = current
                .get(&host)
                .map(|c| c.0)
                .filter(|off| (off - o.offset_ns).abs() <= MOVE_MIN_NS);
            rows.push((host, keep.unwrap_or(o.offset_ns), o.pairs, o.reference));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    store.write_offsets(&rows)
}

/// Links across hosts, worked out per connection when a walk crosses one.
struct Walker<'a> {
    store: &'a ClickhouseStore,
    theta: HashMap<(String, String), i64>,
    /// Connection key -> (client id, server id) links.
    links: HashMap<String, Vec<(i64, i64)>>,
    nodes: HashMap<i64, Exchange>,
}

impl Walker<'_> {
    fn conn_links(&mut self, conn: &str) -> Result<&[(i64, i64)]> {
        if !self.links.contains_key(conn) {
            let all = self.store.exchanges(&format!("conn = {}", lit(conn)))?;
            let mut links = Vec::new();
            let hosts: BTreeSet<(&str, &str)> = all
                .iter()
                .filter(|c| c.side == "client")
                .flat_map(|c| {
                    all.iter()
                        .filter(|s| s.side == "server")
                        .map(move |s| (c.host.as_str(), s.host.as_str()))
                })
                .collect();
            for (ch, sh) in hosts {
                let cs: Vec<&Exchange> = all
                    .iter()
                    .filter(|e| e.side == "client" && e.host == ch)
                    .collect();
                let ss: Vec<&Exchange> = all
                    .iter()
                    .filter(|e| e.side == "server" && e.host == sh)
                    .collect();
                let cands = candidates(&cs, &ss, ch != sh);
                let m = if ch == sh {
                    stitch::match_pairs(&cands, true)
                } else if let Some(t) = self.theta.get(&(ch.to_string(), sh.to_string())) {
                    stitch::match_pairs_at(&cands, *t)
                } else {
                    continue;
                };
                links.extend(m.links);
            }
            for e in all {
                self.nodes.insert(e.id, e);
            }
            self.links.insert(conn.to_string(), links);
        }
        Ok(self.links.get(conn).map_or(&[], Vec::as_slice))
    }

    /// The exchange one level up.
    fn up(&mut self, n: &Exchange) -> Result<Option<Exchange>> {
        if n.side == "server" {
            let id = n.id;
            let client = self
                .conn_links(&n.conn)?
                .iter()
                .find(|l| l.1 == id)
                .map(|l| l.0);
            Ok(client.and_then(|c| self.nodes.get(&c).cloned()))
        } else if !n.parent_req_id.is_empty() {
            let rows =
                self.store
                    .exchanges_by("req_id", &n.parent_req_id, Some((&n.host, "server")))?;
            Ok(rows.into_iter().min_by_key(|e| e.id))
        } else {
            Ok(None)
        }
    }

    /// The exchanges one level down.
    fn down(&mut self, n: &Exchange) -> Result<Vec<Exchange>> {
        if n.side == "server" {
            self.store
                .exchanges_by("parent_req_id", &n.req_id, Some((&n.host, "client")))
        } else {
            let id = n.id;
            let servers: Vec<i64> = self
                .conn_links(&n.conn)?
                .iter()
                .filter(|l| l.0 == id)
                .map(|l| l.1)
                .collect();
            Ok(servers
                .into_iter()
                .filter_map(|s| self.nodes.get(&s).cloned())
                .collect())
        }
    }

    /// The own trace of the root above `n`.
    fn root_trace(&mut self, n: Exchange) -> Result<String> {
        let mut seen = HashSet::new();
        let mut cur = n;
        while seen.insert(cur.id) {
            match self.up(&cur)? {
                Some(next) => cur = next,
                None => break,
            }
        }
        Ok(cur.own_trace)
    }
}

/// The trace `t` names (as on SQLite: a root's own trace, or the req_id of
/// any exchange in it), walked from its roots.
pub fn trace(store: &ClickhouseStore, t: &str) -> Result<TraceSet> {
    let mut w = Walker {
        store,
        theta: store
            .pairs()?
            .into_iter()
            .filter(|p| p.pairs > 0)
            .map(|p| ((p.client_host, p.server_host), p.theta_ns))
            .collect(),
        links: HashMap::new(),
        nodes: HashMap::new(),
    };
    let mut traces = BTreeSet::from([t.to_owned()]);
    for n in store.exchanges_by("req_id", t, None)? {
        traces.insert(w.root_trace(n)?);
    }
    let mut stack = Vec::new();
    for tr in &traces {
        for n in store.exchanges_by("own_trace", tr, None)? {
            if w.up(&n)?.is_none() {
                stack.push(n);
            }
        }
    }
    let mut out = TraceSet {
        id: t.to_owned(),
        ..TraceSet::default()
    };
    let mut seen = HashSet::new();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    while let Some(n) = stack.pop() {
        if !seen.insert(n.id) || seen.len() > super::MAX_TRACE_EXCHANGES {
            continue;
        }
        stack.extend(w.down(&n)?);
        first = first.min(n.start_ns);
        last = last.max(n.end_ns.max(n.start_ns));
        out.ids.push(n.id);
        out.reqs.push((n.host, n.req_id));
    }
    if !out.ids.is_empty() {
        out.raw = RawBounds::between(
            first.saturating_sub(TRACE_SLACK_NS),
            last.saturating_add(TRACE_SLACK_NS),
        );
    }
    out.ids.sort_unstable();
    out.reqs.sort();
    out.reqs.dedup();
    Ok(out)
}

/// The side of an exchange as the index writes it.
pub fn side_name(s: HttpSide) -> &'static str {
    match s {
        HttpSide::Client => "client",
        HttpSide::Server => "server",
    }
}

#[cfg(test)]
mod tests {
    use super::{MOVE_MIN_NS, key_addresses, replaces};

    #[test]
    fn a_connection_keys_addresses() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            key_addresses("10.0.0.1:40000>10.0.0.2:8080"),
            Some((ip("10.0.0.1"), ip("10.0.0.2")))
        );
        assert_eq!(
            key_addresses("[fd00::1]:5000>[fd00::2]:443"),
            Some((ip("fd00::1"), ip("fd00::2")))
        );
        assert_eq!(key_addresses("garbage"), None);
    }

    #[test]
    fn an_estimate_on_fewer_exchanges_replaces_only_a_moved_clock() {
        // A first estimate is always recorded.
        assert!(replaces(None, 5, 1));
        // More exchanges: recorded, moved or not.
        assert!(replaces(Some((0, 100)), 10, 101));
        // Fewer, and agreeing: the better-founded one stays.
        assert!(!replaces(Some((0, 1000)), MOVE_MIN_NS, 40));
        // Fewer, but the clock moved: recorded when they are enough.
        assert!(replaces(Some((0, 1000)), MOVE_MIN_NS + 1, 32));
        assert!(!replaces(Some((0, 1000)), 5_000_000, 31));
        // As many, the same clock: nothing new to record.
        assert!(!replaces(Some((7, 64)), 7, 64));
        assert!(replaces(Some((7, 64)), 7 + MOVE_MIN_NS + 1, 64));
    }
}
