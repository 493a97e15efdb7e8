//! The reference point: bpftrace hooking what tracer hooks (write syscalls,
//! TCP state changes and retransmits, the event loop's poll; node's
//! SSL_read/SSL_write for TLS) and counting into maps, i.e. the cheapest
//! possible version of the same probes.
//!
//! bpftrace runs with `-p PID`, so its uprobes trap only in the server, as
//! tracer's do (`UProbeScope::OneProcess`). Without it a uprobe on
//! `/proc/PID/exe` is set in every process running that node binary,
//! including other people's on a shared machine.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::procs::{self, Spawned, Stream};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// What the overhead benchmark compares tracer's logs, tcp and runtime
/// families with.
pub fn overhead_script(pid: u32) -> String {
    format!(
        "\
tracepoint:syscalls:sys_enter_write /pid == {pid}/ {{ @writes[args->fd] = count(); }}
tracepoint:syscalls:sys_enter_writev /pid == {pid}/ {{ @writevs[args->fd] = count(); }}
tracepoint:sock:inet_sock_set_state {{ @tcp_states[args->oldstate, args->newstate] = count(); }}
tracepoint:tcp:tcp_retransmit_skb {{ @retransmits = count(); }}
uprobe:/proc/{pid}/exe:uv__io_poll /pid == {pid}/ {{ @poll_start[tid] = nsecs; }}
uretprobe:/proc/{pid}/exe:uv__io_poll /@poll_start[tid]/ {{
  @poll_ns = sum(nsecs - @poll_start[tid]);
  @loop_turns = count();
  delete(@poll_start[tid]);
}}
"
    )
}

/// What tracer's TLS plaintext capture hooks: a uprobe on SSL_write (the
/// plaintext is in its arguments) and a uprobe + uretprobe pair on SSL_read
/// (the plaintext is there only on return).
pub fn tls_script(pid: u32) -> String {
    format!(
        "\
uprobe:/proc/{pid}/exe:SSL_write /pid == {pid}/ {{ @ssl_write_calls = count(); }}
uprobe:/proc/{pid}/exe:SSL_read /pid == {pid}/ {{ @ssl_read_calls = count(); }}
uretprobe:/proc/{pid}/exe:SSL_read /pid == {pid}/ {{ @ssl_read_returns = count(); }}
"
    )
}

/// Starts `bpftrace -p <pid> <script_path>` and returns once all its probes
/// are attached.
pub fn attach_ready(script_path: &Path, pid: u32) -> Result<Spawned> {
    let mut command = Command::new("bpftrace");
    command
        .args(["-p", &pid.to_string()])
        .arg(script_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut bpftrace = Spawned::start("bpftrace", &mut command)?;
    // bpftrace prints "Attaching N probes..." before attaching, and its BEGIN
    // probe fires before the others are attached, so neither marks ready.
    // Every attached probe holds a perf event fd, as does one output buffer
    // per online CPU: ready is when that many perf event fds are open.
    let line = bpftrace.wait_for_line(Stream::Stdout, "Attaching", ATTACH_TIMEOUT)?;
    let probes: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected bpftrace line `{line}`"))?;
    let expected = probes + online_cpus()?;
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        procs::check_interrupted()?;
        if let Some(status) = bpftrace.try_exited()? {
            bail!(
                "bpftrace exited ({status}) while attaching; its output:\n{}",
                bpftrace.output()
            );
        }
        let open = perf_event_fds(bpftrace.pid());
        if open >= expected {
            return Ok(bpftrace);
        }
        if Instant::now() >= deadline {
            bail!(
                "bpftrace attached {open} of {expected} perf events within {}s; its output:\n{}",
                ATTACH_TIMEOUT.as_secs(),
                bpftrace.output()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// bpftrace prints its maps when stopped. Under load the counter `map`
/// (`@loop_turns`, `@ssl_write_calls`, ...) grows many times a second, so a
/// missing or zero one means the probes were not really attached and the
/// round measured nothing.
pub fn check_fired(maps: &str, map: &str) -> Result<()> {
    let prefix = format!("{map}:");
    let count = maps
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse::<u64>().ok());
    match count {
        Some(n) if n > 0 => Ok(()),
        _ => bail!("bpftrace's {map} stayed at 0 during the round; its output:\n{maps}"),
    }
}

fn perf_event_fds(pid: u32) -> usize {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.flatten()
        .filter(|entry| {
            fs::read_link(entry.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:[perf_event]")
        })
        .count()
}

fn online_cpus() -> Result<usize> {
    let path = "/sys/devices/system/cpu/online";
    let text = fs::read_to_string(path).with_context(|| format!("could not read {path}"))?;
    count_cpu_list(text.trim()).with_context(|| format!("unexpected contents of {path}: {text}"))
}

/// Counts a kernel CPU list such as `0-3,6,8-9`.
fn count_cpu_list(list: &str) -> Option<usize> {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((lo, hi)) => Some(hi.parse::<usize>().ok()?.checked_sub(lo.parse().ok()?)? + 1),
            None => part.parse::<usize>().ok().map(|_| 1),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn fired_only_with_a_count() {
        let maps = "@writes[1]: 10\n@loop_turns: 42\n";
        assert!(check_fired(maps, "@loop_turns").is_ok());
        assert!(check_fired("@writes[1]: 10\n", "@loop_turns").is_err());
        assert!(check_fired("@loop_turns: 0\n", "@loop_turns").is_err());
        assert!(check_fired("@ssl_write_calls: 7\n", "@ssl_write_calls").is_ok());
    }

    #[test]
    fn scripts_filter_on_the_pid() {
        let text = overhead_script(4242);
        assert!(text.contains("uprobe:/proc/4242/exe:uv__io_poll /pid == 4242/"));
        assert_eq!(text.matches("/pid == 4242/").count(), 3);
        let text = tls_script(4242);
        assert!(text.contains("uprobe:/proc/4242/exe:SSL_write /pid == 4242/"));
        assert!(text.contains("uretprobe:/proc/4242/exe:SSL_read /pid == 4242/"));
        assert_eq!(text.matches("/pid == 4242/").count(), 3);
    }
}
