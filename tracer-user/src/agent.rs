//! `tracer agent`: the per-host daemon. Traces every node process on the
//! host (or a scoped subset), follows processes that start later, and
//! serves Prometheus metrics derived from the same event stream.

use std::{net::SocketAddr, os::unix::fs::MetadataExt as _, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result};
use clap::Args;
use regex::Regex;

use crate::{
    capture::{Capture, seed::netns_of},
    event::{Event, EventData},
    forward::{ForwardConfig, ForwardHandle},
    metrics::Metrics,
    options::CaptureArgs,
    output::StdoutSink,
    pipeline::{Pipeline, WallClock},
    progress::Progress,
    runner::{self, Discover, Outcome, RunOptions, Sink},
};

/// Run the per-host agent: trace node processes, serve /metrics.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tracer agent                                  # every node process on this host
  tracer agent --match 'server\\.js'             # only node processes whose command line matches
  tracer agent --netns /var/run/netns/blue      # only processes in that network namespace
  tracer agent --probe uprobe:uv_fs_open --probe-record args --probe-args int,int,str
                                                # a native probe in every traced process
  tracer agent --aggregator https://agg:7878 --token-file /etc/tracer/token \
      --ca-cert /etc/tracer/ca.pem --allow-control
                                                # forward, and take logpoint/eval commands
  curl -s 127.0.0.1:9464/metrics

Processes that start later are picked up when they exec; processes that exit
are dropped. Events go to stdout (JSON Lines with --json); metrics are served
on --metrics-listen. Needs root. See docs/events.md and docs/metrics.md.")]
pub struct AgentArgs {
    /// Trace only these processes (and their children); no discovery.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace only node processes whose command line matches this regex.
    #[arg(long = "match", value_name = "REGEX")]
    pub match_cmdline: Option<String>,

    /// Trace only processes in this network namespace (a path such as
    /// /var/run/netns/NAME or /proc/PID/ns/net).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,

    /// Where to serve Prometheus metrics (GET /metrics).
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    pub metrics_listen: SocketAddr,

    /// Do not print events (metrics and forwarding only).
    #[arg(long)]
    pub quiet: bool,

    /// Forward events to this aggregator (http://HOST:PORT or https://...),
    /// or to the first of several, comma-separated, that takes each batch
    /// (aggregators sharing one ClickHouse store).
    #[arg(long, value_name = "URL")]
    pub aggregator: Option<String>,

    /// File holding the aggregator's ingest token (required with --aggregator).
    #[arg(long, value_name = "FILE", requires = "aggregator")]
    pub token_file: Option<PathBuf>,

    /// Unacknowledged batches are kept here until the aggregator has them,
    /// across restarts of the agent.
    #[arg(long, default_value = "/var/lib/tracer/spool", value_name = "DIR")]
    pub spool: PathBuf,

    /// Most bytes kept in the spool; past it the oldest batches are dropped
    /// (and the loss is reported).
    #[arg(long, default_value_t = 256 * 1024 * 1024, value_name = "BYTES")]
    pub spool_max_bytes: u64,

    #[command(flatten)]
    pub tls: crate::client_tls::ClientTls,

    /// Take logpoint and eval commands from the aggregator (sent there with
    /// its admin token) and run them on the processes this agent traces.
    /// Off by default: it runs code inside production processes. The agent
    /// keeps a poll open to the aggregator (no inbound connection), and
    /// refuses a plain http:// aggregator other than on this machine.
    #[arg(long, requires = "aggregator")]
    pub allow_control: bool,

    /// Testing only: shift every timestamp by this many milliseconds, to
    /// simulate a host whose clock is off.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "MS",
        allow_hyphen_values = true,
        hide = true
    )]
    pub debug_clock_offset_ms: i64,

    #[command(flatten)]
    pub capture: CaptureArgs,

    #[command(flatten)]
    pub probes: crate::probe::follow::AgentProbeArgs,
}

/// Which processes the agent traces.
#[derive(Debug, Clone)]
pub struct Scope {
    pub cmdline: Option<Regex>,
    pub netns: Option<u32>,
}

impl Scope {
    pub fn from_args(args: &AgentArgs) -> Result<Self> {
        let cmdline = args
            .match_cmdline
            .as_deref()
            .map(Regex::new)
            .transpose()
            .context("--match is not a valid regular expression")?;
        let netns = match &args.netns {
            Some(path) => Some(
                std::fs::metadata(path)
                    .with_context(|| {
                        format!(
                            "--netns {}: cannot open it (create named namespaces with \
                             `ip netns add NAME`; they live in /var/run/netns/)",
                            path.display()
                        )
                    })?
                    .ino() as u32,
            ),
            None => None,
        };
        Ok(Self { cmdline, netns })
    }

