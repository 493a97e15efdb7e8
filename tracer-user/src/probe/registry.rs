//! The probes attached on this host, so `tracer probe active` can list
//! them and `tracer probe rm` can remove them from another terminal.
//!
//! Each `tracer probe add` writes one JSON file under [`DIR`] while its
//! probes are attached, and removes it when it detaches. The file names
//! the tracer process that holds the probes and its start time (from
//! /proc/PID/stat), so a file left by a tracer that was SIGKILLed, or whose
//! PID was reused, is recognised as stale and cleaned up: the kernel
//! detached that tracer's uprobes (and lowered its semaphores) when its
//! perf events closed, so nothing else needs undoing. Removing a probe is
//! stopping the session that holds it with SIGTERM, which detaches
//! everything as Ctrl-C does; `rm` waits until that tracer is gone.
//!
//! A file per session in /run (a tmpfs, root-only) rather than a socket:
//! no listener to secure, and a crashed tracer leaves nothing that blocks.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::inspector::target::live_start_time as start_of;

/// Where sessions register.
pub const DIR: &str = "/run/tracer/probes";

/// One running `tracer probe add`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// What `tracer probe rm` takes: `p` and the holding tracer's PID.
    pub id: String,
    /// The tracer process holding the probes.
    pub tracer_pid: u32,
    /// Its start time (clock ticks since boot, /proc/PID/stat field 22).
    pub tracer_start: u64,
    /// The probed processes.
    pub pids: Vec<u32>,
    /// The specs as given.
    pub specs: Vec<String>,
    /// What is recorded (`count`, `args`, `latency`).
    pub record: String,
    /// When it attached (Unix ms).
    pub started_ms: u64,
    /// When it detaches by itself (Unix ms), with --ttl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// This process's registration: the file is removed on drop.
pub struct Registration {
    path: PathBuf,
    pub id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Registers this process's probes on `pids`.
pub fn register(
    dir: &Path,
    pids: &[u32],
    specs: &[String],
    record: &str,
    ttl: Option<Duration>,
) -> Result<Registration> {
    let me = std::process::id();
    let entry = Entry {
        id: format!("p{me}"),
        tracer_pid: me,
        tracer_start: start_of(me).context("reading this process's start time")?,
        pids: pids.to_vec(),
        specs: specs.to_vec(),
        record: record.to_string(),
        started_ms: now_ms(),
        expires_ms: ttl.map(|t| now_ms() + t.as_millis() as u64),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.json", entry.id));
    // Written whole, then renamed: a reader never sees half a file.
    let tmp = dir.join(format!(".{}.tmp", entry.id));
    std::fs::write(&tmp, serde_json::to_vec(&entry)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(Registration { path, id: entry.id })
}

/// The sessions holding probes now, oldest first. Files of sessions that
/// are gone are removed.
pub fn active(dir: &Path) -> Result<Vec<Entry>> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for file in read.flatten() {
        let path = file.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Ok(text) = std::fs::read(&path) else {
            continue; // removed meanwhile: its session detached
        };
        let entry: Entry = match serde_json::from_slice(&text) {
            Ok(e) => e,
            Err(e) => {
                log::warn!(
                    "{}: not a probe registration ({e}); removed",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                continue;
            }
        };
        if start_of(entry.tracer_pid) == Some(entry.tracer_start) {
            out.push(entry);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    out.sort_by_key(|e| (e.started_ms, e.tracer_pid));
    Ok(out)
}

/// Stops the session holding `entry` and waits until it has detached (its
/// process is gone), at most `timeout`.
pub fn stop(entry: &Entry, timeout: Duration) -> Result<()> {
    let pid = i32::try_from(entry.tracer_pid).context("a PID out of range")?;
    if start_of(entry.tracer_pid) != Some(entry.tracer_start) {
        return Ok(()); // it detached by itself meanwhile
    }
    // SAFETY: kill(2) with a PID and a signal number; no memory involved.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        bail!(
            "stopping tracer PID {} (probe {}): {err}",
            entry.tracer_pid,
            entry.id
        );
    }
    let deadline = Instant::now() + timeout;
    while start_of(entry.tracer_pid) == Some(entry.tracer_start) {
        if Instant::now() > deadline {
            bail!(
                "tracer PID {} (probe {}) did not detach within {timeout:?}; it is still \
                 running (check it with `ps -p {}`)",
                entry.tracer_pid,
                entry.id,
                entry.tracer_pid
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_list_and_drop() {
        let dir = std::env::temp_dir().join(format!("tracer-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let specs = vec!["usdt:python:gc__start".to_string()];
        let reg = register(&dir, &[42], &specs, "count", Some(Duration::from_secs(60))).unwrap();
        let list = active(&dir).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, reg.id);
        assert_eq!(list[0].pids, [42]);
        assert_eq!(list[0].specs, specs);
        assert!(list[0].expires_ms.unwrap() > list[0].started_ms);
        // A file whose tracer is gone (PID 1's start time is not this).
        let stale = Entry {
            id: "p1".into(),
            tracer_pid: 1,
            tracer_start: u64::MAX,
            ..list[0].clone()
        };
        std::fs::write(dir.join("p1.json"), serde_json::to_vec(&stale).unwrap()).unwrap();
        std::fs::write(dir.join("junk.json"), b"{").unwrap();
        assert_eq!(active(&dir).unwrap(), list);
        assert!(!dir.join("p1.json").exists() && !dir.join("junk.json").exists());
        drop(reg);
        assert!(active(&dir).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
