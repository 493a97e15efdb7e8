//! One direction of a TCP connection put back in order from the segments the
//! cgroup_skb programs report (tracer-ebpf/src/probes/skb.rs).
//!
//! The programs report a segment each time it crosses the socket's hook:
//! an egress retransmit is reported again, and on ingress a duplicate or
//! out-of-order segment is reported as it arrives, before TCP sorts it out.
//! Each record carries the sequence number of its first payload byte, its
//! payload length, and a copied prefix of the payload. This turns them into
//! the stream the HTTP parser expects: every byte once, in sequence order,
//! as pieces (`captured` prefix of `total` bytes) that keep their segment's
//! timestamp.
//!
//! - The stream starts where the kernel said it does when the connection
//!   was seen opening ([`Reassembly::start_at`]), so a first segment that
//!   arrives late is still placed first; otherwise (a connection open
//!   before attach) the first segment seen starts it.
//! - Bytes before the next expected one (retransmits, duplicates, the
//!   overlapping part of a repacketised segment) are dropped and counted as
//!   duplicates.
//! - A segment beyond the next expected byte waits for the hole before it
//!   to be filled. Sent segments leave the socket in order, so a hole on the
//!   sent side means a record was lost (the ring was full) and is given up
//!   at once. On the received side TCP itself fills the hole, however many
//!   retransmits (with exponential backoff) that takes, so the segment is
//!   held until the hole is filled, the process has read past the hole
//!   (`read_up_to`: the kernel delivered bytes whose segment was never
//!   reported), too much is held, it waited very long, or the connection
//!   closes.
//!   A hole given up is fed to the parser as a gap (uncaptured bytes) and
//!   counted in `lost_bytes`.

/// Most segments held waiting for a hole per direction (a receive window's
/// worth).
const MAX_HELD: usize = 1024;
/// Most captured bytes held per direction.
const MAX_HELD_BYTES: usize = 2 * 1024 * 1024;
/// A hole older than this (by the timestamps of the segments behind it) is
/// given up. Only a backstop: a lost record shows much sooner, when the
/// process reads past it; a retransmit can take seconds on a lossy link.
const MAX_HOLD_NS: u64 = 20_000_000_000;

/// A run of bytes for the parser: `captured` is a prefix of `total` bytes;
/// `captured` empty and `total > 0` is a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub mono_ns: u64,
    pub captured: Vec<u8>,
    pub total: usize,
}

