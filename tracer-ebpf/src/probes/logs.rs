//! Log capture: what a traced process writes to stdout, stderr and regular
//! files.
//!
//! match-proto: syscalls:sys_enter_write / sys_enter_pwrite64
//!   (fd @16 u64, buf @24 ptr, count @32 u64), syscalls:sys_enter_writev
//!   (fd @16 u64, vec @24 ptr, vlen @32 u64) — /sys/kernel/tracing/events/syscalls/*/format.
//!
//! Cost note: enabling any syscall tracepoint puts every syscall of every
//! process on the kernel's slow path (see docs/architecture.md). The filter
//! here is first a TARGETS lookup, then the fd class: sockets and pipes other
//! than stdout/stderr are never copied.

use aya_ebpf::{
    cty::c_long, helpers::generated::bpf_probe_read_user, macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    EventKind, LOG_CHUNK_BYTES, LogChunkHeader, MAX_IOVECS, MAX_LOG_CHUNKS, Stream,
};

use crate::{
    emit::{count_lost, current_header},
    kernel::regular_file_ino,
    maps::{EVENTS, LOG_SCRATCH, is_target, max_buffer_bytes},
};

const HEADER_LEN: usize = core::mem::size_of::<LogChunkHeader>();

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    // write and pwrite64 share the first three fields.
    let _ = try_write(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    let _ = try_writev(&ctx);
    0
}

/// Which stream `fd` is, and the inode for files. None: not captured.
#[inline(always)]
fn classify(fd: u32) -> Option<(Stream, u64)> {
    match fd {
        1 => Some((Stream::Stdout, 0)),
        2 => Some((Stream::Stderr, 0)),
        _ => regular_file_ino(fd).map(|ino| (Stream::File, ino)),
    }
}

#[inline(always)]
fn traced_fd(ctx: &TracePointContext) -> Option<(u32, Stream, u64)> {
    let (pid, _) = crate::emit::current_ids();
    if !is_target(pid) {
        return None;
    }
    // SAFETY: offsets from the tracepoint format (see module docs).
    let fd = unsafe { ctx.read_at::<u64>(16) }.ok()? as u32;
    let (stream, ino) = classify(fd)?;
    Some((fd, stream, ino))
}

fn try_write(ctx: &TracePointContext) -> Option<()> {
    let (fd, stream, ino) = traced_fd(ctx)?;
    // SAFETY: as above.
    let buf = unsafe { ctx.read_at::<u64>(24) }.ok()?;
    // SAFETY: as above.
    let count = unsafe { ctx.read_at::<u64>(32) }.ok()?;
    emit_buffer(fd, stream, ino, buf, count);
    Some(())
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

fn try_writev(ctx: &TracePointContext) -> Option<()> {
    let (fd, stream, ino) = traced_fd(ctx)?;
    // SAFETY: as above.
    let vec = unsafe { ctx.read_at::<u64>(24) }.ok()?;
    // SAFETY: as above.
    let vlen = unsafe { ctx.read_at::<u64>(32) }.ok()?;
    for i in 0..MAX_IOVECS {
        if i as u64 >= vlen {
            break;
        }
        let mut iov = Iovec { base: 0, len: 0 };
        // SAFETY: copies one iovec from user memory into a stack value of
        // exactly that size; the helper faults cleanly on a bad pointer.
        let rc = unsafe {
            bpf_probe_read_user(
                (&mut iov as *mut Iovec).cast(),
                core::mem::size_of::<Iovec>() as u32,
                (vec + i as u64 * 16) as *const _,
            )
        };
        if rc != 0 {
            break;
        }
        emit_buffer(fd, stream, ino, iov.base, iov.len);
    }
    Some(())
}

/// Copy one user buffer into the ring as a run of chunks. Chunks of one
/// buffer are submitted back to back from one CPU, so they stay in order in
/// the ring; user space sees a gap in `offset` if one was lost.
///
/// Not inlined on purpose: as a BPF-to-BPF call the verifier checks its loop
/// without multiplying it into the caller's (writev's) loop states.
#[inline(never)]
fn emit_buffer(fd: u32, stream: Stream, ino: u64, buf: u64, count: u64) -> u32 {
    let Some(scratch) = LOG_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch slot; nothing else on this CPU runs while we do.
    let scratch = unsafe { &mut *scratch };
    let cap = core::cmp::min(count, max_buffer_bytes() as u64);
    scratch.head = LogChunkHeader {
        hdr: current_header(EventKind::Log),
        fd,
        stream: stream as u32,
        buffer_len: count,
        offset: 0,
        len: 0,
        ino,
    };
    for i in 0..MAX_LOG_CHUNKS {
        let offset = i as u64 * LOG_CHUNK_BYTES as u64;
        if offset >= cap {
            break;
        }
        let remaining = cap - offset;
        let len = if remaining > LOG_CHUNK_BYTES as u64 {
            LOG_CHUNK_BYTES
        } else {
            // Masked so the verifier sees the helper's size bounded.
            (remaining as usize) & (LOG_CHUNK_BYTES - 1)
        };
        if len == 0 {
            break;
        }
        // SAFETY: `len` <= LOG_CHUNK_BYTES, the size of `data`; the helper
        // faults cleanly on a bad user pointer.
        let rc: c_long = unsafe {
            bpf_probe_read_user(
                scratch.data.as_mut_ptr().cast(),
                len as u32,
                (buf + offset) as *const _,
            )
        };
        if rc != 0 {
            break;
        }
        scratch.head.offset = offset as u32;
        scratch.head.len = len as u32;
        // SAFETY: HEADER_LEN + len <= size_of::<LogChunk>(), so the slice
        // stays inside the scratch value.
        let record = unsafe {
            core::slice::from_raw_parts((scratch as *const _) as *const u8, HEADER_LEN + len)
        };
        if EVENTS.output::<[u8]>(record, 0).is_err() {
            count_lost(EventKind::Log);
            break;
        }
    }
    0
}
