//! The verifier budget guard: every program of the eBPF object loads on this
//! kernel with the default options and with every option at its maximum,
//! each using at most 10% of the verifier's 1M-instruction budget. A program
//! that drifts towards the limit (a new compiler unrolling a loop, a bigger
//! cap) fails here before a user's kernel refuses it. Needs root.

mod common;

use std::process::Command;

use common::{TRACER, require_root};
use serde_json::Value;

const LIMIT_INSNS: u64 = 100_000;

/// Runs `tracer verify --json <args>`; returns the per-program rows.
fn verify(args: &[&str]) -> Vec<Value> {
    let out = Command::new(TRACER)
        .args(["verify", "--json"])
        .args(args)
        .output()
        .expect("running tracer verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    eprintln!("tracer verify {}:", args.join(" "));
    for r in &rows {
        eprintln!("  {r}");
    }
    assert!(
        out.status.success(),
        "tracer verify {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (summary, programs) = rows.split_last().expect("verify printed nothing");
    assert_eq!(summary["kind"], "verify_summary", "{summary}");
    assert_eq!(summary["limit_insns"], LIMIT_INSNS);
    programs.to_vec()
}

fn check(args: &[&str]) -> Vec<Value> {
    let programs = verify(args);
    assert!(
        programs.len() >= 23,
        "every program of the object is verified, got {}",
        programs.len()
    );
    for p in &programs {
        assert!(p.get("error").is_none(), "{p}");
        let insns = p["insns"]
            .as_u64()
            .unwrap_or_else(|| panic!("no processed-instruction count: {p}"));
        assert!(
            insns > 0 && insns <= LIMIT_INSNS,
            "{} processed {insns} insns, over the margin of {LIMIT_INSNS}",
            p["program"]
        );
    }
    programs
}

#[test]
fn every_program_stays_under_ten_percent_of_the_budget() {
    if !require_root("every_program_stays_under_ten_percent_of_the_budget") {
        return;
    }
    let defaults = check(&[]);
    let max = check(&["--max"]);
    check(&["--max", "--http-capture", "syscalls"]);
    // The heaviest program, the one that copies log lines, is not free with
    // bigger caps either: the guard measures what the options change.
    let insns = |rows: &[Value], name: &str| {
        rows.iter()
            .find(|r| r["program"] == name)
            .and_then(|r| r["insns"].as_u64())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert!(insns(&defaults, "sys_exit_rw") > 1000);
    assert!(insns(&max, "sys_exit_rw") > 1000);
}

#[test]
fn a_tighter_margin_fails_with_the_program_named() {
    if !require_root("a_tighter_margin_fails_with_the_program_named") {
        return;
    }
    // 0.5% of the budget is 5,000 insns: the log copy is over it, so the
    // guard must fail and say which program crossed.
    let out = Command::new(TRACER)
        .args(["verify", "--budget-percent", "0.5"])
        .output()
        .expect("running tracer verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("over the margin") && stderr.contains("sys_exit_rw"),
        "{stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("sys_exit_rw") && l.ends_with("OVER")),
        "{stdout}"
    );
}
