//! Runtime timing from uprobes on the target's own executable. Both hooks
//! fire at most once per event-loop turn or per GC, never per request, which
//! is what keeps their trap cost small (docs/architecture.md).
//!
//! match-proto: libuv `void uv__io_poll(uv_loop_t*, int)`;
//!   V8 `Heap::CollectGarbage(AllocationSpace, GarbageCollectionReason,
//!   GCCallbackFlags)`. Attached per process by user space, so no TARGETS
//!   check is needed here.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{EventKind, GcEvent, LoopEvent, PollState};

use crate::{
    emit::{current_header, current_ids, now_ns, output},
    maps::{GC_START, POLL_STATE, loop_min_busy_ns},
};

/// Entering poll ends the previous turn's callback phase: report that turn.
#[uprobe]
pub fn uv_io_poll_enter(_ctx: ProbeContext) -> u32 {
    let (_, tid) = current_ids();
    let now = now_ns();
    match POLL_STATE.get_ptr_mut(tid) {
        Some(state) => {
            // SAFETY: entry of this thread only; one thread runs one loop.
            let state = unsafe { &mut *state };
            if state.prev_exit_ns != 0 {
                let busy_ns = now.saturating_sub(state.prev_exit_ns);
                if busy_ns >= loop_min_busy_ns() {
                    output(
                        EventKind::Loop,
                        LoopEvent {
                            hdr: current_header(EventKind::Loop),
                            poll_ns: state.prev_poll_ns,
                            busy_ns,
                        },
                    );
                }
            }
            state.enter_ns = now;
        }
        None => {
            let state = PollState {
                enter_ns: now,
                prev_exit_ns: 0,
                prev_poll_ns: 0,
            };
            let _ = POLL_STATE.insert(tid, state, 0);
        }
    }
    0
}

#[uretprobe]
pub fn uv_io_poll_exit(_ctx: RetProbeContext) -> u32 {
    let (_, tid) = current_ids();
    let now = now_ns();
    if let Some(state) = POLL_STATE.get_ptr_mut(tid) {
        // SAFETY: as above.
        let state = unsafe { &mut *state };
        if state.enter_ns != 0 {
            state.prev_poll_ns = now.saturating_sub(state.enter_ns);
            state.prev_exit_ns = now;
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
