//! Cross-host stitching, pure part: which client exchange on one host and
//! which server exchange on another are the same request, and how far apart
//! the two hosts' clocks are (docs/aggregator.md, "Stitching").
//!
//! A candidate pair is a client exchange and a server exchange whose
//! 4-tuples mirror each other (the same connection key). Causality bounds
//! the clock difference `theta` (server clock minus client clock) of a true
//! pair: the server read the request's first byte after the client wrote
//! it, and wrote the response's last byte before the client read it, so
//! `s_end - c_end <= theta <= s_start - c_start`. All true pairs between two
//! hosts share one `theta`; a wrong candidate (another request on the same
//! keep-alive connection, an older connection that used the same ephemeral
//! port) gives an interval somewhere else. So the `theta` covered by the most
//! intervals is the hosts' clock difference, and the pairs are then matched
//! one to one, in order, among the candidates whose bounds contain it.
//! Each side's times are its own host's raw clock.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use crate::event::{HttpExchange, HttpSide};

/// Slack allowed on the causal bounds (timestamp granularity, the moment a
/// probe fires versus the moment the byte moves).
pub const TOLERANCE_NS: i64 = 1_000_000;
/// Candidates whose start times (raw, on two clocks) differ by more than
/// this are never the same request.
pub const MAX_SKEW_NS: i64 = 600_000_000_000;

/// The connection key of an exchange, written from the client's side:
/// `client_ip:client_port>server_ip:server_port`. IPv4-mapped IPv6
/// addresses are written as IPv4, so a server on `::` and a client on an
/// IPv4 socket agree.
pub fn conn_key(h: &HttpExchange) -> String {
    let (c, cp, s, sp) = conn_ends(h);
    format!("{c}:{cp}>{s}:{sp}")
}

/// The connection an exchange is on, as [`conn_key`] names it: client
/// address and port, server address and port (addresses canonical).
pub fn conn_ends(h: &HttpExchange) -> (IpAddr, u16, IpAddr, u16) {
    let t = &h.tuple;
    let (c, cp, s, sp) = match h.side {
        HttpSide::Client => (t.saddr, t.sport, t.daddr, t.dport),
        HttpSide::Server => (t.daddr, t.dport, t.saddr, t.sport),
    };
    (canonical(c), cp, canonical(s), sp)
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

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

/// Whether a connection key is over loopback (then both ends are on one
/// host, and it is never matched across hosts).
pub fn is_loopback_key(key: &str) -> bool {
    key.split('>').any(|end| {
        end.rsplit_once(':')
            .and_then(|(ip, _)| ip.trim_matches(['[', ']']).parse::<IpAddr>().ok())
            .is_some_and(|ip| ip.is_loopback() || ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    })
}

/// One side of a candidate: an exchange as indexed (raw times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub id: i64,
    pub start: i64,
    pub end: i64,
}

/// A client exchange and a server exchange on the same connection key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Groups candidates by connection.
    pub conn: usize,
    pub client: Side,
    pub server: Side,
}

impl Candidate {
    /// Lowest clock difference consistent with causality.
    pub fn lo(&self) -> i64 {
        self.server.end - self.client.end
    }
    /// Highest.
    pub fn hi(&self) -> i64 {
        self.server.start - self.client.start
    }
    /// The NTP-style estimate: the middle of the bounds.
    pub fn mid(&self) -> i64 {
        self.lo() + (self.hi() - self.lo()) / 2
    }
    fn admits(&self, theta: i64) -> bool {
        self.lo() - TOLERANCE_NS <= theta && theta <= self.hi() + TOLERANCE_NS
    }
}

/// The result for one pair of hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Server clock minus client clock (0 within one host).
    pub theta: i64,
    /// (client id, server id), one to one.
    pub links: Vec<(i64, i64)>,
}

/// Matches the candidates between one client host and one server host.
/// `same_host`: the clock difference is 0 by definition.
pub fn match_pairs(cands: &[Candidate], same_host: bool) -> Matched {
    let theta0 = if same_host {
        0
    } else {
        match densest(cands) {
            Some(t) => t,
            None => {
                return Matched {
                    theta: 0,
                    links: Vec::new(),
                };
            }
        }
    };
    let links = assign(cands, theta0);
    let theta = if same_host {
        0
    } else {
        let by_pair: HashMap<(i64, i64), &Candidate> = cands
            .iter()
            .map(|c| ((c.client.id, c.server.id), c))
            .collect();
        let chosen: Vec<&Candidate> = links
            .iter()
            .filter_map(|l| by_pair.get(l).copied())
            .collect();
        robust_theta(&chosen).unwrap_or(theta0)
    };
    Matched { theta, links }
}

/// Matches candidates at a known clock difference `theta` (the host
/// pair's estimate from earlier batches).
pub fn match_pairs_at(cands: &[Candidate], theta: i64) -> Matched {
    Matched {
        theta,
        links: assign(cands, theta),
    }
}

