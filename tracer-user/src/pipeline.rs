//! Turning decoded ring records into public events: line reassembly,
//! wall-clock time, command names, file paths, loss accounting and counts.
//! Pure bookkeeping, no I/O except /proc lookups, so every front end shares
//! it.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use tracer_common::{EventKind, Stream, TCP_FLAG_FAILED, TCP_FLAG_PREEXISTING};

use crate::{
    conns::{Connections, Finished, Payload, SegmentIn},
    decode::{Head, Record, TcpRecord},
    event::{Event, EventData, LossStage, StreamName, Tuple},
    http::Direction,
    lines::{Line, LineAssembler},
    retransmits::RetransmitLedger,
};

/// CLOCK_MONOTONIC -> wall clock, measured once at start.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl WallClock {
    /// `shift_ns` moves every timestamp (tests simulate skewed hosts with it).
    pub fn new(shift_ns: i64) -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono + shift_ns as i128,
        }
    }

    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }

    pub fn now_ns(&self) -> u64 {
        self.wall_ns(clock_ns(libc::CLOCK_MONOTONIC) as u64)
    }
}

pub struct Pipeline {
    host: String,
    clock: WallClock,
    lines: LineAssembler,
    comms: HashMap<u32, String>,
    paths: HashMap<(u32, u32, u64), String>,
    /// Addresses of connections open before attach, by (pid, netns, local
    /// port, remote port).
    preexisting: HashMap<(u32, u32, u16, u16), (SocketAddr, SocketAddr)>,
    /// Paths from openat records, by (pid, fd); newer opens of a reused fd
    /// replace older ones, and records arrive in order.
    opened: HashMap<(u32, u32), String>,
    ring_lost_seen: HashMap<EventKind, u64>,
    conns: Connections,
    counts: BTreeMap<&'static str, u64>,
    lost: BTreeMap<LossStage, u64>,
    retransmits: RetransmitLedger,
}

/// Decoded exit status: (exit_code, signal).
pub fn exit_status(raw: u32) -> (Option<i32>, Option<i32>) {
    let signal = (raw & 0x7f) as i32;
    if signal != 0 {
        (None, Some(signal))
    } else {
        (Some(((raw >> 8) & 0xff) as i32), None)
    }
}

impl Pipeline {
    pub fn new(host: String, clock: WallClock, max_line: usize) -> Self {
        Self {
            host: host.clone(),
            clock,
            lines: LineAssembler::new(max_line),
            comms: HashMap::new(),
            paths: HashMap::new(),
            opened: HashMap::new(),
            preexisting: HashMap::new(),
            ring_lost_seen: HashMap::new(),
            conns: Connections::new(&host, clock.now_ns()),
            counts: BTreeMap::new(),
            lost: BTreeMap::new(),
            retransmits: RetransmitLedger::default(),
        }
    }

