//! What /proc says about a target process before tracer touches it: that it
//! is a node process that catches SIGUSR1, its network namespace, the port
//! its inspector uses and the TCP ports it listens on.

use std::{collections::HashSet, net::IpAddr, os::unix::fs::MetadataExt as _};

use anyhow::{Context as _, Result, bail};

const SIGUSR1: u32 = 10;

/// A node process, checked.
#[derive(Debug, Clone)]
pub struct Target {
    pub pid: u32,
    pub exe: String,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat):
    /// with the pid, names the process even after the pid is reused.
    pub start_time: u64,
    /// Inode of its network namespace (/proc/PID/ns/net).
    pub netns: u64,
    /// The port its inspector listens on when opened (`--inspect-port`,
    /// `--inspect=[host:]port` in its command line or NODE_OPTIONS; 9229).
    pub inspect_port: u16,
    /// Whether it was started with the inspector open (`--inspect*`).
    pub started_with_inspect: bool,
    /// Whether it has a SIGUSR1 handler (node installs one at start;
    /// without it SIGUSR1 would kill the process, so none is sent).
    pub catches_sigusr1: bool,
}

impl Target {
    /// Reads and checks PID. Refuses, with the reason, anything SIGUSR1
    /// must not be sent to: a missing process, a non-node program. (One
    /// that does not catch SIGUSR1 is refused when the signal would be
    /// needed: see `catches_sigusr1`.)
    pub fn inspect(pid: u32) -> Result<Target> {
        let proc = format!("/proc/{pid}");
        let stat = std::fs::read_to_string(format!("{proc}/stat")).with_context(|| {
            format!("PID {pid} does not exist (or is not visible: run tracer as root)")
        })?;
        let start_time = parse_start_time(&stat)
            .with_context(|| format!("PID {pid}: unreadable /proc/{pid}/stat"))?;
        let exe = std::fs::read_link(format!("{proc}/exe"))
            .map(|p| p.display().to_string())
            .with_context(|| {
                format!("PID {pid}: cannot read /proc/{pid}/exe (a kernel thread, or run as root)")
            })?;
        let cmdline = read_nul_separated(&format!("{proc}/cmdline"));
        if !looks_like_node(&exe, &cmdline) {
            bail!(
                "PID {pid} ({exe}) is not a node process: logpoints and eval work only in \
                 node (its inspector is the way in). Nothing was sent to it."
            );
        }
        let status = std::fs::read_to_string(format!("{proc}/status"))
            .with_context(|| format!("PID {pid}: cannot read /proc/{pid}/status"))?;
        let catches_sigusr1 = catches_signal(&status, SIGUSR1);
        let netns = std::fs::metadata(format!("{proc}/ns/net"))
            .with_context(|| format!("PID {pid}: cannot read its network namespace"))?
            .ino();
        let environ = read_nul_separated(&format!("{proc}/environ"));
        let node_options: Vec<String> = environ
            .iter()
            .filter_map(|e| e.strip_prefix("NODE_OPTIONS="))
            .flat_map(|o| o.split_whitespace().map(str::to_owned))
            .collect();
        // Node's own options come before the script; NODE_OPTIONS adds more.
        let own: Vec<String> = cmdline
            .iter()
            .skip(1)
            .take_while(|a| a.starts_with('-'))
            .cloned()
            .chain(node_options)
            .collect();
        let (inspect_port, started_with_inspect) = inspect_options(&own);
        if inspect_port == 0 {
            bail!(
                "PID {pid} ({exe}) was started with an inspector port of 0 (a random port), \
                 which tracer cannot tell from the program's own ports. Start it with \
                 --inspect-port=PORT (or --inspect=127.0.0.1:PORT) instead."
            );
        }
        Ok(Target {
            pid,
            exe,
            start_time,
            netns,
            inspect_port,
            started_with_inspect,
            catches_sigusr1,
        })
    }

    /// Whether the process still runs and is the same one (an exited
    /// process waiting to be reaped is a zombie, not alive).
    pub fn alive(&self) -> bool {
        live_start_time(self.pid) == Some(self.start_time)
    }

    /// TCP sockets this process listens on: (address, port).
    pub fn listening(&self) -> Vec<(IpAddr, u16)> {
        let own = socket_inodes(self.pid);
        listeners_in_netns(self.pid)
            .into_iter()
            .filter(|l| own.contains(&l.inode))
            .map(|l| (l.addr, l.port))
            .collect()
    }

    /// Whether any socket in the target's network namespace listens on
    /// `port`, and whether it is the target's own.
    pub fn port_holder(&self, port: u16) -> Option<bool> {
        let own = socket_inodes(self.pid);
        let mut found = None;
        for l in listeners_in_netns(self.pid) {
            if l.port == port {
                let mine = own.contains(&l.inode);
                found = Some(found.unwrap_or(false) || mine);
            }
        }
        found
    }
}

