//! Log capture — what a traced process writes to stdout, stderr and regular
//! files — and payload capture of its traced TCP connections (what it
//! writes to and reads from them), both from the same syscall hooks.
//!
//! match-proto: syscalls:sys_enter_write / sys_enter_pwrite64
//!   (fd @16 u64, buf @24 ptr, count @32 u64), syscalls:sys_enter_writev
//!   (fd @16 u64, vec @24 ptr, vlen @32 u64), syscalls:sys_exit_{write,
//!   pwrite64,writev,read,openat} (ret @16 i64), syscalls:sys_enter_read
//!   (fd @16, buf @24, count @32), syscalls:sys_enter_openat (filename @24
//!   ptr) — /sys/kernel/tracing/events/syscalls/*/format.
//!
//! Data is copied at syscall *exit*, for the bytes actually written: a
//! write to a full pipe can be partial and is then retried with the rest,
//! so copying at entry would duplicate bytes. Entry only records the
//! arguments of a write worth capturing (filter: TARGETS, then the fd class;
//! sockets and pipes other than stdout/stderr are never copied).
//!
//! Cost note: enabling any syscall tracepoint puts every syscall of every
//! process on the kernel's slow path (see docs/architecture.md).

use aya_ebpf::{
    cty::{c_long, c_void},
    helpers::{
        bpf_probe_read_user_str_bytes,
        generated::{bpf_loop, bpf_probe_read_user},
    },
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use tracer_common::{
    EventKind, FileOpenEvent, LOG_CHUNK_BYTES, LogChunkHeader, MAX_LOG_CHUNKS, PATH_BYTES, Stream,
};

use crate::{
    emit::{count_lost, current_header, current_ids},
    kernel::{FdObject, fd_object, regular_file_ino},
    maps::{
        EVENTS, LOG_SCRATCH, capture_logs, http_via_syscalls, is_target, max_buffer_bytes,
        socket_capture_bytes,
    },
    probes::{
        tcp::is_traced_conn,
        tls::{self, LAST_READ, SSL_WRITE_PENDING, TLS_SOCKS},
    },
};

const HEADER_LEN: usize = core::mem::size_of::<LogChunkHeader>();

/// Arguments of a write in flight, from entry to exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WriteArgs {
    ino: u64,
    /// The buffer (write) or the iovec array (writev).
    ptr: u64,
    /// iovec count for writev.
    vlen: u64,
    fd: u32,
    stream: u32,
    is_vec: u32,
    _pad: u32,
}

impl WriteArgs {
    /// A single buffer of `stream` (not writev).
    #[inline(always)]
    pub fn new(fd: u32, stream: Stream, ino: u64, ptr: u64) -> Self {
        Self {
            ino,
            ptr,
            vlen: 0,
            fd,
            stream: stream as u32,
            is_vec: 0,
            _pad: 0,
        }
    }
}

/// A thread is about to move bytes on traced connection `sk`: remember it
/// for the TLS binding, and say whether its bytes are ciphertext (not worth
/// copying; the TLS probes copy the plaintext).
#[inline(always)]
fn note_socket_use(tid: u32, sk: u64, writing: bool) -> bool {
    let tls_like = tls::looks_tls(sk);
    if !writing {
        // Only a TLS connection's read can feed the next SSL_read.
        if tls_like {
            let _ = LAST_READ.insert(tid, sk, 0);
        }
    } else if tls_like
        // SAFETY: value copied out immediately.
        && let Some(ssl) = unsafe { SSL_WRITE_PENDING.get(tid) }.copied()
    {
        let _ = SSL_WRITE_PENDING.remove(tid);
        tls::bind(ssl, sk);
    }
    TLS_SOCKS.get_ptr(sk).is_some()
}

/// Writes (and opens) of traced threads between entry and exit, by tid.
#[map]
static WRITES_IN_FLIGHT: HashMap<u32, WriteArgs> = HashMap::with_max_entries(16384, 0);

/// openat() filename pointers between entry and exit, by tid.
#[map]
static OPENS_IN_FLIGHT: HashMap<u32, u64> = HashMap::with_max_entries(16384, 0);

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    // write and pwrite64 share the first three fields.
    let _ = remember_write(&ctx, false);
    0
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    let _ = remember_write(&ctx, true);
    0
}

