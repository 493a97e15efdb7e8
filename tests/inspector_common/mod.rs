//! Helpers for the tests of `tracer logpoint`, `tracer eval` and `tracer
//! repl`: each test runs its node targets in a network namespace of its own
//! (`trc-lp-…`), so the inspector's default port 9229 is the test's alone
//! and "nothing listens on 9229 afterwards" is an exact check, made by
//! connecting from inside that namespace.

#![allow(
    dead_code,
    reason = "each test binary compiles this module and uses a different part of it"
)]

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::common::{NODE, Proc, TRACER, fixtures_dir, wait_ready_line};

/// Longest a tracer eval/logpoint command may take in these tests.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A network namespace with loopback up, deleted when dropped.
pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("trc-lp-{tag}-{}-{n}", std::process::id());
        let _ = ip(&["netns", "delete", &name]);
        let (ok, err) = ip(&["netns", "add", &name]);
        assert!(ok, "ip netns add {name}: {err}");
        let (ok, err) = ip(&["-n", &name, "link", "set", "lo", "up"]);
        assert!(ok, "ip -n {name} link set lo up: {err}");
        Netns { name }
    }

    /// Runs `f` on a thread inside this namespace (its sockets are made
    /// there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                // SAFETY: ns is an open namespace fd; setns changes only this
                // thread's network namespace.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {path}: {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .expect("the thread in the namespace panicked")
        })
    }

    /// Whether something accepts connections on 127.0.0.1:port in here.
    pub fn port_open(&self, port: u16) -> bool {
        self.run(|| {
            TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(2),
            )
            .is_ok()
        })
    }

    /// GET `path` from 127.0.0.1:port in here (one connection per request);
    /// returns the response body.
    pub fn get(&self, port: u16, path: &str) -> String {
        self.run(|| {
            let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
                .unwrap_or_else(|e| panic!("connecting to the server on port {port}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp)
                .unwrap_or_else(|e| panic!("reading the response to {path}: {e}"));
            assert!(
                resp.starts_with("HTTP/1.1 200"),
                "GET {path}: unexpected response {resp:?}"
            );
            resp.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default()
        })
    }

    /// Starts `node [node_args] tests/fixtures/<script> [args]` in here
    /// and waits for its READY line. Returns it and the rest of that line.
    pub fn start_node(&self, script: &str, node_args: &[&str], args: &[&str]) -> (Proc, String) {
        let mut cmd = Command::new("ip");
        // `ip netns exec` execs node in place: the pid is node's.
        cmd.args(["netns", "exec", &self.name, NODE])
            .args(node_args)
            .arg(fixtures_dir().join(script))
            .args(args);
        let mut p = Proc::spawn(script, cmd, true);
        let ready = wait_ready_line(&mut p);
        (p, ready)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

/// The audit log of one test.
pub fn audit_log(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("tracer-audit-{tag}-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Runs `tracer ARGS` to completion (at most COMMAND_TIMEOUT; killed and
/// failed after that), with the test's audit log.
pub fn tracer(audit: &PathBuf, args: &[&str]) -> Output {
    let mut child = Command::new(TRACER)
        .args(args)
        .env("TRACER_AUDIT_LOG", audit)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting tracer {args:?}: {e}"));
    let started = Instant::now();
    loop {
        if child.try_wait().expect("waiting for tracer").is_some() {
            return child.wait_with_output().expect("tracer output");
        }
        if started.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("tracer output");
            panic!(
                "tracer {args:?} did not finish within {COMMAND_TIMEOUT:?} (a hang). stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `tracer ARGS`, requires success, returns stdout.
pub fn tracer_ok(audit: &PathBuf, args: &[&str]) -> String {
    let out = tracer(audit, args);
    assert!(
        out.status.success(),
        "tracer {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs `tracer ARGS`, requires failure, returns stderr.
pub fn tracer_err(audit: &PathBuf, args: &[&str]) -> String {
    let out = tracer(audit, args);
    assert!(
        !out.status.success(),
        "tracer {args:?} should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

/// `tracer eval --pid PID --json EXPR`'s `value`.
pub fn eval_value(audit: &PathBuf, pid: u32, expr: &str) -> serde_json::Value {
    let out = tracer_ok(audit, &["eval", "--pid", &pid.to_string(), "--json", expr]);
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("eval output is not JSON ({e}): {out}"));
    v["value"].clone()
}

/// Whether `pid` is still running (not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next();
            !matches!(state, Some("Z" | "X"))
        })
        .unwrap_or(false)
}

/// The lines node prints about its inspector (docs/logpoints.md).
pub fn is_inspector_notice(line: &str) -> bool {
    line.starts_with("Debugger listening on ws://127.0.0.1:9229/")
        || line.starts_with("Debugger ending on ws://127.0.0.1:9229/")
        || line == "For help, see: https://nodejs.org/en/docs/inspector"
        || line == "Debugger attached."
}
