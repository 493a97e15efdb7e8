//! The one definition of the kernel <-> user wire format.
//!
//! Every record the probes put in the `EVENTS` ring buffer starts with an
//! [`EventHeader`]; the user-space decoder reads `kind` at offset 0 to know
//! which struct follows. All structs are `#[repr(C)]` with explicit padding so
//! both compilers (the BPF one and the host one) agree on every offset; the
//! `const` size assertions below fail the build if they ever drift.
//!
//! Map key/value types and the load-time globals live here too, because the
//! user side writes what the BPF side reads.
#![no_std]

use core::mem::size_of;

/// Length of a task's `comm` as the kernel stores it.
pub const COMM_LEN: usize = 16;
/// Most bytes of written data carried by one [`LogChunk`] record. Records
/// are variable-sized (header + the bytes actually written), so a short log
/// line costs its own length in the ring, not this.
pub const LOG_CHUNK_BYTES: usize = 16 * 1024;
/// Hard upper bound on chunks copied from one write() / one iovec, so the
/// verifier sees a short bounded loop: 16 * 16 KiB = 256 KiB per buffer, plus
/// one chunk for the newline of a line of exactly 256 KiB.
/// (16 KiB + header keeps the per-CPU scratch under the 32 KiB per-CPU
/// value limit.)
pub const MAX_LOG_CHUNKS: u32 = 17;
/// The longest line user space may ask for (the kernel then copies one
/// byte more per buffer, for the newline).
pub const MAX_LINE_CAP: u32 = 256 * 1024;
const _: () = assert!(MAX_LINE_CAP < LOG_CHUNK_BYTES as u32 * MAX_LOG_CHUNKS);

/// Record kinds. `#[repr(u32)]` and first in every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Log = 1,
    TcpConnect = 2,
    TcpAccept = 3,
    TcpClose = 4,
    TcpRetransmit = 5,
    Loop = 6,
    Gc = 7,
    Exit = 8,
    Exec = 9,
    /// A traced process opened a regular file (gives written files a path
    /// even when they are closed before user space could look them up).
    FileOpen = 10,
    /// A connection open before attach was first used: its `struct sock *`
    /// is now known (a [`TcpEvent`] with `sock`, ports and netns only).
    ConnAdopt = 11,
    /// Payload of one TCP segment of a traced connection, from the
    /// cgroup_skb programs (a [`SegmentHeader`] and its bytes).
    Segment = 12,
    /// A traced process read from a traced connection: every byte before
    /// `copied_seq` has been read (a [`ReadMark`]).
    ReadMark = 13,
    /// A hit of an ad-hoc probe (`tracer probe`) recording arguments: a
    /// [`ProbeEvent`].
    Probe = 14,
}

impl EventKind {
    pub const ALL: [EventKind; 14] = [
        EventKind::Log,
        EventKind::TcpConnect,
        EventKind::TcpAccept,
        EventKind::TcpClose,
        EventKind::TcpRetransmit,
        EventKind::Loop,
        EventKind::Gc,
        EventKind::Exit,
        EventKind::Exec,
        EventKind::FileOpen,
        EventKind::ConnAdopt,
        EventKind::Segment,
        EventKind::ReadMark,
        EventKind::Probe,
    ];

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u32 == v)
    }
}

/// Number of slots in the per-CPU `LOST` array: one per [`EventKind`] value
/// (index = kind as u32), slot 0 unused.
pub const LOST_SLOTS: u32 = 16;

/// First in every ring record. The decoder relies on `kind` being at offset 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    /// Process id (kernel tgid).
    pub pid: u32,
    /// Thread id (kernel pid). Equals `pid` for events seen outside process
    /// context (TCP state changes in softirq), where the owner comes from maps.
    pub tid: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns); user space converts to wall time.
    pub ts_ns: u64,
    /// Zeroed when the event was seen outside the owner's context.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<EventHeader>() == 40);

