//! HTTP from TCP segments (the cgroup_skb capture) when the network
//! misbehaves: every request is reported once, with its exact size, although
//! segments are lost and retransmitted (the sender's hook sees a segment
//! again), duplicated (a lost ACK makes the receiver see data twice) and
//! reordered (a segment after a lost one arrives first), and although one
//! request's head arrives in dozens of segments and bodies in large
//! (GSO) skbs of which only a prefix is copied.
//!
//! Two network namespaces created here, joined by a veth pair; a tcx BPF
//! program on the ingress of each veth drops 10% of the IPv4 packets at
//! random (this kernel has no netem). A node HTTP server in one, a node
//! client writing HTTP/1.1 by hand on one keep-alive connection in the other
//! (so every byte is known), both traced. Needs root.

mod common;

use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    thread,
    time::Duration,
};

use common::{
    Proc, StdoutTo, Tracer, fixtures_dir, list_problems, require_root, start_node, wait_ready_line,
};
use serde_json::Value;

/// Rounds of (split head, 200 KiB upload, 256 KiB download).
const ROUNDS: usize = 3;
/// Loss in percent, each way.
const LOSS_PERCENT: u32 = 10;

/// Runs a command; panics with its output when it fails.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespaces deleted (with their veth pair) when dropped, also
/// after a failed assertion.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn create(names: &[&str]) -> Self {
        // Left over by an earlier run of this pid that was killed: remove.
        for n in names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        let ns = Self { names: Vec::new() };
        let mut ns = ns;
        for n in names {
            run(&["ip", "netns", "add", n]);
            ns.names.push((*n).to_owned());
        }
        ns
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// One eBPF instruction (struct bpf_insn).
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = dst | (src << 4);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

/// union bpf_attr for BPF_PROG_LOAD, up to expected_attach_type.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// union bpf_attr for BPF_LINK_CREATE with tcx fields.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    pad: u32,
    expected_revision: u64,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;

/// The bpf(2) system call; returns what it returns (an fd or 0).
fn bpf_call<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the given size
    // for `cmd`; the kernel reads (and writes results) only within it and
    // the buffers it points to, which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// A bpf(2) command that returns a new fd.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    let fd = i32::try_from(bpf_call(cmd, attr)?).expect("fd fits in i32");
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches to the ingress of `dev` in namespace `ns` a tcx program that
/// drops `percent`% of the IPv4 packets at random. The drop lasts as long as
/// the returned link fd is open.
fn attach_random_drop(ns: &str, dev: &str, percent: u32) -> Result<OwnedFd, String> {
    let ns = ns.to_owned();
    let dev = dev.to_owned();
    // setns(CLONE_NEWNET) changes only the calling thread: do it in a
    // thread of its own. The fds stay valid for the whole process.
    thread::spawn(move || -> Result<OwnedFd, String> {
        let nsfile = File::open(format!("/run/netns/{ns}")).map_err(|e| e.to_string())?;
        // SAFETY: a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let cname = std::ffi::CString::new(dev.clone()).map_err(|e| e.to_string())?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(format!("no device {dev} in {ns}"));
        }
        let threshold = i32::try_from(percent * 1024 / 100).expect("small");
        let prog: Vec<[u8; 8]> = vec![
            // r2 = skb->protocol (struct __sk_buff offset 16, network order)
            insn(0x61, 2, 1, 16, 0),
            // if r2 != ETH_P_IP (0x0800 as stored: 0x0008) goto pass
            insn(0x55, 2, 0, 5, 0x0008),
            // r0 = bpf_get_prandom_u32()
            insn(0x85, 0, 0, 0, 7),
            // r0 &= 1023
            insn(0x57, 0, 0, 0, 1023),
            // if r0 >= threshold goto pass
            insn(0x35, 0, 0, 2, threshold),
            // return TC_ACT_SHOT
            insn(0xb7, 0, 0, 0, 2),
            insn(0x95, 0, 0, 0, 0),
            // pass: return TCX_PASS
            insn(0xb7, 0, 0, 0, 0),
            insn(0x95, 0, 0, 0, 0),
        ];
        let code: Vec<u8> = prog.concat();
        let license = b"GPL\0";
        let mut log = vec![0u8; 64 * 1024];
        let mut name = [0u8; 16];
        name[..11].copy_from_slice(b"test_rtdrop");
        let mut load = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: u32::try_from(prog.len()).expect("few"),
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: u32::try_from(log.len()).expect("64 KiB"),
            log_buf: log.as_mut_ptr() as u64,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: BPF_TCX_INGRESS,
        };
        let prog_fd = bpf(BPF_PROG_LOAD, &mut load).map_err(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            format!(
                "loading the drop program: {e}; verifier log:\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        })?;
        let mut link = LinkCreateAttr {
            prog_fd: u32::try_from(prog_fd.as_raw_fd()).expect("fd"),
            target_ifindex: ifindex,
            attach_type: BPF_TCX_INGRESS,
            flags: 0,
            relative_fd: 0,
            pad: 0,
            expected_revision: 0,
        };
        let link_fd =
            bpf(BPF_LINK_CREATE, &mut link).map_err(|e| format!("tcx link on {dev}: {e}"))?;
        Ok(link_fd)
    })
    .join()
    .map_err(|_| "the namespace thread panicked".to_owned())?
}

