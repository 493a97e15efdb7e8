//! Following the traced processes: children inherit tracing, exec and exit
//! are reported.
//!
//! match-proto: sched:sched_process_fork (parent_pid @12, child_pid @20),
//!   sched:sched_process_exec (filename __data_loc @8, pid @12),
//!   sched:sched_process_exit
//!   (pid @24, group_dead @32 bool).

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_probe_read_kernel_str_bytes, macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{EventKind, FileOpenEvent, PATH_BYTES, ProcEvent, TARGET_CHILD};

use crate::{
    emit::{count_lost, current_header, current_ids, output},
    kernel::current_exit_code,
    maps::{EVENTS, GC_START, POLL_STATE, TARGETS, is_target, report_all_execs},
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
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let (pid, _) = current_ids();
    if !(is_target(pid) || report_all_execs()) {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<FileOpenEvent>(0) else {
        count_lost(EventKind::Exec);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at reserved ring memory of the right size; every
    // field is written before submit. `filename` is a __data_loc field: the
    // low 16 bits of the u32 at offset 8 are its offset in the record.
    unsafe {
        (*ev).hdr = current_header(EventKind::Exec);
        (*ev).fd = 0;
        (*ev)._pad = 0;
        let path = &mut (*ev).path;
        path[0] = 0;
        if let Ok(loc) = ctx.read_at::<u32>(8) {
            let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
            if bpf_probe_read_kernel_str_bytes(src, path).is_err() {
                path[0] = 0;
            }
        }
        path[PATH_BYTES - 1] = 0;
    }
    entry.submit(crate::emit::submit_flags());
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
