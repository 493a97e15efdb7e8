//! Two `tracer attach` runs on the same node process at the same time each
//! see every line it writes. Needs root (loads BPF programs).

mod common;

use std::time::Duration;

use common::{
    StdoutTo, TempDir, Tracer, assert_log_lines, logs_fixture_lines, require_root, start_node,
};

#[test]
fn two_tracers_on_one_process() {
    if !require_root("two_tracers_on_one_process") {
        return;
    }
    let dir = TempDir::new("two-tracers");
    let log_path = dir.path().join("app.log");
    let log_arg = log_path.to_str().expect("utf-8 path");
    let (mut node, _) = start_node("logs.js", &[], &[log_arg], StdoutTo::Pipe);
    let pid = node.pid();

    let first = Tracer::attach(&[pid], &["--duration", "60"]);
    let second = Tracer::attach(&[pid], &["--duration", "60"]);
    node.send_line("go");
    let status = node.expect_exit(Duration::from_secs(20));
    assert!(status.success(), "logs.js failed: {status}");
    let first = first.finish(Duration::from_secs(75));
    let second = second.finish(Duration::from_secs(75));

    let expected = logs_fixture_lines(&log_path);
    for (run, who) in [(&first, "first tracer"), (&second, "second tracer")] {
        assert_log_lines(run, pid, "node", &expected, who);
        let exits = run.of("exit", pid);
        assert!(
            exits.len() == 1 && exits[0]["exit_code"] == 0,
            "{who}: expected one exit event with exit_code 0, got {exits:?}"
        );
        run.assert_clean_end();
    }
}
