//! USDT points: the SystemTap SDT notes (`.note.stapsdt`) that
//! `<sys/sdt.h>` leaves in an ELF object, one per call site.
//!
//! Each note (owner `stapsdt`, type 3) holds, for a 64-bit object, three
//! addresses (the call site's `nop`, the link-time address of
//! `.stapsdt.base`, the semaphore or 0), then provider, name and argument
//! spec as NUL-terminated strings. A prelinked object was moved after the
//! notes were written: the difference between the real `.stapsdt.base`
//! section address and the noted one moves the site and the semaphore too.

use anyhow::{Context as _, Result};
use object::{
    Object as _,
    elf::SHT_NOTE,
    read::elf::{ElfFile64, SectionHeader as _},
};

use super::objects::{ElfObject, file_offset};

const NT_STAPSDT: u32 = 3;

/// One call site of a USDT point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsdtSite {
    pub provider: String,
    pub name: String,
    /// The note's argument spec, e.g. `-4@%edi 8@-16(%rbp) -4@$5`.
    pub args: String,
    /// Link-time address of the site, after the `.stapsdt.base` adjustment.
    pub address: u64,
    /// File offset of the site (where the uprobe goes).
    pub file_offset: u64,
    /// Semaphore address (adjusted), 0 when the point has none.
    pub semaphore: u64,
    /// File offset of the semaphore (the uprobe's `ref_ctr_offset`), 0
    /// when none.
    pub semaphore_offset: u64,
}

impl UsdtSite {
    pub fn point(&self) -> String {
        format!("{}:{}", self.provider, self.name)
    }
}

/// Every USDT call site of `obj`; empty when it has no SDT notes.
pub fn usdt_sites(obj: &ElfObject) -> Result<Vec<UsdtSite>> {
    let data = obj.data();
    let Ok(elf) = ElfFile64::<object::Endianness>::parse(data) else {
        // 32-bit or not ELF: tracer probes x86-64 processes only.
        return Ok(Vec::new());
    };
    let endian = elf.endian();
    let base_actual = elf.section_by_name(".stapsdt.base").map(|s| {
        use object::ObjectSection as _;
        s.address()
    });
    let generic = obj.parse()?;
    let mut sites = Vec::new();
    for section in elf.elf_section_table().iter() {
        if section.sh_type(endian) != SHT_NOTE {
            continue;
        }
        let Some(mut notes) = section
            .notes(endian, data)
            .with_context(|| format!("reading the notes of {}", obj.path))?
        else {
            continue;
        };
        while let Some(note) = notes
            .next()
            .with_context(|| format!("reading the notes of {}", obj.path))?
        {
            if note.name() != b"stapsdt" || note.n_type(endian) != NT_STAPSDT {
                continue;
            }
            let Some(raw) = parse_desc(note.desc()) else {
                log::debug!("{}: malformed stapsdt note skipped", obj.path);
                continue;
            };
            // Prelink moved the object: move the site and semaphore as far.
            let shift = match base_actual {
                Some(actual) if raw.base != 0 => actual.wrapping_sub(raw.base),
                _ => 0,
            };
            let address = raw.pc.wrapping_add(shift);
            let semaphore = if raw.semaphore == 0 {
                0
            } else {
                raw.semaphore.wrapping_add(shift)
            };
            let Some(offset) = file_offset(&generic, address) else {
                log::debug!("{}: USDT site {address:#x} outside the file", obj.path);
                continue;
            };
            let semaphore_offset = if semaphore == 0 {
                0
            } else {
                file_offset(&generic, semaphore).unwrap_or(0)
            };
            sites.push(UsdtSite {
                provider: raw.provider,
                name: raw.name,
                args: raw.args,
                address,
                file_offset: offset,
                semaphore,
                semaphore_offset,
            });
        }
    }
    Ok(sites)
}

struct RawNote {
    pc: u64,
    base: u64,
    semaphore: u64,
    provider: String,
    name: String,
    args: String,
}

/// The descriptor of a 64-bit stapsdt note (little-endian: x86-64).
fn parse_desc(desc: &[u8]) -> Option<RawNote> {
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            desc.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let (pc, base, semaphore) = (word(0)?, word(1)?, word(2)?);
    let mut strings = desc.get(24..)?.split(|b| *b == 0);
    let mut next =
        || -> Option<String> { Some(String::from_utf8_lossy(strings.next()?).into_owned()) };
    let provider = next()?;
    let name = next()?;
    let args = next().unwrap_or_default();
    if provider.is_empty() || name.is_empty() {
        return None;
    }
    Some(RawNote {
        pc,
        base,
        semaphore,
        provider,
        name,
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desc_parses() {
        let mut d = Vec::new();
        d.extend(0x1234u64.to_le_bytes());
        d.extend(0x8000u64.to_le_bytes());
        d.extend(0x9000u64.to_le_bytes());
        d.extend(b"prov\0name\0-4@%edi 8@$3\0");
        let n = parse_desc(&d).unwrap();
        assert_eq!((n.pc, n.base, n.semaphore), (0x1234, 0x8000, 0x9000));
        assert_eq!((n.provider.as_str(), n.name.as_str()), ("prov", "name"));
        assert_eq!(n.args, "-4@%edi 8@$3");
        assert!(parse_desc(&d[..20]).is_none());
    }

    /// python3.11's notes, against readelf (independent parser).
    #[test]
    fn python_notes_match_readelf() {
        let path = "/usr/bin/python3.11";
        if !std::path::Path::new(path).exists() {
            eprintln!("skipped: no {path}");
            return;
        }
        let obj = ElfObject::open(std::process::id(), path).unwrap();
        let sites = usdt_sites(&obj).unwrap();
        let out = std::process::Command::new("readelf")
            .args(["-n", path])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Name: "))
            .collect();
        assert_eq!(sites.len(), names.len());
        for (site, name) in sites.iter().zip(&names) {
            assert_eq!(site.provider, "python");
            assert_eq!(&site.name, name);
            assert_ne!(site.semaphore_offset, 0, "{site:?}");
            let loc = format!("Location: {:#018x}", site.address);
            assert!(text.contains(&loc), "{loc} not in readelf output");
        }
        let gc = sites.iter().find(|s| s.name == "gc__start").unwrap();
        assert_eq!(gc.args, "-4@112(%rsp)");
    }
}
