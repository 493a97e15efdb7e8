//! Reassembly of written bytes into text lines.
//!
//! The kernel sends each written buffer as ordered chunks (see
//! `LogChunkHeader`). Lines are reassembled per (process, fd, inode): a line
//! may span many writes and many chunks, and a write may hold many lines.
//! Bytes are joined before UTF-8 decoding, so a multi-byte character split
//! across chunks or writes stays intact.

use std::collections::HashMap;

use tracer_common::Stream;

use crate::decode::LogChunk;

/// One complete line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub stream: Stream,
    pub fd: u32,
    pub ino: u64,
    /// When the line's first byte was written (CLOCK_MONOTONIC ns).
    pub mono_ns: u64,
    pub text: String,
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct StreamKey {
    pid: u32,
    fd: u32,
    ino: u64,
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    mono_ns: u64,
    tid: u32,
    comm: String,
    truncated: bool,
    /// The line overflowed the cap: drop bytes until its newline.
    discarding: bool,
    /// Next chunk offset expected within the current buffer.
    next_offset: u64,
    /// Bytes of the current buffer the kernel was going to copy.
    buffer_copied: u64,
    stream: Option<Stream>,
}

/// Bytes the kernel copies of one written buffer for a given line cap: one
/// more than the line, so a line of exactly `max_line` bytes still gets its
/// newline and is not reported as truncated.
pub fn kernel_copy_cap(max_line: usize) -> usize {
    max_line + 1
}

pub struct LineAssembler {
    max_line: usize,
    pending: HashMap<StreamKey, Pending>,
}

impl LineAssembler {
    /// `max_line` caps a line's length; the kernel copies
    /// [`kernel_copy_cap`] bytes of each buffer (set from the same value).
    /// copy cap (`MAX_BUFFER_BYTES`).
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line: max_line.max(1),
            pending: HashMap::new(),
        }
    }

    /// Feed one chunk; returns the lines it completed, oldest first.
    pub fn push(&mut self, chunk: &LogChunk) -> Vec<Line> {
        let key = StreamKey {
            pid: chunk.head.pid,
            fd: chunk.fd,
            ino: chunk.ino,
        };
        let max_line = self.max_line;
        let p = self.pending.entry(key).or_default();
        p.stream = Some(chunk.stream);
        let mut out = Vec::new();

        if chunk.offset == 0 {
            // A new buffer. If the previous one stopped early, bytes were lost
            // (ring full) and the pending line is incomplete.
            if p.next_offset < p.buffer_copied {
                p.truncated = true;
            }
            p.next_offset = 0;
            p.buffer_copied = chunk.buffer_len.min(kernel_copy_cap(max_line) as u64);
        } else if u64::from(chunk.offset) != p.next_offset {
            p.truncated = true;
        }
        p.next_offset = u64::from(chunk.offset) + chunk.data.len() as u64;

        for (i, segment) in chunk.data.split(|b| *b == b'\n').enumerate() {
            if i > 0 {
                // The previous segment ended with a newline.
                out.push(take_line(key, p));
            }
            append(p, segment, chunk, max_line);
        }

        // A buffer larger than the cap: the tail was never copied, so the
        // pending line cannot be completed reliably. Emit it as truncated.
        let buffer_done = p.next_offset >= p.buffer_copied;
        if buffer_done && chunk.buffer_len > p.buffer_copied && !p.bytes.is_empty() {
            p.truncated = true;
            out.push(take_line(key, p));
        }
        out
    }

    /// Emit what is pending for `pid` (the process exited).
    pub fn flush_pid(&mut self, pid: u32) -> Vec<Line> {
        let keys: Vec<StreamKey> = self
            .pending
            .keys()
            .filter(|k| k.pid == pid)
            .copied()
            .collect();
        let mut out = Vec::new();
        for key in keys {
            if let Some(mut p) = self.pending.remove(&key)
                && (!p.bytes.is_empty() || p.truncated)
            {
                out.push(take_line(key, &mut p));
            }
        }
        out.sort_by_key(|l| l.mono_ns);
        out
    }

    /// Emit everything pending (the tracer stops).
    pub fn flush_all(&mut self) -> Vec<Line> {
        let pids: Vec<u32> = self.pending.keys().map(|k| k.pid).collect();
        let mut out = Vec::new();
        for pid in pids {
            out.extend(self.flush_pid(pid));
        }
        out.sort_by_key(|l| l.mono_ns);
        out
    }
}

fn append(p: &mut Pending, segment: &[u8], chunk: &LogChunk, max_line: usize) {
    if p.bytes.is_empty() && !p.truncated && !p.discarding {
        p.mono_ns = chunk.head.mono_ns;
        p.tid = chunk.head.tid;
        p.comm.clone_from(&chunk.head.comm);
    }
    if p.discarding {
        return;
    }
    let room = max_line.saturating_sub(p.bytes.len());
    if segment.len() > room {
        p.bytes.extend_from_slice(&segment[..room]);
        p.truncated = true;
        p.discarding = true;
    } else {
        p.bytes.extend_from_slice(segment);
    }
}