    /// Events for one record (none, while a line is incomplete).
    pub fn on_record(&mut self, record: Record) -> Vec<Event> {
        let events = match record {
            Record::Log(chunk)
                if matches!(
                    chunk.stream,
                    Stream::SocketSent
                        | Stream::SocketReceived
                        | Stream::TlsSent
                        | Stream::TlsReceived
                ) =>
            {
                self.on_socket_chunk(chunk)
            }
            Record::Segment(seg) if seg.before_accept => {
                self.conns.before_accept(seg);
                Vec::new()
            }
            Record::Segment(seg) => {
                let dir = if seg.sent {
                    Direction::Sent
                } else {
                    Direction::Received
                };
                let done = self.conns.segment(
                    seg.head.pid,
                    seg.sock,
                    SegmentIn {
                        dir,
                        mono_ns: seg.head.mono_ns,
                        seq: seg.seq,
                        seg_len: seg.seg_len,
                        captured: &seg.data,
                    },
                );
                done.into_iter().map(|f| self.http_event(f)).collect()
            }
            Record::ReadMark {
                head,
                sock,
                copied_seq,
            } => {
                let done = self
                    .conns
                    .read_mark(head.pid, sock, copied_seq, head.mono_ns);
                done.into_iter().map(|f| self.http_event(f)).collect()
            }
            Record::Log(chunk) => {
                let lines = self.lines.push(&chunk);
                lines.into_iter().map(|l| self.line_event(l)).collect()
            }
            Record::Tcp(t) if t.head.kind == EventKind::ConnAdopt => {
                self.on_adopt(t);
                Vec::new()
            }
            Record::Tcp(mut t) => {
                let mut out = Vec::new();
                let mut probe_lost = 0;
                match t.head.kind {
                    EventKind::TcpConnect | EventKind::TcpAccept => {
                        let (pid, sk) = (t.head.pid, t.sock);
                        self.conns.opened(pid, sk, tuple_of(&t), t.first_seqs);
                        if t.head.kind == EventKind::TcpConnect {
                            self.retransmits.connected(pid, sk);
                        } else {
                            self.retransmits.seen_from(pid, sk, t.total_retrans);
                        }
                        if t.early_segment != 0 {
                            let done = self.conns.claim_before_accept(pid, sk, t.early_segment);
                            out.extend(done.into_iter().map(|f| self.http_event(f)));
                        }
                    }
                    EventKind::TcpClose => {
                        // An active close has given the local port back by
                        // the time the socket reaches CLOSE; the connection
                        // still has it from when it opened.
                        if t.sport == 0
                            && let Some(known) = self.conns.tuple(t.head.pid, t.sock)
                        {
                            t.sport = known.sport;
                        }
                        // Requests still open on the connection end with it.
                        let done = self.conns.closed(t.head.pid, t.sock, t.head.mono_ns);
                        out.extend(done.into_iter().map(|f| self.http_event(f)));
                        probe_lost = self.retransmits.closed(t.head.pid, t.sock, t.total_retrans);
                    }
                    EventKind::TcpRetransmit => {
                        self.retransmits
                            .retransmitted(t.head.pid, t.sock, t.segments);
                    }
                    _ => {}
                }
                out.push(self.tcp_event(t));
                if probe_lost > 0 {
                    out.push(self.loss(probe_lost, LossStage::Probe, Some("tcp_retransmit")));
                }
                out
            }
            Record::Loop {
                head,
                poll_ns,
                busy_ns,
            } => vec![self.event(&head, EventData::Loop { poll_ns, busy_ns })],
            Record::Gc { head, duration_ns } => {
                vec![self.event(&head, EventData::Gc { duration_ns })]
            }
            Record::Exec { head, filename } => {
                self.comms.remove(&head.pid);
                vec![self.event(&head, EventData::Exec { exe: filename })]
            }
            Record::FileOpen { head, fd, path } => {
                let path = if path.starts_with('/') {
                    path
                } else {
                    // Relative to the process's working directory.
                    match std::fs::read_link(format!("/proc/{}/cwd", head.pid)) {
                        Ok(cwd) => cwd.join(&path).display().to_string(),
                        Err(_) => path,
                    }
                };
                self.opened.insert((head.pid, fd), path);
                Vec::new()
            }
            Record::Exit { head, exit_code } => {
                // Lines still pending belong before the exit.
                let mut out = self.flush_pid(head.pid);
                let (exit_code, signal) = exit_status(exit_code);
                out.push(self.event(&head, EventData::Exit { exit_code, signal }));
                self.forget_pid(head.pid);
                return self.counted(out);
            }
        };
        self.counted(events)
    }

    /// Keep the first `bytes` of HTTP bodies in `http` events.
    pub fn set_body_capture(&mut self, bytes: usize) {
        self.conns.body_capture = bytes;
    }

    /// Remember the addresses of connections `pid` had open before attach
    /// (the kernel reports only their ports when it adopts them).
    pub fn note_preexisting(&mut self, pid: u32, conns: &[(u32, SocketAddr, SocketAddr)]) {
        for (netns, local, remote) in conns {
            self.preexisting.insert(
                (pid, *netns, local.port(), remote.port()),
                (*local, *remote),
            );
        }
    }

