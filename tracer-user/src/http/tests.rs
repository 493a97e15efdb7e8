//! Exact results for the behaviours docs/http.md promises, and a re-split
//! property test: the same bytes cut anywhere give the same exchanges.

use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::*;
use Direction::{Received as R, Sent as S};

/// One read/write: direction, timestamp, captured bytes, total bytes moved
/// (None: all captured).
type Step<'a> = (Direction, u64, &'a [u8], Option<usize>);

fn full(dir: Direction, ts: u64, bytes: &[u8]) -> Step<'_> {
    (dir, ts, bytes, None)
}

/// Feeds the steps, then closes at `close_ts`; returns every exchange and,
/// per step, how many exchanges that step completed.
fn run(steps: &[Step<'_>], close_ts: u64) -> (Vec<Exchange>, Vec<usize>) {
    let mut conn = HttpConn::new();
    let mut all = Vec::new();
    let mut per_step = Vec::new();
    for &(dir, ts, bytes, total) in steps {
        let got = conn.feed(dir, ts, bytes, total.unwrap_or(bytes.len()));
        per_step.push(got.len());
        all.extend(got);
        assert!(conn.footprint() <= MAX_FOOTPRINT);
    }
    let at_close = conn.close(close_ts);
    per_step.push(at_close.len());
    all.extend(at_close);
    (renumbered(all), per_step)
}

/// Every request is reported once, in order, so `seq` counts 0, 1, ...;
/// checked here, then zeroed so expected exchanges need not spell it out.
fn renumbered(mut all: Vec<Exchange>) -> Vec<Exchange> {
    for (i, e) in all.iter_mut().enumerate() {
        assert_eq!(e.seq, i as u64, "exchange {i} reported out of order: {e:?}");
        e.seq = 0;
    }
    all
}

struct Ex<'a> {
    side: Side,
    method: &'a str,
    path: &'a str,
    status: u16,
    ts: (u64, u64),
    bytes: (usize, usize),
    headers: &'a [(&'a str, &'a str)],
    complete: bool,
}

impl Ex<'_> {
    fn build(&self) -> Exchange {
        Exchange {
            seq: 0,
            side: self.side,
            method: self.method.to_string(),
            path: self.path.to_string(),
            status: self.status,
            req_start_ns: self.ts.0,
            resp_end_ns: self.ts.1,
            req_bytes: self.bytes.0 as u64,
            resp_bytes: self.bytes.1 as u64,
            traceparent: None,
            request_id: None,
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            complete: self.complete,
            req_body: Vec::new(),
            resp_body: Vec::new(),
        }
    }
}

/// A complete server-side exchange with no request headers.
fn served(
    method: &str,
    path: &str,
    status: u16,
    ts: (u64, u64),
    bytes: (usize, usize),
) -> Exchange {
    Ex {
        side: Side::Server,
        method,
        path,
        status,
        ts,
        bytes,
        headers: &[],
        complete: true,
    }
    .build()
}

#[test]
fn keep_alive_three_exchanges() {
    let req1 = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n";
    let resp1 = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none";
    let req2 = b"GET /two?x=1&y=%20 HTTP/1.1\r\nHost: a\r\n\r\n";
    let resp2 = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found";
    let req3 = b"POST /three HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody";
    let resp3 = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    let (got, per_step) = run(
        &[
            full(R, 10, req1),
            full(S, 20, resp1),
            full(R, 30, req2),
            full(S, 40, resp2),
            full(R, 50, req3),
            full(S, 60, resp3),
        ],
        70,
    );
    let host = &[("Host", "a")][..];
    let want = vec![
        Ex {
            side: Side::Server,
            method: "GET",
            path: "/one",
            status: 200,
            ts: (10, 20),
            bytes: (req1.len(), resp1.len()),
            headers: host,
            complete: true,
        }
        .build(),
        Ex {
            side: Side::Server,
            method: "GET",
            path: "/two?x=1&y=%20",
            status: 404,
            ts: (30, 40),
            bytes: (req2.len(), resp2.len()),
            headers: host,
            complete: true,
        }
        .build(),
        Ex {
            side: Side::Server,
            method: "POST",
            path: "/three",
            status: 201,
            ts: (50, 60),
            bytes: (req3.len(), resp3.len()),
            headers: &[("Host", "a"), ("Content-Length", "4")],
            complete: true,
        }
        .build(),
    ];
    assert_eq!(got, want);
    // Each exchange is reported by the chunk that ends its response.
    assert_eq!(per_step, vec![0, 1, 0, 1, 0, 1, 0]);
}

#[test]
fn pipelined_three_requests() {
    let reqs = b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n";
    let r1 = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
    let r2 = b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nbb";
    let r3 = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nccc";
    let r12 = [&r1[..], &r2[..]].concat();
    let (got, per_step) = run(&[full(R, 10, reqs), full(S, 20, &r12), full(S, 30, r3)], 40);
    let each = reqs.len() / 3;
    assert_eq!(
        got,
        vec![
            served("GET", "/1", 200, (10, 20), (each, r1.len())),
            served("GET", "/2", 500, (10, 20), (each, r2.len())),
            served("GET", "/3", 200, (10, 30), (each, r3.len())),
        ]
    );
    assert_eq!(per_step, vec![0, 2, 1, 0]);
}

