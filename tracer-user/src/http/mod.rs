//! HTTP/1.x exchanges from the bytes of one TCP connection.
//!
//! The capture layer hands [`HttpConn::feed`] the bytes the traced process
//! sent and received on one connection, in order per direction, with kernel
//! timestamps; often only a prefix of each read/write (bodies need not be
//! copied). The parser pairs requests with responses and reports one
//! [`Exchange`] per request. Rules and limits: docs/http.md.
//!
//! - Start lines and headers: httparse. Body framing (Content-Length, chunked,
//!   until close) is the small hand-written machine in `body`, because it must
//!   step over bytes that were never captured.
//! - A connection seen from its middle, a gap where framing was needed, a
//!   parse error or an oversized head make the parser *resynchronise*: it
//!   reports what it knew as incomplete, then skips bytes until a line that is
//!   really a request line (scan.rs) and parses normally from there. It never
//!   reports an exchange it did not see a request line for.
//! - Memory is bounded per connection: at most [`MAX_HEAD`] buffered bytes per
//!   direction, [`MAX_PENDING`] requests awaiting responses.

mod body;
mod scan;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use body::{Body, FramingError, Progress};

/// Most bytes of a message head (start line, headers, or a chunked body's
/// trailers) that are buffered; a longer head makes the direction resync.
pub const MAX_HEAD: usize = 64 * 1024;
/// Longest start line recognised while resynchronising.
pub const MAX_LINE: usize = 16 * 1024;
/// Longest `;chunk-ext` part of a chunk-size line.
pub const MAX_CHUNK_EXT: usize = 4096;
/// Most requests awaiting a response (pipelining); more wait in the buffer.
pub const MAX_PENDING: usize = 32;
/// Longest path kept in an [`Exchange`] (bytes; cut on a char boundary).
pub const MAX_PATH: usize = 2048;
/// Most headers in one head.
pub const MAX_HEADERS: usize = 1024;
/// Chunk timestamps remembered per direction (see [`Stream::mark_chunk`]).
const MAX_CHUNK_MARKS: usize = 64;
/// Upper bound of [`HttpConn::footprint`]: per direction a buffer of at most
/// [`MAX_HEAD`] bytes (capacity twice that), and per pending request its head
/// as strings (lossy UTF-8 may triple invalid bytes) plus per-header overhead.
pub const MAX_FOOTPRINT: usize = 4 * MAX_HEAD + 8192 + MAX_PENDING * 5 * MAX_HEAD;

const REDACTED: &str = "[REDACTED]";

/// Which way bytes moved, from the traced process's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Sent,
    Received,
}

/// The traced process's role on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// It received the requests and served them.
    Server,
    /// It sent the requests.
    Client,
}

/// One request and its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Position of the request on its connection (0, 1, ...): with the
    /// connection, a stable identity, known from when the request head is
    /// seen ([`HttpConn::in_flight`]) until the exchange is reported.
    pub seq: u64,
    pub side: Side,
    pub method: String,
    /// As on the request line (query kept), at most [`MAX_PATH`] bytes.
    pub path: String,
    /// The final status; 0 if no response head was seen.
    pub status: u16,
    /// Timestamp of the chunk holding the request's first byte.
    pub req_start_ns: u64,
    /// Timestamp of the chunk holding the response's last byte; for an exchange
    /// cut before its response ended, of the last response byte seen, or when
    /// it was given up if none was. Never less than `req_start_ns`.
    pub resp_end_ns: u64,
    /// Whole request: start line + headers + body (framing included).
    pub req_bytes: u64,
    /// Whole response, interim (1xx) responses included.
    pub resp_bytes: u64,
    /// The request's W3C `traceparent` header.
    pub traceparent: Option<String>,
    /// The request's `x-request-id` header.
    pub request_id: Option<String>,
    /// Request headers in order, secrets redacted ([`redact_header`]).
    pub headers: Vec<(String, String)>,
    /// First bytes of the request body as transferred (chunk framing
    /// included), only with [`HttpConn::with_body_capture`]; else empty.
    pub req_body: Vec<u8>,
    /// Likewise for the response body.
    pub resp_body: Vec<u8>,
    /// False when the request or response was cut by close, a gap or a resync.
    pub complete: bool,
}

/// What the parser skipped or gave up on, for loss accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Times a direction lost framing (gap, parse error, oversized head,
    /// unsolicited response) and had to resynchronise.
    pub resyncs: u64,
    /// Bytes skipped without being parsed (while resynchronising, or
    /// uncaptured bytes outside bodies).
    pub discarded_bytes: u64,
    /// The connection switched protocols (101, CONNECT); later bytes ignored.
    pub upgraded: bool,
}

/// A header value as it may appear in an [`Exchange`]: `[REDACTED]` for
/// credentials (Authorization, Proxy-Authorization, Cookie, Set-Cookie; names
/// case-insensitive), else the value.
pub fn redact_header(name: &str, value: &str) -> String {
    const SECRET: [&str; 4] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ];
    if SECRET.iter().any(|s| name.eq_ignore_ascii_case(s)) {
        REDACTED.to_string()
    } else {
        value.to_string()
    }
}

const SENT: usize = 0;
const RECEIVED: usize = 1;

fn index(dir: Direction) -> usize {
    match dir {
        Direction::Sent => SENT,
        Direction::Received => RECEIVED,
    }
}

