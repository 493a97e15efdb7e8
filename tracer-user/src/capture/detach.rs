//! Detaching every hook when the tracer stops, in parallel.
//!
//! Closing a tracepoint's or uprobe's perf link makes the kernel wait for an
//! RCU grace period (tens of ms here), one close after the other when aya
//! drops its programs: 2.1 s for the ~30 hooks of a default `tracer attach`
//! (measured with strace). Closed from several threads, the uprobe and
//! cgroup links' waits overlap the tracepoints' (which the kernel still
//! serialises under its own lock): 1.4 s.

use aya::{
    Ebpf,
    programs::{
        CgroupSkb, RawTracePoint, TracePoint, UProbe, cgroup_skb::CgroupSkbLinkId,
        raw_trace_point::RawTracePointLinkId, trace_point::TracePointLinkId, uprobe::UProbeLinkId,
    },
};

/// A link attached by Capture, by program name.
#[derive(Debug)]
pub enum Attached {
    Tracepoint(&'static str, TracePointLinkId),
    RawTracepoint(&'static str, RawTracePointLinkId),
    CgroupSkb(&'static str, CgroupSkbLinkId),
    UProbe(&'static str, UProbeLinkId),
}

/// Threads closing links at once (the machines here have 2 cores, but the
/// threads mostly sleep in the kernel waiting for the grace period).
const THREADS: usize = 8;

/// Take the links out of their programs and close them from several threads.
pub fn all(ebpf: &mut Ebpf, links: Vec<Attached>) {
    let mut owned: Vec<Box<dyn Send>> = Vec::with_capacity(links.len());
    for link in links {
        if let Some(l) = take(ebpf, link) {
            owned.push(l);
        }
    }
    if owned.is_empty() {
        return;
    }
    let per_thread = owned.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        while !owned.is_empty() {
            let rest = owned.split_off(owned.len().saturating_sub(per_thread));
            scope.spawn(move || drop(rest));
        }
    });
}

/// The owned link (closing it detaches), or None when it is already gone.
fn take(ebpf: &mut Ebpf, link: Attached) -> Option<Box<dyn Send>> {
    fn boxed<T: Send + 'static, E: std::fmt::Display>(r: Result<T, E>) -> Option<Box<dyn Send>> {
        match r {
            Ok(l) => Some(Box::new(l)),
            Err(e) => {
                log::debug!("detaching: {e}");
                None
            }
        }
    }
    match link {
        Attached::Tracepoint(name, id) => {
            let p: &mut TracePoint = ebpf.program_mut(name)?.try_into().ok()?;
            boxed(p.take_link(id))
        }
        Attached::RawTracepoint(name, id) => {
            let p: &mut RawTracePoint = ebpf.program_mut(name)?.try_into().ok()?;
            boxed(p.take_link(id))
        }
        Attached::CgroupSkb(name, id) => {
            let p: &mut CgroupSkb = ebpf.program_mut(name)?.try_into().ok()?;
            boxed(p.take_link(id))
        }
        Attached::UProbe(name, id) => {
            let p: &mut UProbe = ebpf.program_mut(name)?.try_into().ok()?;
            boxed(p.take_link(id))
        }
    }
}
