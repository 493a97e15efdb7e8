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

/// (bytes_acked, bytes_received) of a TCP socket.
#[inline(always)]
pub fn tcp_bytes(sk: u64) -> (u64, u64) {
    let off = offsets();
    if off.tcp_bytes_acked == 0 {
        return (0, 0);
    }
    (
        read::<u64>(sk, off.tcp_bytes_acked).unwrap_or(0),
        read::<u64>(sk, off.tcp_bytes_received).unwrap_or(0),
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

/// Inode number if `fd` of the current task is a regular file.
#[inline(always)]
pub fn regular_file_ino(fd: u32) -> Option<u64> {
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
    let mode = read::<u16>(inode, off.inode_mode)?;
    if mode & S_IFMT != S_IFREG {
        return None;
    }
    read::<u64>(inode, off.inode_ino)
}
