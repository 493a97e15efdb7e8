//! Traced TCP connections in user space: their HTTP parsers, request ids,
//! and the requests each process is serving right now — which is what lets
//! a log line or an outgoing request be tied to the request it belongs to.
//!
//! Correlation rules (docs/correlation.md): a log line, or a client request,
//! gets the `req_id` of a server request of the same process only when that
//! is certain:
//! 1. exactly one in-flight server request carries an id (x-request-id, or
//!    the trace id of its W3C traceparent) that appears in the log line (or
//!    in the client request's own headers), or else
//! 2. exactly one server request is in flight in the process.
//!
//! Otherwise the field stays empty; nothing is guessed.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::{
    decode::Segment,
    event::{HttpExchange, HttpSide, Tuple},
    http::{Direction, Exchange, HttpConn, InFlight, Side},
    reassembly::{Piece, Reassembly},
};

/// Received runs (in sequence order) waiting for the read that takes them;
/// past this many the oldest go to the parser with their arrival time.
const MAX_UNREAD: usize = 128;
/// Segments received by listeners, waiting for the accept that claims
/// them (it follows at once in the ring; this only bounds strays).
const MAX_BEFORE_ACCEPT: usize = 64;

struct Conn {
    /// Random-looking per-connection id; with the request's seq it forms
    /// the req_id.
    id: u64,
    tuple: Option<Tuple>,
    http: HttpConn,
    /// Plaintext arrives from the TLS probes; raw socket bytes (ciphertext
    /// copied before the connection was known to be TLS) are ignored.
    tls: bool,
    /// Client requests: parent req_id decided when the request was sent.
    parents: HashMap<u64, Option<String>>,
    resyncs_reported: u64,
    /// TCP segments (cgroup_skb capture) put in order: [sent, received].
    segments: [Reassembly; 2],
    /// Received runs in order, not yet read by the process, and the
    /// sequence number of the first one's first byte. They reach the parser
    /// with the time of the read that took them (a `ReadMark`).
    unread: VecDeque<Piece>,
    unread_seq: u32,
}

/// One read or write on a connection, as the probes saw it.
pub struct Payload<'a> {
    /// Plaintext from the TLS probes rather than bytes on the socket.
    pub tls: bool,
    pub dir: Direction,
    pub mono_ns: u64,
    /// A prefix of the `total` bytes moved.
    pub captured: &'a [u8],
    pub total: usize,
}

/// An exchange ready to become an `http` event.
pub struct Finished {
    pub pid: u32,
    pub exchange: HttpExchange,
    /// Kernel (monotonic) time of the request's first byte.
    pub start_mono_ns: u64,
}

#[derive(Default)]
pub struct Connections {
    conns: HashMap<(u32, u64), Conn>,
    by_pid: HashMap<u32, HashSet<u64>>,
    salt: u64,
    /// Connections seen so far; makes every connection id distinct.
    opened: u64,
    /// Body bytes kept per message (`--capture-bodies`).
    pub body_capture: usize,
    /// Resynchronisations of the HTTP parsers (framing lost), not yet
    /// reported.
    pub parse_losses: u64,
    /// Payload bytes of TCP segments that never arrived (holes given up by
    /// the reassembly), not yet reported.
    pub capture_losses: u64,
    /// Segments a listener received before their connection existed, by
    /// id, oldest first (see `SEG_BEFORE_ACCEPT`). An unclaimed one is
    /// dropped here without counting: if its connection is traced, the
    /// reassembly counts the hole it leaves.
    before_accept: VecDeque<Segment>,
}

/// One TCP segment of a connection, as the cgroup_skb programs saw it.
pub struct SegmentIn<'a> {
    pub dir: Direction,
    pub mono_ns: u64,
    pub seq: u32,
    pub seg_len: u32,
    /// A prefix of the payload.
    pub captured: &'a [u8],
}