/// Which stream a written buffer belongs to.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
    File = 3,
    /// Bytes the process wrote to a traced TCP connection.
    SocketSent = 4,
    /// Bytes the process read from a traced TCP connection.
    SocketReceived = 5,
    /// Plaintext the process handed to OpenSSL for a TLS connection
    /// (SSL_write); `ino` is the connection's `struct sock *`.
    TlsSent = 6,
    /// Plaintext OpenSSL handed back (SSL_read).
    TlsReceived = 7,
}

impl Stream {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            3 => Some(Stream::File),
            4 => Some(Stream::SocketSent),
            5 => Some(Stream::SocketReceived),
            6 => Some(Stream::TlsSent),
            7 => Some(Stream::TlsReceived),
            _ => None,
        }
    }
}

/// Fixed part of a [`LogChunk`]. The record in the ring is this header
/// followed by exactly `len` bytes of data (records are variable-sized).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LogChunkHeader {
    pub hdr: EventHeader,
    pub fd: u32,
    /// A [`Stream`] value.
    pub stream: u32,
    /// Bytes the process asked to write in this buffer (write() count or one
    /// iovec's length), before any cap.
    pub buffer_len: u64,
    /// Offset of this chunk within the buffer.
    pub offset: u32,
    /// Bytes of data following this header.
    pub len: u32,
    /// Files: inode of the written file, so user space can tell a reused fd
    /// apart. Sockets: the `struct sock *`, matching [`TcpEvent::sock`].
    pub ino: u64,
}
const _: () = assert!(size_of::<LogChunkHeader>() == 72);

/// Scratch layout the probe fills before copying `size_of::<LogChunkHeader>()
/// + len` bytes of it into the ring.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LogChunk {
    pub head: LogChunkHeader,
    pub data: [u8; LOG_CHUNK_BYTES],
}
const _: () = assert!(size_of::<LogChunk>() == 72 + LOG_CHUNK_BYTES);

/// [`SegmentHeader::dir`]: the traced socket sent the segment (egress).
pub const SEG_SENT: u32 = 0;
/// [`SegmentHeader::dir`]: the traced socket received it (ingress).
pub const SEG_RECEIVED: u32 = 1;
/// [`SegmentHeader::dir`] flag: received by a traced listener before the
/// connection it belongs to existed (the handshake's last ACK was lost, so
/// this data segment completes the handshake). `sock` is then an id that
/// the [`TcpEvent::early_segment`] of the connection's accept names.
pub const SEG_BEFORE_ACCEPT: u32 = 1 << 8;

/// Data bytes a [`SegmentHeader`] record can carry, smallest first. A
/// record is reserved in the smallest class that holds the bytes copied
/// (reservations need a constant size), so a 100-byte request costs a
/// 256-byte slot, not 16 KiB. User space reads `len` bytes and ignores the
/// rest of the slot.
pub const SEGMENT_CLASSES: [usize; 4] = [256, 1024, 4096, LOG_CHUNK_BYTES];

/// One TCP segment of a traced connection as a cgroup_skb program saw it:
/// the header, then `len` bytes copied from the start of its payload, then
/// unused slack up to the record's size class ([`SEGMENT_CLASSES`]).
///
/// Segments are reported as they cross the socket's cgroup hook, so
/// retransmits (egress) and duplicate or out-of-order segments (ingress)
/// appear as they happen; `seq` lets user space put each byte in place
/// exactly once.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SegmentHeader {
    /// `pid`/`tid`/`comm` are the connection's owner (from `CONNS`); the
    /// timestamp is when the segment crossed the hook.
    pub hdr: EventHeader,
    /// The `struct sock *`, as in [`TcpEvent::sock`].
    pub sock: u64,
    /// TCP sequence number of the first payload byte (host order).
    pub seq: u32,
    /// Payload bytes in the segment (a GSO skb: all of them).
    pub seg_len: u32,
    /// Bytes copied that follow this header (a prefix of the payload).
    pub len: u32,
    /// [`SEG_SENT`] or [`SEG_RECEIVED`], maybe with [`SEG_BEFORE_ACCEPT`].
    pub dir: u32,
}
const _: () = assert!(size_of::<SegmentHeader>() == 64);

