//! Probe specs (`usdt:[OBJECT:]PROVIDER:NAME`, `uprobe:[OBJECT:]GLOB`,
//! `uretprobe:[OBJECT:]GLOB`) and their resolution to call sites in the
//! objects a process has mapped, with errors that name the closest match.

use anyhow::{Result, bail};
use tracer_common::ProbeArgSpec;

use super::{
    argspec,
    notes::{UsdtSite, usdt_sites},
    objects::{ElfObject, FunctionSymbol, mapped_paths, object_matches},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Usdt,
    /// Function entry.
    Uprobe,
    /// Function return.
    Uretprobe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// As the user wrote it.
    pub text: String,
    pub kind: ProbeKind,
    pub object: Option<String>,
    /// USDT only.
    pub provider: Option<String>,
    /// USDT point name, or a symbol glob.
    pub name: String,
}

const SPEC_HELP: &str = "expected usdt:[OBJECT:]PROVIDER:NAME, uprobe:[OBJECT:]SYMBOL_GLOB or \
                         uretprobe:[OBJECT:]SYMBOL_GLOB";

pub fn parse(text: &str) -> Result<ProbeSpec> {
    let Some((kind, rest)) = text.split_once(':') else {
        bail!("probe `{text}`: {SPEC_HELP}");
    };
    let kind = match kind {
        "usdt" => ProbeKind::Usdt,
        "uprobe" => ProbeKind::Uprobe,
        "uretprobe" => ProbeKind::Uretprobe,
        other => bail!("probe `{text}`: unknown probe type `{other}`; {SPEC_HELP}"),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("probe `{text}`: empty part; {SPEC_HELP}");
    }
    let (object, provider, name) = match (kind, parts.as_slice()) {
        (ProbeKind::Usdt, [p, n]) => (None, Some(*p), *n),
        (ProbeKind::Usdt, [o, p, n]) => (Some(*o), Some(*p), *n),
        (ProbeKind::Uprobe | ProbeKind::Uretprobe, [n]) => (None, None, *n),
        (ProbeKind::Uprobe | ProbeKind::Uretprobe, [o, n]) => (Some(*o), None, *n),
        _ => bail!("probe `{text}`: {SPEC_HELP}"),
    };
    Ok(ProbeSpec {
        text: text.to_string(),
        kind,
        object: object.map(str::to_string),
        provider: provider.map(str::to_string),
        name: name.to_string(),
    })
}

/// A shell-style glob (`*`, `?`) as an anchored regex.
pub fn glob(pattern: &str) -> Result<regex::Regex> {
    let mut re = String::from("^");
    for c in pattern.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    Ok(regex::Regex::new(&re)?)
}

/// Functions tracer refuses to probe without `--force`: the hottest paths
/// of node's event loop and of the allocator, where a uprobe trap on every
/// call would slow the whole process down (TOOLCHAIN.md: a hit costs
/// microseconds here).
pub const DENY_LIST: &[&str] = &[
    "uv_run",
    "uv__io_poll",
    "uv__run_timers",
    "uv__run_idle",
    "uv__run_prepare",
    "uv__run_check",
    "uv__stream_io",
    "uv__read",
    "uv__write",
    "uv_try_write",
    "uv_now",
    "uv_update_time",
    "uv__hrtime",
    "uv_hrtime",
    "uv__io_start",
    "uv__io_stop",
    "malloc",
    "free",
    "calloc",
    "realloc",
    "memcpy",
    "memmove",
    "memset",
    "pthread_mutex_lock",
    "pthread_mutex_unlock",
    "epoll_wait",
];

/// One place to attach.
#[derive(Debug, Clone)]
pub struct ResolvedSite {
    /// The object's path in the process.
    pub object: String,
    /// The same file, openable from here.
    pub host_path: String,
    /// `provider:name` or the symbol.
    pub point: String,
    pub file_offset: u64,
    /// USDT semaphore file offset (0: none).
    pub ref_ctr_offset: u64,
    /// How to read each argument available at the site.
    pub args: Vec<ProbeArgSpec>,
}

