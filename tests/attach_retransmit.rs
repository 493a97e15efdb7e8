//! `tracer attach` reports every TCP retransmit of a traced connection, and
//! exactly as many as the kernel counts. Two network namespaces created by
//! the test, joined by a veth pair, with packet loss on the way from the
//! client to the server; a node echo server in one, the traced node client in
//! the other, alone in its namespace, so the namespace's `Tcp RetransSegs`
//! counter (/proc/net/snmp) counts exactly this connection's retransmits.
//! Rarely, under load, the kernel counts a retransmit whose event never
//! reaches the tracer (no ring or recursion loss either); the tracer then
//! finds the shortfall at close against the socket's total_retrans and
//! reports it as `lost` with stage `probe`. So the exact checks are: the
//! events' segments + probe losses == RetransSegs growth, and
//! tcp_close.retransmits == RetransSegs growth.
//! Needs root (loads BPF programs, creates network namespaces).
//!
//! Loss: `tc qdisc ... netem loss 30%` on the client's veth when the kernel
//! has netem. The kernels these tests run on are built without it
//! (`# CONFIG_NET_SCH_NETEM is not set`), so then the test attaches a tiny
//! tcx BPF program to the ingress of the server's veth that drops 30% of the
//! IPv4 packets at random. Either way the client's kernel believes each
//! packet was sent; the loss happens "on the wire".

mod common;
mod lossy;