/// A read of a traced connection by its process (`sock_recv_length`):
/// received bytes up to `copied_seq` have been read, at `hdr.ts_ns`. User
/// space gives received bytes the time of the read that took them, as a
/// read() hook would, rather than the time they reached the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ReadMark {
    pub hdr: EventHeader,
    /// The `struct sock *`.
    pub sock: u64,
    /// `tcp_sock.copied_seq` after the read: the next byte to be read
    /// (less the peer's FIN once a read consumed it: every payload byte
    /// before this was read).
    pub copied_seq: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ReadMark>() == 56);

/// The connection existed before the tracer attached: no start time known.
pub const TCP_FLAG_PREEXISTING: u16 = 1;
/// The connection never reached ESTABLISHED (e.g. connect refused).
pub const TCP_FLAG_FAILED: u16 = 2;
/// Connect/accept: [`TcpEvent::sent_seq0`] and [`TcpEvent::received_seq0`]
/// are known.
pub const TCP_FLAG_SEQ_KNOWN: u16 = 4;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// tcp_connect / tcp_accept / tcp_close / tcp_retransmit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpEvent {
    pub hdr: EventHeader,
    pub family: u16,
    /// Host byte order.
    pub sport: u16,
    /// Host byte order.
    pub dport: u16,
    pub flags: u16,
    /// Inode number of the socket's network namespace (0 if unknown).
    pub netns: u32,
    /// tcp_retransmit: segments the retransmitted skb carried
    /// (tcp_skb_pcount). One tracepoint hit can resend a whole GSO skb, and
    /// the kernel's RetransSegs counter adds this number, not 1. 0 otherwise.
    pub segments: u32,
    /// IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// tcp_sock.bytes_acked at close: payload bytes the peer acknowledged.
    pub bytes_sent: u64,
    /// tcp_sock.bytes_received at close.
    pub bytes_received: u64,
    /// Close: time since connect/accept. 0 when unknown.
    pub duration_ns: u64,
    /// The kernel `struct sock *`, the key joining payload chunks to this
    /// connection. Only an identity; never dereferenced by user space.
    pub sock: u64,
    /// Connect/accept (with [`TCP_FLAG_SEQ_KNOWN`]): sequence number of the
    /// first payload byte each way (tcp_sock.write_seq and copied_seq when
    /// the connection became ESTABLISHED), so the segment reassembly knows
    /// where each stream starts even if its first segment comes late.
    pub sent_seq0: u32,
    pub received_seq0: u32,
    /// Accept: the id (a [`SegmentHeader::sock`] with [`SEG_BEFORE_ACCEPT`])
    /// of the data segment that reached the listener before this connection
    /// existed, or 0.
    pub early_segment: u64,
    /// tcp_sock.total_retrans when the event was emitted: segments the
    /// kernel retransmitted on this connection so far, the amount it also
    /// adds to `Tcp RetransSegs`. 0 when the offset is unknown. User space
    /// reconciles it at close against the retransmits it was told about.
    pub total_retrans: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<TcpEvent>() == 40 + 16 + 32 + 32 + 16 + 8);

/// One event-loop turn, from one `uv__io_poll` entry to the next, reported
/// at its end (`hdr.ts_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LoopEvent {
    pub hdr: EventHeader,
    /// Time blocked waiting for I/O (inside `epoll_wait`/`epoll_pwait`).
    pub poll_ns: u64,
    /// The rest of the turn: JavaScript and native callbacks, whether they
    /// ran from timers, I/O (inside `uv__io_poll`), immediates or closes.
    pub busy_ns: u64,
}
const _: () = assert!(size_of::<LoopEvent>() == 56);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GcEvent {
    pub hdr: EventHeader,
    pub duration_ns: u64,
}
const _: () = assert!(size_of::<GcEvent>() == 48);

