//! Writing records into the ring, and counting what could not be written.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use tracer_common::{COMM_LEN, EventHeader, EventKind};

use crate::maps::{EVENTS, LOST, wakeup_bytes};

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments, always available to tracing programs.
    unsafe { bpf_ktime_get_ns() }
}

/// (tgid, tid) of the current task.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

/// Header for an event observed in the context of the current task.
#[inline(always)]
pub fn current_header(kind: EventKind) -> EventHeader {
    let (pid, tid) = current_ids();
    EventHeader {
        kind: kind as u32,
        pid,
        tid,
        _pad: 0,
        ts_ns: now_ns(),
        comm: bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]),
    }
}

/// Count one record of `kind` that did not fit in the ring.
#[inline(always)]
pub fn count_lost(kind: EventKind) {
    if let Some(slot) = LOST.get_ptr_mut(kind as u32) {
        // SAFETY: per-CPU slot, so no other CPU writes it concurrently.
        unsafe { *slot += 1 };
    }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Submit flags that batch wakeups: the reader is woken only once the ring
/// holds `WAKEUP_BYTES` (user space also drains on a short timer, which
/// bounds the latency of a quiet ring). A wakeup per record would cost the
/// reader an epoll round trip per record — most of its CPU under load.
#[inline(always)]
pub fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= wakeup_bytes() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Copy a fixed-size record into the ring, counting a failure.
#[inline(always)]
pub fn output<T: 'static>(kind: EventKind, record: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(submit_flags());
        }
        None => count_lost(kind),
    }
}
