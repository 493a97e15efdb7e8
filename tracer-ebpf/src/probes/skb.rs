//! Plaintext payload of traced TCP connections, per segment, from cgroup_skb
//! programs (ingress and egress) — the `http` family's capture path.
//!
//! match-proto: cgroup_skb (BPF_CGROUP_INET_INGRESS / _EGRESS). The packet
//!   starts at the network header for both hooks; `__sk_buff.sk` is the
//!   socket the packet belongs to (ingress: the socket TCP demultiplexed
//!   it to, before any sequence check; egress: the sending socket).
//!
//! Why not the read/write syscalls: any enabled syscall tracepoint puts
//! every syscall of every process on the kernel's slow path (~15% of a busy
//! server's throughput here, whatever the filter). These programs run only
//! for packets of sockets in the cgroup they are attached to, and do a
//! hash lookup for sockets that are not traced.
//!
//! What is reported: every TCP segment with payload of a traced connection
//! (`CONNS`, keyed by `struct sock *`), as a `SegmentHeader` with the
//! sequence number of its first byte, its payload length, and the first
//! `SOCKET_CAPTURE_BYTES` of its payload. A segment is reported each time it
//! crosses the hook — egress retransmits and duplicate or out-of-order
//! ingress segments included; user space places bytes by sequence number,
//! once each. A GSO skb (up to 64 KiB, or more with BIG TCP) is one record:
//! the copy is one `bpf_skb_load_bytes` of at most 16 KiB, the rest is
//! counted in `seg_len`.
//!
//! A listener's segments: when the handshake's last ACK is lost, the
//! client's first data segment completes the handshake. TCP runs the
//! ingress hook for it with the *listener* socket (the connection does not
//! exist yet), then creates the connection, reports the accept (tcp.rs) and
//! queues the data to it, all in the same softirq on the same CPU. So a data
//! segment on a traced listener is reported with an id in place of the
//! socket and flagged `SEG_BEFORE_ACCEPT`, the id is left in a per-CPU slot
//! (`EARLY_SEGMENT`), and the accept that follows claims it; user space
//! then gives the segment to that connection.
//!
//! Timestamps: a segment's is when it crossed the hook. Received bytes are
//! then given the time of the read that took them, as a read() hook would:
//! `sock_recv_length` (below) reports, per read of a traced connection, a
//! `ReadMark` with `tcp_sock.copied_seq` (every byte before it was read).
//!
//! TLS: the first payload segment seen in each direction decides. If it
//! starts with a TLS record header the connection is marked TLS (`TLS_LIKE`)
//! and its ciphertext is never copied; the uprobes on SSL_read/SSL_write
//! report its plaintext (tls.rs). What binds an `SSL *` to its connection is
//! the thread's socket reads and writes, seen by the `sock_recv_length` /
//! `sock_send_length` raw tracepoints below: non-syscall tracepoints, which
//! run only when a socket is read or written.

use aya_ebpf::{
    bindings::bpf_sock,
    cty::c_void,
    helpers::{
        bpf_get_smp_processor_id, bpf_probe_read_kernel,
        generated::{bpf_sk_fullsock, bpf_skb_load_bytes},
    },
    macros::{cgroup_skb, raw_tracepoint},
    programs::{RawTracePointContext, SkBuffContext},
};
use tracer_common::{
    COMM_LEN, CONN_SEEN_RECEIVED, CONN_SEEN_SENT, CONN_TLS, EventHeader, EventKind,
    LOG_CHUNK_BYTES, ListenKey, ReadMark, SEG_BEFORE_ACCEPT, SEG_RECEIVED, SEG_SENT, SegmentHeader,
};

use crate::{
    emit::{count_lost, current_ids, now_ns, output, submit_flags},
    kernel::{sock_netns, tcp_read_payload_end},
    maps::{
        CONNS, EARLY_SEGMENT, EVENTS, EarlySegment, LISTENERS, is_target, socket_capture_bytes,
    },
    probes::{
        tcp::{TCP_LISTEN, traced_conn},
        tls::{self, LAST_READ, SSL_WRITE_PENDING},
    },
};

