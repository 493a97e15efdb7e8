//! Fuzzes `tracer-user/src/http` (the HTTP/1.x stream parser) with arbitrary
//! bytes split into reads/writes of both directions, with uncaptured tails
//! (gaps) and closes. Checks: no panic, memory within `MAX_FOOTPRINT`, sane
//! exchanges, no secret header value, and the same exchanges when every read
//! is cut into smaller pieces with the same timestamp.
//!
//! The parser module is compiled in directly (`#[path]`) rather than through
//! a dependency on tracer-user, whose build script builds the eBPF probes:
//! the module only needs std and httparse.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tracer-user/src/http/mod.rs"]
#[expect(
    dead_code,
    reason = "the fuzz target uses only part of the module's API"
)]
mod http;

use http::{Direction, Exchange, HttpConn, MAX_FOOTPRINT, MAX_PATH};

/// One read/write decoded from the input.
struct Op<'a> {
    dir: Direction,
    ts: u64,
    captured: &'a [u8],
    total: usize,
}

/// Input layout, repeated: a control byte `c`, then for a read/write a length
/// byte, optionally a gap byte, then the captured bytes.
/// - `c & 1`: direction; `c >> 1 == 127`: close (later reads are ignored);
/// - `c & 0x80`: the length is multiplied by 257 (reads up to ~64 KiB);
/// - `c & 0x40`: a gap follows: next byte << (c >> 2 & 0x0f) uncaptured bytes.
fn decode(mut data: &[u8]) -> (Vec<Op<'_>>, Option<u64>) {
    let mut ops = Vec::new();
    let mut ts = 0u64;
    let mut close = None;
    while let Some((&c, rest)) = data.split_first() {
        data = rest;
        ts += 1 + u64::from(c & 0x0c);
        if c >> 1 == 127 {
            close.get_or_insert(ts);
            continue;
        }
        let Some((&len, rest)) = data.split_first() else {
            break;
        };
        data = rest;
        let mut len = usize::from(len);
        if c & 0x80 != 0 {
            len *= 257;
        }
        let mut gap = 0usize;
        if c & 0x40 != 0 {
            let Some((&g, rest)) = data.split_first() else {
                break;
            };
            data = rest;
            gap = usize::from(g) << (c >> 2 & 0x0f);
        }
        let len = len.min(data.len());
        let (captured, rest) = data.split_at(len);
        data = rest;
        if close.is_none() {
            ops.push(Op {
                dir: if c & 1 == 0 {
                    Direction::Sent
                } else {
                    Direction::Received
                },
                ts,
                captured,
                total: len + gap,
            });
        }
    }
    (ops, close)
}

fn check(exchanges: &[Exchange]) {
    for e in exchanges {
        assert!(!e.method.is_empty());
        assert!(e.path.len() <= MAX_PATH);
        assert!(e.resp_end_ns >= e.req_start_ns);
        assert!(!e.complete || e.status >= 100);
        for (name, value) in &e.headers {
            assert_eq!(*value, http::redact_header(name, value));
        }
    }
}

/// Feeds every op whole, or cut into pieces of 1, 2, 3... bytes.
fn run(ops: &[Op<'_>], close: Option<u64>, pieces: bool) -> Vec<Exchange> {
    let mut conn = HttpConn::new();
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if pieces {
            let size = 1 + i % 7;
            let gap = op.total - op.captured.len();
            for piece in op.captured.chunks(size) {
                out.extend(conn.feed(op.dir, op.ts, piece, piece.len()));
            }
            if gap > 0 {
                out.extend(conn.feed(op.dir, op.ts, &[], gap));
            }
        } else {
            out.extend(conn.feed(op.dir, op.ts, op.captured, op.total));
        }
        assert!(conn.footprint() <= MAX_FOOTPRINT, "{}", conn.footprint());
    }
    if let Some(ts) = close {
        out.extend(conn.close(ts));
        assert!(
            conn.feed(Direction::Sent, ts, b"GET / HTTP/1.1\r\n\r\n", 18)
                .is_empty()
        );
        assert!(conn.close(ts).is_empty());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (ops, close) = decode(data);
    let whole = run(&ops, close, false);
    check(&whole);
    let cut = run(&ops, close, true);
    assert_eq!(whole, cut, "same bytes, other cuts");
});