/// Process exit (last thread) or exec of a traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub hdr: EventHeader,
    /// task_struct.exit_code: `(status << 8) | signal`. 0 for exec.
    pub exit_code: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ProcEvent>() == 48);

/// Bytes of a path carried by [`FileOpenEvent`] (longer paths are cut).
pub const PATH_BYTES: usize = 512;

/// openat() of a regular file by a traced process: `fd` now names `path`
/// (as the process passed it; relative paths are relative to its cwd).
/// Also the layout of [`EventKind::Exec`] records: `path` is the program
/// exec'd, `fd` 0.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileOpenEvent {
    pub hdr: EventHeader,
    pub fd: u32,
    pub _pad: u32,
    pub path: [u8; PATH_BYTES],
}
const _: () = assert!(size_of::<FileOpenEvent>() == 48 + PATH_BYTES);

// ---- map types ----

/// Value of `CONNS` (key: the kernel `struct sock *`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    /// [`EventKind::TcpConnect`] or [`EventKind::TcpAccept`].
    pub kind: u32,
    /// `TCP_FLAG_*` in the low 16 bits (reported); `CONN_SEEN_*` above
    /// (kernel bookkeeping, never reported).
    pub flags: u32,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<ConnInfo>() == 40);

/// [`ConnInfo::flags`]: the segment programs have seen payload sent on the
/// connection (its first one decided whether it is TLS).
pub const CONN_SEEN_SENT: u32 = 1 << 16;
/// [`ConnInfo::flags`]: as [`CONN_SEEN_SENT`], for payload received.
pub const CONN_SEEN_RECEIVED: u32 = 1 << 17;
/// [`ConnInfo::flags`]: the connection is TLS (its first payload was a TLS
/// record); the segment programs copy nothing of it. Set wherever the
/// `TLS_LIKE` map (which the TLS probes use) is, so that a segment or a
/// read of a plaintext connection costs no extra map lookup.
pub const CONN_TLS: u32 = 1 << 18;

/// Key of `LISTENERS`: a listening port inside one network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<ListenKey>() == 8);

/// Key of `PREEXISTING`: a connection open before attach, by its ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortPairKey {
    pub netns: u32,
    pub lport: u16,
    pub rport: u16,
}
const _: () = assert!(size_of::<PortPairKey>() == 8);

/// Per-thread event-loop bookkeeping (`POLL_STATE`, key: tid). A turn runs
/// from one `uv__io_poll` entry to the next; inside it the loop is either
/// blocked in `epoll_wait` or busy (timers, I/O callbacks, immediates).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PollState {
    /// Entry of this turn's `uv__io_poll`; 0 until the first one.
    pub turn_start_ns: u64,
    /// Time blocked in `epoll_wait`/`epoll_pwait` since `turn_start_ns`.
    pub blocked_ns: u64,
    /// Entry of the epoll wait in progress; 0 when none is.
    pub epoll_enter_ns: u64,
}
const _: () = assert!(size_of::<PollState>() == 24);

/// Value of `TARGETS`: why a pid/tid is traced.
pub const TARGET_ROOT: u32 = 1;
pub const TARGET_CHILD: u32 = 2;

