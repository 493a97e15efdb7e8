//! Event-loop truth: a turn's time blocked in epoll is told apart from its
//! busy time wherever the callbacks ran — a request handler (inside
//! uv__io_poll), a timer, an immediate, an fs callback — and agrees with
//! node's own `performance.eventLoopUtilization()`. Needs root.

mod common;

use std::time::Duration;

use common::{StdoutTo, Tracer, require_root, start_node};
use serde_json::Value;

/// A 300 ms spin, less scheduling noise.
const STALL_MIN_NS: u64 = 290_000_000;

fn ts(e: &Value) -> u64 {
    e["ts_ns"].as_u64().unwrap_or(0)
}

#[test]
fn blocked_and_busy_time_per_turn() {
    if !require_root("blocked_and_busy_time_per_turn") {
        return;
    }
    let (mut node, _) = start_node("event_loop.js", &[], &[], StdoutTo::Pipe);
    let pid = node.pid();
    // Every turn, so that the phases' sums are complete.
    let tracer = Tracer::attach(&[pid], &["--duration", "60", "--loop-threshold-ms", "0"]);
    node.send_line("go");
    let status = node.expect_exit(Duration::from_secs(30));
    assert!(status.success(), "event_loop.js failed: {status}");
    let run = tracer.finish(Duration::from_secs(75));

    // The fixture's phase markers, in order, with the time each was written.
    let markers: Vec<(String, u64)> = run
        .of("log", pid)
        .into_iter()
        .filter_map(|e| Some((e["text"].as_str()?.to_string(), ts(e))))
        .collect();
    let names: Vec<&str> = markers
        .iter()
        .map(|(t, _)| t.split(" idle_ms").next().unwrap_or(t))
        .collect();
    assert_eq!(
        names,
        [
            "phase idle",
            "stall http",
            "stall timer",
            "stall immediate",
            "stall fs",
            "phase elu",
            "elu",
            "done"
        ],
        "the fixture's markers, as captured\ntracer stderr:\n{}",
        run.stderr_text()
    );
    let window = |i: usize| (markers[i].1, markers[i + 1].1);
    let loops = run.of("loop", pid);
    let turns_in = |(from, to): (u64, u64)| -> Vec<&Value> {
        loops
            .iter()
            .copied()
            .filter(|e| ts(e) > from && ts(e) <= to)
            .collect()
    };
    let shown = |turns: &[&Value]| -> String {
        turns
            .iter()
            .map(|e| format!("busy={} poll={}", e["busy_ns"], e["poll_ns"]))
            .collect::<Vec<_>>()
            .join(", ")
    };

    // An idle loop is blocked in epoll nearly all the time.
    let idle = turns_in(window(0));
    let busy: u64 = idle.iter().filter_map(|e| e["busy_ns"].as_u64()).sum();
    let blocked: u64 = idle.iter().filter_map(|e| e["poll_ns"].as_u64()).sum();
    assert!(
        idle.len() >= 15,
        "a 100 ms interval over 2 s makes about 20 turns, got {}",
        idle.len()
    );
    let blocked_share = blocked as f64 / (blocked + busy) as f64;
    eprintln!(
        "idle: {} turns, {:.4} of the time blocked",
        idle.len(),
        blocked_share
    );
    // Not 1.0: a turn's wake-up (the timer fires, the thread waits for a
    // core, the callback runs) is busy time, 1-4 ms per 100 ms turn on a
    // loaded 2-core CI machine (0.981 seen there); a stall is 300 ms.
    assert!(
        blocked_share >= 0.95,
        "idle: {:.4} of the time blocked, expected >= 0.95 ({})",
        blocked_share,
        shown(&idle)
    );

    // Each stall is one turn with >= 290 ms busy, whichever callback ran it.
    for (i, kind) in ["http", "timer", "immediate", "fs"].iter().enumerate() {
        let turns = turns_in(window(i + 1));
        let stalled: Vec<&Value> = turns
            .iter()
            .copied()
            .filter(|e| e["busy_ns"].as_u64().unwrap_or(0) >= STALL_MIN_NS)
            .collect();
        assert_eq!(
            stalled.len(),
            1,
            "a 300 ms stall in a {kind} callback must be one turn busy >= 290 ms; turns: {}",
            shown(&turns)
        );
        let busy = stalled[0]["busy_ns"].as_u64().unwrap_or(0);
        eprintln!("stall in a {kind} callback: one turn busy {busy} ns");
        assert!(
            busy < 1_000_000_000,
            "{kind}: busy {busy} ns for a 300 ms stall"
        );
    }

    // Node's own view of the ELU phase and the tracer's agree.
    let elu_line = &markers[6].0;
    let node_util: f64 = elu_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("utilization="))
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no utilization in {elu_line:?}"));
    // A turn starts with its epoll wait; the markers are written from timer
    // callbacks, so the turns that *start* between the two markers cover
    // node's measurement up to the microseconds after each marker.
    let (from, to) = window(5);
    let turns: Vec<&Value> = loops
        .iter()
        .copied()
        .filter(|e| {
            let span = e["busy_ns"].as_u64().unwrap_or(0) + e["poll_ns"].as_u64().unwrap_or(0);
            let start = ts(e).saturating_sub(span);
            start >= from && start < to
        })
        .collect();
    let busy: u64 = turns.iter().filter_map(|e| e["busy_ns"].as_u64()).sum();
    let blocked: u64 = turns.iter().filter_map(|e| e["poll_ns"].as_u64()).sum();
    let tracer_util = busy as f64 / (busy + blocked) as f64;
    eprintln!("elu phase: tracer {tracer_util:.4}, node {node_util:.4}");
    assert!(
        (0.3..0.7).contains(&node_util),
        "the fixture spins half the time; node says {node_util}"
    );
    assert!(
        (tracer_util - node_util).abs() <= 0.05,
        "utilization: tracer {tracer_util:.4}, node {node_util:.4} (differ by more than 0.05); \
         turns: {}",
        shown(&turns)
    );
    run.assert_clean_end();
}