/// One request as the client made it.
#[derive(Debug, PartialEq, Eq)]
struct Made {
    method: String,
    path: String,
    status: u64,
    req_bytes: u64,
    resp_bytes: u64,
}

#[test]
fn http_over_lossy_reordering_links_is_reported_once_with_exact_sizes() {
    if !require_root("http_over_lossy_reordering_links_is_reported_once_with_exact_sizes") {
        return;
    }
    let me = std::process::id();
    let (cns, sns) = (format!("tracer-seg-{me}c"), format!("tracer-seg-{me}s"));
    let (cdev, sdev) = (format!("tgc{me}"), format!("tgs{me}"));
    let subnet = me % 250;
    let (caddr, saddr) = (format!("10.214.{subnet}.1"), format!("10.214.{subnet}.2"));
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
    let _drops = [
        attach_random_drop(&sns, &sdev, LOSS_PERCENT).expect("drop program, server side"),
        attach_random_drop(&cns, &cdev, LOSS_PERCENT).expect("drop program, client side"),
    ];

    let node_in = |ns: &str, name: &str, args: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, common::NODE])
            .arg(fixtures_dir().join(name))
            .args(args);
        let mut p = Proc::spawn(name, cmd, true);
        let ready = wait_ready_line(&mut p);
        (p, ready)
    };
    let (server, port) = node_in(&sns, "seg_server.js", &[&saddr]);
    let port: u16 = port.parse().expect("seg_server.js READY <port>");
    let (mut client, _) = node_in(
        &cns,
        "seg_client.js",
        &[&saddr, &port.to_string(), &ROUNDS.to_string()],
    );
    let (spid, cpid) = (server.pid(), client.pid());

    let mut tracer = Tracer::attach(&[spid, cpid], &[]);
    client.send_line("go");
    let status = client.expect_exit(Duration::from_secs(120));
    assert!(
        status.success(),
        "seg_client.js failed ({status}):\n{}",
        client.stderr.tail(20)
    );
    let out = client.stdout.as_mut().expect("piped");
    out.wait_for("the client's PORT line", Duration::from_secs(5), |l| {
        l.starts_with("PORT ")
    });
    let made: Vec<Made> = out
        .seen()
        .iter()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Made {
                method: f[0].to_owned(),
                path: f[1].to_owned(),
                status: f[2].parse().expect("status"),
                req_bytes: f[3].parse().expect("request bytes"),
                resp_bytes: f[4].parse().expect("response bytes"),
            }
        })
        .collect();
    assert_eq!(made.len(), 3 * ROUNDS, "the client's RESULT lines");

    let http_of = |evs: &[Value], pid: u32| {
        evs.iter()
            .filter(|e| e["kind"] == "http" && e["pid"] == pid)
            .count()
    };
    tracer.wait_events(Duration::from_secs(15), |evs| {
        http_of(evs, spid) >= made.len() && http_of(evs, cpid) >= made.len()
    });
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(15));
    drop(client);
    drop(server);
    run.assert_clean_end();

    let mut problems = Vec::new();
    for (pid, side) in [(spid, "server"), (cpid, "client")] {
        let seen: Vec<Made> = run
            .of("http", pid)
            .iter()
            .map(|e| Made {
                method: e["method"].as_str().unwrap_or("?").to_owned(),
                path: e["path"].as_str().unwrap_or("?").to_owned(),
                status: e["status"].as_u64().unwrap_or(0),
                req_bytes: e["req_bytes"].as_u64().unwrap_or(0),
                resp_bytes: e["resp_bytes"].as_u64().unwrap_or(0),
            })
            .collect();
        if seen != made {
            problems.push(format!(
                "{side} (pid {pid}): http events {seen:#?}\nmust be exactly the requests made \
                 {made:#?}"
            ));
        }
        for e in run.of("http", pid) {
            if e["side"] != side || e["complete"] == false || e["tls"] != false {
                problems.push(format!("{side}: unexpected http event {e}"));
            }
        }
    }
    // The scenario must really have made the network misbehave.
    let retransmits = run.of("tcp_retransmit", spid).len() + run.of("tcp_retransmit", cpid).len();
    if retransmits == 0 {
        problems.push(format!(
            "no retransmit was reported: the {LOSS_PERCENT}% drop did not bite, the test \
             proved nothing"
        ));
    }
    let summary = run.events.last().expect("summary");
    for stage in ["ring", "decode", "parse", "capture"] {
        if summary["lost"][stage].as_u64() != Some(0) {
            problems.push(format!(
                "summary.lost.{stage} must be 0: {}",
                summary["lost"]
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n(retransmits reported: {retransmits})\ntracer stderr:\n{}",
        list_problems(&problems),
        run.stderr_text()
    );
}

/// The names of the tracepoints the BPF links of process `pid` are
/// attached to, and how many of its links are cgroup links.
fn tracepoint_links(pid: u32) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut cgroup = 0;
    let dir = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo of the tracer");
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("tp_name:") {
                names.push(name.trim().to_owned());
            }
            if line.strip_prefix("link_type:").map(str::trim) == Some("cgroup") {
                cgroup += 1;
            }
        }
    }
    names.sort();
    (names, cgroup)
}