/// The objects of `pid` that `wanted` names (all when `None`).
fn objects_of(pid: u32, wanted: Option<&str>) -> Result<Vec<ElfObject>> {
    let paths = mapped_paths(pid)?;
    let chosen: Vec<&String> = paths
        .iter()
        .filter(|p| wanted.is_none_or(|w| object_matches(w, p)))
        .collect();
    if let Some(w) = wanted
        && chosen.is_empty()
    {
        let names: Vec<&str> = paths
            .iter()
            .map(|p| p.rsplit('/').next().unwrap_or(p))
            .collect();
        bail!(
            "PID {pid} maps no object named `{w}`{}; it maps: {}",
            closest(w, names.iter().copied()),
            names.join(", ")
        );
    }
    let mut out = Vec::new();
    for path in chosen {
        match ElfObject::open(pid, path) {
            Ok(obj) => out.push(obj),
            Err(e) => log::debug!("skipping {path}: {e:#}"),
        }
    }
    Ok(out)
}

/// ` (closest: a, b)` with the names nearest to `wanted`, or nothing.
pub fn closest<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> String {
    let mut scored: Vec<(f64, &str)> = names
        .map(|n| (strsim::jaro_winkler(wanted, n), n))
        .filter(|(score, _)| *score > 0.7)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    if scored.is_empty() {
        return String::new();
    }
    let best: Vec<&str> = scored.iter().take(3).map(|(_, n)| *n).collect();
    format!(" (closest: {})", best.join(", "))
}

/// Every USDT site of the process, by object.
pub fn list_usdt(pid: u32, object: Option<&str>) -> Result<Vec<(String, Vec<UsdtSite>)>> {
    let mut out = Vec::new();
    for obj in objects_of(pid, object)? {
        match usdt_sites(&obj) {
            Ok(sites) if !sites.is_empty() => out.push((obj.path.clone(), sites)),
            Ok(_) => {}
            Err(e) => log::debug!("{}: {e:#}", obj.path),
        }
    }
    Ok(out)
}

/// Function symbols matching `pattern`, by object.
pub fn list_symbols(
    pid: u32,
    object: Option<&str>,
    pattern: &regex::Regex,
) -> Result<Vec<(String, Vec<FunctionSymbol>)>> {
    let mut out = Vec::new();
    for obj in objects_of(pid, object)? {
        match obj.functions(|n| pattern.is_match(n)) {
            Ok(syms) if !syms.is_empty() => out.push((obj.path.clone(), syms)),
            Ok(_) => {}
            Err(e) => log::debug!("{}: {e:#}", obj.path),
        }
    }
    Ok(out)
}

/// The sites of a spec in process `pid`.
pub fn resolve(pid: u32, spec: &ProbeSpec, force: bool) -> Result<Vec<ResolvedSite>> {
    match spec.kind {
        ProbeKind::Usdt => resolve_usdt(pid, spec),
        ProbeKind::Uprobe | ProbeKind::Uretprobe => resolve_symbols(pid, spec, force),
    }
}

