//! Loading one program into the kernel: what the verifier spent on it, and
//! when it refuses, a one-line reason with the full log in a file.
//!
//! The verifier log level is STATS only (the error message and the
//! `processed N insns` line, a few hundred bytes). aya loads a program once
//! without a log and, only on failure, once more with one; at the
//! instruction-level levels a program that ran out of budget writes a log of
//! hundreds of MB, which aya then retries with ever bigger buffers (tens of
//! seconds). `TRACER_VERIFIER_LOG=verbose` asks for that log when debugging.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{Ebpf, VerifierLogLevel, programs::Program, programs::ProgramError};

/// The verifier's budget per program (`BPF_COMPLEXITY_LIMIT_INSNS`).
pub const VERIFIER_BUDGET_INSNS: u32 = 1_000_000;

/// The environment variable that asks for an instruction-level log.
pub const VERBOSE_LOG_ENV: &str = "TRACER_VERIFIER_LOG";

/// The log level to load with: STATS, or everything when asked for.
pub fn log_level() -> VerifierLogLevel {
    match std::env::var(VERBOSE_LOG_ENV).as_deref() {
        Ok("verbose") => VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS,
        _ => VerifierLogLevel::STATS,
    }
}

/// A program the kernel accepted.
#[derive(Debug, Clone)]
pub struct Verified {
    pub program: String,
    /// Instructions the verifier processed (`processed N insns`); None on
    /// a kernel too old to report it (before 5.16).
    pub insns: Option<u32>,
    /// Wall time of the load, which is almost all verification.
    pub elapsed: Duration,
}

