//! The capture core shared by every front end: load the probes, attach them,
//! manage which processes are traced, and hand out the ring buffer.

pub mod cgroup;
pub mod detach;
pub mod offsets;
pub mod preflight;
pub mod programs;
pub mod ring;
pub mod seed;
pub mod symbols;
pub mod verifier;

use std::{collections::HashMap, num::NonZeroU32, path::Path};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Program, RawTracePoint, TracePoint,
        UProbe, uprobe::UProbeAttachLocation, uprobe::UProbeLinkId,
    },
};
use tracer_common::{
    ConnInfo, EventKind, KernelOffsets, LOST_SLOTS, TARGET_ROOT, TCP_FLAG_PREEXISTING,
};

use self::{
    programs::{Hook, Step},
    symbols::{Resolved, SymbolMatch},
    verifier::Failure,
};
use crate::progress::Progress;

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
    /// The user named the families (`--probes`): one that cannot attach is
    /// an error, not something to leave out.
    pub families_explicit: bool,
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
pub const EPOLL_WAIT: SymbolMatch = SymbolMatch::Exact("epoll_wait");
pub const EPOLL_PWAIT: SymbolMatch = SymbolMatch::Exact("epoll_pwait");
pub const SSL_WRITE: SymbolMatch = SymbolMatch::Exact("SSL_write");
pub const SSL_READ: SymbolMatch = SymbolMatch::Exact("SSL_read");
/// `v8::internal::Heap::CollectGarbage(...)`, any parameter list.
pub const COLLECT_GARBAGE: SymbolMatch =
    SymbolMatch::Prefix("_ZN2v88internal4Heap14CollectGarbageE");

/// Where a process's epoll waits are: `in_exe` holds what the executable
/// itself defines (a static build); otherwise the libc it has mapped, read
/// through /proc/PID/root so that containers work.
fn epoll_waits(
    pid: u32,
    exe: &str,
    in_exe: &[Option<Resolved>],
) -> Result<Vec<(String, Resolved)>> {
    let own: Vec<(String, Resolved)> = in_exe
        .iter()
        .flatten()
        .map(|r| (exe.to_string(), r.clone()))
        .collect();
    if !own.is_empty() {
        return Ok(own);
    }
    let Some(libc) = symbols::mapped_libc(pid)? else {
        return Ok(Vec::new());
    };
    let found = symbols::resolve(Path::new(&libc), &[EPOLL_WAIT, EPOLL_PWAIT])?;
    Ok(found
        .into_iter()
        .flatten()
        .map(|r| (libc.clone(), r))
        .collect())
}

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
    /// Families that could not load or attach, with why; the rest run.
    pub left_out: Vec<LeftOut>,
    /// Tracepoint and cgroup links, detached together on drop.
    links: Vec<detach::Attached>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        let mut links = std::mem::take(&mut self.links);
        for (_, uprobes) in self.uprobe_links.drain() {
            links.extend(
                uprobes
                    .into_iter()
                    .map(|(prog, id)| detach::Attached::UProbe(prog, id)),
            );
        }
        detach::all(&mut self.ebpf, links);
    }
}

/// A probe family that is not running, and why.
#[derive(Debug, Clone)]
pub struct LeftOut {
    pub family: Family,
    pub why: String,
}

impl LeftOut {
    /// `http (probe skb_ingress: ...)`, for the ready line and the summary.
    pub fn describe(&self) -> String {
        format!("{} ({})", family_name(self.family), self.why)
    }
}

pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::Logs => "logs",
        Family::Tcp => "tcp",
        Family::Runtime => "runtime",
        Family::Http => "http",
    }
}

/// The eBPF object with its globals set from `config`, maps created and no
/// program loaded yet.
pub fn open_object(config: &CaptureConfig, kernel_offsets: &KernelOffsets) -> Result<Ebpf> {
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
    EbpfLoader::new()
        .verifier_log_level(verifier::log_level())
        .override_global("OFFSETS", kernel_offsets, true)
        .override_global("SOCKET_CAPTURE_BYTES", &socket_capture_bytes, true)
        .override_global("CAPTURE_LOGS", &capture_logs, true)
        .override_global("HTTP_VIA_SYSCALLS", &http_via_syscalls, true)
        .override_global("REPORT_ALL_EXECS", &report_all_execs, true)
        .override_global("WAKEUP_BYTES", &ring::wakeup_bytes(config.ring_bytes), true)
        .override_global("MAX_BUFFER_BYTES", &config.max_buffer_bytes, true)
        .override_global("LOOP_MIN_BUSY_NS", &config.loop_min_busy_ns, true)
        .map_max_entries("EVENTS", config.ring_bytes)
        .load(EBPF_OBJECT)
        .context("creating the eBPF maps (loading the probe object)")
}