/// Where one direction's parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Out of sync: looking for a start line (a request line in the request
    /// direction; a status line in the response direction, which drops
    /// everything while no request awaits a response).
    Hunt,
    /// Expecting a head at the start of the buffer. `confirmed` is false when
    /// the head was found by hunting: failing to parse it only means hunting on.
    Head {
        confirmed: bool,
    },
    Body(Body),
    /// Upgraded or closed: everything is ignored.
    Dead,
}

/// One direction's bytes not yet consumed, and where they are in the stream.
#[derive(Debug)]
struct Stream {
    buf: Vec<u8>,
    /// Stream offset of `buf[0]` (captured and uncaptured bytes both count).
    base: u64,
    /// (stream offset where a chunk starts, its timestamp), oldest first,
    /// for the chunks with bytes still in `buf` (at least the newest).
    chunks: VecDeque<(u64, u64)>,
    /// Stream offset from which to resume looking for a line end (hunting).
    line_scan: u64,
    /// Stream offset from which to resume looking for the end of a head.
    head_scan: u64,
    phase: Phase,
}

impl Stream {
    fn new() -> Self {
        Stream {
            buf: Vec::new(),
            base: 0,
            chunks: VecDeque::new(),
            line_scan: 0,
            head_scan: 0,
            phase: Phase::Hunt,
        }
    }

    /// Records that a chunk with timestamp `ts` starts at the end of `buf`.
    ///
    /// Only the timestamps of a message's first byte (`buf[0]` when a head
    /// starts) and of the newest chunk (where messages end, as parsing is
    /// eager) are ever looked up, so when too many chunks sit in the buffer
    /// (a head arriving a byte at a time) the second-oldest mark is dropped:
    /// the oldest and the newest stay exact.
    fn mark_chunk(&mut self, ts: u64) {
        let at = self.base + self.buf.len() as u64;
        if let Some(&(_, last_ts)) = self.chunks.back()
            && last_ts == ts
        {
            return;
        }
        self.chunks.push_back((at, ts));
        if self.chunks.len() > MAX_CHUNK_MARKS {
            self.chunks.remove(1);
        }
    }

    /// Timestamp of the chunk holding stream offset `at`.
    fn ts_at(&self, at: u64) -> u64 {
        self.chunks
            .iter()
            .rev()
            .find(|&&(start, _)| start <= at)
            .or(self.chunks.front())
            .map_or(0, |&(_, ts)| ts)
    }

    /// Timestamp of the newest chunk.
    fn last_ts(&self) -> u64 {
        self.chunks.back().map_or(0, |&(_, ts)| ts)
    }

    /// Forgets the marks of chunks whose bytes are all consumed.
    fn prune_marks(&mut self) {
        while self.chunks.len() >= 2 && self.chunks[1].0 <= self.base {
            self.chunks.pop_front();
        }
    }

    /// Drops everything buffered (and `gap` uncaptured bytes after it); returns
    /// how many bytes that was.
    fn discard_all(&mut self, gap: u64) -> u64 {
        let n = self.buf.len() as u64 + gap;
        self.base += n;
        self.buf.clear();
        self.prune_marks();
        n
    }

    /// Releases the memory of a buffer that once held a big chunk (an idle
    /// connection keeps at most a small one).
    fn shrink(&mut self) {
        let cap = self.buf.capacity();
        if cap > MAX_LINE && cap > 2 * self.buf.len() {
            self.buf.shrink_to(MAX_LINE.max(self.buf.len()));
        }
    }
}

/// A request that has not been reported yet.
#[derive(Debug)]
struct Pending {
    /// Position of this request on the connection (0, 1, ...), assigned when
    /// its head is seen.
    seq: u64,
    req_body: Vec<u8>,
    resp_body: Vec<u8>,
    method: String,
    path: String,
    traceparent: Option<String>,
    request_id: Option<String>,
    headers: Vec<(String, String)>,
    /// HEAD: the response has no body whatever its headers say.
    head_method: bool,
    connect: bool,
    /// The request asked to switch protocols: later request bytes wait for
    /// the response (they may not be HTTP).
    upgrade: bool,
    req_start_ns: u64,
    req_bytes: u64,
    req_done: bool,
    req_cut: bool,
    status: u16,
    resp_bytes: u64,
    /// Timestamp of the last response byte seen (0: none yet).
    resp_end_ns: u64,
    resp_done: bool,
    resp_cut: bool,
    /// The request stream lost sync after this request: once its response
    /// is done, the response stream resynchronises too (responses to requests
    /// hidden in a gap must not be paired with later ones).
    resync_after: bool,
}

impl Pending {
    fn into_exchange(self, side: Side) -> Exchange {
        let complete = self.req_done
            && !self.req_cut
            && self.resp_done
            && !self.resp_cut
            && self.status >= 100;
        Exchange {
            seq: self.seq,
            side,
            method: self.method,
            path: self.path,
            status: self.status,
            req_start_ns: self.req_start_ns,
            resp_end_ns: self.resp_end_ns.max(self.req_start_ns),
            req_bytes: self.req_bytes,
            resp_bytes: self.resp_bytes,
            traceparent: self.traceparent,
            request_id: self.request_id,
            headers: self.headers,
            req_body: self.req_body,
            resp_body: self.resp_body,
            complete,
        }
    }

    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.method.capacity()
            + self.path.capacity()
            + self.traceparent.as_ref().map_or(0, String::capacity)
            + self.request_id.as_ref().map_or(0, String::capacity)
            + self
                .headers
                .iter()
                .map(|(n, v)| std::mem::size_of::<(String, String)>() + n.capacity() + v.capacity())
                .sum::<usize>()
    }
}

