//! Kernel struct field offsets from the running kernel's BTF.
//!
//! Rust BPF has no CO-RE relocations yet, so the probes read kernel structs
//! at offsets computed here and passed in as a load-time global. Each field
//! is looked up by name, through anonymous structs/unions, so layout changes
//! between kernel versions are followed automatically.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use tracer_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Offsets of every field the probes read.
pub fn kernel_offsets(btf_path: &Path) -> Result<KernelOffsets> {
    let btf = Btf::from_file(btf_path)
        .with_context(|| format!("reading kernel BTF from {}", btf_path.display()))?;
    let f = |path: &str| field_offset(&btf, path);
    Ok(KernelOffsets {
        tcp_bytes_received: f("tcp_sock.bytes_received")?,
        tcp_bytes_acked: f("tcp_sock.bytes_acked")?,
        sk_net: f("sock_common.skc_net")?,
        net_ns_inum: f("net.ns.inum")?,
        task_files: f("task_struct.files")?,
        task_exit_code: f("task_struct.exit_code")?,
        files_fdt: f("files_struct.fdt")?,
        fdtable_fd: f("fdtable.fd")?,
        fdtable_max_fds: f("fdtable.max_fds")?,
        file_inode: f("file.f_inode")?,
        inode_mode: f("inode.i_mode")?,
        inode_ino: f("inode.i_ino")?,
        sk_shutdown: f("sock.sk_shutdown")?,
        sk_flags: f("sock_common.skc_flags")?,
        sock_done_bit: enum_value(&btf, "sock_flags", "SOCK_DONE")?,
        tcp_snd_una: f("tcp_sock.snd_una")?,
        tcp_write_seq: f("tcp_sock.write_seq")?,
        tcp_copied_seq: f("tcp_sock.copied_seq")?,
        file_private_data: f("file.private_data")?,
        socket_sk: f("socket.sk")?,
        skc_num: f("sock_common.skc_num")?,
        skc_dport: f("sock_common.skc_dport")?,
        skc_family: f("sock_common.skc_family")?,
        skc_rcv_saddr: f("sock_common.skc_rcv_saddr")?,
        skc_daddr: f("sock_common.skc_daddr")?,
        skc_v6_rcv_saddr: f("sock_common.skc_v6_rcv_saddr")?,
        skc_v6_daddr: f("sock_common.skc_v6_daddr")?,
        sk_protocol: f("sock.sk_protocol")?,
        skb_tcp_gso_segs: f("sk_buff.cb")? + f("tcp_skb_cb.tcp_gso_segs")?,
        tcp_rcv_nxt: f("tcp_sock.rcv_nxt")?,
        tcp_total_retrans: f("tcp_sock.total_retrans")?,
    })
}

/// Value of an enumerator (e.g. SOCK_DONE of enum sock_flags).
fn enum_value(btf: &Btf, enum_name: &str, name: &str) -> Result<u32> {
    let types = btf
        .resolve_types_by_name(enum_name)
        .with_context(|| format!("kernel BTF has no type {enum_name}"))?;
    for ty in types {
        if let Type::Enum(e) = ty {
            for member in &e.members {
                if btf.resolve_name(member).is_ok_and(|n| n == name) {
                    return Ok(member.val());
                }
            }
        }
    }
    bail!("kernel BTF: enum {enum_name} has no {name}")
}

/// Byte offset of `struct.field[.field...]`.
fn field_offset(btf: &Btf, path: &str) -> Result<u32> {
    let mut parts = path.split('.');
    let root = parts.next().ok_or_else(|| anyhow!("empty field path"))?;
    let mut ty = named_struct(btf, root)?;
    let mut total_bits = 0u32;
    let mut fields = parts.peekable();
    while let Some(field) = fields.next() {
        let (bits, member_ty) = find_member(btf, &ty, field)?
            .ok_or_else(|| anyhow!("kernel BTF: struct {root} has no field {field} ({path})"))?;
        total_bits += bits;
        if fields.peek().is_some() {
            ty = as_struct(btf, member_ty)
                .with_context(|| format!("kernel BTF: {path}: {field} is not a struct"))?;
        }
    }
    if !total_bits.is_multiple_of(8) {
        bail!("kernel BTF: {path} is a bitfield");
    }
    Ok(total_bits / 8)
}

fn named_struct(btf: &Btf, name: &str) -> Result<btf_rs::Struct> {
    btf.resolve_types_by_name(name)
        .with_context(|| format!("kernel BTF has no type {name}"))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| anyhow!("kernel BTF: {name} is not a struct"))
}

/// Follow typedefs/const/volatile to a struct or union.
fn as_struct(btf: &Btf, mut ty: Type) -> Result<btf_rs::Struct> {
    for _ in 0..16 {
        ty = match ty {
            Type::Struct(s) | Type::Union(s) => return Ok(s),
            Type::Typedef(t) => btf.resolve_chained_type(&t)?,
            Type::Const(t) => btf.resolve_chained_type(&t)?,
            Type::Volatile(t) => btf.resolve_chained_type(&t)?,
            _ => bail!("not a struct or union"),
        };
    }
    bail!("type chain too long")
}

/// (bit offset, type) of `field` in `s`, searching anonymous members too.
fn find_member(btf: &Btf, s: &btf_rs::Struct, field: &str) -> Result<Option<(u32, Type)>> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let ty = btf.resolve_chained_type(m)?;
        if name == field {
            return Ok(Some((m.bit_offset(), ty)));
        }
        if name.is_empty()
            && let Ok(inner) = as_struct(btf, ty)
            && let Some((bits, t)) = find_member(btf, &inner, field)?
        {
            return Ok(Some((m.bit_offset() + bits, t)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's kernel: the BTF file is readable without
    /// privileges. Offsets must be non-zero and inside their structs.
    #[test]
    fn resolves_every_offset_from_running_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: {VMLINUX_BTF} missing (kernel built without BTF)");
            return;
        }
        let o = kernel_offsets(path).unwrap();
        // bytes_acked and bytes_received are adjacent u64 counters far into
        // tcp_sock (after struct inet_connection_sock).
        assert!(o.tcp_bytes_received > 1000 && o.tcp_bytes_acked > 1000);
        assert_ne!(o.tcp_bytes_received, o.tcp_bytes_acked);
        // skc_net sits in the first cache line of sock_common.
        assert!(o.sk_net < 64, "skc_net at {}", o.sk_net);
        for v in [
            o.task_files,
            o.task_exit_code,
            o.file_inode,
            o.inode_ino,
            o.net_ns_inum,
        ] {
            assert!(v > 0);
        }
        // i_mode is the first field of struct inode.
        assert_eq!(o.inode_mode, 0);
        // enum sock_flags { SOCK_DEAD, SOCK_DONE, ... }
        assert_eq!(o.sock_done_bit, 1);
        assert!(o.tcp_snd_una > 0 && o.tcp_write_seq > 0 && o.sk_shutdown > 0);
        assert!(o.tcp_rcv_nxt > 1000 && o.tcp_rcv_nxt != o.tcp_copied_seq);
        // struct tcp_skb_cb { __u32 seq; __u32 end_seq; union { __u16
        // tcp_gso_segs; ... } ... } sits in sk_buff.cb, far from its start.
        assert!(o.skb_tcp_gso_segs > 8, "{}", o.skb_tcp_gso_segs);
    }

    #[test]
    fn unknown_field_is_named_in_the_error() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let err = field_offset(&btf, "tcp_sock.no_such_field").unwrap_err();
        assert!(err.to_string().contains("no_such_field"), "{err}");
    }
}
