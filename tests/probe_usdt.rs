//! `tracer probe` on a C program with USDT points, built here with
//! <sys/sdt.h> and started before tracer attaches: listing, exact counts,
//! decoded arguments of every spec form, the semaphore raised only while
//! attached, the rate cap, clear errors, and agreement with bpftrace.
//! Needs root (loads BPF programs).

mod common;
mod probe_common;

use std::{process::Command, time::Duration};

use common::{Proc, TRACER, TempDir, require_root, wait_ready_line};
use probe_common::{
    Bpftrace, ProbeRun, args_of, build_usdt_target, count_of, of_point, probe_add_error,
    probe_list, read_u16, verifier_insns,
};
use serde_json::{Value, json};

struct Target {
    proc: Proc,
    bin: String,
    semaphore: u64,
    _dir: TempDir,
}

impl Target {
    fn start() -> Self {
        let dir = TempDir::new("usdt");
        let bin = build_usdt_target(dir.path());
        let mut proc = Proc::spawn("usdt_target", Command::new(&bin), true);
        let ready = wait_ready_line(&mut proc);
        let sem = ready
            .strip_prefix("sem=0x")
            .unwrap_or_else(|| panic!("READY line without the semaphore address: {ready}"));
        Self {
            semaphore: u64::from_str_radix(sem, 16).expect("hex semaphore address"),
            bin: bin.display().to_string(),
            proc,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Runs `n` iterations; returns how many saw the semaphore raised.
    fn run(&mut self, n: u32) -> u32 {
        self.proc.send_line(&format!("run {n}"));
        let prefix = format!("DONE {n} enabled=");
        let line = self
            .proc
            .stderr
            .wait_for("DONE", std::time::Duration::from_secs(30), |l| {
                l.starts_with(&prefix)
            });
        // Later runs must not match this line again.
        self.proc.stderr.poll();
        let enabled = line[prefix.len()..].parse().expect("enabled count");
        self.proc.send_line("sem");
        enabled
    }

    fn semaphore(&self) -> u16 {
        read_u16(self.pid(), self.semaphore)
    }
}

#[test]
fn list_shows_every_point_with_its_spec_and_semaphore() {
    if !require_root("list_shows_every_point_with_its_spec_and_semaphore") {
        return;
    }
    let t = Target::start();
    let pid = t.pid().to_string();
    let out = probe_list(&["--pid", &pid, "--object", &t.bin, "--json"]);
    let points: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_name = |name: &str| -> &Value {
        points
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no point {name} in {points:#?}"))
    };
    assert_eq!(points.len(), 5, "{points:#?}");
    assert_eq!(by_name("plain")["args"], "-4@%ecx 1@%al -2@%r8w -8@%rdx");
    assert_eq!(by_name("konst")["args"], "-4@$-7 -4@$42");
    assert_eq!(by_name("mem")["args"], "-4@-16(%rsp) 2@-12(%rsp)");
    assert_eq!(by_name("plain")["semaphore"], 0);
    let gated = by_name("hit");
    assert_eq!(gated["provider"], "tracer_gated");
    assert_ne!(gated["semaphore"], 0);
    // Text form and a pattern; the objects list includes libc (no points).
    let text = probe_list(&["--pid", &pid, "tracer_test:*"]);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.lines().all(|l| l.starts_with(&t.bin)), "{text}");
    let syms = probe_list(&["--pid", &pid, "--symbols", "gated_*"]);
    assert!(syms.contains(" gated_hit "), "{syms}");
}

#[test]
fn counts_are_exact_and_the_semaphore_is_raised_only_while_attached() {
    if !require_root("counts_are_exact_and_the_semaphore_is_raised_only_while_attached") {
        return;
    }
    let mut t = Target::start();
    assert_eq!(t.semaphore(), 0, "semaphore before attach");
    assert_eq!(t.run(10), 0, "points gated off before attach");
    let run = ProbeRun::start(
        t.pid(),
        &[
            "usdt:tracer_test:plain",
            "usdt:tracer_test:konst",
            "usdt:tracer_test:mem",
            "usdt:tracer_test:str",
            "usdt:tracer_gated:hit",
            "uprobe:work",
            "uretprobe:gated_hit",
        ],
    );
    assert_eq!(t.semaphore(), 1, "semaphore while attached");
    assert_eq!(
        t.run(1000),
        1000,
        "every iteration saw the semaphore raised"
    );
    let (events, stderr) = run.finish_with_stderr();
    // Both generic programs verify far below the 1M-instruction budget.
    let insns = verifier_insns(&stderr);
    assert_eq!(insns.len(), 2, "{stderr:#?}");
    for (name, n) in &insns {
        assert!(
            *n < 100_000,
            "{name}: the verifier processed {n} instructions"
        );
    }
    eprintln!("verifier: {insns:?}");
    for point in [
        "tracer_test:plain",
        "tracer_test:konst",
        "tracer_test:mem",
        "tracer_test:str",
        "tracer_gated:hit",
        "work",
        "gated_hit",
    ] {
        assert_eq!(
            count_of(&events, point),
            1000,
            "hits of {point}: {events:#?}"
        );
    }
    for e in &events {
        assert_eq!(e["pid"], t.pid(), "{e}");
        assert_eq!(e["record"], "count", "{e}");
        assert!(e["interval_ns"].as_u64().is_some_and(|n| n > 0), "{e}");
    }
    assert_eq!(t.semaphore(), 0, "semaphore after detach");
    assert_eq!(t.run(10), 0, "points gated off again after detach");
}

#[test]
fn arguments_of_every_spec_form_are_decoded() {
    if !require_root("arguments_of_every_spec_form_are_decoded") {
        return;
    }
    let mut t = Target::start();
    let run = ProbeRun::start(
        t.pid(),
        &[
            "--record",
            "args",
            "usdt:tracer_test:plain",
            "usdt:tracer_test:konst",
            "usdt:tracer_test:mem",
        ],
    );
    t.run(300);
    let events = run.finish();
    // plain: -4@%ecx (i - 5), 1@%al ((i * 7) as u8), -2@%r8w (-3i as
    // i16), -8@%rdx (i * 1000000007): registers, sizes, signedness.
    let want: Vec<Vec<Value>> = (0..300i64)
        .map(|i| {
            vec![
                json!(i - 5),
                json!((i * 7) & 0xff),
                json!(-3 * i),
                json!(i * 1_000_000_007),
            ]
        })
        .collect();
    assert_eq!(args_of(&events, "tracer_test:plain"), want);
    // konst: constants.
    let konst = args_of(&events, "tracer_test:konst");
    assert_eq!(konst, vec![vec![json!(-7), json!(42)]; 300]);
    // mem: -4@-16(%rsp) and 2@-12(%rsp), memory dereferences.
    let want: Vec<Vec<Value>> = (0..300i64)
        .map(|i| vec![json!(-i), json!(i + 60000)])
        .collect();
    assert_eq!(args_of(&events, "tracer_test:mem"), want);

    // A string argument (8@%rsi, a char *) and an int.
    let run = ProbeRun::start(
        t.pid(),
        &[
            "--record",
            "args",
            "--args",
            "str,int",
            "usdt:tracer_test:str",
        ],
    );
    t.run(5);
    let events = run.finish();
    let names = ["alpha", "beta", "gamma"];
    let want: Vec<Vec<Value>> = (0..5usize)
        .map(|i| vec![json!(names[i % 3]), json!(i)])
        .collect();
    assert_eq!(args_of(&events, "tracer_test:str"), want);
}

#[test]
fn the_rate_cap_counts_what_it_drops() {
    if !require_root("the_rate_cap_counts_what_it_drops") {
        return;
    }
    let mut t = Target::start();
    let run = ProbeRun::start(
        t.pid(),
        &["--record", "args", "--rate", "50", "usdt:tracer_test:konst"],
    );
    t.run(400);
    let events = run.finish();
    let emitted = of_point(&events, "tracer_test:konst").len() as u64;
    let lost: u64 = events
        .iter()
        .filter(|e| e["kind"] == "lost" && e["stage"] == "rate")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    // 400 hits in one burst: at most 50 per started second get through
    // (the burst can straddle one window boundary); every hit is accounted.
    assert!((50..=100).contains(&emitted), "emitted {emitted}");
    assert_eq!(emitted + lost, 400, "emitted {emitted} + lost {lost}");
}

#[test]
fn bad_specs_get_clear_errors() {
    if !require_root("bad_specs_get_clear_errors") {
        return;
    }
    let t = Target::start();
    let pid = t.pid().to_string();
    let err = probe_add_error(&["--pid", &pid, "usdt:tracer_test:plan"]);
    assert!(err.contains("no point `plan` (closest: plain)"), "{err}");
    let err = probe_add_error(&["--pid", &pid, "usdt:tracer_tset:plain"]);
    assert!(
        err.contains("no USDT provider `tracer_tset`") && err.contains("closest: tracer_test"),
        "{err}"
    );
    let err = probe_add_error(&["--pid", &pid, "uprobe:nosuchlib:work"]);
    assert!(err.contains("maps no object named `nosuchlib`"), "{err}");
    let err = probe_add_error(&["--pid", &pid, "uprobe:wrok"]);
    assert!(err.contains("closest: work"), "{err}");
    let err = probe_add_error(&["--pid", &pid, "uprobe:libc:malloc"]);
    assert!(err.contains("--force"), "{err}");
    let err = probe_add_error(&[
        "--pid",
        &pid,
        "--record",
        "latency",
        "usdt:tracer_test:plain",
    ]);
    assert!(err.contains("no return"), "{err}");
    let err = probe_add_error(&["--pid", &pid, "kprobe:work"]);
    assert!(err.contains("unknown probe type `kprobe`"), "{err}");
    let err = probe_add_error(&["--pid", &pid, "--max-sites", "2", "uprobe:libc:str*"]);
    assert!(err.contains("--max-sites"), "{err}");
}

/// bpftrace on the same points in the same run sees the same hits and the
/// same argument values.
#[test]
fn agrees_with_bpftrace() {
    if !require_root("agrees_with_bpftrace") {
        return;
    }
    let mut t = Target::start();
    let bt = Bpftrace::start(
        t.pid(),
        &format!(
            "usdt:{bin}:tracer_test:plain {{ @plain = count(); @plain_arg0 = sum(arg0); \
             @plain_arg3 = sum(arg3); }} \
             usdt:{bin}:tracer_test:mem {{ @mem_arg1 = sum(arg1); }} \
             uprobe:{bin}:work {{ @work = count(); }}",
            bin = t.bin
        ),
    );
    let run = ProbeRun::start(
        t.pid(),
        &[
            "--record",
            "args",
            "--rate",
            "0",
            "usdt:tracer_test:plain",
            "usdt:tracer_test:mem",
            "uprobe:work",
        ],
    );
    t.run(500);
    let events = run.finish();
    let maps = bt.finish();
    let plain = args_of(&events, "tracer_test:plain");
    let sum = |rows: &[Vec<Value>], i: usize| -> i64 {
        rows.iter().map(|r| r[i].as_i64().unwrap()).sum()
    };
    assert_eq!(maps["@plain"], 500, "{maps:?}");
    assert_eq!(plain.len(), 500);
    assert_eq!(maps["@plain_arg0"], sum(&plain, 0), "{maps:?}");
    assert_eq!(maps["@plain_arg3"], sum(&plain, 3), "{maps:?}");
    let mem = args_of(&events, "tracer_test:mem");
    assert_eq!(maps["@mem_arg1"], sum(&mem, 1), "{maps:?}");
    assert_eq!(maps["@work"], of_point(&events, "work").len() as i64);
    assert_eq!(maps["@work"], 500);
}

#[test]
fn latency_and_return_values() {
    if !require_root("latency_and_return_values") {
        return;
    }
    let mut t = Target::start();
    let run = ProbeRun::start(t.pid(), &["--record", "latency", "uprobe:work"]);
    t.run(200);
    let events = run.finish();
    assert_eq!(count_of(&events, "work"), 200, "{events:#?}");
    let in_buckets: u64 = of_point(&events, "work")
        .iter()
        .flat_map(|e| e["latency_ns"].as_array().unwrap().clone())
        .map(|b| {
            let b = b.as_array().unwrap();
            assert!(b[0].as_u64().unwrap().is_power_of_two(), "{b:?}");
            b[1].as_u64().unwrap()
        })
        .sum();
    assert_eq!(in_buckets, 200, "every return is in a bucket: {events:#?}");

    // A return probe's arg0 is the return value: gated_hit returns 1 while
    // the semaphore is raised (by the USDT point attached with it).
    let run = ProbeRun::start(
        t.pid(),
        &[
            "--record",
            "args",
            "usdt:tracer_gated:hit",
            "uretprobe:gated_hit",
        ],
    );
    t.run(20);
    let events = run.finish();
    let want: Vec<Vec<Value>> = (0..20).map(|i| vec![json!(i)]).collect();
    assert_eq!(args_of(&events, "tracer_gated:hit"), want);
    assert_eq!(args_of(&events, "gated_hit"), vec![vec![json!(1)]; 20]);
}

#[test]
fn the_target_exiting_ends_the_probe_with_final_counts() {
    if !require_root("the_target_exiting_ends_the_probe_with_final_counts") {
        return;
    }
    let mut t = Target::start();
    let mut run = ProbeRun::start(t.pid(), &["usdt:tracer_test:plain"]);
    t.run(77);
    t.proc.send_line("quit");
    t.proc.expect_exit(std::time::Duration::from_secs(10));
    let status = run.proc.expect_exit(std::time::Duration::from_secs(30));
    assert!(status.success(), "{}", run.proc.stderr.tail(20));
    run.proc.drain(std::time::Duration::from_secs(10));
    let stderr = run.proc.stderr.seen().join("\n");
    assert!(
        stderr.contains(&format!("detached (PID {} exited)", t.pid())),
        "{stderr}"
    );
    let events: Vec<Value> = run
        .proc
        .stdout
        .as_ref()
        .unwrap()
        .seen()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(count_of(&events, "tracer_test:plain"), 77, "{events:#?}");
}

/// `tracer probe rm`, run from another process, detaches a running `probe
/// add` (which ends cleanly with its counts) and lowers the semaphore;
/// `tracer probe active` lists the probe only while it is attached; an
/// unknown id or a PID with no probe is a clear error.
#[test]
fn rm_from_another_terminal_detaches_and_lowers_the_semaphore() {
    if !require_root("rm_from_another_terminal_detaches_and_lowers_the_semaphore") {
        return;
    }
    let mut t = Target::start();
    let mut run = ProbeRun::start(t.pid(), &["usdt:tracer_gated:hit", "--ttl", "600"]);
    let id_line = run
        .proc
        .stderr
        .seen()
        .iter()
        .find(|l| l.starts_with("tracer: probe id "))
        .cloned()
        .expect("probe add prints its id");
    let id = format!("p{}", run.proc.pid());
    assert_eq!(
        id_line,
        format!("tracer: probe id {id}: remove it from anywhere with `tracer probe rm {id}`")
    );
    assert_eq!(t.semaphore(), 1, "semaphore while attached");
    assert_eq!(t.run(100), 100);

    let active = |args: &[&str]| {
        let out = Command::new(TRACER)
            .args(["probe", "active", "--json"])
            .args(args)
            .output()
            .expect("running tracer probe active");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
            .filter(|v| v["id"] == id.as_str())
            .collect::<Vec<_>>()
    };
    let listed = active(&[]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["pids"], serde_json::json!([t.pid()]));
    assert_eq!(
        listed[0]["specs"],
        serde_json::json!(["usdt:tracer_gated:hit"])
    );
    assert_eq!(listed[0]["record"], "count");
    assert!(listed[0]["expires_ms"].as_u64().is_some(), "{listed:?}");

    let rm = |args: &[&str]| {
        Command::new(TRACER)
            .args(["probe", "rm"])
            .args(args)
            .output()
            .expect("running tracer probe rm")
    };
    let unknown = rm(&["p1"]);
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("no probe `p1` is attached on this host")
            && err.contains("`tracer probe active` lists them"),
        "{err}"
    );
    let none = rm(&["--pid", "1"]);
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr)
            .contains("no probe of `tracer probe add` is attached to PID 1"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );

    let removed = rm(&["--pid", &t.pid().to_string()]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&removed.stderr),
        format!(
            "tracer: removed probe {id} (usdt:tracer_gated:hit on PID {})\n",
            t.pid()
        )
    );
    // rm returned once the session was gone: detached, semaphore lowered.
    let status = run.proc.expect_exit(Duration::from_secs(5));
    assert!(status.success(), "{}", run.proc.stderr.tail(20));
    assert_eq!(t.semaphore(), 0, "semaphore after rm");
    assert_eq!(t.run(10), 0, "points gated off after rm");
    assert!(active(&[]).is_empty(), "not listed after rm");
    run.proc.drain(Duration::from_secs(5));
    let counted: u64 = run
        .proc
        .stdout
        .as_ref()
        .expect("stdout is piped")
        .seen()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["point"] == "tracer_gated:hit")
        .filter_map(|v| v["count"].as_u64())
        .sum();
    assert_eq!(counted, 100, "the final counts are reported on rm");
}