/// The HTTP/1.x parser of one TCP connection.
#[derive(Debug)]
pub struct HttpConn {
    side: Option<Side>,
    streams: [Stream; 2],
    /// Requests in order; the front one is the oldest unreported.
    pending: VecDeque<Pending>,
    out: Vec<Exchange>,
    stats: HttpStats,
    closed: bool,
    /// Requests whose head was seen so far (the next `seq`).
    requests_seen: u64,
    /// Body bytes kept per message (0: none).
    body_capture: usize,
}

/// A request whose head has been seen and whose exchange is not reported
/// yet: for a server, being served right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight<'a> {
    pub seq: u64,
    pub method: &'a str,
    pub path: &'a str,
    pub traceparent: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

impl Default for HttpConn {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpConn {
    pub fn new() -> Self {
        HttpConn {
            side: None,
            streams: [Stream::new(), Stream::new()],
            pending: VecDeque::new(),
            out: Vec::new(),
            stats: HttpStats::default(),
            closed: false,
            requests_seen: 0,
            body_capture: 0,
        }
    }

    /// A parser that keeps the first `bytes` of each request and response
    /// body (`--capture-bodies`; bodies are not kept otherwise).
    pub fn with_body_capture(bytes: usize) -> Self {
        let mut conn = Self::new();
        conn.body_capture = bytes;
        conn
    }

    /// Requests seen but not yet reported, oldest first.
    pub fn in_flight(&self) -> impl Iterator<Item = InFlight<'_>> {
        self.pending.iter().map(|p| InFlight {
            seq: p.seq,
            method: &p.method,
            path: &p.path,
            traceparent: p.traceparent.as_deref(),
            request_id: p.request_id.as_deref(),
        })
    }

    fn push_pending(&mut self, mut p: Pending) {
        p.seq = self.requests_seen;
        self.requests_seen += 1;
        self.pending.push_back(p);
    }

    /// The traced process's role, once a request line has been seen.
    pub fn side(&self) -> Option<Side> {
        self.side
    }

    pub fn stats(&self) -> HttpStats {
        self.stats
    }

    /// Approximate heap bytes held by this connection; at most
    /// [`MAX_FOOTPRINT`] between calls.
    pub fn footprint(&self) -> usize {
        self.streams
            .iter()
            .map(|s| s.buf.capacity() + s.chunks.capacity() * 16)
            .sum::<usize>()
            + self.pending.iter().map(Pending::footprint).sum::<usize>()
    }

    /// `captured` is a prefix of the `total` bytes moved by one read/write
    /// (the kernel may copy only the first N bytes of a big buffer, so bodies
    /// need not be copied). Returns the exchanges this chunk completed, in
    /// request order.
    pub fn feed(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        captured: &[u8],
        total: usize,
    ) -> Vec<Exchange> {
        if self.closed {
            return Vec::new();
        }
        let d = index(dir);
        let gap = total.saturating_sub(captured.len()) as u64;
        let stream = &mut self.streams[d];
        if stream.phase == Phase::Dead {
            stream.base += captured.len() as u64 + gap;
            return Vec::new();
        }
        if !captured.is_empty() {
            // (No byte of a gap is ever looked up by timestamp: a gap-only
            // read needs no mark.)
            stream.mark_chunk(ts_ns);
            self.run(d, captured);
        }
        if gap > 0 {
            self.skip(d, gap, ts_ns);
        }
        // A response may have released the request stream (the answer to an
        // upgrade request, or room in the pipeline).
        if let Some(req) = self.request_dir()
            && req != d
        {
            self.run(req, &[]);
        }
        for s in &mut self.streams {
            s.prune_marks();
            s.shrink();
        }
        std::mem::take(&mut self.out)
    }

    /// The connection closed: finishes a response delimited by close and
    /// reports requests left without a response (complete=false, status 0).
    pub fn close(&mut self, ts_ns: u64) -> Vec<Exchange> {
        if self.closed {
            return Vec::new();
        }
        self.closed = true;
        if let (Some(req), Some(resp)) = (self.request_dir(), self.response_dir()) {
            // A response delimited by close ends here, complete.
            if self.streams[resp].phase == Phase::Body(Body::UntilClose)
                && let Some(e) = self.awaiting_mut()
            {
                e.resp_done = true;
            }
            // A response head cut short still tells the status.
            if self.streams[resp].phase == (Phase::Head { confirmed: true })
                && !self.streams[resp].buf.is_empty()
            {
                let status = partial_status(&self.streams[resp].buf);
                if let Some(e) = self.awaiting_mut() {
                    e.status = e.status.max(status.unwrap_or(0));
                }
            }
            // Likewise a request head cut short, if its request line is whole.
            if self.streams[req].phase == (Phase::Head { confirmed: true })
                && !self.request_paused()
            {
                let s = &self.streams[req];
                let start = s.ts_at(s.base);
                let partial = std::mem::take(&mut self.streams[req].buf);
                self.push_cut_request(&partial, start);
            }
        }
        for e in &mut self.pending {
            if !e.req_done {
                e.req_done = true;
                e.req_cut = true;
            }
            if !e.resp_done {
                e.resp_done = true;
                e.resp_cut = true;
            }
            if e.resp_end_ns == 0 {
                e.resp_end_ns = ts_ns;
            }
        }
        self.emit();
        for s in &mut self.streams {
            s.phase = Phase::Dead;
            s.buf = Vec::new();
            s.chunks = VecDeque::new();
        }
        std::mem::take(&mut self.out)
    }

