//! Finding uprobe attach points in a process's executable.
//!
//! The executable is read through /proc/PID/exe, which works for any path,
//! for deleted binaries and across mount namespaces. Symbols come from the
//! ELF symbol table (`.symtab`, which holds local functions such as libuv's
//! `uv__io_poll`) and the dynamic table. A uprobe wants a *file offset*, so
//! the symbol's virtual address is mapped through the PT_LOAD segment that
//! contains it; that is right for PIE and non-PIE binaries alike.

use std::path::Path;

use anyhow::{Context as _, Result};
use object::{Object, ObjectSegment, ObjectSymbol};

/// How to recognise a symbol.
#[derive(Debug, Clone, Copy)]
pub enum SymbolMatch {
    Exact(&'static str),
    /// Any symbol starting with this (e.g. a C++ mangled name without its
    /// parameter list, which changes between V8 versions).
    Prefix(&'static str),
}

impl SymbolMatch {
    fn matches(&self, name: &str) -> bool {
        match self {
            SymbolMatch::Exact(s) => name == *s,
            SymbolMatch::Prefix(p) => name.starts_with(p),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub name: String,
    pub file_offset: u64,
}

/// Resolve each wanted symbol to a file offset; `None` where it is absent.
pub fn resolve(path: &Path, wanted: &[SymbolMatch]) -> Result<Vec<Option<Resolved>>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{} is not an ELF executable", path.display()))?;
    let mut found: Vec<Option<Resolved>> = vec![None; wanted.len()];
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        if sym.kind() != object::SymbolKind::Text || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        for (slot, want) in found.iter_mut().zip(wanted) {
            if slot.is_none()
                && want.matches(name)
                && let Some(file_offset) = file_offset(&file, sym.address())
            {
                *slot = Some(Resolved {
                    name: name.to_string(),
                    file_offset,
                });
            }
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    Ok(found)
}

/// The C library `pid` has mapped, as a path through its root
/// (`/proc/PID/root/usr/lib/.../libc.so.6`); None for a static program.
pub fn mapped_libc(pid: u32) -> Result<Option<String>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    Ok(maps.lines().find_map(|line| {
        let path = line.split_whitespace().nth(5)?;
        let name = path.rsplit('/').next()?;
        (path.starts_with('/') && (name.starts_with("libc.so") || name.starts_with("libc-")))
            .then(|| format!("/proc/{pid}/root{path}"))
    }))
}

fn file_offset(file: &object::File<'_>, address: u64) -> Option<u64> {
    file.segments().find_map(|seg| {
        let (start, size) = (seg.address(), seg.size());
        let (offset, file_size) = seg.file_range();
        (address >= start && address < start + size.min(file_size))
            .then(|| address - start + offset)
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const PROGRAM: &str = r#"
        __attribute__((noinline)) static int local_fn(int x) { return x * 3 + 1; }
        __attribute__((noinline)) int global_fn(int x) { return local_fn(x) + 2; }
        int main(int argc, char **argv) { (void)argv; return global_fn(argc) == 6 ? 0 : 1; }
    "#;

    /// Expected offset computed independently from `readelf` output:
    /// symbol value -> containing section's (addr, offset).
    fn readelf_offset(bin: &Path, symbol: &str) -> u64 {
        let syms = Command::new("readelf")
            .args(["-sW"])
            .arg(bin)
            .output()
            .unwrap();
        let syms = String::from_utf8(syms.stdout).unwrap();
        let line = syms
            .lines()
            .find(|l| l.split_whitespace().last() == Some(symbol))
            .unwrap();
        let value = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
        let secs = Command::new("readelf")
            .args(["-SW"])
            .arg(bin)
            .output()
            .unwrap();
        let secs = String::from_utf8(secs.stdout).unwrap();
        let text = secs.lines().find(|l| l.contains(" .text ")).unwrap();
        let cols: Vec<&str> = text.split_whitespace().collect();
        let pos = cols.iter().position(|c| *c == ".text").unwrap();
        let addr = u64::from_str_radix(cols[pos + 2], 16).unwrap();
        let off = u64::from_str_radix(cols[pos + 3], 16).unwrap();
        value - addr + off
    }

    fn build(pie: bool) -> Option<std::path::PathBuf> {
        let dir = std::env::temp_dir().join(format!("tracer-sym-{}-{pie}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("p.c");
        std::fs::write(&src, PROGRAM).unwrap();
        let bin = dir.join("p");
        let flag = if pie { "-pie" } else { "-no-pie" };
        let fpie = if pie { "-fPIE" } else { "-fno-pie" };
        let ok = Command::new("gcc")
            .args(["-O1", fpie, flag, "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .ok()?
            .success();
        ok.then_some(bin)
    }

    #[test]
    fn resolves_local_and_global_symbols_pie_and_not() {
        for pie in [true, false] {
            let Some(bin) = build(pie) else {
                eprintln!("skipped: gcc not available");
                return;
            };
            let got = resolve(
                &bin,
                &[
                    SymbolMatch::Exact("local_fn"),
                    SymbolMatch::Prefix("global_f"),
                    SymbolMatch::Exact("missing_fn"),
                ],
            )
            .unwrap();
            let local = got[0].as_ref().expect("local_fn found");
            assert_eq!(
                local.file_offset,
                readelf_offset(&bin, "local_fn"),
                "pie={pie}"
            );
            let global = got[1].as_ref().expect("global_fn found");
            assert_eq!(global.name, "global_fn");
            assert_eq!(
                global.file_offset,
                readelf_offset(&bin, "global_fn"),
                "pie={pie}"
            );
            assert!(got[2].is_none());
        }
    }

    #[test]
    fn non_elf_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("tracer-not-elf-{}", std::process::id()));
        std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
        let err = resolve(&path, &[SymbolMatch::Exact("x")]).unwrap_err();
        assert!(format!("{err:#}").contains("not an ELF"), "{err:#}");
    }
}