    /// Payload of a traced connection (HTTP parsing).
    fn on_socket_chunk(&mut self, chunk: crate::decode::LogChunk) -> Vec<Event> {
        let dir = match chunk.stream {
            Stream::SocketSent | Stream::TlsSent => Direction::Sent,
            _ => Direction::Received,
        };
        let tls = matches!(chunk.stream, Stream::TlsSent | Stream::TlsReceived);
        let payload = Payload {
            tls,
            dir,
            mono_ns: chunk.head.mono_ns,
            captured: &chunk.data,
            total: chunk.buffer_len as usize,
        };
        let done = self.conns.data(chunk.head.pid, chunk.ino, payload);
        done.into_iter().map(|f| self.http_event(f)).collect()
    }

    /// A connection open before attach was first used: the kernel knows
    /// its ports, the /proc seed its addresses.
    fn on_adopt(&mut self, t: TcpRecord) {
        let key = (t.head.pid, t.netns, t.sport, t.dport);
        let tuple = match self.preexisting.get(&key) {
            Some((local, remote)) => Tuple {
                saddr: local.ip(),
                sport: local.port(),
                daddr: remote.ip(),
                dport: remote.port(),
            },
            None => tuple_of(&t),
        };
        self.conns.opened(t.head.pid, t.sock, tuple, None);
        self.retransmits
            .seen_from(t.head.pid, t.sock, t.total_retrans);
    }

    fn http_event(&mut self, f: Finished) -> Event {
        let head = Head {
            kind: EventKind::TcpConnect,
            pid: f.pid,
            tid: f.pid,
            mono_ns: f.start_mono_ns,
            comm: String::new(),
        };
        self.event(&head, EventData::Http(Box::new(f.exchange)))
    }

    /// An exit we learned of without the kernel's record (it was lost).
    pub fn synthetic_exit(&mut self, pid: u32) -> Vec<Event> {
        let mut out = self.flush_pid(pid);
        let comm = self.comm_of(pid, "");
        out.push(Event {
            ts_ns: self.clock.now_ns(),
            host: self.host.clone(),
            pid,
            tid: pid,
            comm,
            data: EventData::Exit {
                exit_code: None,
                signal: None,
            },
        });
        self.forget_pid(pid);
        self.counted(out)
    }

    /// `lost` events for ring reservations that failed since the last call.
    /// `totals` are the kernel's cumulative per-kind counts.
    pub fn on_ring_losses(&mut self, totals: &[(EventKind, u64)]) -> Vec<Event> {
        let mut out = Vec::new();
        let parse = std::mem::take(&mut self.conns.parse_losses);
        if parse > 0 {
            out.push(self.loss(parse, LossStage::Parse, Some("http")));
        }
        let capture = std::mem::take(&mut self.conns.capture_losses);
        if capture > 0 {
            out.push(self.loss(capture, LossStage::Capture, Some("http")));
        }
        for (kind, total) in totals {
            let seen = self.ring_lost_seen.entry(*kind).or_insert(0);
            if *total > *seen {
                let count = *total - *seen;
                *seen = *total;
                if *kind == EventKind::TcpRetransmit {
                    self.retransmits.ring_lost(count);
                }
                out.push(self.loss(count, LossStage::Ring, Some(kind_name(*kind))));
            }
        }
        self.counted(out)
    }

    /// `lost` event for records user space could not decode.
    pub fn on_decode_errors(&mut self, count: u64) -> Vec<Event> {
        let out = vec![self.loss(count, LossStage::Decode, None)];
        self.counted(out)
    }

    fn loss(&mut self, count: u64, stage: LossStage, for_kind: Option<&str>) -> Event {
        *self.lost.entry(stage).or_insert(0) += count;
        Event {
            ts_ns: self.clock.now_ns(),
            host: self.host.clone(),
            pid: 0,
            tid: 0,
            comm: String::new(),
            data: EventData::Lost {
                count,
                stage,
                for_kind: for_kind.map(str::to_string),
            },
        }
    }

    pub fn flush_pid(&mut self, pid: u32) -> Vec<Event> {
        let lines = self.lines.flush_pid(pid);
        let out = lines.into_iter().map(|l| self.line_event(l)).collect();
        self.counted(out)
    }

