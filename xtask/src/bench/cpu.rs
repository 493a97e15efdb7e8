//! CPU time from /proc: a process's own (utime + stime, all threads), and how
//! busy the whole machine is, to tell a quiet run from a noisy one.

use std::{fs, process::Command, thread, time::Duration};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Clock ticks per second, the unit of utime/stime in /proc/PID/stat
/// (`getconf CLK_TCK`; 100 on every Linux seen so far).
pub fn clock_ticks_per_sec() -> Result<u64> {
    let text = cmd::output(Command::new("getconf").arg("CLK_TCK"))?;
    let ticks: u64 = text
        .trim()
        .parse()
        .with_context(|| format!("`getconf CLK_TCK` printed `{}`", text.trim()))?;
    if ticks == 0 {
        bail!("`getconf CLK_TCK` printed 0");
    }
    Ok(ticks)
}

/// utime + stime of process `pid`, summed over its threads (live and exited),
/// in clock ticks.
pub fn process_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    parse_stat_ticks(&text).with_context(|| format!("unexpected contents of {path}: {text}"))
}

/// Fields 14 and 15 (utime, stime) of a /proc/PID/stat line. The command
/// name (field 2) is in parentheses and may hold spaces or `)`, so fields
/// are counted from the last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest: " S ppid pgrp ..." — field 3 (state) is its first word.
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Waits until process `pid` stops using CPU (its ticks stay the same for
/// `quiet`), at most `limit`, and returns its ticks then. A tracer's user
/// space may still be working through the ring buffer's backlog when the load
/// ends; that work belongs to the load window.
pub fn ticks_when_settled(pid: u32, quiet: Duration, limit: Duration) -> Result<u64> {
    let step = Duration::from_millis(100);
    let mut last = process_ticks(pid)?;
    let mut still = Duration::ZERO;
    let mut waited = Duration::ZERO;
    while still < quiet && waited < limit {
        thread::sleep(step);
        waited += step;
        let now = process_ticks(pid)?;
        if now == last {
            still += step;
        } else {
            still = Duration::ZERO;
            last = now;
        }
    }
    Ok(last)
}

/// Busy and total jiffies of all CPUs together, from the first line of
/// /proc/stat.
#[derive(Clone, Copy)]
struct Jiffies {
    busy: u64,
    total: u64,
}

fn machine_jiffies() -> Result<Jiffies> {
    let text = fs::read_to_string("/proc/stat").context("could not read /proc/stat")?;
    parse_proc_stat(&text).with_context(|| "unexpected first line in /proc/stat".to_string())
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`:
/// idle and iowait are idle, the rest up to steal is busy (steal is time
/// another VM had the core: noise as much as a local process is). guest
/// time is already inside user.
fn parse_proc_stat(text: &str) -> Option<Jiffies> {
    let line = text.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if values.len() < 8 {
        return None;
    }
    let idle = values[3] + values[4];
    let busy = values[0] + values[1] + values[2] + values[5] + values[6] + values[7];
    Some(Jiffies {
        busy,
        total: busy + idle,
    })
}

/// How many cores' worth of CPU the whole machine used during `window`
/// (0 = idle, 2.0 = both cores of a 2-core machine fully busy).
pub fn machine_busy_cores(window: Duration) -> Result<f64> {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let before = machine_jiffies()?;
    thread::sleep(window);
    let after = machine_jiffies()?;
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return Ok(0.0);
    }
    let busy = after.busy.saturating_sub(before.busy);
    Ok(busy as f64 / total as f64 * cpus)
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_after_the_last_paren() {
        let stat = "4242 (tokio (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 75 0 0 20 0 8 0 12345 100000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn own_ticks_are_readable() {
        assert!(process_ticks(std::process::id()).is_ok());
    }

    #[test]
    fn proc_stat_busy_and_total() {
        let text = "cpu  100 5 50 1000 20 3 2 10 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let j = parse_proc_stat(text).expect("parses");
        assert_eq!(j.busy, 100 + 5 + 50 + 3 + 2 + 10);
        assert_eq!(j.total, j.busy + 1000 + 20);
        assert!(parse_proc_stat("intr 1 2 3\n").is_none());
        assert!(parse_proc_stat("cpu 1 2 3\n").is_none());
    }
}
