//! The ELF objects a process has mapped, read through `/proc/PID/root` so
//! that a process in another mount namespace (a container) is read from its
//! own files.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};
use procfs::process::MMapPath;

/// One mapped ELF object, memory-mapped read-only.
pub struct ElfObject {
    /// The path as the process sees it (in its mount namespace).
    pub path: String,
    /// The same file as seen from here (under /proc/PID/root).
    pub host_path: PathBuf,
    map: memmap2::Mmap,
}

/// A function symbol of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSymbol {
    pub name: String,
    pub address: u64,
    pub size: u64,
    /// Where a uprobe goes (see [`file_offset`]).
    pub file_offset: u64,
}

/// Paths of the files the process maps executable code from (its program
/// and shared libraries), in the order first mapped.
pub fn mapped_paths(pid: u32) -> Result<Vec<String>> {
    let process = procfs::process::Process::new(pid as i32)
        .with_context(|| format!("no process with PID {pid}"))?;
    let maps = process
        .maps()
        .with_context(|| format!("reading /proc/{pid}/maps (needs root or CAP_SYS_PTRACE)"))?;
    let mut seen = BTreeSet::new();
    let mut paths = Vec::new();
    for map in &maps {
        let MMapPath::Path(path) = &map.pathname else {
            continue;
        };
        if !map.perms.contains(procfs::process::MMPermissions::EXECUTE) {
            continue;
        }
        let path = path.display().to_string();
        if seen.insert(path.clone()) {
            paths.push(path);
        }
    }
    Ok(paths)
}

impl ElfObject {
    /// Open `path` of process `pid`'s mount namespace.
    pub fn open(pid: u32, path: &str) -> Result<Self> {
        let host_path = Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/'));
        let file = std::fs::File::open(&host_path)
            .with_context(|| format!("opening {}", host_path.display()))?;
        // SAFETY: a read-only private mapping; a file truncated under us can
        // only make later reads fault, which the object crate's bounds
        // checks cannot prevent, but binaries and libraries in use are
        // replaced by rename, not rewritten in place.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", host_path.display()))?;
        if map.get(..4) != Some(b"\x7fELF".as_slice()) {
            bail!("{path} is not an ELF object");
        }
        Ok(Self {
            path: path.to_string(),
            host_path,
            map,
        })
    }

    pub fn parse(&self) -> Result<object::File<'_>> {
        object::File::parse(&*self.map).with_context(|| format!("parsing ELF object {}", self.path))
    }

    /// The bytes of the whole file.
    pub fn data(&self) -> &[u8] {
        &self.map
    }

    /// Function symbols (symbol table and dynamic symbols, one per address
    /// and name) for which `keep(name)` holds.
    pub fn functions(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<FunctionSymbol>> {
        let file = self.parse()?;
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for sym in file.symbols().chain(file.dynamic_symbols()) {
            if sym.kind() != object::SymbolKind::Text || sym.address() == 0 || sym.is_undefined() {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            if !keep(name) || !seen.insert((name.to_string(), sym.address())) {
                continue;
            }
            let Some(file_offset) = file_offset(&file, sym.address()) else {
                continue;
            };
            out.push(FunctionSymbol {
                name: name.to_string(),
                address: sym.address(),
                size: sym.size(),
                file_offset,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));
        Ok(out)
    }

    /// The address of a section, if the object has it.
    pub fn section_address(&self, name: &str) -> Result<Option<u64>> {
        let file = self.parse()?;
        Ok(file.section_by_name(name).map(|s| s.address()))
    }
}

/// The file offset a link-time virtual address is loaded from: through the
/// PT_LOAD segment holding it (right for PIE, non-PIE and shared objects).
/// The kernel places uprobes and uprobe reference counters by file offset.
pub fn file_offset(file: &object::File<'_>, address: u64) -> Option<u64> {
    file.segments().find_map(|seg| {
        let (start, size) = (seg.address(), seg.size());
        let (offset, file_size) = seg.file_range();
        (address >= start && address < start + size.min(file_size))
            .then(|| address - start + offset)
    })
}

/// Whether `wanted` (as a user typed it) names the object at `path`: the
/// full path, the file name, or the file name without its `.so...` suffix
/// (`libc`, `libstdc++`, `python3.11`).
pub fn object_matches(wanted: &str, path: &str) -> bool {
    if wanted == path {
        return true;
    }
    let base = path.rsplit('/').next().unwrap_or(path);
    base == wanted
        || base
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with(".so") || rest.starts_with("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        assert!(object_matches("libc", libc));
        assert!(object_matches("libc.so.6", libc));
        assert!(object_matches(libc, libc));
        assert!(!object_matches("lib", libc));
        assert!(!object_matches("libcrypto", libc));
        assert!(object_matches(
            "libstdc++",
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30"
        ));
        assert!(object_matches("node", "/usr/bin/node"));
        assert!(!object_matches("nod", "/usr/bin/node"));
    }

    #[test]
    fn own_mapped_objects_include_libc() {
        let paths = mapped_paths(std::process::id()).unwrap();
        assert!(paths.iter().any(|p| object_matches("libc", p)), "{paths:?}");
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(paths[0], exe.display().to_string(), "{paths:?}");
    }
}
