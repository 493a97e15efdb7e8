//! How `tracer attach` handles what a user gets wrong or a machine lacks:
//! no privileges, tracefs not mounted, a PID that is not a live user process,
//! bad flag values. Each must end with a clear message (and no panic, no
//! hang), or, for tracefs, be fixed by the tracer itself. Needs root (runs
//! the tracer as root and as an unprivileged user, creates a mount namespace).

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, ExitStatus},
    time::Duration,
};

use common::{
    Proc, StdoutTo, TempDir, Tracer, assert_log_lines, logs_fixture_lines, now_ns, require_root,
    short, start_node,
};

/// How long a failing tracer may take to say so and exit.
const ERROR_TIMEOUT: Duration = Duration::from_secs(30);

/// What a tracer run that should fail produced.
struct Failed {
    /// None when it was still running at the deadline (it was then killed).
    status: Option<ExitStatus>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Failed {
    fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }

    /// The first `error:` line on stderr.
    fn error_line(&self) -> Option<&String> {
        self.stderr.iter().find(|l| l.starts_with("error:"))
    }

    /// Common checks for a run that must fail: it exited by itself with one of
    /// `codes`, did not panic, printed no events, never claimed to be ready,
    /// and has an `error:` line. Returns that line.
    fn assert_failed(&self, what: &str, codes: &[i32]) -> &String {
        let stderr = self.stderr_text();
        let Some(status) = self.status else {
            panic!(
                "{what}: expected the tracer to exit with {codes:?} and an error; it was still \
                 running after {ERROR_TIMEOUT:?}. stderr:\n{stderr}\nstdout:\n{}",
                short(&self.stdout.join("\n"))
            );
        };
        assert!(
            !stderr.contains("panicked"),
            "{what}: the tracer panicked:\n{stderr}"
        );
        assert!(
            status.code().is_some_and(|c| codes.contains(&c)),
            "{what}: expected exit status in {codes:?}, got {status}. stderr:\n{stderr}"
        );
        assert!(
            !self.stderr.iter().any(|l| l == "tracer: ready"),
            "{what}: the tracer must not claim to be ready:\n{stderr}"
        );
        assert!(
            self.stdout.is_empty(),
            "{what}: no events expected on stdout, got:\n{}",
            short(&self.stdout.join("\n"))
        );
        self.error_line()
            .unwrap_or_else(|| panic!("{what}: no `error: ...` line on stderr:\n{stderr}"))
    }
}

/// Runs `cmd` (stdout and stderr piped) until it exits or [`ERROR_TIMEOUT`]
/// passes; then it is killed.
fn run_to_end(name: &str, cmd: Command) -> Failed {
    let mut p = Proc::spawn(name, cmd, true);
    let status = p.wait_exit(ERROR_TIMEOUT);
    if status.is_some() {
        p.drain(Duration::from_secs(5));
    } else {
        p.stderr.poll();
        if let Some(out) = p.stdout.as_mut() {
            out.poll();
        }
    }
    Failed {
        status,
        stdout: p.stdout.as_ref().expect("piped").seen().to_vec(),
        stderr: p.stderr.seen().to_vec(),
    }
}

fn tracer_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(common::TRACER);
    cmd.args(args);
    cmd
}

/// A live node process to point the tracer at (waits for `go`, never gets it).
fn live_node() -> Proc {
    start_node("exit.js", &[], &["hang"], StdoutTo::Pipe).0
}

#[test]
fn unprivileged_user_gets_a_clear_error() {
    if !require_root("unprivileged_user_gets_a_clear_error") {
        return;
    }
    let node = live_node();
    let pid = node.pid().to_string();
    // A copy of the binary where uid 65534 can surely execute it (the work
    // tree may sit under a directory only root can enter).
    let dir = TempDir::new("errors-nobody");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the temp dir");
    let tracer = dir.path().join("tracer");
    std::fs::copy(common::TRACER, &tracer).expect("copying the tracer");
    std::fs::set_permissions(&tracer, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the tracer copy");

    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&tracer)
        .args(["attach", "--json", "--pid", &pid]);
    let run = run_to_end("tracer as uid 65534", cmd);
    let line = run.assert_failed("tracer as uid 65534", &[1]);
    assert!(
        run.stderr.first() == Some(line),
        "stderr must start with the `error:` line, got:\n{}",
        run.stderr_text()
    );
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"] {
        assert!(
            line.contains(cap),
            "the error must name the missing capability {cap}: {line}"
        );
    }
    drop(node);
}

