//! `cargo xtask test`: the whole check CI runs — bootstrap, lint, release
//! build, then every test with the root-only integration tests made mandatory.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::{bootstrap, cmd, lint, tracer};

/// Integration tests skip themselves when not root; with this set a skip is a
/// failure, so CI can't pass by testing nothing.
const REQUIRE_ROOT_TESTS: &str = "TRACER_REQUIRE_ROOT_TESTS";

type Step = fn() -> Result<()>;

pub fn run() -> ExitCode {
    let steps: [(&str, Step); 5] = [
        ("bootstrap", bootstrap::run),
        ("lint", lint::run),
        ("build", tracer::build_release),
        ("verifier budget", verifier_table),
        ("test", run_tests),
    ];
    for (name, step) in steps {
        eprintln!("[test] === {name} ===");
        if let Err(err) = step() {
            eprintln!("error: {err:#}");
            eprintln!("xtask test: FAILED at step `{name}`");
            return ExitCode::FAILURE;
        }
    }
    eprintln!("xtask test: PASSED (bootstrap, lint, build, verifier budget, test)");
    ExitCode::SUCCESS
}

/// Print what each BPF program costs the verifier, with the default and the
/// maximum options, so every CI log shows the margin (tests/verifier_budget.rs
/// asserts it).
fn verifier_table() -> Result<()> {
    for extra in [
        &[][..],
        &["--max"][..],
        &["--max", "--http-capture", "syscalls"][..],
    ] {
        cmd::run(
            std::process::Command::new(tracer::binary())
                .arg("verify")
                .args(extra),
        )
        .with_context(|| format!("tracer verify {} failed", extra.join(" ")))?;
    }
    Ok(())
}

fn run_tests() -> Result<()> {
    // tracer-ebpf is a no_std BPF program with no host test harness (it doesn't
    // link on the host); what it does is tested through tracer-user's tests.
    // --no-fail-fast: one CI run should show every failing test binary.
    cmd::run(
        cmd::cargo()
            .args(["test", "--workspace", "--exclude", "tracer-ebpf"])
            .args(["--release", "--no-fail-fast"])
            .env(REQUIRE_ROOT_TESTS, "1"),
    )
    .context("tests failed (see the output above)")
}
