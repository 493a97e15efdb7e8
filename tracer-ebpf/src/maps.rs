//! Maps and load-time globals shared by all probe families.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    ConnInfo, KernelOffsets, LOST_SLOTS, ListenKey, LogChunk, PollState, PortPairKey,
};

/// Every event goes through this one ring. Default flags (adaptive wakeup):
/// the kernel only wakes the reader when it has caught up, so under load
/// records are consumed in batches without a wakeup per record. User space
/// can resize it with `EbpfLoader::map_max_entries`.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Failed ring reservations per CPU, indexed by `EventKind as u32`.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Traced processes (tgid) and the threads/children that inherit tracing.
#[map]
pub static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

/// Live TCP connections of traced processes, keyed by `struct sock *`.
#[map]
pub static CONNS: LruHashMap<u64, ConnInfo> = LruHashMap::with_max_entries(65536, 0);

/// Listening ports of traced processes -> owning tgid. Seeded by user space
/// for sockets that were listening before attach.
#[map]
pub static LISTENERS: HashMap<ListenKey, u32> = HashMap::with_max_entries(4096, 0);

/// Connections open before attach (seeded by user space from /proc) -> the
/// owner, flagged TCP_FLAG_PREEXISTING, with no start time.
#[map]
pub static PREEXISTING: HashMap<PortPairKey, ConnInfo> = HashMap::with_max_entries(65536, 0);

/// uv__io_poll bookkeeping per thread.
#[map]
pub static POLL_STATE: LruHashMap<u32, PollState> = LruHashMap::with_max_entries(4096, 0);

/// Start of a running Heap::CollectGarbage per thread.
#[map]
pub static GC_START: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// A data segment that reached a traced listener (skb.rs), waiting for the
/// accept that the same softirq, on the same CPU, reports next (tcp.rs).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EarlySegment {
    /// The id its segment record carries as `sock`; 0: nothing waiting.
    pub id: u64,
    /// Makes ids distinct on this CPU.
    pub counter: u64,
    pub netns: u32,
    /// The listener's port and the peer's, host order.
    pub lport: u16,
    pub rport: u16,
    /// The payload starts with a TLS record header (it was not reported).
    pub tls: u32,
    pub _pad: u32,
}

/// One slot per CPU; see [`EarlySegment`].
#[map]
pub static EARLY_SEGMENT: PerCpuArray<EarlySegment> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch for a log chunk (too big for the 512-byte BPF stack).
#[map]
pub static LOG_SCRATCH: PerCpuArray<LogChunk> = PerCpuArray::with_max_entries(1, 0);

// Read-only globals, set by user space with `EbpfLoader::set_global` before
// load (the libbpf `const volatile` pattern). Always read with read_volatile
// so the compiler cannot fold the defaults in.

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    tcp_bytes_received: 0,
    tcp_bytes_acked: 0,
    sk_net: 0,
    net_ns_inum: 0,
    task_files: 0,
    task_exit_code: 0,
    files_fdt: 0,
    fdtable_fd: 0,
    fdtable_max_fds: 0,
    file_inode: 0,
    inode_mode: 0,
    inode_ino: 0,
    sk_shutdown: 0,
    sk_flags: 0,
    sock_done_bit: 0,
    tcp_snd_una: 0,
    tcp_write_seq: 0,
    file_private_data: 0,
    socket_sk: 0,
    skc_num: 0,
    skc_dport: 0,
    skc_family: 0,
    skc_rcv_saddr: 0,
    skc_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_v6_daddr: 0,
    sk_protocol: 0,
    tcp_copied_seq: 0,
    skb_tcp_gso_segs: 0,
    tcp_rcv_nxt: 0,
    tcp_total_retrans: 0,
};

/// Bytes of one written buffer copied into the ring; the rest is counted but
/// not copied, and user space marks the line truncated.
#[unsafe(no_mangle)]
static MAX_BUFFER_BYTES: u32 = 256 * 1024;

/// Bytes copied of each read/write on a traced TCP connection (0: payload
/// capture off). At most one chunk (LOG_CHUNK_BYTES).
#[unsafe(no_mangle)]
static SOCKET_CAPTURE_BYTES: u32 = 0;

/// Socket payload comes from the read/write syscall hooks (1) rather than
/// from the cgroup_skb programs (0, the default path; probes/skb.rs).
#[unsafe(no_mangle)]
static HTTP_VIA_SYSCALLS: u32 = 0;

/// Capture stdout/stderr/file writes (the `logs` family).
#[unsafe(no_mangle)]
static CAPTURE_LOGS: u32 = 1;

/// Report every exec on the host, not just of traced processes (the agent
/// uses it to find node processes that start later).
#[unsafe(no_mangle)]
static REPORT_ALL_EXECS: u32 = 0;

/// Bytes waiting in the ring that wake the reader (see emit::submit_flags).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 256 * 1024;

/// Loop turns whose callback time is below this are not reported.
#[unsafe(no_mangle)]
static LOOP_MIN_BUSY_NS: u64 = 0;

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: reading a static; volatile so the loader-set value is used.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
pub fn max_buffer_bytes() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&MAX_BUFFER_BYTES) }
}

#[inline(always)]
pub fn socket_capture_bytes() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&SOCKET_CAPTURE_BYTES) }
}

#[inline(always)]
pub fn http_via_syscalls() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&HTTP_VIA_SYSCALLS) != 0 }
}

#[inline(always)]
pub fn capture_logs() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&CAPTURE_LOGS) != 0 }
}

#[inline(always)]
pub fn report_all_execs() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&REPORT_ALL_EXECS) != 0 }
}

#[inline(always)]
pub fn wakeup_bytes() -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) }
}

#[inline(always)]
pub fn loop_min_busy_ns() -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&LOOP_MIN_BUSY_NS) }
}

#[inline(always)]
pub fn is_target(id: u32) -> bool {
    TARGETS.get_ptr(id).is_some()
}