    fn request_dir(&self) -> Option<usize> {
        self.side.map(|s| match s {
            Side::Server => RECEIVED,
            Side::Client => SENT,
        })
    }

    fn response_dir(&self) -> Option<usize> {
        self.request_dir().map(|d| 1 - d)
    }

    /// The request whose response comes next.
    fn awaiting_mut(&mut self) -> Option<&mut Pending> {
        self.pending.iter_mut().find(|e| !e.resp_done)
    }

    /// The request whose bytes are being parsed (head done, body not).
    fn in_progress_mut(&mut self) -> Option<&mut Pending> {
        self.pending.iter_mut().find(|e| !e.req_done)
    }

    /// The request stream waits: for the answer to an upgrade request, or for
    /// room among the pending requests.
    fn request_paused(&self) -> bool {
        self.pending.len() >= MAX_PENDING
            || self
                .pending
                .iter()
                .any(|e| (e.upgrade || e.connect) && e.req_done && !e.resp_done)
    }

    /// Parses what direction `d` holds followed by `fresh`. Bytes are copied
    /// into the stream's buffer only when they cannot be parsed yet (a head
    /// still arriving): a body passes straight through.
    fn run(&mut self, d: usize, fresh: &[u8]) {
        let mut held = std::mem::take(&mut self.streams[d].buf);
        if held.is_empty() {
            let cur = self.parse(d, fresh);
            let s = &mut self.streams[d];
            if s.phase == Phase::Dead {
                s.base += fresh.len() as u64;
            } else {
                s.base += cur as u64;
                held.extend_from_slice(&fresh[cur..]);
            }
        } else {
            held.extend_from_slice(fresh);
            let cur = self.parse(d, &held);
            let s = &mut self.streams[d];
            if s.phase == Phase::Dead {
                s.base += held.len() as u64;
                held.clear();
            } else {
                s.base += cur as u64;
                held.drain(..cur);
            }
        }
        self.streams[d].buf = held;
    }

    /// Parses `buf`, which starts at the stream's `base`; returns how many
    /// bytes were consumed.
    fn parse(&mut self, d: usize, buf: &[u8]) -> usize {
        if Some(d) == self.response_dir() {
            self.run_response(d, buf)
        } else {
            // Before the side is known both directions look for a request.
            self.run_request(d, buf)
        }
    }

    /// Parses the request direction (or, before the side is known, either).
    fn run_request(&mut self, d: usize, buf: &[u8]) -> usize {
        let mut cur = 0usize;
        loop {
            let base = self.streams[d].base;
            let at = base + cur as u64;
            let phase = self.streams[d].phase;
            let paused = self.side.is_some() && self.request_paused();
            match phase {
                Phase::Dead => {
                    cur = buf.len();
                    break;
                }
                Phase::Hunt | Phase::Head { .. } if paused => {
                    // Hold the bytes (they may be another protocol) up to a
                    // head's worth.
                    if buf.len() - cur <= MAX_HEAD {
                        break;
                    }
                    // Over that, what was held is lost (the same bytes
                    // however the stream was cut).
                    if phase == (Phase::Head { confirmed: true }) {
                        self.request_lost(&[], 0);
                    }
                    self.stats.discarded_bytes += MAX_HEAD as u64 + 1;
                    cur += MAX_HEAD + 1;
                    self.streams[d].phase = Phase::Hunt;
                }
                Phase::Hunt => match self.hunt(buf, cur, d, scan::request_line_start) {
                    Ok(start) => {
                        cur = start;
                        self.streams[d].phase = Phase::Head { confirmed: false };
                    }
                    Err(line_start) => {
                        cur = self.hunt_trim(buf, line_start);
                        break;
                    }
                },
                Phase::Head { confirmed } => {
                    if confirmed {
                        match skip_blank_lines(&buf[cur..]) {
                            Some(n) => cur += n,
                            None => break,
                        }
                    }
                    if cur == buf.len() {
                        break;
                    }
                    let Some(len) = self.find_head(buf, cur, d) else {
                        if buf.len() - cur < MAX_HEAD {
                            break;
                        }
                        // Oversized head: give it up, hunt in what follows.
                        if confirmed {
                            let start = self.streams[d].ts_at(at);
                            self.request_lost(&buf[cur..cur + MAX_HEAD], start);
                        }
                        self.stats.discarded_bytes += MAX_HEAD as u64;
                        cur += MAX_HEAD;
                        self.streams[d].phase = Phase::Hunt;
                        continue;
                    };
                    let start_ts = self.streams[d].ts_at(at);
                    match parse_request(&buf[cur..cur + len]) {
                        Ok((pending, body)) => {
                            if self.side.is_none() {
                                self.learn_side(d);
                            }
                            cur += len;
                            let mut pending = pending;
                            pending.req_start_ns = start_ts;
                            pending.req_bytes = len as u64;
                            self.push_pending(pending);
                            match body {
                                Some(b) => self.streams[d].phase = Phase::Body(b),
                                None => self.request_done(d),
                            }
                        }
                        Err(()) => {
                            if confirmed {
                                self.request_lost(&buf[cur..cur + len], start_ts);
                            }
                            // Hunt on after this head's first line.
                            let line = first_line_len(&buf[cur..cur + len]);
                            self.stats.discarded_bytes += line as u64;
                            cur += line;
                            self.streams[d].phase = Phase::Hunt;
                        }
                    }
                }
                Phase::Body(mut b) => {
                    if cur == buf.len() {
                        break;
                    }
                    match b.feed(&buf[cur..]) {
                        Ok(Progress { used, done }) => {
                            // `used` is at most the buffer's length.
                            let body = &buf[cur..cur + used as usize];
                            cur += used as usize;
                            let cap = self.body_capture;
                            if let Some(e) = self.in_progress_mut() {
                                e.req_bytes += used;
                                keep_body(&mut e.req_body, body, cap);
                            }
                            if done {
                                self.request_done(d);
                            } else {
                                self.streams[d].phase = Phase::Body(b);
                            }
                        }
                        Err(FramingError { used }) => {
                            cur += used as usize;
                            if let Some(e) = self.in_progress_mut() {
                                e.req_bytes += used;
                            }
                            self.request_lost(&[], 0);
                            // Hunting resumes at the offending byte.
                            self.streams[d].phase = Phase::Hunt;
                        }
                    }
                }
            }
        }
        cur
    }