/// The kernel's struct offsets from BTF, and whether they are real.
pub fn kernel_offsets(notes: &mut Vec<String>) -> (KernelOffsets, bool) {
    let btf_path = Path::new(offsets::VMLINUX_BTF);
    match offsets::kernel_offsets(btf_path) {
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
    }
}

impl Capture {
    /// Check privileges and tracefs, load the probes, attach the tracepoints.
    /// A family whose programs cannot load or attach is left out (see
    /// `left_out`) unless the user named it with `--probes`; process
    /// following is needed by all, so its failure is an error.
    pub fn load(config: CaptureConfig, progress: &mut Progress) -> Result<Self> {
        preflight::check_privileges()?;
        let mut notes = Vec::new();
        if let Some(note) = preflight::ensure_tracefs()? {
            notes.push(note);
        }
        let started = std::time::Instant::now();
        progress.step("reading kernel offsets (BTF)");
        let (kernel_offsets, offsets_known) = kernel_offsets(&mut notes);
        log::debug!("kernel offsets from BTF in {:?}", started.elapsed());
        progress.step("creating maps");
        let ebpf = open_object(&config, &kernel_offsets)?;
        let mut capture = Self {
            ebpf,
            config,
            offsets_known,
            uprobe_links: HashMap::new(),
            skb_cgroups: Vec::new(),
            notes,
            left_out: Vec::new(),
            links: Vec::new(),
        };
        let steps = programs::plan(&capture.config);
        let total = steps.len();
        for (i, step) in steps.iter().enumerate() {
            if let Some(family) = step.family
                && !capture.active(family)
            {
                continue;
            }
            progress.step(&format!(
                "loading probes {}/{total}: {}",
                i + 1,
                step.program
            ));
            let result =
                verifier::load(&mut capture.ebpf, step.program).and_then(|_| capture.attach(step));
            if let Err(failure) = result {
                capture.on_failure(step, failure, &steps)?;
            }
        }
        log::debug!("probes loaded and attached in {:?}", started.elapsed());
        Ok(capture)
    }

    /// Whether `family` was asked for and is running.
    pub fn active(&self, family: Family) -> bool {
        self.config.has(family) && !self.left_out.iter().any(|l| l.family == family)
    }

    /// A program of `step` failed: fail the run, or leave its family out
    /// and unload what that family already loaded.
    fn on_failure(&mut self, step: &Step, failure: Failure, steps: &[Step]) -> Result<()> {
        let Some(family) = step.family else {
            return Err(anyhow::Error::new(failure).context(
                "process following (fork/exec/exit tracepoints) is needed by every probe family",
            ));
        };
        if self.config.families_explicit {
            return Err(anyhow::Error::new(failure).context(format!(
                "--probes asked for {}, which cannot run on this machine",
                family_name(family)
            )));
        }
        let mut gone = vec![family];
        // HTTP parsing stands on connection tracking.
        if family == Family::Tcp && self.config.has(Family::Http) {
            gone.push(Family::Http);
        }
        for s in steps
            .iter()
            .filter(|s| s.family.is_some_and(|f| gone.contains(&f)))
        {
            self.unload(s.program);
        }
        let why = failure.to_string();
        for f in gone {
            let why = if f == family {
                why.clone()
            } else {
                format!("needs {}, which was left out", family_name(family))
            };
            self.left_out.push(LeftOut { family: f, why });
        }
        Ok(())
    }

    /// Detach and unload a program if it is loaded (a family left out).
    fn unload(&mut self, name: &str) {
        let Some(program) = self.ebpf.program_mut(name) else {
            return;
        };
        let result = match program {
            Program::TracePoint(p) => p.unload(),
            Program::RawTracePoint(p) => p.unload(),
            Program::UProbe(p) => p.unload(),
            Program::CgroupSkb(p) => p.unload(),
            _ => Ok(()),
        };
        // NotLoaded is the common case: the failed program itself.
        if let Err(e) = result {
            log::debug!("unloading {name}: {e}");
        }
    }

