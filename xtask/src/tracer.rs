//! Building and starting the `tracer` binary the other tasks drive.

use std::{
    ffi::OsStr,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd,
    procs::{Spawned, Stream},
};

/// Printed once on stderr when every probe is attached (the attach contract).
pub const READY_LINE: &str = "tracer: ready";

/// How long attaching may take: resolving node's local symbols in its 98 MB
/// binary and loading the programs takes a few seconds on a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn binary() -> PathBuf {
    cmd::workspace_root().join("target/release/tracer")
}

pub fn build_release() -> Result<()> {
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "tracer-user"])).context(
        "building the tracer binary failed; if the eBPF part could not build, \
         run `cargo xtask bootstrap` (as root)",
    )?;
    if !binary().is_file() {
        bail!("the build succeeded but {} is missing", binary().display());
    }
    Ok(())
}

/// `tracer attach --pid P... <extra>`, stdin closed.
pub fn attach_command(pids: &[u32], extra: &[impl AsRef<OsStr>]) -> Command {
    let mut command = Command::new(binary());
    command.arg("attach");
    for pid in pids {
        command.args(["--pid", &pid.to_string()]);
    }
    command.args(extra).stdin(Stdio::null());
    command
}

/// Starts `tracer attach` with stdout sent to `stdout` and returns once it
/// printed `tracer: ready`, failing with its output if it exits or stalls
/// first. Its stderr keeps being drained and kept for error messages.
pub fn attach_ready(pids: &[u32], extra: &[&str], stdout: Stdio) -> Result<Spawned> {
    let mut command = attach_command(pids, extra);
    command.stdout(stdout).stderr(Stdio::piped());
    let mut tracer = Spawned::start("tracer", &mut command)?;
    tracer.wait_for_line(Stream::Stderr, READY_LINE, READY_TIMEOUT)?;
    Ok(tracer)
}