#[derive(Debug, Clone)]
struct Held {
    seq: u32,
    seg_len: u32,
    mono_ns: u64,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Reassembly {
    /// Sequence number of the next byte owed to the parser.
    next: Option<u32>,
    /// Segments ahead of `next`, in arrival order.
    held: Vec<Held>,
    held_bytes: usize,
    /// Bytes given up (holes fed as gaps).
    pub lost_bytes: u64,
    /// Bytes seen more than once (dropped).
    pub duplicate_bytes: u64,
}

/// Signed distance from `b` to `a` in sequence space.
fn after(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

impl Reassembly {
    /// A segment: `data` is the copied prefix of its `seg_len` payload
    /// bytes. `in_order_only`: holes are never filled later (the sent side).
    pub fn push(
        &mut self,
        seq: u32,
        seg_len: u32,
        mono_ns: u64,
        data: &[u8],
        in_order_only: bool,
    ) -> Vec<Piece> {
        let mut out = Vec::new();
        if seg_len == 0 {
            return out;
        }
        let next = *self.next.get_or_insert(seq);
        if after(seq, next) > 0 {
            self.held_bytes += data.len();
            self.held.push(Held {
                seq,
                seg_len,
                mono_ns,
                data: data.to_vec(),
            });
            let oldest = self.held.iter().map(|h| h.mono_ns).min().unwrap_or(mono_ns);
            if in_order_only
                || self.held.len() > MAX_HELD
                || self.held_bytes > MAX_HELD_BYTES
                || mono_ns.saturating_sub(oldest) > MAX_HOLD_NS
            {
                self.give_up_hole(&mut out);
            }
        } else {
            self.deliver(seq, seg_len, mono_ns, data, &mut out);
        }
        self.drain(&mut out);
        out
    }

    /// The stream's first byte has sequence number `seq` (a new
    /// connection's, from the kernel). Before any segment only.
    pub fn start_at(&mut self, seq: u32) {
        if self.next.is_none() {
            self.next = Some(seq);
        }
    }

    /// Sequence number of the next byte owed to the parser (the start of
    /// the next piece `push` returns), once a segment was seen.
    pub fn next(&self) -> Option<u32> {
        self.next
    }

    /// The common case without copying: a segment that starts exactly at
    /// the next expected byte while nothing is held. Takes it (the caller
    /// feeds it to the parser as it is) and returns true; false means: use
    /// [`Reassembly::push`].
    pub fn take_in_order(&mut self, seq: u32, seg_len: u32) -> bool {
        if !self.held.is_empty() || seg_len == 0 {
            return false;
        }
        match self.next {
            Some(next) if next != seq => false,
            _ => {
                self.next = Some(seq.wrapping_add(seg_len));
                true
            }
        }
    }

    /// The process has read every byte before `seq` (received side): TCP
    /// delivered them, so a hole before `seq` will never be filled — its
    /// record was lost. Gives such holes up, as gaps, with what follows.
    pub fn read_up_to(&mut self, seq: u32, mono_ns: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        while let Some(next) = self.next
            && after(seq, next) > 0
        {
            if self.held.is_empty() {
                // Nothing behind the hole yet: its bytes are gone as well.
                let hole = after(seq, next);
                self.lost_bytes += hole as u64;
                out.push(Piece {
                    mono_ns,
                    captured: Vec::new(),
                    total: hole as usize,
                });
                self.next = Some(seq);
                break;
            }
            self.give_up_hole(&mut out);
            self.drain(&mut out);
        }
        out
    }

    /// The connection closed: what is still held, holes given up.
    pub fn flush(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        while !self.held.is_empty() {
            self.give_up_hole(&mut out);
            self.drain(&mut out);
        }
        out
    }

    /// Skip to the held segment nearest to `next`, feeding the hole as a gap.
    fn give_up_hole(&mut self, out: &mut Vec<Piece>) {
        let Some(next) = self.next else { return };
        let Some(first) = self.held.iter().min_by_key(|h| after(h.seq, next)).cloned() else {
            return;
        };
        let hole = after(first.seq, next);
        if hole > 0 {
            self.lost_bytes += hole as u64;
            out.push(Piece {
                mono_ns: first.mono_ns,
                captured: Vec::new(),
                total: hole as usize,
            });
            self.next = Some(first.seq);
        }
    }

    /// Deliver every held segment that now starts at or before `next`.
    fn drain(&mut self, out: &mut Vec<Piece>) {
        loop {
            let Some(next) = self.next else { return };
            let Some(i) = self.held.iter().position(|h| after(h.seq, next) <= 0) else {
                return;
            };
            let h = self.held.swap_remove(i);
            self.held_bytes -= h.data.len();
            self.deliver(h.seq, h.seg_len, h.mono_ns, &h.data, out);
        }
    }

    /// A segment starting at or before `next`: its new bytes, if any.
    fn deliver(&mut self, seq: u32, seg_len: u32, mono_ns: u64, data: &[u8], out: &mut Vec<Piece>) {
        let next = self.next.unwrap_or(seq);
        let skip = (-after(seq, next)).max(0) as u32;
        if skip >= seg_len {
            self.duplicate_bytes += u64::from(seg_len);
            return;
        }
        self.duplicate_bytes += u64::from(skip);
        let captured = data.get(skip as usize..).unwrap_or(&[]).to_vec();
        let total = seg_len - skip;
        out.push(Piece {
            mono_ns,
            captured,
            total: total as usize,
        });
        self.next = Some(next.wrapping_add(total));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(pieces: &[Piece]) -> Vec<u8> {
        pieces.iter().flat_map(|p| p.captured.clone()).collect()
    }

    #[test]
    fn in_order_passes_through() {
        let mut r = Reassembly::default();
        let a = r.push(1000, 3, 1, b"GET", false);
        let b = r.push(1003, 4, 2, b" / H", false);
        assert_eq!(bytes(&a), b"GET");
        assert_eq!(bytes(&b), b" / H");
        assert_eq!(b[0].mono_ns, 2);
        assert_eq!((r.lost_bytes, r.duplicate_bytes), (0, 0));
    }

    #[test]
    fn retransmits_and_overlaps_give_each_byte_once() {
        let mut r = Reassembly::default();
        let mut all = Vec::new();
        all.extend(r.push(10, 5, 1, b"hello", true));
        all.extend(r.push(10, 5, 2, b"hello", true)); // retransmit
        all.extend(r.push(13, 5, 3, b"lo wo", true)); // repacketised overlap
        all.extend(r.push(18, 3, 4, b"rld", true));
        assert_eq!(bytes(&all), b"hello world");
        assert_eq!(r.duplicate_bytes, 5 + 2);
        assert_eq!(r.lost_bytes, 0);
    }

    #[test]
    fn a_known_start_places_a_late_first_segment_first() {
        // Without a start, the second segment would start the stream and
        // the first would be dropped as a duplicate.
        let mut r = Reassembly::default();
        r.start_at(u32::MAX - 1);
        assert!(r.push(2, 3, 1, b"/ H", false).is_empty());
        let all = r.push(u32::MAX - 1, 4, 2, b"GET ", false);
        assert_eq!(bytes(&all), b"GET / H");
        assert_eq!((r.lost_bytes, r.duplicate_bytes), (0, 0));
        // Once started, a later start is ignored.
        r.start_at(7);
        assert_eq!(r.next(), Some(5));
    }

    #[test]
    fn out_of_order_received_is_held_until_the_hole_fills() {
        let mut r = Reassembly::default();
        let mut all = r.push(0, 2, 1, b"ab", false);
        assert!(r.push(4, 2, 2, b"ef", false).is_empty());
        assert!(r.push(6, 2, 3, b"gh", false).is_empty());
        all.extend(r.push(2, 2, 4, b"cd", false));
        assert_eq!(bytes(&all), b"abcdefgh");
        // Each piece keeps its segment's timestamp.
        assert_eq!(
            all.iter().map(|p| p.mono_ns).collect::<Vec<_>>(),
            [1, 4, 2, 3]
        );
        assert_eq!(r.lost_bytes, 0);
    }

    #[test]
    fn a_hole_on_the_sent_side_is_lost_at_once() {
        let mut r = Reassembly::default();
        r.push(0, 2, 1, b"ab", true);
        let out = r.push(5, 2, 2, b"fg", true);
        assert_eq!(
            out,
            [
                Piece {
                    mono_ns: 2,
                    captured: vec![],
                    total: 3
                },
                Piece {
                    mono_ns: 2,
                    captured: b"fg".to_vec(),
                    total: 2
                },
            ]
        );
        assert_eq!(r.lost_bytes, 3);
        // The missing bytes arriving late are old news.
        assert!(r.push(2, 3, 3, b"cde", true).is_empty());
        assert_eq!(r.duplicate_bytes, 3);
    }

    #[test]
    fn in_order_fast_path_agrees_with_push() {
        let mut r = Reassembly::default();
        assert!(r.take_in_order(100, 5));
        assert!(r.take_in_order(105, 3));
        // A retransmit is not in order: push drops it.
        assert!(!r.take_in_order(100, 5));
        assert!(r.push(100, 5, 1, b"hello", true).is_empty());
        // Ahead of a hole, then held: not in order either.
        assert!(!r.take_in_order(110, 2));
        assert!(r.push(110, 2, 2, b"yz", false).is_empty());
        assert!(!r.take_in_order(108, 2));
        let out = r.push(108, 2, 3, b"wx", false);
        assert_eq!(bytes(&out), b"wxyz");
        assert!(r.take_in_order(112, 1));
        assert_eq!(r.duplicate_bytes, 5);
    }

    #[test]
    fn held_too_long_or_at_close_is_given_up() {
        let mut r = Reassembly::default();
        r.push(0, 1, 0, b"a", false);
        assert!(r.push(5, 1, 1, b"f", false).is_empty());
        let out = r.push(9, 1, 1 + MAX_HOLD_NS + 1, b"j", false);
        assert_eq!(bytes(&out), b"f");
        assert_eq!(r.lost_bytes, 4);
        let out = r.flush();
        assert_eq!(out[0].total, 3);
        assert_eq!(bytes(&out), b"j");
        assert_eq!(r.lost_bytes, 7);
    }

    #[test]
    fn a_hole_the_process_read_past_is_given_up() {
        let mut r = Reassembly::default();
        r.start_at(100);
        assert!(r.push(103, 2, 1, b"de", false).is_empty());
        // A read up to 102 only: the hole 100..103 may still be filled.
        assert!(r.read_up_to(100, 2).is_empty());
        assert_eq!(r.lost_bytes, 0);
        // Read past it: the hole's record was lost.
        let out = r.read_up_to(104, 3);
        assert_eq!(
            out.iter().map(|p| p.total).collect::<Vec<_>>(),
            [3, 2],
            "the 3-byte hole as a gap, then the held segment"
        );
        assert_eq!(bytes(&out), b"de");
        assert_eq!(r.lost_bytes, 3);
        // Read past everything seen: those bytes are gone too.
        let out = r.read_up_to(110, 4);
        assert_eq!(
            out,
            [Piece {
                mono_ns: 4,
                captured: vec![],
                total: 5
            }]
        );
        assert_eq!((r.lost_bytes, r.next()), (8, Some(110)));
    }

    #[test]
    fn uncaptured_tails_and_wraparound() {
        let mut r = Reassembly::default();
        let start = u32::MAX - 2;
        // 10 payload bytes, 4 copied; then a retransmit overlapping the
        // uncaptured part.
        let a = r.push(start, 10, 1, b"abcd", true);
        assert_eq!(
            a,
            [Piece {
                mono_ns: 1,
                captured: b"abcd".to_vec(),
                total: 10
            }]
        );
        let b = r.push(start.wrapping_add(8), 6, 2, b"ijklmn", true);
        assert_eq!(
            b,
            [Piece {
                mono_ns: 2,
                captured: b"klmn".to_vec(),
                total: 4
            }]
        );
        assert_eq!(r.duplicate_bytes, 2);
    }
}
