//! The event loop every front end runs: read records, turn them into
//! events, report losses, follow exits, stop cleanly.

use std::{
    collections::{BTreeMap, HashSet},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    capture::{
        Capture,
        ring::{self, ReaderStats},
    },
    decode::Record,
    event::{Event, LossStage},
    pipeline::Pipeline,
};

/// Where events go.
pub trait Sink {
    /// Err means the consumer is gone (e.g. a closed pipe): stop tracing.
    fn emit(&mut self, event: &Event) -> Result<()>;
    /// Called when the pipeline is idle, to push out buffered output.
    fn flush(&mut self) -> Result<()>;
}

/// Decides whether a process that just exec'd should be traced (agent
/// discovery). Processes already traced are always followed.
/// Arguments: the PID and the program it exec'd.
pub type Discover = Box<dyn FnMut(u32, &str) -> bool + Send>;

pub struct RunOptions {
    /// The processes traced from the start (a pidfd watches each).
    pub roots: Vec<u32>,
    /// Stop once every root has exited (attach) or keep running (agent).
    pub end_when_roots_exit: bool,
    pub duration: Option<Duration>,
    pub discover: Option<Discover>,
    /// When the command started: the summary reports how long start-up took.
    pub started: Instant,
    /// Told the PID of each process the run starts tracing after an exec
    /// (the agent's probes follow them); dropped when the run stops.
    pub follow: Option<mpsc::UnboundedSender<u32>>,
    /// Events from elsewhere (the agent's probes), emitted with the rest;
    /// after the run stops, read until their sender closes.
    pub side_events: Option<mpsc::UnboundedReceiver<Event>>,
}

#[derive(Debug)]
pub struct Summary {
    pub elapsed: Duration,
    pub counts: BTreeMap<&'static str, u64>,
    pub lost: BTreeMap<LossStage, u64>,
    pub stop_reason: String,
    /// From the command's start to `tracer: ready`.
    pub startup: Duration,
    /// Probe families that could not run, with why.
    pub left_out: Vec<String>,
}

impl Summary {
    /// Whether some probe families did not run (exit code 3).
    pub fn partial(&self) -> bool {
        !self.left_out.is_empty()
    }
}

/// How a tracing command ended, for its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every probe family asked for ran (exit code 0).
    Complete,
    /// It ran, but some probe families were left out (exit code 3).
    Partial,
}

impl Outcome {
    pub const PARTIAL_EXIT_CODE: u8 = 3;

    pub fn of(summary: &Summary) -> Self {
        if summary.partial() {
            Self::Partial
        } else {
            Self::Complete
        }
    }
}

/// The line printed once tracing runs: exactly `tracer: ready` when every
/// family asked for is attached, or naming what was left out.
pub fn ready_line(left_out: &[String]) -> String {
    if left_out.is_empty() {
        "tracer: ready".into()
    } else {
        format!("tracer: ready; left out: {}", left_out.join("; "))
    }
}

/// How long to wait for the kernel's exit record after a pidfd reports the
/// process gone, before reporting the exit without its code.
const EXIT_GRACE: Duration = Duration::from_millis(300);

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

