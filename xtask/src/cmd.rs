//! Running external commands with their output streamed, and errors that say
//! which command failed.

use std::{
    env,
    ffi::OsString,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo that runs us (`cargo xtask` sets CARGO), so nested builds use the
/// same toolchain as the outer one.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// `cargo install` puts bpf-linker in `$CARGO_HOME/bin`, and aya-build looks
/// for it on PATH. A fresh shell may not have that directory on PATH, so add it
/// for every command we start. Called first thing in `main`, before any thread
/// exists, which is what makes changing the environment sound.
pub fn init_path() {
    let Some(bin) = cargo_home().map(|home| home.join("bin")) else {
        return;
    };
    let current = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&current).any(|p| p == bin) {
        return;
    }
    let mut paths = vec![bin];
    paths.extend(env::split_paths(&current));
    if let Ok(joined) = env::join_paths(paths) {
        // SAFETY: called from `main` before any other thread is started, so
        // nothing can read the environment concurrently.
        unsafe { env::set_var("PATH", joined) };
    }
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
}

/// Shell-like rendering of a command for progress lines and error messages.
pub fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with stdout/stderr going straight to ours; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("$ {shown}");
    let status = cmd.status().map_err(|e| spawn_error(&shown, &e))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; its stderr is included in the error when
/// it fails. `Ok(None)` when the program does not exist at all, which callers
/// use to tell "not installed" from "broken".
pub fn output_if_present(cmd: &mut Command) -> Result<Option<String>> {
    let shown = display(cmd);
    let out = match cmd.stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(spawn_error(&shown, &e)),
    };
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Like [`output_if_present`], but a missing program is an error too.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    output_if_present(cmd)?.with_context(|| format!("`{shown}`: program not found on PATH"))
}

fn spawn_error(shown: &str, err: &std::io::Error) -> anyhow::Error {
    if err.kind() == ErrorKind::NotFound {
        anyhow::anyhow!(
            "`{shown}`: program not found on PATH; run `cargo xtask bootstrap` (as root) first"
        )
    } else {
        anyhow::anyhow!("`{shown}`: could not start: {err}")
    }
}

/// Checks that each program is on PATH, naming what installs the missing ones.
pub fn require_programs(programs: &[(&str, &str)]) -> Result<()> {
    let path = env::var_os("PATH").unwrap_or_default();
    let missing: Vec<String> = programs
        .iter()
        .filter(|(name, _)| !on_path(&path, name))
        .map(|(name, hint)| format!("`{name}` ({hint})"))
        .collect();
    if !missing.is_empty() {
        bail!("missing programs: {}", missing.join(", "));
    }
    Ok(())
}

fn on_path(path: &OsString, name: &str) -> bool {
    env::split_paths(path).any(|dir| dir.join(name).is_file())
}

/// Fails with a clear message unless we run as root: loading BPF programs,
/// apt-get and mounting tracefs all need it.
pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "{what} needs root (loading BPF, apt-get and mounting tracefs all do); run it from a root shell"
        );
    }
    Ok(())
}
