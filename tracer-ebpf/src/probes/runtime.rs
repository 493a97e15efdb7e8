//! Runtime timing from uprobes on the target's own executable and its libc.
//! Every hook fires at most a few times per event-loop turn or once per GC,
//! never per request, which is what keeps their trap cost small
//! (docs/architecture.md).
//!
//! A turn runs from one `uv__io_poll` entry to the next. libuv runs I/O
//! callbacks *inside* `uv__io_poll`, right after `epoll_wait` returns, so
//! the time inside `uv__io_poll` is not idle time: only the epoll wait is.
//! The turn's busy time is its length minus the time blocked in epoll —
//! timers, I/O callbacks, immediates and close callbacks alike. That is
//! also how libuv's own idle-time metric (node's
//! `performance.eventLoopUtilization()`) draws the line.
//!
//! match-proto: libuv `void uv__io_poll(uv_loop_t*, int)`; glibc
//!   `int epoll_wait(int, struct epoll_event*, int, int)` and
//!   `epoll_pwait(..., const sigset_t*)`; V8 `Heap::CollectGarbage(
//!   AllocationSpace, GarbageCollectionReason, GCCallbackFlags)`. Attached
//!   per process by user space, so no TARGETS check is needed here.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{EventKind, GcEvent, LoopEvent, PollState};

use crate::{
    emit::{current_header, current_ids, now_ns, output},
    maps::{GC_START, POLL_STATE, loop_min_busy_ns},
};

/// Entering poll ends the turn that began at the previous entry: report it.
#[uprobe]
pub fn uv_io_poll_enter(_ctx: ProbeContext) -> u32 {
    let (_, tid) = current_ids();
    let now = now_ns();
    match POLL_STATE.get_ptr_mut(tid) {
        Some(state) => {
            // SAFETY: this thread's entry; one thread runs one loop, and
            // only this thread's probes touch it.
            let state = unsafe { &mut *state };
            if state.turn_start_ns != 0 {
                let turn_ns = now.saturating_sub(state.turn_start_ns);
                let blocked_ns = core::cmp::min(state.blocked_ns, turn_ns);
                let busy_ns = turn_ns - blocked_ns;
                if busy_ns >= loop_min_busy_ns() {
                    output(
                        EventKind::Loop,
                        LoopEvent {
                            hdr: current_header(EventKind::Loop),
                            poll_ns: blocked_ns,
                            busy_ns,
                        },
                    );
                }
            }
            state.turn_start_ns = now;
            state.blocked_ns = 0;
            state.epoll_enter_ns = 0;
        }
        None => {
            let state = PollState {
                turn_start_ns: now,
                blocked_ns: 0,
                epoll_enter_ns: 0,
            };
            let _ = POLL_STATE.insert(tid, state, 0);
        }
    }
    0
}

/// A thread that runs an event loop starts waiting for I/O.
#[uprobe]
pub fn epoll_wait_enter(_ctx: ProbeContext) -> u32 {
    let (_, tid) = current_ids();
    if let Some(state) = POLL_STATE.get_ptr_mut(tid) {
        // SAFETY: as above.
        let state = unsafe { &mut *state };
        // Only inside a turn (threads without a loop have no state), and
        // only the outermost call if one wrapper calls another.
        if state.turn_start_ns != 0 && state.epoll_enter_ns == 0 {
            state.epoll_enter_ns = now_ns();
        }
    }
    0
}

#[uretprobe]
pub fn epoll_wait_exit(_ctx: RetProbeContext) -> u32 {
    let (_, tid) = current_ids();
    if let Some(state) = POLL_STATE.get_ptr_mut(tid) {
        // SAFETY: as above.
        let state = unsafe { &mut *state };
        if state.epoll_enter_ns != 0 {
            state.blocked_ns += now_ns().saturating_sub(state.epoll_enter_ns);
            state.epoll_enter_ns = 0;
        }
    }
    0
}

#[uprobe]
pub fn gc_enter(_ctx: ProbeContext) -> u32 {
    let (_, tid) = current_ids();
    let _ = GC_START.insert(tid, now_ns(), 0);
    0
}

#[uretprobe]
pub fn gc_exit(_ctx: RetProbeContext) -> u32 {
    let (_, tid) = current_ids();
    // SAFETY: value copied out immediately.
    if let Some(start) = unsafe { GC_START.get(tid) }.copied() {
        let _ = GC_START.remove(tid);
        output(
            EventKind::Gc,
            GcEvent {
                hdr: current_header(EventKind::Gc),
                duration_ns: now_ns().saturating_sub(start),
            },
        );
    }
    0
}