#[test]
fn chunked_request_and_response_with_trailers() {
    let head = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let c1 = b"4\r\nWiki\r\n5;name=val\r\npedia\r\n";
    let c2 = b"E\r\n in\r\n\r\nchunks.\r\n0\r\nX-Checksum: abc\r\n\r\n";
    let rhead = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nTrailer: X-Done\r\n\r\n";
    let rc1 = b"a\r\n0123456789\r\n";
    let rc2 = b"0\r\nX-Done: yes\r\nX-More: 1\r\n\r\n";
    let next = b"GET /after HTTP/1.1\r\n\r\n";
    let next_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
    let (got, _) = run(
        &[
            full(R, 10, head),
            full(R, 11, c1),
            full(R, 12, c2),
            full(S, 20, rhead),
            full(S, 21, rc1),
            full(S, 22, rc2),
            full(R, 30, next),
            full(S, 40, next_resp),
        ],
        50,
    );
    assert_eq!(
        got,
        vec![
            Ex {
                side: Side::Server,
                method: "POST",
                path: "/up",
                status: 200,
                ts: (10, 22),
                bytes: (
                    head.len() + c1.len() + c2.len(),
                    rhead.len() + rc1.len() + rc2.len()
                ),
                headers: &[("Host", "a"), ("Transfer-Encoding", "chunked")],
                complete: true,
            }
            .build(),
            served(
                "GET",
                "/after",
                200,
                (30, 40),
                (next.len(), next_resp.len())
            ),
        ]
    );
}

/// The response to HEAD has no body whatever its Content-Length says; 204 and
/// 304 have none either; the next exchange on the connection proves it.
#[test]
fn no_body_responses_head_204_304() {
    let head_req = b"HEAD /h HTTP/1.1\r\n\r\n";
    let head_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    let del = b"DELETE /d HTTP/1.1\r\n\r\n";
    let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
    let cond = b"GET /c HTTP/1.1\r\nIf-None-Match: \"x\"\r\n\r\n";
    let not_modified = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 500\r\nETag: \"x\"\r\n\r\n";
    let last = b"GET /last HTTP/1.1\r\n\r\n";
    let last_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (got, per_step) = run(
        &[
            full(R, 10, head_req),
            full(S, 20, head_resp),
            full(R, 30, del),
            full(S, 40, no_content),
            full(R, 50, cond),
            full(S, 60, not_modified),
            full(R, 70, last),
            full(S, 80, last_resp),
        ],
        90,
    );
    let mut cond_ex = served("GET", "/c", 304, (50, 60), (cond.len(), not_modified.len()));
    cond_ex.headers = vec![("If-None-Match".into(), "\"x\"".into())];
    assert_eq!(
        got,
        vec![
            served(
                "HEAD",
                "/h",
                200,
                (10, 20),
                (head_req.len(), head_resp.len())
            ),
            served("DELETE", "/d", 204, (30, 40), (del.len(), no_content.len())),
            cond_ex,
            served("GET", "/last", 200, (70, 80), (last.len(), last_resp.len())),
        ]
    );
    assert_eq!(per_step, vec![0, 1, 0, 1, 0, 1, 0, 1, 0]);
}

#[test]
fn continue_100_does_not_end_the_exchange() {
    let head = b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    let hints = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n";
    let fin = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let (got, per_step) = run(
        &[
            full(R, 10, head),
            full(S, 20, interim),
            full(R, 30, b"data"),
            full(S, 40, hints),
            full(S, 50, fin),
        ],
        60,
    );
    assert_eq!(
        got,
        vec![
            Ex {
                side: Side::Server,
                method: "PUT",
                path: "/f",
                status: 200,
                ts: (10, 50),
                bytes: (head.len() + 4, interim.len() + hints.len() + fin.len()),
                headers: &[("Expect", "100-continue"), ("Content-Length", "4")],
                complete: true,
            }
            .build()
        ]
    );
    assert_eq!(per_step, vec![0, 0, 0, 0, 1, 0]);
}

#[test]
fn response_until_close() {
    let req = b"GET /stream HTTP/1.1\r\n\r\n";
    let head = b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n";
    let (got, per_step) = run(
        &[
            full(R, 10, req),
            full(S, 20, head),
            full(S, 30, b"part one "),
            full(S, 40, b"part two"),
        ],
        50,
    );
    assert_eq!(
        got,
        vec![served(
            "GET",
            "/stream",
            200,
            (10, 40),
            (req.len(), head.len() + 17)
        )]
    );
    // Only the close ends it.
    assert_eq!(per_step, vec![0, 0, 0, 0, 1]);
}

#[test]
fn requests_without_response_at_close() {
    let first = b"GET /lonely HTTP/1.1\r\n\r\n";
    let second = b"POST /half HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123";
    let (got, per_step) = run(&[full(R, 10, first), full(R, 20, second)], 50);
    assert_eq!(
        got,
        vec![
            Ex {
                side: Side::Server,
                method: "GET",
                path: "/lonely",
                status: 0,
                ts: (10, 50),
                bytes: (first.len(), 0),
                headers: &[],
                complete: false,
            }
            .build(),
            Ex {
                side: Side::Server,
                method: "POST",
                path: "/half",
                status: 0,
                ts: (20, 50),
                bytes: (second.len(), 0),
                headers: &[("Content-Length", "10")],
                complete: false,
            }
            .build(),
        ]
    );
    assert_eq!(per_step, vec![0, 0, 2]);
}

