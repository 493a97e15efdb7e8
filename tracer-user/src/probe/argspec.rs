//! USDT argument specs (x86-64, GNU assembler operand syntax) turned into
//! what the generic BPF program reads: `[-]SIZE@OPERAND`, one per argument,
//! separated by spaces. Operands: `%reg` (a register), `$imm` (a
//! constant), `off(%reg)` or `(%reg)` (memory). A negative size means
//! signed. Written by hand: no crate parses these (libbpf's parser is C
//! inside libbpf's own USDT attach, which needs a libbpf-loaded object).

use thiserror::Error;
use tracer_common::{PROBE_ARG_CONST, PROBE_ARG_MEM, PROBE_ARG_REG, ProbeArgSpec};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgSpecError {
    #[error("argument `{0}`: size must be 1, 2, 4 or 8 bytes (optionally negative)")]
    Size(String),
    #[error("argument `{0}`: unknown register `{1}`")]
    Register(String, String),
    #[error(
        "argument `{0}`: this operand form is not supported (only %reg, $constant and \
         offset(%reg))"
    )]
    Form(String),
}

/// Byte offset of a 64-bit register in x86-64 `struct pt_regs`
/// (arch/x86/include/asm/ptrace.h).
pub fn pt_regs_offset(reg64: &str) -> Option<u16> {
    Some(match reg64 {
        "r15" => 0,
        "r14" => 8,
        "r13" => 16,
        "r12" => 24,
        "rbp" => 32,
        "rbx" => 40,
        "r11" => 48,
        "r10" => 56,
        "r9" => 64,
        "r8" => 72,
        "rax" => 80,
        "rcx" => 88,
        "rdx" => 96,
        "rsi" => 104,
        "rdi" => 112,
        "rip" => 128,
        "rsp" => 152,
        _ => return None,
    })
}

/// The 64-bit register a (sub)register name belongs to: `eax`, `ax`, `al`
/// -> `rax`; `r8d`, `r8w`, `r8b` -> `r8`. The size comes from the spec's
/// size prefix, so the low bytes of the full register are what is read.
fn full_register(name: &str) -> Option<&'static str> {
    const LEGACY: [(&str, [&str; 4]); 8] = [
        ("rax", ["rax", "eax", "ax", "al"]),
        ("rbx", ["rbx", "ebx", "bx", "bl"]),
        ("rcx", ["rcx", "ecx", "cx", "cl"]),
        ("rdx", ["rdx", "edx", "dx", "dl"]),
        ("rsi", ["rsi", "esi", "si", "sil"]),
        ("rdi", ["rdi", "edi", "di", "dil"]),
        ("rbp", ["rbp", "ebp", "bp", "bpl"]),
        ("rsp", ["rsp", "esp", "sp", "spl"]),
    ];
    for (full, names) in LEGACY {
        if names.contains(&name) {
            return Some(full);
        }
    }
    const NUMBERED: [&str; 8] = ["r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
    for full in NUMBERED {
        if let Some(rest) = name.strip_prefix(full)
            && ["", "d", "w", "b"].contains(&rest)
        {
            return Some(full);
        }
    }
    None
}

fn register(arg: &str, name: &str) -> Result<u16, ArgSpecError> {
    full_register(name)
        .and_then(pt_regs_offset)
        .ok_or_else(|| ArgSpecError::Register(arg.to_string(), name.to_string()))
}

/// Parse one argument, e.g. `-4@-20(%rbp)`.
pub fn parse_arg(arg: &str) -> Result<ProbeArgSpec, ArgSpecError> {
    let (size, operand) = match arg.split_once('@') {
        Some((size, operand)) => {
            let size: i32 = size
                .parse()
                .map_err(|_| ArgSpecError::Size(arg.to_string()))?;
            (size, operand)
        }
        // Old notes without a size: a full register's worth.
        None => (8, arg),
    };
    if ![1, 2, 4, 8].contains(&size.abs()) {
        return Err(ArgSpecError::Size(arg.to_string()));
    }
    let mut spec = ProbeArgSpec {
        size: size.unsigned_abs() as u8,
        signed: u8::from(size < 0),
        ..Default::default()
    };
    if let Some(reg) = operand.strip_prefix('%') {
        spec.kind = PROBE_ARG_REG;
        spec.reg_off = register(arg, reg)?;
    } else if let Some(imm) = operand.strip_prefix('$') {
        spec.kind = PROBE_ARG_CONST;
        spec.value = parse_int(imm).ok_or_else(|| ArgSpecError::Form(arg.to_string()))?;
    } else if let Some((off, rest)) = operand.split_once("(%")
        && let Some(reg) = rest.strip_suffix(')')
    {
        if reg == "rip" || reg.contains(',') {
            // rip-relative operands name a symbol; indexed ones have a
            // second register. Neither appears in the objects tested here.
            return Err(ArgSpecError::Form(arg.to_string()));
        }
        spec.kind = PROBE_ARG_MEM;
        spec.reg_off = register(arg, reg)?;
        spec.value = if off.is_empty() {
            0
        } else {
            parse_int(off).ok_or_else(|| ArgSpecError::Form(arg.to_string()))?
        };
    } else {
        return Err(ArgSpecError::Form(arg.to_string()));
    }
    Ok(spec)
}