    /// Parses the response direction.
    fn run_response(&mut self, d: usize, buf: &[u8]) -> usize {
        let mut cur = 0usize;
        loop {
            let phase = self.streams[d].phase;
            let awaiting = self.pending.iter().any(|e| !e.resp_done);
            match phase {
                Phase::Dead => {
                    cur = buf.len();
                    break;
                }
                // Responses to requests we did not see: dropped.
                Phase::Hunt | Phase::Head { .. } if !awaiting => {
                    if cur < buf.len() {
                        self.stats.discarded_bytes += (buf.len() - cur) as u64;
                        if phase == (Phase::Head { confirmed: true }) {
                            // An unsolicited response (e.g. a 408 before a
                            // close): resync in case it is more.
                            self.stats.resyncs += 1;
                        }
                        self.streams[d].phase = Phase::Hunt;
                    }
                    cur = buf.len();
                    break;
                }
                Phase::Hunt => match self.hunt(buf, cur, d, scan::status_line_start) {
                    Ok(start) => {
                        cur = start;
                        self.streams[d].phase = Phase::Head { confirmed: false };
                    }
                    Err(line_start) => {
                        cur = self.hunt_trim(buf, line_start);
                        break;
                    }
                },
                Phase::Head { confirmed } => {
                    if confirmed {
                        match skip_blank_lines(&buf[cur..]) {
                            Some(n) => cur += n,
                            None => break,
                        }
                    }
                    if cur == buf.len() {
                        break;
                    }
                    let Some(len) = self.find_head(buf, cur, d) else {
                        if buf.len() - cur < MAX_HEAD {
                            break;
                        }
                        if confirmed {
                            let status = partial_status(&buf[cur..cur + MAX_HEAD]);
                            self.response_lost(d, status, self.streams[d].last_ts());
                        }
                        self.stats.discarded_bytes += MAX_HEAD as u64;
                        cur += MAX_HEAD;
                        self.streams[d].phase = Phase::Hunt;
                        continue;
                    };
                    let head = &buf[cur..cur + len];
                    let Some(e) = self.awaiting_mut() else {
                        break;
                    };
                    let parsed = parse_response(head, e.head_method);
                    match parsed {
                        Ok((status, body)) => {
                            cur += len;
                            let end_ts =
                                self.streams[d].ts_at(self.streams[d].base + cur as u64 - 1);
                            let Some(e) = self.awaiting_mut() else {
                                break;
                            };
                            e.resp_bytes += len as u64;
                            e.resp_end_ns = end_ts;
                            if status == 101 || (e.connect && (200..300).contains(&status)) {
                                e.status = status;
                                e.resp_done = true;
                                self.upgrade(end_ts);
                                cur = buf.len();
                                break;
                            }
                            if status < 200 {
                                // Interim (100 Continue, 103 Early Hints): the
                                // final response follows.
                                self.streams[d].phase = Phase::Head { confirmed: true };
                                continue;
                            }
                            e.status = status;
                            match body {
                                Ok(Some(b)) => self.streams[d].phase = Phase::Body(b),
                                Ok(None) => self.response_done(d),
                                Err(()) => self.response_lost(d, None, self.streams[d].last_ts()),
                            }
                        }
                        Err(()) => {
                            if confirmed {
                                let status = partial_status(head);
                                self.response_lost(d, status, self.streams[d].last_ts());
                            }
                            let line = first_line_len(head);
                            self.stats.discarded_bytes += line as u64;
                            cur += line;
                            self.streams[d].phase = Phase::Hunt;
                        }
                    }
                }
                Phase::Body(mut b) => {
                    if cur == buf.len() {
                        break;
                    }
                    match b.feed(&buf[cur..]) {
                        Ok(Progress { used, done }) => {
                            let body = &buf[cur..cur + used as usize];
                            cur += used as usize;
                            let end_ts =
                                self.streams[d].ts_at(self.streams[d].base + cur as u64 - 1);
                            let cap = self.body_capture;
                            if let Some(e) = self.awaiting_mut() {
                                e.resp_bytes += used;
                                e.resp_end_ns = end_ts;
                                keep_body(&mut e.resp_body, body, cap);
                            }
                            if done {
                                self.response_done(d);
                            } else {
                                self.streams[d].phase = Phase::Body(b);
                            }
                        }
                        Err(FramingError { used }) => {
                            cur += used as usize;
                            if used > 0 {
                                let end_ts =
                                    self.streams[d].ts_at(self.streams[d].base + cur as u64 - 1);
                                if let Some(e) = self.awaiting_mut() {
                                    e.resp_bytes += used;
                                    e.resp_end_ns = end_ts;
                                }
                            }
                            self.response_lost(d, None, self.streams[d].last_ts());
                        }
                    }
                }
            }
        }
        cur
    }

