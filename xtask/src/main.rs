//! `cargo xtask`: the project tasks that cargo alone can't do — installing the
//! BPF toolchain on a fresh machine, linting the BPF crate for its own target,
//! running the privileged tests, the live demo and the overhead benchmark.

mod bench;
mod bootstrap;
mod cmd;
mod demo;
mod lint;
mod node;
mod procs;
mod test;
mod tracer;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Project tasks for tracer: bootstrap, lint, test, demo, bench",
    long_about = "Project tasks for tracer.\n\n\
        On a fresh machine (as root) `cargo xtask demo` or `cargo xtask test` is all you need: \
        both install the toolchain first."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and running tracer needs (idempotent; needs root).
    ///
    /// Debian packages (the Debian Rust toolchain with its std source, LLVM 22,
    /// wrk, bpftrace, iproute2), the `debian-bpf` rustup toolchain link,
    /// bpf-linker 0.13.0, and a tracefs mount at /sys/kernel/tracing.
    /// Steps whose result is already present are skipped.
    Bootstrap,
    /// Check formatting and run clippy on the host crates and on the eBPF crate.
    Lint,
    /// Bootstrap, lint, build the release binary, then run every test
    /// (root-only integration tests included: TRACER_REQUIRE_ROOT_TESTS=1).
    Test,
    /// Bootstrap, build, start a small node service with traffic, and trace it
    /// live until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Benchmarks (run as root).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::init_path();
    let result = match cli.command {
        Command::Bootstrap => bootstrap::run(),
        Command::Lint => lint::run(),
        Command::Test => return test::run(),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(bench) => bench::run(&bench),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