fn resolve_usdt(pid: u32, spec: &ProbeSpec) -> Result<Vec<ResolvedSite>> {
    let provider = spec.provider.as_deref().unwrap_or_default();
    let all = list_usdt(pid, spec.object.as_deref())?;
    let mut out = Vec::new();
    for (object, sites) in &all {
        for site in sites {
            if site.provider != provider || site.name != spec.name {
                continue;
            }
            let args = argspec::parse_args(&site.args).map_err(|e| {
                anyhow::anyhow!(
                    "probe `{}`: {object} site {:#x}: {e}",
                    spec.text,
                    site.address
                )
            })?;
            out.push(ResolvedSite {
                object: object.clone(),
                host_path: format!("/proc/{pid}/root{object}"),
                point: site.point(),
                file_offset: site.file_offset,
                ref_ctr_offset: site.semaphore_offset,
                args,
            });
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let where_ = spec
        .object
        .as_deref()
        .map_or_else(|| "the objects".to_string(), |o| format!("`{o}`"));
    if all.is_empty() {
        bail!(
            "probe `{}`: no USDT points in {where_} of PID {pid} (no .note.stapsdt)",
            spec.text
        );
    }
    let providers: std::collections::BTreeSet<&str> = all
        .iter()
        .flat_map(|(_, s)| s.iter().map(|s| s.provider.as_str()))
        .collect();
    if !providers.contains(provider) {
        bail!(
            "probe `{}`: no USDT provider `{provider}` in {where_} of PID {pid}{}; providers: {}",
            spec.text,
            closest(provider, providers.iter().copied()),
            providers.iter().copied().collect::<Vec<_>>().join(", ")
        );
    }
    let points: std::collections::BTreeSet<&str> = all
        .iter()
        .flat_map(|(_, s)| s.iter())
        .filter(|s| s.provider == provider)
        .map(|s| s.name.as_str())
        .collect();
    bail!(
        "probe `{}`: provider `{provider}` has no point `{}`{}; its points: {}",
        spec.text,
        spec.name,
        closest(&spec.name, points.iter().copied()),
        points.iter().copied().collect::<Vec<_>>().join(", ")
    )
}

fn resolve_symbols(pid: u32, spec: &ProbeSpec, force: bool) -> Result<Vec<ResolvedSite>> {
    let pattern = glob(&spec.name)?;
    let found = list_symbols(pid, spec.object.as_deref(), &pattern)?;
    let mut out = Vec::new();
    for (object, syms) in &found {
        let mut offsets = std::collections::BTreeSet::new();
        for sym in syms {
            if DENY_LIST.contains(&sym.name.as_str()) && !force {
                bail!(
                    "probe `{}`: `{}` is one of the event loop's hottest functions (a uprobe \
                     there slows every loop turn); add --force to probe it anyway",
                    spec.text,
                    sym.name
                );
            }
            // Aliases (several names, one address) are one site.
            if !offsets.insert(sym.file_offset) {
                continue;
            }
            out.push(ResolvedSite {
                object: object.clone(),
                host_path: format!("/proc/{pid}/root{object}"),
                point: sym.name.clone(),
                file_offset: sym.file_offset,
                ref_ctr_offset: 0,
                args: match spec.kind {
                    ProbeKind::Uretprobe => vec![argspec::return_value_arg()],
                    _ => argspec::calling_convention_args(),
                },
            });
        }
    }
    if out.is_empty() {
        // Closest names among every function of the chosen objects.
        let all = list_symbols(pid, spec.object.as_deref(), &glob("*")?)?;
        let literal: String = spec.name.chars().filter(|c| !"*?".contains(*c)).collect();
        let names = all
            .iter()
            .flat_map(|(_, s)| s.iter().map(|s| s.name.as_str()));
        bail!(
            "probe `{}`: no function symbol matches `{}` in {} of PID {pid}{}",
            spec.text,
            spec.name,
            spec.object
                .as_deref()
                .map_or_else(|| "the objects".to_string(), |o| format!("`{o}`")),
            closest(&literal, names)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = parse("usdt:python:function__entry").unwrap();
        assert_eq!(
            (s.kind, s.object, s.provider.as_deref(), s.name.as_str()),
            (ProbeKind::Usdt, None, Some("python"), "function__entry")
        );
        let s = parse("usdt:libstdc++:libstdcxx:throw").unwrap();
        assert_eq!(s.object.as_deref(), Some("libstdc++"));
        let s = parse("uprobe:uv_fs_*").unwrap();
        assert_eq!((s.kind, s.name.as_str()), (ProbeKind::Uprobe, "uv_fs_*"));
        let s = parse("uretprobe:libc:getpid").unwrap();
        assert_eq!(
            (s.kind, s.object.as_deref(), s.name.as_str()),
            (ProbeKind::Uretprobe, Some("libc"), "getpid")
        );
        for bad in [
            "usdt:x",
            "kprobe:x",
            "uprobe",
            "uprobe:a:b:c",
            "usdt::x",
            "x",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(bad) && e.contains("expected") || e.contains("unknown"),
                "{e}"
            );
        }
    }

    #[test]
    fn globs() {
        let g = glob("uv_fs_*").unwrap();
        assert!(g.is_match("uv_fs_open") && !g.is_match("uv_fs") && !g.is_match("xuv_fs_a"));
        assert!(glob("SSL_rea?").unwrap().is_match("SSL_read"));
        assert!(glob("a.b").unwrap().is_match("a.b") && !glob("a.b").unwrap().is_match("axb"));
    }

    #[test]
    fn closest_names() {
        let names = ["function__entry", "function__return", "gc__start"];
        assert_eq!(
            closest("function_entry", names.iter().copied()),
            " (closest: function__entry, function__return)"
        );
        assert_eq!(closest("zzz", names.iter().copied()), "");
    }
}