/// The start time of `pid` (for telling a reused PID apart), if it is
/// running: None for a process that is gone or a zombie.
pub(crate) fn live_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat[stat.rfind(')')? + 1..].split_whitespace().next();
    if matches!(state, Some("Z" | "X")) {
        return None;
    }
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // comm (field 2) may hold spaces and parentheses: fields start after
    // the last ')'. starttime is field 22, the 20th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The NUL-separated strings of a /proc file (cmdline, environ); empty
/// when it is gone or unreadable.
pub(crate) fn read_nul_separated(path: &str) -> Vec<String> {
    std::fs::read(path)
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn looks_like_node(exe: &str, cmdline: &[String]) -> bool {
    let base = |p: &str| p.rsplit('/').next().unwrap_or("").to_owned();
    let exe_base = base(exe.trim_end_matches(" (deleted)"));
    exe_base == "node"
        || exe_base.starts_with("node")
        || exe_base == "nodejs"
        || cmdline.first().is_some_and(|a| base(a) == "node")
}

/// Whether the `SigCgt` mask in /proc/PID/status has `sig`.
fn catches_signal(status: &str, sig: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << (sig - 1)) != 0)
}

/// The inspector port node would use, and whether it starts open, from
/// node's own options (`--inspect`, `--inspect=9230`, `--inspect=h:9230`,
/// `--inspect-brk`, `--inspect-wait`, `--inspect-port=9230`).
fn inspect_options(args: &[String]) -> (u16, bool) {
    let mut port = 9229;
    let mut open = false;
    let port_of = |v: &str| v.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    for a in args {
        let (name, value) = match a.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (a.as_str(), None),
        };
        match name {
            "--inspect" | "--inspect-brk" | "--inspect-wait" => {
                open = true;
                if let Some(p) = value.and_then(port_of) {
                    port = p;
                }
            }
            "--inspect-port" | "--debug-port" => {
                if let Some(p) = value.and_then(port_of) {
                    port = p;
                }
            }
            _ => {}
        }
    }
    (port, open)
}

/// Inodes of the sockets `pid` holds (/proc/PID/fd/* -> socket:[N]).
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for entry in dir.flatten() {
        if let Ok(link) = std::fs::read_link(entry.path())
            && let Some(ino) = link
                .to_str()
                .and_then(|s| s.strip_prefix("socket:["))
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
        {
            out.insert(ino);
        }
    }
    out
}

struct Listener {
    addr: IpAddr,
    port: u16,
    inode: u64,
}

/// Listening TCP sockets of the network namespace `pid` is in
/// (/proc/PID/net/tcp{,6} show that namespace's table).
fn listeners_in_netns(pid: u32) -> Vec<Listener> {
    let mut out = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((addr_hex, port_hex)) = f[1].split_once(':') else {
                continue;
            };
            let (Ok(port), Ok(inode)) = (u16::from_str_radix(port_hex, 16), f[9].parse()) else {
                continue;
            };
            let Some(addr) = parse_proc_addr(addr_hex, v6) else {
                continue;
            };
            out.push(Listener { addr, port, inode });
        }
    }
    out
}

/// /proc/net/tcp addresses are the raw bytes printed as native-endian
/// 32-bit words.
fn parse_proc_addr(hex: &str, v6: bool) -> Option<IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if v6 {
        let b: [u8; 16] = bytes.try_into().ok()?;
        Some(IpAddr::from(b))
    } else {
        let b: [u8; 4] = bytes.try_into().ok()?;
        Some(IpAddr::from(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_after_odd_comm() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        assert_eq!(parse_start_time(stat), Some(987654));
    }

    #[test]
    fn inspect_flags() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(inspect_options(&s(&[])), (9229, false));
        assert_eq!(inspect_options(&s(&["--inspect"])), (9229, true));
        assert_eq!(
            inspect_options(&s(&["--inspect=0.0.0.0:9300"])),
            (9300, true)
        );
        assert_eq!(inspect_options(&s(&["--inspect-port=9301"])), (9301, false));
        assert_eq!(inspect_options(&s(&["--inspect-brk=9302"])), (9302, true));
    }

    #[test]
    fn sigcgt_mask() {
        assert!(catches_signal("SigCgt:\t0000000100004602\n", 10));
        assert!(!catches_signal("SigCgt:\t0000000000000000\n", 10));
    }

    #[test]
    fn proc_net_addresses() {
        assert_eq!(
            parse_proc_addr("0100007F", false),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000", true),
            Some("::1".parse().unwrap())
        );
    }
}