/// `__sk_buff.protocol` values (network byte order read as u32 on little
/// endian): ETH_P_IP, ETH_P_IPV6.
const PROTO_IPV4: u32 = 0x0008;
const PROTO_IPV6: u32 = 0xdd86;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;

/// Let the packet through: these programs only look.
const PASS: i32 = 1;

#[cgroup_skb(ingress)]
pub fn skb_ingress(ctx: SkBuffContext) -> i32 {
    let _ = segment(&ctx, SEG_RECEIVED);
    PASS
}

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    let _ = segment(&ctx, SEG_SENT);
    PASS
}

/// Where a segment's payload is, from its headers.
struct Tcp {
    /// Offset of the TCP header from the network header.
    tcp_off: u32,
    seq: u32,
    /// Offset of the payload from the network header.
    payload_off: u32,
    payload_len: u32,
}

#[inline(always)]
fn load<T: Copy>(ctx: &SkBuffContext, off: u32) -> Option<T> {
    ctx.load::<T>(off as usize).ok()
}

#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Option<Tcp> {
    // SAFETY: the context is the kernel's __sk_buff; reads of its fields
    // are rewritten by the verifier.
    let proto = unsafe { (*ctx.skb.skb).protocol };
    let tcp_off: u32 = if proto == PROTO_IPV4 {
        let vihl: u8 = load(ctx, 0)?;
        if load::<u8>(ctx, 9)? != IPPROTO_TCP {
            return None;
        }
        u32::from(vihl & 0x0f) * 4
    } else if proto == PROTO_IPV6 {
        // Next header right after the fixed header; TCP behind extension
        // headers is not followed (Linux does not add any to TCP).
        if load::<u8>(ctx, 6)? != IPPROTO_TCP {
            return None;
        }
        40
    } else {
        return None;
    };
    let seq = u32::from_be(load::<u32>(ctx, tcp_off + 4)?);
    let doff_flags: [u8; 2] = load(ctx, tcp_off + 12)?;
    let payload_off = tcp_off + u32::from(doff_flags[0] >> 4) * 4;
    let len = ctx.len();
    if len <= payload_off {
        return None;
    }
    // A SYN's sequence number is its own; data in a SYN (TCP Fast Open)
    // starts one later.
    let seq = if doff_flags[1] & TCP_FLAG_SYN != 0 {
        seq.wrapping_add(1)
    } else {
        seq
    };
    Some(Tcp {
        tcp_off,
        seq,
        payload_off,
        payload_len: len - payload_off,
    })
}

fn segment(ctx: &SkBuffContext, dir: u32) -> Option<()> {
    let cap = socket_capture_bytes();
    if cap == 0 {
        return None;
    }
    // SAFETY: context field read (rewritten by the verifier to skb->sk).
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: helper on the context's socket pointer; NULL for request and
    // timewait sockets.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return None;
    }
    // The address of the full socket is the `struct sock *` the TCP
    // tracepoints keyed `CONNS` with. The verifier types it as a socket
    // pointer (no arithmetic allowed, which the kernel reads of an adopted
    // connection need): copy it through the stack to get a plain number.
    let slot = full as u64;
    // SAFETY: reads 8 bytes of our own stack; the helper cannot fault here.
    let sk = unsafe { bpf_probe_read_kernel(&slot as *const u64) }.ok()?;
    // SAFETY: fields of the full socket, rewritten by the verifier (no
    // kernel reads, unlike the ports of a `struct sock *`).
    let ports = unsafe { ((*full).src_port as u16, u16::from_be((*full).dst_port)) };
    let Some(owner) = traced_conn(sk, ports) else {
        if dir == SEG_RECEIVED {
            let _ = before_accept(ctx, full, sk, cap);
        }
        return None;
    };
    let tcp = parse(ctx)?;
    let seen_bit = if dir == SEG_SENT {
        CONN_SEEN_SENT
    } else {
        CONN_SEEN_RECEIVED
    };
    // SAFETY: pointer into the map value, valid for this program run.
    let first = unsafe { (*owner).flags } & seen_bit == 0;
    if first {
        // SAFETY: as above; a racing update of the other bit can at worst
        // make a later segment be checked again.
        unsafe { (*owner).flags |= seen_bit };
        if let Some(head) = load::<[u8; 2]>(ctx, tcp.payload_off)
            && (20..=23).contains(&head[0])
            && head[1] == 3
        {
            // SAFETY: as above.
            unsafe { (*owner).flags |= CONN_TLS };
            tls::mark_tls(sk);
        }
    }
    // SAFETY: as above; copied out.
    let owner = unsafe { *owner };
    if owner.flags & CONN_TLS != 0 {
        return None;
    }
    report(ctx, &tcp, (owner.pid, owner.tid, owner.comm), sk, dir, cap)
}