/// Shared by the exits of write, pwrite64, writev and read: all return the
/// byte count, and the entry probe left what to copy in WRITES_IN_FLIGHT.
#[tracepoint]
pub fn sys_exit_rw(ctx: TracePointContext) -> u32 {
    let _ = copy_written(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    let _ = remember_read(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    let (pid, tid) = current_ids();
    if is_target(pid) {
        // SAFETY: offset from the tracepoint format.
        if let Ok(filename) = unsafe { ctx.read_at::<u64>(24) } {
            let _ = OPENS_IN_FLIGHT.insert(tid, filename, 0);
        }
    }
    0
}

#[tracepoint]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    let _ = report_open(&ctx);
    0
}

fn report_open(ctx: &TracePointContext) -> Option<()> {
    let (_, tid) = current_ids();
    // SAFETY: value copied out immediately.
    let filename = unsafe { OPENS_IN_FLIGHT.get(tid) }.copied()?;
    let _ = OPENS_IN_FLIGHT.remove(tid);
    // SAFETY: offset from the tracepoint format.
    let fd = unsafe { ctx.read_at::<i64>(16) }.ok()?;
    if fd < 0 {
        return None;
    }
    let fd = fd as u32;
    // Only regular files can be log files.
    regular_file_ino(fd)?;
    let Some(mut entry) = EVENTS.reserve::<FileOpenEvent>(0) else {
        count_lost(EventKind::FileOpen);
        return None;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at reserved ring memory of the right size; every
    // field is written before submit.
    unsafe {
        (*ev).hdr = current_header(EventKind::FileOpen);
        (*ev).fd = fd;
        (*ev)._pad = 0;
        let path = &mut (*ev).path;
        if bpf_probe_read_user_str_bytes(filename as *const u8, path).is_err() {
            path[0] = 0;
        }
        path[PATH_BYTES - 1] = 0;
    }
    entry.submit(crate::emit::submit_flags());
    Some(())
}

/// Which stream a write to `fd` belongs to, with the inode (files) or the
/// `struct sock *` (connections). None: not captured.
#[inline(always)]
fn classify(fd: u32) -> Option<(Stream, u64)> {
    let logs = capture_logs();
    match fd {
        1 if logs => Some((Stream::Stdout, 0)),
        2 if logs => Some((Stream::Stderr, 0)),
        _ => match fd_object(fd)? {
            FdObject::RegularFile(ino) => logs.then_some((Stream::File, ino)),
            FdObject::Socket(sk) => traced_socket(sk).then_some((Stream::SocketSent, sk)),
        },
    }
}

/// Payload capture from these hooks is on and `sk` is a TCP connection of
/// a traced process. (By default payload comes from the cgroup_skb
/// programs and these hooks carry logs only.)
#[inline(always)]
fn traced_socket(sk: u64) -> bool {
    socket_capture_bytes() != 0 && http_via_syscalls() && is_traced_conn(sk)
}

fn remember_read(ctx: &TracePointContext) -> Option<()> {
    let (pid, tid) = current_ids();
    if !is_target(pid) || socket_capture_bytes() == 0 || !http_via_syscalls() {
        return None;
    }
    // SAFETY: offsets from the tracepoint format (see module docs).
    let (fd, ptr) = unsafe {
        (
            ctx.read_at::<u64>(16).ok()? as u32,
            ctx.read_at::<u64>(24).ok()?,
        )
    };
    let FdObject::Socket(sk) = fd_object(fd)? else {
        return None;
    };
    if !is_traced_conn(sk) || note_socket_use(tid, sk, false) {
        return None;
    }
    let args = WriteArgs::new(fd, Stream::SocketReceived, sk, ptr);
    WRITES_IN_FLIGHT.insert(tid, args, 0).ok()
}

fn remember_write(ctx: &TracePointContext, is_vec: bool) -> Option<()> {
    let (pid, tid) = current_ids();
    if !is_target(pid) {
        return None;
    }
    // SAFETY: offsets from the tracepoint formats (see module docs).
    let (fd, ptr, vlen) = unsafe {
        (
            ctx.read_at::<u64>(16).ok()? as u32,
            ctx.read_at::<u64>(24).ok()?,
            ctx.read_at::<u64>(32).ok()?,
        )
    };
    let (stream, ino) = classify(fd)?;
    if stream == Stream::SocketSent {
        // The bytes are in place at entry: recognise a TLS record.
        let first = if is_vec {
            first_iov_base(ptr, vlen)
        } else {
            Some(ptr)
        };
        if let Some(first) = first {
            tls::peek_record(ino, first);
        }
        if note_socket_use(tid, ino, true) {
            return None;
        }
    }
    let args = WriteArgs {
        ino,
        ptr,
        vlen,
        fd,
        stream: stream as u32,
        is_vec: is_vec as u32,
        _pad: 0,
    };
    WRITES_IN_FLIGHT.insert(tid, args, 0).ok()
}

/// Base of the first iovec of a writev.
#[inline(always)]
fn first_iov_base(vec: u64, vlen: u64) -> Option<u64> {
    if vlen == 0 {
        return None;
    }
    let mut iov = Iovec { base: 0, len: 0 };
    // SAFETY: one iovec copied from user memory into a stack value of its
    // size; the helper faults cleanly.
    let rc = unsafe {
        bpf_probe_read_user(
            (&mut iov as *mut Iovec).cast(),
            core::mem::size_of::<Iovec>() as u32,
            vec as *const _,
        )
    };
    (rc == 0 && iov.len >= 2).then_some(iov.base)
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Most iovecs of one writev() that are copied: the kernel's IOV_MAX, which
/// is also what libuv batches queued stream writes up to.
const IOV_MAX: u32 = 1024;

fn copy_written(ctx: &TracePointContext) -> Option<()> {
    let (_, tid) = current_ids();
    // SAFETY: value copied out immediately.
    let args = unsafe { WRITES_IN_FLIGHT.get(tid) }.copied()?;
    let _ = WRITES_IN_FLIGHT.remove(tid);
    // SAFETY: offset from the tracepoint format.
    let written = unsafe { ctx.read_at::<i64>(16) }.ok()?;
    if written <= 0 {
        return None;
    }
    if args.stream == Stream::SocketReceived as u32 && !tls::looks_tls(args.ino) {
        // First bytes of a connection we do not know yet: a TLS record
        // (ServerHello/ClientHello) makes it a TLS connection, whose read
        // feeds the next SSL_read.
        tls::peek_record(args.ino, args.ptr);
        if tls::looks_tls(args.ino) {
            let _ = LAST_READ.insert(tid, args.ino, 0);
        }
    }
    if args.is_vec == 0 {
        emit_buffer(&args, args.ptr, written as u64);
        return Some(());
    }
    let mut state = IovWalk {
        args,
        remaining: written as u64,
    };
    let iterations = core::cmp::min(args.vlen, IOV_MAX as u64) as u32;
    // bpf_loop: the verifier checks the callback once instead of unrolling
    // up to 1024 iterations (node batches queued stdout writes into one
    // writev with one iovec per line).
    // SAFETY: the callback is a BPF subprogram with the signature bpf_loop
    // expects, and `state` outlives the call.
    unsafe {
        bpf_loop(
            iterations,
            iov_step as *mut c_void,
            (&mut state as *mut IovWalk).cast(),
            0,
        )
    };
    Some(())
}

#[repr(C)]
struct IovWalk {
    args: WriteArgs,
    /// Bytes the syscall wrote that are not yet copied.
    remaining: u64,
}

/// bpf_loop callback: copy iovec `index`. Returns 1 to stop.
extern "C" fn iov_step(index: u64, ctx: *mut c_void) -> c_long {
    // SAFETY: bpf_loop passes back the pointer given in copy_written.
    let state = unsafe { &mut *ctx.cast::<IovWalk>() };
    if state.remaining == 0 {
        return 1;
    }
    let mut iov = Iovec { base: 0, len: 0 };
    // SAFETY: copies one iovec from user memory into a stack value of
    // exactly that size; the helper faults cleanly on a bad pointer.
    let rc = unsafe {
        bpf_probe_read_user(
            (&mut iov as *mut Iovec).cast(),
            core::mem::size_of::<Iovec>() as u32,
            (state.args.ptr + index * 16) as *const _,
        )
    };
    if rc != 0 {
        count_lost(EventKind::Log);
        return 1;
    }
    let len = core::cmp::min(iov.len, state.remaining);
    emit_buffer(&state.args, iov.base, len);
    state.remaining -= len;
    0
}

/// Copy one user buffer into the ring as a run of chunks. Chunks of one
/// buffer are submitted back to back from one CPU, so they stay in order in
/// the ring; user space sees a gap in `offset` if one was lost.
///
/// The chunks are walked with `bpf_loop`, so the verifier checks one chunk
/// once whatever the cap: a bounded `for` loop here was unrolled or walked
/// path by path, and with the default 256 KiB cap inside writev's loop it
/// ran past the verifier's 1M-instruction budget (docs/architecture.md,
/// "Verifier budget").
#[inline(never)]
pub fn emit_buffer(args: &WriteArgs, buf: u64, count: u64) -> u32 {
    let is_socket = args.stream >= Stream::SocketSent as u32;
    let limit = if is_socket {
        socket_capture_bytes()
    } else {
        max_buffer_bytes()
    };
    let cap = core::cmp::min(count, limit as u64);
    let Some(scratch) = LOG_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch slot; nothing else on this CPU runs while we do.
    let scratch = unsafe { &mut *scratch };
    scratch.head = LogChunkHeader {
        hdr: current_header(EventKind::Log),
        fd: args.fd,
        stream: args.stream,
        buffer_len: count,
        offset: 0,
        len: 0,
        ino: args.ino,
    };
    let mut walk = ChunkWalk { buf, cap };
    let chunks = cap.div_ceil(LOG_CHUNK_BYTES as u64);
    let iterations = core::cmp::min(chunks, MAX_LOG_CHUNKS as u64) as u32;
    // SAFETY: the callback is a BPF subprogram with the signature bpf_loop
    // expects, and `walk` outlives the call.
    unsafe {
        bpf_loop(
            iterations,
            chunk_step as *mut c_void,
            (&mut walk as *mut ChunkWalk).cast(),
            0,
        )
    };
    0
}

/// What [`chunk_step`] needs: the user buffer and how much of it to copy.
/// The chunk header waits in LOG_SCRATCH, filled by [`emit_buffer`].
#[repr(C)]
struct ChunkWalk {
    buf: u64,
    cap: u64,
}

/// bpf_loop callback: copy chunk `index` of the buffer into the ring.
/// Returns 1 to stop.
extern "C" fn chunk_step(index: u64, ctx: *mut c_void) -> c_long {
    // SAFETY: bpf_loop passes back the pointer given in emit_buffer.
    let walk = unsafe { &*ctx.cast::<ChunkWalk>() };
    let Some(scratch) = LOG_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch slot, filled by emit_buffer on this CPU.
    let scratch = unsafe { &mut *scratch };
    let offset = index * LOG_CHUNK_BYTES as u64;
    if offset >= walk.cap {
        return 1;
    }
    let remaining = walk.cap - offset;
    let len = if remaining >= LOG_CHUNK_BYTES as u64 {
        LOG_CHUNK_BYTES
    } else {
        // Masked so the verifier sees the helper's size bounded.
        (remaining as usize) & (LOG_CHUNK_BYTES - 1)
    };
    if len == 0 {
        return 1;
    }
    // SAFETY: `len` <= LOG_CHUNK_BYTES, the size of `data`; the helper
    // faults cleanly on a bad user pointer.
    let rc: c_long = unsafe {
        bpf_probe_read_user(
            scratch.data.as_mut_ptr().cast(),
            len as u32,
            (walk.buf + offset) as *const _,
        )
    };
    if rc != 0 {
        // User memory that could not be read (e.g. paged out).
        count_lost(EventKind::Log);
        return 1;
    }
    scratch.head.offset = offset as u32;
    scratch.head.len = len as u32;
    // SAFETY: HEADER_LEN + len <= size_of::<LogChunk>(), so the slice
    // stays inside the scratch value.
    let record = unsafe {
        core::slice::from_raw_parts((scratch as *const _) as *const u8, HEADER_LEN + len)
    };
    if EVENTS
        .output::<[u8]>(record, crate::emit::submit_flags())
        .is_err()
    {
        count_lost(EventKind::Log);
        return 1;
    }
    0
}