    /// Whether `pid` is a node process inside the scope.
    pub fn selects(&self, pid: u32) -> bool {
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            return false;
        };
        self.selects_program(pid, &exe, true)
    }

    /// Whether `pid`, which just exec'd `filename`, should be traced. Only
    /// the program exec'd decides node-ness: by the time the record is
    /// handled, /proc may already show the next program (a wrapper such as
    /// `env node ...` exec'd node), which must not be counted twice.
    pub fn selects_exec(&self, pid: u32, filename: &str) -> bool {
        self.selects_program(pid, std::path::Path::new(filename), false)
    }

    fn selects_program(&self, pid: u32, exe: &std::path::Path, argv0_counts: bool) -> bool {
        let cmdline = cmdline_of(pid);
        let node = if argv0_counts {
            is_node(exe, &cmdline)
        } else {
            is_node(exe, "")
        };
        if !node {
            return false;
        }
        if let Some(re) = &self.cmdline
            && !re.is_match(&cmdline)
        {
            return false;
        }
        if let Some(ns) = self.netns
            && netns_of(pid) != ns
        {
            return false;
        }
        true
    }
}

/// A node process: its executable is called node* (node, nodejs, a copy
/// such as node-20), or its first argument is.
pub fn is_node(exe: &std::path::Path, cmdline: &str) -> bool {
    let base = |s: &str| s.rsplit('/').next().unwrap_or("").to_string();
    let exe_name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let exe_name = exe_name.trim_end_matches(" (deleted)");
    let argv0 = base(cmdline.split(' ').next().unwrap_or(""));
    exe_name.starts_with("node") || argv0 == "node" || argv0 == "nodejs"
}