/// The clock difference covered by the most candidates' bounds (ties: the
/// middle of the first densest stretch).
fn densest(cands: &[Candidate]) -> Option<i64> {
    if cands.is_empty() {
        return None;
    }
    // +1 at lo, -1 after hi; starts before ends at the same point.
    let mut points: Vec<(i64, i32)> = Vec::with_capacity(cands.len() * 2);
    for c in cands {
        let (lo, hi) = (c.lo() - TOLERANCE_NS, c.hi() + TOLERANCE_NS);
        if lo > hi {
            continue;
        }
        points.push((lo, 1));
        points.push((hi, -1));
    }
    points.sort_by_key(|&(x, d)| (x, -d));
    let (mut cur, mut best, mut best_at) = (0, 0, None);
    for (i, &(x, d)) in points.iter().enumerate() {
        cur += d;
        if d == 1 && cur > best {
            best = cur;
            // The stretch ends at the next point.
            let end = points.get(i + 1).map_or(x, |p| p.0);
            best_at = Some(x + (end - x) / 2);
        }
    }
    best_at
}

/// One-to-one, in order: per connection, each client exchange (by start)
/// takes the earliest server exchange not yet taken, after the one the
/// previous client took, whose bounds admit `theta`.
fn assign(cands: &[Candidate], theta: i64) -> Vec<(i64, i64)> {
    let mut by_conn: HashMap<usize, Vec<&Candidate>> = HashMap::new();
    for c in cands.iter().filter(|c| c.admits(theta)) {
        by_conn.entry(c.conn).or_default().push(c);
    }
    let mut links = Vec::new();
    let mut conns: Vec<_> = by_conn.into_iter().collect();
    conns.sort_by_key(|(k, _)| *k);
    for (_, mut cs) in conns {
        cs.sort_by_key(|c| (c.client.start, c.client.id, c.server.start, c.server.id));
        let mut taken = std::collections::HashSet::new();
        let mut done_clients = std::collections::HashSet::new();
        let mut last_server_start = i64::MIN;
        for c in cs {
            if done_clients.contains(&c.client.id)
                || taken.contains(&c.server.id)
                || c.server.start < last_server_start
            {
                continue;
            }
            done_clients.insert(c.client.id);
            taken.insert(c.server.id);
            last_server_start = c.server.start;
            links.push((c.client.id, c.server.id));
        }
    }
    links
}

/// Median of the matched pairs' midpoints, moved into the intersection of
/// their bounds when that is not empty (then every matched pair is causal
/// once corrected).
pub fn robust_theta(pairs: &[&Candidate]) -> Option<i64> {
    if pairs.is_empty() {
        return None;
    }
    let mut mids: Vec<i64> = pairs.iter().map(|c| c.mid()).collect();
    mids.sort_unstable();
    let n = mids.len();
    let median = if n % 2 == 1 {
        mids[n / 2]
    } else {
        mids[n / 2 - 1] + (mids[n / 2] - mids[n / 2 - 1]) / 2
    };
    let lo = pairs.iter().map(|c| c.lo()).max().unwrap_or(i64::MIN);
    let hi = pairs.iter().map(|c| c.hi()).min().unwrap_or(i64::MAX);
    Some(if lo <= hi {
        median.clamp(lo, hi)
    } else {
        median
    })
}

/// One host pair's estimate, as an edge of the host graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub client_host: String,
    pub server_host: String,
    /// Server clock minus client clock.
    pub theta: i64,
    pub pairs: i64,
}

/// A host's correction: ns to add to its raw times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offset {
    pub offset_ns: i64,
    /// Matched pairs on the edge it was derived through (0: a reference).
    pub pairs: i64,
    /// The host whose clock it is relative to.
    pub reference: String,
}

/// Offsets for every host reachable through edges. `hosts` are in the
/// order first seen: each connected group's reference is its first-seen
/// host (offset 0); other hosts are reached through the edges with the
/// most pairs first (a maximum spanning tree), so the best-supported
/// estimates are chained.
pub fn offsets(hosts: &[String], edges: &[Edge]) -> HashMap<String, Offset> {
    let mut out: HashMap<String, Offset> = HashMap::new();
    let cross: Vec<&Edge> = edges
        .iter()
        .filter(|e| e.client_host != e.server_host && e.pairs > 0)
        .collect();
    for root in hosts {
        if out.contains_key(root) || !cross.iter().any(|e| touches(e, root)) {
            continue;
        }
        out.insert(
            root.clone(),
            Offset {
                offset_ns: 0,
                pairs: 0,
                reference: root.clone(),
            },
        );
        loop {
            // The best edge from a placed host to an unplaced one.
            let next = cross
                .iter()
                .filter(|e| out.contains_key(&e.client_host) != out.contains_key(&e.server_host))
                .max_by_key(|e| (e.pairs, std::cmp::Reverse((&e.client_host, &e.server_host))));
            let Some(e) = next else { break };
            // server clock = client clock + theta; corrected = raw + offset.
            let (new, off) = if let Some(c) = out.get(&e.client_host) {
                (e.server_host.clone(), c.offset_ns - e.theta)
            } else {
                let s = &out[&e.server_host];
                (e.client_host.clone(), s.offset_ns + e.theta)
            };
            out.insert(
                new,
                Offset {
                    offset_ns: off,
                    pairs: e.pairs,
                    reference: root.clone(),
                },
            );
        }
    }
    out
}

