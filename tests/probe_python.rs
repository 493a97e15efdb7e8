//! `tracer probe` on python3.11's own USDT points (all behind semaphores):
//! function__entry's string and integer arguments and gc__start's memory
//! dereference (`-4@112(%rsp)`), for a script whose calls are known.
//! Needs root (loads BPF programs).

mod common;
mod probe_common;

use std::{process::Command, time::Duration};

use common::{Proc, fixtures_dir, require_root, wait_ready_line};
use probe_common::{ProbeRun, args_of, probe_list};
use serde_json::json;

const PYTHON: &str = "/usr/bin/python3.11";

#[test]
fn python_function_entry_and_gc_points() {
    if !require_root("python_function_entry_and_gc_points") {
        return;
    }
    let script = fixtures_dir().join("probe/calls.py");
    let script_path = script.display().to_string();
    let mut cmd = Command::new(PYTHON);
    cmd.arg(&script);
    let mut py = Proc::spawn("calls.py", cmd, true);
    wait_ready_line(&mut py);
    let pid = py.pid();

    let listed = probe_list(&["--pid", &pid.to_string(), "python:*"]);
    assert_eq!(
        listed.lines().count(),
        8,
        "python3.11 has 8 points:\n{listed}"
    );
    assert!(
        listed.lines().all(|l| !l.ends_with("semaphore=0x0")),
        "all of python's points have semaphores:\n{listed}"
    );

    // python 3.11 fires function__entry only on its eval loop's tracing
    // path, which it takes while the `line` point (or sys.settrace) is on:
    // probe both (they share the argument layout: file, function, line).
    let calls = ProbeRun::start(
        pid,
        &[
            "--record",
            "args",
            "--args",
            "str,str,int",
            "usdt:python:function__entry",
            "usdt:python:line",
        ],
    );
    let gcs = ProbeRun::start(pid, &["--record", "args", "usdt:python:gc__start"]);
    py.send_line("go");
    py.stderr
        .wait_for("DONE", Duration::from_secs(30), |l| l == "DONE");
    let calls = calls.finish();
    let gcs = gcs.finish();

    // Every call of the script's functions after `go`, in order: (file,
    // function, first line of the function).
    let mine: Vec<_> = args_of(&calls, "python:function__entry")
        .into_iter()
        .filter(|a| a[0] == json!(script_path))
        .collect();
    let mut want = vec![vec![json!(script_path), json!("alpha"), json!(8)]; 3];
    want.extend(vec![vec![json!(script_path), json!("beta"), json!(12)]; 5]);
    assert_eq!(mine, want, "function__entry events: {calls:#?}");
    // The one line each function runs, once per call.
    let lines = |func: &str| -> Vec<_> {
        args_of(&calls, "python:line")
            .into_iter()
            .filter(|a| a[0] == json!(script_path) && a[1] == json!(func))
            .map(|a| a[2].clone())
            .collect()
    };
    assert_eq!(lines("alpha"), vec![json!(9); 3]);
    assert_eq!(lines("beta"), vec![json!(13); 5]);
    // gc.collect(0), (1), (2): the generation, read from the stack.
    assert_eq!(
        args_of(&gcs, "python:gc__start"),
        vec![vec![json!(0)], vec![json!(1)], vec![json!(2)]]
    );
}