struct PidFd(OwnedFd);
impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Tell `tx` when `pid` is gone (plus a grace period for its exit record).
fn watch_exit(pid: u32, tx: mpsc::Sender<u32>) -> Result<()> {
    let fd = pidfd_open(pid).with_context(|| format!("pidfd_open({pid})"))?;
    // SAFETY: PidFd owns the fd and returns it unchanged until dropped.
    let fd = unsafe { AsyncFd::register_with_interest(PidFd(fd), tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    tokio::spawn(async move {
        if fd.readable().await.is_ok() {
            tokio::time::sleep(EXIT_GRACE).await;
            let _ = tx.send(pid).await;
        }
    });
    Ok(())
}

/// A process started a new program. Returns whether the record belongs in
/// the event stream (it does for traced processes).
fn on_exec(
    capture: &mut Capture,
    pipeline: &mut Pipeline,
    discover: &mut Option<Discover>,
    pid: u32,
    filename: &str,
) -> bool {
    if capture.is_traced(pid) {
        // New program, new executable: its runtime probes start over.
        capture.forget(pid);
        if let Err(e) = capture.add_target(pid, false) {
            log::warn!("re-attaching to PID {pid} after exec: {e:#}");
        }
        return true;
    }
    let Some(discover) = discover else {
        return false;
    };
    if !discover(pid, filename) {
        return false;
    }
    match capture.add_target(pid, true) {
        Ok(report) => {
            eprintln!(
                "tracer: now tracing PID {pid} ({}): {}",
                report.exe,
                report.attached.join(", ")
            );
            for skipped in &report.skipped {
                eprintln!("tracer: PID {pid}: skipped {skipped}");
            }
            pipeline.note_preexisting(pid, &report.preexisting);
            true
        }
        Err(e) => {
            // It may have exited already; nothing to trace then.
            log::info!("not tracing PID {pid}: {e:#}");
            false
        }
    }
}

/// What the side source (the agent's probes) emitted, for the summary.
#[derive(Default)]
struct SideTotals {
    counts: BTreeMap<&'static str, u64>,
    lost: BTreeMap<LossStage, u64>,
}

impl SideTotals {
    fn add(&mut self, e: &Event) {
        *self.counts.entry(e.data.kind()).or_insert(0) += 1;
        if let crate::event::EventData::Lost { count, stage, .. } = &e.data {
            *self.lost.entry(*stage).or_insert(0) += count;
        }
    }

    fn merged_counts(&self, pipeline: &BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
        let mut out = pipeline.clone();
        for (k, n) in &self.counts {
            *out.entry(k).or_insert(0) += n;
        }
        out
    }

    fn merged_lost(&self, pipeline: &BTreeMap<LossStage, u64>) -> BTreeMap<LossStage, u64> {
        let mut out = pipeline.clone();
        for (k, n) in &self.lost {
            *out.entry(*k).or_insert(0) += n;
        }
        out
    }
}

/// Whether no side event is waiting (then output is flushed).
fn side_idle(opts: &RunOptions) -> bool {
    opts.side_events.as_ref().is_none_or(|rx| rx.is_empty())
}

pub async fn run(
    mut capture: Capture,
    mut pipeline: Pipeline,
    sink: &mut dyn Sink,
    mut opts: RunOptions,
) -> Result<Summary> {
    let started = Instant::now();
    // Batches: one hand-off per ring wakeup, not per record.
    let (tx, mut rx) = mpsc::channel::<Vec<Record>>(64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stats = Arc::new(ReaderStats::default());
    let reader = tokio::spawn(ring::run(capture.take_ring()?, tx, stats.clone(), stop_rx));

    let (gone_tx, mut gone_rx) = mpsc::channel::<u32>(64);
    for pid in &opts.roots {
        watch_exit(*pid, gone_tx.clone())?;
    }
    let mut live_roots: HashSet<u32> = opts.roots.iter().copied().collect();

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // Only now: a Ctrl-C right after `ready` must stop the run cleanly (with
    // its summary), not kill the process by the default signal action.
    let left_out: Vec<String> = capture.left_out.iter().map(|l| l.describe()).collect();
    eprintln!("{}", ready_line(&left_out));
    let startup = opts.started.elapsed();
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut loss_tick = tokio::time::interval(Duration::from_secs(1));
    let mut decode_errors_seen = 0u64;
    let mut side_totals = SideTotals::default();

    let emit_all = |events: Vec<Event>, sink: &mut dyn Sink| -> Result<()> {
        for e in &events {
            sink.emit(e)?;
        }
        Ok(())
    };

    let stop_reason: String = loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { break "the ring reader stopped".into() };
                let mut stop = None;
                for rec in batch {
                    let exit_pid = match &rec {
                        Record::Exit { head, .. } => Some(head.pid),
                        Record::Exec { head, filename } => {
                            let pid = head.pid;
                            if !on_exec(&mut capture, &mut pipeline, &mut opts.discover, pid, filename) {
                                continue;
                            }
                            if let Some(follow) = &opts.follow {
                                let _ = follow.send(pid);
                            }
                            None
                        }
                        _ => None,
                    };
                    if emit_all(pipeline.on_record(rec), sink).is_err() {
                        stop = Some("output closed");
                        break;
                    }
                    if let Some(pid) = exit_pid {
                        capture.forget(pid);
                        live_roots.remove(&pid);
                        if opts.end_when_roots_exit && !opts.roots.is_empty() && live_roots.is_empty() {
                            stop = Some("every traced process exited");
                            break;
                        }
                    }
                }
                if let Some(reason) = stop {
                    break reason.into();
                }
                if rx.is_empty() && sink.flush().is_err() {
                    break "output closed".into();
                }
            }
            Some(pid) = gone_rx.recv() => {
                if live_roots.remove(&pid) {
                    capture.forget(pid);
                    if emit_all(pipeline.synthetic_exit(pid), sink).is_err() {
                        break "output closed".into();
                    }
                    if opts.end_when_roots_exit && live_roots.is_empty() {
                        break "every traced process exited".into();
                    }
                }
            }
            _ = loss_tick.tick() => {
                let mut events = pipeline.on_ring_losses(&capture.ring_losses()?);
                let errors = stats.decode_errors.load(Ordering::Relaxed);
                if errors > decode_errors_seen {
                    events.extend(pipeline.on_decode_errors(errors - decode_errors_seen));
                    decode_errors_seen = errors;
                }
                if emit_all(events, sink).is_err() || sink.flush().is_err() {
                    break "output closed".into();
                }
            }
            side = async {
                match opts.side_events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match side {
                Some(e) => {
                    side_totals.add(&e);
                    if sink.emit(&e).is_err() || (side_idle(&opts) && sink.flush().is_err()) {
                        break "output closed".into();
                    }
                }
                None => opts.side_events = None,
            },
            _ = sigint.recv() => break "interrupted".into(),
            _ = sigterm.recv() => break "terminated".into(),
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                break "duration elapsed".into();
            }
        }
    };

    // Drain: the reader empties the ring, then closes the channel.
    let _ = stop_tx.send(true);
    let mut output_ok = true;
    while let Some(batch) = rx.recv().await {
        for rec in batch {
            if output_ok {
                output_ok = emit_all(pipeline.on_record(rec), sink).is_ok();
            }
        }
    }
    reader.await.context("ring reader task")??;
    // The side source stops once `follow` is gone, and sends its last.
    opts.follow = None;
    if let Some(mut side) = opts.side_events.take() {
        while let Some(e) = side.recv().await {
            side_totals.add(&e);
            if output_ok {
                output_ok = sink.emit(&e).is_ok();
            }
        }
    }
    let mut tail = pipeline.flush_all();
    tail.extend(pipeline.on_ring_losses(&capture.ring_losses()?));
    let errors = stats.decode_errors.load(Ordering::Relaxed);
    if errors > decode_errors_seen {
        tail.extend(pipeline.on_decode_errors(errors - decode_errors_seen));
    }
    if output_ok {
        let _ = emit_all(tail, sink);
        let _ = sink.flush();
    }
    let elapsed = started.elapsed();
    // Detaching takes the kernel a grace period per hook; it is not tracing time.
    drop(capture);
    Ok(Summary {
        elapsed,
        counts: side_totals.merged_counts(pipeline.counts()),
        lost: side_totals.merged_lost(pipeline.lost()),
        stop_reason,
        startup,
        left_out,
    })
}