/// The id the W3C traceparent carries for a whole trace:
/// `00-<trace-id>-<parent-id>-<flags>`.
fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|t| t.len() == 32)
}

fn req_id(conn_id: u64, seq: u64) -> String {
    format!("{conn_id:016x}-{seq}")
}

/// A 64-bit mix (splitmix64 finaliser), to make ids that do not repeat
/// across connections, processes or hosts.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Connections {
    pub fn new(host: &str, start_ns: u64) -> Self {
        let salt = host
            .bytes()
            .fold(start_ns, |acc, b| mix(acc ^ u64::from(b)));
        Self {
            salt,
            ..Default::default()
        }
    }

    fn conn(&mut self, pid: u32, sk: u64) -> &mut Conn {
        if !self.conns.contains_key(&(pid, sk)) {
            self.opened += 1;
            self.by_pid.entry(pid).or_default().insert(sk);
        }
        // Distinct per run and host (the salt's high half) and per
        // connection (the count of connections opened, low half). Unlike
        // a hash of the two, it grows within a run, and request ids start
        // with it: the aggregator's index on request ids then takes each
        // agent's new ids at one place instead of at a random page, which
        // is most of what indexing them costs (docs/aggregator.md,
        // "Storage"). Ids repeat only after 2^32 connections in one run.
        let id = (self.salt & 0xffff_ffff_0000_0000) | (self.opened & 0xffff_ffff);
        self.conns.entry((pid, sk)).or_insert_with(|| Conn {
            id,
            tuple: None,
            http: HttpConn::with_body_capture(self.body_capture),
            tls: false,
            parents: HashMap::new(),
            resyncs_reported: 0,
            segments: Default::default(),
            unread: VecDeque::new(),
            unread_seq: 0,
        })
    }

    /// The addresses of a connection, if it was seen opening.
    pub fn tuple(&self, pid: u32, sk: u64) -> Option<&Tuple> {
        self.conns.get(&(pid, sk))?.tuple.as_ref()
    }

    /// A connection was opened (or adopted): its addresses, and where its
    /// streams start (sent, received) when the kernel knew.
    pub fn opened(&mut self, pid: u32, sk: u64, tuple: Tuple, first_seqs: Option<(u32, u32)>) {
        // A new connection on a reused socket address starts afresh.
        self.forget(pid, sk);
        let conn = self.conn(pid, sk);
        conn.tuple = Some(tuple);
        if let Some((sent, received)) = first_seqs {
            conn.segments[0].start_at(sent);
            conn.segments[1].start_at(received);
        }
    }

    /// A segment a listener received before its connection existed (its
    /// `sock` is the id the accept will name).
    pub fn before_accept(&mut self, seg: Segment) {
        if self.before_accept.len() >= MAX_BEFORE_ACCEPT {
            self.before_accept.pop_front();
        }
        self.before_accept.push_back(seg);
    }

    /// The accept of connection `sk` claims segment `id` (received by its
    /// listener before it existed): it is the connection's.
    pub fn claim_before_accept(&mut self, pid: u32, sk: u64, id: u64) -> Vec<Finished> {
        let Some(at) = self.before_accept.iter().position(|s| s.sock == id) else {
            return Vec::new();
        };
        let Some(seg) = self.before_accept.remove(at) else {
            return Vec::new();
        };
        self.segment(
            pid,
            sk,
            SegmentIn {
                dir: Direction::Received,
                mono_ns: seg.head.mono_ns,
                seq: seg.seq,
                seg_len: seg.seg_len,
                captured: &seg.data,
            },
        )
    }

    /// Bytes read or written on a connection.
    pub fn data(&mut self, pid: u32, sk: u64, payload: Payload<'_>) -> Vec<Finished> {
        let Payload {
            tls,
            dir,
            mono_ns,
            captured,
            total,
        } = payload;
        let body_capture = self.body_capture;
        let conn = self.conn(pid, sk);
        if tls && !conn.tls {
            // First plaintext: whatever ciphertext was parsed is noise.
            conn.tls = true;
            conn.http = HttpConn::with_body_capture(body_capture);
        } else if !tls && conn.tls {
            return Vec::new();
        }
        // Only a client's requests need a parent decided (below): a
        // connection already known to be a server's skips the bookkeeping.
        let known: HashSet<u64> = if conn.http.side() == Some(Side::Server) {
            HashSet::new()
        } else {
            conn.http.in_flight().map(|f| f.seq).collect()
        };
        let done = conn.http.feed(dir, mono_ns, captured, total);
        // Client requests sent just now: decide their parent while the
        // server request that caused them is still in flight.
        let new_client: Vec<(u64, Vec<String>)> = if conn.http.side() == Some(Side::Client) {
            conn.http
                .in_flight()
                .filter(|f| !known.contains(&f.seq))
                .map(|f| (f.seq, ids_of(&f)))
                .collect()
        } else {
            Vec::new()
        };
        // Exchanges completed by this very chunk were also "new".
        let completed_new: Vec<(u64, Vec<String>)> = done
            .iter()
            .filter(|e| e.side == Side::Client && !known.contains(&e.seq))
            .map(|e| {
                let ids = [
                    e.request_id.clone(),
                    e.traceparent
                        .as_deref()
                        .and_then(trace_id)
                        .map(str::to_string),
                ]
                .into_iter()
                .flatten()
                .collect();
                (e.seq, ids)
            })
            .collect();
        for (seq, ids) in new_client.into_iter().chain(completed_new) {
            let parent = self.serving(pid, |cands| pick(cands, &ids));
            self.conn(pid, sk).parents.insert(seq, parent);
        }
        self.finish(pid, sk, done)
    }

    /// A TCP segment of a connection: its new bytes, in sequence order,
    /// go to the parser as reads/writes would.
    pub fn segment(&mut self, pid: u32, sk: u64, seg: SegmentIn<'_>) -> Vec<Finished> {
        if seg.dir == Direction::Received {
            return self.received_segment(pid, sk, seg);
        }
        let reasm = &mut self.conn(pid, sk).segments[0];
        if reasm.take_in_order(seg.seq, seg.seg_len) {
            // Nearly every segment: no copy on the way to the parser.
            return self.data(
                pid,
                sk,
                Payload {
                    tls: false,
                    dir: seg.dir,
                    mono_ns: seg.mono_ns,
                    captured: seg.captured,
                    total: seg.seg_len as usize,
                },
            );
        }
        let lost_before = reasm.lost_bytes;
        // Sent segments leave the socket in sequence order: a hole there
        // is a lost record, never a late one.
        let pieces = reasm.push(seg.seq, seg.seg_len, seg.mono_ns, seg.captured, true);
        self.capture_losses += reasm.lost_bytes - lost_before;
        self.feed_pieces(pid, sk, seg.dir, pieces)
    }

    /// A received segment: its new bytes wait for the read that takes them.
    fn received_segment(&mut self, pid: u32, sk: u64, seg: SegmentIn<'_>) -> Vec<Finished> {
        let conn = self.conn(pid, sk);
        let reasm = &mut conn.segments[1];
        let start = reasm.next().unwrap_or(seg.seq);
        let lost_before = reasm.lost_bytes;
        let pieces = if reasm.take_in_order(seg.seq, seg.seg_len) {
            vec![Piece {
                mono_ns: seg.mono_ns,
                captured: seg.captured.to_vec(),
                total: seg.seg_len as usize,
            }]
        } else {
            reasm.push(seg.seq, seg.seg_len, seg.mono_ns, seg.captured, false)
        };
        let lost = reasm.lost_bytes - lost_before;
        if conn.unread.is_empty() {
            conn.unread_seq = start;
        }
        conn.unread.extend(pieces);
        let mut overflow = Vec::new();
        while conn.unread.len() > MAX_UNREAD {
            // Not read for long (or reads are not seen): the oldest go on
            // with the time they arrived.
            let Some(p) = conn.unread.pop_front() else {
                break;
            };
            conn.unread_seq = conn.unread_seq.wrapping_add(p.total as u32);
            overflow.push(p);
        }
        self.capture_losses += lost;
        self.feed_pieces(pid, sk, Direction::Received, overflow)
    }

    /// The process read connection `sk` up to `copied_seq`: the received
    /// bytes before it go to the parser with the time of that read.
    pub fn read_mark(&mut self, pid: u32, sk: u64, copied_seq: u32, mono_ns: u64) -> Vec<Finished> {
        let Some(conn) = self.conns.get_mut(&(pid, sk)) else {
            return Vec::new();
        };
        // Bytes read that no reported segment carried: holes given up now.
        let reasm = &mut conn.segments[1];
        let (start, lost_before) = (reasm.next(), reasm.lost_bytes);
        let given_up = reasm.read_up_to(copied_seq, mono_ns);
        self.capture_losses += reasm.lost_bytes - lost_before;
        if !given_up.is_empty() {
            if conn.unread.is_empty() {
                conn.unread_seq = start.unwrap_or(copied_seq);
            }
            conn.unread.extend(given_up);
        }
        let mut read = Vec::new();
        while let Some(front) = conn.unread.front_mut() {
            let taken = copied_seq.wrapping_sub(conn.unread_seq) as i32;
            if taken <= 0 {
                break;
            }
            let taken = taken as usize;
            if taken >= front.total {
                let Some(mut p) = conn.unread.pop_front() else {
                    break;
                };
                conn.unread_seq = conn.unread_seq.wrapping_add(p.total as u32);
                p.mono_ns = mono_ns;
                read.push(p);
            } else {
                // Part of a segment was read: split it where the read ended.
                let rest = front.captured.split_off(taken.min(front.captured.len()));
                let head = Piece {
                    mono_ns,
                    captured: std::mem::replace(&mut front.captured, rest),
                    total: taken,
                };
                front.total -= taken;
                conn.unread_seq = conn.unread_seq.wrapping_add(taken as u32);
                read.push(head);
                break;
            }
        }
        self.feed_pieces(pid, sk, Direction::Received, read)
    }

    fn feed_pieces(
        &mut self,
        pid: u32,
        sk: u64,
        dir: Direction,
        pieces: Vec<crate::reassembly::Piece>,
    ) -> Vec<Finished> {
        let mut out = Vec::new();
        for p in pieces {
            out.extend(self.data(
                pid,
                sk,
                Payload {
                    tls: false,
                    dir,
                    mono_ns: p.mono_ns,
                    captured: &p.captured,
                    total: p.total,
                },
            ));
        }
        out
    }

    /// The connection closed: what its parser still held.
    pub fn closed(&mut self, pid: u32, sk: u64, mono_ns: u64) -> Vec<Finished> {
        let mut out = Vec::new();
        // Segments still waiting for a hole: the hole is lost now. Received
        // bytes no read was seen for go with the time they arrived.
        for dir in [Direction::Sent, Direction::Received] {
            let side = usize::from(dir == Direction::Received);
            let Some(conn) = self.conns.get_mut(&(pid, sk)) else {
                break;
            };
            let reasm = &mut conn.segments[side];
            let lost_before = reasm.lost_bytes;
            let mut pieces = reasm.flush();
            self.capture_losses += reasm.lost_bytes - lost_before;
            if dir == Direction::Received {
                let mut all: Vec<Piece> = conn.unread.drain(..).collect();
                all.append(&mut pieces);
                pieces = all;
            }
            out.extend(self.feed_pieces(pid, sk, dir, pieces));
        }
        let done = match self.conns.get_mut(&(pid, sk)) {
            Some(conn) => conn.http.close(mono_ns),
            None => return out,
        };
        out.extend(self.finish(pid, sk, done));
        self.forget(pid, sk);
        out
    }

    /// The process exited: drop its connections.
    pub fn forget_pid(&mut self, pid: u32) {
        for sk in self.by_pid.remove(&pid).unwrap_or_default() {
            self.conns.remove(&(pid, sk));
        }
    }

    fn forget(&mut self, pid: u32, sk: u64) {
        self.conns.remove(&(pid, sk));
        if let Some(set) = self.by_pid.get_mut(&pid) {
            set.remove(&sk);
        }
    }

    /// req_id for a log line `text` written by `pid` now (rules above).
    pub fn req_id_for_line(&self, pid: u32, text: &str) -> Option<String> {
        self.serving(pid, |cands| {
            let mentioned: Vec<&(String, Vec<String>)> = cands
                .iter()
                .filter(|(_, ids)| {
                    ids.iter()
                        .any(|id| !id.is_empty() && text.contains(id.as_str()))
                })
                .collect();
            match mentioned.as_slice() {
                [one] => Some(one.0.clone()),
                [] if cands.len() == 1 => Some(cands[0].0.clone()),
                _ => None,
            }
        })
    }

    /// Apply `choose` to the server requests `pid` is serving now:
    /// (req_id, ids carried by the request).
    fn serving<T>(
        &self,
        pid: u32,
        choose: impl FnOnce(&[(String, Vec<String>)]) -> Option<T>,
    ) -> Option<T> {
        let mut cands = Vec::new();
        for sk in self.by_pid.get(&pid)? {
            let Some(conn) = self.conns.get(&(pid, *sk)) else {
                continue;
            };
            if conn.http.side() != Some(Side::Server) {
                continue;
            }
            for f in conn.http.in_flight() {
                cands.push((req_id(conn.id, f.seq), ids_of(&f)));
            }
        }
        choose(&cands)
    }

    fn finish(&mut self, pid: u32, sk: u64, done: Vec<Exchange>) -> Vec<Finished> {
        let Some(conn) = self.conns.get_mut(&(pid, sk)) else {
            return Vec::new();
        };
        let resyncs = conn.http.stats().resyncs;
        self.parse_losses += resyncs - conn.resyncs_reported;
        conn.resyncs_reported = resyncs;
        let tuple = conn.tuple.clone().unwrap_or_else(unknown_tuple);
        done.into_iter()
            .map(|e| {
                let parent_req_id = conn.parents.remove(&e.seq).flatten();
                Finished {
                    pid,
                    start_mono_ns: e.req_start_ns,
                    exchange: HttpExchange {
                        side: match e.side {
                            Side::Server => HttpSide::Server,
                            Side::Client => HttpSide::Client,
                        },
                        method: e.method,
                        path: e.path,
                        status: e.status,
                        duration_ns: e.resp_end_ns.saturating_sub(e.req_start_ns),
                        req_bytes: e.req_bytes,
                        resp_bytes: e.resp_bytes,
                        tuple: tuple.clone(),
                        tls: conn.tls,
                        req_id: req_id(conn.id, e.seq),
                        parent_req_id,
                        traceparent: e.traceparent,
                        request_id: e.request_id,
                        complete: e.complete,
                        req_body: body_text(&e.req_body),
                        resp_body: body_text(&e.resp_body),
                    },
                }
            })
            .collect()
    }
}