#[test]
fn client_side() {
    let req = b"GET /api/users?id=7 HTTP/1.1\r\nHost: backend:8080\r\nx-request-id: abc-123\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let (got, _) = run(
        &[
            full(S, 100, req),
            full(R, 250, &resp[..20]),
            full(R, 260, &resp[20..]),
        ],
        300,
    );
    let mut want = Ex {
        side: Side::Client,
        method: "GET",
        path: "/api/users?id=7",
        status: 200,
        ts: (100, 260),
        bytes: (req.len(), resp.len()),
        headers: &[
            ("Host", "backend:8080"),
            ("x-request-id", "abc-123"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
        complete: true,
    }
    .build();
    want.request_id = Some("abc-123".into());
    want.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    assert_eq!(got, vec![want]);
}

/// Attached in the middle of a request body, with the server still answering
/// an earlier request: nothing is reported until a real request line, and the
/// response seen before it is dropped.
#[test]
fn resync_from_mid_body_start() {
    let old_resp = b"ed\"}\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
    let tail =
        b"ody\": \"GET / HTTP/1.1 is not a request\"}\r\n\r\nPUT /x HTTP/1.1 junk\r\nGET\r\n";
    let next = b"POST /next HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    let resp = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";
    let joined = [&tail[..], &next[..]].concat();
    let mut conn = HttpConn::new();
    assert!(conn.feed(S, 5, old_resp, old_resp.len()).is_empty());
    assert!(conn.feed(R, 10, &joined, joined.len()).is_empty());
    assert_eq!(conn.side(), Some(Side::Server));
    let got = conn.feed(S, 20, resp, resp.len());
    let mut want = served("POST", "/next", 202, (10, 20), (next.len(), resp.len()));
    want.headers = vec![("Content-Length".into(), "2".into())];
    assert_eq!(got, vec![want]);
    assert!(conn.close(30).is_empty());
    assert_eq!(
        conn.stats().discarded_bytes,
        (old_resp.len() + tail.len()) as u64
    );
}

/// A body the kernel did not copy: counted, and the exchange is complete.
#[test]
fn gap_inside_content_length_body() {
    let head = b"POST /big HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
    let body_start = [b'x'; 1000];
    let req = [&head[..], &body_start[..]].concat();
    let rhead = b"HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\n";
    let resp = [&rhead[..], b"0123456789"].concat();
    // The rest of the request body arrives in two more reads, the second of
    // which ends the body and is also mostly uncaptured.
    let more = [b'y'; 16];
    let next = b"GET /next HTTP/1.1\r\n\r\n";
    let next_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
    let (got, _) = run(
        &[
            (R, 10, &req, Some(head.len() + 60_000)),
            (R, 11, &more, Some(40_000)),
            (S, 20, &resp, Some(rhead.len() + 30_000)),
            (S, 21, &resp[..0], Some(20_000)),
            full(R, 30, next),
            full(S, 40, next_resp),
        ],
        50,
    );
    let mut big = served(
        "POST",
        "/big",
        200,
        (10, 21),
        (head.len() + 100_000, rhead.len() + 50_000),
    );
    big.headers = vec![("Content-Length".into(), "100000".into())];
    assert_eq!(
        got,
        vec![
            big,
            served("GET", "/next", 200, (30, 40), (next.len(), next_resp.len()))
        ]
    );
}

/// A gap inside chunk payload is fine (the size line said how much); a gap
/// over a chunk-size line cuts the exchange and the parser resynchronises.
#[test]
fn gaps_in_chunked_bodies() {
    let req = b"GET /chunks HTTP/1.1\r\n\r\n";
    let rhead = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk = b"2710\r\nabcdef"; // 10000-byte chunk, 6 bytes captured
    let rest = b"0\r\n\r\n";
    let req2 = b"GET /lost HTTP/1.1\r\n\r\n";
    let chunk2 = b"1000\r\nabc"; // 4096-byte chunk, then a gap past its end
    let req3 = b"GET /after HTTP/1.1\r\n\r\n";
    let resp3 = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let (got, _) = run(
        &[
            full(R, 10, req),
            full(S, 20, rhead),
            // The CRLF after the payload is uncaptured too.
            (S, 21, chunk, Some(6 + 10_000 + 2)),
            full(S, 22, rest),
            full(R, 30, req2),
            full(S, 40, rhead),
            (S, 41, chunk2, Some(6 + 4096 + 2 + 100)),
            full(S, 42, b"more chunks of the lost response\r\n0\r\n\r\n"),
            full(R, 50, req3),
            full(S, 60, resp3),
        ],
        70,
    );
    assert_eq!(
        got,
        vec![
            served(
                "GET",
                "/chunks",
                200,
                (10, 22),
                (req.len(), rhead.len() + 6 + 10_000 + 2 + rest.len())
            ),
            Ex {
                side: Side::Server,
                method: "GET",
                path: "/lost",
                status: 200,
                ts: (30, 41),
                bytes: (req2.len(), rhead.len() + 6 + 4096 + 2),
                headers: &[],
                complete: false,
            }
            .build(),
            served("GET", "/after", 200, (50, 60), (req3.len(), resp3.len())),
        ]
    );
}

/// A gap inside a request's headers: that request is reported cut (with its
/// response, which comes next in order), and later exchanges are right.
#[test]
fn gap_inside_headers_resyncs() {
    let first = b"GET /first HTTP/1.1\r\n\r\n";
    let first_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let cut = b"GET /cut HTTP/1.1\r\nHost: a\r\nCookie: sid=SECRET";
    let cut_resp = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad";
    let next = b"GET /next HTTP/1.1\r\n\r\n";
    let next_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
    let mut conn = HttpConn::new();
    let mut got = Vec::new();
    for (dir, ts, bytes, total) in [
        full(R, 1, first),
        full(S, 2, first_resp),
        (R, 10, &cut[..], Some(cut.len() + 5000)),
        // The rest of the oversized header block, as the next read.
        full(R, 11, b"aaaa\r\nX-Other: 1\r\n\r\n"),
        full(S, 20, cut_resp),
        full(R, 30, next),
        full(S, 40, next_resp),
    ] {
        got.extend(conn.feed(dir, ts, bytes, total.unwrap_or(bytes.len())));
    }
    got.extend(conn.close(50));
    let got = renumbered(got);
    assert_eq!(
        got,
        vec![
            served(
                "GET",
                "/first",
                200,
                (1, 2),
                (first.len(), first_resp.len())
            ),
            Ex {
                side: Side::Server,
                method: "GET",
                path: "/cut",
                status: 400,
                ts: (10, 20),
                bytes: (cut.len(), cut_resp.len()),
                headers: &[],
                complete: false,
            }
            .build(),
            served("GET", "/next", 200, (30, 40), (next.len(), next_resp.len())),
        ]
    );
    assert_eq!(conn.stats().resyncs, 1);
    assert!(!format!("{got:?}").contains("SECRET"));
}

/// When a response loses framing, the requests still waiting are given up
/// (their responses may have been in what was lost) and pairing restarts
/// with the next request.
#[test]
fn response_loss_gives_up_waiting_requests() {
    let reqs = b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n";
    let broken = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    let late = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let next = b"GET /3 HTTP/1.1\r\n\r\n";
    let next_resp = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    let (got, per_step) = run(
        &[
            full(R, 10, reqs),
            full(S, 20, broken),
            full(S, 25, late),
            full(R, 30, next),
            full(S, 40, next_resp),
        ],
        50,
    );
    let cut = |path, status, resp_end, resp_bytes| {
        Ex {
            side: Side::Server,
            method: "GET",
            path,
            status,
            ts: (10, resp_end),
            bytes: (reqs.len() / 2, resp_bytes),
            headers: &[],
            complete: false,
        }
        .build()
    };
    assert_eq!(
        got,
        vec![
            cut("/1", 200, 20, broken.len() - b"zz\r\n".len()),
            cut("/2", 0, 20, 0),
            served("GET", "/3", 201, (30, 40), (next.len(), next_resp.len())),
        ]
    );
    assert_eq!(per_step, vec![0, 2, 0, 0, 1, 0]);
}

#[test]
fn oversized_headers_resync() {
    let mut huge = b"GET /huge HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 70_000));
    huge.extend_from_slice(b"\r\n\r\n");
    let refused = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n";
    let ok = b"GET /ok HTTP/1.1\r\n\r\n";
    let ok_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let first = b"GET /first HTTP/1.1\r\n\r\n";
    for piece in [1000, 8192, huge.len()] {
        let mut steps = vec![full(R, 1, first), full(S, 2, ok_resp)];
        steps.extend(huge.chunks(piece).map(|c| full(R, 10, c)));
        steps.extend([full(S, 20, refused), full(R, 30, ok), full(S, 40, ok_resp)]);
        let (got, _) = run(&steps, 50);
        assert_eq!(
            got,
            vec![
                served("GET", "/first", 200, (1, 2), (first.len(), ok_resp.len())),
                Ex {
                    side: Side::Server,
                    method: "GET",
                    path: "/huge",
                    status: 431,
                    ts: (10, 20),
                    bytes: (MAX_HEAD, refused.len()),
                    headers: &[],
                    complete: false,
                }
                .build(),
                served("GET", "/ok", 200, (30, 40), (ok.len(), ok_resp.len())),
            ],
            "pieces of {piece}"
        );
    }
}

#[test]
fn secrets_never_appear() {
    let req = b"GET /me HTTP/1.1\r\nAuthorization: Bearer SECRET-1\r\ncookie: sid=SECRET-2; x=SECRET-3\r\nPROXY-AUTHORIZATION: Basic SECRET-4\r\nSet-Cookie: SECRET-5\r\nAccept: */*\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=SECRET-6\r\nContent-Length: 0\r\n\r\n";
    let (got, _) = run(&[full(R, 10, req), full(S, 20, resp)], 30);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].headers,
        vec![
            ("Authorization".to_string(), REDACTED.to_string()),
            ("cookie".to_string(), REDACTED.to_string()),
            ("PROXY-AUTHORIZATION".to_string(), REDACTED.to_string()),
            ("Set-Cookie".to_string(), REDACTED.to_string()),
            ("Accept".to_string(), "*/*".to_string()),
        ]
    );
    let debug = format!("{got:?} {got:#?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert_eq!(redact_header("AUTHORIZATION", "x"), REDACTED);
    assert_eq!(redact_header("Cookie", "x"), REDACTED);
    assert_eq!(redact_header("set-cookie", "x"), REDACTED);
    assert_eq!(redact_header("Proxy-Authorization", "x"), REDACTED);
    assert_eq!(redact_header("X-Authorization-Hint", "x"), "x");
}