    /// Attach a loaded program where `step` says.
    fn attach(&mut self, step: &Step) -> Result<(), Failure> {
        let fail = |reason: String, hint: &str| Failure {
            program: step.program.to_string(),
            reason,
            hint: hint.to_string(),
            log: None,
        };
        match &step.hook {
            Hook::PerTarget => Ok(()),
            Hook::Tracepoint { category, names } => {
                let program: &mut TracePoint = self
                    .ebpf
                    .program_mut(step.program)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| fail("not a tracepoint program".into(), "rebuild tracer"))?;
                for name in names {
                    if !preflight::tracepoint_exists(category, name) {
                        return Err(fail(
                            format!(
                                "missing hook: this kernel has no tracepoint {category}:{name}"
                            ),
                            "syscall tracepoints need a kernel built with CONFIG_FTRACE_SYSCALLS",
                        ));
                    }
                    let id = program.attach(category, name).map_err(|e| {
                        fail(
                            format!("attaching to tracepoint {category}:{name}: {e}"),
                            "",
                        )
                    })?;
                    self.links
                        .push(detach::Attached::Tracepoint(step.program, id));
                }
                Ok(())
            }
            Hook::RawTracepoint => {
                let program: &mut RawTracePoint = self
                    .ebpf
                    .program_mut(step.program)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| fail("not a raw tracepoint program".into(), "rebuild tracer"))?;
                let id = program.attach(step.program).map_err(|e| {
                    fail(
                        format!("attaching to raw tracepoint {}: {e}", step.program),
                        "this kernel may not have that tracepoint",
                    )
                })?;
                self.links
                    .push(detach::Attached::RawTracepoint(step.program, id));
                Ok(())
            }
        }
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
        if self.active(Family::Logs) {
            report.attached.push("logs".into());
        }
        if self.active(Family::Tcp) || self.active(Family::Http) {
            report.preexisting = self.seed_sockets(pid)?;
            report.attached.push("tcp".into());
        }
        if self.active(Family::Http) {
            if self.config.http_capture == HttpCapture::Skb {
                self.attach_skb(pid)?;
            }
            report.attached.push("http".into());
        }
        let runtime = self.active(Family::Runtime);
        let http = self.active(Family::Http);
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
            let id = p
                .attach(&file, kind, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {prog} to cgroup {}", dir.display()))?;
            self.links.push(detach::Attached::CgroupSkb(prog, id));
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
        let wanted = [
            UV_IO_POLL,
            COLLECT_GARBAGE,
            SSL_WRITE,
            SSL_READ,
            EPOLL_WAIT,
            EPOLL_PWAIT,
        ];
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
        // (what, symbol shown to the user, resolved, programs)
        let mut plan: Vec<(&str, &str, &Option<Resolved>, Vec<&'static str>)> = Vec::new();
        let mut epoll: Vec<(String, Resolved)> = Vec::new();
        if runtime {
            // Loop timing needs both ends: the turn (uv__io_poll) and the
            // time blocked inside it (epoll_wait, in libc or, for a static
            // build, in the executable itself).
            match (&found[0], epoll_waits(pid, &exe, &found[4..])) {
                (Some(_), Ok(waits)) if !waits.is_empty() => {
                    plan.push(("loop", "uv__io_poll", &found[0], vec!["uv_io_poll_enter"]));
                    epoll = waits;
                }
                (Some(_), Ok(_)) => report.skipped.push(
                    "loop: neither the executable nor its libc has epoll_wait/epoll_pwait".into(),
                ),
                (Some(_), Err(e)) => report
                    .skipped
                    .push(format!("loop: cannot read the process's libc ({e:#})")),
                (None, _) => plan.push(("loop", "uv__io_poll", &found[0], Vec::new())),
            }
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
            let mut result = self.attach_uprobe_programs(pid, &exe, sym.file_offset, &programs);
            if what == "loop" {
                for (file, wait) in &epoll {
                    if result.is_ok() {
                        result = self.attach_uprobe_programs(
                            pid,
                            file,
                            wait.file_offset,
                            &["epoll_wait_enter", "epoll_wait_exit"],
                        );
                    }
                }
            }
            match result {
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