/// Byte offsets of kernel struct fields, read from the running kernel's BTF
/// by user space and set as a read-only global before load (no CO-RE in
/// Rust BPF yet). All zero when the kernel has no BTF: the probes then
/// degrade (e.g. report 0 bytes) rather than read garbage.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// struct tcp_sock.bytes_received (u64)
    pub tcp_bytes_received: u32,
    /// struct tcp_sock.bytes_acked (u64)
    pub tcp_bytes_acked: u32,
    /// struct sock_common.skc_net (possible_net_t, first member `net`)
    pub sk_net: u32,
    /// struct net.ns.inum (u32)
    pub net_ns_inum: u32,
    /// struct task_struct.files
    pub task_files: u32,
    /// struct task_struct.exit_code (int)
    pub task_exit_code: u32,
    /// struct files_struct.fdt
    pub files_fdt: u32,
    /// struct fdtable.fd (struct file **)
    pub fdtable_fd: u32,
    /// struct fdtable.max_fds (unsigned int)
    pub fdtable_max_fds: u32,
    /// struct file.f_inode
    pub file_inode: u32,
    /// struct inode.i_mode (umode_t, u16)
    pub inode_mode: u32,
    /// struct inode.i_ino (unsigned long)
    pub inode_ino: u32,
    /// struct sock.sk_shutdown (u8; SEND_SHUTDOWN = 2)
    pub sk_shutdown: u32,
    /// struct sock_common.skc_flags, a.k.a. sk_flags (bit set of enum sock_flags)
    pub sk_flags: u32,
    /// Bit number of SOCK_DONE in sk_flags (set when a FIN was received).
    pub sock_done_bit: u32,
    /// struct tcp_sock.snd_una (u32)
    pub tcp_snd_una: u32,
    /// struct tcp_sock.write_seq (u32)
    pub tcp_write_seq: u32,
    /// struct file.private_data (a `struct socket *` for sockets)
    pub file_private_data: u32,
    /// struct socket.sk
    pub socket_sk: u32,
    /// struct sock_common.skc_num (local port, host order)
    pub skc_num: u32,
    /// struct sock_common.skc_dport (remote port, network order)
    pub skc_dport: u32,
    /// struct sock_common.skc_family (u16)
    pub skc_family: u32,
    /// struct sock_common.skc_rcv_saddr (IPv4 local address, network order)
    pub skc_rcv_saddr: u32,
    /// struct sock_common.skc_daddr (IPv4 remote address)
    pub skc_daddr: u32,
    /// struct sock_common.skc_v6_rcv_saddr (struct in6_addr)
    pub skc_v6_rcv_saddr: u32,
    /// struct sock_common.skc_v6_daddr (struct in6_addr)
    pub skc_v6_daddr: u32,
    /// struct sock.sk_protocol (u16)
    pub sk_protocol: u32,
    /// struct tcp_sock.copied_seq (u32)
    pub tcp_copied_seq: u32,
    /// struct sk_buff.cb + struct tcp_skb_cb.tcp_gso_segs (u16): the segment
    /// count of a TCP skb.
    pub skb_tcp_gso_segs: u32,
    /// struct tcp_sock.rcv_nxt (u32)
    pub tcp_rcv_nxt: u32,
    /// struct tcp_sock.total_retrans (u32)
    pub tcp_total_retrans: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 124);

// ---- ad-hoc probes: USDT points and native symbols (`tracer probe`) ----
//
// One pair of generic programs (probes/usdt.rs) serves every probe: the
// attach cookie of a call site is its key in `PROBE_SITES`, whose value says
// how to decode the arguments there. Adding a probe never compiles anything.

/// Arguments decoded per hit (x86-64 passes six in registers).
pub const PROBE_MAX_ARGS: usize = 6;
/// String arguments one hit can carry, and bytes copied of each.
pub const PROBE_STR_ARGS: usize = 2;
pub const PROBE_STR_BYTES: usize = 128;
/// Probes (ids) and call sites (cookies) attached at once by one tracer.
pub const PROBE_MAX_PROBES: u32 = 64;
pub const PROBE_MAX_SITES: u32 = 1024;
/// Latency histogram buckets per site: bucket b counts durations in
/// [2^(b-1), 2^b) ns (bucket 0: 0 ns).
pub const PROBE_HIST_BUCKETS: u32 = 64;

