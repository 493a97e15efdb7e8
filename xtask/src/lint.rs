//! `cargo xtask lint`: formatting, then clippy on the host crates and on the
//! eBPF crate for its own target (host clippy can't see BPF-only code paths).

use std::process::Command;

use anyhow::{Context, Result};

use crate::{bootstrap::BPF_TOOLCHAIN, cmd};

pub fn run() -> Result<()> {
    cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"]))
        .context("formatting differs; run `cargo fmt --all`")?;
    // tracer-ebpf is a no_std BPF program: on the host it doesn't compile
    // (duplicate panic handler), so it is linted for its own target below.
    cmd::run(cmd::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--all-targets",
        // Same profile as the test build, so build scripts are shared.
        "--release",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy (host) found problems")?;
    // The fuzz target is its own workspace (it needs nightly to run); make
    // sure it keeps compiling against the parser.
    cmd::run(cmd::cargo().args(["check", "--manifest-path", "fuzz/Cargo.toml"]))
        .context("the fuzz target (fuzz/) no longer compiles")?;
    cmd::run(&mut bpf_clippy()).context(
        "clippy (eBPF crate, bpfel-unknown-none) found problems; \
         if it could not start, run `cargo xtask bootstrap`",
    )?;
    eprintln!("[lint] ok");
    Ok(())
}

/// The eBPF crate only builds for bpfel-unknown-none with build-std, which
/// needs Debian's toolchain (it ships the std source) and nightly flags on it.
fn bpf_clippy() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(cmd::workspace_root().join("tracer-ebpf"))
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["run", BPF_TOOLCHAIN, "cargo", "clippy", "-p", "tracer-ebpf"])
        .args(["--release", "-Z", "build-std=core"])
        .args(["--target", "bpfel-unknown-none", "--", "-D", "warnings"]);
    cmd
}
