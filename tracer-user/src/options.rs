//! Command-line options shared by the front ends (`attach`, `agent`).

use anyhow::{Result, bail};
use clap::Args;

use crate::capture::{CaptureConfig, Family, HttpCapture};

/// The most body bytes `--capture-bodies` keeps.
pub const MAX_CAPTURE_BODIES: u32 = 8192;

/// What to capture and how; the same for every front end.
#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// Print one JSON object per line (JSON Lines) instead of text.
    #[arg(long)]
    pub json: bool,

    /// Probe families to enable (default: all four). Without this option a
    /// family that cannot load on this kernel is left out and named in the
    /// ready line (exit code 3); with it, that is an error (exit code 1).
    #[arg(long, value_delimiter = ',', value_name = "FAMILY,...")]
    pub probes: Vec<Family>,

    /// Longest log line kept; longer lines are cut and marked truncated.
    /// Also the most bytes copied from a single write().
    #[arg(long, default_value_t = 256 * 1024, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(1..=tracer_common::MAX_LINE_CAP as i64))]
    pub max_line_bytes: u32,

    /// Report only event-loop turns whose callbacks ran at least this long
    /// (0 reports every turn).
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "MS",
        allow_negative_numbers = true
    )]
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

    /// Where HTTP payload is taken from: `skb` (TCP segments, from cgroup_skb
    /// programs; the cheap default) or `syscalls` (read/write syscall
    /// tracepoints, which slow every syscall on the host while attached).
    #[arg(long, value_enum, default_value_t = HttpCapture::Skb)]
    pub http_capture: HttpCapture,

    /// Keep the first BYTES of each HTTP request and response body in the
    /// `http` events (`req_body`, `resp_body`). Off by default: bodies may
    /// hold personal data or secrets, and are not captured beyond what
    /// parsing needs unless asked for.
    #[arg(long, default_value_t = 0, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(0..=MAX_CAPTURE_BODIES as i64))]
    pub capture_bodies: u32,

    /// Host name put in every event (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
}

impl CaptureArgs {
    pub fn validate(&self) -> Result<()> {
        if !self.ring_bytes.is_power_of_two() || self.ring_bytes < 4096 {
            bail!(
                "--ring-bytes {} must be a power of two of at least 4096 (e.g. 8388608)",
                self.ring_bytes
            );
        }
        if !(self.loop_threshold_ms >= 0.0 && self.loop_threshold_ms.is_finite()) {
            bail!("--loop-threshold-ms must be 0 or more");
        }
        Ok(())
    }

    pub fn loop_threshold_ns(&self) -> u64 {
        (self.loop_threshold_ms * 1e6) as u64
    }

    /// `kernel_loop_threshold_ns`: loop turns below it are not even sent by
    /// the kernel (the agent sends all, for its histogram).
    pub fn config(&self, kernel_loop_threshold_ns: u64, report_all_execs: bool) -> CaptureConfig {
        CaptureConfig {
            families: self.families(),
            families_explicit: !self.probes.is_empty(),
            max_buffer_bytes: crate::lines::kernel_copy_cap(self.max_line_bytes as usize) as u32,
            loop_min_busy_ns: kernel_loop_threshold_ns,
            ring_bytes: self.ring_bytes,
            // Bodies follow the heads: copy enough of each read/write for both.
            socket_capture_bytes: self.http_capture_bytes.saturating_add(self.capture_bodies),
            report_all_execs,
            http_capture: self.http_capture,
        }
    }

    pub fn host(&self) -> String {
        self.host.clone().unwrap_or_else(host_name)
    }

    pub fn has(&self, family: Family) -> bool {
        self.families().contains(&family)
    }

    /// The families asked for; every one when `--probes` is not given.
    pub fn families(&self) -> Vec<Family> {
        if self.probes.is_empty() {
            vec![Family::Logs, Family::Tcp, Family::Runtime, Family::Http]
        } else {
            self.probes.clone()
        }
    }
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
