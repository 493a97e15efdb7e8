//! TCP connections of traced processes, from non-syscall tracepoints only:
//! one program run per state change and per retransmit, nothing per packet
//! or per send/recv. Byte counts come from the socket's own counters
//! (tcp_sock.bytes_acked / bytes_received) read once at close. Every event
//! carries tcp_sock.total_retrans, so user space can tell when the kernel
//! counted a retransmit that never reached it as an event.
//!
//! match-proto: raw tracepoints (TP_PROTO arguments)
//!   inet_sock_set_state(const struct sock *sk, int oldstate, int newstate),
//!   tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, ...).
//!   The tuple and protocol are read from the socket at BTF offsets.
//!
//! Why raw tracepoints: these fire in softirq, often while one of our
//! syscall probes is running on the same CPU. Perf-attached tracepoint
//! programs share one per-CPU "a BPF program is active" guard, so the nested
//! one would be skipped — silently dropping accepts, closes and retransmits
//! under load. Raw tracepoint programs have a guard per program.
//!
//! Who owns a socket: state changes often run in softirq context, where the
//! current task is unrelated. So ownership is recorded where it is known —
//! connect() enters SYN_SENT in the caller's context, listen() enters LISTEN
//! in the caller's context — and carried in maps (CONNS, LISTENERS).
//! Accepted sockets are owned by whoever owns the listening port in that
//! network namespace.

use aya_ebpf::{
    helpers::bpf_get_current_comm, macros::raw_tracepoint, programs::RawTracePointContext,
};
use tracer_common::{
    COMM_LEN, CONN_SEEN_RECEIVED, CONN_TLS, ConnInfo, EventHeader, EventKind, ListenKey,
    PortPairKey, TCP_FLAG_FAILED, TCP_FLAG_SEQ_KNOWN, TcpEvent,
};

use crate::{
    emit::{current_ids, now_ns, output},
    kernel::{
        skb_tcp_segments, sock_addrs, sock_netns, sock_ports, sock_protocol, tcp_copied_seq,
        tcp_payload_bytes, tcp_total_retrans, tcp_write_seq,
    },
    maps::{CONNS, EARLY_SEGMENT, EarlySegment, LISTENERS, PREEXISTING, is_target},
    probes::tls,
};

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
pub const TCP_LISTEN: i32 = 10;