    /// Looks for a start line from `buf[cur..]` one complete line at a time;
    /// returns where it starts, or else where the unfinished last line
    /// starts. Bytes before either are discarded.
    fn hunt(
        &mut self,
        buf: &[u8],
        mut cur: usize,
        d: usize,
        start_of: fn(&[u8]) -> Option<usize>,
    ) -> Result<usize, usize> {
        let base = self.streams[d].base;
        loop {
            let from =
                (self.streams[d].line_scan.saturating_sub(base) as usize).clamp(cur, buf.len());
            let Some(off) = buf[from..].iter().position(|&b| b == b'\n') else {
                self.streams[d].line_scan = base + buf.len() as u64;
                return Err(cur);
            };
            let nl = from + off;
            let (skip, line) = scan::line_tail(&buf[cur..=nl]);
            if let Some(at) = start_of(line) {
                let start = cur + skip + at;
                self.stats.discarded_bytes += (start - cur) as u64;
                self.streams[d].line_scan = base + start as u64;
                return Ok(start);
            }
            self.stats.discarded_bytes += (nl + 1 - cur) as u64;
            cur = nl + 1;
            self.streams[d].line_scan = base + cur as u64;
        }
    }

    /// After [`Self::hunt`] found nothing: keeps the unfinished last line
    /// (from `line_start`), at most [`MAX_LINE`] bytes of it. Returns the new
    /// consumption point.
    fn hunt_trim(&mut self, buf: &[u8], line_start: usize) -> usize {
        let keep_from = line_start.max(buf.len().saturating_sub(MAX_LINE));
        self.stats.discarded_bytes += (keep_from - line_start) as u64;
        keep_from
    }

    /// Length of the head starting at `buf[cur]`, if it has fully arrived
    /// within [`MAX_HEAD`] bytes.
    fn find_head(&mut self, buf: &[u8], cur: usize, d: usize) -> Option<usize> {
        let s = &mut self.streams[d];
        let window = &buf[cur..buf.len().min(cur + MAX_HEAD)];
        let from = (s.head_scan.saturating_sub(s.base + cur as u64) as usize).min(window.len());
        match scan::head_end(window, from) {
            Ok(len) => {
                s.head_scan = s.base + (cur + len) as u64;
                Some(len)
            }
            Err(resume) => {
                s.head_scan = s.base + (cur + resume) as u64;
                None
            }
        }
    }

    /// The first request head parsed tells which side the process is on; the
    /// other direction's bytes so far were responses to unseen requests.
    fn learn_side(&mut self, req: usize) {
        self.side = Some(if req == RECEIVED {
            Side::Server
        } else {
            Side::Client
        });
        let other = &mut self.streams[1 - req];
        let n = other.discard_all(0);
        self.stats.discarded_bytes += n;
        other.phase = Phase::Hunt;
    }

    /// The request being parsed is complete.
    fn request_done(&mut self, d: usize) {
        if let Some(e) = self.in_progress_mut() {
            e.req_done = true;
        }
        self.streams[d].phase = Phase::Head { confirmed: true };
        self.emit();
    }

    /// The response being parsed is complete.
    fn response_done(&mut self, d: usize) {
        let mut resync = false;
        if let Some(e) = self.awaiting_mut() {
            e.resp_done = true;
            resync = e.resync_after;
        }
        self.streams[d].phase = if resync {
            Phase::Hunt
        } else {
            Phase::Head { confirmed: true }
        };
        self.emit();
        self.resume_requests(d);
    }

    /// Parses request bytes that were held (for the answer to an upgrade, or
    /// for room in the pipeline) as soon as a response releases them, before
    /// the rest of the response stream: they came first, and the rest may
    /// answer them. (Doing it after the whole read instead would make the
    /// result depend on how the response stream was cut.)
    fn resume_requests(&mut self, resp: usize) {
        if let Some(req) = self.request_dir()
            && req != resp
            && !self.streams[req].buf.is_empty()
            && !self.request_paused()
        {
            self.run(req, &[]);
        }
    }

    /// The request stream lost framing. The request being parsed is cut (or,
    /// from a head cut short, `partial`, if its request line is whole); the
    /// response stream resynchronises once responses to the requests before
    /// the loss are in. The caller moves the request stream to hunting.
    fn request_lost(&mut self, partial: &[u8], start_ts: u64) {
        self.stats.resyncs += 1;
        if let Some(e) = self.in_progress_mut() {
            e.req_done = true;
            e.req_cut = true;
        } else if !partial.is_empty() {
            self.push_cut_request(partial, start_ts);
        }
        match self.pending.back_mut() {
            Some(last) if !last.resp_done => last.resync_after = true,
            _ => {
                if let Some(resp) = self.response_dir()
                    && self.streams[resp].phase != Phase::Dead
                {
                    self.streams[resp].phase = Phase::Hunt;
                }
            }
        }
        self.emit();
    }

    /// Queues a request known only from a head cut short, if its request line
    /// is whole.
    fn push_cut_request(&mut self, partial: &[u8], start_ts: u64) {
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        if let Some(mut p) = partial_request(partial) {
            p.req_start_ns = start_ts;
            p.req_bytes = partial.len() as u64;
            p.req_done = true;
            p.req_cut = true;
            p.resync_after = true;
            self.push_pending(p);
        }
    }

