//! `tracer agent --probe uprobe:uv_fs_open --probe-record args`: a node
//! process that starts AFTER the agent is ready is found (by its exec),
//! probed before it does its work, and the files its script opens are
//! reported exactly, under its pid, on the agent's stdout and in a real
//! `tracer aggregator` (its events API, `tracer timeline --kind probe` and
//! `tracer tail --kind probe`);
//! when the process exits its probes are detached.
//!
//! The agent is scoped with `--match` to this test's own temporary
//! directory, so it probes no process but the one started here.
//! Needs root (loads BPF programs).

mod aggregator_common;
mod common;
mod http_common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{StdoutTo, TRACER, TempDir, require_root, start_node};
use http_common::{free_port, start_agent};
use serde_json::Value;

/// How long events may take to reach the aggregator (the forwarder
/// batches; this bounds a failing test, not a passing one).
const SETTLE: Duration = Duration::from_secs(60);

/// The opens tests/fixtures/probe/fs_open.js makes in its directory, in
/// order: (file, O_ACCMODE). writeFileSync, readFileSync, fs.open(w),
/// fs.promises.writeFile.
fn expected() -> Vec<(String, i64)> {
    vec![
        ("/one.txt".into(), libc::O_WRONLY as i64),
        ("/one.txt".into(), libc::O_RDONLY as i64),
        ("/two.txt".into(), libc::O_WRONLY as i64),
        ("/three.txt".into(), libc::O_WRONLY as i64),
    ]
}

/// (file under `dir`, O_ACCMODE) of every uv_fs_open args event of `pid`
/// whose path is in `dir`, in time order; panics on a probe event of any
/// other process or probe.
fn opens_in(events: &[Value], pid: u32, dir: &str) -> Vec<(String, i64)> {
    let mut probes: Vec<&Value> = events.iter().filter(|e| e["kind"] == "probe").collect();
    probes.sort_by_key(|e| e["ts_ns"].as_u64());
    let mut out = Vec::new();
    for e in probes {
        assert_eq!(e["pid"], pid, "a probe event of another process: {e}");
        assert_eq!(e["probe"], "uprobe:uv_fs_open", "{e}");
        assert_eq!(e["point"], "uv_fs_open", "{e}");
        assert_eq!(e["object"], "/usr/bin/node", "{e}");
        assert_eq!(e["record"], "args", "{e}");
        let args = e["args"].as_array().expect("args events carry args");
        assert_eq!(args.len(), 4, "--probe-args names four: {e}");
        let Some(path) = args[2].as_str() else {
            panic!("the path (arg2) is a string: {e}");
        };
        if let Some(rest) = path.strip_prefix(dir) {
            let flags = args[3].as_i64().expect("flags (arg3) are an integer");
            out.push((rest.to_string(), flags & 3));
        }
    }
    out
}

fn parse_ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn agent_probes_a_node_process_that_starts_later() {
    if !require_root("agent_probes_a_node_process_that_starts_later") {
        return;
    }
    let agg_dir = aggregator_common::TempDir::new("agent-probe");
    let token = agg_dir.token_file();
    let aggregator = aggregator_common::Aggregator::start(agg_dir.path(), &token, &[]);
    let files = TempDir::new("agent-probe");
    let dir = files.path().display().to_string();
    let spool = files.path().join("spool");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut agent = start_agent(&[
        "--match",
        &dir.replace('.', "\\."),
        "--metrics-listen",
        &metrics,
        "--aggregator",
        &aggregator.url(),
        "--token-file",
        token.to_str().unwrap(),
        "--spool",
        spool.to_str().unwrap(),
        "--probe",
        "uprobe:uv_fs_open",
        "--probe-record",
        "args",
        "--probe-args",
        "int,int,str,int",
    ]);

    // Started after the agent is ready: found through its exec.
    let (mut node, _) = start_node("probe/fs_open.js", &[], &[&dir], StdoutTo::Pipe);
    let pid = node.pid();
    let attached = format!("tracer: probes attached to PID {pid}: ");
    agent
        .proc
        .stderr
        .wait_for("the probes attached to the new node process", SETTLE, |l| {
            l.starts_with(&attached)
        });
    node.send_line("go");
    node.stderr
        .wait_for("DONE", Duration::from_secs(30), |l| l == "DONE");
    node.send_line("bye");
    assert!(node.expect_exit(Duration::from_secs(10)).success());
    let detached = format!("tracer: PID {pid} exited: probes detached");
    agent
        .proc
        .stderr
        .wait_for("the probes detached on exit", SETTLE, |l| l == detached);

    // The aggregator has them, through its events API...
    let deadline = Instant::now() + SETTLE;
    let stored = loop {
        let (status, body) = aggregator_common::http(
            aggregator.addr,
            "GET",
            "/v1/events?kind=probe&since=0&limit=1000",
            &[("Authorization", &aggregator_common::auth())],
            b"",
        );
        assert_eq!(status, 200, "{body}");
        let events = parse_ndjson(&body);
        let opens = opens_in(&events, pid, &dir);
        if opens.len() >= expected().len() || Instant::now() > deadline {
            break opens;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stored, expected(), "probe events in the aggregator");

    // ... and through `tracer timeline --kind probe`.
    let out = Command::new(TRACER)
        .args(["timeline", "--json", "--since", "1h", "--kind", "probe"])
        .args(["--aggregator", &aggregator.url(), "--token-file"])
        .arg(&token)
        .output()
        .expect("running tracer timeline");
    assert!(
        out.status.success(),
        "tracer timeline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let timeline = parse_ndjson(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        opens_in(&timeline, pid, &dir),
        expected(),
        "tracer timeline"
    );

    // ... and through `tracer grep`, by the text a probe hit prints (its
    // arguments: here the paths opened).
    let out = Command::new(TRACER)
        .args(["grep", "--json", "--since", "1h"])
        .arg(format!(
            r#"^uprobe:uv_fs_open node:uv_fs_open .* arg2="{}/"#,
            regex::escape(&dir)
        ))
        .args(["--aggregator", &aggregator.url(), "--token-file"])
        .arg(&token)
        .output()
        .expect("running tracer grep");
    assert!(
        out.status.success(),
        "tracer grep failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grepped = parse_ndjson(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(grepped.len(), expected().len(), "tracer grep: {grepped:?}");
    assert_eq!(opens_in(&grepped, pid, &dir), expected(), "tracer grep");

    // ... and through `tracer tail --kind probe` (the latest events).
    let out = Command::new(TRACER)
        .args(["tail", "--json", "-n", "100", "--kind", "probe"])
        .args(["--aggregator", &aggregator.url(), "--token-file"])
        .arg(&token)
        .output()
        .expect("running tracer tail");
    assert!(
        out.status.success(),
        "tracer tail failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tail = parse_ndjson(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(opens_in(&tail, pid, &dir), expected(), "tracer tail");

    // The agent's own stdout carries the same events.
    agent.interrupt();
    let run = agent.finish(Duration::from_secs(30));
    assert!(run.status.success(), "agent: {}", run.stderr_text());
    assert_eq!(
        opens_in(&run.events, pid, &dir),
        expected(),
        "probe events on the agent's stdout"
    );
    // Its summary counts them with the rest.
    let summary = run
        .events
        .iter()
        .find(|e| e["kind"] == "summary")
        .expect("the agent prints a summary");
    let printed = run.events.iter().filter(|e| e["kind"] == "probe").count();
    assert_eq!(summary["counts"]["probe"], printed as u64, "{summary}");
    assert!(
        !run.stderr_text().contains("panicked"),
        "{}",
        run.stderr_text()
    );
}
