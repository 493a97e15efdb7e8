//! `tracer attach`: trace given processes and print their events.

use std::{
    io::{BufWriter, Stdout, Write as _},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    capture::{Capture, CaptureConfig, Family},
    event::Event,
    pipeline::{Pipeline, WallClock},
    runner::{self, RunOptions, Sink},
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

    /// Print one JSON object per line (JSON Lines) instead of text.
    #[arg(long)]
    pub json: bool,

    /// Stop after this many seconds (default: until Ctrl-C or every PID exits).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Probe families to enable.
    #[arg(long, value_delimiter = ',', default_values = ["logs", "tcp", "runtime", "http"])]
    pub probes: Vec<Family>,

    /// Longest log line kept; longer lines are cut and marked truncated.
    /// Also the most bytes copied from a single write().
    #[arg(long, default_value_t = 256 * 1024, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(1..=tracer_common::MAX_LINE_CAP as i64))]
    pub max_line_bytes: u32,

    /// Report only event-loop turns whose callbacks ran at least this long
    /// (0 reports every turn).
    #[arg(long, default_value_t = 1.0, value_name = "MS")]
    pub loop_threshold_ms: f64,

    /// Size of the kernel ring buffer (a power of two, multiple of the page
    /// size). Bigger rides out longer bursts before events are lost.
    #[arg(long, default_value_t = 8 * 1024 * 1024, value_name = "BYTES")]
    pub ring_bytes: u32,

    /// Bytes copied of each read/write on a traced connection for HTTP
    /// parsing (headers; bodies need not be copied, their size is known).
    #[arg(long, default_value_t = 4096, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(64..=tracer_common::LOG_CHUNK_BYTES as i64))]
    pub http_capture_bytes: u32,

    /// Host name put in every event (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
}

struct StdoutSink {
    out: BufWriter<Stdout>,
    json: bool,
}

impl Sink for StdoutSink {
    fn emit(&mut self, event: &Event) -> Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, event)?;
            self.out.write_all(b"\n")?;
        } else {
            writeln!(self.out, "{}", event.to_text())?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(self.out.flush()?)
    }
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn validate(args: &AttachArgs) -> Result<()> {
    if !args.ring_bytes.is_power_of_two() || args.ring_bytes < 4096 {
        bail!(
            "--ring-bytes {} must be a power of two of at least 4096 (e.g. 8388608)",
            args.ring_bytes
        );
    }
    if !(args.loop_threshold_ms >= 0.0) {
        bail!("--loop-threshold-ms must be 0 or more");
    }
    if let Some(d) = args.duration {
        if !(d > 0.0) || !d.is_finite() {
            bail!("--duration must be a positive number of seconds");
        }
    }
    Ok(())
}

pub async fn run(args: AttachArgs) -> Result<()> {
    validate(&args)?;
    for pid in &args.pids {
        crate::capture::preflight::check_pid(*pid)?;
    }
    let config = CaptureConfig {
        families: args.probes.clone(),
        max_buffer_bytes: crate::lines::kernel_copy_cap(args.max_line_bytes as usize) as u32,
        loop_min_busy_ns: (args.loop_threshold_ms * 1e6) as u64,
        ring_bytes: args.ring_bytes,
        socket_capture_bytes: args.http_capture_bytes,
        report_all_execs: false,
    };
    let mut capture = Capture::load(config)?;
    for note in &capture.notes {
        eprintln!("tracer: {note}");
    }
    for pid in &args.pids {
        let report = capture
            .add_target(*pid, true)
            .with_context(|| format!("attaching to PID {pid}"))?;
        eprintln!(
            "tracer: attached to PID {pid} ({}): {}",
            report.exe,
            report.attached.join(", ")
        );
        for skipped in &report.skipped {
            eprintln!("tracer: PID {pid}: skipped {skipped}");
        }
    }
    eprintln!("tracer: ready");

    let host = args.host.clone().unwrap_or_else(host_name);
    let pipeline = Pipeline::new(host, WallClock::new(0), args.max_line_bytes as usize);
    let mut sink = StdoutSink {
        out: BufWriter::new(std::io::stdout()),
        json: args.json,
    };
    let summary = runner::run(
        capture,
        pipeline,
        &mut sink,
        RunOptions {
            roots: args.pids.clone(),
            duration: args.duration.map(Duration::from_secs_f64),
        },
    )
    .await?;
    if args.json {
        // The consumer may be gone already (closed pipe); that is fine.
        let _ = writeln!(sink.out, "{}", summary.to_json());
        let _ = sink.out.flush();
    }
    eprintln!("{}", summary.to_text());
    Ok(())
}