#[test]
fn missing_tracefs_is_mounted_by_the_tracer() {
    if !require_root("missing_tracefs_is_mounted_by_the_tracer") {
        return;
    }
    let tracefs_mounts = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter(|l| l.contains(" - tracefs ") || l.contains(" - debugfs "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let before = tracefs_mounts();

    let dir = TempDir::new("errors-tracefs");
    let log_path = dir.path().join("app.log");
    let (mut node, _) = start_node(
        "logs.js",
        &[],
        &[log_path.to_str().expect("utf-8 path")],
        StdoutTo::Pipe,
    );
    let pid = node.pid();

    // In a private mount namespace, take tracefs (and debugfs, whose
    // `tracing` directory would automount it) away, check it is gone, then
    // exec the tracer there.
    let script = "umount /sys/kernel/debug/tracing 2>/dev/null; \
                  umount /sys/kernel/debug 2>/dev/null; \
                  umount /sys/kernel/tracing 2>/dev/null; \
                  if [ -e /sys/kernel/tracing/events ]; then \
                    echo 'test setup: tracefs is still mounted' >&2; exit 97; fi; \
                  exec \"$0\" attach --json --duration 60 --pid \"$1\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", script])
        .arg(common::TRACER)
        .arg(pid.to_string());
    let started_ns = now_ns();
    let mut tracer = Tracer {
        proc: Proc::spawn("tracer without tracefs", cmd, true),
        started_ns,
    };
    tracer.wait_ready();
    node.send_line("go");
    let status = node.expect_exit(Duration::from_secs(20));
    assert!(status.success(), "logs.js failed: {status}");
    let run = tracer.finish(Duration::from_secs(75));

    assert!(
        run.stderr.iter().any(|l| l.contains("mounted tracefs")),
        "the tracer must say on stderr that it mounted tracefs; stderr:\n{}",
        run.stderr_text()
    );
    assert_log_lines(
        &run,
        pid,
        "node",
        &logs_fixture_lines(&log_path),
        "tracefs mounted by the tracer",
    );
    run.assert_clean_end();
    // Nothing changed outside the private namespace.
    assert_eq!(
        tracefs_mounts(),
        before,
        "the test's own tracefs/debugfs mounts changed"
    );
}

/// A kernel thread has no user memory, executable or event loop: there is
/// nothing to trace, and a user who typed its PID by mistake expects to be
/// told so (exit 1), not a tracer that waits forever for events that cannot
/// come.
#[test]
fn kernel_thread_pid_is_an_error() {
    if !require_root("kernel_thread_pid_is_an_error") {
        return;
    }
    let comm = std::fs::read_to_string("/proc/2/comm").expect("reading /proc/2/comm");
    assert_eq!(comm.trim(), "kthreadd", "pid 2 is expected to be kthreadd");
    let run = run_to_end(
        "tracer on kthreadd",
        tracer_cmd(&["attach", "--json", "--pid", "2"]),
    );
    let line = run.assert_failed("tracer --pid 2 (kthreadd)", &[1]);
    let lower = line.to_lowercase();
    assert!(
        line.contains('2') && lower.contains("kernel thread"),
        "the error must name PID 2 and say it is a kernel thread: {line}"
    );
}

/// A zombie has exited already; only its exit status is left. Like a PID
/// with no process (tests/attach_exit.rs), it is an error: exit 1 with a
/// message naming the PID and saying it has exited.
#[test]
fn zombie_pid_is_an_error() {
    if !require_root("zombie_pid_is_an_error") {
        return;
    }
    // A child of this test that exits and is not reaped until the end.
    let mut zombie = std::process::Command::new("true")
        .spawn()
        .expect("starting true");
    let zpid = zombie.id();
    let state = || {
        std::fs::read_to_string(format!("/proc/{zpid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while state().as_deref() != Some("Z") {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {zpid} did not become a zombie (state {:?})",
            state()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let run = run_to_end(
        "tracer on a zombie",
        tracer_cmd(&["attach", "--json", "--pid", &zpid.to_string()]),
    );
    assert_eq!(
        state().as_deref(),
        Some("Z"),
        "the zombie must still be there"
    );
    let _ = zombie.wait();
    let line = run.assert_failed(&format!("tracer --pid {zpid} (a zombie)"), &[1]);
    let lower = line.to_lowercase();
    assert!(
        line.contains(&zpid.to_string()) && (lower.contains("zombie") || lower.contains("exited")),
        "the error must name PID {zpid} and say it has exited (is a zombie): {line}"
    );
}

/// Bad flag values are rejected before anything is loaded, with a message
/// that names the flag.
#[test]
fn bad_flag_values_name_the_flag() {
    if !require_root("bad_flag_values_name_the_flag") {
        return;
    }
    let node = live_node();
    let pid = node.pid().to_string();
    let mut problems = Vec::new();
    for (args, flag) in [
        (vec!["--ring-bytes", "1000"], "--ring-bytes"),
        (vec!["--ring-bytes", "12288"], "--ring-bytes"),
        (vec!["--duration", "-1"], "--duration"),
        (vec!["--duration=-1"], "--duration"),
        (vec!["--duration", "0"], "--duration"),
    ] {
        let mut all = vec!["attach", "--json", "--pid", &pid];
        all.extend(&args);
        let what = format!("tracer {}", all.join(" "));
        let run = run_to_end(&what, tracer_cmd(&all));
        // Checks that panic on a hang, a panic or stray output.
        let line = run.assert_failed(&what, &[1, 2]);
        if !run.stderr_text().contains(flag) {
            problems.push(format!(
                "`{what}` exited {} but its message does not name {flag}: {line:?} (stderr: \
                 {:?})",
                run.status.expect("exited"),
                run.stderr_text()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    drop(node);
}
