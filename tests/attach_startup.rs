//! Start-up as a user sees it: a status line while probes load (on a
//! terminal only; never on stdout), the start-up time in the summary, and a
//! probe family that cannot attach left out with its reason — or, when the
//! user asked for it with `--probes`, an error. Needs root.

mod common;

use std::{
    io::Read,
    os::fd::{FromRawFd, OwnedFd},
    process::{Command, Stdio},
    time::Duration,
};

use common::{StdoutTo, TRACER, Tracer, parse_lines, require_root, start_node};

/// A pseudo-terminal: (master, slave).
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds into the out-pointers; the name and
    // terminal settings are optional (null).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened for us and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

#[test]
fn a_status_line_on_a_terminal_and_nothing_on_stdout() {
    if !require_root("a_status_line_on_a_terminal_and_nothing_on_stdout") {
        return;
    }
    let (node, _) = start_node("loop.js", &[], &[], StdoutTo::Pipe);
    let (master, slave) = openpty();
    let mut tracer = Command::new(TRACER)
        .args(["attach", "--json", "--duration", "1", "--pid"])
        .arg(node.pid().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("starting tracer");
    // The terminal's output until the tracer closes its side (EIO).
    let reader = std::thread::spawn(move || {
        let mut file = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = file.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let mut stdout = String::new();
    tracer
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = tracer.wait().unwrap();
    let terminal = reader.join().unwrap();
    assert!(status.success(), "{status}\n{terminal}");
    // The status line is rewritten in place, then erased before `ready`.
    assert!(
        terminal.contains("\r\x1b[Ktracer: loading probes 1/")
            && terminal.contains("sys_exit_rw")
            && terminal.contains("\r\x1b[Ktracer: attached to PID"),
        "no status line on the terminal:\n{terminal:?}"
    );
    assert!(terminal.contains("tracer: ready\r\n"), "{terminal:?}");
    // stdout holds JSON events only, the summary last, with the start-up time.
    let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    assert!(!stdout.contains('\x1b') && !stdout.contains("loading probes"));
    let events = parse_lines(&lines);
    let summary = events.last().expect("a summary");
    assert_eq!(summary["kind"], "summary");
    let startup = summary["startup_ns"].as_u64().expect("startup_ns");
    assert!(startup > 0 && startup < 20_000_000_000, "{summary}");
    assert_eq!(summary["left_out"], serde_json::json!([]));
    eprintln!("ready after {:.3} s", startup as f64 / 1e9);
}

#[test]
fn without_a_terminal_there_is_no_status_line() {
    if !require_root("without_a_terminal_there_is_no_status_line") {
        return;
    }
    let (node, _) = start_node("loop.js", &[], &[], StdoutTo::Pipe);
    let tracer = Tracer::attach(&[node.pid()], &["--duration", "1"]);
    let run = tracer.finish(Duration::from_secs(30));
    assert!(
        !run.stderr_text().contains('\x1b') && !run.stderr_text().contains("loading probes"),
        "{}",
        run.stderr_text()
    );
    run.assert_clean_end();
}

/// The write-exit tracepoint writev needs, hidden as if this kernel lacked it.
const HIDDEN: &str = "syscalls:sys_exit_writev";
const WHY: &str = "probe sys_exit_rw: missing hook: this kernel has no tracepoint \
                   syscalls:sys_exit_writev; syscall tracepoints need a kernel built with \
                   CONFIG_FTRACE_SYSCALLS";

#[test]
fn a_family_that_cannot_attach_is_left_out_and_named() {
    if !require_root("a_family_that_cannot_attach_is_left_out_and_named") {
        return;
    }
    let (mut node, _) = start_node("event_loop.js", &[], &[], StdoutTo::Pipe);
    let pid = node.pid();
    let mut cmd = Command::new(TRACER);
    cmd.args(["attach", "--json", "--duration", "30", "--pid"])
        .arg(pid.to_string())
        .env("TRACER_TEST_HIDE_TRACEPOINTS", HIDDEN);
    let mut tracer = common::Proc::spawn("tracer", cmd, true);
    let ready = tracer
        .stderr
        .wait_for("the ready line", Duration::from_secs(20), |l| {
            l.starts_with("tracer: ready")
        });
    assert_eq!(ready, format!("tracer: ready; left out: logs ({WHY})"));
    node.send_line("go");
    assert!(node.expect_exit(Duration::from_secs(30)).success());
    let status = tracer
        .wait_exit(Duration::from_secs(40))
        .expect("tracer exits");
    tracer.drain(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(3),
        "exit code 3: ran with a family left out"
    );
    let lines = tracer.stdout.as_ref().unwrap().seen().to_vec();
    let events = parse_lines(&lines);
    // The other families ran: the fixture's stalls are there, its log lines
    // are not (the logs family is out).
    let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(count("log"), 0);
    assert!(count("loop") >= 4, "loop events: {}", count("loop"));
    assert!(count("http") >= 1, "http events: {}", count("http"));
    let summary = events.last().unwrap();
    assert_eq!(
        summary["left_out"],
        serde_json::json!([format!("logs ({WHY})")])
    );
    let stderr = tracer.stderr.seen().join("\n");
    assert!(
        stderr.contains(&format!(". left out: logs ({WHY})")),
        "the text summary names it too:\n{stderr}"
    );
}

#[test]
fn a_family_asked_for_that_cannot_attach_is_an_error() {
    if !require_root("a_family_asked_for_that_cannot_attach_is_an_error") {
        return;
    }
    let (node, _) = start_node("loop.js", &[], &[], StdoutTo::Pipe);
    let out = Command::new(TRACER)
        .args(["attach", "--probes", "logs,tcp", "--duration", "5", "--pid"])
        .arg(node.pid().to_string())
        .env("TRACER_TEST_HIDE_TRACEPOINTS", HIDDEN)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!("error: --probes asked for logs, which cannot run on this machine: {WHY}")
    );
    assert!(out.stdout.is_empty());
}
