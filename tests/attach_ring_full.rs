//! `tracer attach --ring-bytes 4096`: a burst of log lines far bigger than the
//! kernel ring. What does not fit must be counted, never silently dropped or
//! corrupted: `lost` events (stage `ring`, `for_kind: "log"`), a summary whose
//! `lost.ring` adds them up, and every line that is reported byte-exact.
//! Needs root (loads BPF programs).

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use common::{
    Run, StdoutTo, TempDir, Tracer, check_common_fields, hostname, list_problems, require_root,
    short, start_node,
};
use serde_json::Value;

/// Lines in the burst, 200 bytes each (with the `\n`).
const COUNT: usize = 5000;

/// Line `i` (from 1) of tests/fixtures/burst.js, without its `\n`.
fn burst_line(i: usize) -> String {
    let mut s = format!("burst line {i:05} ");
    let mut k = 0;
    while s.len() < 199 {
        s.push(char::from(b'a' + u8::try_from((i + k) % 26).expect("< 26")));
        k += 1;
    }
    s
}

/// Like `Run::assert_clean_end`, but for a run that lost records: exit 0, no
/// panic, one `tracer: ready`, the summary last and counting exactly the
/// events printed (`lost` events included), every event with the common
/// fields (`lost` events are not about one process: their pid may be 0).
fn assert_ended_well_with_losses(run: &Run) {
    let stderr = run.stderr_text();
    assert!(
        run.status.success(),
        "the tracer should exit with status 0, got {}. Its stderr:\n{stderr}",
        run.status
    );
    assert!(
        !stderr.contains("panicked"),
        "the tracer panicked:\n{stderr}"
    );
    assert_eq!(
        run.stderr.iter().filter(|l| *l == "tracer: ready").count(),
        1,
        "`tracer: ready` exactly once; stderr:\n{stderr}"
    );
    let (summary, events) = run.events.split_last().expect("at least the summary");
    assert_eq!(
        summary["kind"],
        "summary",
        "the last stdout line must be the summary, got {}",
        short(&summary.to_string())
    );
    let host = hostname();
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        if e["kind"] == "lost" {
            let mut attributed = e.clone();
            // Not about one process: check the other common fields.
            attributed["pid"] = Value::from(1);
            attributed["tid"] = Value::from(1);
            check_common_fields(&attributed, &host, run.started_ns, run.ended_ns);
        } else {
            check_common_fields(e, &host, run.started_ns, run.ended_ns);
        }
        let kind = e["kind"].as_str().expect("kind").to_owned();
        assert_ne!(kind, "summary", "only the last line may be a summary");
        *counted.entry(kind).or_default() += 1;
    }
    let counts = summary["counts"]
        .as_object()
        .unwrap_or_else(|| panic!("summary.counts must be an object: {summary}"));
    let mut problems = Vec::new();
    for (kind, n) in &counted {
        if counts.get(kind).and_then(Value::as_u64) != Some(*n) {
            problems.push(format!(
                "summary.counts.{kind} = {:?}, but {n} `{kind}` events were printed",
                counts.get(kind)
            ));
        }
    }
    for (kind, n) in counts {
        let n = n.as_u64().unwrap_or(u64::MAX);
        if n != 0 && counted.get(kind).copied().unwrap_or(0) != n {
            problems.push(format!(
                "summary.counts.{kind} = {n} but {} such events were printed",
                counted.get(kind).copied().unwrap_or(0)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "summary {summary}:\n{}",
        list_problems(&problems)
    );
}

#[test]
fn tiny_ring_counts_what_it_loses() {
    if !require_root("tiny_ring_counts_what_it_loses") {
        return;
    }
    let dir = TempDir::new("ring-full");
    let out_path = dir.path().join("stdout.txt");
    let (mut node, _) = start_node(
        "burst.js",
        &[],
        &[&COUNT.to_string()],
        StdoutTo::File(out_path.clone()),
    );
    let pid = node.pid();
    let tracer = Tracer::attach(&[pid], &["--duration", "60", "--ring-bytes", "4096"]);
    node.send_line("go");
    let status = node.expect_exit(Duration::from_secs(30));
    assert!(status.success(), "burst.js failed: {status}");
    let run = tracer.finish(Duration::from_secs(75));

    // The fixture wrote exactly the lines this test builds.
    let lines: Vec<String> = (1..=COUNT).map(burst_line).collect();
    let mut want_file = lines.join("\n");
    want_file.push('\n');
    let got_file = std::fs::read_to_string(&out_path).expect("the fixture's stdout file");
    assert!(
        got_file == want_file,
        "burst.js wrote something else than the {COUNT} expected lines ({} bytes, want {})",
        got_file.len(),
        want_file.len()
    );
    assert!(lines.iter().all(|l| l.len() == 199));

    assert_ended_well_with_losses(&run);
    let stderr = run.stderr_text();
    let summary = run.events.last().expect("summary");

    // Losses: reported as events and added up in the summary.
    let mut problems = Vec::new();
    let lost: Vec<&Value> = run.events.iter().filter(|e| e["kind"] == "lost").collect();
    let mut lost_by: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in &lost {
        let count = e["count"].as_u64().unwrap_or(0);
        let stage = e["stage"].as_str().unwrap_or("?").to_owned();
        let for_kind = e["for_kind"].as_str().unwrap_or("").to_owned();
        if count == 0 {
            problems.push(format!("a lost event must count > 0: {e}"));
        }
        match stage.as_str() {
            "ring" if !for_kind.is_empty() => {}
            "ring" => problems.push(format!("a ring loss must say for_kind: {e}")),
            "decode" => problems.push(format!(
                "a decode loss is a bug (every record written is well-formed): {e}"
            )),
            _ => problems.push(format!("unknown loss stage: {e}")),
        }
        *lost_by.entry((stage, for_kind)).or_default() += count;
    }
    let ring_total: u64 = lost_by
        .iter()
        .filter(|((s, _), _)| s == "ring")
        .map(|(_, n)| n)
        .sum();
    let decode_total: u64 = lost_by
        .iter()
        .filter(|((s, _), _)| s == "decode")
        .map(|(_, n)| n)
        .sum();
    let lost_logs = lost_by
        .get(&("ring".to_owned(), "log".to_owned()))
        .copied()
        .unwrap_or(0);
    if lost_logs == 0 {
        problems.push(format!(
            "expected a `lost` event with stage ring, for_kind log and count > 0; lost events: \
             {lost_by:?}"
        ));
    }
    if summary["lost"]["ring"].as_u64() != Some(ring_total) {
        problems.push(format!(
            "summary.lost.ring must be the sum of the ring lost events' counts ({ring_total}): \
             {summary}"
        ));
    }
    if summary["lost"]["decode"].as_u64() != Some(decode_total) {
        problems.push(format!(
            "summary.lost.decode must be the sum of the decode lost events' counts \
             ({decode_total}): {summary}"
        ));
    }

    // Lines: byte-exact or marked truncated; never twice; in write order.
    let index: HashMap<&str, usize> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut seen_exact: Vec<usize> = Vec::new();
    let mut truncated = 0usize;
    for e in run.of("log", pid) {
        let text = e["text"].as_str().unwrap_or("");
        let is_cut = e.get("truncated") == Some(&Value::Bool(true));
        if e["stream"] != "stdout" || e.get("path").is_some() {
            problems.push(format!("not a stdout line: {}", short(&e.to_string())));
        }
        match index.get(text) {
            Some(&i) if !is_cut => seen_exact.push(i),
            _ if is_cut => truncated += 1,
            _ => problems.push(format!(
                "reported line is none of the written lines and not marked truncated: {}",
                short(&e.to_string())
            )),
        }
    }
    let mut sorted = seen_exact.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != seen_exact.len() {
        problems.push(format!(
            "{} lines were reported more than once",
            seen_exact.len() - sorted.len()
        ));
    } else if sorted != seen_exact {
        problems.push("lines were reported out of write order".to_owned());
    }
    let reported = seen_exact.len() + truncated;
    if reported >= COUNT {
        problems.push(format!(
            "{reported} of {COUNT} lines were reported with a 4096-byte ring: nothing was lost, \
             the burst is too small to test loss"
        ));
    }
    // Each 200-byte write is one record: every line is either reported or
    // counted as a lost log record.
    if reported as u64 + lost_logs != COUNT as u64 {
        problems.push(format!(
            "lines reported ({} exact + {truncated} truncated) + log records lost ({lost_logs}) \
             = {} != the {COUNT} lines written",
            seen_exact.len(),
            reported as u64 + lost_logs
        ));
    }

    // The exit is reported once: with its code, or with `null` when its
    // record was among those lost (the pidfd fallback).
    let exits = run.of("exit", pid);
    let exit_lost = lost_by.contains_key(&("ring".to_owned(), "exit".to_owned()));
    let exit_ok = exits.len() == 1
        && (exits[0]["exit_code"] == 0 || (exit_lost && exits[0]["exit_code"].is_null()));
    if !exit_ok {
        problems.push(format!(
            "expected one exit event with exit_code 0 (or null if an exit record was lost), got \
             {exits:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "pid {pid}, {} lines reported exactly, {truncated} truncated, lost {lost_by:?}, \
         summary {summary}:\n{}\ntracer stderr:\n{stderr}",
        seen_exact.len(),
        list_problems(&problems)
    );
}
