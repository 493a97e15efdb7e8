//! Checked decoding of ring-buffer records into owned Rust values.
//!
//! Records are byte slices with no alignment guarantee, so every struct is
//! read with `read_unaligned` after a length check; nothing is transmuted.

use std::mem::size_of;

use thiserror::Error;
use tracer_common::{
    EventHeader, EventKind, FileOpenEvent, GcEvent, LogChunkHeader, LoopEvent, ProcEvent, ReadMark,
    SEG_BEFORE_ACCEPT, SEG_RECEIVED, SEG_SENT, SegmentHeader, Stream, TCP_FLAG_SEQ_KNOWN, TcpEvent,
};

/// One decoded ring record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Log(LogChunk),
    Segment(Segment),
    /// The process read connection `sock` up to `copied_seq` (exclusive).
    ReadMark {
        head: Head,
        sock: u64,
        copied_seq: u32,
    },
    Tcp(TcpRecord),
    Loop {
        head: Head,
        poll_ns: u64,
        busy_ns: u64,
    },
    Gc {
        head: Head,
        duration_ns: u64,
    },
    Exit {
        head: Head,
        exit_code: u32,
    },
    Exec {
        head: Head,
        /// The program exec'd, as the kernel resolved it.
        filename: String,
    },
    /// fd of `head.pid` now names `path` (as passed to openat).
    FileOpen {
        head: Head,
        fd: u32,
        path: String,
    },
}

impl Record {
    pub fn head(&self) -> &Head {
        match self {
            Record::Log(c) => &c.head,
            Record::Segment(s) => &s.head,
            Record::ReadMark { head, .. } => head,
            Record::Tcp(t) => &t.head,
            Record::Loop { head, .. }
            | Record::Gc { head, .. }
            | Record::Exit { head, .. }
            | Record::Exec { head, .. }
            | Record::FileOpen { head, .. } => head,
        }
    }
}

/// The common header, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub kind: EventKind,
    pub pid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds.
    pub mono_ns: u64,
    /// Empty when the kernel saw the event outside the owner's context.
    pub comm: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub head: Head,
    pub fd: u32,
    pub stream: Stream,
    pub buffer_len: u64,
    pub offset: u32,
    pub ino: u64,
    pub data: Vec<u8>,
}

/// One TCP segment of a traced connection (cgroup_skb capture).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub head: Head,
    pub sock: u64,
    /// Sequence number of the first payload byte.
    pub seq: u32,
    /// Payload bytes in the segment; `data` is a prefix of them.
    pub seg_len: u32,
    /// The traced socket sent it (else received).
    pub sent: bool,
    /// Received by a listener before its connection existed: `sock` is an
    /// id a later accept's `early_segment` names.
    pub before_accept: bool,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRecord {
    pub head: Head,
    pub saddr: std::net::IpAddr,
    pub daddr: std::net::IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub flags: u16,
    pub netns: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duration_ns: u64,
    /// Retransmit: TCP segments resent (see TcpEvent::segments), at least 1
    /// (an older probe, or a kernel without the BTF field, sends 0).
    pub segments: u32,
    /// tcp_sock.total_retrans when the event was emitted.
    pub total_retrans: u32,
    /// Connect/accept: sequence numbers of the first payload byte (sent,
    /// received), when the kernel could read them.
    pub first_seqs: Option<(u32, u32)>,
    /// Accept: id of the segment that reached the listener first, or 0.
    pub early_segment: u64,
    /// Identity of the kernel socket (joins payload chunks to this).
    pub sock: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need} bytes its kind needs")]
    Short { len: usize, need: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("unknown log stream {0}")]
    UnknownStream(u32),
    #[error("log chunk claims {claimed} data bytes but carries {carried}")]
    LogLength { claimed: usize, carried: usize },
    #[error(
        "segment claims {claimed} of {seg_len} payload bytes, carries {carried}, direction {dir}"
    )]
    SegmentLength {
        claimed: usize,
        seg_len: u32,
        carried: usize,
        dir: u32,
    },
}