fn take_line(key: StreamKey, p: &mut Pending) -> Line {
    let bytes = std::mem::take(&mut p.bytes);
    let line = Line {
        pid: key.pid,
        tid: p.tid,
        comm: std::mem::take(&mut p.comm),
        stream: p.stream.unwrap_or(Stream::Stdout),
        fd: key.fd,
        ino: key.ino,
        mono_ns: p.mono_ns,
        text: match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        },
        truncated: p.truncated,
    };
    p.truncated = false;
    p.discarding = false;
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Head, LogChunk};
    use tracer_common::EventKind;

    fn chunk(fd: u32, buffer_len: u64, offset: u32, data: &[u8], ts: u64) -> LogChunk {
        LogChunk {
            head: Head {
                kind: EventKind::Log,
                pid: 10,
                tid: 11,
                mono_ns: ts,
                comm: "node".into(),
            },
            fd,
            stream: if fd == 2 {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            buffer_len,
            offset,
            ino: 0,
            data: data.to_vec(),
        }
    }

    /// Feed each write as one chunk.
    fn writes(a: &mut LineAssembler, fd: u32, ws: &[&[u8]]) -> Vec<Line> {
        let mut out = Vec::new();
        for (i, w) in ws.iter().enumerate() {
            out.extend(a.push(&chunk(fd, w.len() as u64, 0, w, i as u64 + 1)));
        }
        out
    }

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn joins_partial_writes_and_splits_multi_line_writes() {
        let mut a = LineAssembler::new(1024);
        let lines = writes(
            &mut a,
            1,
            &[b"part-a", b"part-b", b"part-c\nnext\nlast", b"\n"],
        );
        assert_eq!(texts(&lines), ["part-apart-bpart-c", "next", "last"]);
        // The first line is stamped with its first write.
        assert_eq!(lines[0].mono_ns, 1);
        assert_eq!(lines[2].mono_ns, 3);
        assert!(
            lines
                .iter()
                .all(|l| !l.truncated && l.stream == Stream::Stdout)
        );
    }

    #[test]
    fn keeps_streams_apart() {
        let mut a = LineAssembler::new(1024);
        let mut lines = a.push(&chunk(1, 3, 0, b"out", 1));
        lines.extend(a.push(&chunk(2, 4, 0, b"err\n", 2)));
        lines.extend(a.push(&chunk(1, 1, 0, b"\n", 3)));
        assert_eq!(texts(&lines), ["err", "out"]);
        assert_eq!(lines[0].stream, Stream::Stderr);
    }

    #[test]
    fn utf8_split_across_chunks_stays_intact() {
        let text = "héllo wörld — 日本語 🎉\n".as_bytes();
        // Split inside the 4-byte emoji and inside a 3-byte character.
        let cut1 = text.len() - 4;
        let cut2 = 20;
        let mut a = LineAssembler::new(1024);
        let n = text.len() as u64;
        let mut lines = a.push(&chunk(1, n, 0, &text[..cut2], 1));
        lines.extend(a.push(&chunk(1, n, cut2 as u32, &text[cut2..cut1], 1)));
        lines.extend(a.push(&chunk(1, n, cut1 as u32, &text[cut1..], 1)));
        assert_eq!(texts(&lines), ["héllo wörld — 日本語 🎉"]);
    }

    #[test]
    fn long_line_in_chunks_comes_through_whole() {
        let mut line = vec![b'x'; 65536];
        line.push(b'\n');
        let mut a = LineAssembler::new(256 * 1024);
        let mut out = Vec::new();
        for (i, c) in line.chunks(4096).enumerate() {
            out.extend(a.push(&chunk(1, line.len() as u64, (i * 4096) as u32, c, 5)));
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].text.len(), 65536);
        assert!(!out[0].truncated);
    }

    #[test]
    fn line_over_the_cap_is_truncated_and_the_rest_dropped() {
        let mut a = LineAssembler::new(8);
        let lines = writes(&mut a, 1, &[b"0123456789abc\nok\n"]);
        // The kernel copies only 8 bytes of a buffer when the cap is 8; here
        // the chunk carries the whole buffer, as if the cap were larger.
        assert_eq!(texts(&lines), ["01234567", "ok"]);
        assert!(lines[0].truncated);
        assert!(!lines[1].truncated);
    }

    #[test]
    fn buffer_longer_than_kernel_cap_is_marked_truncated() {
        let mut a = LineAssembler::new(4);
        // The process wrote 10 bytes; the kernel copied the first 5.
        let lines = a.push(&chunk(1, 10, 0, b"abcde", 1));
        assert_eq!(texts(&lines), ["abcd"]);
        assert!(lines[0].truncated);
        let lines = writes(&mut a, 1, &[b"ok\n"]);
        assert_eq!(texts(&lines), ["ok"]);
        assert!(!lines[0].truncated);
    }

    #[test]
    fn line_of_exactly_the_cap_is_whole() {
        let mut a = LineAssembler::new(4);
        // 4 bytes + newline: the kernel copies cap + 1 = 5 bytes.
        let lines = a.push(&chunk(1, 5, 0, b"abcd\n", 1));
        assert_eq!(texts(&lines), ["abcd"]);
        assert!(!lines[0].truncated);
    }

    #[test]
    fn lost_chunk_marks_line_truncated() {
        let mut a = LineAssembler::new(1024);
        // Buffer of 12 bytes in 3 chunks of 4; the middle one was lost.
        let mut lines = a.push(&chunk(1, 12, 0, b"aaaa", 1));
        lines.extend(a.push(&chunk(1, 12, 8, b"cc\nd", 1)));
        lines.extend(writes(&mut a, 1, &[b"\n"]));
        assert_eq!(texts(&lines), ["aaaacc", "d"]);
        assert!(lines[0].truncated);
        assert!(!lines[1].truncated);
    }

    #[test]
    fn flush_emits_partial_lines() {
        let mut a = LineAssembler::new(1024);
        assert!(writes(&mut a, 1, &[b"no newline"]).is_empty());
        assert!(a.flush_pid(99).is_empty());
        let lines = a.flush_pid(10);
        assert_eq!(texts(&lines), ["no newline"]);
        assert!(a.flush_all().is_empty());
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        let mut a = LineAssembler::new(1024);
        let lines = writes(&mut a, 1, &[b"a\xffb\n"]);
        assert_eq!(texts(&lines), ["a\u{fffd}b"]);
    }
}
