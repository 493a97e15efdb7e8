//! Which BPF programs each probe family needs, and where each one hooks in.
//! Capture::load walks this plan in order; a program that cannot load or
//! attach leaves its whole family out (or fails the run, see capture/mod.rs).

use super::{CaptureConfig, Family, HttpCapture};

/// Where a program is attached once it has loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// Classic tracepoints `category:name` (the same program on each name).
    Tracepoint {
        category: &'static str,
        names: Vec<&'static str>,
    },
    /// A raw tracepoint of the program's own name.
    RawTracepoint,
    /// Loaded now, attached per traced process later (uprobes on the
    /// process's executable, cgroup_skb programs on its cgroup).
    PerTarget,
}

/// One program of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub program: &'static str,
    /// None: process following, which every family needs (fork, exec and
    /// exit are what make children traced and exits noticed).
    pub family: Option<Family>,
    pub hook: Hook,
}

fn step(program: &'static str, family: Option<Family>, hook: Hook) -> Step {
    Step {
        program,
        family,
        hook,
    }
}

fn tracepoint(category: &'static str, names: &[&'static str]) -> Hook {
    Hook::Tracepoint {
        category,
        names: names.to_vec(),
    }
}

/// The programs `config` needs, in load order: process following first,
/// then each family's.
pub fn plan(config: &CaptureConfig) -> Vec<Step> {
    let logs = config.has(Family::Logs);
    let http = config.has(Family::Http);
    let http_syscalls = http && config.http_capture == HttpCapture::Syscalls;
    // The write hooks carry log lines and, with `--http-capture syscalls`,
    // connection payload: they belong to logs when logs are on.
    let writes = if logs { Family::Logs } else { Family::Http };
    let mut steps = vec![
        step(
            "sched_process_fork",
            None,
            tracepoint("sched", &["sched_process_fork"]),
        ),
        step(
            "sched_process_exec",
            None,
            tracepoint("sched", &["sched_process_exec"]),
        ),
        step(
            "sched_process_exit",
            None,
            tracepoint("sched", &["sched_process_exit"]),
        ),
    ];
    if logs || http_syscalls {
        let w = Some(writes);
        steps.push(step(
            "sys_enter_write",
            w,
            tracepoint("syscalls", &["sys_enter_write", "sys_enter_pwrite64"]),
        ));
        steps.push(step(
            "sys_enter_writev",
            w,
            tracepoint("syscalls", &["sys_enter_writev"]),
        ));
        let mut exits = vec!["sys_exit_write", "sys_exit_pwrite64", "sys_exit_writev"];
        if http_syscalls {
            exits.push("sys_exit_read");
        }
        steps.push(step("sys_exit_rw", w, tracepoint("syscalls", &exits)));
    }
    if http_syscalls {
        steps.push(step(
            "sys_enter_read",
            Some(Family::Http),
            tracepoint("syscalls", &["sys_enter_read"]),
        ));
    }
    if logs {
        for (program, name) in [
            ("sys_enter_openat", "sys_enter_openat"),
            ("sys_exit_openat", "sys_exit_openat"),
        ] {
            steps.push(step(
                program,
                Some(Family::Logs),
                tracepoint("syscalls", &[name]),
            ));
        }
    }
    if config.has(Family::Tcp) || http {
        // Connection tracking is what HTTP parsing stands on: without
        // `--probes tcp` these still load, as part of http.
        let family = if config.has(Family::Tcp) {
            Family::Tcp
        } else {
            Family::Http
        };
        for program in ["inet_sock_set_state", "tcp_retransmit_skb"] {
            steps.push(step(program, Some(family), Hook::RawTracepoint));
        }
    }
    if http && !http_syscalls {
        // Which connection a thread read or wrote last, for binding `SSL *`s
        // (probes/skb.rs); the segment programs attach per target cgroup.
        for program in ["sock_recv_length", "sock_send_length"] {
            steps.push(step(program, Some(Family::Http), Hook::RawTracepoint));
        }
        for program in ["skb_ingress", "skb_egress"] {
            steps.push(step(program, Some(Family::Http), Hook::PerTarget));
        }
    }
    if config.has(Family::Runtime) {
        for program in RUNTIME_UPROBES {
            steps.push(step(program, Some(Family::Runtime), Hook::PerTarget));
        }
    }
    if http {
        for program in TLS_UPROBES {
            steps.push(step(program, Some(Family::Http), Hook::PerTarget));
        }
    }
    steps
}