fn read<T: Copy>(buf: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if buf.len() < need {
        return Err(DecodeError::Short {
            len: buf.len(),
            need,
        });
    }
    // SAFETY: length checked above; T is a #[repr(C)] POD wire type for which
    // every bit pattern is valid, and read_unaligned has no alignment needs.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// A NUL-terminated kernel string (comm, path) as text.
fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn head(h: &EventHeader, kind: EventKind) -> Head {
    Head {
        kind,
        pid: h.pid,
        tid: h.tid,
        mono_ns: h.ts_ns,
        comm: comm_to_string(&h.comm),
    }
}

fn ip(family: u16, raw: &[u8; 16]) -> std::net::IpAddr {
    if family == tracer_common::AF_INET {
        std::net::IpAddr::from([raw[0], raw[1], raw[2], raw[3]])
    } else {
        let v6 = std::net::Ipv6Addr::from(*raw);
        // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d; show the v4.
        match v6.to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => v6.into(),
        }
    }
}

/// Decode one ring record.
pub fn decode(buf: &[u8]) -> Result<Record, DecodeError> {
    let header: EventHeader = read(buf)?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let h = head(&header, kind);
    Ok(match kind {
        EventKind::Log => {
            let c: LogChunkHeader = read(buf)?;
            let stream = Stream::from_u32(c.stream).ok_or(DecodeError::UnknownStream(c.stream))?;
            let data = &buf[size_of::<LogChunkHeader>()..];
            let len = c.len as usize;
            if data.len() < len {
                return Err(DecodeError::LogLength {
                    claimed: len,
                    carried: data.len(),
                });
            }
            Record::Log(LogChunk {
                head: h,
                fd: c.fd,
                stream,
                buffer_len: c.buffer_len,
                offset: c.offset,
                ino: c.ino,
                data: data[..len].to_vec(),
            })
        }
        EventKind::Segment => {
            let s: SegmentHeader = read(buf)?;
            // The record is reserved in a size class: `len` bytes of data,
            // then slack.
            let data = &buf[size_of::<SegmentHeader>()..];
            let len = s.len as usize;
            if data.len() < len
                || len > s.seg_len as usize
                || ![SEG_SENT, SEG_RECEIVED, SEG_RECEIVED | SEG_BEFORE_ACCEPT].contains(&s.dir)
            {
                return Err(DecodeError::SegmentLength {
                    claimed: len,
                    seg_len: s.seg_len,
                    carried: data.len(),
                    dir: s.dir,
                });
            }
            Record::Segment(Segment {
                head: h,
                sock: s.sock,
                seq: s.seq,
                seg_len: s.seg_len,
                sent: s.dir == SEG_SENT,
                before_accept: s.dir & SEG_BEFORE_ACCEPT != 0,
                data: data[..len].to_vec(),
            })
        }
        EventKind::ReadMark => {
            let m: ReadMark = read(buf)?;
            Record::ReadMark {
                head: h,
                sock: m.sock,
                copied_seq: m.copied_seq,
            }
        }
        EventKind::TcpConnect
        | EventKind::TcpAccept
        | EventKind::TcpClose
        | EventKind::TcpRetransmit
        | EventKind::ConnAdopt => {
            let t: TcpEvent = read(buf)?;
            Record::Tcp(TcpRecord {
                head: h,
                saddr: ip(t.family, &t.saddr),
                daddr: ip(t.family, &t.daddr),
                sport: t.sport,
                dport: t.dport,
                flags: t.flags,
                netns: t.netns,
                bytes_sent: t.bytes_sent,
                bytes_received: t.bytes_received,
                duration_ns: t.duration_ns,
                segments: if kind == EventKind::TcpRetransmit {
                    t.segments.max(1)
                } else {
                    t.segments
                },
                total_retrans: t.total_retrans,
                first_seqs: (t.flags & TCP_FLAG_SEQ_KNOWN != 0)
                    .then_some((t.sent_seq0, t.received_seq0)),
                early_segment: t.early_segment,
                sock: t.sock,
            })
        }
        EventKind::Loop => {
            let l: LoopEvent = read(buf)?;
            Record::Loop {
                head: h,
                poll_ns: l.poll_ns,
                busy_ns: l.busy_ns,
            }
        }
        EventKind::Gc => {
            let g: GcEvent = read(buf)?;
            Record::Gc {
                head: h,
                duration_ns: g.duration_ns,
            }
        }
        EventKind::Exit => {
            let p: ProcEvent = read(buf)?;
            Record::Exit {
                head: h,
                exit_code: p.exit_code,
            }
        }
        EventKind::Exec => {
            let f: FileOpenEvent = read(buf)?;
            Record::Exec {
                head: h,
                filename: comm_to_string(&f.path),
            }
        }
        // Read by `tracer probe` (probe/session.rs), whose programs the
        // capture pipeline never attaches.
        EventKind::Probe => return Err(DecodeError::UnknownKind(header.kind)),
        EventKind::FileOpen => {
            let f: FileOpenEvent = read(buf)?;
            Record::FileOpen {
                head: h,
                fd: f.fd,
                path: comm_to_string(&f.path),
            }
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tracer_common::{AF_INET, AF_INET6};

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a POD wire struct as bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    pub(crate) fn header(kind: EventKind, pid: u32, ts: u64) -> EventHeader {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"node");
        EventHeader {
            kind: kind as u32,
            pid,
            tid: pid + 1,
            _pad: 0,
            ts_ns: ts,
            comm,
        }
    }

    /// Wire bytes of a log chunk, as the probe would write them.
    pub(crate) fn log_record(
        pid: u32,
        fd: u32,
        stream: Stream,
        offset: u32,
        data: &[u8],
    ) -> Vec<u8> {
        let h = LogChunkHeader {
            hdr: header(EventKind::Log, pid, 7),
            fd,
            stream: stream as u32,
            buffer_len: data.len() as u64 + offset as u64,
            offset,
            len: data.len() as u32,
            ino: 0,
        };
        let mut v = bytes_of(&h);
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn decodes_log_chunk_at_odd_alignment() {
        let rec = log_record(42, 1, Stream::Stdout, 0, "héllo\n".as_bytes());
        // Shift by one byte so the struct is misaligned in memory.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&rec);
        match decode(&shifted[1..]).unwrap() {
            Record::Log(c) => {
                assert_eq!(c.head.pid, 42);
                assert_eq!(c.head.tid, 43);
                assert_eq!(c.head.comm, "node");
                assert_eq!(c.stream, Stream::Stdout);
                assert_eq!(c.data, "héllo\n".as_bytes());
            }
            other => panic!("wrong record {other:?}"),
        }
    }

    #[test]
    fn decodes_tcp_v4_and_mapped_v6() {
        let mut t = TcpEvent {
            hdr: header(EventKind::TcpClose, 9, 1),
            family: AF_INET,
            sport: 8080,
            dport: 51000,
            flags: 0,
            netns: 4026531840,
            segments: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            bytes_sent: 120,
            bytes_received: 78,
            duration_ns: 5,
            sock: 0xffff_8881_0000_1000,
            sent_seq0: 0,
            received_seq0: 0,
            early_segment: 0,
            total_retrans: 3,
            _pad: 0,
        };
        t.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let Record::Tcp(r) = decode(&bytes_of(&t)).unwrap() else {
            panic!("not tcp")
        };
        assert_eq!(r.saddr.to_string(), "127.0.0.1");
        assert_eq!(r.daddr.to_string(), "10.0.0.2");
        assert_eq!(
            (
                r.sport,
                r.dport,
                r.bytes_sent,
                r.bytes_received,
                r.total_retrans
            ),
            (8080, 51000, 120, 78, 3)
        );

        t.family = AF_INET6;
        t.saddr = std::net::Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]).octets();
        t.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        let Record::Tcp(r) = decode(&bytes_of(&t)).unwrap() else {
            panic!("not tcp")
        };
        assert_eq!(r.saddr.to_string(), "127.0.0.1");
        assert_eq!(r.daddr.to_string(), "::1");
    }

    #[test]
    fn rejects_short_unknown_and_lying_records() {
        assert!(matches!(decode(&[1, 0, 0]), Err(DecodeError::Short { .. })));
        let h = header(EventKind::Log, 1, 1);
        let mut bad = bytes_of(&h);
        bad[0] = 99;
        assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(99)));
        let mut rec = log_record(1, 1, Stream::Stdout, 0, b"abc");
        rec.truncate(rec.len() - 1);
        assert!(matches!(decode(&rec), Err(DecodeError::LogLength { .. })));
        let h = header(EventKind::Gc, 1, 1);
        assert!(matches!(
            decode(&bytes_of(&h)),
            Err(DecodeError::Short { .. })
        ));
    }
}
