//! `tracer attach` captures the lines a running node process writes to
//! stdout, stderr and a log file: every line once, byte-exact, on the right
//! stream. Needs root (loads BPF programs).

mod common;

use std::time::Duration;

use common::{
    LogLine, StdoutTo, TempDir, Tracer, assert_log_lines, logs_fixture_lines, require_root,
    start_node,
};

/// The fixture exits by itself after writing; the tracer should then end on
/// its own. `--duration` only bounds the run if it does not.
const DURATION_CAP: &str = "60";
const FINISH_TIMEOUT: Duration = Duration::from_secs(75);

#[test]
fn logs_with_piped_stdout() {
    if !require_root("logs_with_piped_stdout") {
        return;
    }
    let dir = TempDir::new("logs-pipe");
    let log_path = dir.path().join("app.log");
    let log_arg = log_path.to_str().expect("utf-8 path");
    let (mut node, _) = start_node("logs.js", &[], &[log_arg], StdoutTo::Pipe);
    let pid = node.pid();

    let tracer = Tracer::attach(&[pid], &["--duration", DURATION_CAP]);
    node.send_line("go");
    let status = node.expect_exit(Duration::from_secs(20));
    assert!(status.success(), "logs.js failed: {status}");
    let run = tracer.finish(FINISH_TIMEOUT);

    let expected = logs_fixture_lines(&log_path);
    // The fixture really wrote those lines (this checks the fixture, and that
    // attaching did not disturb the process).
    node.drain(Duration::from_secs(5));
    let own_stdout: Vec<&String> = node.stdout.as_ref().expect("piped").seen().iter().collect();
    let want_stdout: Vec<&String> = expected
        .iter()
        .filter(|l| l.stream == "stdout")
        .map(|l| &l.text)
        .collect();
    assert_eq!(own_stdout, want_stdout, "the fixture's own stdout");
    let file = std::fs::read_to_string(&log_path).expect("the fixture wrote its log file");
    assert_eq!(
        file,
        "file line 1 appended\nfile line 2 appended\nfile line 3 appended\n"
    );

    assert_log_lines(&run, pid, "node", &expected, "stdout piped");
    // The run itself ended cleanly (status 0, summary last, counts match).
    run.assert_clean_end();
}

#[test]
fn logs_with_stdout_redirected_to_a_file() {
    if !require_root("logs_with_stdout_redirected_to_a_file") {
        return;
    }
    let dir = TempDir::new("logs-file");
    let log_path = dir.path().join("app.log");
    let out_path = dir.path().join("stdout.txt");
    let log_arg = log_path.to_str().expect("utf-8 path");
    let (mut node, _) = start_node("logs.js", &[], &[log_arg], StdoutTo::File(out_path.clone()));
    let pid = node.pid();

    let tracer = Tracer::attach(&[pid], &["--duration", DURATION_CAP]);
    node.send_line("go");
    let status = node.expect_exit(Duration::from_secs(20));
    assert!(status.success(), "logs.js failed: {status}");
    let run = tracer.finish(FINISH_TIMEOUT);

    // fd 1 is still the process's stdout when it points to a regular file:
    // its lines are `stdout` lines (docs/events.md: "Each write() to stdout
    // (fd 1), stderr (fd 2) or a regular file"), without a path.
    let expected = logs_fixture_lines(&log_path);
    let mut want_file = String::new();
    for l in expected.iter().filter(|l| l.stream == "stdout") {
        want_file.push_str(&l.text);
        want_file.push('\n');
    }
    let got_file = std::fs::read_to_string(&out_path).expect("stdout file");
    assert!(
        got_file == want_file,
        "the fixture's own stdout file differs from the expected lines"
    );

    assert_log_lines(&run, pid, "node", &expected, "stdout redirected to a file");
    // The run itself ended cleanly (status 0, summary last, counts match).
    run.assert_clean_end();
}

/// `node app.js | slow-consumer`: when the pipe is full node queues its
/// writes and later flushes them in batches with writev() (seen with strace:
/// 3000 lines went out as ~530 write() and 5 writev() calls). Every line must
/// still be captured once.
#[test]
fn logs_under_pipe_backpressure() {
    if !require_root("logs_under_pipe_backpressure") {
        return;
    }
    let (mut node, _) = start_node("backpressure.js", &[], &[], StdoutTo::GatedPipe);
    let pid = node.pid();

    let tracer = Tracer::attach(&[pid], &["--duration", DURATION_CAP]);
    node.send_line("go");
    // Let node fill the pipe and queue the rest, then start reading.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        node.try_status().is_none(),
        "backpressure.js exited although nobody read its stdout yet"
    );
    node.release_stdout();
    let status = node.expect_exit(Duration::from_secs(20));
    assert!(status.success(), "backpressure.js failed: {status}");
    let run = tracer.finish(FINISH_TIMEOUT);

    let expected: Vec<LogLine> = (1..=3000)
        .map(|i| {
            let text = format!("backpressure line {i} {}", "y".repeat(100));
            LogLine::new("stdout", None, &text)
        })
        .collect();
    node.drain(Duration::from_secs(5));
    let own_stdout = node.stdout.as_ref().expect("piped").seen();
    assert!(
        own_stdout.len() == expected.len()
            && own_stdout.iter().zip(&expected).all(|(a, b)| *a == b.text),
        "the fixture's own stdout differs from the expected 3000 lines"
    );

    assert_log_lines(&run, pid, "node", &expected, "stdout under backpressure");
    // The run itself ended cleanly (status 0, summary last, counts match).
    run.assert_clean_end();
}

/// `--max-line-bytes N`: a longer line is emitted with its first N bytes and
/// `"truncated": true`, the rest of it is dropped, and the lines after it are
/// intact; a line of exactly N bytes is not cut.
#[test]
fn long_lines_are_cut_at_max_line_bytes() {
    if !require_root("long_lines_are_cut_at_max_line_bytes") {
        return;
    }
    let (mut node, _) = start_node("truncate.js", &[], &[], StdoutTo::Pipe);
    let pid = node.pid();
    let tracer = Tracer::attach(
        &[pid],
        &["--duration", DURATION_CAP, "--max-line-bytes", "1000"],
    );
    node.send_line("go");
    let status = node.expect_exit(Duration::from_secs(20));
    assert!(status.success(), "truncate.js failed: {status}");
    let run = tracer.finish(FINISH_TIMEOUT);

    let b_and_c = format!("{}{}", "b".repeat(700), "c".repeat(300));
    let expected = [
        LogLine::cut("stdout", &"a".repeat(1000)),
        LogLine::new("stdout", None, "after the long line"),
        LogLine::cut("stdout", &b_and_c),
        LogLine::new("stdout", None, "end"),
        LogLine::new("stderr", None, &"d".repeat(1000)),
        LogLine::new("stderr", None, "after the line at the cap"),
    ];
    assert_log_lines(&run, pid, "node", &expected, "--max-line-bytes 1000");
    // The run itself ended cleanly (status 0, summary last, counts match).
    run.assert_clean_end();
}
