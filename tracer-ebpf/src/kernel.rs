//! Reads of kernel structs through offsets taken from the running kernel's
//! BTF (see `KernelOffsets`). Every read is a fault-tolerant
//! bpf_probe_read_kernel. Offsets are all 0 when user space had no BTF; each
//! accessor checks one field that is never at offset 0 and degrades to
//! "unknown" then (some fields, like inode.i_mode, really are at 0).

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

use crate::maps::offsets;

#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: probe_read_kernel validates the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// `read`, for an optional field: None when user space had no offset for it.
#[inline(always)]
fn read_known<T>(base: u64, offset: u32) -> Option<T> {
    if offset == 0 {
        return None;
    }
    read(base, offset)
}

/// The peer's FIN has been received (SOCK_DONE in sk_flags).
#[inline(always)]
fn peer_fin_received(sk: u64) -> bool {
    let off = offsets();
    let flags = read::<u64>(sk, off.sk_flags).unwrap_or(0);
    (flags >> (off.sock_done_bit & 63)) & 1 != 0
}

/// Segments a TCP `struct sk_buff *` carries (tcp_skb_pcount: a GSO skb
/// holds several). At least 1; 1 when the offset is unknown.
#[inline(always)]
pub fn skb_tcp_segments(skb: u64) -> u32 {
    read_known::<u16>(skb, offsets().skb_tcp_gso_segs).map_or(1, |n| u32::from(n).max(1))
}

/// Network namespace inode of a `struct sock *`.
#[inline(always)]
pub fn sock_netns(sk: u64) -> u32 {
    let off = offsets();
    if off.sk_net == 0 {
        return 0;
    }
    read::<u64>(sk, off.sk_net)
        .and_then(|net| read::<u32>(net, off.net_ns_inum))
        .unwrap_or(0)
}

const SEND_SHUTDOWN: u8 = 2;

/// Payload bytes (sent and acknowledged, received) of a TCP socket that is
/// closing.
///
/// tcp_sock.bytes_acked / bytes_received count sequence space, which
/// includes the SYN (acked by the peer of an active open) and the FINs. Those
/// are taken off so the result is the application's bytes:
/// - our SYN: counted in bytes_acked for an active open only;
/// - our FIN: sent once we shut down writing (SEND_SHUTDOWN), and counted
///   once acknowledged (snd_una has reached write_seq, which includes it);
/// - the peer's FIN: counted in bytes_received; SOCK_DONE marks it received.
#[inline(always)]
pub fn tcp_payload_bytes(sk: u64, active_open: bool) -> (u64, u64) {
    let off = offsets();
    if off.tcp_bytes_acked == 0 {
        return (0, 0);
    }
    let acked = read::<u64>(sk, off.tcp_bytes_acked).unwrap_or(0);
    let received = read::<u64>(sk, off.tcp_bytes_received).unwrap_or(0);
    let shutdown = read::<u8>(sk, off.sk_shutdown).unwrap_or(0);
    let snd_una = read::<u32>(sk, off.tcp_snd_una).unwrap_or(0);
    let write_seq = read::<u32>(sk, off.tcp_write_seq).unwrap_or(1);
    let syn = active_open as u64;
    let our_fin = (shutdown & SEND_SHUTDOWN != 0 && snd_una == write_seq) as u64;
    let peer_fin = peer_fin_received(sk) as u64;
    (
        acked.saturating_sub(syn + our_fin),
        received.saturating_sub(peer_fin),
    )
}

#[inline(always)]
fn current_task() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_get_current_task() }
}

/// exit_code of the current task (meaningful in sched_process_exit).
#[inline(always)]
pub fn current_exit_code() -> u32 {
    let off = offsets().task_exit_code;
    if off == 0 {
        return 0;
    }
    read::<u32>(current_task(), off).unwrap_or(0)
}

const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;

const S_IFSOCK: u16 = 0o140000;

/// What an fd of the current task refers to, as far as capture cares.
pub enum FdObject {
    /// A regular file, by inode number.
    RegularFile(u64),
    /// A socket, by its `struct sock *`.
    Socket(u64),
}