/// Connection identity as the tracepoints carry it.
struct Tuple {
    family: u16,
    sport: u16,
    dport: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// The connection's tuple, read from the socket itself.
#[inline(always)]
fn sock_tuple(sk: u64) -> Option<Tuple> {
    let (family, saddr, daddr) = sock_addrs(sk)?;
    let (sport, dport) = sock_ports(sk)?;
    Some(Tuple {
        family,
        sport,
        dport,
        saddr,
        daddr,
    })
}

/// What some events carry beyond the tuple (see `TcpEvent`).
#[derive(Default)]
struct Extra {
    flags: u16,
    /// Retransmit: TCP segments resent.
    segments: u32,
    /// Connect/accept: (sent, received) sequence number of the first
    /// payload byte.
    seq0: Option<(u32, u32)>,
    /// Accept: id of the segment that reached the listener first.
    early_segment: u64,
}

/// Sequence numbers of the first payload byte each way, read when the
/// connection becomes ESTABLISHED: nothing was written or read yet, so
/// write_seq and copied_seq are exactly there.
#[inline(always)]
fn first_payload_seqs(sk: u64) -> Option<(u32, u32)> {
    Some((tcp_write_seq(sk)?, tcp_copied_seq(sk)?))
}

#[inline(always)]
fn emit(kind: EventKind, owner: &ConnInfo, t: &Tuple, netns: u32, sk: u64, extra: Extra) {
    let now = now_ns();
    let (bytes_sent, bytes_received, duration_ns) = if kind == EventKind::TcpClose {
        let active_open = owner.kind == EventKind::TcpConnect as u32;
        let (sent, received) = tcp_payload_bytes(sk, active_open);
        let duration = if owner.start_ns == 0 {
            0
        } else {
            now.saturating_sub(owner.start_ns)
        };
        (sent, received, duration)
    } else {
        (0, 0, 0)
    };
    output(
        kind,
        TcpEvent {
            hdr: EventHeader {
                kind: kind as u32,
                pid: owner.pid,
                tid: owner.tid,
                _pad: 0,
                ts_ns: now,
                comm: owner.comm,
            },
            family: t.family,
            sport: t.sport,
            dport: t.dport,
            flags: extra.flags
                | owner.flags as u16
                | if extra.seq0.is_some() {
                    TCP_FLAG_SEQ_KNOWN
                } else {
                    0
                },
            netns,
            segments: extra.segments,
            saddr: t.saddr,
            daddr: t.daddr,
            bytes_sent,
            bytes_received,
            duration_ns,
            sock: sk,
            sent_seq0: extra.seq0.map_or(0, |s| s.0),
            received_seq0: extra.seq0.map_or(0, |s| s.1),
            early_segment: extra.early_segment,
            // On every event: the close gives the total, an accept or an
            // adoption the baseline, and user space reports the difference
            // from the tcp_retransmit events it got (docs/architecture.md).
            total_retrans: tcp_total_retrans(sk),
            _pad: 0,
        },
    );
}

/// `sk` is a connection of a traced process. A connection that was open
/// before attach is adopted here on first use: found in PREEXISTING by its
/// ports, moved into CONNS, and reported so user space learns its `sk`.
#[inline(always)]
pub fn is_traced_conn(sk: u64) -> bool {
    CONNS.get_ptr(sk).is_some() || sock_ports(sk).and_then(|p| adopt(sk, p)).is_some()
}

/// As [`is_traced_conn`], for a caller that knows the socket's (local,
/// remote) ports already: the connection's `CONNS` entry.
#[inline(always)]
pub fn traced_conn(sk: u64, ports: (u16, u16)) -> Option<*mut ConnInfo> {
    match CONNS.get_ptr_mut(sk) {
        Some(owner) => Some(owner),
        None => {
            adopt(sk, ports)?;
            CONNS.get_ptr_mut(sk)
        }
    }
}

fn adopt(sk: u64, (lport, rport): (u16, u16)) -> Option<()> {
    let netns = sock_netns(sk);
    let key = PortPairKey {
        netns,
        lport,
        rport,
    };
    // SAFETY: value copied out immediately.
    let owner = unsafe { PREEXISTING.get(key) }.copied()?;
    CONNS.insert(sk, owner, 0).ok()?;
    let _ = PREEXISTING.remove(key);
    let t = Tuple {
        family: 0,
        sport: lport,
        dport: rport,
        saddr: [0; 16],
        daddr: [0; 16],
    };
    emit(
        EventKind::ConnAdopt,
        &owner,
        &t,
        netns,
        sk,
        Extra::default(),
    );
    Some(())
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let _ = try_set_state(&ctx);
    0
}

fn try_set_state(ctx: &RawTracePointContext) -> Option<()> {
    let sk: u64 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    if sock_protocol(sk) != IPPROTO_TCP {
        return None;
    }
    match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => {
            // connect(): process context.
            let (pid, tid) = current_ids();
            if !is_target(pid) {
                return None;
            }
            let info = ConnInfo {
                pid,
                tid,
                start_ns: now_ns(),
                kind: EventKind::TcpConnect as u32,
                flags: 0,
                comm: bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]),
            };
            let _ = CONNS.insert(sk, info, 0);
        }
        (TCP_SYN_SENT, TCP_ESTABLISHED) => {
            // SAFETY: value copied out immediately.
            let owner = unsafe { CONNS.get(sk) }.copied()?;
            let t = sock_tuple(sk)?;
            let extra = Extra {
                seq0: first_payload_seqs(sk),
                ..Extra::default()
            };
            emit(EventKind::TcpConnect, &owner, &t, sock_netns(sk), sk, extra);
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            let t = sock_tuple(sk)?;
            let netns = sock_netns(sk);
            let key = ListenKey {
                netns,
                port: t.sport,
                _pad: 0,
            };
            // SAFETY: value copied out immediately.
            let pid = unsafe { LISTENERS.get(key) }.copied()?;
            let mut owner = ConnInfo {
                pid,
                tid: pid,
                start_ns: now_ns(),
                kind: EventKind::TcpAccept as u32,
                flags: 0,
                comm: [0u8; COMM_LEN],
            };
            let mut extra = Extra {
                seq0: first_payload_seqs(sk),
                ..Extra::default()
            };
            if let Some(early) = claim_early_segment(netns, t.sport, t.dport) {
                // The connection's first received payload was that segment:
                // it decided TLS or not.
                owner.flags |= CONN_SEEN_RECEIVED;
                if early.tls != 0 {
                    owner.flags |= CONN_TLS;
                    tls::mark_tls(sk);
                } else {
                    extra.early_segment = early.id;
                }
            }
            let _ = CONNS.insert(sk, owner, 0);
            emit(EventKind::TcpAccept, &owner, &t, netns, sk, extra);
        }
        (_, TCP_LISTEN) => {
            // listen(): process context.
            let (pid, _) = current_ids();
            if !is_target(pid) {
                return None;
            }
            let t = sock_tuple(sk)?;
            let key = ListenKey {
                netns: sock_netns(sk),
                port: t.sport,
                _pad: 0,
            };
            let _ = LISTENERS.insert(key, pid, 0);
        }
        (TCP_LISTEN, TCP_CLOSE) => {
            let t = sock_tuple(sk)?;
            let key = ListenKey {
                netns: sock_netns(sk),
                port: t.sport,
                _pad: 0,
            };
            let _ = LISTENERS.remove(key);
        }
        (_, TCP_CLOSE) => {
            let t = sock_tuple(sk)?;
            let netns = sock_netns(sk);
            // SAFETY: value copied out immediately.
            if let Some(owner) = unsafe { CONNS.get(sk) }.copied() {
                let _ = CONNS.remove(sk);
                super::tls::unbind_sock(sk);
                let flags = if old == TCP_SYN_SENT {
                    TCP_FLAG_FAILED
                } else {
                    0
                };
                let extra = Extra {
                    flags,
                    ..Extra::default()
                };
                emit(EventKind::TcpClose, &owner, &t, netns, sk, extra);
            } else {
                let key = PortPairKey {
                    netns,
                    lport: t.sport,
                    rport: t.dport,
                };
                // SAFETY: value copied out immediately.
                let owner = unsafe { PREEXISTING.get(key) }.copied()?;
                let _ = PREEXISTING.remove(key);
                emit(EventKind::TcpClose, &owner, &t, netns, sk, Extra::default());
            }
        }
        _ => {}
    }
    Some(())
}