/// With the `http` family and without `logs`, no syscall tracepoint is
/// attached (any one of them slows every syscall on the host): payload
/// comes from the cgroup_skb programs, socket use from the socket
/// tracepoints.
#[test]
fn http_without_logs_attaches_no_syscall_tracepoint() {
    if !require_root("http_without_logs_attaches_no_syscall_tracepoint") {
        return;
    }
    let (server, _port) = start_node("http_server.js", &[], &[], StdoutTo::Pipe);
    let tracer = Tracer::attach(
        &[server.pid()],
        &["--probes", "tcp,http", "--duration", "2"],
    );
    let (names, cgroup) = tracepoint_links(tracer.proc.pid());
    let run = tracer.finish(Duration::from_secs(15));
    drop(server);
    run.assert_clean_end();
    let syscalls: Vec<&String> = names.iter().filter(|n| n.starts_with("sys_")).collect();
    assert!(
        syscalls.is_empty(),
        "--probes tcp,http attached syscall tracepoints {syscalls:?} (all: {names:?})"
    );
    for want in [
        "sock_recv_length",
        "sock_send_length",
        "inet_sock_set_state",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "no link to the {want} tracepoint (all: {names:?})"
        );
    }
    assert_eq!(cgroup, 2, "the ingress and egress cgroup_skb links");
}