/// [`ProbeSite::mode`]: count hits in `PROBE_COUNTS` (nothing in the ring).
pub const PROBE_MODE_COUNT: u32 = 0;
/// Emit a [`ProbeEvent`] with the decoded arguments per hit.
pub const PROBE_MODE_ARGS: u32 = 1;
/// Entry: remember the time; return: add the duration to `PROBE_HIST`.
pub const PROBE_MODE_LATENCY: u32 = 2;

/// [`ProbeArgSpec::kind`] values.
pub const PROBE_ARG_NONE: u8 = 0;
/// The argument is the constant `value`.
pub const PROBE_ARG_CONST: u8 = 1;
/// The argument is the register at `reg_off` in `struct pt_regs`.
pub const PROBE_ARG_REG: u8 = 2;
/// The argument is `size` bytes of user memory at register + `value`.
pub const PROBE_ARG_MEM: u8 = 3;

/// How to read one argument at one call site (from a USDT note's argument
/// spec, or from the calling convention for a function).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeArgSpec {
    /// CONST: the value. MEM: the offset added to the register.
    pub value: i64,
    /// Byte offset of the register in the kernel's `struct pt_regs`.
    pub reg_off: u16,
    /// A `PROBE_ARG_*` value.
    pub kind: u8,
    /// Bytes of the value: 1, 2, 4 or 8.
    pub size: u8,
    /// 1: sign-extend the value.
    pub signed: u8,
    /// 0: an integer. N (1..=PROBE_STR_ARGS): the value is a pointer to a
    /// NUL-terminated string, copied into `ProbeEvent::strs[N - 1]`.
    pub str_slot: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<ProbeArgSpec>() == 16);

/// Value of `PROBE_SITES` (key: the attach cookie, which is also the index
/// of the site's counters).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeSite {
    /// Index of the probe (rate state and drop counters), < PROBE_MAX_PROBES.
    pub probe_id: u32,
    /// A `PROBE_MODE_*` value.
    pub mode: u32,
    /// Arguments decoded (the rest of `args` is ignored).
    pub nargs: u32,
    /// Most [`ProbeEvent`]s per second for the whole probe; 0: no cap.
    pub max_per_sec: u32,
    /// `latency` mode: the cookie of the function's entry site (on the
    /// entry site itself and on its return site), the key of the start time.
    pub entry_cookie: u32,
    pub _pad: u32,
    pub args: [ProbeArgSpec; PROBE_MAX_ARGS],
}
const _: () = assert!(size_of::<ProbeSite>() == 24 + 16 * PROBE_MAX_ARGS);

/// Per-probe rate window (`PROBE_RATE`, index: probe id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeRate {
    pub window_start_ns: u64,
    pub emitted: u64,
}

/// `PROBE_DROPS` index of a probe's events over its rate cap.
pub fn probe_drop_rate_slot(probe_id: u32) -> u32 {
    probe_id * 2
}
/// `PROBE_DROPS` index of a probe's events that found the ring full.
pub fn probe_drop_ring_slot(probe_id: u32) -> u32 {
    probe_id * 2 + 1
}

/// One hit of a probe in `args` mode.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProbeEvent {
    pub hdr: EventHeader,
    /// The site's cookie (user space knows its probe, object and point).
    pub cookie: u64,
    /// Integer values; for a string argument, the pointer.
    pub args: [u64; PROBE_MAX_ARGS],
    /// Bytes copied into each string slot, NUL included (0: none/failed).
    pub str_len: [u32; PROBE_STR_ARGS],
    pub strs: [[u8; PROBE_STR_BYTES]; PROBE_STR_ARGS],
}
const _: () = assert!(
    size_of::<ProbeEvent>() == 40 + 8 + 8 * PROBE_MAX_ARGS + 8 + PROBE_STR_BYTES * PROBE_STR_ARGS
);

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)] plain integers/arrays with explicit
    // padding fields, so every bit pattern is valid and there are no holes.
    unsafe impl aya::Pod for KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ListenKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PortPairKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PollState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ProbeSite {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ProbeRate {}
}