/// Look up `fd` in the current task's fd table.
#[inline(always)]
pub fn fd_object(fd: u32) -> Option<FdObject> {
    let off = offsets();
    if off.task_files == 0 {
        return None;
    }
    let files = read::<u64>(current_task(), off.task_files)?;
    let fdt = read::<u64>(files, off.files_fdt)?;
    let max_fds = read::<u32>(fdt, off.fdtable_max_fds)?;
    if fd >= max_fds {
        return None;
    }
    let fd_array = read::<u64>(fdt, off.fdtable_fd)?;
    // SAFETY: fault-tolerant read of one slot of the fd array.
    let file = unsafe { bpf_probe_read_kernel((fd_array + fd as u64 * 8) as *const u64) }.ok()?;
    let inode = read::<u64>(file, off.file_inode)?;
    let mode = read::<u16>(inode, off.inode_mode)? & S_IFMT;
    if mode == S_IFREG {
        return read::<u64>(inode, off.inode_ino).map(FdObject::RegularFile);
    }
    if mode == S_IFSOCK {
        let socket = read::<u64>(file, off.file_private_data)?;
        return read::<u64>(socket, off.socket_sk).map(FdObject::Socket);
    }
    None
}

/// Inode number if `fd` of the current task is a regular file.
#[inline(always)]
pub fn regular_file_ino(fd: u32) -> Option<u64> {
    match fd_object(fd)? {
        FdObject::RegularFile(ino) => Some(ino),
        FdObject::Socket(_) => None,
    }
}

/// A socket's protocol (IPPROTO_*), 0 if unknown.
#[inline(always)]
pub fn sock_protocol(sk: u64) -> u16 {
    let off = offsets();
    if off.sk_protocol == 0 {
        return 0;
    }
    read::<u16>(sk, off.sk_protocol).unwrap_or(0)
}

/// (family, local addr, remote addr) of a socket; IPv4 uses the first 4
/// bytes of each address.
#[inline(always)]
pub fn sock_addrs(sk: u64) -> Option<(u16, [u8; 16], [u8; 16])> {
    let off = offsets();
    if off.skc_family == 0 {
        return None;
    }
    let family = read::<u16>(sk, off.skc_family)?;
    let mut local = [0u8; 16];
    let mut remote = [0u8; 16];
    if family == tracer_common::AF_INET {
        local[..4].copy_from_slice(&read::<[u8; 4]>(sk, off.skc_rcv_saddr)?);
        remote[..4].copy_from_slice(&read::<[u8; 4]>(sk, off.skc_daddr)?);
    } else {
        local = read::<[u8; 16]>(sk, off.skc_v6_rcv_saddr)?;
        remote = read::<[u8; 16]>(sk, off.skc_v6_daddr)?;
    }
    Some((family, local, remote))
}

/// tcp_sock.write_seq: the sequence number the next byte written gets.
#[inline(always)]
pub fn tcp_write_seq(sk: u64) -> Option<u32> {
    read_known(sk, offsets().tcp_write_seq)
}

/// tcp_sock.total_retrans: segments retransmitted on the connection so far
/// (0 when the offset is unknown).
#[inline(always)]
pub fn tcp_total_retrans(sk: u64) -> u32 {
    read_known(sk, offsets().tcp_total_retrans).unwrap_or(0)
}

/// tcp_sock.copied_seq: the next byte the application will read.
#[inline(always)]
pub fn tcp_copied_seq(sk: u64) -> Option<u32> {
    read_known(sk, offsets().tcp_copied_seq)
}

/// The end of the payload the application has read: copied_seq, less the
/// peer's FIN once a read consumed it (a FIN takes a sequence number and
/// the read that reaches it moves copied_seq past it, but it carries no
/// byte). The FIN was received when SOCK_DONE is set, and consumed when
/// copied_seq has caught up with rcv_nxt, which is one past it.
#[inline(always)]
pub fn tcp_read_payload_end(sk: u64) -> Option<u32> {
    let copied = tcp_copied_seq(sk)?;
    let fin_consumed =
        peer_fin_received(sk) && read_known::<u32>(sk, offsets().tcp_rcv_nxt) == Some(copied);
    Some(if fin_consumed {
        copied.wrapping_sub(1)
    } else {
        copied
    })
}

/// (local port, remote port) of a socket, host order.
#[inline(always)]
pub fn sock_ports(sk: u64) -> Option<(u16, u16)> {
    let off = offsets();
    if off.skc_num == 0 {
        return None;
    }
    let local = read::<u16>(sk, off.skc_num)?;
    let remote = u16::from_be(read::<u16>(sk, off.skc_dport)?);
    Some((local, remote))
}
