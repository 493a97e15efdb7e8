//! `cargo xtask demo`: bootstrap, build, then hand the terminal to
//! `tracer demo` — a 3-host cluster in network namespaces (gateway -> api ->
//! store), an agent per host, the aggregator and traffic — until Ctrl-C.

use std::os::unix::process::CommandExt as _;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{bootstrap, tracer};

#[derive(Args)]
pub struct DemoArgs {
    /// Extra arguments for `tracer demo`, e.g. `-- --interval-ms 50`.
    #[arg(last = true, value_name = "DEMO ARGS")]
    demo_args: Vec<String>,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    bootstrap::run()?;
    tracer::build_release()?;
    let binary = tracer::binary();
    eprintln!("[demo] starting {} demo", binary.display());
    // exec: the terminal's Ctrl-C goes straight to `tracer demo`, which
    // stops its processes and removes its namespaces.
    let err = std::process::Command::new(&binary)
        .arg("demo")
        .args(&args.demo_args)
        .exec();
    Err(err).with_context(|| format!("running {} demo", binary.display()))
}
