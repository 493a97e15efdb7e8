//! Where a process sits in the cgroup v2 hierarchy (the segment programs
//! are attached to that directory).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};

/// The cgroup v2 directory of `pid`: the cgroup2 mount point joined with
/// the `0::` line of /proc/PID/cgroup.
pub fn dir_of(pid: u32) -> Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mount = cgroup2_mount(&mountinfo).ok_or_else(|| {
        anyhow!(
            "no cgroup v2 hierarchy is mounted; HTTP capture attaches to it. Mount one \
             (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or use --http-capture syscalls"
        )
    })?;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
    let rel = v2_path(&cgroups)
        .ok_or_else(|| anyhow!("/proc/{pid}/cgroup has no cgroup v2 (0::) entry"))?;
    Ok(join(&mount, rel))
}

fn join(mount: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    }
}

/// Mount point of the first cgroup2 file system in a mountinfo text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(mount)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The path of the `0::` (cgroup v2) line of a /proc/PID/cgroup text.
fn v2_path(cgroups: &str) -> Option<&str> {
    cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end_matches(" (deleted)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_directory() {
        let mountinfo = "\
25 1 0:23 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
30 25 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 25 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let mount = cgroup2_mount(mountinfo).unwrap();
        assert_eq!(mount, Path::new("/sys/fs/cgroup/unified"));
        let cgroups = "4:memory:/x\n0::/\n";
        assert_eq!(join(&mount, v2_path(cgroups).unwrap()), mount);
        let cgroups = "0::/system.slice/app.service\n";
        assert_eq!(
            join(&mount, v2_path(cgroups).unwrap()),
            Path::new("/sys/fs/cgroup/unified/system.slice/app.service")
        );
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }
}