use std::{
    collections::BTreeMap,
    os::fd::AsRawFd,
    process::Command,
    sync::{Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use common::{Proc, Tracer, fixtures_dir, list_problems, require_root, short, wait_ready_line};
use lossy::{Namespaces, attach_random_drop, bpf, bpf_call, run};
use serde_json::Value;

/// Messages the client sends (one at a time, each answered).
const MESSAGES: usize = 200;
/// Bytes of each message and of each reply.
const MESSAGE_LEN: u64 = 64;
/// Loss in percent, client to server.
const LOSS_PERCENT: u32 = 30;

/// The BPF programs of process `pid` that the kernel skipped at least once
/// (`recursion_misses` in /proc/PID/fdinfo: a program not run because
/// another BPF program was running on that CPU), by program name. For
/// failure messages.
fn skipped_programs(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(misses)) = (field("prog_id:"), field("recursion_misses:")) else {
            continue;
        };
        if misses > 0 {
            out.push(format!("{} skipped {misses} times", prog_name(id)));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The name of BPF program `id` (BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD).
fn prog_name(id: u64) -> String {
    #[repr(C)]
    struct GetFdById {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let Ok(prog_id) = u32::try_from(id) else {
        return format!("program {id}");
    };
    let mut by_id = GetFdById {
        prog_id,
        next_id: 0,
        open_flags: 0,
    };
    let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id) else {
        return format!("program {id}");
    };
    // struct bpf_prog_info up to `name` (offset 64, 16 bytes).
    let mut info = [0u8; 80];
    let mut get = GetInfo {
        bpf_fd: u32::try_from(fd.as_raw_fd()).expect("fd"),
        info_len: 80,
        info: info.as_mut_ptr() as u64,
    };
    if bpf_call(BPF_OBJ_GET_INFO_BY_FD, &mut get).is_err() {
        return format!("program {id}");
    }
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    format!("program {id} ({})", String::from_utf8_lossy(&name[..end]))
}

/// The `Tcp:` and `TcpExt:` counters (/proc/net/snmp and /proc/net/netstat)
/// of the network namespace `pid` is in, as `Tcp.RetransSegs` etc.
fn tcp_counters(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for file in ["snmp", "netstat"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/net/{file}: {e}"));
        for prefix in ["Tcp:", "TcpExt:"] {
            let mut lines = text.lines().filter(|l| l.starts_with(prefix));
            if let (Some(names), Some(values)) = (lines.next(), lines.next()) {
                for (n, v) in names
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .skip(1)
                {
                    if let Ok(v) = v.parse() {
                        out.insert(format!("{}.{n}", prefix.trim_end_matches(':')), v);
                    }
                }
            }
        }
    }
    assert!(
        out.contains_key("Tcp.RetransSegs"),
        "no Tcp RetransSegs counter for pid {pid}'s namespace"
    );
    out
}

/// The counters that changed between two [`tcp_counters`] snapshots.
fn counter_deltas(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.wrapping_sub(before.get(k).copied().unwrap_or(0));
            (d != 0 && k != "Tcp.CurrEstab").then(|| format!("{k} +{d}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// TCP sockets of `pid`'s namespace that are not in TIME_WAIT (state 06):
/// sockets that may still retransmit.
fn live_sockets(pid: u32) -> Vec<String> {
    let mut v = Vec::new();
    for f in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
        for l in text.lines().skip(1) {
            if l.split_whitespace().nth(3) != Some("06") {
                v.push(l.trim().to_owned());
            }
        }
    }
    v
}

/// The two tests run one after the other: the busy one's load would disturb
/// the quiet one, and each creates its own namespaces.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// On a quiet machine.
#[test]
fn retransmits_match_the_kernel_count() {
    if !require_root("retransmits_match_the_kernel_count") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    retransmit_scenario("retransmits_match_the_kernel_count", 0, false);
}

/// While other processes make syscalls as fast as they can (`dd bs=1`, one
/// per CPU). The tracer's syscall tracepoints then run for their syscalls all
/// the time, and a retransmit timer (softirq) firing while one of them runs
/// is where a tracepoint program can be skipped by the kernel's BPF
/// recursion protection. A busy host is where retransmits matter: every one
/// must still be reported (or the loss counted).
#[test]
fn retransmits_match_the_kernel_count_under_syscall_load() {
    if !require_root("retransmits_match_the_kernel_count_under_syscall_load") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    retransmit_scenario(
        "retransmits_match_the_kernel_count_under_syscall_load",
        1,
        true,
    );
}

fn retransmit_scenario(test: &str, n: u32, busy: bool) {
    let me = std::process::id();
    let (cns, sns) = (
        format!("tracer-rt-{me}-{n}c"),
        format!("tracer-rt-{me}-{n}s"),
    );
    let (cdev, sdev) = (format!("trc{me}-{n}"), format!("trs{me}-{n}"));
    let subnet = (me + n) % 250;
    let (caddr, saddr) = (format!("10.213.{subnet}.1"), format!("10.213.{subnet}.2"));
    // Dropped last: after the processes and the drop program below.
    let _namespaces = Namespaces::create(&[&cns, &sns]);
    run(&[
        "ip", "link", "add", &cdev, "netns", &cns, "type", "veth", "peer", "name", &sdev, "netns",
        &sns,
    ]);
    for (ns, dev, addr) in [(&cns, &cdev, &caddr), (&sns, &sdev, &saddr)] {
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            dev,
        ]);
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    // Loss from the client to the server.
    let netem = Command::new("tc")
        .args([
            "-n", &cns, "qdisc", "add", "dev", &cdev, "root", "netem", "loss",
        ])
        .arg(format!("{LOSS_PERCENT}%"))
        .output()
        .expect("running tc");
    let _drop_link = if netem.status.success() {
        None
    } else {
        eprintln!(
            "{test}: netem is not available in this kernel ({}); \
             dropping {LOSS_PERCENT}% of the client's packets with a tcx BPF program on the \
             server's veth instead",
            String::from_utf8_lossy(&netem.stderr).trim()
        );
        Some(
            attach_random_drop(&sns, &sdev, LOSS_PERCENT).unwrap_or_else(|e| {
                panic!(
                    "no way to make packet loss: netem failed ({}) and the tcx drop program \
                 failed: {e}",
                    String::from_utf8_lossy(&netem.stderr).trim()
                )
            }),
        )
    };

    let node_in = |ns: &str, name: &str, args: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, common::NODE])
            .arg(fixtures_dir().join(name))
            .args(args);
        let mut p = Proc::spawn(name, cmd, true);
        let ready = wait_ready_line(&mut p);
        (p, ready)
    };
    let (server, port) = node_in(&sns, "rt_server.js", &[&saddr]);
    let port: u16 = port.parse().expect("rt_server.js READY <port>");
    let (mut client, _) = node_in(
        &cns,
        "rt_client.js",
        &[&saddr, &port.to_string(), &MESSAGES.to_string()],
    );
    let cpid = client.pid();
    // `ip netns exec` execs node in place: the pid is node's.
    assert_eq!(
        std::fs::read_link(format!("/proc/{cpid}/exe")).expect("client exe"),
        std::path::Path::new(common::NODE)
    );
    assert!(
        live_sockets(cpid).is_empty(),
        "the client's namespace must have no TCP socket yet: {:?}",
        live_sockets(cpid)
    );

    let mut tracer = Tracer::attach(&[cpid], &[]);
    // Killed when dropped (before the namespaces go).
    let _load: Vec<Proc> = if busy {
        let cpus = thread::available_parallelism().map_or(2, usize::from);
        (0..cpus)
            .map(|_| {
                let mut cmd = Command::new("dd");
                cmd.args(["if=/dev/zero", "of=/dev/null", "bs=1"]);
                Proc::spawn("dd bs=1", cmd, true)
            })
            .collect()
    } else {
        Vec::new()
    };
    let before = tcp_counters(cpid);
    client.send_line("go");
    let connected = client
        .stderr
        .wait_for("CONNECTED", Duration::from_secs(60), |l| {
            l.starts_with("CONNECTED ")
        });
    let lport: u16 = connected["CONNECTED ".len()..].parse().expect("local port");
    let done = client
        .stderr
        .wait_for("DONE", Duration::from_secs(240), |l| l.starts_with("DONE "));
    assert_eq!(done, format!("DONE {MESSAGES}"), "the client's exchange");
    // The connection is closed on the client's side; its FIN may still be
    // retransmitted until the server acknowledges it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !live_sockets(cpid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the client's socket did not leave FIN_WAIT within 120 s: {:?}",
            live_sockets(cpid)
        );
        thread::sleep(Duration::from_millis(100));
    }
    let after = tcp_counters(cpid);
    let kernel = after["Tcp.RetransSegs"] - before["Tcp.RetransSegs"];

    let tuple_ok = |e: &Value| {
        e["saddr"] == caddr.as_str()
            && e["sport"] == lport
            && e["daddr"] == saddr.as_str()
            && e["dport"] == port
    };
    // One event per retransmitted skb; RetransSegs counts its segments.
    let segments_of = |e: &Value| e["segments"].as_u64().unwrap_or(0);
    let count_retransmits = |evs: &[Value]| -> u64 {
        evs.iter()
            .filter(|e| e["kind"] == "tcp_retransmit" && e["pid"] == cpid)
            .map(segments_of)
            .sum()
    };
    // Retransmits the kernel counted without the tracer getting an event,
    // reported right after the connection's close.
    let is_probe_loss = |e: &Value| {
        e["kind"] == "lost" && e["stage"] == "probe" && e["for_kind"] == "tcp_retransmit"
    };
    let count_probe_lost = |evs: &[Value]| -> u64 {
        evs.iter()
            .filter(|e| is_probe_loss(e))
            .map(|e| e["count"].as_u64().unwrap_or(0))
            .sum()
    };
    // Events arrive promptly; give them a bounded moment.
    tracer.wait_events(Duration::from_secs(10), |evs| {
        count_retransmits(evs) + count_probe_lost(evs) >= kernel
            && evs
                .iter()
                .any(|e| e["kind"] == "tcp_close" && e["pid"] == cpid)
    });
    assert!(
        tracer.proc.try_status().is_none(),
        "the tracer ended although the client (pid {cpid}) still runs"
    );
    let skipped = skipped_programs(tracer.proc.pid());
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(15));
    drop(client);
    drop(server);

    let mut problems = Vec::new();
    let retransmits = run.of("tcp_retransmit", cpid);
    for e in &retransmits {
        if !tuple_ok(e) {
            problems.push(format!(
                "retransmit not of the connection {caddr}:{lport} -> {saddr}:{port}: {}",
                short(&e.to_string())
            ));
        }
    }
    if retransmits.is_empty() {
        problems.push(format!(
            "no tcp_retransmit event with {LOSS_PERCENT}% loss (the kernel counted {kernel})"
        ));
    }
    let segments: u64 = retransmits.iter().map(|e| segments_of(e)).sum();
    let probe_lost = count_probe_lost(&run.events);
    if segments + probe_lost != kernel {
        problems.push(format!(
            "{} tcp_retransmit events resending {segments} segments + {probe_lost} reported \
             lost (stage probe), but the kernel's Tcp RetransSegs in the client's namespace grew \
             by {kernel}",
            retransmits.len()
        ));
    }
    // Reported, but still a miss: it must stay rare (seen: 1 in ~90).
    if probe_lost * 20 > kernel {
        problems.push(format!(
            "{probe_lost} of {kernel} retransmits reached no event (more than 5%)"
        ));
    }
    let other_lost: Vec<String> = run
        .events
        .iter()
        .filter(|e| e["kind"] == "lost" && !is_probe_loss(e))
        .map(|e| short(&e.to_string()))
        .collect();
    if !other_lost.is_empty() {
        problems.push(format!("losses other than stage probe: {other_lost:?}"));
    }
    let summary = run.events.last().expect("the summary");
    if summary["lost"]["probe"].as_u64().unwrap_or(0) != probe_lost {
        problems.push(format!(
            "summary.lost.probe must be {probe_lost}, the probe losses reported: {}",
            short(&summary.to_string())
        ));
    }
    eprintln!(
        "{test}: kernel RetransSegs +{kernel}; {} tcp_retransmit events resending {segments} \
         segments; lost (probe) {probe_lost}",
        retransmits.len()
    );
    let connects = run.of("tcp_connect", cpid);
    if !(connects.len() == 1 && tuple_ok(connects[0])) {
        problems.push(format!(
            "expected one tcp_connect {caddr}:{lport} -> {saddr}:{port}, got {connects:?}"
        ));
    }
    let want_bytes = MESSAGES as u64 * MESSAGE_LEN;
    let closes = run.of("tcp_close", cpid);
    if !(closes.len() == 1
        && tuple_ok(closes[0])
        && closes[0]["bytes_sent"] == want_bytes
        && closes[0]["bytes_received"] == want_bytes
        && closes[0]["retransmits"] == kernel)
    {
        problems.push(format!(
            "expected one tcp_close of {caddr}:{lport} -> {saddr}:{port} with {want_bytes} bytes \
             sent and received and retransmits {kernel} (the kernel's count), got {closes:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "client pid {cpid}{}, kernel RetransSegs +{kernel}:\n{}\nthe client namespace's TCP \
         counters that changed: {}\nthe tracer's BPF programs the kernel skipped: {skipped:?}\n\
         tracer stderr:\n{}",
        if busy { " (under syscall load)" } else { "" },
        list_problems(&problems),
        counter_deltas(&before, &after),
        run.stderr_text()
    );
    run.assert_clean_end_allowing(is_probe_loss);
}