/// Why a program could not load or attach.
#[derive(Debug, Clone)]
pub struct Failure {
    pub program: String,
    /// One line: `verifier: program too complex (1000001 insns)`, `EPERM`, ...
    pub reason: String,
    /// What the user can do about it.
    pub hint: String,
    /// Where the full verifier log was written, if there was one.
    pub log: Option<PathBuf>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "probe {}: {}", self.program, self.reason)?;
        if let Some(log) = &self.log {
            write!(f, " (verifier log: {})", log.display())?;
        }
        if !self.hint.is_empty() {
            write!(f, "; {}", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

/// Load (verify) program `name` of `ebpf`, without attaching it.
pub fn load(ebpf: &mut Ebpf, name: &str) -> Result<Verified, Failure> {
    let failure = |reason: String, hint: &str| Failure {
        program: name.to_string(),
        reason,
        hint: hint.to_string(),
        log: None,
    };
    let Some(program) = ebpf.program_mut(name) else {
        return Err(failure(
            "missing from the embedded eBPF object".into(),
            "the binary was built from mismatched sources; rebuild tracer",
        ));
    };
    let started = Instant::now();
    let result = match program {
        Program::TracePoint(p) => p.load(),
        Program::RawTracePoint(p) => p.load(),
        Program::UProbe(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        other => {
            return Err(failure(
                format!(
                    "program type {:?} is not one tracer loads",
                    other.prog_type()
                ),
                "rebuild tracer",
            ));
        }
    };
    let elapsed = started.elapsed();
    match result {
        Ok(()) => Ok(Verified {
            program: name.to_string(),
            insns: program
                .info()
                .ok()
                .and_then(|info| info.verified_instruction_count()),
            elapsed,
        }),
        Err(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) => {
            let log = verifier_log.to_string();
            let mut f = classify(name, io_error.raw_os_error(), &log);
            if !log.trim().is_empty() {
                f.log = write_log(name, &log);
            }
            Err(f)
        }
        Err(e) => Err(failure(format!("{e}"), "")),
    }
}

/// The reason and the hint for a refused load, from errno and the log.
pub fn classify(program: &str, errno: Option<i32>, log: &str) -> Failure {
    let (reason, hint) = if log.contains("BPF program is too large") || errno == Some(libc::E2BIG) {
        let insns = processed_insns(log)
            .map(|n| format!(" ({n} insns)"))
            .unwrap_or_default();
        (
            format!("verifier: program too complex{insns}"),
            "this kernel or compiler made the program heavier than the verifier allows; \
             leave its family out with --probes, check every probe with `tracer verify`, \
             and report it with the log"
                .to_string(),
        )
    } else if errno == Some(libc::EPERM) && rejection(log).is_none() {
        (
            "EPERM: the kernel refused to load BPF".to_string(),
            "run as root (or with CAP_BPF and CAP_PERFMON); if you are root, kernel \
             lockdown or a security module forbids BPF (see /sys/kernel/security/lockdown)"
                .to_string(),
        )
    } else if let Some(line) = rejection(log) {
        (
            format!("verifier: rejected: {line}"),
            "this kernel's verifier refuses it; leave its family out with --probes and \
             report it with the log"
                .to_string(),
        )
    } else {
        let err = errno
            .map(|e| std::io::Error::from_raw_os_error(e).to_string())
            .unwrap_or_else(|| "unknown error".into());
        (format!("load failed: {err}"), String::new())
    };
    Failure {
        program: program.to_string(),
        reason,
        hint,
        log: None,
    }
}

/// N of the verifier's `processed N insns` statistics line.
pub fn processed_insns(log: &str) -> Option<u32> {
    log.lines().rev().find_map(|line| {
        let rest = line.trim().strip_prefix("processed ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The verifier's own complaint: the last line before its statistics.
fn rejection(log: &str) -> Option<&str> {
    log.lines().map(str::trim).rev().find(|line| {
        !line.is_empty()
            && !line.starts_with("processed ")
            && !line.starts_with("verification time")
            && !line.starts_with("stack depth")
    })
}

/// Write the full log next to the other temporary files; None if that fails
/// (the one-line reason still says what happened).
fn write_log(program: &str, log: &str) -> Option<PathBuf> {
    let dir = std::env::temp_dir();
    let path = log_path(&dir, program);
    match std::fs::write(&path, log) {
        Ok(()) => Some(path),
        Err(e) => {
            log::warn!(
                "could not write the verifier log to {}: {e}",
                path.display()
            );
            None
        }
    }
}

fn log_path(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!(
        "tracer-{}-{program}.verifier.log",
        std::process::id()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOO_LARGE: &str = "\
414: (85) call bpf_ringbuf_query#134
BPF program is too large. Processed 1000001 insn
verification time 3876997 usec
stack depth 160+24+0+104
processed 1000001 insns (limit 1000000) max_states_per_insn 81 total_states 29511 peak_states 88558 mark_read 0
";

    #[test]
    fn too_complex_names_the_instruction_count() {
        let f = classify("sys_exit_rw", Some(libc::E2BIG), TOO_LARGE);
        assert_eq!(f.reason, "verifier: program too complex (1000001 insns)");
        assert!(f.hint.contains("--probes"), "{}", f.hint);
        assert_eq!(processed_insns(TOO_LARGE), Some(1_000_001));
    }

    #[test]
    fn a_rejection_quotes_the_verifier() {
        let log = "R1 invalid mem access 'scalar'\nverification time 12 usec\n\
                   stack depth 8\nprocessed 42 insns (limit 1000000) max_states_per_insn 0\n";
        let f = classify("gc_exit", Some(libc::EACCES), log);
        assert_eq!(
            f.reason,
            "verifier: rejected: R1 invalid mem access 'scalar'"
        );
    }

    #[test]
    fn eperm_without_a_log_is_about_privileges() {
        let f = classify("gc_exit", Some(libc::EPERM), "");
        assert_eq!(f.reason, "EPERM: the kernel refused to load BPF");
        assert!(f.hint.contains("lockdown"));
    }

    #[test]
    fn display_is_one_line_with_the_log_path() {
        let mut f = classify("sys_exit_rw", Some(libc::E2BIG), TOO_LARGE);
        f.log = Some(PathBuf::from("/tmp/x.log"));
        let text = f.to_string();
        assert!(!text.contains('\n'));
        assert!(text.starts_with(
            "probe sys_exit_rw: verifier: program too complex (1000001 insns) \
             (verifier log: /tmp/x.log); "
        ));
    }
}