/// The segment a traced listener received just before this accept, in the
/// same softirq on this CPU (skb.rs `before_accept`), if it was this
/// connection's. Taken: the slot is emptied.
#[inline(always)]
fn claim_early_segment(netns: u32, lport: u16, rport: u16) -> Option<EarlySegment> {
    let slot = EARLY_SEGMENT.get_ptr_mut(0)?;
    // SAFETY: pointer into this CPU's slot, valid for this program run;
    // nothing else runs on this CPU meanwhile.
    let early = unsafe { *slot };
    if early.id == 0 || early.netns != netns || early.lport != lport || early.rport != rport {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*slot).id = 0 };
    Some(early)
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: RawTracePointContext) -> i32 {
    let _ = try_retransmit(&ctx);
    0
}

fn try_retransmit(ctx: &RawTracePointContext) -> Option<()> {
    let sk: u64 = ctx.arg(0);
    let t = sock_tuple(sk)?;
    let netns = sock_netns(sk);
    // SAFETY: value copied out immediately.
    let owner = match unsafe { CONNS.get(sk) }.copied() {
        Some(owner) => owner,
        None => {
            let key = PortPairKey {
                netns,
                lport: t.sport,
                rport: t.dport,
            };
            // SAFETY: value copied out immediately.
            unsafe { PREEXISTING.get(key) }.copied()?
        }
    };
    let skb: u64 = ctx.arg(1);
    let segments = skb_tcp_segments(skb);
    let extra = Extra {
        segments,
        ..Extra::default()
    };
    emit(EventKind::TcpRetransmit, &owner, &t, netns, sk, extra);
    Some(())
}
