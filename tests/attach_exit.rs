//! How `tracer attach` ends: when its target exits (with an `exit` event and
//! the summary last), on a bad pid (exit 1, no panic), and on a process that
//! is not node (attached with the node-only probes skipped). Needs root.

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    LogLine, Proc, StdoutTo, Tracer, assert_log_lines, require_root, short, start_node,
    wait_ready_line,
};

#[test]
fn target_exit_code_ends_the_run() {
    if !require_root("target_exit_code_ends_the_run") {
        return;
    }
    let (mut node, _) = start_node("exit.js", &[], &["code", "3"], StdoutTo::Pipe);
    let pid = node.pid();
    // No --duration: the target's exit must end the run.
    let mut tracer = Tracer::attach(&[pid], &[]);
    node.send_line("go");
    let status = node.expect_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(3), "exit.js should exit with 3");
    let exited = Instant::now();
    // Within a few seconds of the target's exit the tracer is gone by itself.
    let ended = tracer.proc.wait_exit(Duration::from_secs(5));
    assert!(
        ended.is_some(),
        "the tracer was still running 5 s after its only target (pid {pid}) exited"
    );
    let took = exited.elapsed();
    let run = tracer.finish(Duration::from_secs(1));

    let exits = run.of("exit", pid);
    assert_eq!(
        exits.len(),
        1,
        "expected one exit event for pid {pid}, got {exits:?} (after {took:?})"
    );
    let e = exits[0];
    assert_eq!(e["exit_code"], 3, "exit_code: {e}");
    assert!(
        e.get("signal").is_none_or(|s| s.is_null()),
        "no signal for a normal exit: {e}"
    );
    // The exit event is the last event before the summary.
    let before_summary = run
        .events
        .iter()
        .rev()
        .nth(1)
        .expect("an exit event and the summary");
    assert_eq!(
        before_summary, e,
        "the exit event should be the last event before the summary"
    );
    // The run itself ended cleanly (status 0, summary last, counts match).
    run.assert_clean_end();
}

#[test]
fn target_killed_by_a_signal() {
    if !require_root("target_killed_by_a_signal") {
        return;
    }
    let (mut node, _) = start_node("exit.js", &[], &["hang"], StdoutTo::Pipe);
    let pid = node.pid();
    let tracer = Tracer::attach(&[pid], &[]);
    node.send_line("go");
    // Let it run a moment under the tracer, then kill it.
    std::thread::sleep(Duration::from_millis(200));
    node.signal(libc::SIGKILL);
    let status = node.expect_exit(Duration::from_secs(10));
    assert!(
        status.code().is_none(),
        "exit.js should die of SIGKILL, got {status}"
    );
    let run = tracer.finish(Duration::from_secs(5));

    let exits = run.of("exit", pid);
    assert_eq!(
        exits.len(),
        1,
        "expected one exit event for pid {pid}, got {exits:?}"
    );
    let e = exits[0];
    assert!(
        e["exit_code"].is_null(),
        "exit_code must be null when killed: {e}"
    );
    assert_eq!(e["signal"], libc::SIGKILL, "signal: {e}");
    // The run itself ended cleanly (status 0, summary last, counts match).
    run.assert_clean_end();
}

/// A pid no process has right now.
fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("reading pid_max")
        .trim()
        .parse()
        .expect("pid_max is a number");
    (1..1000)
        .map(|i| max - i)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("some pid near pid_max is unused")
}

#[test]
fn nonexistent_pid_is_an_error() {
    if !require_root("nonexistent_pid_is_an_error") {
        return;
    }
    let pid = unused_pid();
    let mut cmd = Command::new(common::TRACER);
    cmd.args(["attach", "--json", "--pid", &pid.to_string()]);
    let mut tracer = Proc::spawn("tracer", cmd, true);
    let status = tracer.expect_exit(Duration::from_secs(30));
    tracer.drain(Duration::from_secs(5));
    let stderr = tracer.stderr.seen().join("\n");
    let stdout = tracer.stdout.as_ref().expect("piped").seen().join("\n");
    assert_eq!(
        status.code(),
        Some(1),
        "tracer attach --pid {pid} (no such process) must exit 1. stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "the tracer panicked:\n{stderr}"
    );
    let error_line = tracer
        .stderr
        .seen()
        .iter()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no `error: ...` line on stderr:\n{stderr}"));
    assert!(
        error_line.contains(&pid.to_string()),
        "the error must name pid {pid}: {error_line}"
    );
    assert!(
        !stderr.lines().any(|l| l == "tracer: ready"),
        "the tracer must not claim to be ready:\n{stderr}"
    );
    assert!(
        stdout.is_empty(),
        "no events on stdout expected, got:\n{}",
        short(&stdout)
    );
}

