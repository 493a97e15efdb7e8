//! Ad-hoc probes (`tracer probe`): USDT points and native function symbols
//! of a running process, through two generic programs.
//!
//! User space attaches `probe_hit` (a uprobe) at every USDT call site or
//! function entry, and `probe_ret` (a uretprobe) at function returns, each
//! attachment with a cookie that keys `PROBE_SITES`: the site's probe, what
//! to record and how to read each argument (from the USDT note's argument
//! spec: constant, register or memory `off(%reg)`, with size and sign; or
//! from the calling convention). No program is compiled per probe.
//!
//! match-proto: x86-64 `struct pt_regs` (user space turns register names
//!   into byte offsets in it); the attachments are per process (the uprobe
//!   perf event's own PID filter), so no TARGETS check is needed.
//!
//! Cost: every hit is a uprobe trap (microseconds here, TOOLCHAIN.md); the
//! program itself is a map lookup and, in `args` mode, a ring record. Its
//! loops have constant bounds (PROBE_MAX_ARGS, PROBE_STR_ARGS).

use aya_ebpf::{
    EbpfContext as _,
    bindings::pt_regs,
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_probe_read_user_str},
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{
    EventKind, PROBE_ARG_CONST, PROBE_ARG_MEM, PROBE_ARG_REG, PROBE_HIST_BUCKETS, PROBE_MAX_ARGS,
    PROBE_MAX_PROBES, PROBE_MAX_SITES, PROBE_MODE_ARGS, PROBE_MODE_COUNT, PROBE_MODE_LATENCY,
    PROBE_STR_ARGS, PROBE_STR_BYTES, ProbeArgSpec, ProbeEvent, ProbeRate, ProbeSite,
    probe_drop_rate_slot, probe_drop_ring_slot,
};

use crate::{
    emit::{current_header, current_ids, now_ns, submit_flags},
    maps::EVENTS,
};

/// Call sites by attach cookie (written by user space before attaching).
#[map]
pub static PROBE_SITES: HashMap<u64, ProbeSite> = HashMap::with_max_entries(PROBE_MAX_SITES, 0);

/// Hits per site (index: cookie), per CPU; user space reads the deltas.
#[map]
pub static PROBE_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROBE_MAX_SITES, 0);

/// Latency histograms: index cookie * PROBE_HIST_BUCKETS + bucket, per CPU.
#[map]
pub static PROBE_HIST: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(PROBE_MAX_SITES * PROBE_HIST_BUCKETS, 0);

/// Events not emitted, per CPU: `probe_drop_rate_slot` (over the rate cap)
/// and `probe_drop_ring_slot` (ring full) of each probe.
#[map]
pub static PROBE_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROBE_MAX_PROBES * 2, 0);

/// Rate window per probe (shared by all CPUs: the cap is approximate under
/// concurrent hits, the drop count of what was refused is exact).
#[map]
pub static PROBE_RATE: Array<ProbeRate> = Array::with_max_entries(PROBE_MAX_PROBES, 0);

/// Entry time per (tid << 32 | cookie of the function's entry site), for
/// `latency` mode. LRU: a function that never returns (longjmp, thread
/// exit) leaves an entry that ages out.
#[map]
pub static PROBE_START: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

#[uprobe]
pub fn probe_hit(ctx: ProbeContext) -> u32 {
    on_hit(ctx.as_ptr(), ctx.regs, false);
    0
}

#[uretprobe]
pub fn probe_ret(ctx: RetProbeContext) -> u32 {
    on_hit(ctx.as_ptr(), ctx.regs, true);
    0
}

#[inline(always)]
fn bump(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = counters.get_ptr_mut(index) {
        // SAFETY: per-CPU slot: no other CPU writes it.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn on_hit(ctx: *mut core::ffi::c_void, regs: *mut pt_regs, is_return: bool) {
    // SAFETY: the helper only reads the cookie of the running attachment.
    let cookie = unsafe { bpf_get_attach_cookie(ctx) };
    // SAFETY: value read through a map pointer, copied nowhere.
    let Some(site) = (unsafe { PROBE_SITES.get(cookie) }) else {
        return;
    };
    let index = cookie as u32;
    match site.mode {
        PROBE_MODE_COUNT => bump(&PROBE_COUNTS, index),
        PROBE_MODE_ARGS => emit_args(site, cookie, regs),
        PROBE_MODE_LATENCY => {
            // The entry and return sites of one function share the key.
            let (_, tid) = current_ids();
            let key = (u64::from(tid) << 32) | u64::from(site.entry_cookie);
            if !is_return {
                let _ = PROBE_START.insert(key, now_ns(), 0);
                return;
            }
            // SAFETY: value copied out at once.
            let Some(start) = (unsafe { PROBE_START.get(key) }).copied() else {
                return;
            };
            let _ = PROBE_START.remove(key);
            bump(&PROBE_COUNTS, index);
            let bucket = log2_bucket(now_ns().saturating_sub(start));
            bump(&PROBE_HIST, index * PROBE_HIST_BUCKETS + bucket);
        }
        _ => {}
    }
}

/// 0 for 0, else 1 + floor(log2(ns)) (at most 64: clamped to the last
/// bucket). A binary search: six comparisons, no loop.
#[inline(always)]
fn log2_bucket(ns: u64) -> u32 {
    if ns == 0 {
        return 0;
    }
    let mut v = ns;
    let mut b = 1u32;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        if v >> shift != 0 {
            v >>= shift;
            b += shift;
        }
    }
    b.min(PROBE_HIST_BUCKETS - 1)
}