/// After 101 Switching Protocols the bytes are WebSocket frames, however much
/// they look like HTTP: nothing more is reported.
#[test]
fn upgrade_stops_parsing() {
    let req = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let frame_early = b"\x81\x05hello";
    let switching =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let req_and_frame = [&req[..], &frame_early[..]].concat();
    let resp_and_frame = [&switching[..], b"\x81\x02hi"].concat();
    let mut conn = HttpConn::new();
    assert!(
        conn.feed(R, 10, &req_and_frame, req_and_frame.len())
            .is_empty()
    );
    let got = conn.feed(S, 20, &resp_and_frame, resp_and_frame.len());
    let mut want = served("GET", "/ws", 101, (10, 20), (req.len(), switching.len()));
    want.headers = vec![
        ("Upgrade".into(), "websocket".into()),
        ("Connection".into(), "Upgrade".into()),
    ];
    assert_eq!(got, vec![want]);
    let fake = b"GET /x HTTP/1.1\r\n\r\n";
    let fake_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert!(conn.feed(R, 30, fake, fake.len()).is_empty());
    assert!(conn.feed(S, 40, fake_resp, fake_resp.len()).is_empty());
    assert!(conn.close(50).is_empty());
    assert!(conn.stats().upgraded);
}

/// An upgrade the server declines leaves the connection HTTP/1: the request
/// that followed (held while the answer was pending) is parsed.
#[test]
fn declined_upgrade_continues() {
    let req = b"GET /ws HTTP/1.1\r\nUpgrade: h2c\r\n\r\n";
    let then = b"GET /plain HTTP/1.1\r\n\r\n";
    let both = [&req[..], &then[..]].concat();
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let (got, _) = run(
        &[full(R, 10, &both), full(S, 20, resp), full(S, 30, resp)],
        40,
    );
    let mut first = served("GET", "/ws", 200, (10, 20), (req.len(), resp.len()));
    first.headers = vec![("Upgrade".into(), "h2c".into())];
    assert_eq!(
        got,
        vec![
            first,
            served("GET", "/plain", 200, (10, 30), (then.len(), resp.len()))
        ]
    );
}

