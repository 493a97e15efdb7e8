//! A lossy link for root tests: network namespaces removed when dropped,
//! and a tcx program on a veth that drops a given share of the packets
//! (netem is not in this kernel). Shared by `attach_retransmit` and
//! `http_segments`.

#![allow(
    dead_code,
    reason = "each test binary compiles this module and uses a different part of it"
)]

use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    thread,
};

/// Runs a command; panics with its output when it fails.
pub fn run(args: &[&str]) -> String {
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
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    pub fn create(names: &[&str]) -> Self {
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
pub fn bpf_call<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
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
pub fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    let fd = i32::try_from(bpf_call(cmd, attr)?).expect("fd fits in i32");
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches to the ingress of `dev` in namespace `ns` a tcx program that
/// drops `percent`% of the IPv4 packets at random. The drop lasts as long as
/// the returned link fd is open.
pub fn attach_random_drop(ns: &str, dev: &str, percent: u32) -> Result<OwnedFd, String> {
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