/// Report segment `tcp` of socket `sock` (owned by pid, tid, comm) with at
/// most `cap` payload bytes copied.
#[inline(always)]
fn report(
    ctx: &SkBuffContext,
    tcp: &Tcp,
    (pid, tid, comm): (u32, u32, [u8; COMM_LEN]),
    sock: u64,
    dir: u32,
    cap: u32,
) -> Option<()> {
    let head = SegmentHeader {
        hdr: EventHeader {
            kind: EventKind::Segment as u32,
            pid,
            tid,
            _pad: 0,
            ts_ns: now_ns(),
            comm,
        },
        sock,
        seq: tcp.seq,
        seg_len: tcp.payload_len,
        len: 0,
        dir,
    };
    output_sized(
        ctx,
        &head,
        tcp.payload_off,
        core::cmp::min(tcp.payload_len, cap),
    )
}

/// A data segment received by a traced listener: the first data of a
/// connection whose handshake it completes (see the module docs). Reported
/// with an id for the accept to claim.
#[inline(always)]
fn before_accept(ctx: &SkBuffContext, full: *mut bpf_sock, sk: u64, cap: u32) -> Option<()> {
    // SAFETY: fields of the full socket, rewritten by the verifier.
    let (state, lport) = unsafe { ((*full).state, (*full).src_port) };
    if state != TCP_LISTEN as u32 {
        return None;
    }
    let netns = sock_netns(sk);
    let key = ListenKey {
        netns,
        port: lport as u16,
        _pad: 0,
    };
    // SAFETY: value copied out immediately.
    let pid = unsafe { LISTENERS.get(key) }.copied()?;
    let tcp = parse(ctx)?;
    let rport = u16::from_be(load::<u16>(ctx, tcp.tcp_off)?);
    let tls = load::<[u8; 2]>(ctx, tcp.payload_off)
        .is_some_and(|head| (20..=23).contains(&head[0]) && head[1] == 3);
    let slot = EARLY_SEGMENT.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, valid for this program run.
    let counter = unsafe { (*slot).counter }.wrapping_add(1);
    // Distinct from every other id and from kernel pointers (top bits set).
    // SAFETY: helper without arguments.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
    let id = (1 << 62) | (cpu << 40) | (counter & ((1 << 40) - 1));
    // SAFETY: as above.
    unsafe {
        *slot = EarlySegment {
            id,
            counter,
            netns,
            lport: lport as u16,
            rport,
            tls: tls as u32,
            _pad: 0,
        }
    };
    if tls {
        // Ciphertext is never copied; the accept marks the connection TLS.
        return Some(());
    }
    let dir = SEG_RECEIVED | SEG_BEFORE_ACCEPT;
    report(ctx, &tcp, (pid, pid, [0u8; COMM_LEN]), id, dir, cap)
}