/// The request held behind a declined CONNECT is parsed as soon as the
/// refusal is read, so a response right behind the refusal (same read) is
/// its answer (found by fuzzing).
#[test]
fn held_request_is_answered_in_the_same_read() {
    let reqs = b"CONNECT h:443 HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
    let refused = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n";
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let both = [&refused[..], &ok[..]].concat();
    let (got, per_step) = run(&[full(S, 10, reqs), full(R, 20, &both)], 30);
    let client = |method, path, status, bytes| {
        Ex {
            side: Side::Client,
            method,
            path,
            status,
            ts: (10, 20),
            bytes,
            headers: &[],
            complete: true,
        }
        .build()
    };
    assert_eq!(
        got,
        vec![
            client("CONNECT", "h:443", 407, (reqs.len() - 19, refused.len())),
            client("GET", "/x", 200, (19, ok.len())),
        ]
    );
    assert_eq!(per_step, vec![0, 2, 0]);
}

#[test]
fn connect_tunnel_stops_parsing() {
    let req = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    let resp = b"HTTP/1.1 200 Connection Established\r\n\r\n";
    let (got, _) = run(
        &[
            full(S, 10, req),
            full(R, 20, resp),
            full(S, 30, b"\x16\x03\x01 client hello GET / HTTP/1.1\r\n\r\n"),
            full(R, 40, b"HTTP/1.1 200 OK\r\n\r\n"),
        ],
        50,
    );
    assert_eq!(
        got,
        vec![
            Ex {
                side: Side::Client,
                method: "CONNECT",
                path: "example.com:443",
                status: 200,
                ts: (10, 20),
                bytes: (req.len(), resp.len()),
                headers: &[("Host", "example.com:443")],
                complete: true,
            }
            .build()
        ]
    );
}

/// A response nobody asked for (Node's 408 before closing an idle keep-alive
/// connection) is not an exchange.
#[test]
fn unsolicited_response_is_dropped() {
    let req = b"GET /a HTTP/1.1\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let timeout = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n";
    let (got, _) = run(
        &[full(R, 10, req), full(S, 20, resp), full(S, 30, timeout)],
        40,
    );
    assert_eq!(
        got,
        vec![served("GET", "/a", 200, (10, 20), (req.len(), resp.len()))]
    );
}

/// A malformed request head: hunting goes on past it, and a response seen
/// while out of sync is dropped.
#[test]
fn parse_error_resyncs() {
    let good = b"GET /good HTTP/1.1\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let bad = b"GET /bad HTTP/1.1\r\nBad Header\r\n\r\n";
    let bad_resp = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    let (got, _) = run(
        &[
            full(R, 1, good),
            full(S, 2, resp),
            full(R, 10, bad),
            full(S, 20, bad_resp),
            full(R, 30, good),
            full(S, 40, resp),
        ],
        50,
    );
    assert_eq!(
        got,
        vec![
            served("GET", "/good", 200, (1, 2), (good.len(), resp.len())),
            Ex {
                side: Side::Server,
                method: "GET",
                path: "/bad",
                status: 400,
                ts: (10, 20),
                bytes: (bad.len(), bad_resp.len()),
                headers: &[],
                complete: false,
            }
            .build(),
            served("GET", "/good", 200, (30, 40), (good.len(), resp.len())),
        ]
    );
}

