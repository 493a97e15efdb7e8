//! `tracer logpoint add|list|rm` on a running node HTTP server (started
//! before tracer, in a network namespace of the test's own, so tracer
//! reaches it through setns and port 9229 is the test's alone):
//! - each request that runs the line yields exactly one `logpoint` event in
//!   `tracer attach` output, with the rendered text, the resolved location
//!   and the `req_id` of the `http` event of that request; none after `rm`;
//!   the server's own stdout is exactly what it writes without logpoints,
//!   and node's inspector notices on its stderr become `inspector` events;
//! - the inspector port is closed after every operation (a connect fails);
//! - `rm` leaves nothing: no `__tracer` global, no output file;
//! - the rate cap, `--condition`, `--max-hits`, `--ttl`, two logpoints on
//!   one line;
//! - clear errors: no matching script, several, no code at the line, a
//!   template or condition that does not compile; none leaves anything;
//! - `--match` selects processes by command line;
//! - under concurrent load: one event per request, exact text, a req_id
//!   only when it is that request's;
//! - through `tracer agent` to a real aggregator: `tracer timeline --kind
//!   logpoint` and `tracer tail --kind logpoint` return exactly the hits,
//!   with their requests' req_ids.
//!
//! Needs root (BPF for `tracer attach`; SIGUSR1, setns for the rest).

mod aggregator_common;
mod common;
mod inspector_common;

use std::time::{Duration, Instant};

use common::{Tracer, fixtures_dir, require_root};
use inspector_common::{Netns, audit_log, eval_value, is_inspector_notice, tracer_err, tracer_ok};
use serde_json::Value;

const INSPECTOR_PORT: u16 = 9229;

fn fixture_path() -> String {
    fixtures_dir()
        .join("logpoint_server.js")
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

fn add_json(audit: &std::path::PathBuf, pid: u32, args: &[&str]) -> Value {
    let pid_s = pid.to_string();
    let mut all = vec!["logpoint", "add", "--pid", &pid_s, "--json"];
    all.extend_from_slice(args);
    let out = tracer_ok(audit, &all);
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("logpoint add --json printed no JSON ({e}): {out}"));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["pid"], pid, "{v}");
    v["result"].clone()
}

fn list_json(audit: &std::path::PathBuf, pid: u32) -> Vec<Value> {
    let out = tracer_ok(
        audit,
        &["logpoint", "list", "--pid", &pid.to_string(), "--json"],
    );
    let v: Value = serde_json::from_str(out.trim()).expect("list --json");
    v["result"].as_array().cloned().unwrap_or_default()
}

fn output_file(pid: u32) -> String {
    format!("/dev/shm/tracer-logpoints-{pid}.jsonl")
}

fn file_lines(pid: u32) -> Vec<Value> {
    std::fs::read_to_string(output_file(pid))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("logpoint file line is JSON"))
        .collect()
}

fn assert_closed(ns: &Netns, when: &str) {
    assert!(
        !ns.port_open(INSPECTOR_PORT),
        "the inspector port {INSPECTOR_PORT} must be closed {when}"
    );
}

