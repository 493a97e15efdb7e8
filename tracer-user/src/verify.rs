//! `tracer verify`: load every probe into this kernel's verifier, attach
//! nothing, and report what each one costs — the check to run on a new
//! kernel or toolchain before trusting it, and the guard CI runs
//! (tests/verifier_budget.rs).

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    capture::{
        self, CaptureConfig, HttpCapture, preflight, programs,
        verifier::{self, VERIFIER_BUDGET_INSNS},
    },
    options::CaptureArgs,
};

/// Load every probe into the kernel's verifier without attaching anything,
/// and report per program the instructions the verifier processed (of its
/// 1,000,000 budget) and the time it took.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tracer verify                     # the options `tracer attach` uses by default
  tracer verify --max               # every size option at its documented maximum
  tracer verify --max --http-capture syscalls --json

Options that change what the verifier sees (--max-line-bytes,
--http-capture-bytes, --capture-bodies, --http-capture, --probes) are the same
as `tracer attach`'s. Exit code 1 when a program fails to load or uses more
than --budget-percent of the verifier's budget. Needs root.
TRACER_VERIFIER_LOG=verbose makes a failed load write the instruction-level
verifier log (slow: tens of seconds for a program near the budget).")]
pub struct VerifyArgs {
    /// Verify with every size option at its documented maximum
    /// (--max-line-bytes 262144, --http-capture-bytes 16384,
    /// --capture-bodies 8192, --loop-threshold-ms 0).
    #[arg(long)]
    pub max: bool,

    /// Fail when a program uses more than this share of the verifier's
    /// budget of 1,000,000 processed instructions.
    #[arg(long, default_value_t = 10.0, value_name = "PERCENT")]
    pub budget_percent: f64,

    #[command(flatten)]
    pub capture: CaptureArgs,
}

/// One program's line of the report.
struct Row {
    program: String,
    family: &'static str,
    outcome: std::result::Result<(Option<u32>, Duration), String>,
}

pub fn run(args: VerifyArgs) -> Result<()> {
    args.capture.validate()?;
    if !(args.budget_percent > 0.0 && args.budget_percent <= 100.0) {
        bail!("--budget-percent must be more than 0 and at most 100");
    }
    let config = config(&args);
    preflight::check_privileges()?;
    let mut notes = Vec::new();
    let (offsets, _) = capture::kernel_offsets(&mut notes);
    for note in &notes {
        eprintln!("tracer: {note}");
    }
    let mut ebpf = capture::open_object(&config, &offsets)?;
    let mut names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_string()).collect();
    names.sort();
    let families = family_of(&config);
    let mut rows = Vec::new();
    for name in names {
        let outcome = match verifier::load(&mut ebpf, &name) {
            Ok(v) => Ok((v.insns, v.elapsed)),
            Err(failure) => Err(failure.to_string()),
        };
        let family = families
            .iter()
            .find(|(p, _)| *p == name)
            .map(|(_, f)| *f)
            .or_else(|| programs::AD_HOC.contains(&name.as_str()).then_some("probe"))
            .unwrap_or("-");
        rows.push(Row {
            program: name,
            family,
            outcome,
        });
    }
    let limit = (f64::from(VERIFIER_BUDGET_INSNS) * args.budget_percent / 100.0) as u32;
    if args.capture.json {
        print_json(&rows, &config, limit);
    } else {
        print_table(&rows, &config, limit, args.budget_percent);
    }
    let failed = rows.iter().filter(|r| r.outcome.is_err()).count();
    let over: Vec<&str> = rows
        .iter()
        .filter(|r| matches!(r.outcome, Ok((Some(n), _)) if n > limit))
        .map(|r| r.program.as_str())
        .collect();
    if failed > 0 {
        bail!("{failed} program(s) did not load (see above)");
    }
    if !over.is_empty() {
        bail!(
            "over the margin ({}% of the verifier's budget, {limit} insns): {}",
            args.budget_percent,
            over.join(", ")
        );
    }
    Ok(())
}

