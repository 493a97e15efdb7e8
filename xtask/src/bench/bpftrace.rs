//! The reference point: bpftrace hooking what tracer hooks (write syscalls,
//! TCP state changes and retransmits, the event loop's poll) and counting
//! into maps, i.e. the cheapest possible version of the same probes.

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

pub fn script(pid: u32) -> String {
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

/// Starts bpftrace on `script_path` and returns once all its probes are
/// attached.
pub fn attach_ready(script_path: &Path) -> Result<Spawned> {
    let mut command = Command::new("bpftrace");
    command
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

/// bpftrace prints its maps when stopped. Under load the server's event loop
/// turns many times a second, so a missing or zero `@loop_turns` means the
/// probes were not really attached and the round measured nothing.
pub fn check_fired(maps: &str) -> Result<()> {
    let turns = maps
        .lines()
        .find_map(|line| line.strip_prefix("@loop_turns:"))
        .and_then(|n| n.trim().parse::<u64>().ok());
    match turns {
        Some(n) if n > 0 => Ok(()),
        _ => bail!(
            "bpftrace's uv__io_poll probes did not fire during the round; its output:\n{maps}"
        ),
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
    fn fired_only_with_loop_turns() {
        assert!(check_fired("@writes[1]: 10\n@loop_turns: 42\n").is_ok());
        assert!(check_fired("@writes[1]: 10\n").is_err());
        assert!(check_fired("@loop_turns: 0\n").is_err());
    }

    #[test]
    fn script_filters_on_the_pid() {
        let text = script(4242);
        assert!(text.contains("uprobe:/proc/4242/exe:uv__io_poll /pid == 4242/"));
        assert_eq!(text.matches("/pid == 4242/").count(), 3);
    }
}
