//! `tracer eval` and the hazards of node's inspector, each on real node
//! processes started before tracer, in network namespaces of the test's
//! own (tracer reaches them with setns):
//! - values: JSON, previews, top-level await, `require`, a throw, and a
//!   synchronous endless loop stopped at `--timeout` (the process keeps
//!   serving); the port is closed after each;
//! - a process started with `--inspect`: used, and left open as found;
//!   one started with a random inspector port (`--inspect=…:0`): refused;
//! - a process with its own SIGUSR1 handler: a clear error within the open
//!   timeout; it survives (and its handler ran once); nothing left open;
//! - a non-node PID, and a node whose SIGUSR1 is back to its default
//!   action (fatal): refused before any signal; they survive;
//! - two node processes in one namespace, evaluated at once, many times:
//!   every evaluation succeeds in the right process (no "address in use");
//! - tracer SIGKILLed while the port is open: the next run closes it, and
//!   without a next run the port guard closes it by itself;
//! - tracer interrupted (Ctrl-C) while the port is open: it closes it;
//! - a target that exits mid-operation: a clear error, no hang;
//! - `tracer repl`: multi-line input, history, Ctrl-C cancels one
//!   evaluation, the port closed when the session ends.
//!
//! Needs root (SIGUSR1 to other processes, setns).

mod common;
mod inspector_common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Proc, TRACER, require_root};
use inspector_common::{Netns, alive, audit_log, eval_value, tracer, tracer_err, tracer_ok};
use serde_json::{Value, json};

const INSPECTOR_PORT: u16 = 9229;

fn eval_text(audit: &std::path::PathBuf, pid: u32, expr: &str) -> String {
    tracer_ok(audit, &["eval", "--pid", &pid.to_string(), expr])
}

