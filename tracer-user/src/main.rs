use clap::{Parser, Subcommand};
use tracer_user::runner::Outcome;

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
    Verify(tracer_user::verify::VerifyArgs),
    Probe(tracer_user::probe::ProbeArgs),
    Logpoint(tracer_user::inspector::logpoint::LogpointArgs),
    Eval(tracer_user::inspector::eval::EvalArgs),
    Repl(tracer_user::inspector::repl::ReplArgs),
    #[command(flatten)]
    Cluster(tracer_user::aggregator::ClusterCommand),
}

fn main() -> std::process::ExitCode {
    // rustls-platform-verifier logs every certificate it rejects; the
    // client says so itself, with the fix (client_tls::tls_problem).
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,rustls_platform_verifier=off"),
    )
    .init();
    let cli = Cli::parse();
    // The tracing front ends are one pipeline: a single thread avoids a
    // cross-thread wakeup for every hand-off (measured: most of the agent's
    // CPU), and so are the aggregator's clients (the wakeups between the
    // connection's task and the printing one were most of `tail -f`'s CPU
    // during a firehose). The aggregator serves many clients and stays
    // multi-threaded.
    use tracer_user::aggregator::ClusterCommand;
    let builder = match cli.command {
        Command::Cluster(
            ClusterCommand::Timeline(_) | ClusterCommand::Grep(_) | ClusterCommand::Tail(_),
        ) => tokio::runtime::Builder::new_current_thread(),
        Command::Attach(_)
        | Command::Agent(_)
        | Command::Demo(_)
        | Command::Verify(_)
        | Command::Probe(_)
        | Command::Logpoint(_)
        | Command::Eval(_)
        | Command::Repl(_) => tokio::runtime::Builder::new_current_thread(),
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
            Command::Demo(args) => tracer_user::demo::run(args)
                .await
                .map(|()| Outcome::Complete),
            Command::Probe(args) => tracer_user::probe::run(args)
                .await
                .map(|()| Outcome::Complete),
            Command::Verify(args) => tracer_user::verify::run(args).map(|()| Outcome::Complete),
            Command::Logpoint(args) => tracer_user::inspector::logpoint::run(args)
                .await
                .map(|()| Outcome::Complete),
            Command::Eval(args) => tracer_user::inspector::eval::run(args)
                .await
                .map(|()| Outcome::Complete),
            Command::Repl(args) => tracer_user::inspector::repl::run(args)
                .await
                .map(|()| Outcome::Complete),
            Command::Cluster(cmd) => tracer_user::aggregator::run(cmd)
                .await
                .map(|()| Outcome::Complete),
        }
    });
    // Exit codes: 0 everything ran; 1 an error (printed); 2 bad usage (clap);
    // 3 it ran with some probe families left out (named on stderr).
    match result {
        Ok(Outcome::Complete) => std::process::ExitCode::SUCCESS,
        Ok(Outcome::Partial) => std::process::ExitCode::from(Outcome::PARTIAL_EXIT_CODE),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