    /// The response stream lost framing: the response being parsed is cut
    /// (with `status` if only its head was cut short), requests still awaiting
    /// one are given up (their responses may have been in what was lost), and
    /// the stream hunts for the next status line once a new request comes.
    fn response_lost(&mut self, d: usize, status: Option<u16>, ts: u64) {
        self.stats.resyncs += 1;
        let mut first = true;
        let mut released_upgrade = false;
        for e in self.pending.iter_mut().filter(|e| !e.resp_done) {
            if first && let Some(s) = status {
                e.status = s;
            }
            first = false;
            released_upgrade |= (e.upgrade || e.connect) && e.req_done;
            e.resp_done = true;
            e.resp_cut = true;
            if e.resp_end_ns == 0 {
                e.resp_end_ns = ts;
            }
        }
        self.streams[d].phase = Phase::Hunt;
        if released_upgrade && let Some(req) = self.request_dir() {
            // Whether the protocol switched is unknown: only a real request
            // line will bring the request stream back.
            self.streams[req].phase = Phase::Hunt;
        }
        self.emit();
        self.resume_requests(d);
    }

    /// 101 Switching Protocols or a successful CONNECT: the rest of the
    /// connection is not HTTP/1. Everything pending is reported now.
    fn upgrade(&mut self, ts: u64) {
        self.stats.upgraded = true;
        for e in &mut self.pending {
            if !e.req_done {
                e.req_done = true;
                e.req_cut = true;
            }
            if !e.resp_done {
                e.resp_done = true;
                e.resp_cut = true;
                e.resp_end_ns = ts;
            }
        }
        self.emit();
        for s in &mut self.streams {
            s.phase = Phase::Dead;
            let n = s.buf.len() as u64;
            s.base += n;
            s.buf = Vec::new();
        }
    }

    /// Gap handling: `n` bytes of direction `d` were moved but not captured.
    fn skip(&mut self, d: usize, mut n: u64, ts: u64) {
        let is_response = Some(d) == self.response_dir();
        while n > 0 {
            let phase = self.streams[d].phase;
            match phase {
                Phase::Dead => {
                    self.streams[d].base += n;
                    return;
                }
                Phase::Body(mut b) => {
                    // A body consumes all captured bytes before the gap.
                    debug_assert!(self.streams[d].buf.is_empty());
                    let Progress { used, done } = b.skip(n);
                    self.streams[d].base += used;
                    n -= used;
                    if is_response {
                        if let Some(e) = self.awaiting_mut() {
                            e.resp_bytes += used;
                            e.resp_end_ns = ts;
                        }
                    } else if let Some(e) = self.in_progress_mut() {
                        e.req_bytes += used;
                    }
                    if done {
                        if is_response {
                            self.response_done(d);
                        } else {
                            self.request_done(d);
                        }
                    } else if n > 0 {
                        // The gap covers framing (a chunk-size line).
                        if is_response {
                            self.response_lost(d, None, ts);
                        } else {
                            self.request_lost(&[], 0);
                        }
                        self.streams[d].phase = Phase::Hunt;
                    } else {
                        self.streams[d].phase = Phase::Body(b);
                    }
                }
                Phase::Head { confirmed: true } if self.side.is_some() => {
                    // A gap where a head (or its rest) was due.
                    if is_response {
                        let awaiting = self.pending.iter().any(|e| !e.resp_done);
                        if awaiting {
                            let status = partial_status(&self.streams[d].buf);
                            self.response_lost(d, status, ts);
                        }
                    } else {
                        let s = &self.streams[d];
                        let start_ts = s.ts_at(s.base);
                        let partial = std::mem::take(&mut self.streams[d].buf);
                        let paused = self.request_paused();
                        self.request_lost(if paused { &[] } else { &partial }, start_ts);
                        self.streams[d].buf = partial;
                    }
                    self.streams[d].phase = Phase::Hunt;
                }
                Phase::Hunt | Phase::Head { .. } => {
                    // Bytes before the gap cannot join those after it.
                    let dropped = self.streams[d].discard_all(n);
                    self.stats.discarded_bytes += dropped;
                    self.streams[d].phase = Phase::Hunt;
                    return;
                }
            }
        }
    }

    /// Reports the requests at the front whose exchange is over.
    fn emit(&mut self) {
        let Some(side) = self.side else {
            return;
        };
        while self
            .pending
            .front()
            .is_some_and(|e| e.req_done && e.resp_done)
        {
            if let Some(e) = self.pending.pop_front() {
                self.out.push(e.into_exchange(side));
            }
        }
    }
}

/// Bytes of blank lines (CRLF or LF) at the start of `buf`, which may come
/// between messages; None if `buf` ends in the middle of one.
/// Append what fits of `bytes` to a kept body of at most `cap` bytes.
fn keep_body(kept: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let room = cap.saturating_sub(kept.len());
    kept.extend_from_slice(&bytes[..room.min(bytes.len())]);
}

fn skip_blank_lines(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        match (buf.get(i), buf.get(i + 1)) {
            (Some(b'\n'), _) => i += 1,
            (Some(b'\r'), Some(b'\n')) => i += 2,
            (Some(b'\r'), None) => return None,
            _ => return Some(i),
        }
    }
}