impl Summary {
    pub fn to_json(&self) -> serde_json::Value {
        let lost: BTreeMap<&str, u64> = LossStage::ALL
            .into_iter()
            .map(|s| (s.name(), self.lost.get(&s).copied().unwrap_or(0)))
            .collect();
        serde_json::json!({
            "kind": "summary",
            "elapsed_ns": self.elapsed.as_nanos() as u64,
            "stop_reason": self.stop_reason,
            "startup_ns": self.startup.as_nanos() as u64,
            "left_out": self.left_out,
            "counts": self.counts,
            "lost": lost,
        })
    }

    pub fn to_text(&self) -> String {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let lost: u64 = self.lost.values().sum();
        let stage = |s: LossStage| self.lost.get(&s).copied().unwrap_or(0);
        // The three stages always shown, then any other that lost something.
        let mut stages = format!(
            "ring={}, decode={}, http parse={}",
            stage(LossStage::Ring),
            stage(LossStage::Decode),
            stage(LossStage::Parse)
        );
        for s in LossStage::ALL {
            if !matches!(s, LossStage::Ring | LossStage::Decode | LossStage::Parse) && stage(s) > 0
            {
                stages.push_str(&format!(", {}={}", s.name(), stage(s)));
            }
        }
        let left_out = if self.left_out.is_empty() {
            String::new()
        } else {
            format!(". left out: {}", self.left_out.join("; "))
        };
        format!(
            "tracer: stopped after {:.1}s ({}; ready after {:.2}s). events: {}. lost: {lost} ({stages}){left_out}",
            self.elapsed.as_secs_f64(),
            self.stop_reason,
            self.startup.as_secs_f64(),
            if counts.is_empty() {
                "none".into()
            } else {
                counts.join(" ")
            },
        )
    }
}