/// Report a segment with `want` payload bytes copied, in the smallest
/// record size class that holds them.
#[inline(always)]
fn output_sized(
    ctx: &SkBuffContext,
    head: &SegmentHeader,
    payload_off: u32,
    want: u32,
) -> Option<()> {
    if want <= 256 {
        output_segment::<256>(ctx, head, payload_off, want)
    } else if want <= 1024 {
        output_segment::<1024>(ctx, head, payload_off, want)
    } else if want <= 4096 {
        output_segment::<4096>(ctx, head, payload_off, want)
    } else {
        output_segment::<LOG_CHUNK_BYTES>(ctx, head, payload_off, want)
    }
}

#[repr(C)]
struct SegmentRecord<const N: usize> {
    head: SegmentHeader,
    data: [u8; N],
}

/// Reserve a record of size class `N`, copy `want` payload bytes into it.
///
/// Not inlined on purpose: inlined, the compiler merges the size classes'
/// copies into one and the verifier no longer sees each bounded by its
/// record.
#[inline(never)]
fn output_segment<const N: usize>(
    ctx: &SkBuffContext,
    head: &SegmentHeader,
    off: u32,
    want: u32,
) -> Option<()> {
    // The compiler knows every caller's bound and would drop a plain
    // check, so the verifier could not see one: hide the value from the
    // optimiser, and mask it into 1..=N (the same number for 1..=N).
    // SAFETY: a read of a local.
    let want = unsafe { core::ptr::read_volatile(&want) };
    if want == 0 || want > N as u32 {
        return None;
    }
    let want = (want.wrapping_sub(1) & (N as u32 - 1)) + 1;
    let Some(mut entry) = EVENTS.reserve::<SegmentRecord<N>>(0) else {
        count_lost(EventKind::Segment);
        return None;
    };
    let rec = entry.as_mut_ptr();
    let mut head = *head;
    head.len = want;
    // SAFETY: `rec` points at reserved ring memory of the record's size;
    // the load writes at most N bytes into `data`.
    let rc = unsafe {
        (*rec).head = head;
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            off,
            (*rec).data.as_mut_ptr().cast(),
            want,
        )
    };
    if rc != 0 {
        entry.discard(0);
        count_lost(EventKind::Segment);
        return None;
    }
    entry.submit(submit_flags());
    Some(())
}

// ---- TLS binding: which connection a thread just read from / wrote to ----
//
// match-proto: raw tracepoints sock_recv_length(struct sock *sk, int ret,
//   int flags) and sock_send_length(struct sock *sk, int ret, int flags),
//   fired by sock_recvmsg/sock_sendmsg (read/write/readv/writev/recv*/send*
//   on any socket) in the caller's context.

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    let (pid, tid) = current_ids();
    if !is_target(pid) {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as i32;
    if ret <= 0 {
        return 0;
    }
    let Some(owner) = CONNS.get_ptr(sk) else {
        return 0;
    };
    // SAFETY: pointer into the map value, copied out.
    let owner = unsafe { *owner };
    if owner.flags & CONN_TLS != 0 {
        // Only a TLS connection's read can feed the next SSL_read.
        let _ = LAST_READ.insert(tid, sk, 0);
    } else if let Some(copied_seq) = tcp_read_payload_end(sk) {
        output(
            EventKind::ReadMark,
            ReadMark {
                hdr: EventHeader {
                    kind: EventKind::ReadMark as u32,
                    pid: owner.pid,
                    tid,
                    _pad: 0,
                    ts_ns: now_ns(),
                    comm: owner.comm,
                },
                sock: sk,
                copied_seq,
                _pad: 0,
            },
        );
    }
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    let (pid, tid) = current_ids();
    if !is_target(pid) {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as i32;
    // The ciphertext of the SSL_write this thread just made: it confirms
    // or corrects the `SSL *` binding.
    if ret > 0
        && tls::looks_tls(sk)
        // SAFETY: value copied out immediately.
        && let Some(ssl) = unsafe { SSL_WRITE_PENDING.get(tid) }.copied()
    {
        let _ = SSL_WRITE_PENDING.remove(tid);
        tls::bind(ssl, sk);
    }
    0
}