#[test]
fn logpoint_lines_reach_attach_with_their_request() {
    if !require_root("logpoint_lines_reach_attach_with_their_request") {
        return;
    }
    let ns = Netns::new("attach");
    let audit = audit_log("attach");
    let (mut node, port) = ns.start_node("logpoint_server.js", &[], &[]);
    let port: u16 = port.parse().expect("READY <port>");
    let pid = node.pid();
    let mut tracer = Tracer::attach(&[pid], &["--duration", "120"]);

    let lp = add_json(
        &audit,
        pid,
        &[
            "logpoint_server.js:25",
            "order ${order.id} qty=${order.qty} url=${req.url}",
        ],
    );
    let id = lp["id"].as_str().expect("id").to_owned();
    let fixture = fixture_path();
    assert_eq!(lp["url"], format!("file://{fixture}"), "{lp}");
    assert_eq!(
        (lp["line"].as_u64(), lp["column"].as_u64()),
        (Some(25), Some(17))
    );
    assert_closed(&ns, "after `logpoint add`");

    for i in 1..=5 {
        let body = ns.get(port, &format!("/orders/a{i}?qty={i}"));
        assert_eq!(body, format!(r#"{{"id":"a{i}","total":{}}}"#, 3 * i));
    }
    let logpoints_of = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["kind"] == "logpoint" && e["pid"] == pid)
            .cloned()
            .collect()
    };
    let served = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["kind"] == "http" && e["pid"] == pid && e["side"] == "server")
            .count()
    };
    assert!(
        tracer.wait_events(Duration::from_secs(30), |ev| {
            logpoints_of(ev).len() >= 5 && served(ev) >= 5
        }),
        "5 logpoint and 5 http events expected; tracer stdout:\n{}",
        tracer.stdout().tail(30)
    );

    let rm = tracer_ok(&audit, &["logpoint", "rm", "--pid", &pid.to_string(), &id]);
    assert!(
        rm.contains(&format!("removed from PID {pid}: {id}")),
        "{rm}"
    );
    assert!(rm.contains("no logpoints left"), "{rm}");
    assert_closed(&ns, "after `logpoint rm`");
    assert_eq!(
        eval_value(&audit, pid, "typeof globalThis.__tracer"),
        "undefined",
        "rm must leave no global behind"
    );
    assert!(
        !std::path::Path::new(&output_file(pid)).exists(),
        "rm must remove the output file"
    );
    assert_closed(&ns, "after `eval`");
    for i in 6..=7 {
        ns.get(port, &format!("/orders/a{i}?qty={i}"));
    }
    assert!(
        tracer.wait_events(Duration::from_secs(30), |ev| served(ev) >= 7),
        "7 http events expected"
    );
    // Lines written after the last request have had time to arrive.
    std::thread::sleep(Duration::from_millis(500));
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(30));
    assert!(run.status.success(), "tracer attach: {}", run.stderr_text());

    // Exactly one event per request that ran the line, none after rm.
    let lps: Vec<&Value> = run.of("logpoint", pid);
    let texts: Vec<&str> = lps.iter().map(|e| e["text"].as_str().unwrap()).collect();
    let want: Vec<String> = (1..=5)
        .map(|i| format!("order a{i} qty={i} url=/orders/a{i}?qty={i}"))
        .collect();
    assert_eq!(texts, want, "logpoint texts");
    for e in &lps {
        assert_eq!(e["id"], id.as_str(), "{e}");
        assert_eq!(e["location"], format!("{fixture}:25:17"), "{e}");
        assert_eq!(e["tid"], pid, "the main thread ran the line: {e}");
        let path = e["text"].as_str().unwrap().rsplit("url=").next().unwrap();
        let http: Vec<&Value> = run
            .of("http", pid)
            .into_iter()
            .filter(|h| h["side"] == "server" && h["path"] == path)
            .collect();
        assert_eq!(http.len(), 1, "one http event for {path}");
        assert!(http[0]["req_id"].is_string(), "{}", http[0]);
        assert_eq!(
            e["req_id"], http[0]["req_id"],
            "the logpoint line carries the req_id of its request: {e}"
        );
    }
    // The output file's lines are logpoint events, not log lines.
    assert!(
        run.of("log", pid).iter().all(|e| !e["path"]
            .as_str()
            .unwrap_or("")
            .contains("tracer-logpoints")),
        "no `log` event for the logpoint file"
    );

    // The server's own output: stdout exactly as without logpoints; its
    // stderr holds READY and node's inspector notices only, and those are
    // `inspector` events, not the program's `log` lines.
    node.stderr.poll();
    node.stdout.as_mut().unwrap().poll();
    let stdout: Vec<String> = node.stdout.as_ref().unwrap().seen().to_vec();
    let want_stdout: Vec<String> = (1..=7).map(|i| format!("served a{i}")).collect();
    assert_eq!(stdout, want_stdout, "the server's own stdout");
    let notices: Vec<String> = node.stderr.seen()[1..].to_vec();
    assert!(
        notices.iter().all(|l| is_inspector_notice(l)),
        "only inspector notices after READY on stderr: {notices:?}"
    );
    assert!(
        notices.iter().any(|l| l.starts_with("Debugger listening")),
        "{notices:?}"
    );
    let inspector: Vec<&str> = run
        .of("inspector", pid)
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(inspector, notices, "inspector events = node's notices");
    assert!(
        run.of("log", pid).iter().all(|e| e["stream"] != "stderr"),
        "no inspector notice is reported as a `log` line"
    );

    // The audit trail: begin and end of each operation, in order.
    let audit_text = std::fs::read_to_string(&audit).expect("audit log written");
    let ops: Vec<(String, String)> = audit_text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("audit line is JSON");
            assert_eq!(v["pid"], pid, "{v}");
            (
                v["op"].as_str().unwrap().to_owned(),
                v["phase"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want_ops: Vec<(String, String)> = ["logpoint.add", "logpoint.rm", "eval"]
        .iter()
        .flat_map(|op| {
            [
                (op.to_string(), "begin".to_string()),
                (op.to_string(), "end".to_string()),
            ]
        })
        .collect();
    assert_eq!(ops, want_ops, "audit log:\n{audit_text}");
    let _ = std::fs::remove_file(&audit);
}

#[test]
fn logpoint_caps_conditions_and_ttl() {
    if !require_root("logpoint_caps_conditions_and_ttl") {
        return;
    }
    let ns = Netns::new("caps");
    let audit = audit_log("caps");
    let (_node, port) = ns.start_node("logpoint_server.js", &[], &[]);
    let port: u16 = port.parse().expect("READY <port>");
    let pid = _node.pid();

    // Rate cap: /burst runs price() 21 times in one go (once for the
    // request, 20 in a loop): 5 logged, 16 counted as dropped. Having
    // counted as many dropped as its rate, the logpoint is lifted until its
    // second ends, so a second /burst right after is not even seen.
    let rate = add_json(
        &audit,
        pid,
        &["logpoint_server.js:14", "p ${order.id}", "--rate", "5"],
    );
    assert_eq!(
        (rate["line"].as_u64(), rate["column"].as_u64()),
        (Some(14), Some(16))
    );
    let started = Instant::now();
    ns.get(port, "/burst?n=20");
    ns.get(port, "/burst?n=20");
    let both_bursts = started.elapsed();
    let l = list_json(&audit, pid);
    assert_eq!(l.len(), 1);
    // Only when both bursts fell in the logpoint's first second can the
    // second one's hits be said to be unseen (a loaded machine may take
    // longer; then the counts are those of two windows).
    if both_bursts < Duration::from_millis(800) {
        assert_eq!(
            (&l[0]["hits"], &l[0]["emitted"], &l[0]["dropped"]),
            (&Value::from(21), &Value::from(5), &Value::from(16)),
            "{}",
            l[0]
        );
        assert!(l[0]["unwatched_ms"].as_u64().unwrap() > 0, "{}", l[0]);
    } else {
        eprintln!("two requests took {both_bursts:?}: not checking that the second was unseen");
    }
    let rate_id = rate["id"].as_str().unwrap().to_owned();
    // The next line written, in a later second, carries the count.
    std::thread::sleep(Duration::from_millis(1100));
    ns.get(port, "/orders/d1?qty=1");
    let mut last = file_lines(pid).pop().expect("a line in the output file");
    let unwatched = last
        .as_object_mut()
        .and_then(|o| o.remove("unwatched_ms"))
        .and_then(|v| v.as_u64());
    assert!(
        unwatched.is_some_and(|ms| (1..=1000).contains(&ms)),
        "unwatched_ms: {unwatched:?}"
    );
    if both_bursts < Duration::from_millis(800) {
        assert_eq!(
            last,
            serde_json::json!({"lp": rate_id, "loc": format!("{}:14:16", fixture_path()),
                               "text": "p d1", "dropped": 16}),
            "the line after the suppressed hits"
        );
    }
    tracer_ok(
        &audit,
        &["logpoint", "rm", "--pid", &pid.to_string(), &rate_id],
    );
    assert_eq!(
        eval_value(&audit, pid, "typeof globalThis.__tracer"),
        "undefined"
    );

    // Two logpoints on one line: one with a condition, one with --max-hits.
    let even = add_json(
        &audit,
        pid,
        &[
            "logpoint_server.js:25",
            "even ${order.id}",
            "--condition",
            "order.qty % 2 === 0",
        ],
    );
    let first = add_json(
        &audit,
        pid,
        &[
            "logpoint_server.js:25",
            "first ${order.id}",
            "--max-hits",
            "2",
        ],
    );
    for i in 1..=6 {
        ns.get(port, &format!("/orders/c{i}?qty={i}"));
    }
    let l = list_json(&audit, pid);
    assert_eq!(l.len(), 1, "--max-hits 2 removed its logpoint: {l:?}");
    assert_eq!(l[0]["id"], even["id"]);
    assert_eq!(
        (&l[0]["hits"], &l[0]["emitted"]),
        (&Value::from(3), &Value::from(3))
    );
    let got: Vec<(String, String)> = file_lines(pid)
        .iter()
        .map(|v| {
            (
                v["lp"].as_str().unwrap().to_owned(),
                v["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let e = even["id"].as_str().unwrap().to_owned();
    let f = first["id"].as_str().unwrap().to_owned();
    assert_eq!(
        got,
        vec![
            (f.clone(), "first c1".to_owned()),
            (e.clone(), "even c2".to_owned()),
            (f, "first c2".to_owned()),
            (e.clone(), "even c4".to_owned()),
            (e, "even c6".to_owned()),
        ],
        "the output file"
    );
    let rm = tracer_ok(
        &audit,
        &["logpoint", "rm", "--pid", &pid.to_string(), "--all"],
    );
    assert!(rm.contains("no logpoints left"), "{rm}");
    assert!(list_json(&audit, pid).is_empty());
    assert!(!std::path::Path::new(&output_file(pid)).exists());

    // --ttl: the last logpoint expiring undoes everything by itself.
    add_json(
        &audit,
        pid,
        &["logpoint_server.js:19", "never", "--ttl", "1s"],
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        eval_value(&audit, pid, "typeof globalThis.__tracer"),
        "undefined"
    );
    assert!(!std::path::Path::new(&output_file(pid)).exists());
    assert_closed(&ns, "after the TTL test");
    let _ = std::fs::remove_file(&audit);
}

#[test]
fn logpoint_errors_are_clear_and_leave_nothing() {
    if !require_root("logpoint_errors_are_clear_and_leave_nothing") {
        return;
    }
    let ns = Netns::new("errors");
    let audit = audit_log("errors");
    let tag = format!("--tag=lp-errors-{}", std::process::id());
    let (node, _) = ns.start_node("logpoint_server.js", &[], &[&tag]);
    let pid = node.pid();
    let pid_s = pid.to_string();
    let add = |args: &[&str]| {
        let mut all = vec!["logpoint", "add", "--pid", pid_s.as_str()];
        all.extend_from_slice(args);
        tracer_err(&audit, &all)
    };
    let e = add(&["nothere.js:3", "x"]);
    assert!(
        e.contains(r#"no loaded script matches "nothere.js""#),
        "{e}"
    );
    let e = add(&["util.js:3", "x"]);
    let a = fixtures_dir().join("lp_mod/a/util.js");
    let b = fixtures_dir().join("lp_mod/b/util.js");
    assert!(e.contains(r#""util.js" matches 2 loaded scripts"#), "{e}");
    assert!(e.contains(&format!("file://{}", a.display())), "{e}");
    assert!(e.contains(&format!("file://{}", b.display())), "{e}");
    let e = add(&["logpoint_server.js:500", "x"]);
    assert!(
        e.contains("no code at or after logpoint_server.js:500"),
        "{e}"
    );
    let e = add(&["logpoint_server.js:14", "x ${oops"]);
    assert!(e.contains("is not closed"), "{e}");
    let e = add(&["logpoint_server.js:14", "x", "--condition", "a ==== b"]);
    assert!(e.contains("does not compile"), "{e}");
    let e = add(&["logpoint_server.js", "x"]);
    assert!(e.contains("must be FILE:LINE"), "{e}");
    // `a/util.js` is precise enough.
    let ok = tracer_ok(
        &audit,
        &["logpoint", "add", "--pid", &pid_s, "a/util.js:3", "unit"],
    );
    assert!(ok.contains(&format!("{}:3:", a.display())), "{ok}");
    tracer_ok(&audit, &["logpoint", "rm", "--pid", &pid_s, "--all"]);

    // --match selects by command line, like the agent.
    let out = tracer_ok(
        &audit,
        &["logpoint", "list", "--match", &tag[2..], "--json"],
    );
    let v: Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(
        (&v["pid"], &v["ok"]),
        (&Value::from(pid), &Value::from(true)),
        "{v}"
    );
    let e = tracer_err(
        &audit,
        &["logpoint", "list", "--match", "no-such-process-xyz"],
    );
    assert!(e.contains("matches no running node process"), "{e}");

    assert_eq!(
        eval_value(&audit, pid, "typeof globalThis.__tracer"),
        "undefined"
    );
    assert!(!std::path::Path::new(&output_file(pid)).exists());
    assert_closed(&ns, "after failed operations");
    let _ = std::fs::remove_file(&audit);
}

/// Under concurrent load (4 clients, 200 requests, uncapped): exactly one
/// `logpoint` event per request, each with its own request's values, and a
/// `req_id` only when it is that request's (never another one's).
#[test]
fn logpoint_under_concurrent_load_is_exact() {
    if !require_root("logpoint_under_concurrent_load_is_exact") {
        return;
    }
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 50;
    let ns = Netns::new("load");
    let audit = audit_log("load");
    let (_node, port) = ns.start_node("logpoint_server.js", &[], &[]);
    let port: u16 = port.parse().expect("READY <port>");
    let pid = _node.pid();
    let mut tracer = Tracer::attach(&[pid], &["--duration", "120"]);
    add_json(
        &audit,
        pid,
        &[
            "logpoint_server.js:25",
            "${order.id} ${req.url}",
            "--rate",
            "100000",
        ],
    );
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let ns = &ns;
            s.spawn(move || {
                for i in 0..PER_CLIENT {
                    let id = format!("l{c}x{i}");
                    let body = ns.get(port, &format!("/orders/{id}?qty={i}"));
                    assert_eq!(body, format!(r#"{{"id":"{id}","total":{}}}"#, 3 * i));
                }
            });
        }
    });
    let total = CLIENTS * PER_CLIENT;
    let count = |ev: &[Value], kind: &str| {
        ev.iter()
            .filter(|e| e["kind"] == kind && e["pid"] == pid && e["side"] != "client")
            .count()
    };
    assert!(
        tracer.wait_events(Duration::from_secs(60), |ev| {
            count(ev, "logpoint") >= total && count(ev, "http") >= total
        }),
        "{total} logpoint and http events expected"
    );
    tracer_ok(
        &audit,
        &["logpoint", "rm", "--pid", &pid.to_string(), "--all"],
    );
    std::thread::sleep(Duration::from_millis(300));
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(30));

    let mut texts: Vec<String> = run
        .of("logpoint", pid)
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect();
    texts.sort();
    let mut want: Vec<String> = (0..CLIENTS)
        .flat_map(|c| (0..PER_CLIENT).map(move |i| format!("l{c}x{i} /orders/l{c}x{i}?qty={i}")))
        .collect();
    want.sort();
    assert_eq!(texts, want, "one event per request, exact text");
    let http = run.of("http", pid);
    let mut tied = 0;
    for e in run.of("logpoint", pid) {
        let Some(req_id) = e["req_id"].as_str() else {
            continue;
        };
        let url = e["text"].as_str().unwrap().split(' ').nth(1).unwrap();
        let owner: Vec<&&Value> = http.iter().filter(|h| h["req_id"] == req_id).collect();
        assert_eq!(owner.len(), 1, "req_id {req_id} names one request: {e}");
        assert_eq!(
            owner[0]["path"], url,
            "a req_id is never another request's: {e}"
        );
        tied += 1;
    }
    eprintln!("{tied} of {total} logpoint lines tied to their request under load");
    let _ = std::fs::remove_file(&audit);
}

/// Runs a query client (`tracer timeline|tail ... --json`) against the
/// aggregator and returns the events it printed.
fn query(
    agg: &aggregator_common::Aggregator,
    token: &std::path::Path,
    args: &[&str],
) -> Vec<Value> {
    let out = std::process::Command::new(common::TRACER)
        .args(args)
        .args(["--json", "--aggregator", &agg.url(), "--token-file"])
        .arg(token)
        .output()
        .expect("running the query client");
    assert!(
        out.status.success(),
        "tracer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .filter(|v: &Value| v["kind"] != "summary")
        .collect()
}

#[test]
fn logpoint_lines_reach_the_aggregator() {
    if !require_root("logpoint_lines_reach_the_aggregator") {
        return;
    }
    let ns = Netns::new("agg");
    let audit = audit_log("agg");
    let dir = aggregator_common::TempDir::new("logpoint");
    let token = dir.path().join("token");
    std::fs::write(&token, aggregator_common::TOKEN).unwrap();
    let agg = aggregator_common::Aggregator::start(&dir.path().join("data"), &token, &[]);
    let (node, port) = ns.start_node("logpoint_server.js", &[], &[]);
    let port: u16 = port.parse().unwrap();
    let pid = node.pid();
    let mut cmd = std::process::Command::new(common::TRACER);
    cmd.args(["agent", "--pid", &pid.to_string(), "--quiet"])
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--aggregator",
            &agg.url(),
        ])
        .arg("--token-file")
        .arg(&token);
    let mut agent = common::Proc::spawn("tracer agent", cmd, true);
    agent
        .stderr
        .wait_for("the agent's ready line", Duration::from_secs(90), |l| {
            l == "tracer: ready"
        });
    let lp = add_json(&audit, pid, &["logpoint_server.js:25", "agg ${order.id}"]);
    for i in 1..=3 {
        ns.get(port, &format!("/orders/g{i}?qty={i}"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = query(
            &agg,
            &token,
            &["timeline", "--since", "5m", "--kind", "logpoint"],
        );
        if lines.len() >= 3 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    tracer_ok(
        &audit,
        &["logpoint", "rm", "--pid", &pid.to_string(), "--all"],
    );
    let texts: Vec<&str> = lines.iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        ["agg g1", "agg g2", "agg g3"],
        "timeline --kind logpoint"
    );
    let http = query(
        &agg,
        &token,
        &["timeline", "--since", "5m", "--kind", "http"],
    );
    for (i, e) in lines.iter().enumerate() {
        assert_eq!(e["id"], lp["id"], "{e}");
        assert_eq!(e["pid"], pid, "{e}");
        let path = format!("/orders/g{}?qty={}", i + 1, i + 1);
        let req = http
            .iter()
            .find(|h| h["path"] == path.as_str() && h["side"] == "server")
            .unwrap_or_else(|| panic!("no http event for {path}"));
        assert_eq!(e["req_id"], req["req_id"], "{e}");
    }
    let tailed = query(&agg, &token, &["tail", "--kind", "logpoint"]);
    assert_eq!(tailed, lines, "tail --kind logpoint shows the same lines");
    // `tracer grep` finds them by their text, exactly once each...
    let found = query(&agg, &token, &["grep", r"^agg g[13]$"]);
    assert_eq!(found, [lines[0].clone(), lines[2].clone()], "tracer grep");
    let counted = std::process::Command::new(common::TRACER)
        .args([
            "grep",
            "-c",
            "^agg g",
            "--aggregator",
            &agg.url(),
            "--token-file",
        ])
        .arg(&token)
        .output()
        .expect("running tracer grep -c");
    assert_eq!(
        String::from_utf8_lossy(&counted.stdout),
        "3\n",
        "tracer grep -c"
    );
    // ... and each is in the trace of the request it fired in, beside that
    // request's exchange.
    for (i, e) in lines.iter().enumerate() {
        let req_id = e["req_id"].as_str().unwrap();
        let trace = query(
            &agg,
            &token,
            &["timeline", "--since", "5m", "--trace", req_id],
        );
        let kinds: Vec<&str> = trace.iter().map(|t| t["kind"].as_str().unwrap()).collect();
        assert_eq!(
            trace
                .iter()
                .filter(|t| t["kind"] == "logpoint")
                .collect::<Vec<_>>(),
            [e],
            "timeline --trace {req_id}: {kinds:?}"
        );
        let path = format!("/orders/g{}?qty={}", i + 1, i + 1);
        assert!(
            trace
                .iter()
                .any(|t| t["kind"] == "http" && t["path"] == path.as_str()),
            "timeline --trace {req_id} has its exchange: {trace:?}"
        );
    }
    let _ = std::fs::remove_file(&audit);
}
