//! The capture core shared by every front end: load the probes, attach them,
//! manage which processes are traced, and hand out the ring buffer.

pub mod cgroup;
pub mod offsets;
pub mod preflight;
pub mod ring;
pub mod seed;
pub mod symbols;

use std::{collections::HashMap, num::NonZeroU32, path::Path};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, RawTracePoint, TracePoint, UProbe,
        uprobe::UProbeAttachLocation, uprobe::UProbeLinkId,
    },
};
use tracer_common::{
    ConnInfo, EventKind, KernelOffsets, LOST_SLOTS, TARGET_ROOT, TCP_FLAG_PREEXISTING,
};

use self::symbols::{Resolved, SymbolMatch};

/// The probe families, selectable with `--probes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Family {
    /// stdout/stderr/file writes (syscall tracepoints)
    Logs,
    /// connect/accept/close/retransmit (sock and tcp tracepoints)
    Tcp,
    /// event-loop turns and GC pauses (uprobes on the node binary)
    Runtime,
    /// HTTP/1.x requests parsed from the bytes of traced TCP connections
    /// (needs `tcp`)
    Http,
}

/// Where the `http` family takes plaintext payload from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HttpCapture {
    /// TCP segments, from cgroup_skb programs on the targets' cgroups (no
    /// syscall tracepoints)
    #[default]
    Skb,
    /// The read/write syscalls (syscall tracepoints: every syscall on the
    /// host takes the slow path while attached)
    Syscalls,
}

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub families: Vec<Family>,
    /// Bytes of one written buffer copied by the kernel; also the line cap.
    pub max_buffer_bytes: u32,
    pub loop_min_busy_ns: u64,
    pub ring_bytes: u32,
    /// Bytes copied of each read/write on a traced connection (`http`).
    pub socket_capture_bytes: u32,
    /// Report every exec on the host (agent discovery).
    pub report_all_execs: bool,
    pub http_capture: HttpCapture,
}

impl CaptureConfig {
    fn has(&self, f: Family) -> bool {
        self.families.contains(&f)
    }
}

/// What attaching to one process did.
#[derive(Debug, Default)]
pub struct TargetReport {
    pub exe: String,
    pub attached: Vec<String>,
    pub skipped: Vec<String>,
    /// Connections open before attach: (netns, local, remote).
    pub preexisting: Vec<(u32, std::net::SocketAddr, std::net::SocketAddr)>,
}

pub const UV_IO_POLL: SymbolMatch = SymbolMatch::Exact("uv__io_poll");
pub const SSL_WRITE: SymbolMatch = SymbolMatch::Exact("SSL_write");
pub const SSL_READ: SymbolMatch = SymbolMatch::Exact("SSL_read");
/// `v8::internal::Heap::CollectGarbage(...)`, any parameter list.
pub const COLLECT_GARBAGE: SymbolMatch =
    SymbolMatch::Prefix("_ZN2v88internal4Heap14CollectGarbageE");

/// The eBPF object, embedded at build time (tracer-user/build.rs).
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

pub struct Capture {
    ebpf: Ebpf,
    config: CaptureConfig,
    offsets_known: bool,
    /// Per traced process: the uprobe links to detach when it goes away.
    uprobe_links: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    /// cgroup v2 directories the segment programs are attached to (they
    /// stay attached until the tracer exits).
    skb_cgroups: Vec<std::path::PathBuf>,
    /// Non-fatal notes for the user (e.g. "mounted tracefs").
    pub notes: Vec<String>,
}

