//! `tracer probe add`: attach the generic probe programs at every resolved
//! site of one process, then turn what they record into `probe` events
//! until the time is up, Ctrl-C, or the process exits. Dropping the
//! session detaches everything (and lowers USDT semaphores).

use std::{
    collections::BTreeMap,
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
    pub pid: u32,
    pub specs: Vec<String>,
    pub record: RecordMode,
    /// `int`/`str` per argument, from `--args`.
    pub arg_types: Option<String>,
    pub rate: u32,
    pub max_sites: usize,
    pub force: bool,
    pub interval: Duration,
    pub host: String,
}

/// One attached site, as user space remembers it (index: cookie).
#[derive(Debug, Clone)]
struct SiteInfo {
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

struct Probe {
    spec: ProbeSpec,
    sites: Vec<ResolvedSite>,
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

pub struct Session {
    opts: SessionOptions,
    // Field order matters: links drop (detach) before the object's maps.
    links: Vec<SiteLink>,
    sites: Vec<SiteInfo>,
    probes: Vec<ProbeSpec>,
    ring: Option<RingBuf<MapData>>,
    counts: PerCpuArray<MapData, u64>,
    hist: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    /// Last value read of each counter (cookie -> total), to report deltas.
    seen_counts: Vec<u64>,
    seen_hist: Vec<[u64; PROBE_HIST_BUCKETS as usize]>,
    seen_drops: Vec<u64>,
    clock: WallClock,
    comm: String,
    last_flush: Instant,
    _ebpf: Ebpf,
    pub notes: Vec<String>,
}

impl Session {
    /// Resolve every spec, load the programs and attach at every site.
    pub fn start(opts: SessionOptions) -> Result<Self> {
        crate::capture::preflight::check_privileges()?;
        crate::capture::preflight::check_pid(opts.pid)?;
        if opts.specs.len() > PROBE_MAX_PROBES as usize {
            bail!("at most {PROBE_MAX_PROBES} probes at once");
        }
        let types = opts.arg_types.as_deref().map(parse_arg_types).transpose()?;
        if types.is_some() && opts.record != RecordMode::Args {
            bail!("--args only applies with --record args");
        }
        let mut probes = Vec::new();
        let mut total = 0;
        for text in &opts.specs {
            let spec = spec::parse(text)?;
            if opts.record == RecordMode::Latency && spec.kind == ProbeKind::Usdt {
                bail!(
                    "probe `{text}`: --record latency needs a function (uprobe:SYMBOL); a USDT \
                     point has no return to time"
                );
            }
            let sites = spec::resolve(opts.pid, &spec, opts.force)?;
            if sites.len() > opts.max_sites {
                bail!(
                    "probe `{text}` matches {} sites in PID {} (first: {}); the cap is {} per \
                     probe: narrow the pattern or raise --max-sites",
                    sites.len(),
                    opts.pid,
                    sites
                        .iter()
                        .take(5)
                        .map(|s| s.point.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    opts.max_sites
                );
            }
            total += sites.len()
                * if opts.record == RecordMode::Latency {
                    2
                } else {
                    1
                };
            probes.push(Probe { spec, sites });
        }
        if total > MAX_TOTAL_SITES {
            bail!("{total} sites in all; tracer attaches at most {MAX_TOTAL_SITES} at once");
        }

        let mut ebpf = EbpfLoader::new()
            .load(crate::capture::EBPF_OBJECT)
            .context("loading the eBPF object")?;
        let hit_fd = load_program(&mut ebpf, "probe_hit")?;
        let ret_fd = load_program(&mut ebpf, "probe_ret")?;
        let pmu = UprobePmu::detect()?;

        let mut site_map: BpfHashMap<_, u64, ProbeSite> = BpfHashMap::try_from(
            ebpf.map_mut("PROBE_SITES")
                .ok_or_else(|| anyhow!("PROBE_SITES map missing from the eBPF object"))?,
        )?;
        let mut sites = Vec::new();
        let mut links = Vec::new();
        let mut plan: Vec<(u64, &ResolvedSite, bool)> = Vec::new();
        for (probe_id, probe) in probes.iter().enumerate() {
            let probe_id = probe_id as u32;
            for site in &probe.sites {
                let retprobe = probe.spec.kind == ProbeKind::Uretprobe;
                let (mode, entry_return): (u32, Vec<bool>) = match opts.record {
                    RecordMode::Count => (PROBE_MODE_COUNT, vec![retprobe]),
                    RecordMode::Args => (PROBE_MODE_ARGS, vec![retprobe]),
                    // Entry then return, whichever of the two was named.
                    RecordMode::Latency => (PROBE_MODE_LATENCY, vec![false, true]),
                };
                let entry_cookie = sites.len() as u32;
                for is_return in entry_return {
                    let cookie = sites.len() as u64;
                    let args = if opts.record == RecordMode::Latency {
                        Vec::new()
                    } else {
                        site.args.clone()
                    };
                    let (nargs, str_slots) = match &types {
                        Some(types) => {
                            if types.len() > args.len() {
                                bail!(
                                    "probe `{}`: --args names {} arguments but {} has {}",
                                    probe.spec.text,
                                    types.len(),
                                    site.point,
                                    args.len()
                                );
                            }
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
                    let mut value = ProbeSite {
                        probe_id,
                        mode,
                        nargs: nargs as u32,
                        max_per_sec: opts.rate,
                        entry_cookie,
                        ..Default::default()
                    };
                    for (i, a) in args.iter().take(nargs).enumerate() {
                        value.args[i] = *a;
                    }
                    for (i, slot) in &str_slots {
                        value.args[*i].str_slot = *slot as u8;
                    }
                    site_map
                        .insert(cookie, value, 0)
                        .context("writing PROBE_SITES")?;
                    let unsigned64 = args
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| a.size == 8 && a.signed == 0)
                        .map(|(i, _)| i)
                        .collect();
                    sites.push(SiteInfo {
                        unsigned64,
                        probe_id,
                        object: site.object.clone(),
                        point: site.point.clone(),
                        str_slots,
                        nargs,
                        aggregated: mode == PROBE_MODE_COUNT
                            || (mode == PROBE_MODE_LATENCY && is_return),
                    });
                    plan.push((cookie, site, is_return));
                }
            }
        }
        for (cookie, site, is_return) in plan {
            let prog = if is_return { &ret_fd } else { &hit_fd };
            let link = perf::attach(
                &pmu,
                prog.as_fd(),
                &perf::Site {
                    path: &site.host_path,
                    file_offset: site.file_offset,
                    ref_ctr_offset: site.ref_ctr_offset,
                    retprobe: is_return,
                    pid: opts.pid,
                    cookie,
                },
            )
            .with_context(|| {
                format!(
                    "attaching to {} in {} of PID {}",
                    site.point, site.object, opts.pid
                )
            })?;
            links.push(link);
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("{name} map missing from the eBPF object"))
        };
        let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?)?;
        let counts = PerCpuArray::try_from(take(&mut ebpf, "PROBE_COUNTS")?)?;
        let hist = PerCpuArray::try_from(take(&mut ebpf, "PROBE_HIST")?)?;
        let drops = PerCpuArray::try_from(take(&mut ebpf, "PROBE_DROPS")?)?;
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", opts.pid))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let n = sites.len();
        let mut notes = Vec::new();
        for (probe, spec) in probes.iter().zip(&opts.specs) {
            let semaphores = probe.sites.iter().filter(|s| s.ref_ctr_offset != 0).count();
            let objects: std::collections::BTreeSet<&str> =
                probe.sites.iter().map(|s| s.object.as_str()).collect();
            notes.push(format!(
                "probe {spec}: {} site(s) in {}{}",
                probe.sites.len(),
                objects.into_iter().collect::<Vec<_>>().join(", "),
                if semaphores > 0 {
                    format!(" ({semaphores} with a semaphore, raised while attached)")
                } else {
                    String::new()
                }
            ));
        }
        Ok(Self {
            links,
            sites,
            probes: probes.into_iter().map(|p| p.spec).collect(),
            ring: Some(ring),
            counts,
            hist,
            drops,
            seen_counts: vec![0; n],
            seen_hist: vec![[0; PROBE_HIST_BUCKETS as usize]; n],
            seen_drops: vec![0; PROBE_MAX_PROBES as usize * 2],
            clock: WallClock::new(0),
            comm,
            last_flush: Instant::now(),
            _ebpf: ebpf,
            notes,
            opts,
        })
    }