/// Every process on the host the scope selects, now.
fn scan(scope: &Scope) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| *pid != me && scope.selects(*pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// Feeds every event to the metrics, and prints and forwards those worth
/// keeping.
struct AgentSink {
    metrics: Arc<Metrics>,
    out: Option<StdoutSink>,
    forward: Option<ForwardHandle>,
    loop_threshold_ns: u64,
}

impl Sink for AgentSink {
    fn emit(&mut self, event: &Event) -> Result<()> {
        self.metrics.observe(event);
        if let EventData::Loop { busy_ns, .. } = event.data {
            // The kernel sends every turn for the histogram; keep only
            // those over the display threshold.
            if busy_ns < self.loop_threshold_ns {
                return Ok(());
            }
        }
        if let Some(forward) = &self.forward {
            forward.push(event);
        }
        match &mut self.out {
            Some(out) => out.emit(event),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<()> {
        match &mut self.out {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

pub async fn run(args: AgentArgs) -> Result<Outcome> {
    let started = std::time::Instant::now();
    args.capture.validate()?;
    let scope = Scope::from_args(&args)?;
    // Before anything is loaded: a refused transport stops here.
    if args.allow_control
        && let Some(url) = &args.aggregator
    {
        for u in crate::forward::base_urls(url) {
            crate::control::check_transport(&u, "--aggregator (with --allow-control)")?;
        }
    }
    for pid in &args.pids {
        crate::capture::preflight::check_pid(*pid)?;
    }
    // Every loop turn reaches user space, for the event-loop histogram.
    let discovering = args.pids.is_empty();
    let mut progress = Progress::on_stderr();
    let mut capture = Capture::load(args.capture.config(0, discovering), &mut progress)?;
    progress.clear();
    for note in &capture.notes {
        eprintln!("tracer: {note}");
    }
    let host = args.capture.host();
    let mut pipeline = Pipeline::new(
        host.clone(),
        WallClock::new(args.debug_clock_offset_ms.saturating_mul(1_000_000)),
        args.capture.max_line_bytes as usize,
    );
    pipeline.set_body_capture(args.capture.capture_bodies as usize);
    let forward = match &args.aggregator {
        Some(url) => {
            let token_file = args.token_file.as_ref().context(
                "--aggregator needs --token-file FILE (the token the aggregator was started with)",
            )?;
            let token = std::fs::read_to_string(token_file)
                .with_context(|| format!("reading --token-file {}", token_file.display()))?
                .trim()
                .to_string();
            if token.is_empty() {
                anyhow::bail!("--token-file {} is empty", token_file.display());
            }
            if args.allow_control {
                let control = crate::control::agent::start(crate::control::agent::ControlConfig {
                    urls: crate::forward::base_urls(url),
                    token: token.clone(),
                    host: host.clone(),
                    tls: args.tls.clone(),
                    scope: scope.clone(),
                    pids: args.pids.clone(),
                })?;
                eprintln!(
                    "tracer: control allowed: taking logpoint/eval commands from {url} \
                     (docs/logpoints.md)"
                );
                drop(control);
            }
            let cfg = ForwardConfig {
                url: url.clone(),
                token,
                host: host.clone(),
                spool_dir: args.spool.clone(),
                spool_max_bytes: args.spool_max_bytes,
                tls: args.tls.clone(),
            };
            Some(crate::forward::start(
                cfg,
                std::time::Duration::from_secs(5),
            )?)
        }
        None => None,
    };
    // Probes load before anything is traced, so a bad spec stops here.
    let clock_shift_ns = args.debug_clock_offset_ms.saturating_mul(1_000_000);
    let probes = crate::probe::follow::start(&args.probes, host.clone(), clock_shift_ns)?;
    let initial = if discovering {
        scan(&scope)
    } else {
        args.pids.clone()
    };
    let mut roots = Vec::new();
    for pid in initial {
        match capture.add_target(pid, true) {
            Ok(report) => {
                eprintln!(
                    "tracer: tracing PID {pid} ({}): {}",
                    report.exe,
                    report.attached.join(", ")
                );
                for skipped in &report.skipped {
                    eprintln!("tracer: PID {pid}: skipped {skipped}");
                }
                pipeline.note_preexisting(pid, &report.preexisting);
                if let Some(p) = &probes {
                    let _ = p.follow.send(pid);
                }
                roots.push(pid);
            }
            // Exited between the scan and now.
            Err(e) if discovering => log::info!("not tracing PID {pid}: {e:#}"),
            Err(e) => return Err(e.context(format!("attaching to PID {pid}"))),
        }
    }

    let metrics = Arc::new(Metrics::new());
    let listener_metrics = metrics.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::metrics::serve(
        args.metrics_listen,
        listener_metrics,
        async move {
            let _ = stop_rx.await;
        },
    ));
    eprintln!(
        "tracer: agent ready: tracing {} process(es){}; metrics on http://{}/metrics",
        roots.len(),
        if discovering {
            ", watching for new ones"
        } else {
            ""
        },
        args.metrics_listen
    );
    // `tracer: ready` is printed by the runner once Ctrl-C is handled.

    let discover: Option<Discover> = if discovering {
        let scope = scope.clone();
        Some(Box::new(move |pid, filename| {
            scope.selects_exec(pid, filename)
        }))
    } else {
        None
    };
    let (forward_handle, forward_task) = match forward {
        Some((handle, task)) => (Some(handle), Some(task)),
        None => (None, None),
    };
    let mut sink = AgentSink {
        metrics,
        out: (!args.quiet).then(|| StdoutSink::new(args.capture.json)),
        forward: forward_handle,
        loop_threshold_ns: args.capture.loop_threshold_ns(),
    };
    let (follow, side_events, probe_task) = match probes {
        Some(p) => (Some(p.follow), Some(p.events), Some(p.task)),
        None => (None, None, None),
    };
    let run = runner::run(
        capture,
        pipeline,
        &mut sink,
        RunOptions {
            roots,
            end_when_roots_exit: false,
            duration: None,
            discover,
            started,
            follow,
            side_events,
        },
    );
    // The probe session runs next to the runner, in this task; it stops
    // when the runner drops `follow`.
    let summary = match probe_task {
        Some(task) => tokio::join!(run, task).0,
        None => run.await,
    }?;
    let _ = stop_tx.send(());
    // Dropping the handle lets the forwarder send its last batches.
    if let Some(handle) = sink.forward.take() {
        let stats = handle.stats.clone();
        drop(handle);
        if let Some(task) = forward_task {
            let _ = task.await;
        }
        eprintln!(
            "tracer: forwarded {} batches; dropped: {} (queue full), {} (spool full); refused by the aggregator: {}",
            stats
                .acked_batches
                .load(std::sync::atomic::Ordering::Relaxed),
            stats
                .queue_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            stats
                .spool_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            stats
                .rejected_batches
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("tracer: metrics server: {e:#}"),
        Err(e) => eprintln!("tracer: metrics server task: {e}"),
    }
    if let Some(out) = &mut sink.out {
        out.finish(&summary.to_json());
    }
    eprintln!("{}", summary.to_text());
    Ok(Outcome::of(&summary))
}

/// A process's command line, its arguments joined by spaces (empty when it
/// is gone or unreadable): what `--match` is matched against.
pub fn cmdline_of(pid: u32) -> String {
    crate::inspector::target::read_nul_separated(&format!("/proc/{pid}/cmdline")).join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn recognises_node_executables() {
        assert!(is_node(Path::new("/usr/bin/node"), "node server.js"));
        assert!(is_node(
            Path::new("/opt/x/node-copy"),
            "/opt/x/node-copy a.js"
        ));
        assert!(is_node(Path::new("/usr/bin/node (deleted)"), "node"));
        assert!(!is_node(Path::new("/usr/bin/python3"), "python3 app.py"));
        assert!(!is_node(Path::new("/usr/bin/bash"), "bash -c node"));
    }

    #[test]
    fn scope_matches_cmdline_and_netns() {
        // This test process is not node, so it is never selected.
        let scope = Scope {
            cmdline: None,
            netns: None,
        };
        assert!(!scope.selects(std::process::id()));
    }
}
