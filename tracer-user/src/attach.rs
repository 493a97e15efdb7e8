//! `tracer attach`: trace given processes and print their events.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    capture::Capture,
    options::CaptureArgs,
    output::StdoutSink,
    pipeline::{Pipeline, WallClock},
    progress::Progress,
    runner::{self, Outcome, RunOptions},
};

/// Attach to running processes and stream what they do.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tracer attach --pid $(pgrep -n node)
  tracer attach --pid 4242 --pid 4243 --json --duration 30 > events.jsonl
  tracer attach --pid 4242 --probes logs,tcp

Nothing is injected into the process and nothing is restarted; detaching
(Ctrl-C, --duration, or the process exiting) leaves it exactly as it was.
Needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE).
Event fields are documented in docs/events.md.")]
pub struct AttachArgs {
    /// Process to trace (repeatable). Its threads and the children it starts
    /// are traced too.
    #[arg(long = "pid", required = true, value_name = "PID")]
    pub pids: Vec<u32>,

    /// Stop after this many seconds (default: until Ctrl-C or every PID exits).
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub duration: Option<f64>,

    #[command(flatten)]
    pub capture: CaptureArgs,
}

pub async fn run(args: AttachArgs) -> Result<Outcome> {
    let started = Instant::now();
    args.capture.validate()?;
    if let Some(d) = args.duration
        && !(d > 0.0 && d.is_finite())
    {
        bail!("--duration must be a positive number of seconds");
    }
    for pid in &args.pids {
        crate::capture::preflight::check_pid(*pid)?;
    }
    let threshold = args.capture.loop_threshold_ns();
    let mut progress = Progress::on_stderr();
    let mut capture = Capture::load(args.capture.config(threshold, false), &mut progress)?;
    progress.step("attaching to the processes");
    let mut reports = Vec::new();
    for pid in &args.pids {
        let report = capture
            .add_target(*pid, true)
            .with_context(|| format!("attaching to PID {pid}"))?;
        reports.push((*pid, report));
    }
    progress.clear();
    for note in &capture.notes {
        eprintln!("tracer: {note}");
    }
    let mut pipeline = Pipeline::new(
        args.capture.host(),
        WallClock::new(0),
        args.capture.max_line_bytes as usize,
    );
    pipeline.set_body_capture(args.capture.capture_bodies as usize);
    for (pid, report) in &reports {
        eprintln!(
            "tracer: attached to PID {pid} ({}): {}",
            report.exe,
            report.attached.join(", ")
        );
        for skipped in &report.skipped {
            eprintln!("tracer: PID {pid}: skipped {skipped}");
        }
        pipeline.note_preexisting(*pid, &report.preexisting);
    }
    // `tracer: ready` is printed by the runner once Ctrl-C is handled.

    let mut sink = StdoutSink::new(args.capture.json);
    let summary = runner::run(
        capture,
        pipeline,
        &mut sink,
        RunOptions {
            roots: args.pids.clone(),
            end_when_roots_exit: true,
            duration: args.duration.map(Duration::from_secs_f64),
            discover: None,
            started,
            follow: None,
            side_events: None,
        },
    )
    .await?;
    sink.finish(&summary.to_json());
    eprintln!("{}", summary.to_text());
    Ok(Outcome::of(&summary))
}