fn config(args: &VerifyArgs) -> CaptureConfig {
    let mut capture = args.capture.clone();
    if args.max {
        capture.max_line_bytes = tracer_common::MAX_LINE_CAP;
        capture.http_capture_bytes = tracer_common::LOG_CHUNK_BYTES as u32;
        capture.capture_bodies = crate::options::MAX_CAPTURE_BODIES;
        capture.loop_threshold_ms = 0.0;
    }
    let threshold = capture.loop_threshold_ns();
    capture.config(threshold, true)
}

/// Program -> family name, from what `attach` would load with `config`
/// (both HTTP capture modes, so every program gets its family).
fn family_of(config: &CaptureConfig) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for mode in [HttpCapture::Skb, HttpCapture::Syscalls] {
        let mut c = config.clone();
        c.http_capture = mode;
        for step in programs::plan(&c) {
            let family = step.family.map_or("process", capture::family_name);
            if !out.iter().any(|(p, _)| p == step.program) {
                out.push((step.program.to_string(), family));
            }
        }
    }
    out
}

fn percent(insns: u32) -> f64 {
    f64::from(insns) * 100.0 / f64::from(VERIFIER_BUDGET_INSNS)
}

fn settings(config: &CaptureConfig) -> String {
    let socket = config
        .socket_capture_bytes
        .min(tracer_common::LOG_CHUNK_BYTES as u32);
    let mode = match config.http_capture {
        HttpCapture::Skb => "skb",
        HttpCapture::Syscalls => "syscalls",
    };
    format!(
        "copied per write {} B, per socket read/write {socket} B, http capture {mode}",
        config.max_buffer_bytes
    )
}

fn print_table(rows: &[Row], config: &CaptureConfig, limit: u32, budget_percent: f64) {
    println!("settings: {}", settings(config));
    println!(
        "{:<22} {:<8} {:>9} {:>8} {:>9}",
        "program", "family", "insns", "budget", "load ms"
    );
    let mut total_insns = 0u64;
    let mut total_time = Duration::ZERO;
    for row in rows {
        match &row.outcome {
            Ok((insns, elapsed)) => {
                total_time += *elapsed;
                let (n, share) = match insns {
                    Some(n) => {
                        total_insns += u64::from(*n);
                        (n.to_string(), format!("{:.2}%", percent(*n)))
                    }
                    None => ("?".into(), "?".into()),
                };
                let mark = if insns.is_some_and(|n| n > limit) {
                    "  OVER"
                } else {
                    ""
                };
                println!(
                    "{:<22} {:<8} {:>9} {:>8} {:>9.1}{mark}",
                    row.program,
                    row.family,
                    n,
                    share,
                    elapsed.as_secs_f64() * 1e3
                );
            }
            Err(why) => println!("{:<22} {:<8} FAILED: {why}", row.program, row.family),
        }
    }
    println!(
        "total: {} programs, {total_insns} insns, {:.0} ms; margin: each under {budget_percent}% \
         ({limit} insns) of the verifier's budget",
        rows.len(),
        total_time.as_secs_f64() * 1e3
    );
}

fn print_json(rows: &[Row], config: &CaptureConfig, limit: u32) {
    for row in rows {
        let value = match &row.outcome {
            Ok((insns, elapsed)) => serde_json::json!({
                "program": row.program,
                "family": row.family,
                "insns": insns,
                "budget_percent": insns.map(percent),
                "load_ns": elapsed.as_nanos() as u64,
                "over_margin": insns.is_some_and(|n| n > limit),
            }),
            Err(why) => serde_json::json!({
                "program": row.program,
                "family": row.family,
                "error": why,
            }),
        };
        println!("{value}");
    }
    println!(
        "{}",
        serde_json::json!({
            "kind": "verify_summary",
            "settings": settings(config),
            "max_buffer_bytes": config.max_buffer_bytes,
            "socket_capture_bytes": config.socket_capture_bytes,
            "limit_insns": limit,
            "kernel": kernel_release(),
        })
    );
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
