//! A probe session: the generic probe programs, loaded once, attached at
//! every resolved site of one or more processes (`tracer probe add --pid`
//! or `--match`, and the agent's `--probe`, which adds processes as they
//! start and detaches them as they exit); what they record becomes `probe`
//! events until the time is up, Ctrl-C, or the processes exit. Dropping
//! the session detaches everything (and lowers USDT semaphores).

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd as _, AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{ProgramFd, UProbe},
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracer_common::{
    EventHeader, EventKind, PROBE_HIST_BUCKETS, PROBE_MAX_ARGS, PROBE_MAX_PROBES, PROBE_MAX_SITES,
    PROBE_MODE_ARGS, PROBE_MODE_COUNT, PROBE_MODE_LATENCY, PROBE_STR_ARGS, ProbeEvent, ProbeSite,
    probe_drop_rate_slot, probe_drop_ring_slot,
};

use super::{
    perf::{self, SiteLink, UprobePmu},
    spec::{self, ProbeKind, ProbeSpec, ResolvedSite},
};
use crate::{
    event::{Event, EventData, LossStage, ProbeHit},
    pipeline::WallClock,
    runner::Sink,
};

/// What a probe records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RecordMode {
    /// Hits per interval, counted in the kernel (no event per hit).
    #[default]
    Count,
    /// One event per hit with arg0..arg5 (see --args); capped by --rate.
    Args,
    /// Entry-to-return durations of functions, a histogram per interval.
    Latency,
}

impl RecordMode {
    fn name(self) -> &'static str {
        match self {
            RecordMode::Count => "count",
            RecordMode::Args => "args",
            RecordMode::Latency => "latency",
        }
    }
}

/// Most sites one tracer attaches in all (the maps hold PROBE_MAX_SITES).
pub const MAX_TOTAL_SITES: usize = 512;
const _: () = assert!(MAX_TOTAL_SITES <= PROBE_MAX_SITES as usize);

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub specs: Vec<String>,
    pub record: RecordMode,
    /// `int`/`str` per argument, from `--args`.
    pub arg_types: Option<String>,
    pub rate: u32,
    pub max_sites: usize,
    pub force: bool,
    pub interval: Duration,
    pub host: String,
    /// Shift of every timestamp (the agent's --debug-clock-offset-ms).
    pub clock_shift_ns: i64,
}

impl SessionOptions {
    /// Everything that can be checked before loading BPF or naming a
    /// process: the specs, the argument types, the interval.
    fn validate(&self) -> Result<(Vec<ProbeSpec>, Option<Vec<bool>>)> {
        if self.specs.is_empty() {
            bail!("no probe SPEC given");
        }
        if self.specs.len() > PROBE_MAX_PROBES as usize {
            bail!("at most {PROBE_MAX_PROBES} probes at once");
        }
        if self.interval < Duration::from_millis(10) {
            bail!("the probe interval must be at least 0.01 seconds");
        }
        let types = self.arg_types.as_deref().map(parse_arg_types).transpose()?;
        if types.is_some() && self.record != RecordMode::Args {
            bail!("--args only applies with --record args");
        }
        let mut probes = Vec::new();
        for text in &self.specs {
            let spec = spec::parse(text)?;
            if self.record == RecordMode::Latency && spec.kind == ProbeKind::Usdt {
                bail!(
                    "probe `{text}`: --record latency needs a function (uprobe:SYMBOL); a USDT \
                     point has no return to time"
                );
            }
            probes.push(spec);
        }
        Ok((probes, types))
    }
}

/// One attached site, as user space remembers it (index: cookie).
#[derive(Debug, Clone)]
struct SiteInfo {
    pid: u32,
    probe_id: u32,
    object: String,
    point: String,
    /// Argument indexes that are strings, with their slot (1-based).
    str_slots: Vec<(usize, usize)>,
    nargs: usize,
    /// Argument indexes whose values are unsigned 64-bit (reported as
    /// u64; every other integer is sign-extended by the kernel or fits).
    unsigned64: Vec<usize>,
    /// Counted sites report aggregates (count mode; latency return sites).
    aggregated: bool,
}