    /// Sites attached in all.
    pub fn site_count(&self) -> usize {
        self.links.len()
    }

    fn event(&self, ts_ns: u64, tid: u32, comm: String, data: EventData) -> Event {
        Event {
            ts_ns,
            host: self.opts.host.clone(),
            pid: self.opts.pid,
            tid,
            comm,
            data,
        }
    }

    fn hit(&self, cookie: usize, record: RecordMode) -> ProbeHit {
        let site = &self.sites[cookie];
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
        let Some(site) = self.sites.get(cookie) else {
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
        let mut hit = self.hit(cookie, RecordMode::Args);
        hit.args = Some(args);
        let end = hdr
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(hdr.comm.len());
        Ok(self.event(
            self.clock.wall_ns(hdr.ts_ns),
            hdr.tid,
            String::from_utf8_lossy(&hdr.comm[..end]).into_owned(),
            EventData::Probe(Box::new(hit)),
        ))
    }

    fn per_cpu_sum(map: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64> {
        Ok(map.get(&index, 0)?.iter().sum())
    }

    /// Aggregates since the last flush, and drops, as events.
    fn flush_counters(&mut self) -> Result<Vec<Event>> {
        let now = self.clock.now_ns();
        let interval_ns = self.last_flush.elapsed().as_nanos() as u64;
        self.last_flush = Instant::now();
        let mode = self.opts.record;
        // Call sites of one USDT point add up.
        let mut points: BTreeMap<PointKey, PointTotals> = BTreeMap::new();
        for cookie in 0..self.sites.len() {
            if !self.sites[cookie].aggregated {
                continue;
            }
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
            let site = &self.sites[cookie];
            let entry = points
                .entry((site.probe_id, site.object.clone(), site.point.clone()))
                .or_insert_with(|| PointTotals {
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
            let mut hit = self.hit(cookie, mode);
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
                self.opts.pid,
                self.comm.clone(),
                EventData::Probe(Box::new(hit)),
            ));
        }
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
                        self.opts.pid,
                        self.comm.clone(),
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

    /// Run until `duration`, Ctrl-C/SIGTERM, or the process exits. Returns
    /// why it stopped.
    pub async fn run(
        mut self,
        sink: &mut dyn Sink,
        duration: Option<Duration>,
    ) -> Result<(String, SessionTotals)> {
        let mut totals = SessionTotals::default();
        let ring = self
            .ring
            .take()
            .ok_or_else(|| anyhow!("ring already taken"))?;
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd
        // owns the RingBuf, and always returns that same fd.
        let mut ring =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        let exited = pid_exit(self.opts.pid)?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut tick = tokio::time::interval(self.opts.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // A quiet ring is read on a short timer too (the probes batch
        // wakeups, emit::submit_flags).
        let mut drain_tick = tokio::time::interval(crate::capture::ring::FLUSH_INTERVAL);
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        let sleep_until = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep_until);
        eprintln!("tracer: ready");
        let reason = loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    self.drain(guard.get_inner_mut(), sink, &mut totals)?;
                    guard.clear_ready();
                }
                _ = drain_tick.tick() => self.drain(ring.get_mut(), sink, &mut totals)?,
                _ = tick.tick() => {
                    for e in self.flush_counters()? {
                        totals.add(&e);
                        sink.emit(&e)?;
                    }
                    sink.flush()?;
                }
                _ = exited.readable() => break format!("PID {} exited", self.opts.pid),
                _ = sigint.recv() => break "interrupted".to_string(),
                _ = sigterm.recv() => break "terminated".to_string(),
                _ = &mut sleep_until => break "duration reached".to_string(),
            }
        };
        // Detach first, so that the last counters read are final.
        self.links.clear();
        self.drain(ring.get_mut(), sink, &mut totals)?;
        for e in self.flush_counters()? {
            totals.add(&e);
            sink.emit(&e)?;
        }
        sink.flush()?;
        Ok((reason, totals))
    }

    fn drain(
        &self,
        ring: &mut RingBuf<MapData>,
        sink: &mut dyn Sink,
        totals: &mut SessionTotals,
    ) -> Result<()> {
        while let Some(item) = ring.next() {
            match self.decode(&item) {
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
