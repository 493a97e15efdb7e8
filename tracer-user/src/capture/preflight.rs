//! Checks before loading anything, each failing with what is missing and
//! how to fix it.

use std::{ffi::CString, path::Path};

use anyhow::{Result, bail};

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Which of the capabilities tracing needs are missing, by name.
pub fn missing_capabilities(caps: u64) -> Vec<&'static str> {
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            missing.push("CAP_BPF");
        }
        if !has(CAP_PERFMON) {
            missing.push("CAP_PERFMON");
        }
    }
    if !has(CAP_SYS_PTRACE) {
        // Reading another user's /proc/PID/fd and /proc/PID/exe.
        missing.push("CAP_SYS_PTRACE");
    }
    missing
}

pub fn check_privileges() -> Result<()> {
    let Some(caps) = effective_caps() else {
        bail!("cannot read this process's capabilities from /proc/self/status");
    };
    let missing = missing_capabilities(caps);
    if !missing.is_empty() {
        bail!(
            "tracer needs to run as root or with CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE; \
             missing: {}. Run it with sudo, or grant them once with \
             `sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_sys_admin+ep $(command -v tracer)`",
            missing.join(", ")
        );
    }
    Ok(())
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// Make sure tracefs is mounted (tracepoint attach needs it); mount it if
/// not. Returns a note for the user when it mounted it.
pub fn ensure_tracefs() -> Result<Option<String>> {
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(None);
    }
    let src = CString::new("tracefs")?;
    let target = CString::new(TRACEFS)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed ({err}). \
             Mount it as root with `mount -t tracefs tracefs {TRACEFS}`"
        );
    }
    Ok(Some(format!("mounted tracefs at {TRACEFS}")))
}

/// For tests of the failure path only: tracepoints (`category:name`, comma
/// separated) to treat as missing from this kernel, so that a family really
/// fails to attach on a machine where everything loads.
pub const HIDE_TRACEPOINTS_ENV: &str = "TRACER_TEST_HIDE_TRACEPOINTS";

/// Whether tracefs lists tracepoint `category:name` (tracefs is mounted by
/// then, see ensure_tracefs).
pub fn tracepoint_exists(category: &str, name: &str) -> bool {
    if let Ok(hidden) = std::env::var(HIDE_TRACEPOINTS_ENV)
        && hidden
            .split(',')
            .any(|h| h.trim() == format!("{category}:{name}"))
    {
        return false;
    }
    [TRACEFS, "/sys/kernel/debug/tracing"].iter().any(|root| {
        Path::new(root)
            .join("events")
            .join(category)
            .join(name)
            .is_dir()
    })
}

/// The PID names a live process.
pub fn check_pid(pid: u32) -> Result<()> {
    if pid == 0 {
        bail!("PID 0 is not a process; pass the PID of a running node process");
    }
    if !Path::new(&format!("/proc/{pid}")).is_dir() {
        bail!(
            "no process with PID {pid} (it may have exited). Find node processes with `pgrep -a node`"
        );
    }
    // A stat that cannot be read means the process is going away.
    let Ok(stat) = procfs::process::Process::new(pid as i32).and_then(|p| p.stat()) else {
        bail!("PID {pid} is exiting; nothing left to trace");
    };
    if stat.flags & PF_KTHREAD != 0 {
        bail!(
            "PID {pid} ({}) is a kernel thread, not a program; pass the PID of a node process",
            stat.comm
        );
    }
    if stat.state == 'Z' || stat.state == 'X' {
        bail!(
            "PID {pid} ({}) has already exited (a zombie waiting for its parent to collect it);              nothing left to trace",
            stat.comm
        );
    }
    Ok(())
}

/// task->flags bit of kernel threads (include/linux/sched.h).
const PF_KTHREAD: u32 = 0x0020_0000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_missing_capabilities() {
        assert_eq!(
            missing_capabilities(0),
            ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"]
        );
        let all = (1u64 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_PTRACE);
        assert!(missing_capabilities(all).is_empty());
        let admin = (1u64 << CAP_SYS_ADMIN) | (1 << CAP_SYS_PTRACE);
        assert!(missing_capabilities(admin).is_empty());
        assert_eq!(
            missing_capabilities(1u64 << CAP_BPF),
            ["CAP_PERFMON", "CAP_SYS_PTRACE"]
        );
    }

    #[test]
    fn rejects_pid_zero_and_missing_pid() {
        assert!(check_pid(0).unwrap_err().to_string().contains("PID 0"));
        // PIDs are below 2^22 on Linux.
        let err = check_pid(4_000_000_000).unwrap_err().to_string();
        assert!(err.contains("no process with PID 4000000000"), "{err}");
        check_pid(std::process::id()).unwrap();
        // kthreadd is PID 2 on Linux.
        let err = check_pid(2).unwrap_err().to_string();
        assert!(err.contains("kernel thread"), "{err}");
    }
}
