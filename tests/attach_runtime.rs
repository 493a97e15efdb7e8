//! `tracer attach` sees node's garbage collections and blocked event-loop
//! turns. Needs root (loads BPF programs).

mod common;

use std::time::Duration;

use common::{StdoutTo, Tracer, now_ns, require_root, start_node};

#[test]
fn gc_events() {
    if !require_root("gc_events") {
        return;
    }
    let (mut node, _) = start_node("gc.js", &["--expose-gc"], &[], StdoutTo::Pipe);
    let pid = node.pid();
    let tracer = Tracer::attach(&[pid], &["--duration", "60"]);
    let go_ns = now_ns();
    node.send_line("go");
    let status = node.expect_exit(Duration::from_secs(20));
    let exit_ns = now_ns();
    assert!(status.success(), "gc.js failed: {status}");
    let run = tracer.finish(Duration::from_secs(75));

    let gcs = run.of("gc", pid);
    let shown: Vec<String> = gcs.iter().map(|e| e.to_string()).collect();
    // Five gc() calls after `go`, each one a full CollectGarbage. There may be
    // more collections (young generation) but not fewer.
    let in_window = gcs
        .iter()
        .filter(|e| {
            e["ts_ns"]
                .as_u64()
                .is_some_and(|t| t + 1_000_000_000 >= go_ns && t <= exit_ns + 1_000_000_000)
        })
        .count();
    assert!(
        in_window >= 5,
        "expected at least 5 gc events for pid {pid} between `go` and the exit, got {in_window} \
         ({} in all): {shown:#?}\ntracer stderr:\n{}",
        gcs.len(),
        run.stderr_text()
    );
    for e in &gcs {
        let d = e["duration_ns"].as_u64();
        assert!(
            d.is_some_and(|d| d > 0 && d < 5_000_000_000),
            "gc duration_ns must be > 0 and sane (< 5 s): {e}"
        );
    }
    // The run itself ended cleanly (status 0, summary last, counts match).
    run.assert_clean_end();
}

#[test]
fn blocked_loop_turns() {
    if !require_root("blocked_loop_turns") {
        return;
    }
    let (mut node, _) = start_node("loop.js", &[], &[], StdoutTo::Pipe);
    let pid = node.pid();
    let tracer = Tracer::attach(&[pid], &["--duration", "60"]);
    node.send_line("go");
    let status = node.expect_exit(Duration::from_secs(20));
    assert!(status.success(), "loop.js failed: {status}");
    let run = tracer.finish(Duration::from_secs(75));

    let loops = run.of("loop", pid);
    for e in &loops {
        assert!(
            e["poll_ns"].is_u64() && e["busy_ns"].is_u64(),
            "loop events carry integer poll_ns and busy_ns: {e}"
        );
        // Default --loop-threshold-ms 1: shorter turns are not reported.
        assert!(
            e["busy_ns"].as_u64().is_some_and(|b| b >= 1_000_000),
            "a loop turn busy for less than the 1 ms threshold was reported: {e}"
        );
    }
    // The fixture blocks the loop twice, 200 ms then 400 ms, in two separate
    // turns; nothing else it does comes close to 150 ms.
    let mut long: Vec<(u64, u64)> = loops
        .iter()
        .filter_map(|e| Some((e["ts_ns"].as_u64()?, e["busy_ns"].as_u64()?)))
        .filter(|&(_, busy)| busy >= 150_000_000)
        .collect();
    long.sort_unstable();
    let busy: Vec<u64> = long.iter().map(|&(_, b)| b).collect();
    let all: Vec<String> = loops.iter().map(|e| e.to_string()).collect();
    assert!(
        busy.len() == 2
            && (200_000_000..390_000_000).contains(&busy[0])
            && (400_000_000..1_500_000_000).contains(&busy[1]),
        "expected two loop events for pid {pid}: busy_ns in [200 ms, 390 ms) then in \
         [400 ms, 1.5 s); got busy_ns {busy:?} among {all:#?}\ntracer stderr:\n{}",
        run.stderr_text()
    );
    // The run itself ended cleanly (status 0, summary last, counts match).
    run.assert_clean_end();
}