#[test]
fn non_node_process_is_traced_with_node_probes_skipped() {
    if !require_root("non_node_process_is_traced_with_node_probes_skipped") {
        return;
    }
    // Python, not node: no libuv or V8 symbols for the runtime probes, but
    // its writes are still lines and it still exits. (Not a shell: `echo x >&2`
    // in dash is a write to fd 1 after dup2(2, 1).)
    let script = "import os, sys\n\
                  os.write(2, b'READY\\n')\n\
                  sys.stdin.readline()\n\
                  os.write(1, b'from python 1\\n')\n\
                  os.write(2, b'to stderr\\n')\n\
                  os.write(1, b'from python 2\\n')\n";
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script]);
    let mut py = Proc::spawn("python3", cmd, true);
    wait_ready_line(&mut py);
    let pid = py.pid();
    let tracer = Tracer::attach(&[pid], &["--duration", "60"]);
    py.send_line("go");
    let status = py.expect_exit(Duration::from_secs(10));
    assert!(status.success(), "python3 failed: {status}");
    let run = tracer.finish(Duration::from_secs(10));

    let skip_lines: Vec<&String> = run
        .stderr
        .iter()
        .filter(|l| l.to_lowercase().contains("skipp"))
        .collect();
    let names_what = |l: &str| {
        let l = l.to_lowercase();
        ["runtime", "gc", "loop", "uv__io_poll", "collectgarbage"]
            .iter()
            .any(|w| l.contains(w))
    };
    assert!(
        skip_lines.iter().any(|l| names_what(l)),
        "stderr must say which probes were skipped for pid {pid} (a line containing \"skipp\" \
         and naming the runtime/gc/loop probes); stderr:\n{}",
        run.stderr_text()
    );
    assert!(
        skip_lines.iter().any(|l| l.contains(&pid.to_string())),
        "the skip message should name the pid {pid} it is about; stderr:\n{}",
        run.stderr_text()
    );

    let expected = [
        LogLine::new("stdout", None, "from python 1"),
        LogLine::new("stderr", None, "to stderr"),
        LogLine::new("stdout", None, "from python 2"),
    ];
    assert_log_lines(&run, pid, "python3", &expected, "python3");
    let exits = run.of("exit", pid);
    assert!(
        exits.len() == 1 && exits[0]["exit_code"] == 0,
        "expected one exit event with exit_code 0 for python3, got {exits:?}"
    );
    // The run itself ended cleanly (status 0, summary last, counts match).
    run.assert_clean_end();
}

/// SIGTERM, like SIGINT, ends the run cleanly while the target keeps running.
#[test]
fn sigterm_ends_the_run() {
    if !require_root("sigterm_ends_the_run") {
        return;
    }
    let (mut node, _) = start_node("exit.js", &[], &["hang"], StdoutTo::Pipe);
    let pid = node.pid();
    let tracer = Tracer::attach(&[pid], &[]);
    node.send_line("go");
    std::thread::sleep(Duration::from_millis(200));
    tracer.proc.signal(libc::SIGTERM);
    let run = tracer.finish(Duration::from_secs(5));
    assert!(
        node.try_status().is_none(),
        "stopping the tracer must leave the target running"
    );
    assert!(
        run.of("exit", pid).is_empty(),
        "no exit event for a target that is still running"
    );
    run.assert_clean_end();
}

/// `--duration` ends the run on time while the target keeps running.
#[test]
fn duration_ends_the_run() {
    if !require_root("duration_ends_the_run") {
        return;
    }
    let (mut node, _) = start_node("exit.js", &[], &["hang"], StdoutTo::Pipe);
    let pid = node.pid();
    let mut tracer = Tracer::attach(&[pid], &["--duration", "2"]);
    let ready = Instant::now();
    node.send_line("go");
    let ended = tracer.proc.wait_exit(Duration::from_secs(8));
    assert!(
        ended.is_some(),
        "the tracer was still running 8 s after `tracer: ready` with --duration 2"
    );
    let took = ready.elapsed();
    // The duration may count from the start or from ready; the run cannot
    // end before 2 s minus the attach time, and not much after.
    assert!(
        took < Duration::from_secs(6),
        "with --duration 2 the tracer took {took:?} after ready to end"
    );
    let run = tracer.finish(Duration::from_secs(1));
    assert!(
        run.ended_ns - run.started_ns >= 2_000_000_000,
        "with --duration 2 the tracer ended after {} ms",
        (run.ended_ns - run.started_ns) / 1_000_000
    );
    assert!(
        node.try_status().is_none(),
        "ending the run must leave the target running"
    );
    run.assert_clean_end();
}
