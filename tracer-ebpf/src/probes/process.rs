//! Following the traced processes: children inherit tracing, exec and exit
//! are reported.
//!
//! match-proto: sched:sched_process_fork (parent_pid @12, child_pid @20),
//!   sched:sched_process_exec (pid @12), sched:sched_process_exit
//!   (pid @24, group_dead @32 bool).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{EventKind, ProcEvent, TARGET_CHILD};

use crate::{
    emit::{current_header, current_ids, output},
    kernel::current_exit_code,
    maps::{GC_START, POLL_STATE, TARGETS, is_target, report_all_execs},
};

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let (pid, _) = current_ids();
    if !is_target(pid) {
        return 0;
    }
    // SAFETY: offset from the tracepoint format.
    if let Ok(child) = unsafe { ctx.read_at::<i32>(20) } {
        // For a new thread this key is a tid of an already traced tgid, which
        // is harmless; for a new process it makes the child's tgid traced.
        let _ = TARGETS.insert(child as u32, TARGET_CHILD, 0);
    }
    0
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let (pid, _) = current_ids();
    if is_target(pid) || report_all_execs() {
        output(
            EventKind::Exec,
            ProcEvent {
                hdr: current_header(EventKind::Exec),
                exit_code: 0,
                _pad: 0,
            },
        );
    }
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let (pid, tid) = current_ids();
    if !is_target(pid) && !is_target(tid) {
        return 0;
    }
    let _ = POLL_STATE.remove(tid);
    let _ = GC_START.remove(tid);
    if tid != pid {
        let _ = TARGETS.remove(tid);
    }
    // SAFETY: offset from the tracepoint format.
    let group_dead = unsafe { ctx.read_at::<u8>(32) }.unwrap_or(0) != 0;
    if group_dead {
        output(
            EventKind::Exit,
            ProcEvent {
                hdr: current_header(EventKind::Exit),
                exit_code: current_exit_code(),
                _pad: 0,
            },
        );
        let _ = TARGETS.remove(pid);
    }
    0
}
