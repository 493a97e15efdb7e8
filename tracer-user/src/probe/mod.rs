//! `tracer probe`: USDT points and native function symbols of a running
//! process, listed and probed ad hoc, without restarting it.
//!
//! - [`objects`]: the ELF objects a process maps (through /proc/PID/root)
//!   and their function symbols;
//! - [`notes`]: USDT call sites from `.note.stapsdt`;
//! - [`argspec`]: a note's argument spec -> how the BPF program reads it;
//! - [`spec`]: `usdt:`/`uprobe:`/`uretprobe:` specs -> call sites;
//! - [`perf`]: the attach shim (uprobe PMU with `ref_ctr_offset`, BPF link
//!   with a cookie);
//! - [`session`]: attach, then report `probe` events until done;
//! - [`registry`]: the sessions attached on this host (`active`, `rm`);
//! - [`follow`]: the agent's `--probe`, on every process it traces.

pub mod argspec;
pub mod follow;
pub mod notes;
pub mod objects;
pub mod perf;
pub mod registry;
pub mod session;
pub mod spec;

use std::{io::Write as _, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use self::session::{RecordMode, RunControl, Session, SessionOptions};
use crate::output::StdoutSink;

/// List or probe USDT points and native functions of a running process.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(subcommand)]
    pub command: ProbeCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProbeCommand {
    List(ListArgs),
    Add(AddArgs),
    Active(ActiveArgs),
    Rm(RmArgs),
}

/// The probes `tracer probe add` sessions hold on this host now.
#[derive(Debug, Args)]
#[command(after_help = "\
Columns: probe id (for `tracer probe rm`), probed PIDs, what is recorded,
specs, age, and time left with --ttl. Probes of `tracer agent --probe` are
the agent's and are not listed (they go when the agent stops).")]
pub struct ActiveArgs {
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Detach probes that a `tracer probe add` holds, from any terminal: the
/// session detaches everything (semaphores lowered) and ends.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tracer probe active
  tracer probe rm p4242
  tracer probe rm --pid $(pgrep -n node)   # every probe on that process
  tracer probe rm --all")]
pub struct RmArgs {
    /// Probe ids, as `tracer probe add` and `tracer probe active` print them.
    #[arg(value_name = "ID", required_unless_present_any = ["all", "pid"])]
    pub ids: Vec<String>,
    /// Every probe on this host.
    #[arg(long, conflicts_with_all = ["ids", "pid"])]
    pub all: bool,
    /// Every probe on this process.
    #[arg(long, conflicts_with = "ids")]
    pub pid: Option<u32>,
    /// How long to wait for each session to detach.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub timeout: f64,
}

/// Every USDT point (or, with --symbols, function symbol) of every ELF
/// object the process has mapped.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tracer probe list --pid $(pgrep -n node)
  tracer probe list --pid 4242 'python:function__*'
  tracer probe list --pid 4242 --symbols 'uv_fs_*'

Columns: object, provider:name, site address, argument spec, semaphore
(0x0: none). Objects are read through /proc/PID/root, so processes in
containers work.")]
pub struct ListArgs {
    #[arg(long)]
    pub pid: u32,
    /// Glob over `provider:name` (or, with --symbols, over symbol names).
    pub pattern: Option<String>,
    /// List function symbols matching PATTERN instead of USDT points.
    #[arg(long)]
    pub symbols: bool,
    /// Only this object (path, file name, or name without .so: `libc`).
    #[arg(long)]
    pub object: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Attach probes to a running process (or every node process whose
/// command line matches --match) and print `probe` events (see
/// docs/events.md) until --duration, Ctrl-C, or the processes exit.
#[derive(Debug, Args)]
#[command(after_help = "\
SPEC:
  usdt:[OBJECT:]PROVIDER:NAME    every call site of a USDT point; its
                                 semaphore is raised while attached
  uprobe:[OBJECT:]SYMBOL_GLOB    entry of matching functions
  uretprobe:[OBJECT:]SYMBOL_GLOB return of matching functions (arg0: the
                                 return value)

Examples:
  tracer probe add --pid 4242 usdt:python:function__entry
  tracer probe add --pid 4242 --record args --args str,str,int usdt:python:function__entry
  tracer probe add --pid $(pgrep -n node) --record args --args int,str uprobe:uv_fs_open
  tracer probe add --pid $(pgrep -n node) --record latency 'uprobe:uv_fs_*' --ttl 60
  tracer probe add --match 'server\\.js' uprobe:uv_fs_open

With --match, the node processes running at start are probed (a probe that
does not resolve in one of them is left out there, with a note); to follow
processes that start later, use `tracer agent --probe SPEC`.

Each hit is a uprobe trap (microseconds): functions on the event loop's
hottest paths are refused unless --force. Detaching leaves the process as
it was (semaphores lowered).")]
pub struct AddArgs {
    #[arg(
        long,
        required_unless_present = "match_cmdline",
        conflicts_with = "match_cmdline"
    )]
    pub pid: Option<u32>,
    /// Every running node process whose command line matches this regex.
    #[arg(long = "match", value_name = "REGEX")]
    pub match_cmdline: Option<String>,
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<String>,
    /// What to record.
    #[arg(long, value_enum, default_value_t = RecordMode::Count)]
    pub record: RecordMode,
    /// With --record args: the type of each argument to report, `int` or
    /// `str` (a pointer to a NUL-terminated string), e.g. `str,int`.
    /// Default: every argument of the point as an integer (6 for uprobe:,
    /// the return value for uretprobe:).
    #[arg(long = "args", value_name = "TYPES")]
    pub arg_types: Option<String>,
    /// Detach after this many seconds (default: until Ctrl-C or the process
    /// exits).
    #[arg(
        long,
        visible_alias = "ttl",
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    pub duration: Option<f64>,
    /// With --record args: most events per second per probe; hits over it
    /// are counted and reported as `lost` (stage `rate`). 0: no cap.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Most call sites one probe may attach to.
    #[arg(long, default_value_t = 64)]
    pub max_sites: usize,
    /// Probe functions on tracer's deny list (the event loop's hottest).
    #[arg(long)]
    pub force: bool,
    /// Seconds per count/latency aggregate.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub interval: f64,
    /// One JSON object per line (docs/events.md).
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: ProbeArgs) -> Result<()> {
    match args.command {
        ProbeCommand::List(a) => list(a),
        ProbeCommand::Add(a) => add(a).await,
        ProbeCommand::Active(a) => active(a),
        ProbeCommand::Rm(a) => rm(a),
    }
}

fn active(args: ActiveArgs) -> Result<()> {
    let entries = registry::active(std::path::Path::new(registry::DIR))?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for e in &entries {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
            continue;
        }
        let pids: Vec<String> = e.pids.iter().map(u32::to_string).collect();
        let left = e
            .expires_ms
            .map(|x| format!(" ttl={}s", x.saturating_sub(now) / 1000))
            .unwrap_or_default();
        writeln!(
            out,
            "{} pid={} record={} age={}s{left} {}",
            e.id,
            pids.join(","),
            e.record,
            now.saturating_sub(e.started_ms) / 1000,
            e.specs.join(" ")
        )?;
    }
    if entries.is_empty() && !args.json {
        eprintln!("tracer: no probe is attached on this host (by `tracer probe add`)");
    }
    Ok(out.flush()?)
}

fn rm(args: RmArgs) -> Result<()> {
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let entries = registry::active(std::path::Path::new(registry::DIR))?;
    let chosen: Vec<&registry::Entry> = if args.all {
        entries.iter().collect()
    } else if let Some(pid) = args.pid {
        let on: Vec<_> = entries.iter().filter(|e| e.pids.contains(&pid)).collect();
        if on.is_empty() {
            bail!(
                "no probe of `tracer probe add` is attached to PID {pid} (`tracer probe active` \
                 lists them; probes of `tracer agent --probe` go when the agent stops)"
            );
        }
        on
    } else {
        let mut chosen = Vec::new();
        for id in &args.ids {
            match entries.iter().find(|e| e.id == *id) {
                Some(e) => chosen.push(e),
                None => {
                    let known: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
                    bail!(
                        "no probe `{id}` is attached on this host ({}); `tracer probe active` \
                         lists them",
                        if known.is_empty() {
                            "none is".to_string()
                        } else {
                            format!("attached: {}", known.join(", "))
                        }
                    );
                }
            }
        }
        chosen
    };
    let timeout = Duration::from_secs_f64(args.timeout);
    for e in chosen {
        registry::stop(e, timeout)?;
        let pids: Vec<String> = e.pids.iter().map(u32::to_string).collect();
        eprintln!(
            "tracer: removed probe {} ({} on PID {})",
            e.id,
            e.specs.join(" "),
            pids.join(",")
        );
    }
    Ok(())
}

fn list(args: ListArgs) -> Result<()> {
    crate::capture::preflight::check_pid(args.pid)?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if args.symbols {
        let Some(pattern) = &args.pattern else {
            bail!("--symbols needs a PATTERN, e.g. 'uv_fs_*' (node has many thousand functions)");
        };
        let re = spec::glob(pattern)?;
        let found = spec::list_symbols(args.pid, args.object.as_deref(), &re)?;
        for (object, syms) in &found {
            for s in syms {
                if args.json {
                    let v = serde_json::json!({
                        "object": object, "symbol": s.name, "address": s.address,
                        "size": s.size, "file_offset": s.file_offset,
                    });
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(out, "{object} {} {:#x} size={}", s.name, s.address, s.size)?;
                }
            }
        }
        if found.is_empty() {
            eprintln!(
                "tracer: no function symbol of PID {} matches `{pattern}`",
                args.pid
            );
        }
        return Ok(out.flush()?);
    }
    let re = args.pattern.as_deref().map(spec::glob).transpose()?;
    let found = spec::list_usdt(args.pid, args.object.as_deref())?;
    let mut shown = 0;
    for (object, sites) in &found {
        for s in sites {
            let point = s.point();
            if let Some(re) = &re
                && !re.is_match(&point)
                && !re.is_match(&s.name)
            {
                continue;
            }
            shown += 1;
            if args.json {
                let v = serde_json::json!({
                    "object": object, "provider": s.provider, "name": s.name,
                    "address": s.address, "args": s.args, "semaphore": s.semaphore,
                });
                writeln!(out, "{v}")?;
            } else {
                writeln!(
                    out,
                    "{object} {point} {:#x} args=\"{}\" semaphore={:#x}",
                    s.address, s.args, s.semaphore
                )?;
            }
        }
    }
    if shown == 0 {
        eprintln!(
            "tracer: no USDT point{} in the objects of PID {}",
            args.pattern
                .as_deref()
                .map(|p| format!(" matches `{p}`"))
                .unwrap_or_default(),
            args.pid
        );
    }
    Ok(out.flush()?)
}

async fn add(args: AddArgs) -> Result<()> {
    let duration = match args.duration {
        Some(d) if !(d > 0.0 && d.is_finite()) => {
            bail!("--duration/--ttl must be a positive number of seconds")
        }
        d => d.map(Duration::from_secs_f64),
    };
    if !(args.interval >= 0.01 && args.interval.is_finite()) {
        bail!("--interval must be at least 0.01 seconds");
    }
    let pids = match (args.pid, &args.match_cmdline) {
        (Some(pid), _) => {
            crate::capture::preflight::check_pid(pid)?;
            vec![pid]
        }
        (None, Some(re)) => matching_node_processes(re)?,
        (None, None) => bail!("name the process: --pid PID or --match REGEX"),
    };
    let mut session = Session::new(SessionOptions {
        specs: args.specs.clone(),
        record: args.record,
        arg_types: args.arg_types.clone(),
        rate: args.rate,
        max_sites: args.max_sites,
        force: args.force,
        interval: Duration::from_secs_f64(args.interval),
        host: crate::options::host_name(),
        clock_shift_ns: 0,
    })?;
    // One named process: any failure is an error. Several matched: a
    // process where a probe does not resolve keeps the others.
    let strict = args.pid.is_some();
    let mut attached = Vec::new();
    for pid in &pids {
        match session.add_target(*pid, !strict) {
            Ok(report) => {
                for note in &report.notes {
                    eprintln!("tracer: {note}");
                }
                eprintln!("tracer: attached {} site(s) to PID {pid}", report.sites);
                attached.push(*pid);
            }
            Err(e) if strict => return Err(e),
            Err(e) => eprintln!("tracer: PID {pid}: no probe attached: {e:#}"),
        }
    }
    if attached.is_empty() {
        bail!("no probe attached to any of PIDs {pids:?}");
    }
    let record = format!("{:?}", args.record).to_lowercase();
    let registration = registry::register(
        std::path::Path::new(registry::DIR),
        &attached,
        &args.specs,
        &record,
        duration,
    )?;
    eprintln!(
        "tracer: probe id {}: remove it from anywhere with `tracer probe rm {}`",
        registration.id, registration.id
    );
    let mut sink = StdoutSink::new(args.json);
    let (reason, totals) = session
        .run(
            &mut sink,
            RunControl {
                duration,
                follow: None,
                own_signals: true,
                end_when_none_left: true,
            },
        )
        .await?;
    let summary = serde_json::json!({
        "summary": {
            "stop_reason": reason, "hits": totals.hits, "events": totals.events,
            "lost": totals.lost, "decode_errors": totals.decode_errors,
        }
    });
    sink.finish(&summary);
    drop(registration);
    eprintln!(
        "tracer: detached ({reason}): {} hits, {} events, {} lost",
        totals.hits, totals.events, totals.lost
    );
    Ok(())
}

/// Every running node process (not this one) whose command line matches.
fn matching_node_processes(re: &str) -> Result<Vec<u32>> {
    let scope = crate::agent::Scope {
        cmdline: Some(regex::Regex::new(re).context("--match is not a valid regular expression")?),
        netns: None,
    };
    let me = std::process::id();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .context("reading /proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| *pid != me && scope.selects(*pid))
        .collect();
    pids.sort_unstable();
    if pids.is_empty() {
        bail!(
            "--match `{re}`: no running node process has a command line that matches (see \
             `ps -C node -o pid,args`)"
        );
    }
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use crate::event::{Event, EventData, ProbeHit};

    fn event(hit: ProbeHit) -> Event {
        Event {
            ts_ns: 1_764_200_000_123_456_789,
            host: "h1".into(),
            pid: 7,
            tid: 8,
            comm: "node".into(),
            data: EventData::Probe(Box::new(hit)),
        }
    }

    #[test]
    fn probe_events_json_and_text() {
        let e = event(ProbeHit {
            probe: "uprobe:uv_fs_open".into(),
            object: "/usr/bin/node".into(),
            point: "uv_fs_open".into(),
            record: "args".into(),
            count: None,
            interval_ns: None,
            args: Some(vec![serde_json::json!(3), serde_json::json!("/tmp/a")]),
            latency_ns: None,
        });
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "ts_ns": 1_764_200_000_123_456_789u64, "host": "h1", "pid": 7, "tid": 8,
                "comm": "node", "kind": "probe", "probe": "uprobe:uv_fs_open",
                "object": "/usr/bin/node", "point": "uv_fs_open", "record": "args",
                "args": [3, "/tmp/a"]
            })
        );
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
        assert!(
            e.to_text()
                .ends_with("probe uprobe:uv_fs_open node:uv_fs_open arg0=3 arg1=\"/tmp/a\""),
            "{}",
            e.to_text()
        );
        let e = event(ProbeHit {
            probe: "uprobe:work".into(),
            object: "/tmp/t".into(),
            point: "work".into(),
            record: "latency".into(),
            count: Some(3),
            interval_ns: Some(1_000_000_000),
            args: None,
            latency_ns: Some(vec![[2048, 2], [4096, 1]]),
        });
        assert!(
            e.to_text()
                .ends_with("t:work count=3 in 1000.000ms latency <0.002ms:2 <0.004ms:1"),
            "{}",
            e.to_text()
        );
    }
}