    pub fn flush_all(&mut self) -> Vec<Event> {
        let lines = self.lines.flush_all();
        let out = lines.into_iter().map(|l| self.line_event(l)).collect();
        self.counted(out)
    }

    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }

    pub fn lost(&self) -> &BTreeMap<LossStage, u64> {
        &self.lost
    }

    fn counted(&mut self, events: Vec<Event>) -> Vec<Event> {
        for e in &events {
            *self.counts.entry(e.data.kind()).or_insert(0) += 1;
        }
        events
    }

    fn forget_pid(&mut self, pid: u32) {
        self.comms.remove(&pid);
        self.paths.retain(|(p, _, _), _| *p != pid);
        self.opened.retain(|(p, _), _| *p != pid);
        self.conns.forget_pid(pid);
    }

    /// The kernel's comm when it had one, else /proc, cached per process.
    fn comm_of(&mut self, pid: u32, kernel_comm: &str) -> String {
        if !kernel_comm.is_empty() {
            return kernel_comm.to_string();
        }
        self.comms
            .entry(pid)
            .or_insert_with(|| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|s| s.trim_end().to_string())
                    .unwrap_or_default()
            })
            .clone()
    }

    fn event(&mut self, head: &Head, data: EventData) -> Event {
        Event {
            ts_ns: self.clock.wall_ns(head.mono_ns),
            host: self.host.clone(),
            pid: head.pid,
            tid: head.tid,
            comm: self.comm_of(head.pid, &head.comm),
            data,
        }
    }

    fn line_event(&mut self, line: Line) -> Event {
        let (stream, path) = match line.stream {
            Stream::Stdout => (StreamName::Stdout, None),
            Stream::Stderr => (StreamName::Stderr, None),
            Stream::File => (
                StreamName::File,
                Some(self.path_of(line.pid, line.fd, line.ino)),
            ),
            // Socket bytes never reach the line assembler.
            Stream::SocketSent | Stream::SocketReceived | Stream::TlsSent | Stream::TlsReceived => {
                (StreamName::File, None)
            }
        };
        let req_id = self.conns.req_id_for_line(line.pid, &line.text);
        // Logpoint hits and node's inspector notices (docs/logpoints.md).
        let special = match (&stream, &path) {
            (StreamName::File, Some(p)) if crate::inspector::channel::is_logpoint_file(p) => {
                crate::inspector::channel::logpoint_event(&line.text, req_id.clone())
            }
            (StreamName::Stderr, _)
                if crate::inspector::channel::is_inspector_notice(&line.text) =>
            {
                Some(EventData::Inspector {
                    text: line.text.clone(),
                })
            }
            _ => None,
        };
        Event {
            ts_ns: self.clock.wall_ns(line.mono_ns),
            host: self.host.clone(),
            pid: line.pid,
            tid: line.tid,
            comm: self.comm_of(line.pid, &line.comm),
            data: special.unwrap_or(EventData::Log {
                stream,
                path,
                req_id,
                text: line.text,
                truncated: line.truncated,
            }),
        }
    }

    /// Path of a written file: from the openat that created the fd if we saw
    /// it, else through /proc once per (fd, inode) (files opened before
    /// attach). If neither works, the inode number is all we can say.
    fn path_of(&mut self, pid: u32, fd: u32, ino: u64) -> String {
        if let Some(path) = self.opened.get(&(pid, fd)) {
            return path.clone();
        }
        self.paths
            .entry((pid, fd, ino))
            .or_insert_with(|| {
                std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| format!("<closed fd {fd}, inode {ino}>"))
            })
            .clone()
    }

    fn tcp_event(&mut self, t: TcpRecord) -> Event {
        let tuple = tuple_of(&t);
        let data = match t.head.kind {
            EventKind::TcpConnect => EventData::TcpConnect(tuple),
            EventKind::TcpAccept => EventData::TcpAccept(tuple),
            EventKind::TcpRetransmit => EventData::TcpRetransmit {
                tuple,
                segments: t.segments,
            },
            _ => {
                let preexisting = t.flags & TCP_FLAG_PREEXISTING != 0;
                EventData::TcpClose {
                    tuple,
                    bytes_sent: t.bytes_sent,
                    bytes_received: t.bytes_received,
                    retransmits: t.total_retrans,
                    duration_ns: (!preexisting).then_some(t.duration_ns),
                    preexisting,
                    failed: t.flags & TCP_FLAG_FAILED != 0,
                }
            }
        };
        self.event(&t.head, data)
    }
}

