//! Running wrk and reading its report.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::procs::Spawned;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub requests_per_sec: f64,
    pub p99_us: f64,
    /// Responses wrk completed in the run (`N requests in ...`).
    pub requests: u64,
    /// Socket errors plus non-2xx/3xx responses; should be 0.
    pub errors: u64,
}

/// `wrk -t1 -c50 -d<seconds>s --latency <url>` (keep-alive, also over
/// https), pinned to `cpu`.
pub fn run(url: &str, seconds: u32, cpu: u32) -> Result<Sample> {
    let mut command = Command::new("taskset");
    command
        .args(["-c", &cpu.to_string(), "wrk", "-t1", "-c50"])
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut wrk = Spawned::start("wrk", &mut command)?;
    // wrk stops on its own after -d; the margin covers its 2 s socket timeout.
    let limit = Duration::from_secs(u64::from(seconds) + 30);
    let Some(status) = wrk.wait(limit)? else {
        bail!("wrk did not finish within {}s", limit.as_secs());
    };
    let report = wrk.final_stdout();
    if !status.success() {
        bail!("wrk failed ({status}):\n{}", wrk.output());
    }
    parse(&report).with_context(|| format!("could not read wrk's report:\n{report}"))
}

pub fn parse(report: &str) -> Result<Sample> {
    let mut requests_per_sec = None;
    let mut p99_us = None;
    let mut requests = None;
    let mut errors = 0;
    for line in report.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = Some(
                value
                    .trim()
                    .parse::<f64>()
                    .with_context(|| format!("bad Requests/sec line `{line}`"))?,
            );
        } else if let Some(value) = line.strip_prefix("99%") {
            p99_us = Some(parse_duration_us(value.trim())?);
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            requests = Some(
                count
                    .parse::<u64>()
                    .with_context(|| format!("bad request count line `{line}`"))?,
            );
        } else if let Some(value) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += value.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(value) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += value
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(Sample {
        requests_per_sec: requests_per_sec.context("no `Requests/sec:` line")?,
        p99_us: p99_us.context("no `99%` latency line (was wrk run with --latency?)")?,
        requests: requests.context("no `N requests in ...` line")?,
        errors,
    })
}

/// wrk prints latencies as e.g. `812.00us`, `1.23ms`, `2.00s`, `1.50m`.
fn parse_duration_us(text: &str) -> Result<f64> {
    let units = [
        ("us", 1.0),
        ("ms", 1e3),
        ("s", 1e6),
        ("m", 60e6),
        ("h", 3600e6),
    ];
    for (suffix, scale) in units {
        if let Some(number) = text.strip_suffix(suffix) {
            let value: f64 = number
                .parse()
                .with_context(|| format!("bad latency `{text}`"))?;
            return Ok(value * scale);
        }
    }
    bail!("latency `{text}` has no known unit")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
Running 5s test @ http://127.0.0.1:41234/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   540.21us  101.33us   9.87ms   95.12%
    Req/Sec    91.73k     3.01k   95.10k    82.00%
  Latency Distribution
     50%  521.00us
     75%  560.00us
     90%  610.00us
     99%    1.23ms
  456789 requests in 5.00s, 45.32MB read
Requests/sec:  91357.80
Transfer/sec:      9.06MB
";

    #[test]
    fn parses_throughput_and_p99() {
        let sample = parse(REPORT).expect("report parses");
        assert_eq!(sample.requests_per_sec, 91357.80);
        assert!((sample.p99_us - 1230.0).abs() < 1e-6);
        assert_eq!(sample.requests, 456789);
        assert_eq!(sample.errors, 0);
    }

    #[test]
    fn counts_errors() {
        let report = format!(
            "{REPORT}  Socket errors: connect 0, read 3, write 0, timeout 2\n  Non-2xx or 3xx responses: 4\n"
        );
        assert_eq!(parse(&report).expect("report parses").errors, 9);
    }

    #[test]
    fn latency_units() {
        assert_eq!(parse_duration_us("812.00us").ok(), Some(812.0));
        assert_eq!(parse_duration_us("2.00s").ok(), Some(2e6));
        assert!(parse_duration_us("12").is_err());
    }

    #[test]
    fn missing_latency_is_an_error() {
        let report = REPORT.replace("99%", "98%");
        assert!(parse(&report).is_err());
    }
}