/// A process the session has probes in.
struct Target {
    links: Vec<SiteLink>,
    cookies: Vec<usize>,
    comm: String,
    /// Tells this attachment from an earlier one of the same PID.
    generation: u64,
    last_flush: Instant,
}

/// What attaching to one process did.
#[derive(Debug, Default)]
pub struct AttachReport {
    pub sites: usize,
    /// One line per probe attached (sites, objects, semaphores), and one
    /// per probe left out (with `allow_partial`).
    pub notes: Vec<String>,
}

/// Which argument indexes are strings, from `int,str,...`.
fn parse_arg_types(types: &str) -> Result<Vec<bool>> {
    let out: Vec<bool> = types
        .split(',')
        .map(|t| match t.trim() {
            "int" | "i" => Ok(false),
            "str" | "s" => Ok(true),
            other => Err(anyhow!(
                "--args: unknown type `{other}`; use int or str per argument, e.g. --args str,int"
            )),
        })
        .collect::<Result<_>>()?;
    if out.len() > PROBE_MAX_ARGS {
        bail!("--args: at most {PROBE_MAX_ARGS} arguments");
    }
    if out.iter().filter(|s| **s).count() > PROBE_STR_ARGS {
        bail!("--args: at most {PROBE_STR_ARGS} string arguments per hit");
    }
    Ok(out)
}