/// Decimal or 0x-hex, optionally negative.
fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let v = match digits.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<i64>().ok()?,
    };
    Some(if neg { -v } else { v })
}

/// Parse a note's whole argument string.
pub fn parse_args(args: &str) -> Result<Vec<ProbeArgSpec>, ArgSpecError> {
    args.split_whitespace().map(parse_arg).collect()
}

/// The arguments of a function at its entry (x86-64 System V: rdi, rsi,
/// rdx, rcx, r8, r9), full 64-bit registers.
pub fn calling_convention_args() -> Vec<ProbeArgSpec> {
    ["rdi", "rsi", "rdx", "rcx", "r8", "r9"]
        .iter()
        .map(|r| ProbeArgSpec {
            kind: PROBE_ARG_REG,
            reg_off: pt_regs_offset(r).unwrap_or_default(),
            size: 8,
            ..Default::default()
        })
        .collect()
}

/// A function's return value (rax) at its return.
pub fn return_value_arg() -> ProbeArgSpec {
    ProbeArgSpec {
        kind: PROBE_ARG_REG,
        reg_off: pt_regs_offset("rax").unwrap_or_default(),
        size: 8,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(off: u16, size: u8, signed: bool) -> ProbeArgSpec {
        ProbeArgSpec {
            kind: PROBE_ARG_REG,
            reg_off: off,
            size,
            signed: u8::from(signed),
            ..Default::default()
        }
    }

    #[test]
    fn every_form() {
        assert_eq!(parse_arg("-4@%edi").unwrap(), reg(112, 4, true));
        assert_eq!(parse_arg("8@%rax").unwrap(), reg(80, 8, false));
        assert_eq!(parse_arg("1@%sil").unwrap(), reg(104, 1, false));
        assert_eq!(parse_arg("-2@%r9w").unwrap(), reg(64, 2, true));
        assert_eq!(parse_arg("8@%r12").unwrap(), reg(24, 8, false));
        assert_eq!(parse_arg("%rdx").unwrap(), reg(96, 8, false));
        let c = parse_arg("-4@$-5").unwrap();
        assert_eq!(
            (c.kind, c.value, c.size, c.signed),
            (PROBE_ARG_CONST, -5, 4, 1)
        );
        let m = parse_arg("-4@112(%rsp)").unwrap();
        assert_eq!(
            (m.kind, m.reg_off, m.value, m.size, m.signed),
            (PROBE_ARG_MEM, 152, 112, 4, 1)
        );
        let m = parse_arg("8@-80(%rbx)").unwrap();
        assert_eq!((m.kind, m.reg_off, m.value), (PROBE_ARG_MEM, 40, -80));
        let m = parse_arg("2@(%rdi)").unwrap();
        assert_eq!(
            (m.kind, m.reg_off, m.value, m.size),
            (PROBE_ARG_MEM, 112, 0, 2)
        );
        assert_eq!(parse_args("8@%rbp 8@%r12 -4@%eax").unwrap().len(), 3);
        assert!(parse_args("").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_argument() {
        assert_eq!(
            parse_arg("3@%eax"),
            Err(ArgSpecError::Size("3@%eax".into()))
        );
        assert_eq!(
            parse_arg("4@%xmm0"),
            Err(ArgSpecError::Register("4@%xmm0".into(), "xmm0".into()))
        );
        assert_eq!(
            parse_arg("8@counter(%rip)"),
            Err(ArgSpecError::Form("8@counter(%rip)".into()))
        );
        assert_eq!(
            parse_arg("8@8(%rax,%rbx,4)"),
            Err(ArgSpecError::Form("8@8(%rax,%rbx,4)".into()))
        );
    }
}