/// A kept body as text (lossy UTF-8); None when nothing was kept.
fn body_text(body: &[u8]) -> Option<String> {
    (!body.is_empty()).then(|| String::from_utf8_lossy(body).into_owned())
}

fn ids_of(f: &InFlight<'_>) -> Vec<String> {
    [
        f.request_id.map(str::to_string),
        f.traceparent.and_then(trace_id).map(str::to_string),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Parent of a client request carrying `ids` among the serving candidates.
fn pick(cands: &[(String, Vec<String>)], ids: &[String]) -> Option<String> {
    let matching: Vec<&(String, Vec<String>)> = cands
        .iter()
        .filter(|(_, cand_ids)| cand_ids.iter().any(|c| ids.contains(c)))
        .collect();
    match matching.as_slice() {
        [one] => Some(one.0.clone()),
        [] if cands.len() == 1 => Some(cands[0].0.clone()),
        _ => None,
    }
}

fn unknown_tuple() -> Tuple {
    Tuple {
        saddr: std::net::Ipv4Addr::UNSPECIFIED.into(),
        sport: 0,
        daddr: std::net::Ipv4Addr::UNSPECIFIED.into(),
        dport: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Received as R, Sent as S};

    fn tuple(port: u16) -> Tuple {
        Tuple {
            saddr: "127.0.0.1".parse().unwrap(),
            sport: port,
            daddr: "127.0.0.1".parse().unwrap(),
            dport: 40000,
        }
    }

    fn feed(
        c: &mut Connections,
        pid: u32,
        sk: u64,
        dir: Direction,
        ts: u64,
        b: &[u8],
    ) -> Vec<Finished> {
        let payload = Payload {
            tls: false,
            dir,
            mono_ns: ts,
            captured: b,
            total: b.len(),
        };
        c.data(pid, sk, payload)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    fn seg(dir: Direction, ts: u64, seq: u32, b: &[u8]) -> SegmentIn<'_> {
        SegmentIn {
            dir,
            mono_ns: ts,
            seq,
            seg_len: b.len() as u32,
            captured: b,
        }
    }

    #[test]
    fn received_segments_take_the_time_of_the_read_that_took_them() {
        let mut c = Connections::new("h", 1);
        c.opened(1, 0xa, tuple(80), None);
        let req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        // Arrives in two segments (and one again) at 10, 11, 12...
        assert!(c.segment(1, 0xa, seg(R, 10, 1000, &req[..5])).is_empty());
        assert!(c.segment(1, 0xa, seg(R, 11, 1005, &req[5..])).is_empty());
        assert!(c.segment(1, 0xa, seg(R, 12, 1000, &req[..5])).is_empty());
        // ...nothing is parsed before the process reads: a first read of 3
        // bytes at 20, the rest at 21.
        assert!(c.read_mark(1, 0xa, 1003, 20).is_empty());
        assert!(c.read_mark(1, 0xa, 1000 + req.len() as u32, 21).is_empty());
        // A mark for bytes already taken changes nothing.
        assert!(c.read_mark(1, 0xa, 1003, 22).is_empty());
        let done = c.segment(1, 0xa, seg(S, 30, 7000, OK));
        assert_eq!(done.len(), 1);
        let e = &done[0].exchange;
        assert_eq!(
            (e.method.as_str(), e.path.as_str(), e.status),
            ("GET", "/x", 200)
        );
        assert_eq!(
            (e.req_bytes, e.resp_bytes),
            (req.len() as u64, OK.len() as u64)
        );
        assert_eq!(done[0].start_mono_ns, 20);
        assert_eq!(e.duration_ns, 10);
        assert_eq!(c.capture_losses, 0);
    }

    #[test]
    fn unread_bytes_go_on_at_close_with_their_arrival_time() {
        let mut c = Connections::new("h", 1);
        c.opened(1, 0xa, tuple(80), None);
        let req = b"GET /y HTTP/1.1\r\n\r\n";
        assert!(c.segment(1, 0xa, seg(R, 10, 5, req)).is_empty());
        let done = c.closed(1, 0xa, 50);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].start_mono_ns, 10);
        assert_eq!(done[0].exchange.path, "/y");
        assert!(!done[0].exchange.complete);
    }

    #[test]
    fn single_request_in_flight_owns_the_log_line_and_the_outgoing_call() {
        let mut c = Connections::new("h", 1);
        c.opened(1, 0xa, tuple(80), None);
        c.opened(1, 0xb, tuple(5000), None);
        assert!(
            feed(
                &mut c,
                1,
                0xa,
                R,
                10,
                b"GET /users/1 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .is_empty()
        );
        let rid = c
            .req_id_for_line(1, "loading user 1")
            .expect("one request in flight");
        assert!(c.req_id_for_line(2, "other process").is_none());
        // The process calls a backend while serving.
        assert!(
            feed(
                &mut c,
                1,
                0xb,
                S,
                11,
                b"GET /db HTTP/1.1\r\nHost: db\r\n\r\n"
            )
            .is_empty()
        );
        let call = feed(&mut c, 1, 0xb, R, 12, OK);
        assert_eq!(call.len(), 1);
        assert_eq!(call[0].exchange.side, HttpSide::Client);
        assert_eq!(
            call[0].exchange.parent_req_id.as_deref(),
            Some(rid.as_str())
        );
        let served = feed(&mut c, 1, 0xa, S, 13, OK);
        assert_eq!(served[0].exchange.req_id, rid);
        assert_eq!(served[0].exchange.duration_ns, 3);
        assert_eq!(served[0].exchange.tuple.sport, 80);
        // Nothing in flight any more: no guess.
        assert!(c.req_id_for_line(1, "idle").is_none());
    }

    #[test]
    fn two_in_flight_need_an_id_in_the_line() {
        let mut c = Connections::new("h", 1);
        feed(
            &mut c,
            1,
            0xa,
            R,
            1,
            b"GET /a HTTP/1.1\r\nx-request-id: req-aaa\r\n\r\n",
        );
        feed(
            &mut c,
            1,
            0xb,
            R,
            2,
            b"GET /b HTTP/1.1\r\nx-request-id: req-bbb\r\n\r\n",
        );
        assert!(c.req_id_for_line(1, "working").is_none());
        let b = c.req_id_for_line(1, "[req-bbb] working").unwrap();
        let a = c.req_id_for_line(1, "[req-aaa] working").unwrap();
        assert_ne!(a, b);
        let done = feed(&mut c, 1, 0xb, S, 3, OK);
        assert_eq!(done[0].exchange.req_id, b);
    }

    #[test]
    fn traceparent_links_a_call_among_several_in_flight() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut c = Connections::new("h", 1);
        feed(
            &mut c,
            1,
            0xa,
            R,
            1,
            format!("GET /a HTTP/1.1\r\ntraceparent: {tp}\r\n\r\n").as_bytes(),
        );
        feed(&mut c, 1, 0xb, R, 2, b"GET /b HTTP/1.1\r\n\r\n");
        let a = c
            .req_id_for_line(1, "0af7651916cd43dd8448eb211c80319c")
            .unwrap();
        let call = "GET /x HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01\r\n\r\n".to_string();
        feed(&mut c, 1, 0xc, S, 3, call.as_bytes());
        let done = feed(&mut c, 1, 0xc, R, 4, OK);
        assert_eq!(done[0].exchange.parent_req_id.as_deref(), Some(a.as_str()));
        // Without an id and with two in flight: no parent.
        feed(&mut c, 1, 0xd, S, 5, b"GET /y HTTP/1.1\r\n\r\n");
        let done = feed(&mut c, 1, 0xd, R, 6, OK);
        assert_eq!(done[0].exchange.parent_req_id, None);
    }

    #[test]
    fn close_reports_unanswered_and_ids_differ_per_connection() {
        let mut c = Connections::new("h", 1);
        feed(&mut c, 1, 0xa, R, 1, b"GET /a HTTP/1.1\r\n\r\n");
        let cut = c.closed(1, 0xa, 9);
        assert_eq!(cut.len(), 1);
        assert!(!cut[0].exchange.complete);
        feed(&mut c, 1, 0xa, R, 10, b"GET /a HTTP/1.1\r\n\r\n");
        let again = feed(&mut c, 1, 0xa, S, 11, OK);
        assert_ne!(again[0].exchange.req_id, cut[0].exchange.req_id);
    }
}