fn touches(e: &Edge, host: &str) -> bool {
    e.client_host == host || e.server_host == host
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Tuple;

    fn cand(conn: usize, c: (i64, i64, i64), s: (i64, i64, i64)) -> Candidate {
        Candidate {
            conn,
            client: Side {
                id: c.0,
                start: c.1,
                end: c.2,
            },
            server: Side {
                id: s.0,
                start: s.1,
                end: s.2,
            },
        }
    }

    const MS: i64 = 1_000_000;

    #[test]
    fn keep_alive_and_port_reuse_pair_in_order() {
        let theta = 3_000 * MS;
        let mut cands = Vec::new();
        // Connection 0: 3 requests 10 ms apart, each 4 ms at the client and
        // 2 ms at the server; connection 1 reuses the port 500 ms later.
        let mut reqs = Vec::new();
        for (conn, base) in [(0usize, 0i64), (1, 500 * MS)] {
            for i in 0..3i64 {
                let id = conn as i64 * 10 + i;
                let c0 = base + i * 10 * MS;
                reqs.push((
                    conn,
                    (id, c0, c0 + 4 * MS),
                    (100 + id, c0 + MS + theta, c0 + 3 * MS + theta),
                ));
            }
        }
        // One key for both connections (the reused port): every client is a
        // candidate with every server.
        for (_, c, _) in &reqs {
            for (_, _, s) in &reqs {
                cands.push(cand(0, *c, *s));
            }
        }
        let m = match_pairs(&cands, false);
        assert_eq!(m.theta, theta);
        let mut links = m.links.clone();
        links.sort();
        let want: Vec<_> = reqs.iter().map(|(_, c, s)| (c.0, s.0)).collect();
        assert_eq!(links, want);
    }

    #[test]
    fn theta_is_median_clamped_into_the_bounds() {
        // Asymmetric network: the midpoint is off, the clamp keeps it causal.
        let a = cand(0, (1, 0, 10 * MS), (2, 8 * MS, 9 * MS));
        let b = cand(1, (3, 0, 10 * MS), (4, MS, 2 * MS));
        // a: [-1ms, 8ms] mid 3.5ms; b: [-8ms, 1ms] mid -3.5ms.
        assert_eq!(robust_theta(&[&a, &b]), Some(0));
        let m = match_pairs(&[a, b], false);
        assert_eq!(m.links.len(), 2);
        assert!(m.theta >= -MS && m.theta <= MS);
    }

    #[test]
    fn offsets_chain_through_the_best_edges() {
        let hosts = vec!["h3".to_string(), "h1".into(), "h2".into(), "lone".into()];
        let edges = vec![
            Edge {
                client_host: "h1".into(),
                server_host: "h2".into(),
                theta: 3_000 * MS,
                pairs: 20,
            },
            Edge {
                client_host: "h2".into(),
                server_host: "h3".into(),
                theta: -5_000 * MS,
                pairs: 20,
            },
        ];
        let o = offsets(&hosts, &edges);
        // h3 was seen first: the reference.
        assert_eq!(o["h3"].offset_ns, 0);
        // h2's clock is 5 s ahead of h3's, h1's 2 s ahead.
        assert_eq!(o["h2"].offset_ns, -5_000 * MS);
        assert_eq!(o["h1"].offset_ns, -2_000 * MS);
        assert_eq!(o["h1"].offset_ns - o["h2"].offset_ns, 3_000 * MS);
        assert!(!o.contains_key("lone"));
    }

    #[test]
    fn keys_mirror_and_map_v4_in_v6() {
        let mk = |side, s: &str, sp, d: &str, dp| HttpExchange {
            side,
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            duration_ns: 1,
            req_bytes: 0,
            resp_bytes: 0,
            tuple: Tuple {
                saddr: s.parse().unwrap(),
                sport: sp,
                daddr: d.parse().unwrap(),
                dport: dp,
            },
            tls: false,
            req_id: "r".into(),
            parent_req_id: None,
            traceparent: None,
            request_id: None,
            complete: true,
            req_body: None,
            resp_body: None,
        };
        let c = mk(HttpSide::Client, "10.0.0.1", 40000, "10.0.0.2", 80);
        let s = mk(
            HttpSide::Server,
            "::ffff:10.0.0.2",
            80,
            "::ffff:10.0.0.1",
            40000,
        );
        assert_eq!(conn_key(&c), conn_key(&s));
        assert_eq!(conn_key(&c), "10.0.0.1:40000>10.0.0.2:80");
        assert!(!is_loopback_key(&conn_key(&c)));
        let l = mk(HttpSide::Client, "127.0.0.1", 40000, "127.0.0.1", 80);
        assert!(is_loopback_key(&conn_key(&l)));
        let l6 = mk(HttpSide::Client, "::1", 40000, "::1", 80);
        assert!(is_loopback_key(&conn_key(&l6)));
    }
}