/// Length of the first line of `head`, `\n` included (all of it if none).
fn first_line_len(head: &[u8]) -> usize {
    head.iter()
        .position(|&b| b == b'\n')
        .map_or(head.len(), |i| i + 1)
        .max(1)
}

/// A request head: the pending request it starts and its body framing.
fn parse_request(head: &[u8]) -> Result<(Pending, Option<Body>), ()> {
    let mut small = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut small);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => request_from(&req),
        Err(httparse::Error::TooManyHeaders) => {
            let mut big = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut big);
            match req.parse(head) {
                Ok(httparse::Status::Complete(_)) => request_from(&req),
                _ => Err(()),
            }
        }
        _ => Err(()),
    }
}

fn request_from(req: &httparse::Request<'_, '_>) -> Result<(Pending, Option<Body>), ()> {
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Err(());
    };
    let mut p = new_pending(method, path);
    let mut upgrade = false;
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("traceparent") && p.traceparent.is_none() {
            p.traceparent = Some(value.trim().to_string());
        } else if h.name.eq_ignore_ascii_case("x-request-id") && p.request_id.is_none() {
            p.request_id = Some(value.trim().to_string());
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
        p.headers
            .push((h.name.to_string(), redact_header(h.name, &value)));
    }
    p.upgrade = upgrade;
    let body = match framing(req.headers)? {
        Framing::Chunked => Some(Body::chunked()),
        // A request body must be delimited (RFC 9112 §6.3): a transfer coding
        // other than chunked last is an error.
        Framing::OtherCoding => return Err(()),
        Framing::Length(0) | Framing::None => None,
        Framing::Length(n) => Some(Body::Length(n)),
    };
    Ok((p, body))
}

fn new_pending(method: &str, path: &str) -> Pending {
    Pending {
        seq: 0,
        req_body: Vec::new(),
        resp_body: Vec::new(),
        method: method.to_string(),
        path: cap_path(path),
        traceparent: None,
        request_id: None,
        headers: Vec::new(),
        head_method: method == "HEAD",
        connect: method == "CONNECT",
        upgrade: false,
        req_start_ns: 0,
        req_bytes: 0,
        req_done: false,
        req_cut: false,
        status: 0,
        resp_bytes: 0,
        resp_end_ns: 0,
        resp_done: false,
        resp_cut: false,
        resync_after: false,
    }
}

/// A request known from a head cut short: its request line, if whole. The
/// headers seen so far are not kept (a gap may have cut one in half).
fn partial_request(partial: &[u8]) -> Option<Pending> {
    let line = &partial[..partial.iter().position(|&b| b == b'\n')? + 1];
    let mut no_headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut no_headers);
    // The line alone is a partial head; httparse fills what it parsed.
    let _ = req.parse(line);
    match (req.method, req.path, req.version) {
        (Some(m), Some(p), Some(_)) => Some(new_pending(m, p)),
        _ => None,
    }
}

/// The status of a response head cut short, if its status line is whole.
fn partial_status(partial: &[u8]) -> Option<u16> {
    let line = &partial[..partial.iter().position(|&b| b == b'\n')? + 1];
    let mut no_headers = [httparse::EMPTY_HEADER; 0];
    let mut resp = httparse::Response::new(&mut no_headers);
    let _ = resp.parse(line);
    resp.code.filter(|&c| c >= 200)
}

type ResponseHead = (u16, Result<Option<Body>, ()>);

/// A response head: its status and body framing (RFC 9112 §6.3).
fn parse_response(head: &[u8], to_head_request: bool) -> Result<ResponseHead, ()> {
    let mut small = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut small);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => Ok(response_from(&resp, to_head_request)),
        Err(httparse::Error::TooManyHeaders) => {
            let mut big = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut big);
            match resp.parse(head) {
                Ok(httparse::Status::Complete(_)) => Ok(response_from(&resp, to_head_request)),
                _ => Err(()),
            }
        }
        _ => Err(()),
    }
}

fn response_from(resp: &httparse::Response<'_, '_>, to_head_request: bool) -> ResponseHead {
    let status = resp.code.unwrap_or(0);
    if to_head_request || status < 200 || status == 204 || status == 304 {
        return (status, Ok(None));
    }
    let body = framing(resp.headers).map(|f| match f {
        Framing::Chunked => Some(Body::chunked()),
        Framing::OtherCoding | Framing::None => Some(Body::UntilClose),
        Framing::Length(0) => None,
        Framing::Length(n) => Some(Body::Length(n)),
    });
    (status, body)
}

enum Framing {
    /// Transfer-Encoding with chunked last.
    Chunked,
    /// Transfer-Encoding without chunked last.
    OtherCoding,
    Length(u64),
    None,
}

/// Body framing from the headers: Transfer-Encoding wins over
/// Content-Length; several Content-Length values must agree.
fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, ()> {
    let mut last_coding: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in h.value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if !coding.is_empty() {
                    last_coding = Some(coding);
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for v in h.value.split(|&b| b == b',') {
                let v = v.trim_ascii();
                if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                    return Err(());
                }
                let n: u64 = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(())?;
                if length.is_some_and(|l| l != n) {
                    return Err(());
                }
                length = Some(n);
            }
        }
    }
    Ok(match (last_coding, length) {
        (Some(c), _) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        (Some(_), _) => Framing::OtherCoding,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::None,
    })
}

/// `path` cut to at most [`MAX_PATH`] bytes on a char boundary.
fn cap_path(path: &str) -> String {
    let mut end = path.len().min(MAX_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_string()
}