impl Capture {
    /// Check privileges and tracefs, load the probes, attach the tracepoints.
    pub fn load(config: CaptureConfig) -> Result<Self> {
        preflight::check_privileges()?;
        let mut notes = Vec::new();
        if let Some(note) = preflight::ensure_tracefs()? {
            notes.push(note);
        }
        let started = std::time::Instant::now();
        let btf_path = Path::new(offsets::VMLINUX_BTF);
        let (kernel_offsets, offsets_known) = match offsets::kernel_offsets(btf_path) {
            Ok(o) => (o, true),
            Err(e) => {
                notes.push(format!(
                    "kernel BTF unusable ({e:#}); TCP byte counts, network namespaces, \
                     file logs and exit codes are unavailable. A kernel built with \
                     CONFIG_DEBUG_INFO_BTF=y provides {}",
                    offsets::VMLINUX_BTF
                ));
                (KernelOffsets::default(), false)
            }
        };
        log::debug!("kernel offsets from BTF in {:?}", started.elapsed());
        let socket_capture_bytes: u32 = if config.has(Family::Http) {
            config
                .socket_capture_bytes
                .min(tracer_common::LOG_CHUNK_BYTES as u32)
        } else {
            0
        };
        let capture_logs = u32::from(config.has(Family::Logs));
        let http_via_syscalls = u32::from(config.http_capture == HttpCapture::Syscalls);
        let report_all_execs = u32::from(config.report_all_execs);
        let ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &kernel_offsets, true)
            .override_global("SOCKET_CAPTURE_BYTES", &socket_capture_bytes, true)
            .override_global("CAPTURE_LOGS", &capture_logs, true)
            .override_global("HTTP_VIA_SYSCALLS", &http_via_syscalls, true)
            .override_global("REPORT_ALL_EXECS", &report_all_execs, true)
            .override_global("WAKEUP_BYTES", &ring::wakeup_bytes(config.ring_bytes), true)
            .override_global("MAX_BUFFER_BYTES", &config.max_buffer_bytes, true)
            .override_global("LOOP_MIN_BUSY_NS", &config.loop_min_busy_ns, true)
            .map_max_entries("EVENTS", config.ring_bytes)
            .load(EBPF_OBJECT)
            .context("loading the eBPF probes into the kernel")?;
        let mut capture = Self {
            ebpf,
            config,
            offsets_known,
            uprobe_links: HashMap::new(),
            skb_cgroups: Vec::new(),
            notes,
        };
        log::debug!("probes loaded in {:?}", started.elapsed());
        capture.attach_tracepoints()?;
        log::debug!("tracepoints attached in {:?}", started.elapsed());
        Ok(capture)
    }

    fn tracepoint(&mut self, prog: &str, category: &str, names: &[&str]) -> Result<()> {
        let program: &mut TracePoint = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("probe {prog} missing from the eBPF object"))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("verifying probe {prog}"))?;
        for name in names {
            program
                .attach(category, name)
                .with_context(|| format!("attaching to tracepoint {category}:{name}"))?;
        }
        Ok(())
    }

    fn raw_tracepoint(&mut self, name: &str) -> Result<()> {
        let program: &mut RawTracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("probe {name} missing from the eBPF object"))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("verifying probe {name}"))?;
        program
            .attach(name)
            .with_context(|| format!("attaching to raw tracepoint {name}"))?;
        Ok(())
    }

    fn attach_tracepoints(&mut self) -> Result<()> {
        // Process following is always on: it is what makes children traced
        // and exits noticed, and it runs only on fork/exec/exit.
        self.tracepoint("sched_process_fork", "sched", &["sched_process_fork"])?;
        self.tracepoint("sched_process_exec", "sched", &["sched_process_exec"])?;
        self.tracepoint("sched_process_exit", "sched", &["sched_process_exit"])?;
        let logs = self.config.has(Family::Logs);
        let http = self.config.has(Family::Http);
        // HTTP payload from the syscalls only when asked for: by default it
        // comes from the cgroup_skb programs (attached per target cgroup in
        // add_target), and these tracepoints are for logs only.
        let http_syscalls = http && self.config.http_capture == HttpCapture::Syscalls;
        if logs || http_syscalls {
            // Writes carry both log lines and connection payload.
            self.tracepoint(
                "sys_enter_write",
                "syscalls",
                &["sys_enter_write", "sys_enter_pwrite64"],
            )?;
            self.tracepoint("sys_enter_writev", "syscalls", &["sys_enter_writev"])?;
            let mut exits = vec!["sys_exit_write", "sys_exit_pwrite64", "sys_exit_writev"];
            if http_syscalls {
                exits.push("sys_exit_read");
            }
            self.tracepoint("sys_exit_rw", "syscalls", &exits)?;
        }
        if http_syscalls {
            self.tracepoint("sys_enter_read", "syscalls", &["sys_enter_read"])?;
        }
        if http && !http_syscalls {
            // Which connection a thread read or wrote last, for binding
            // `SSL *`s (probes/skb.rs); non-syscall tracepoints.
            self.raw_tracepoint("sock_recv_length")?;
            self.raw_tracepoint("sock_send_length")?;
            for prog in ["skb_ingress", "skb_egress"] {
                let p: &mut CgroupSkb = self
                    .ebpf
                    .program_mut(prog)
                    .ok_or_else(|| anyhow!("probe {prog} missing from the eBPF object"))?
                    .try_into()?;
                p.load()
                    .with_context(|| format!("verifying probe {prog}"))?;
            }
        }
        if logs {
            self.tracepoint("sys_enter_openat", "syscalls", &["sys_enter_openat"])?;
            self.tracepoint("sys_exit_openat", "syscalls", &["sys_exit_openat"])?;
        }
        if self.config.has(Family::Tcp) || http {
            // Raw tracepoints: see tracer-ebpf/src/probes/tcp.rs for why.
            self.raw_tracepoint("inet_sock_set_state")?;
            self.raw_tracepoint("tcp_retransmit_skb")?;
        }
        let mut uprobes: Vec<&str> = Vec::new();
        if self.config.has(Family::Runtime) {
            uprobes.extend(["uv_io_poll_enter", "uv_io_poll_exit", "gc_enter", "gc_exit"]);
        }
        if http {
            uprobes.extend([
                "ssl_write_enter",
                "ssl_write_exit",
                "ssl_read_enter",
                "ssl_read_exit",
            ]);
        }
        for prog in uprobes {
            let p: &mut UProbe = self
                .ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("probe {prog} missing from the eBPF object"))?
                .try_into()?;
            p.load()
                .with_context(|| format!("verifying probe {prog}"))?;
        }
        Ok(())
    }

    /// Start tracing `pid` (and, through fork, its future children).
    pub fn add_target(&mut self, pid: u32, root: bool) -> Result<TargetReport> {
        preflight::check_pid(pid)?;
        let mut report = TargetReport {
            exe: std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "?".into()),
            ..Default::default()
        };
        {
            let mut targets: BpfHashMap<_, u32, u32> =
                BpfHashMap::try_from(self.ebpf.map_mut("TARGETS").context("TARGETS map")?)?;
            let flag = if root {
                TARGET_ROOT
            } else {
                tracer_common::TARGET_CHILD
            };
            targets
                .insert(pid, flag, 0)
                .context("adding the PID to TARGETS")?;
            // Threads that already exist are covered by their tgid; the
            // per-thread keys matter only for fork tracking.
        }
        if self.config.has(Family::Logs) {
            report.attached.push("logs".into());
        }
        if self.config.has(Family::Tcp) || self.config.has(Family::Http) {
            report.preexisting = self.seed_sockets(pid)?;
            report.attached.push("tcp".into());
        }
        if self.config.has(Family::Http) {
            if self.config.http_capture == HttpCapture::Skb {
                self.attach_skb(pid)?;
            }
            report.attached.push("http".into());
        }
        let runtime = self.config.has(Family::Runtime);
        let http = self.config.has(Family::Http);
        if runtime || http {
            self.attach_uprobes(pid, runtime, http, &mut report);
        }
        Ok(report)
    }

    /// Attach the segment programs to the cgroup v2 directory of `pid`,
    /// unless it or a parent of it has them already. (Sockets keep the
    /// cgroup of the process that created them; accepted ones that of the
    /// listener.) A cgroup attached under one attached earlier reports its
    /// segments twice; user space drops the repeats by sequence number.
    fn attach_skb(&mut self, pid: u32) -> Result<()> {
        let dir = cgroup::dir_of(pid)?;
        if self.skb_cgroups.iter().any(|done| dir.starts_with(done)) {
            return Ok(());
        }
        let file = std::fs::File::open(&dir)
            .with_context(|| format!("opening cgroup {}", dir.display()))?;
        for (prog, kind) in [
            ("skb_ingress", CgroupSkbAttachType::Ingress),
            ("skb_egress", CgroupSkbAttachType::Egress),
        ] {
            let p: &mut CgroupSkb = self
                .ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("probe {prog} missing from the eBPF object"))?
                .try_into()?;
            // A bpf_link (aya uses one on kernels >= 5.7) always shares the
            // cgroup with other programs (systemd's, another tracer's) and
            // takes no mode flags: `Single` is the zero flag, not exclusive.
            p.attach(&file, kind, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {prog} to cgroup {}", dir.display()))?;
        }
        self.skb_cgroups.push(dir);
        Ok(())
    }

    fn seed_sockets(
        &mut self,
        pid: u32,
    ) -> Result<Vec<(u32, std::net::SocketAddr, std::net::SocketAddr)>> {
        let sockets = seed::sockets_of(pid, self.offsets_known)?;
        let mut listeners: BpfHashMap<_, tracer_common::ListenKey, u32> =
            BpfHashMap::try_from(self.ebpf.map_mut("LISTENERS").context("LISTENERS map")?)?;
        for key in &sockets.listeners {
            listeners.insert(key, pid, 0)?;
        }
        let mut pre: BpfHashMap<_, tracer_common::PortPairKey, ConnInfo> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("PREEXISTING")
                .context("PREEXISTING map")?,
        )?;
        for (key, accepted) in &sockets.connections {
            let kind = if *accepted {
                EventKind::TcpAccept
            } else {
                EventKind::TcpConnect
            };
            let owner = ConnInfo {
                pid,
                tid: pid,
                start_ns: 0,
                kind: kind as u32,
                flags: u32::from(TCP_FLAG_PREEXISTING),
                comm: [0; tracer_common::COMM_LEN],
            };
            pre.insert(key, owner, 0)?;
        }
        Ok(sockets
            .addresses
            .iter()
            .map(|(local, remote)| (sockets.netns, *local, *remote))
            .collect())
    }

    /// Uprobes on the process's own executable: loop and GC timing
    /// (`runtime`), TLS plaintext (`http`). A process without the symbols
    /// (not node, or a stripped build) is still traced; the report says
    /// which probes were skipped and why.
    fn attach_uprobes(&mut self, pid: u32, runtime: bool, http: bool, report: &mut TargetReport) {
        let exe = format!("/proc/{pid}/exe");
        let started = std::time::Instant::now();
        let wanted = [UV_IO_POLL, COLLECT_GARBAGE, SSL_WRITE, SSL_READ];
        let found = match symbols::resolve(Path::new(&exe), &wanted) {
            Ok(found) => found,
            Err(e) => {
                report.skipped.push(format!(
                    "runtime and tls: cannot read the executable ({e:#})"
                ));
                return;
            }
        };
        log::debug!("symbols of {exe} resolved in {:?}", started.elapsed());
        // (what, symbol shown to the user, resolved, [(program, is return probe)])
        let mut plan: Vec<(&str, &str, &Option<Resolved>, Vec<&'static str>)> = Vec::new();
        if runtime {
            plan.push((
                "loop",
                "uv__io_poll",
                &found[0],
                vec!["uv_io_poll_enter", "uv_io_poll_exit"],
            ));
            plan.push((
                "gc",
                "v8::internal::Heap::CollectGarbage",
                &found[1],
                vec!["gc_enter", "gc_exit"],
            ));
        }
        if http {
            plan.push((
                "tls-write",
                "SSL_write",
                &found[2],
                vec!["ssl_write_enter", "ssl_write_exit"],
            ));
            plan.push((
                "tls-read",
                "SSL_read",
                &found[3],
                vec!["ssl_read_enter", "ssl_read_exit"],
            ));
        }
        for (what, symbol, sym, programs) in plan {
            let Some(sym) = sym else {
                report.skipped.push(format!(
                    "{what}: {} has no {symbol} symbol (not node, or a stripped build)",
                    report.exe
                ));
                continue;
            };
            match self.attach_uprobe_programs(pid, &exe, sym.file_offset, &programs) {
                Ok(()) => report.attached.push(what.into()),
                Err(e) => report
                    .skipped
                    .push(format!("{what}: attaching to {} failed ({e:#})", sym.name)),
            }
        }
    }

    /// Attach each program (uprobe or uretprobe, as compiled) at `offset`.
    fn attach_uprobe_programs(
        &mut self,
        pid: u32,
        exe: &str,
        offset: u64,
        programs: &[&'static str],
    ) -> Result<()> {
        let scope = aya::programs::uprobe::UProbeScope::OneProcess(
            NonZeroU32::new(pid).ok_or_else(|| anyhow!("PID 0"))?,
        );
        for &prog in programs {
            let p: &mut UProbe = self
                .ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("probe {prog} missing"))?
                .try_into()?;
            let link = p.attach(UProbeAttachLocation::AbsoluteOffset(offset), exe, scope)?;
            self.uprobe_links.entry(pid).or_default().push((prog, link));
        }
        Ok(())
    }

    /// Whether `pid` is traced (in the kernel's TARGETS, which fork keeps
    /// up to date for children).
    pub fn is_traced(&self, pid: u32) -> bool {
        let Some(map) = self.ebpf.map("TARGETS") else {
            return false;
        };
        match BpfHashMap::<_, u32, u32>::try_from(map) {
            Ok(targets) => targets.get(&pid, 0).is_ok(),
            Err(_) => false,
        }
    }

    /// Detach what was attached for a process that is gone.
    pub fn forget(&mut self, pid: u32) {
        for (prog, link) in self.uprobe_links.remove(&pid).unwrap_or_default() {
            if let Some(Ok(p)) = self.ebpf.program_mut(prog).map(<&mut UProbe>::try_from) {
                // The process is gone; a failed detach only means the kernel
                // already dropped the event.
                let _ = p.detach(link);
            }
        }
    }

    /// The ring buffer, for the reader task. Can be taken once.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("EVENTS ring already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Ring reservations that failed so far, per event kind, summed over CPUs.
    pub fn ring_losses(&self) -> Result<Vec<(EventKind, u64)>> {
        let lost: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("LOST").context("LOST map")?)?;
        let mut out = Vec::new();
        for kind in EventKind::ALL {
            let idx = kind as u32;
            if idx >= LOST_SLOTS {
                continue;
            }
            let total: u64 = lost.get(&idx, 0)?.iter().sum();
            if total > 0 {
                out.push((kind, total));
            }
        }
        Ok(out)
    }
}
