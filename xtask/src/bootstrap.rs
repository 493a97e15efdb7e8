//! `cargo xtask bootstrap`: everything a fresh Debian 12 machine lacks to build,
//! test and run tracer. Each step checks first and is skipped when its result
//! is already there, so running it again is cheap. See shared/TOOLCHAIN.md for
//! why each piece is needed.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Debian packages, and why:
/// - rustc-web, cargo-web, rust-web-src: Debian's Rust 1.96 ships its std
///   source, which `-Z build-std=core` needs for the BPF target (rustup's
///   stable here has no rust-src and nothing else can be downloaded).
/// - rust-web-clippy: clippy for that toolchain, so the eBPF crate is linted
///   for its real target.
/// - llvm-22-dev, libpolly-22-dev, libzstd-dev: what bpf-linker links against.
/// - wrk, bpftrace: the benchmark's load generator and reference tracer.
/// - iproute2: network namespaces for the multi-host demo and tests.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "rust-web-clippy",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "wrk",
    "bpftrace",
    "iproute2",
    "prometheus", // tests/agent_prometheus.rs scrapes the metrics endpoint with it
    "openssl",    // HTTPS tests and the TLS bench make self-signed certificates
    "curl",       // agent tests fetch /metrics and drive traffic in namespaces
    "chromium",   // tests/web_ui.rs drives the web UI in headless Chromium (playwright-core)
    // The aggregator's ClickHouse store: its tests start their own 18.16
    // server (no system service is used).
    "clickhouse-server",
    // The ClickHouse store's tests install PyPI chdb-core into a venv under
    // target/ to check every statement on a current ClickHouse.
    "python3-venv",
    "systemtap-sdt-dev", // <sys/sdt.h>: tests/probe_usdt.rs builds a USDT target with gcc
    "libelf-dev",        // libbpf-sys (tracer probe's attach shim) builds libbpf against it
    "zlib1g-dev",        // ... and zlib
];

/// The rustup name under which Debian's toolchain in /usr is linked;
/// tracer-user/build.rs builds the eBPF crate with it.
pub const BPF_TOOLCHAIN: &str = "debian-bpf";

const BPF_LINKER_VERSION: &str = "0.13.0";
const TRACEFS: &str = "/sys/kernel/tracing";
/// Where a cgroup v2 hierarchy is mounted when the machine has none (the
/// hybrid layout's usual place): HTTP capture attaches cgroup_skb programs
/// to the traced processes' cgroup v2 directories.
const CGROUP2: &str = "/sys/fs/cgroup/unified";

pub fn run() -> Result<()> {
    cmd::require_root("cargo xtask bootstrap")?;
    install_packages()?;
    link_toolchain()?;
    install_bpf_linker()?;
    mount_tracefs()?;
    mount_cgroup2()?;
    check_node()?;
    step("done: the machine can build, test and run tracer");
    Ok(())
}

fn step(msg: &str) {
    eprintln!("[bootstrap] {msg}");
}

fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !is_installed(pkg))
        .collect();
    if missing.is_empty() {
        step("ok: Debian packages already installed");
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    cmd::run(Command::new("apt-get").arg("update"))
        .context("apt-get update failed; check the network and /etc/apt/sources.list")?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install failed")?;
    Ok(())
}

/// dpkg's "ii" means installed and configured; anything else (absent, half
/// installed, removed with config left) means apt-get has work to do.
fn is_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", pkg])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.starts_with(b"ii"))
}

fn link_toolchain() -> Result<()> {
    // build-std finds core's source here; without it the BPF build fails with a
    // far less helpful message.
    let std_src = Path::new("/usr/lib/rustlib/src/rust/library/core");
    if !std_src.is_dir() {
        bail!(
            "{} is missing although rust-web-src is installed; reinstall it with \
             `apt-get install --reinstall rust-web-src`",
            std_src.display()
        );
    }
    let list = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to link Debian's toolchain; install rustup first")?;
    if list
        .lines()
        .any(|line| line.split_whitespace().next() == Some(BPF_TOOLCHAIN))
    {
        step(&format!(
            "ok: rustup toolchain {BPF_TOOLCHAIN} already linked"
        ));
        return Ok(());
    }
    step(&format!("linking rustup toolchain {BPF_TOOLCHAIN} -> /usr"));
    cmd::run(Command::new("rustup").args(["toolchain", "link", BPF_TOOLCHAIN, "/usr"]))
}

fn install_bpf_linker() -> Result<()> {
    let installed = cmd::output_if_present(Command::new("bpf-linker").arg("--version"))
        .ok()
        .flatten()
        .unwrap_or_default();
    if installed
        .split_whitespace()
        .any(|w| w == BPF_LINKER_VERSION)
    {
        step(&format!(
            "ok: bpf-linker {BPF_LINKER_VERSION} already installed"
        ));
        return Ok(());
    }
    step(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} (about a minute; found: {})",
        if installed.trim().is_empty() {
            "none"
        } else {
            installed.trim()
        }
    ));
    // --locked: the versions bpf-linker was released with, so a newer
    // dependency that needs a newer rustc can't break a fresh machine.
    cmd::run(
        cmd::cargo()
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .args(["--locked", "--force"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
    .context("installing bpf-linker failed")
}

/// Tracepoints can't be attached until tracefs is mounted, and it is not
/// mounted at boot on these machines.
fn mount_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        step(&format!("ok: tracefs mounted at {TRACEFS}"));
        return Ok(());
    }
    step(&format!("mounting tracefs at {TRACEFS}"));
    cmd::run(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS])).with_context(
        || {
            format!(
                "could not mount tracefs; the kernel needs CONFIG_FTRACE and {TRACEFS} must exist"
            )
        },
    )?;
    if !Path::new(TRACEFS).join("events").is_dir() {
        bail!(
            "tracefs is mounted at {TRACEFS} but has no events/ directory; the kernel lacks tracepoint support"
        );
    }
    Ok(())
}

fn mount_cgroup2() -> Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if let Some(at) = mounts.lines().find_map(|l| {
        (l.split_whitespace().nth(2) == Some("cgroup2"))
            .then(|| l.split_whitespace().nth(1))
            .flatten()
    }) {
        step(&format!("ok: cgroup v2 mounted at {at}"));
        return Ok(());
    }
    step(&format!("mounting cgroup v2 at {CGROUP2}"));
    std::fs::create_dir_all(CGROUP2).with_context(|| format!("creating {CGROUP2}"))?;
    cmd::run(Command::new("mount").args(["-t", "cgroup2", "none", CGROUP2]))
        .with_context(|| format!("could not mount cgroup v2 at {CGROUP2}; the kernel needs CONFIG_CGROUP_BPF (or use `tracer --http-capture syscalls`)"))
}

/// Not installed by us (Debian's node is older than what the tests assume), so
/// only checked, with a clear message.
fn check_node() -> Result<()> {
    match cmd::output_if_present(Command::new("node").arg("--version"))? {
        Some(version) => {
            step(&format!("ok: node {} found", version.trim()));
            Ok(())
        }
        None => bail!(
            "`node` is not on PATH: the tests, demo and benchmark trace Node.js programs; \
             install Node.js 20 (e.g. the official build at /usr/bin/node)"
        ),
    }
}
