//! Helpers for the `tracer probe` tests: run `tracer probe list/add`
//! against a process the test started, read a USDT semaphore through
//! /proc/PID/mem, run bpftrace next to tracer on the same points.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::common::{Proc, TRACER, TRACER_READY_TIMEOUT, fixtures_dir};

/// `tracer probe list ...`: stdout, or a panic with stderr.
pub fn probe_list(args: &[&str]) -> String {
    let out = Command::new(TRACER)
        .args(["probe", "list"])
        .args(args)
        .output()
        .expect("running tracer probe list");
    assert!(
        out.status.success(),
        "tracer probe list {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tracer probe add ...` that must fail: its stderr.
pub fn probe_add_error(args: &[&str]) -> String {
    let out = Command::new(TRACER)
        .args(["probe", "add"])
        .args(args)
        .output()
        .expect("running tracer probe add");
    assert!(
        !out.status.success(),
        "tracer probe add {args:?} should have failed; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A running `tracer probe add --json ...`, attached once constructed.
pub struct ProbeRun {
    pub proc: Proc,
}

impl ProbeRun {
    pub fn start(pid: u32, args: &[&str]) -> Self {
        let mut cmd = Command::new(TRACER);
        cmd.args(["probe", "add", "--json", "--pid", &pid.to_string()])
            .args(args)
            // For the verifier's instruction counts (see verifier_insns).
            .env("RUST_LOG", "tracer_user::probe::session=debug");
        let mut proc = Proc::spawn("tracer probe add", cmd, true);
        proc.stderr
            .wait_for("tracer: ready", TRACER_READY_TIMEOUT, |l| {
                l == "tracer: ready"
            });
        Self { proc }
    }

    /// Ctrl-C, then every JSON event printed (the summary line excluded).
    pub fn finish(self) -> Vec<Value> {
        self.finish_with_stderr().0
    }

    /// As [`ProbeRun::finish`], with tracer's stderr lines.
    pub fn finish_with_stderr(mut self) -> (Vec<Value>, Vec<String>) {
        self.proc.signal(libc::SIGINT);
        let status = self.proc.expect_exit(Duration::from_secs(30));
        self.proc.drain(Duration::from_secs(10));
        assert!(
            status.success(),
            "tracer probe add failed ({status}):\n{}",
            self.proc.stderr.tail(40)
        );
        // Shown when a test fails (cargo prints a failed test's output).
        eprintln!("tracer probe add stderr:\n{}", self.proc.stderr.tail(20));
        let out = self.proc.stdout.as_ref().expect("stdout is piped");
        eprintln!("tracer probe add stdout:\n{}", out.tail(20));
        let events = out
            .seen()
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
            })
            .filter(|v| v.get("summary").is_none())
            .collect();
        (events, self.proc.stderr.seen().to_vec())
    }
}

/// The verifier's processed instructions per program, from the debug
/// lines `tracer probe add` printed.
pub fn verifier_insns(stderr: &[String]) -> Vec<(String, u64)> {
    stderr
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find("program ")? + "program ".len()..];
            let (name, rest) = rest.split_once(": verifier processed ")?;
            let n = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.to_string(), n))
        })
        .collect()
}

/// Probe events of `point` (all records).
pub fn of_point<'a>(events: &'a [Value], point: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "probe" && e["point"] == point)
        .collect()
}

/// Sum of `count` over the aggregate events of `point`.
pub fn count_of(events: &[Value], point: &str) -> u64 {
    of_point(events, point)
        .iter()
        .map(|e| e["count"].as_u64().expect("aggregate events carry count"))
        .sum()
}

/// `args` of every `args` event of `point`, in order.
pub fn args_of(events: &[Value], point: &str) -> Vec<Vec<Value>> {
    of_point(events, point)
        .iter()
        .map(|e| {
            e["args"]
                .as_array()
                .expect("args events carry args")
                .clone()
        })
        .collect()
}

/// Two bytes of another process's memory (a USDT semaphore).
pub fn read_u16(pid: u32, addr: u64) -> u16 {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).expect("opening /proc/PID/mem");
    let mut buf = [0u8; 2];
    f.read_exact_at(&mut buf, addr)
        .unwrap_or_else(|e| panic!("reading {addr:#x} of PID {pid}: {e}"));
    u16::from_ne_bytes(buf)
}

/// Builds tests/fixtures/usdt (the C USDT target) into `dir`.
pub fn build_usdt_target(dir: &Path) -> PathBuf {
    let src = fixtures_dir().join("usdt");
    assert!(
        Path::new("/usr/include/x86_64-linux-gnu/sys/sdt.h").exists()
            || Path::new("/usr/include/sys/sdt.h").exists(),
        "<sys/sdt.h> is missing: install systemtap-sdt-dev (cargo xtask bootstrap does)"
    );
    let bin = dir.join("usdt_target");
    let status = Command::new("gcc")
        .args(["-O2", "-g0", "-o"])
        .arg(&bin)
        .arg(src.join("usdt_target.c"))
        .arg(src.join("gated.c"))
        .status()
        .expect("running gcc");
    assert!(status.success(), "gcc failed building the USDT target");
    bin
}

/// How many perf events process `pid` holds open.
fn perf_event_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy() == "anon_inode:[perf_event]")
                })
                .count()
        })
        .unwrap_or(0)
}

/// A running bpftrace program (stdout: its maps at exit).
pub struct Bpftrace {
    pub proc: Proc,
}

impl Bpftrace {
    /// Starts `bpftrace -p PID -e PROGRAM` and waits until it attached.
    pub fn start(pid: u32, program: &str) -> Self {
        let mut cmd = Command::new("bpftrace");
        // str() copies 64 bytes by default; test paths are longer.
        cmd.args(["-p", &pid.to_string(), "-e", program])
            .env("BPFTRACE_STRLEN", "200");
        let mut proc = Proc::spawn("bpftrace", cmd, true);
        let line = proc.stdout.as_mut().expect("stdout is piped").wait_for(
            "bpftrace's Attaching line",
            TRACER_READY_TIMEOUT,
            |l| l.starts_with("Attaching "),
        );
        // `Attaching N probes...` is printed before attaching: a hit (or a
        // SIGINT, which bpftrace then ignores) in between is lost. Every
        // probe is a perf event, as is bpftrace's output buffer on each
        // online CPU (bpftrace 0.17), so wait until it holds N + CPUs of
        // them; a bpftrace that buffers otherwise gets a second instead.
        let n: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no probe count in bpftrace's `{line}`"));
        // SAFETY: sysconf reads a system value; no memory is involved.
        let cpus =
            usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while perf_event_fds(proc.pid()) < n + cpus {
            if std::time::Instant::now() > deadline {
                std::thread::sleep(Duration::from_secs(1));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The program is attached to the last one right after it opens.
        std::thread::sleep(Duration::from_millis(200));
        Self { proc }
    }

    /// Ctrl-C, then the value of each printed `@name: value` line.
    pub fn finish(mut self) -> std::collections::BTreeMap<String, i64> {
        self.proc.signal(libc::SIGINT);
        self.proc.expect_exit(Duration::from_secs(30));
        self.proc.drain(Duration::from_secs(10));
        let out = self.proc.stdout.as_ref().expect("stdout is piped");
        out.seen()
            .iter()
            .filter_map(|l| {
                let (name, value) = l.split_once(": ")?;
                Some((name.trim().to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }
}
