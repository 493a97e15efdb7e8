//! `tracer attach` on a node whose executable exists only in another mount
//! namespace (a copy of node on a tmpfs mounted in a private namespace): the
//! runtime probes must still be resolved and attached (the tracer reads the
//! binary through /proc/PID/exe), and lines and the exit still captured.
//! Needs root (loads BPF programs, creates a mount namespace).

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{
    LogLine, Proc, TempDir, Tracer, assert_log_lines, fixtures_dir, require_root, short,
    wait_ready_line,
};

#[test]
fn node_from_a_private_mount_namespace() {
    if !require_root("node_from_a_private_mount_namespace") {
        return;
    }
    let dir = TempDir::new("mountns");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("creating the mount point");
    let mnt_str = mnt.to_str().expect("utf-8 path").to_owned();
    let exe = format!("{mnt_str}/node-copy");
    let fixture = fixtures_dir().join("busy_gc.js");

    // unshare without --fork execs sh, and sh execs node: one pid throughout.
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount -t tmpfs none \"$1\" && cp /usr/bin/node \"$1/node-copy\" && \
             exec \"$1/node-copy\" --expose-gc \"$2\"",
        )
        .args(["sh", &mnt_str])
        .arg(&fixture);
    let mut node = Proc::spawn("node-copy busy_gc.js", cmd, true);
    wait_ready_line(&mut node);
    let pid = node.pid();

    // The copy is invisible here: the tmpfs lives only in the node's namespace.
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).expect("reading /proc/PID/exe");
    assert_eq!(
        link,
        Path::new(&exe),
        "the fixture must run the copy of node"
    );
    assert!(
        !Path::new(&exe).exists(),
        "{exe} must not exist in the test's mount namespace"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&mnt_str),
        "the tmpfs at {mnt_str} leaked into the test's mount namespace:\n{mounts}"
    );
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").expect("own mnt ns");
    let node_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("node's mnt ns");
    assert_ne!(own_ns, node_ns, "node must run in its own mount namespace");

    let tracer = Tracer::attach(&[pid], &["--duration", "60"]);
    node.send_line("go");
    let status = node.expect_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "busy_gc.js under node-copy failed ({status}):\n{}",
        node.stderr.tail(20)
    );
    let run = tracer.finish(Duration::from_secs(75));

    // The runtime probes were attached, not skipped.
    let stderr = run.stderr_text();
    let attached = run
        .stderr
        .iter()
        .find(|l| l.starts_with(&format!("tracer: attached to PID {pid} ")))
        .unwrap_or_else(|| panic!("no `attached to PID {pid}` line on stderr:\n{stderr}"));
    assert!(
        attached.contains("loop") && attached.contains("gc"),
        "the loop and gc probes must be attached to pid {pid}: {attached}\nstderr:\n{stderr}"
    );
    assert!(
        !run.stderr
            .iter()
            .any(|l| l.to_lowercase().contains("skipp")),
        "no probe may be skipped for node-copy:\n{stderr}"
    );

    // One turn blocked for 300 ms; nothing else comes close to 150 ms.
    let loops = run.of("loop", pid);
    let long: Vec<u64> = loops
        .iter()
        .filter_map(|e| e["busy_ns"].as_u64())
        .filter(|&b| b >= 150_000_000)
        .collect();
    assert!(
        long.len() == 1 && (300_000_000..1_500_000_000).contains(&long[0]),
        "expected one loop event with busy_ns in [300 ms, 1.5 s) for pid {pid}, got busy_ns \
         {long:?} among {} loop events: {:?}\nstderr:\n{stderr}",
        loops.len(),
        loops
            .iter()
            .map(|e| short(&e.to_string()))
            .collect::<Vec<_>>()
    );
    // Three gc() calls after `go`: at least three collections.
    let gcs = run.of("gc", pid);
    assert!(
        gcs.len() >= 3
            && gcs.iter().all(|e| e["duration_ns"]
                .as_u64()
                .is_some_and(|d| d > 0 && d < 5_000_000_000)),
        "expected at least 3 gc events with a sane duration for pid {pid}, got {:?}\n\
         stderr:\n{stderr}",
        gcs.iter().map(|e| e.to_string()).collect::<Vec<_>>()
    );

    let mut expected: Vec<LogLine> = (1..=3)
        .map(|i| LogLine::new("stdout", None, &format!("busy_gc line {i} of 3")))
        .collect();
    expected.push(LogLine::new("stdout", None, "done"));
    assert_log_lines(&run, pid, "node-copy", &expected, "node-copy");
    let exits = run.of("exit", pid);
    assert!(
        exits.len() == 1 && exits[0]["exit_code"] == 0,
        "expected one exit event with exit_code 0 for pid {pid}, got {exits:?}"
    );
    run.assert_clean_end();
}
