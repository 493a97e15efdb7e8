//! `cargo xtask demo`: a node service under light traffic, traced live.
//!
//! The demo is a list of services plus the traffic aimed at them; today one
//! service on this host. The planned 3-host cluster adds a `Topology` builder
//! that starts each host's services (in their own network namespaces) and the
//! tracer attaches to every traced pid, so only `start_topology` grows.

use std::{process::Stdio, thread, time::Duration};

use anyhow::{Result, bail};
use clap::Args;
use nix::sys::signal::Signal;

use crate::{
    bootstrap,
    node::{self, DEMO_CLIENT, DEMO_SERVER, Scripts},
    procs::{self, Spawned},
    tracer,
};

#[derive(Args)]
pub struct DemoArgs {
    /// How long the traffic generator sends requests (about 5 a second).
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    traffic_seconds: u64,
    /// Extra arguments for `tracer attach`, e.g. `-- --json` or
    /// `-- --probes logs`.
    #[arg(last = true, value_name = "TRACER ARGS")]
    tracer_args: Vec<String>,
}

/// What the demo started; dropping it stops every process in it.
struct Topology {
    /// The services being traced.
    services: Vec<Service>,
    /// Traffic generators; not traced, kept only so they are stopped with us.
    _traffic: Vec<Spawned>,
}

struct Service {
    name: &'static str,
    port: u16,
    process: Spawned,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    bootstrap::run()?;
    tracer::build_release()?;
    procs::catch_interrupts()?;
    let scripts = Scripts::write(&[DEMO_SERVER, DEMO_CLIENT])?;
    let topology = start_topology(&scripts, args)?;
    for service in &topology.services {
        eprintln!(
            "[demo] {} (pid {}) on 127.0.0.1:{}; its stdout/stderr go to /dev/null, \
             so every log line below was captured by tracer",
            service.name,
            service.process.pid(),
            service.port
        );
    }
    eprintln!("[demo] tracing; press Ctrl-C to stop");
    let pids: Vec<u32> = topology.services.iter().map(|s| s.process.pid()).collect();
    trace(&pids, &args.tracer_args)
    // `topology` drops here: the services and traffic are stopped after the
    // tracer, so its last events and summary still see them.
}

/// A single host: one demo service and a bounded traffic generator.
fn start_topology(scripts: &Scripts, args: &DemoArgs) -> Result<Topology> {
    let port = node::free_port()?;
    let mut server_cmd = scripts.command(&DEMO_SERVER, port, None);
    // Discarded on purpose: the point is that tracer sees the logs anyway.
    server_cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut server = Spawned::start("demo service", &mut server_cmd)?;
    node::wait_for_port(&mut server, port, Duration::from_secs(15))?;

    let mut client_cmd = scripts.command(&DEMO_CLIENT, port, None);
    client_cmd
        .env("DURATION_SECONDS", args.traffic_seconds.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let client = Spawned::start("demo traffic", &mut client_cmd)?;

    Ok(Topology {
        services: vec![Service {
            name: "demo service",
            port,
            process: server,
        }],
        _traffic: vec![client],
    })
}

/// Runs `tracer attach` on the terminal until it ends by itself or Ctrl-C.
fn trace(pids: &[u32], extra: &[String]) -> Result<()> {
    let mut command = tracer::attach_command(pids, extra);
    let mut tracer = Spawned::start("tracer", &mut command)?;
    loop {
        if let Some(status) = tracer.try_exited()? {
            if !status.success() {
                bail!("tracer exited with {status} (its error is above)");
            }
            eprintln!("[demo] tracer stopped");
            return Ok(());
        }
        if procs::interrupted() {
            // The tracer is in its own process group, so the terminal's
            // Ctrl-C reached only us: pass it on and let it print its summary.
            eprintln!("\n[demo] stopping tracer");
            let status = tracer.stop(Signal::SIGINT, Duration::from_secs(10))?;
            if !status.success() {
                bail!("tracer exited with {status} after Ctrl-C");
            }
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
}