/// How a session runs, and when it stops.
#[derive(Default)]
pub struct RunControl {
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Processes to probe from now on (the agent's: new ones, and ones
    /// that exec'd again); the session stops when the sender is dropped.
    pub follow: Option<mpsc::UnboundedReceiver<u32>>,
    /// A command of its own: stop on Ctrl-C/SIGTERM, print `tracer: ready`.
    pub own_signals: bool,
    /// Stop once every probed process has exited.
    pub end_when_none_left: bool,
}

/// A followed process that did not resolve (yet) is tried this many
/// times: right after exec its shared libraries may not be mapped yet.
const FOLLOW_ATTEMPTS: u32 = 8;
const FOLLOW_RETRY: Duration = Duration::from_millis(250);

/// The generic probe programs loaded once, attached at the sites of any
/// number of processes. Each site's attach cookie indexes `sites`.
pub struct Session {
    // Field order matters: the links (in targets) drop (detach) before
    // the object's maps.
    targets: BTreeMap<u32, Target>,
    opts: SessionOptions,
    probes: Vec<ProbeSpec>,
    types: Option<Vec<bool>>,
    sites: Vec<Option<SiteInfo>>,
    /// Cookies of detached sites, for reuse (their counters' last totals
    /// stay in `seen_*`, so deltas stay right).
    free: Vec<usize>,
    hit_fd: ProgramFd,
    ret_fd: ProgramFd,
    pmu: UprobePmu,
    site_map: BpfHashMap<MapData, u64, ProbeSite>,
    ring: AsyncFd<RingBuf<MapData>>,
    counts: PerCpuArray<MapData, u64>,
    hist: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    /// Last value read of each counter (cookie -> total), to report deltas.
    seen_counts: Vec<u64>,
    seen_hist: Vec<[u64; PROBE_HIST_BUCKETS as usize]>,
    seen_drops: Vec<u64>,
    clock: WallClock,
    /// Every PID probed so far (drops are per probe; with one process they
    /// are reported under its PID).
    pids_seen: BTreeSet<u32>,
    generation: u64,
    exit_tx: mpsc::UnboundedSender<(u32, u64)>,
    exit_rx: Option<mpsc::UnboundedReceiver<(u32, u64)>>,
    _ebpf: Ebpf,
}

impl Session {
    /// Check the options, load the programs; no process yet.
    pub fn new(opts: SessionOptions) -> Result<Self> {
        let (probes, types) = opts.validate()?;
        crate::capture::preflight::check_privileges()?;
        let mut ebpf = EbpfLoader::new()
            .load(crate::capture::EBPF_OBJECT)
            .context("loading the eBPF object")?;
        let hit_fd = load_program(&mut ebpf, "probe_hit")?;
        let ret_fd = load_program(&mut ebpf, "probe_ret")?;
        let pmu = UprobePmu::detect()?;
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("{name} map missing from the eBPF object"))
        };
        let site_map = BpfHashMap::try_from(take(&mut ebpf, "PROBE_SITES")?)?;
        let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?)?;
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd
        // owns the RingBuf, and always returns that same fd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let counts = PerCpuArray::try_from(take(&mut ebpf, "PROBE_COUNTS")?)?;
        let hist = PerCpuArray::try_from(take(&mut ebpf, "PROBE_HIST")?)?;
        let drops = PerCpuArray::try_from(take(&mut ebpf, "PROBE_DROPS")?)?;
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        Ok(Self {
            targets: BTreeMap::new(),
            clock: WallClock::new(opts.clock_shift_ns),
            opts,
            probes,
            types,
            sites: Vec::new(),
            free: Vec::new(),
            hit_fd,
            ret_fd,
            pmu,
            site_map,
            ring,
            counts,
            hist,
            drops,
            seen_counts: Vec::new(),
            seen_hist: Vec::new(),
            seen_drops: vec![0; PROBE_MAX_PROBES as usize * 2],
            pids_seen: BTreeSet::new(),
            generation: 0,
            exit_tx,
            exit_rx: Some(exit_rx),
            _ebpf: ebpf,
        })
    }

    /// Sites attached in all.
    pub fn site_count(&self) -> usize {
        self.targets.values().map(|t| t.links.len()).sum()
    }

    /// The sites of one probe in `pid`, within the caps.
    fn resolve_probe(&self, pid: u32, spec: &ProbeSpec) -> Result<Vec<ResolvedSite>> {
        let sites = spec::resolve(pid, spec, self.opts.force)?;
        if sites.len() > self.opts.max_sites {
            bail!(
                "probe `{}` matches {} sites in PID {pid} (first: {}); the cap is {} per probe: \
                 narrow the pattern or raise --max-sites",
                spec.text,
                sites.len(),
                sites
                    .iter()
                    .take(5)
                    .map(|s| s.point.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.opts.max_sites
            );
        }
        if let Some(types) = &self.types
            && let Some(site) = sites.iter().find(|s| types.len() > s.args.len())
        {
            bail!(
                "probe `{}`: --args names {} arguments but {} has {}",
                spec.text,
                types.len(),
                site.point,
                site.args.len()
            );
        }
        Ok(sites)
    }

    /// Attach every probe in process `pid`. With `allow_partial`, a probe
    /// that does not resolve there is left out (and named in the notes);
    /// otherwise any failure attaches nothing.
    pub fn add_target(&mut self, pid: u32, allow_partial: bool) -> Result<AttachReport> {
        crate::capture::preflight::check_pid(pid)?;
        if self.targets.contains_key(&pid) {
            bail!("PID {pid} is probed already");
        }
        let mut report = AttachReport::default();
        let mut resolved = Vec::new();
        for (probe_id, spec) in self.probes.iter().enumerate() {
            match self.resolve_probe(pid, spec) {
                Ok(sites) => resolved.push((probe_id as u32, sites)),
                Err(e) if allow_partial => report
                    .notes
                    .push(format!("probe {}: left out: {e:#}", spec.text)),
                Err(e) => return Err(e),
            }
        }
        if resolved.is_empty() {
            bail!(
                "no probe resolves in PID {pid}: {}",
                report.notes.join("; ")
            );
        }
        let per_site = if self.opts.record == RecordMode::Latency {
            2
        } else {
            1
        };
        let live = self.sites.len() - self.free.len();
        let total = live + per_site * resolved.iter().map(|(_, sites)| sites.len()).sum::<usize>();
        if total > MAX_TOTAL_SITES {
            bail!("{total} sites in all; tracer attaches at most {MAX_TOTAL_SITES} at once");
        }
        let exited = pid_exit(pid)?;
        let mut links = Vec::new();
        let mut cookies = Vec::new();
        if let Err(e) = self.attach_all(pid, &resolved, &mut links, &mut cookies) {
            drop(links);
            for c in cookies {
                self.release(c);
            }
            return Err(e);
        }
        for (probe_id, sites) in &resolved {
            let semaphores = sites.iter().filter(|s| s.ref_ctr_offset != 0).count();
            let objects: BTreeSet<&str> = sites.iter().map(|s| s.object.as_str()).collect();
            report.notes.insert(
                0,
                format!(
                    "probe {}: {} site(s) in {}{}",
                    self.probes[*probe_id as usize].text,
                    sites.len(),
                    objects.into_iter().collect::<Vec<_>>().join(", "),
                    if semaphores > 0 {
                        format!(" ({semaphores} with a semaphore, raised while attached)")
                    } else {
                        String::new()
                    }
                ),
            );
        }
        report.sites = links.len();
        self.generation += 1;
        let generation = self.generation;
        let tx = self.exit_tx.clone();
        tokio::spawn(async move {
            if exited.readable().await.is_ok() {
                let _ = tx.send((pid, generation));
            }
        });
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        self.pids_seen.insert(pid);
        self.targets.insert(
            pid,
            Target {
                links,
                cookies,
                comm,
                generation,
                last_flush: Instant::now(),
            },
        );
        Ok(report)
    }

    /// A free cookie for `info`.
    fn allocate(&mut self, info: SiteInfo) -> usize {
        match self.free.pop() {
            Some(c) => {
                self.sites[c] = Some(info);
                c
            }
            None => {
                self.sites.push(Some(info));
                self.seen_counts.push(0);
                self.seen_hist.push([0; PROBE_HIST_BUCKETS as usize]);
                self.sites.len() - 1
            }
        }
    }

    /// A detached site's cookie back to the pool.
    fn release(&mut self, cookie: usize) {
        let _ = self.site_map.remove(&(cookie as u64));
        self.sites[cookie] = None;
        self.free.push(cookie);
    }

    fn attach_all(
        &mut self,
        pid: u32,
        resolved: &[(u32, Vec<ResolvedSite>)],
        links: &mut Vec<SiteLink>,
        cookies: &mut Vec<usize>,
    ) -> Result<()> {
        let types = self.types.clone();
        for (probe_id, sites) in resolved {
            let probe_id = *probe_id;
            let retprobe = self.probes[probe_id as usize].kind == ProbeKind::Uretprobe;
            for site in sites {
                let (mode, entry_return): (u32, &[bool]) = match self.opts.record {
                    RecordMode::Count => (PROBE_MODE_COUNT, &[retprobe]),
                    RecordMode::Args => (PROBE_MODE_ARGS, &[retprobe]),
                    // Entry then return, whichever of the two was named.
                    RecordMode::Latency => (PROBE_MODE_LATENCY, &[false, true]),
                };
                let args = if self.opts.record == RecordMode::Latency {
                    Vec::new()
                } else {
                    site.args.clone()
                };
                let (nargs, str_slots) = match &types {
                    Some(types) => {
                        let slots: Vec<(usize, usize)> = types
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| **s)
                            .enumerate()
                            .map(|(slot, (i, _))| (i, slot + 1))
                            .collect();
                        (types.len(), slots)
                    }
                    None => (args.len(), Vec::new()),
                };
                let unsigned64: Vec<usize> = args
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.size == 8 && a.signed == 0)
                    .map(|(i, _)| i)
                    .collect();
                let mut entry_cookie = None;
                for &is_return in entry_return {
                    let cookie = self.allocate(SiteInfo {
                        pid,
                        unsigned64: unsigned64.clone(),
                        probe_id,
                        object: site.object.clone(),
                        point: site.point.clone(),
                        str_slots: str_slots.clone(),
                        nargs,
                        aggregated: mode == PROBE_MODE_COUNT
                            || (mode == PROBE_MODE_LATENCY && is_return),
                    });
                    cookies.push(cookie);
                    let entry_cookie = *entry_cookie.get_or_insert(cookie);
                    let mut value = ProbeSite {
                        probe_id,
                        mode,
                        nargs: nargs as u32,
                        max_per_sec: self.opts.rate,
                        entry_cookie: entry_cookie as u32,
                        ..Default::default()
                    };
                    for (i, a) in args.iter().take(nargs).enumerate() {
                        value.args[i] = *a;
                    }
                    for (i, slot) in &str_slots {
                        value.args[*i].str_slot = *slot as u8;
                    }
                    self.site_map
                        .insert(cookie as u64, value, 0)
                        .context("writing PROBE_SITES")?;
                    let prog = if is_return {
                        &self.ret_fd
                    } else {
                        &self.hit_fd
                    };
                    let link = perf::attach(
                        &self.pmu,
                        prog.as_fd(),
                        &perf::Site {
                            path: &site.host_path,
                            file_offset: site.file_offset,
                            ref_ctr_offset: site.ref_ctr_offset,
                            retprobe: is_return,
                            pid,
                            cookie: cookie as u64,
                        },
                    )
                    .with_context(|| {
                        format!(
                            "attaching to {} in {} of PID {pid}",
                            site.point, site.object
                        )
                    })?;
                    links.push(link);
                }
            }
        }
        Ok(())
    }

    /// Detach from `pid`: its last records and aggregates are emitted,
    /// its semaphores lowered, its cookies freed.
    pub fn remove_target(
        &mut self,
        pid: u32,
        sink: &mut dyn Sink,
        totals: &mut SessionTotals,
    ) -> Result<()> {
        let Some(target) = self.targets.remove(&pid) else {
            return Ok(());
        };
        let Target {
            links,
            cookies,
            comm,
            last_flush,
            ..
        } = target;
        drop(links);
        // Records already in the ring still name these cookies.
        self.drain(sink, totals)?;
        let interval_ns = last_flush.elapsed().as_nanos() as u64;
        for e in self.flush_sites(&cookies, pid, &comm, interval_ns)? {
            totals.add(&e);
            sink.emit(&e)?;
        }
        for c in cookies {
            self.release(c);
        }
        sink.flush()
    }

    fn event(&self, ts_ns: u64, pid: u32, tid: u32, comm: String, data: EventData) -> Event {
        Event {
            ts_ns,
            host: self.opts.host.clone(),
            pid,
            tid,
            comm,
            data,
        }
    }

    fn hit(&self, site: &SiteInfo, record: RecordMode) -> ProbeHit {
        ProbeHit {
            probe: self.probes[site.probe_id as usize].text.clone(),
            object: site.object.clone(),
            point: site.point.clone(),
            record: record.name().to_string(),
            count: None,
            interval_ns: None,
            args: None,
            latency_ns: None,
        }
    }

    /// One ring record of an `args` hit.
    fn decode(&self, buf: &[u8]) -> Result<Event> {
        if buf.len() < std::mem::size_of::<ProbeEvent>() {
            bail!("probe record of {} bytes is too short", buf.len());
        }
        // SAFETY: length checked; ProbeEvent is a #[repr(C)] POD wire type
        // for which every bit pattern is valid; read_unaligned has no
        // alignment needs.
        let rec: ProbeEvent = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        let hdr: EventHeader = rec.hdr;
        if hdr.kind != EventKind::Probe as u32 {
            bail!("unexpected record kind {} in the probe ring", hdr.kind);
        }
        let cookie = rec.cookie as usize;
        let Some(Some(site)) = self.sites.get(cookie) else {
            bail!("probe record for unknown site {cookie}");
        };
        let mut args = Vec::with_capacity(site.nargs);
        for (i, &raw) in rec.args.iter().enumerate().take(site.nargs) {
            let value = match site.str_slots.iter().find(|(arg, _)| *arg == i) {
                Some((_, slot)) => {
                    let bytes = &rec.strs[slot - 1];
                    let len = (rec.str_len[slot - 1] as usize).min(bytes.len());
                    let text = &bytes[..len];
                    let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
                    if len == 0 {
                        serde_json::Value::Null
                    } else {
                        serde_json::Value::String(String::from_utf8_lossy(&text[..end]).into())
                    }
                }
                None if site.unsigned64.contains(&i) => serde_json::Value::from(raw),
                // The kernel sign-extended signed values into the u64, and
                // zero-extended narrower unsigned ones (which fit an i64).
                None => serde_json::Value::from(raw as i64),
            };
            args.push(value);
        }
        let mut hit = self.hit(site, RecordMode::Args);
        hit.args = Some(args);
        let end = hdr
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(hdr.comm.len());
        Ok(self.event(
            self.clock.wall_ns(hdr.ts_ns),
            site.pid,
            hdr.tid,
            String::from_utf8_lossy(&hdr.comm[..end]).into_owned(),
            EventData::Probe(Box::new(hit)),
        ))
    }

    fn per_cpu_sum(map: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64> {
        Ok(map.get(&index, 0)?.iter().sum())
    }

    /// Aggregates of the sites `cookies` (of process `pid`) since their
    /// last flush.
    fn flush_sites(
        &mut self,
        cookies: &[usize],
        pid: u32,
        comm: &str,
        interval_ns: u64,
    ) -> Result<Vec<Event>> {
        let now = self.clock.now_ns();
        let mode = self.opts.record;
        // Call sites of one USDT point add up.
        let mut points: BTreeMap<PointKey, PointTotals> = BTreeMap::new();
        for &cookie in cookies {
            let Some(site) = &self.sites[cookie] else {
                continue;
            };
            if !site.aggregated {
                continue;
            }
            let key = (site.probe_id, site.object.clone(), site.point.clone());
            let total = Self::per_cpu_sum(&self.counts, cookie as u32)?;
            let delta = total - self.seen_counts[cookie].min(total);
            self.seen_counts[cookie] = total;
            let mut buckets = vec![0u64; PROBE_HIST_BUCKETS as usize];
            if mode == RecordMode::Latency {
                for (b, slot) in buckets.iter_mut().enumerate() {
                    let index = cookie as u32 * PROBE_HIST_BUCKETS + b as u32;
                    let total = Self::per_cpu_sum(&self.hist, index)?;
                    *slot = total - self.seen_hist[cookie][b].min(total);
                    self.seen_hist[cookie][b] = total;
                }
            }
            let entry = points.entry(key).or_insert_with(|| PointTotals {
                count: 0,
                buckets: vec![0; PROBE_HIST_BUCKETS as usize],
                cookie,
            });
            entry.count += delta;
            for (a, b) in entry.buckets.iter_mut().zip(&buckets) {
                *a += b;
            }
        }
        let mut out = Vec::new();
        for PointTotals {
            count,
            buckets,
            cookie,
        } in points.into_values()
        {
            if count == 0 {
                continue;
            }
            let Some(site) = &self.sites[cookie] else {
                continue;
            };
            let mut hit = self.hit(site, mode);
            hit.count = Some(count);
            hit.interval_ns = Some(interval_ns);
            if mode == RecordMode::Latency {
                hit.latency_ns = Some(
                    buckets
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(|(b, n)| [1u64.checked_shl(b as u32).unwrap_or(u64::MAX), *n])
                        .collect(),
                );
            }
            out.push(self.event(
                now,
                pid,
                pid,
                comm.to_string(),
                EventData::Probe(Box::new(hit)),
            ));
        }
        Ok(out)
    }

    /// Aggregates of every process since the last flush, and drops, as
    /// events.
    fn flush_counters(&mut self) -> Result<Vec<Event>> {
        let due: Vec<(u32, Vec<usize>, String, u64)> = self
            .targets
            .iter_mut()
            .map(|(pid, t)| {
                let interval_ns = t.last_flush.elapsed().as_nanos() as u64;
                t.last_flush = Instant::now();
                (*pid, t.cookies.clone(), t.comm.clone(), interval_ns)
            })
            .collect();
        let mut out = Vec::new();
        for (pid, cookies, comm, interval_ns) in due {
            out.extend(self.flush_sites(&cookies, pid, &comm, interval_ns)?);
        }
        out.extend(self.flush_drops()?);
        Ok(out)
    }

    /// Hits over a probe's rate cap, and hits that found the ring full.
    fn flush_drops(&mut self) -> Result<Vec<Event>> {
        let now = self.clock.now_ns();
        // Drops are counted per probe, not per process: they are reported
        // under the process when there is only one.
        let (pid, comm) = match self.pids_seen.iter().next() {
            Some(pid) if self.pids_seen.len() == 1 => (
                *pid,
                self.targets
                    .get(pid)
                    .map(|t| t.comm.clone())
                    .unwrap_or_default(),
            ),
            _ => (0, String::new()),
        };
        let mut out = Vec::new();
        for probe_id in 0..self.probes.len() as u32 {
            for (slot, stage) in [
                (probe_drop_rate_slot(probe_id), LossStage::Rate),
                (probe_drop_ring_slot(probe_id), LossStage::Ring),
            ] {
                let total = Self::per_cpu_sum(&self.drops, slot)?;
                let seen = &mut self.seen_drops[slot as usize];
                let delta = total - (*seen).min(total);
                *seen = total;
                if delta > 0 {
                    out.push(self.event(
                        now,
                        pid,
                        pid,
                        comm.clone(),
                        EventData::Lost {
                            count: delta,
                            stage,
                            for_kind: Some(format!(
                                "probe {}",
                                self.probes[probe_id as usize].text
                            )),
                        },
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Probe a process the agent follows; one that does not resolve yet
    /// (just exec'd: its libraries may not be mapped) is tried again.
    fn follow(
        &mut self,
        pid: u32,
        attempt: u32,
        sink: &mut dyn Sink,
        totals: &mut SessionTotals,
        retry: &mpsc::UnboundedSender<(u32, u32)>,
    ) -> Result<()> {
        if attempt == 0 && self.targets.contains_key(&pid) {
            // It exec'd again: a new program, new sites.
            self.remove_target(pid, sink, totals)?;
        }
        let last = attempt + 1 >= FOLLOW_ATTEMPTS;
        match self.add_target(pid, last) {
            Ok(report) => {
                for note in &report.notes {
                    eprintln!("tracer: PID {pid}: {note}");
                }
                eprintln!(
                    "tracer: probes attached to PID {pid}: {} site(s)",
                    report.sites
                );
            }
            Err(e) if !last && std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                log::debug!("PID {pid}: probes not attached yet (attempt {attempt}): {e:#}");
                let retry = retry.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(FOLLOW_RETRY).await;
                    let _ = retry.send((pid, attempt + 1));
                });
            }
            Err(e) => eprintln!("tracer: PID {pid}: no probe attached: {e:#}"),
        }
        Ok(())
    }

    /// Run until the time is up, a signal (`own_signals`), the follow
    /// channel closes, or (`end_when_none_left`) every process exited.
    /// Returns why it stopped. Everything is detached on return.
    pub async fn run<S: Sink>(
        mut self,
        sink: &mut S,
        mut ctl: RunControl,
    ) -> Result<(String, SessionTotals)> {
        let mut totals = SessionTotals::default();
        let mut exit_rx = self
            .exit_rx
            .take()
            .ok_or_else(|| anyhow!("the session ran already"))?;
        let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<(u32, u32)>();
        let (mut sigint, mut sigterm) = if ctl.own_signals {
            (
                Some(signal(SignalKind::interrupt()).context("installing a SIGINT handler")?),
                Some(signal(SignalKind::terminate()).context("installing a SIGTERM handler")?),
            )
        } else {
            (None, None)
        };
        let mut tick = tokio::time::interval(self.opts.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // A quiet ring is read on a short timer too (the probes batch
        // wakeups, emit::submit_flags).
        let mut drain_tick = tokio::time::interval(crate::capture::ring::FLUSH_INTERVAL);
        let deadline = ctl.duration.map(|d| tokio::time::Instant::now() + d);
        let sleep_until = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep_until);
        if ctl.own_signals {
            eprintln!("tracer: ready");
        }
        let reason = loop {
            tokio::select! {
                guard = self.ring.readable() => {
                    guard?.clear_ready();
                    self.drain(sink, &mut totals)?;
                }
                _ = drain_tick.tick() => self.drain(sink, &mut totals)?,
                _ = tick.tick() => {
                    for e in self.flush_counters()? {
                        totals.add(&e);
                        sink.emit(&e)?;
                    }
                    sink.flush()?;
                }
                Some((pid, generation)) = exit_rx.recv() => {
                    if self.targets.get(&pid).is_some_and(|t| t.generation == generation) {
                        self.remove_target(pid, sink, &mut totals)?;
                        if ctl.follow.is_some() {
                            eprintln!("tracer: PID {pid} exited: probes detached");
                        }
                        if ctl.end_when_none_left && self.targets.is_empty() {
                            break match self.pids_seen.iter().next() {
                                Some(pid) if self.pids_seen.len() == 1 => format!("PID {pid} exited"),
                                _ => "every probed process exited".to_string(),
                            };
                        }
                    }
                }
                pid = async {
                    match ctl.follow.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match pid {
                    Some(pid) => self.follow(pid, 0, sink, &mut totals, &retry_tx)?,
                    None => break "stopped".to_string(),
                },
                Some((pid, attempt)) = retry_rx.recv() => {
                    self.follow(pid, attempt, sink, &mut totals, &retry_tx)?;
                }
                _ = async {
                    match sigint.as_mut() {
                        Some(int) => int.recv().await,
                        None => std::future::pending().await,
                    }
                } => break "interrupted".to_string(),
                _ = async {
                    match sigterm.as_mut() {
                        Some(term) => term.recv().await,
                        None => std::future::pending().await,
                    }
                } => break "terminated".to_string(),
                _ = &mut sleep_until => break "duration reached".to_string(),
            }
        };
        // Detach first, so that the last counters read are final.
        let pids: Vec<u32> = self.targets.keys().copied().collect();
        for pid in pids {
            self.remove_target(pid, sink, &mut totals)?;
        }
        self.drain(sink, &mut totals)?;
        for e in self.flush_drops()? {
            totals.add(&e);
            sink.emit(&e)?;
        }
        sink.flush()?;
        Ok((reason, totals))
    }

    fn drain(&mut self, sink: &mut dyn Sink, totals: &mut SessionTotals) -> Result<()> {
        // Copied out first: decoding needs the session, the ring borrows it.
        let mut records = Vec::new();
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            records.push(item.to_vec());
        }
        for rec in records {
            match self.decode(&rec) {
                Ok(e) => {
                    totals.add(&e);
                    sink.emit(&e)?;
                }
                Err(e) => {
                    totals.decode_errors += 1;
                    log::debug!("undecodable probe record: {e:#}");
                }
            }
        }
        sink.flush()
    }
}

/// (probe id, object, point): what one aggregate event is about.
type PointKey = (u32, String, String);

/// One interval's aggregate of a point.
struct PointTotals {
    count: u64,
    buckets: Vec<u64>,
    /// A site of the point (names the event).
    cookie: usize,
}

/// What a session reported, for its summary line.
#[derive(Debug, Default)]
pub struct SessionTotals {
    pub hits: u64,
    pub events: u64,
    pub lost: u64,
    pub decode_errors: u64,
}

impl SessionTotals {
    fn add(&mut self, e: &Event) {
        self.events += 1;
        match &e.data {
            EventData::Probe(p) => self.hits += p.count.unwrap_or(1),
            EventData::Lost { count, .. } => self.lost += count,
            _ => {}
        }
    }
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<ProgramFd> {
    let prog: &mut UProbe = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("probe {name} missing from the eBPF object"))?
        .try_into()?;
    prog.load()
        .with_context(|| format!("verifying probe {name}"))?;
    // The verifier's work on it (its budget is 1M instructions; tests
    // assert a wide margin from this line).
    if let Some(n) = prog
        .info()
        .ok()
        .and_then(|i| i.verified_instruction_count())
    {
        log::debug!("program {name}: verifier processed {n} instructions");
    }
    Ok(prog.fd()?.try_clone()?)
}

struct PidFd(OwnedFd);
impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Readable once `pid` has exited.
fn pid_exit(pid: u32) -> Result<AsyncFd<PidFd>> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(anyhow!(std::io::Error::last_os_error()))
            .with_context(|| format!("pidfd_open({pid})"));
    }
    // SAFETY: the kernel just returned this fd and nobody else owns it.
    let fd = PidFd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    // SAFETY: PidFd owns the fd and returns it unchanged until dropped.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!(e.into_parts().1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_types() {
        assert_eq!(parse_arg_types("str,int").unwrap(), vec![true, false]);
        assert_eq!(parse_arg_types("i,s,i").unwrap(), vec![false, true, false]);
        assert!(parse_arg_types("str,str,str").is_err());
        assert!(
            parse_arg_types("float")
                .unwrap_err()
                .to_string()
                .contains("float")
        );
        assert!(parse_arg_types("int,int,int,int,int,int,int").is_err());
    }
}
