//! Byte scanning: the end of a head, and the start lines the parser
//! resynchronises on.
//!
//! Resync works one complete line at a time: a candidate is only judged once
//! its `\n` has arrived, so the verdict does not depend on how the stream was
//! split, and every byte is looked at a bounded number of times.
//!
//! These only *find* where a start line may begin inside arbitrary bytes,
//! with a rule stricter than httparse's (known methods, CRLF, HTTP/1.x, a
//! plausible target): httparse parses a head from a known start and accepts
//! any token as a method. The head found is then parsed by httparse like any
//! other.

use super::MAX_LINE;

/// Request methods the parser resynchronises on (llhttp's list, which is what
/// Node accepts). In sync, any token httparse accepts is fine.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"QUERY",
    b"PURGE",
    b"COPY",
    b"LOCK",
    b"MKCOL",
    b"MOVE",
    b"PROPFIND",
    b"PROPPATCH",
    b"SEARCH",
    b"UNLOCK",
    b"BIND",
    b"REBIND",
    b"UNBIND",
    b"ACL",
    b"REPORT",
    b"MKACTIVITY",
    b"CHECKOUT",
    b"MERGE",
    b"M-SEARCH",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"MKCALENDAR",
    b"LINK",
    b"UNLINK",
    b"SOURCE",
];

/// Where the head starting at `buf[0]` ends (exclusive), searching from
/// `from`: after a `\n` followed by `\n` or `\r\n` (httparse's rule, so the two
/// agree on where a head ends). `Err(resume)` when not there yet: the search
/// can resume at `resume` once more bytes arrive.
pub(super) fn head_end(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut i = from;
    while let Some(off) = buf
        .get(i..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    {
        let nl = i + off;
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => return Ok(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Ok(nl + 3),
            (None, _) | (Some(b'\r'), None) => return Err(nl),
            _ => i = nl + 1,
        }
    }
    Err(buf.len())
}

/// Given one complete line (ending in `\n`, at most [`MAX_LINE`] bytes), where
/// in it a request line starts: `METHOD SP target SP HTTP/1.x CRLF` with a
/// known method, a visible-ASCII target in origin, absolute, asterisk or (for
/// CONNECT) authority form. The line may begin with the tail of something else
/// (a body running straight into the next request): the longest known method
/// ending just before the target is taken.
pub(super) fn request_line_start(line: &[u8]) -> Option<usize> {
    let rest = line.strip_suffix(b"\r\n")?;
    let rest = rest
        .strip_suffix(b" HTTP/1.1")
        .or_else(|| rest.strip_suffix(b" HTTP/1.0"))?;
    let target_len = rest.iter().rev().take_while(|&&b| is_visible(b)).count();
    if target_len == 0 || target_len == rest.len() {
        return None;
    }
    let target = &rest[rest.len() - target_len..];
    let before = rest[..rest.len() - target_len].strip_suffix(b" ")?;
    let method = METHODS
        .iter()
        .filter(|m| before.ends_with(m))
        .max_by_key(|m| m.len())?;
    let form_ok = target.starts_with(b"/")
        || target == b"*"
        || target.starts_with(b"http://")
        || target.starts_with(b"https://")
        || (*method == b"CONNECT" && target.contains(&b':'));
    form_ok.then(|| before.len() - method.len())
}

/// Given one complete line, where in it a status line starts:
/// `HTTP/1.x SP [1-5]DD (SP reason)? CRLF`, the reason free of control bytes
/// other than HTAB.
pub(super) fn status_line_start(line: &[u8]) -> Option<usize> {
    let body = line.strip_suffix(b"\r\n")?;
    let mut from = 0;
    while let Some(off) = find(&body[from..], b"HTTP/1.") {
        let at = from + off;
        if is_status_line(&body[at..]) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn is_status_line(s: &[u8]) -> bool {
    let (Some(version), Some(b' '), Some(code)) = (s.get(..8), s.get(8), s.get(9..12)) else {
        return false;
    };
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return false;
    }
    if !matches!(code[0], b'1'..=b'5') || !code[1..].iter().all(u8::is_ascii_digit) {
        return false;
    }
    match s.get(12..) {
        None | Some([]) => true,
        Some([b' ', reason @ ..]) => reason
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
        Some(_) => false,
    }
}

fn is_visible(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The last [`MAX_LINE`] bytes of a line: the most a start line may be.
pub(super) fn line_tail(line: &[u8]) -> (usize, &[u8]) {
    let skip = line.len().saturating_sub(MAX_LINE);
    (skip, &line[skip..])
}