/// Whether the probe may emit one more event this second (else the drop
/// is counted).
#[inline(always)]
fn within_rate(site: &ProbeSite) -> bool {
    if site.max_per_sec == 0 {
        return true;
    }
    let Some(rate) = PROBE_RATE.get_ptr_mut(site.probe_id) else {
        return false;
    };
    let now = now_ns();
    // SAFETY: a map value; concurrent CPUs may race on the window (the cap
    // is approximate), never on memory safety.
    let rate = unsafe { &mut *rate };
    if now.saturating_sub(rate.window_start_ns) >= 1_000_000_000 {
        rate.window_start_ns = now;
        rate.emitted = 0;
    }
    if rate.emitted >= u64::from(site.max_per_sec) {
        bump(&PROBE_DROPS, probe_drop_rate_slot(site.probe_id));
        return false;
    }
    rate.emitted += 1;
    true
}

#[inline(always)]
fn emit_args(site: &ProbeSite, cookie: u64, regs: *mut pt_regs) {
    if !within_rate(site) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<ProbeEvent>(0) else {
        bump(&PROBE_DROPS, probe_drop_ring_slot(site.probe_id));
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved ring slot of the right size that
    // only this program writes until it is submitted.
    unsafe {
        (*event).hdr = current_header(EventKind::Probe);
        (*event).cookie = cookie;
        (*event).str_len = [0; PROBE_STR_ARGS];
    }
    let nargs = (site.nargs as usize).min(PROBE_MAX_ARGS);
    for i in 0..PROBE_MAX_ARGS {
        let spec = &site.args[i];
        let value = if i < nargs { read_arg(spec, regs) } else { 0 };
        // SAFETY: as above; i < PROBE_MAX_ARGS.
        unsafe { (*event).args[i] = value };
        if i < nargs {
            // Constant slot indexes: the verifier must see the destination
            // inside the record without tracking a variable index.
            match spec.str_slot {
                1 => copy_str(event, 0, value),
                2 => copy_str(event, 1, value),
                _ => {}
            }
        }
    }
    entry.submit(submit_flags());
}

/// Copy the NUL-terminated user string at `ptr` into string slot `slot`
/// (a constant at every call site).
#[inline(always)]
fn copy_str(event: *mut ProbeEvent, slot: usize, ptr: u64) {
    if slot >= PROBE_STR_ARGS {
        return;
    }
    // SAFETY: `event` is a reserved ring record only this program writes;
    // the helper copies at most PROBE_STR_BYTES into the slot's array and
    // NUL-terminates; a bad user pointer makes it fail (negative result).
    unsafe {
        let n = bpf_probe_read_user_str(
            (*event).strs[slot].as_mut_ptr().cast(),
            PROBE_STR_BYTES as u32,
            ptr as *const core::ffi::c_void,
        );
        (*event).str_len[slot] = if n > 0 { n as u32 } else { 0 };
    }
}

/// One argument, as the spec says; 0 when it cannot be read.
#[inline(always)]
fn read_arg(spec: &ProbeArgSpec, regs: *mut pt_regs) -> u64 {
    let raw = match spec.kind {
        PROBE_ARG_CONST => spec.value as u64,
        PROBE_ARG_REG => read_reg(regs, spec.reg_off),
        PROBE_ARG_MEM => {
            let addr = read_reg(regs, spec.reg_off).wrapping_add(spec.value as u64);
            // SAFETY: user memory of the traced process; a fault makes the
            // helper fail, which reads as 0.
            unsafe {
                match spec.size {
                    1 => bpf_probe_read_user(addr as *const u8).map_or(0, u64::from),
                    2 => bpf_probe_read_user(addr as *const u16).map_or(0, u64::from),
                    4 => bpf_probe_read_user(addr as *const u32).map_or(0, u64::from),
                    _ => bpf_probe_read_user(addr as *const u64).unwrap_or(0),
                }
            }
        }
        _ => return 0,
    };
    // Keep the low `size` bytes, sign-extended when the spec says so.
    let bits = u32::from(spec.size).clamp(1, 8) * 8;
    if bits == 64 {
        return raw;
    }
    let shift = 64 - bits;
    if spec.signed != 0 {
        (((raw << shift) as i64) >> shift) as u64
    } else {
        (raw << shift) >> shift
    }
}

/// The register at byte offset `off` of the saved user registers.
#[inline(always)]
fn read_reg(regs: *mut pt_regs, off: u16) -> u64 {
    if usize::from(off) + 8 > core::mem::size_of::<pt_regs>() {
        return 0;
    }
    // SAFETY: `regs` is the program's context (the kernel's saved user
    // registers) and off + 8 stays inside it; read through the helper
    // because the verifier refuses context reads at a variable offset.
    unsafe { bpf_probe_read_kernel(regs.cast::<u8>().add(usize::from(off)).cast::<u64>()) }
        .unwrap_or(0)
}