#[test]
fn long_path_is_capped() {
    let path = format!("/{}", "p".repeat(5000));
    let req = format!("GET {path} HTTP/1.1\r\n\r\n");
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let (got, _) = run(&[full(R, 1, req.as_bytes()), full(S, 2, resp)], 3);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, path[..MAX_PATH]);
    assert_eq!(got[0].req_bytes, req.len() as u64);
}

/// Garbage without line ends, a head that never ends, a flood of pipelined
/// requests: memory stays bounded.
#[test]
fn memory_stays_bounded() {
    let mut conn = HttpConn::new();
    let junk = vec![b'z'; 64 * 1024];
    for i in 0..40 {
        conn.feed(R, i, &junk, junk.len());
        conn.feed(S, i, &junk, junk.len());
        assert!(conn.footprint() <= 3 * MAX_LINE, "{}", conn.footprint());
    }
    // In sync, then a head that never ends.
    conn.feed(R, 100, b"GET / HTTP/1.1\r\nX: ", 19);
    for i in 0..40 {
        conn.feed(R, 101 + i, &junk, junk.len());
        assert!(conn.footprint() <= MAX_FOOTPRINT);
    }
    // Pipelined requests without responses.
    let mut pipelined = Vec::new();
    for i in 0..1000 {
        pipelined.extend_from_slice(
            format!("GET /{i} HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "v".repeat(500)).as_bytes(),
        );
    }
    let mut conn = HttpConn::new();
    for c in pipelined.chunks(4096) {
        conn.feed(R, 1, c, c.len());
        assert!(conn.footprint() <= MAX_FOOTPRINT);
    }
    assert!(conn.pending.len() <= MAX_PENDING);
    let at_close = conn.close(2);
    assert!(at_close.len() <= MAX_PENDING + 1);
    assert!(at_close.iter().all(|e| !e.complete));
}

// ---------------------------------------------------------------------------
// Re-split property test.

/// What a Node server sees on one keep-alive connection: (direction, ts,
/// bytes) per read/write. Chunked both ways, pipelining, HEAD, 204, 100
/// Continue, secrets, and a response delimited by close at the end.
fn realistic_stream() -> Vec<(Direction, u64, Vec<u8>)> {
    let segs: Vec<(Direction, &[u8])> = vec![
        (R, b"GET /a?x=1 HTTP/1.1\r\nHost: svc\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"),
        (R, b"POST /b HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nx-request-id: r-2\r\n\r\n5\r\nhello\r\n"),
        (R, b"6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"),
        (S, b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"),
        (S, b"0\r\n\r\n"),
        (R, b"GET /c HTTP/1.1\r\n\r\nHEAD /d HTTP/1.1\r\n\r\nDELETE /e HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
        (S, b"HTTP/1.1 204 No Content\r\n\r\n"),
        (R, b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"),
        (S, b"HTTP/1.1 100 Continue\r\n\r\n"),
        (R, b"da"),
        (R, b"ta"),
        (S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        (R, b"GET /g HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nCookie: a=b\r\n\r\n"),
        (S, b"HTTP/1.1 304 Not Modified\r\n\r\n"),
        (R, b"GET /h HTTP/1.1\r\nConnection: close\r\n\r\n"),
        (S, b"HTTP/1.0 200 OK\r\n\r\nuntil "),
        (S, b"close body"),
    ];
    segs.into_iter()
        .enumerate()
        .map(|(i, (d, b))| (d, 1000 * (i as u64 + 1), b.to_vec()))
        .collect()
}

fn feed_chunks(chunks: &[(Direction, u64, Vec<u8>)]) -> Vec<Exchange> {
    let mut conn = HttpConn::new();
    let mut out = Vec::new();
    for (d, ts, bytes) in chunks {
        out.extend(conn.feed(*d, *ts, bytes, bytes.len()));
        assert!(conn.footprint() <= MAX_FOOTPRINT);
    }
    out.extend(conn.close(1_000_000));
    renumbered(out)
}

#[test]
fn in_flight_requests_carry_the_seq_of_their_exchange() {
    let head =
        b"GET /a HTTP/1.1\r\nHost: x\r\nx-request-id: r1\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut conn2 = HttpConn::new();
    assert!(conn2.feed(R, 1, head, head.len()).is_empty());
    let seen: Vec<(u64, String, Option<String>)> = conn2
        .in_flight()
        .map(|f| (f.seq, f.path.to_string(), f.request_id.map(str::to_string)))
        .collect();
    assert_eq!(
        seen,
        [
            (0, "/a".to_string(), Some("r1".to_string())),
            (1, "/b".to_string(), None)
        ]
    );
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let done = conn2.feed(S, 2, resp, resp.len());
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].seq, done[0].path.as_str()), (0, "/a"));
    assert_eq!(conn2.in_flight().map(|f| f.seq).collect::<Vec<_>>(), [1]);
}

#[test]
fn bodies_are_kept_only_when_asked_and_only_up_to_the_cap() {
    let req = b"POST /o HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world";
    let resp = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    let mut plain = HttpConn::new();
    plain.feed(R, 1, req, req.len());
    let done = plain.feed(S, 2, resp, resp.len());
    assert!(done[0].req_body.is_empty() && done[0].resp_body.is_empty());
    let mut kept = HttpConn::with_body_capture(5);
    kept.feed(R, 1, &req[..40], 40);
    kept.feed(R, 1, &req[40..], req.len() - 40);
    let done = kept.feed(S, 2, resp, resp.len());
    assert_eq!(done[0].req_body, b"hello");
    assert_eq!(done[0].resp_body, b"ok");
    assert_eq!(done[0].req_bytes, req.len() as u64);
}

/// Cuts `bytes` at `cuts` (sorted, deduplicated, inside the slice).
fn split_at(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
        if c > prev {
            out.push(bytes[prev..c].to_vec());
            prev = c;
        }
    }
    out
}

fn random_cuts(rng: &mut StdRng, len: usize) -> Vec<usize> {
    if len < 2 {
        return Vec::new();
    }
    let n = rng.random_range(0..len.min(12));
    let mut cuts: Vec<usize> = (0..n).map(|_| rng.random_range(1..len)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

#[test]
fn resplit_gives_identical_exchanges() {
    let stream = realistic_stream();
    let whole = feed_chunks(&stream);
    // The baseline itself is right: eight exchanges, all complete.
    let summary: Vec<(&str, &str, u16, bool)> = whole
        .iter()
        .map(|e| (e.method.as_str(), e.path.as_str(), e.status, e.complete))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("GET", "/a?x=1", 200, true),
            ("POST", "/b", 201, true),
            ("GET", "/c", 200, true),
            ("HEAD", "/d", 200, true),
            ("DELETE", "/e", 204, true),
            ("PUT", "/f", 200, true),
            ("GET", "/g", 304, true),
            ("GET", "/h", 200, true),
        ]
    );
    let total: usize = stream.iter().map(|(_, _, b)| b.len()).sum();
    let reported: u64 = whole.iter().map(|e| e.req_bytes + e.resp_bytes).sum();
    assert_eq!(reported, total as u64, "every byte belongs to an exchange");

    // Every segment cut into single bytes, each keeping its segment's ts.
    let bytewise: Vec<_> = stream
        .iter()
        .flat_map(|(d, ts, b)| b.iter().map(move |&x| (*d, *ts, vec![x])))
        .collect();
    assert_eq!(feed_chunks(&bytewise), whole, "1-byte splits");

    // Random cuts inside segments: timestamps are comparable too.
    let mut rng = StdRng::seed_from_u64(0x5eed_1234);
    for round in 0..500 {
        let chunks: Vec<_> = stream
            .iter()
            .flat_map(|(d, ts, b)| {
                let cuts = random_cuts(&mut rng, b.len());
                split_at(b, &cuts)
                    .into_iter()
                    .map(move |piece| (*d, *ts, piece))
            })
            .collect();
        assert_eq!(feed_chunks(&chunks), whole, "round {round}: {chunks:?}");
    }

    // Random cuts anywhere in each run of same-direction bytes (segments
    // merged or split across their boundaries): equal but for timestamps.
    let untimed = |mut v: Vec<Exchange>| {
        for e in &mut v {
            e.req_start_ns = 0;
            e.resp_end_ns = 0;
        }
        v
    };
    let mut runs: Vec<(Direction, Vec<u8>)> = Vec::new();
    for (d, _, b) in &stream {
        match runs.last_mut() {
            Some((last, bytes)) if last == d => bytes.extend_from_slice(b),
            _ => runs.push((*d, b.clone())),
        }
    }
    let whole_untimed = untimed(whole.clone());
    for round in 0..500 {
        let mut ts = 0;
        let chunks: Vec<_> = runs
            .iter()
            .flat_map(|(d, b)| {
                let cuts = random_cuts(&mut rng, b.len());
                split_at(b, &cuts)
                    .into_iter()
                    .map(|piece| {
                        ts += 1;
                        (*d, ts, piece)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            untimed(feed_chunks(&chunks)),
            whole_untimed,
            "round {round}: {chunks:?}"
        );
    }
}

/// Empty reads (nothing moved, another timestamp) between every byte change
/// nothing; the fuzzer found that they used to take timestamp marks.
#[test]
fn empty_reads_change_nothing() {
    let stream = realistic_stream();
    let whole = feed_chunks(&stream);
    let mut chunks = Vec::new();
    for (i, (d, ts, b)) in stream.iter().enumerate() {
        for (j, &x) in b.iter().enumerate() {
            for k in 0..3 {
                let other = if k == 1 { R } else { S };
                chunks.push((
                    other,
                    5_000_000 + (i * 10_000 + j * 3 + k) as u64,
                    Vec::new(),
                ));
            }
            chunks.push((*d, *ts, vec![x]));
        }
    }
    assert_eq!(feed_chunks(&chunks), whole);

    // A request line found while resynchronising starts in a read that sits
    // between older and newer ones: its timestamp is still exact.
    let mut conn = HttpConn::new();
    conn.feed(R, 1, b"tail of a body ", 15);
    conn.feed(R, 2, b"GE", 2);
    for ts in 3..200 {
        conn.feed(R, ts, b"", 0);
    }
    conn.feed(R, 300, b"T /x HTTP/1.1\r\n\r\n", 17);
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let got = conn.feed(S, 400, resp, resp.len());
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].req_start_ns, got[0].resp_end_ns), (2, 400));
}

/// More pipelined requests than [`MAX_PENDING`]: the rest wait in the buffer
/// and are all answered, in order.
#[test]
fn deep_pipeline_is_held_not_lost() {
    let n = MAX_PENDING + 8;
    let reqs: Vec<u8> = (0..n)
        .flat_map(|i| format!("GET /{i} HTTP/1.1\r\n\r\n").into_bytes())
        .collect();
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let mut steps = vec![full(R, 10, &reqs)];
    steps.extend((0..n).map(|i| full(S, 20 + i as u64, resp)));
    let (got, per_step) = run(&steps, 1000);
    let paths: Vec<String> = got.iter().map(|e| e.path.clone()).collect();
    let want: Vec<String> = (0..n).map(|i| format!("/{i}")).collect();
    assert_eq!(paths, want);
    assert!(got.iter().all(|e| e.complete && e.status == 200));
    assert!(per_step[1..=n].iter().all(|&k| k == 1));
}

/// A chunked body broken after some payload in the same read: the bytes
/// before the bad one count the same however the reads were cut (found by
/// fuzzing).
#[test]
fn framing_error_counts_the_bytes_before_it() {
    let req = b"GET /r HTTP/1.1\r\n\r\n";
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let body = b"3\r\nabcX trailing junk";
    let whole = run(&[full(R, 1, req), full(S, 2, head), full(S, 3, body)], 9).0;
    let mut steps = vec![full(R, 1, req), full(S, 2, head)];
    steps.extend(body.chunks(1).map(|b| full(S, 3, b)));
    let bytewise = run(&steps, 9).0;
    let mut want = served("GET", "/r", 200, (1, 3), (req.len(), head.len() + 6));
    want.complete = false;
    assert_eq!(whole, vec![want]);
    assert_eq!(bytewise, whole);
}

// ---------------------------------------------------------------------------
// The pieces.

#[test]
fn chunked_body_split_anywhere() {
    let body = b"4\r\nWiki\r\n5;a=b\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nT: v\r\n\r\nNEXT";
    let end = body.len() - 4;
    for cut in 0..=body.len() {
        let mut b = Body::chunked();
        let p1 = b.feed(&body[..cut]).unwrap();
        let used = if p1.done {
            p1.used
        } else {
            p1.used + b.feed(&body[cut..]).unwrap().used
        };
        assert_eq!(used as usize, end, "cut at {cut}");
    }
}

#[test]
fn chunked_body_errors() {
    for bad in [
        &b"x\r\n"[..],
        b"\r\n",
        b"4\r\nWikiXX",
        b"1234567890abcdef0\r\n",
        b"0\r\nT: v\rX",
    ] {
        assert!(Body::chunked().feed(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn body_skip() {
    let mut b = Body::Length(10);
    assert_eq!(
        b.skip(4),
        Progress {
            used: 4,
            done: false
        }
    );
    assert_eq!(
        b.skip(100),
        Progress {
            used: 6,
            done: true
        }
    );
    // Payload and the CRLF after it can be skipped, a size line cannot.
    let mut c = Body::chunked();
    assert_eq!(
        c.feed(b"10\r\nabc").unwrap(),
        Progress {
            used: 7,
            done: false
        }
    );
    assert_eq!(
        c.skip(13 + 2),
        Progress {
            used: 15,
            done: false
        }
    );
    assert_eq!(
        c.feed(b"0\r\n\r\n").unwrap(),
        Progress {
            used: 5,
            done: true
        }
    );
    let mut c = Body::chunked();
    c.feed(b"3\r\nabc").unwrap();
    assert_eq!(
        c.skip(5),
        Progress {
            used: 2,
            done: false
        }
    );
}

#[test]
fn start_lines() {
    use scan::{request_line_start, status_line_start};
    assert_eq!(request_line_start(b"GET / HTTP/1.1\r\n"), Some(0));
    assert_eq!(
        request_line_start(b"}{\"a\":1}POST /x?y=1 HTTP/1.0\r\n"),
        Some(8)
    );
    assert_eq!(request_line_start(b"xxUNLOCK /f HTTP/1.1\r\n"), Some(2));
    assert_eq!(request_line_start(b"OPTIONS * HTTP/1.1\r\n"), Some(0));
    assert_eq!(request_line_start(b"CONNECT h:443 HTTP/1.1\r\n"), Some(0));
    assert_eq!(request_line_start(b"GET http://h/x HTTP/1.1\r\n"), Some(0));
    assert_eq!(request_line_start(b"GET / HTTP/1.1\n"), None);
    assert_eq!(request_line_start(b"FOO / HTTP/1.1\r\n"), None);
    assert_eq!(request_line_start(b"GET x HTTP/1.1\r\n"), None);
    assert_eq!(request_line_start(b"GET  / HTTP/1.1\r\n"), None);
    assert_eq!(request_line_start(b"GET / HTTP/2.0\r\n"), None);
    assert_eq!(request_line_start(b"/ HTTP/1.1\r\n"), None);
    assert_eq!(status_line_start(b"HTTP/1.1 200 OK\r\n"), Some(0));
    assert_eq!(status_line_start(b"abcHTTP/1.0 404\r\n"), Some(3));
    assert_eq!(status_line_start(b"HTTP/1.1 999 OK\r\n"), None);
    assert_eq!(status_line_start(b"HTTP/1.1 20 OK\r\n"), None);
    assert_eq!(status_line_start(b"HTTP/1.1 200OK\r\n"), None);
}

#[test]
fn head_ends() {
    use scan::head_end;
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Ok(18));
    assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest", 0), Ok(16));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), Err(21));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r", 0), Err(21));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b", 0), Err(20));
}
