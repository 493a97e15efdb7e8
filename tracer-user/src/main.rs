use clap::{Parser, Subcommand};

/// tracer: see inside running Node.js processes with eBPF — their logs, TCP
/// connections, event-loop stalls and GC pauses — without restarting or
/// modifying them.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Attach(tracer_user::attach::AttachArgs),
    Agent(tracer_user::agent::AgentArgs),
    Demo(tracer_user::demo::DemoArgs),
    Probe(tracer_user::probe::ProbeArgs),
    #[command(flatten)]
    Cluster(tracer_user::aggregator::ClusterCommand),
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    // The tracing front ends are one pipeline: a single thread avoids a
    // cross-thread wakeup for every hand-off (measured: most of the agent's
    // CPU). The aggregator serves many clients and stays multi-threaded.
    let builder = match cli.command {
        Command::Attach(_) | Command::Agent(_) | Command::Demo(_) | Command::Probe(_) => {
            tokio::runtime::Builder::new_current_thread()
        }
        Command::Cluster(_) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    let mut builder = builder;
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Attach(args) => tracer_user::attach::run(args).await,
            Command::Agent(args) => tracer_user::agent::run(args).await,
            Command::Demo(args) => tracer_user::demo::run(args).await,
            Command::Probe(args) => tracer_user::probe::run(args).await,
            Command::Cluster(cmd) => tracer_user::aggregator::run(cmd).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
