//! Attaching a loaded uprobe program with a cookie and, for USDT points
//! with a semaphore, the kernel's uprobe reference counter.
//!
//! Why a shim: aya 0.14 opens uprobe perf events itself and has no way to
//! pass `ref_ctr_offset`, which is how the kernel raises a USDT semaphore
//! (the `short` the program tests before preparing a point's arguments)
//! while a uprobe is installed at the point and lowers it when the uprobe
//! goes, in every process that maps the object, without anyone writing to
//! the process's memory. So: `perf_event_open` on the `uprobe` PMU with the
//! semaphore's file offset in config bits 32-63 (the PMU's own `format`
//! files say where), the path in `config1` and the site's file offset in
//! `config2`; then a BPF link (libbpf's `bpf_link_create`, BPF_PERF_EVENT)
//! from the aya-loaded program to that event, carrying the site's cookie.
//! Closing both descriptors removes the uprobe (and lowers the semaphore).

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, anyhow, bail};

const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe";

/// How to build a `uprobe` PMU event on this kernel.
#[derive(Debug, Clone, Copy)]
pub struct UprobePmu {
    pmu_type: u32,
    /// Bit of `config` that makes the event a return probe.
    retprobe_bit: u32,
    /// First bit of `config` holding `ref_ctr_offset`, if the kernel has it.
    ref_ctr_shift: Option<u32>,
}

/// `config:N` or `config:N-M` from a PMU format file: N.
fn format_first_bit(text: &str) -> Option<u32> {
    let spec = text.trim().strip_prefix("config:")?;
    spec.split('-').next()?.parse().ok()
}

impl UprobePmu {
    pub fn detect() -> Result<Self> {
        let read = |f: &str| std::fs::read_to_string(format!("{UPROBE_PMU}/{f}"));
        let pmu_type = read("type")
            .with_context(|| {
                format!(
                    "{UPROBE_PMU} is missing: this kernel has no uprobe PMU (CONFIG_UPROBE_EVENTS)"
                )
            })?
            .trim()
            .parse()
            .context("parsing the uprobe PMU type")?;
        let retprobe_bit = read("format/retprobe")
            .ok()
            .and_then(|t| format_first_bit(&t))
            .unwrap_or(0);
        let ref_ctr_shift = read("format/ref_ctr_offset")
            .ok()
            .and_then(|t| format_first_bit(&t));
        Ok(Self {
            pmu_type,
            retprobe_bit,
            ref_ctr_shift,
        })
    }
}

/// A program attached at one site. Dropping it detaches.
#[derive(Debug)]
pub struct SiteLink {
    _link: OwnedFd,
    _perf: OwnedFd,
}

pub struct Site<'a> {
    /// The object's path as this process can open it.
    pub path: &'a str,
    pub file_offset: u64,
    /// File offset of the USDT semaphore, 0 for none.
    pub ref_ctr_offset: u64,
    pub retprobe: bool,
    pub pid: u32,
    pub cookie: u64,
}

pub fn attach(pmu: &UprobePmu, prog: BorrowedFd<'_>, site: &Site<'_>) -> Result<SiteLink> {
    let path = CString::new(site.path).context("object path contains a NUL byte")?;
    let mut config = 0u64;
    if site.retprobe {
        config |= 1 << pmu.retprobe_bit;
    }
    if site.ref_ctr_offset != 0 {
        let Some(shift) = pmu.ref_ctr_shift else {
            bail!(
                "this kernel's uprobe PMU has no ref_ctr_offset (needs Linux 4.20+), so the \
                 USDT semaphore cannot be raised"
            );
        };
        config |= site.ref_ctr_offset << shift;
    }
    // SAFETY: an all-zero perf_event_attr is the documented starting point.
    let mut attr: libbpf_sys::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = pmu.pmu_type;
    attr.size = std::mem::size_of::<libbpf_sys::perf_event_attr>() as u32;
    attr.config = config;
    attr.__bindgen_anon_3.uprobe_path = path.as_ptr() as u64;
    attr.__bindgen_anon_4.probe_offset = site.file_offset;
    // SAFETY: `attr` is a valid perf_event_attr whose path pointer lives
    // until the call returns; the other arguments are plain integers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const libbpf_sys::perf_event_attr,
            site.pid as libc::pid_t,
            -1 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return Err(anyhow!(err)).with_context(|| {
            format!(
                "perf_event_open(uprobe {}+{:#x}{}, pid {})",
                site.path,
                site.file_offset,
                if site.ref_ctr_offset != 0 {
                    format!(", semaphore at {:#x}", site.ref_ctr_offset)
                } else {
                    String::new()
                },
                site.pid
            )
        });
    }
    // SAFETY: the kernel just returned this descriptor; nobody else owns it.
    let perf = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: zeroed options with `sz` set is how libbpf's OPTS are made.
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    opts.__bindgen_anon_1.perf_event.bpf_cookie = site.cookie;
    // SAFETY: both descriptors are open for the duration of the call and
    // `opts` is a valid, sized options struct.
    let link = unsafe {
        libbpf_sys::bpf_link_create(
            prog.as_raw_fd(),
            perf.as_raw_fd(),
            libbpf_sys::BPF_PERF_EVENT,
            &opts,
        )
    };
    if link < 0 {
        return Err(anyhow!(std::io::Error::from_raw_os_error(-link))).context(
            "bpf_link_create(BPF_PERF_EVENT) for a uprobe (needs Linux 5.15+ for cookies)",
        );
    }
    // SAFETY: as above, a fresh descriptor from the kernel.
    let link = unsafe { OwnedFd::from_raw_fd(link) };
    // As libbpf does: make sure the event counts (it is created enabled,
    // but an explicit enable costs nothing and covers `disabled` defaults).
    // SAFETY: ioctl on our own perf event descriptor with an integer arg.
    let rc = unsafe { libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) };
    if rc < 0 {
        return Err(anyhow!(std::io::Error::last_os_error()))
            .context("enabling the uprobe perf event");
    }
    Ok(SiteLink {
        _link: link,
        _perf: perf,
    })
}

/// From linux/perf_event.h (the libc crate has neither).
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `_IO('$', 0)` from linux/perf_event.h.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_bits() {
        assert_eq!(format_first_bit("config:32-63\n"), Some(32));
        assert_eq!(format_first_bit("config:0\n"), Some(0));
        assert_eq!(format_first_bit("config1:0-63"), None);
    }
}