fn tuple_of(t: &TcpRecord) -> Tuple {
    Tuple {
        saddr: t.saddr,
        sport: t.sport,
        daddr: t.daddr,
        dport: t.dport,
    }
}

pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Log => "log",
        EventKind::TcpConnect => "tcp_connect",
        EventKind::TcpAccept => "tcp_accept",
        EventKind::TcpClose => "tcp_close",
        EventKind::TcpRetransmit => "tcp_retransmit",
        EventKind::Loop => "loop",
        EventKind::Gc => "gc",
        EventKind::Exit => "exit",
        EventKind::Exec => "exec",
        EventKind::FileOpen => "file_open",
        EventKind::ConnAdopt => "conn_adopt",
        EventKind::Segment => "tcp_segment",
        EventKind::ReadMark => "read_mark",
        EventKind::Probe => "probe",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{LogChunk, decode, tests::log_record};

    fn pipeline() -> Pipeline {
        Pipeline::new("h".into(), WallClock::new(0), 1024)
    }

    #[test]
    fn exit_status_decoding() {
        assert_eq!(exit_status(3 << 8), (Some(3), None));
        assert_eq!(exit_status(0), (Some(0), None));
        assert_eq!(exit_status(9), (None, Some(9)));
        // Core dump bit set, SIGSEGV.
        assert_eq!(exit_status(0x80 | 11), (None, Some(11)));
    }

    #[test]
    fn lines_become_log_events_and_are_counted() {
        let mut p = pipeline();
        let rec = decode(&log_record(5, 2, Stream::Stderr, 0, b"one\ntw")).unwrap();
        let ev = p.on_record(rec);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].comm, "node");
        assert!(matches!(
            &ev[0].data,
            EventData::Log { stream: StreamName::Stderr, text, path: None, truncated: false, req_id: None } if text == "one"
        ));
        let rest = p.flush_all();
        assert!(matches!(&rest[0].data, EventData::Log { text, .. } if text == "tw"));
        assert_eq!(p.counts().get("log"), Some(&2));
    }

    #[test]
    fn ring_losses_are_reported_as_deltas() {
        let mut p = pipeline();
        assert_eq!(p.on_ring_losses(&[(EventKind::Log, 3)]).len(), 1);
        assert!(p.on_ring_losses(&[(EventKind::Log, 3)]).is_empty());
        let ev = p.on_ring_losses(&[(EventKind::Log, 5), (EventKind::Gc, 1)]);
        let counts: Vec<u64> = ev
            .iter()
            .map(|e| match e.data {
                EventData::Lost { count, .. } => count,
                _ => 0,
            })
            .collect();
        assert_eq!(counts, [2, 1]);
        assert_eq!(p.lost().get(&LossStage::Ring), Some(&6));
    }

    #[test]
    fn wall_clock_shift_is_applied() {
        let a = WallClock::new(0);
        let b = WallClock::new(3_000_000_000);
        let d = b.wall_ns(1000) as i128 - a.wall_ns(1000) as i128;
        assert!((d - 3_000_000_000).abs() < 1_000_000, "{d}");
    }

    #[test]
    fn exit_flushes_pending_lines_first() {
        let mut p = pipeline();
        let rec = decode(&log_record(5, 1, Stream::Stdout, 0, b"partial")).unwrap();
        assert!(p.on_record(rec).is_empty());
        let head = Head {
            kind: EventKind::Exit,
            pid: 5,
            tid: 5,
            mono_ns: 10,
            comm: "node".into(),
        };
        let ev = p.on_record(Record::Exit {
            head,
            exit_code: 3 << 8,
        });
        assert_eq!(ev.len(), 2);
        assert!(matches!(&ev[0].data, EventData::Log { text, .. } if text == "partial"));
        assert!(matches!(
            ev[1].data,
            EventData::Exit {
                exit_code: Some(3),
                signal: None
            }
        ));
        let _: Option<LogChunk> = None;
    }
}