#[test]
fn eval_prints_values_and_closes_the_port() {
    if !require_root("eval_prints_values_and_closes_the_port") {
        return;
    }
    let ns = Netns::new("eval");
    let audit = audit_log("eval");
    let (node, port) = ns.start_node("logpoint_server.js", &[], &[]);
    let port: u16 = port.parse().unwrap();
    let pid = node.pid();

    assert_eq!(eval_value(&audit, pid, "process.pid"), pid);
    assert_eq!(
        eval_value(&audit, pid, "({a: [1, 'x'], n: null, s: 'é'})"),
        json!({"a": [1, "x"], "n": null, "s": "é"})
    );
    assert_eq!(
        eval_value(
            &audit,
            pid,
            "await new Promise(r => setTimeout(() => r(41 + 1), 50))"
        ),
        42
    );
    assert_eq!(
        eval_value(&audit, pid, "require('path').basename('/a/b.js')"),
        "b.js"
    );
    assert_eq!(eval_text(&audit, pid, "[1, 2]"), "[\n  1,\n  2\n]\n");
    assert_eq!(
        eval_text(&audit, pid, "function f() {}; f"),
        "function f() {}\n"
    );
    assert_eq!(eval_text(&audit, pid, "undefined"), "undefined\n");
    assert_eq!(eval_text(&audit, pid, "0 / 0"), "NaN\n");
    let out = tracer(
        &audit,
        &["eval", "--pid", &pid.to_string(), "throw new Error('boom')"],
    );
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("Uncaught Error: boom"), "{stdout}");
    // A synchronous endless loop is stopped at the deadline; the process
    // goes on serving.
    let started = Instant::now();
    let e = tracer_err(
        &audit,
        &[
            "eval",
            "--pid",
            &pid.to_string(),
            "--timeout",
            "1s",
            "while (true) {}",
        ],
    );
    assert!(e.contains("stopped at the deadline"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(ns.get(port, "/orders/z1?qty=2"), r#"{"id":"z1","total":6}"#);
    assert!(!ns.port_open(INSPECTOR_PORT), "the port must be closed");
    assert_eq!(
        eval_value(&audit, pid, "typeof globalThis.__tracer"),
        "undefined",
        "eval installs nothing"
    );
    let _ = std::fs::remove_file(&audit);
}

#[test]
fn a_process_started_with_inspect_is_left_open() {
    if !require_root("a_process_started_with_inspect_is_left_open") {
        return;
    }
    let ns = Netns::new("open");
    let audit = audit_log("open");
    let (node, _) = ns.start_node("logpoint_server.js", &["--inspect=127.0.0.1:9229"], &[]);
    let pid = node.pid();
    assert!(ns.port_open(INSPECTOR_PORT));
    assert_eq!(eval_value(&audit, pid, "process.pid"), pid);
    assert!(ns.port_open(INSPECTOR_PORT), "left open as found");
    let out = tracer_ok(
        &audit,
        &[
            "logpoint",
            "add",
            "--pid",
            &pid.to_string(),
            "logpoint_server.js:19",
            "x",
        ],
    );
    assert!(out.contains("already open; left open as found"), "{out}");
    tracer_ok(
        &audit,
        &["logpoint", "rm", "--pid", &pid.to_string(), "--all"],
    );
    assert!(ns.port_open(INSPECTOR_PORT), "left open as found");
    // A random inspector port (--inspect=…:0) is refused up front.
    let (random, _) = ns.start_node("logpoint_server.js", &["--inspect=127.0.0.1:0"], &[]);
    let e = tracer_err(&audit, &["eval", "--pid", &random.pid().to_string(), "1"]);
    assert!(e.contains("a random port"), "{e}");
    assert!(alive(random.pid()));
    let _ = std::fs::remove_file(&audit);
}

#[test]
fn own_sigusr1_handler_gets_a_clear_error_and_survives() {
    if !require_root("own_sigusr1_handler_gets_a_clear_error_and_survives") {
        return;
    }
    let ns = Netns::new("usr1");
    let audit = audit_log("usr1");
    let (mut node, port) = ns.start_node("logpoint_server.js", &[], &["--own-sigusr1"]);
    let port: u16 = port.parse().unwrap();
    let pid = node.pid();
    let started = Instant::now();
    let e = tracer_err(&audit, &["eval", "--pid", &pid.to_string(), "1"]);
    let took = started.elapsed();
    assert!(e.contains("did not open its inspector"), "{e}");
    assert!(e.contains("process.on('SIGUSR1'"), "{e}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(15),
        "the open timeout is 5 s; took {took:?}"
    );
    assert!(alive(pid), "the process must survive");
    assert_eq!(ns.get(port, "/orders/u1?qty=1"), r#"{"id":"u1","total":3}"#);
    node.stderr
        .wait_for("its own handler's line", Duration::from_secs(5), |l| {
            l == "app got SIGUSR1"
        });
    assert!(!ns.port_open(INSPECTOR_PORT), "nothing listens");
    // The failure is in the audit trail.
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    assert!(audit_text.contains(r#""ok":false"#), "{audit_text}");
    let _ = std::fs::remove_file(&audit);
}

#[test]
fn a_process_whose_sigusr1_would_kill_it_gets_no_signal() {
    if !require_root("a_process_whose_sigusr1_would_kill_it_gets_no_signal") {
        return;
    }
    let ns = Netns::new("dfl");
    let audit = audit_log("dfl");
    let (node, port) = ns.start_node("logpoint_server.js", &[], &["--removed-sigusr1"]);
    let port: u16 = port.parse().unwrap();
    let pid = node.pid();
    let e = tracer_err(&audit, &["eval", "--pid", &pid.to_string(), "1"]);
    assert!(e.contains("does not catch SIGUSR1"), "{e}");
    assert!(e.contains("Nothing was sent to it"), "{e}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(pid), "the process must survive");
    assert_eq!(ns.get(port, "/orders/q1?qty=1"), r#"{"id":"q1","total":3}"#);
    let _ = std::fs::remove_file(&audit);
}

#[test]
fn a_non_node_pid_is_refused_before_any_signal() {
    if !require_root("a_non_node_pid_is_refused_before_any_signal") {
        return;
    }
    let audit = audit_log("nonnode");
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    let sleeper = Proc::spawn("sleep", cmd, true);
    let pid = sleeper.pid();
    let e = tracer_err(&audit, &["eval", "--pid", &pid.to_string(), "1"]);
    assert!(e.contains("is not a node process"), "{e}");
    assert!(e.contains("Nothing was sent to it"), "{e}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(pid), "sleep must survive");
    let e = tracer_err(&audit, &["eval", "--pid", "999999999", "1"]);
    assert!(e.contains("PID 999999999 does not exist"), "{e}");
    let _ = std::fs::remove_file(&audit);
}

#[test]
fn two_processes_in_one_namespace_take_turns() {
    if !require_root("two_processes_in_one_namespace_take_turns") {
        return;
    }
    let ns = Netns::new("two");
    let audit = audit_log("two");
    let (a, _) = ns.start_node("logpoint_server.js", &[], &[]);
    let (b, _) = ns.start_node("logpoint_server.js", &[], &[]);
    for round in 0..4 {
        let children: Vec<(u32, std::process::Child)> = [a.pid(), b.pid(), a.pid(), b.pid()]
            .iter()
            .map(|&pid| {
                let c = Command::new(TRACER)
                    .args(["eval", "--json", "--pid", &pid.to_string(), "process.pid"])
                    .env("TRACER_AUDIT_LOG", &audit)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("starting tracer eval");
                (pid, c)
            })
            .collect();
        for (pid, c) in children {
            let out = c.wait_with_output().expect("tracer eval");
            assert!(
                out.status.success(),
                "round {round}, PID {pid}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            assert_eq!(v["value"], pid, "round {round}");
        }
    }
    assert!(!ns.port_open(INSPECTOR_PORT));
    let _ = std::fs::remove_file(&audit);
}

#[test]
fn a_killed_tracer_leaves_the_port_for_the_next_run_to_close() {
    if !require_root("a_killed_tracer_leaves_the_port_for_the_next_run_to_close") {
        return;
    }
    let ns = Netns::new("kill");
    let audit = audit_log("kill");
    let (node, port) = ns.start_node("logpoint_server.js", &[], &[]);
    let port: u16 = port.parse().unwrap();
    let pid = node.pid();
    let mut cmd = Command::new(TRACER);
    cmd.args([
        "eval",
        "--pid",
        &pid.to_string(),
        "await new Promise(r => setTimeout(r, 20000))",
    ])
    .env("TRACER_AUDIT_LOG", &audit);
    let slow = Proc::spawn("tracer eval", cmd, true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns.port_open(INSPECTOR_PORT) {
        assert!(Instant::now() < deadline, "the port never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    slow.signal(libc::SIGKILL);
    drop(slow);
    assert!(ns.port_open(INSPECTOR_PORT), "SIGKILL left the port open");
    assert_eq!(eval_value(&audit, pid, "1 + 1"), 2);
    assert!(
        !ns.port_open(INSPECTOR_PORT),
        "the next run closed the port a killed tracer left open"
    );
    assert_eq!(ns.get(port, "/orders/k1?qty=1"), r#"{"id":"k1","total":3}"#);

    // With no tracer run after it, the port guard closes the port by
    // itself (20 s after tracer last armed it).
    let mut cmd = Command::new(TRACER);
    cmd.args([
        "eval",
        "--pid",
        &pid.to_string(),
        "await new Promise(r => setTimeout(r, 60000))",
    ])
    .env("TRACER_AUDIT_LOG", &audit);
    let slow = Proc::spawn("tracer eval", cmd, true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns.port_open(INSPECTOR_PORT) {
        assert!(Instant::now() < deadline, "the port never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    slow.signal(libc::SIGKILL);
    drop(slow);
    while ns.port_open(INSPECTOR_PORT) {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the port guard did not close the port within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        killed.elapsed() > Duration::from_secs(15),
        "closed by the guard, not earlier: {:?}",
        killed.elapsed()
    );
    assert!(alive(pid));
    assert_eq!(
        eval_value(
            &audit,
            pid,
            "Object.getOwnPropertySymbols(process).map(String).filter(s => s.includes('tracer'))"
        ),
        json!(["Symbol(tracer.portGuard)"]),
        "one guard on `process`: this evaluation's own (the fired one deleted itself)"
    );
    assert!(!ns.port_open(INSPECTOR_PORT));
    let _ = std::fs::remove_file(&audit);
}

#[test]
fn a_target_exiting_mid_operation_is_a_clear_error() {
    if !require_root("a_target_exiting_mid_operation_is_a_clear_error") {
        return;
    }
    let ns = Netns::new("exit");
    let audit = audit_log("exit");
    let (mut node, _) = ns.start_node("logpoint_server.js", &[], &[]);
    let pid = node.pid();
    let started = Instant::now();
    let e = tracer_err(
        &audit,
        &[
            "eval",
            "--pid",
            &pid.to_string(),
            "setTimeout(() => process.exit(3), 100); await new Promise(r => setTimeout(r, 5000))",
        ],
    );
    assert!(e.contains(&format!("PID {pid} exited")), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "no hang");
    let status = node.expect_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(3));
    let _ = std::fs::remove_file(&audit);
}

#[test]
fn repl_multiline_history_and_ctrl_c() {
    if !require_root("repl_multiline_history_and_ctrl_c") {
        return;
    }
    let ns = Netns::new("repl");
    let audit = audit_log("repl");
    let home = common::TempDir::new("repl-home");
    let (node, port) = ns.start_node("logpoint_server.js", &[], &[]);
    let port: u16 = port.parse().unwrap();
    let pid = node.pid();
    let mut cmd = Command::new(TRACER);
    cmd.args(["repl", "--pid", &pid.to_string()])
        .env("TRACER_AUDIT_LOG", &audit)
        .env("HOME", home.path());
    let mut repl = Proc::spawn("tracer repl", cmd, true);
    let t = Duration::from_secs(20);
    repl.stderr
        .wait_for("the connected line", t, |l| l.contains("connected to PID"));
    assert!(ns.port_open(INSPECTOR_PORT), "open for the session");
    for line in [
        "1 + 1",
        "let x = 5",
        "function f(a) {",
        "  return a + x;",
        "}",
        "f(2)",
    ] {
        repl.send_line(line);
    }
    let out = repl.stdout.as_mut().unwrap();
    out.wait_for("f(2)", t, |l| l == "7");
    assert_eq!(out.seen(), ["2", "undefined", "undefined", "7"]);
    // Ctrl-C stops waiting for a long evaluation; the session goes on.
    repl.send_line("await new Promise(r => setTimeout(r, 20000))");
    std::thread::sleep(Duration::from_millis(500));
    repl.signal(libc::SIGINT);
    let out = repl.stdout.as_mut().unwrap();
    out.wait_for("the cancel note", t, |l| l.starts_with("(cancelled"));
    repl.send_line("process.pid");
    let out = repl.stdout.as_mut().unwrap();
    out.wait_for("the pid", t, |l| l == pid.to_string());
    repl.send_line(".exit");
    let status = repl.expect_exit(t);
    assert!(status.success(), "{status}");
    assert!(
        !ns.port_open(INSPECTOR_PORT),
        "closed when the session ends"
    );
    assert!(alive(pid));
    assert_eq!(ns.get(port, "/orders/r1?qty=1"), r#"{"id":"r1","total":3}"#);
    let history =
        std::fs::read_to_string(home.path().join(".tracer_repl_history")).expect("history saved");
    assert!(history.contains("function f(a) {\n"), "{history}");
    let audited = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(
        audited
            .matches(r#""op":"repl.eval","phase":"begin""#)
            .count(),
        6,
        "{audited}"
    );
    let _ = std::fs::remove_file(&audit);
}

#[test]
fn ctrl_c_mid_operation_still_closes_the_port() {
    if !require_root("ctrl_c_mid_operation_still_closes_the_port") {
        return;
    }
    let ns = Netns::new("sigint");
    let audit = audit_log("sigint");
    let (node, port) = ns.start_node("logpoint_server.js", &[], &[]);
    let port: u16 = port.parse().unwrap();
    let pid = node.pid();
    let mut cmd = Command::new(TRACER);
    cmd.args([
        "eval",
        "--pid",
        &pid.to_string(),
        "await new Promise(r => setTimeout(r, 20000))",
    ])
    .env("TRACER_AUDIT_LOG", &audit);
    let mut slow = Proc::spawn("tracer eval", cmd, true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns.port_open(INSPECTOR_PORT) {
        assert!(Instant::now() < deadline, "the port never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    slow.signal(libc::SIGINT);
    let status = slow.expect_exit(Duration::from_secs(10));
    assert!(!status.success());
    slow.stderr
        .wait_for("the interrupted error", Duration::from_secs(5), |l| {
            l.contains("interrupted")
        });
    assert!(!ns.port_open(INSPECTOR_PORT), "closed on the way out");
    let markers = std::fs::read_dir("/run/tracer/inspector")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("open-{pid}-"))
        })
        .count();
    assert_eq!(markers, 0, "no marker left for a port that is closed");
    assert_eq!(ns.get(port, "/orders/i1?qty=1"), r#"{"id":"i1","total":3}"#);
    let _ = std::fs::remove_file(&audit);
}