/// Uprobes of the `runtime` family (probes/runtime.rs).
pub const RUNTIME_UPROBES: [&str; 5] = [
    "uv_io_poll_enter",
    "epoll_wait_enter",
    "epoll_wait_exit",
    "gc_enter",
    "gc_exit",
];

/// The generic programs of `tracer probe` (probes/usdt.rs), loaded by the
/// probe session rather than by this plan.
pub const AD_HOC: [&str; 2] = ["probe_hit", "probe_ret"];

/// Uprobes on node's OpenSSL (probes/tls.rs), part of `http`.
pub const TLS_UPROBES: [&str; 4] = [
    "ssl_write_enter",
    "ssl_write_exit",
    "ssl_read_enter",
    "ssl_read_exit",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn config(families: &[Family], http_capture: HttpCapture) -> CaptureConfig {
        CaptureConfig {
            families: families.to_vec(),
            families_explicit: false,
            max_buffer_bytes: 1024,
            loop_min_busy_ns: 0,
            ring_bytes: 1 << 20,
            socket_capture_bytes: 4096,
            report_all_execs: false,
            http_capture,
        }
    }

    fn programs(steps: &[Step]) -> Vec<&'static str> {
        steps.iter().map(|s| s.program).collect()
    }

    #[test]
    fn process_following_comes_first_and_belongs_to_no_family() {
        let steps = plan(&config(&[Family::Tcp], HttpCapture::Skb));
        assert_eq!(
            programs(&steps),
            [
                "sched_process_fork",
                "sched_process_exec",
                "sched_process_exit",
                "inet_sock_set_state",
                "tcp_retransmit_skb"
            ]
        );
        assert!(steps[..3].iter().all(|s| s.family.is_none()));
        assert!(steps[3..].iter().all(|s| s.family == Some(Family::Tcp)));
    }

    #[test]
    fn default_http_uses_segments_not_syscall_reads() {
        let all = [Family::Logs, Family::Tcp, Family::Runtime, Family::Http];
        let steps = plan(&config(&all, HttpCapture::Skb));
        let names = programs(&steps);
        assert!(!names.contains(&"sys_enter_read"));
        assert!(names.contains(&"skb_ingress") && names.contains(&"sock_send_length"));
        let exit = steps.iter().find(|s| s.program == "sys_exit_rw").unwrap();
        assert_eq!(
            exit.hook,
            tracepoint(
                "syscalls",
                &["sys_exit_write", "sys_exit_pwrite64", "sys_exit_writev"]
            )
        );
        // Every uprobe of both families is loaded up front.
        for p in RUNTIME_UPROBES.iter().chain(TLS_UPROBES.iter()) {
            assert!(names.contains(p), "{p} missing");
        }
    }

    #[test]
    fn http_alone_owns_the_hooks_it_needs() {
        let steps = plan(&config(&[Family::Http], HttpCapture::Syscalls));
        let exit = steps.iter().find(|s| s.program == "sys_exit_rw").unwrap();
        assert_eq!(exit.family, Some(Family::Http));
        assert_eq!(
            exit.hook,
            tracepoint(
                "syscalls",
                &[
                    "sys_exit_write",
                    "sys_exit_pwrite64",
                    "sys_exit_writev",
                    "sys_exit_read"
                ]
            )
        );
        let conn = steps
            .iter()
            .find(|s| s.program == "inet_sock_set_state")
            .unwrap();
        assert_eq!(conn.family, Some(Family::Http));
        assert!(!programs(&steps).contains(&"sys_enter_openat"));
    }
}
