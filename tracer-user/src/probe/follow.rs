//! `tracer agent --probe SPEC`: the probes of `tracer probe add`, in every
//! process the agent traces: those it finds at start, those that start
//! later (the runner reports each process it starts tracing after an
//! exec), detached when they exit. One [`Session`] serves them all (one
//! eBPF object, one ring); its events join the agent's stream (stdout,
//! metrics, the forwarder) through a channel the runner reads.

use std::{future::Future, pin::Pin, time::Duration};

use anyhow::{Result, anyhow, bail};
use clap::Args;
use tokio::sync::mpsc;

use super::session::{RecordMode, RunControl, Session, SessionOptions};
use crate::{event::Event, runner::Sink};

/// `tracer agent`'s probe options (the same as `tracer probe add`'s,
/// prefixed).
#[derive(Debug, Args)]
pub struct AgentProbeArgs {
    /// Probe SPEC (as in `tracer probe add`: usdt:..., uprobe:...,
    /// uretprobe:...) in every process the agent traces, including those
    /// that start later. Repeat for several.
    #[arg(long = "probe", value_name = "SPEC")]
    pub specs: Vec<String>,
    /// What the probes record (as `tracer probe add --record`).
    #[arg(long = "probe-record", value_enum, default_value_t = RecordMode::Count)]
    pub record: RecordMode,
    /// With --probe-record args: `int` or `str` per argument, e.g. `int,int,str`.
    #[arg(long = "probe-args", value_name = "TYPES")]
    pub arg_types: Option<String>,
    /// With --probe-record args: most events per second per probe, over all
    /// processes; more are counted as `lost` (stage `rate`). 0: no cap.
    #[arg(long = "probe-rate", default_value_t = 1000, value_name = "N")]
    pub rate: u32,
    /// Most call sites one probe may attach to in one process.
    #[arg(long = "probe-max-sites", default_value_t = 64, value_name = "N")]
    pub max_sites: usize,
    /// Probe functions on tracer's deny list (the event loop's hottest).
    #[arg(long = "probe-force")]
    pub force: bool,
    /// Seconds per count/latency aggregate.
    #[arg(long = "probe-interval", default_value_t = 1.0, value_name = "SECS")]
    pub interval: f64,
}

/// The agent's side of a running probe session.
pub struct AgentProbes {
    /// PIDs to probe: at start, and each process traced after an exec.
    /// Dropping it stops the session (which detaches everything).
    pub follow: mpsc::UnboundedSender<u32>,
    /// `probe` (and `lost`) events, closed once the session has stopped.
    pub events: mpsc::UnboundedReceiver<Event>,
    /// The session; poll it next to the runner.
    pub task: Pin<Box<dyn Future<Output = ()>>>,
}

/// Loads the probe programs when `--probe` was given (None otherwise).
/// Errors name a bad spec or option before anything is traced.
pub fn start(
    args: &AgentProbeArgs,
    host: String,
    clock_shift_ns: i64,
) -> Result<Option<AgentProbes>> {
    if args.specs.is_empty() {
        return Ok(None);
    }
    if !(args.interval >= 0.01 && args.interval.is_finite()) {
        bail!("--probe-interval must be at least 0.01 seconds");
    }
    let session = Session::new(SessionOptions {
        specs: args.specs.clone(),
        record: args.record,
        arg_types: args.arg_types.clone(),
        rate: args.rate,
        max_sites: args.max_sites,
        force: args.force,
        interval: Duration::from_secs_f64(args.interval),
        host,
        clock_shift_ns,
    })?;
    let (follow, follow_rx) = mpsc::unbounded_channel();
    // Unbounded: what flows is bounded upstream (args events by the
    // per-probe rate cap, aggregates by the interval), and the runner
    // takes each event as it comes.
    let (tx, events) = mpsc::unbounded_channel();
    let task = Box::pin(async move {
        let mut sink = ChannelSink { tx };
        let control = RunControl {
            follow: Some(follow_rx),
            ..Default::default()
        };
        match session.run(&mut sink, control).await {
            Ok((_, totals)) => eprintln!(
                "tracer: probes detached: {} hits, {} events, {} lost",
                totals.hits, totals.events, totals.lost
            ),
            Err(e) => eprintln!("tracer: probes stopped: {e:#}"),
        }
    });
    Ok(Some(AgentProbes {
        follow,
        events,
        task,
    }))
}

/// Hands events to the runner.
struct ChannelSink {
    tx: mpsc::UnboundedSender<Event>,
}

impl Sink for ChannelSink {
    fn emit(&mut self, event: &Event) -> Result<()> {
        self.tx
            .send(event.clone())
            .map_err(|_| anyhow!("the agent stopped reading probe events"))
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}
