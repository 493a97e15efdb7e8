//! The central aggregator (the cluster part of tracer) and the clients that
//! query it: `tracer aggregator`, `tracer timeline`, `tracer grep`,
//! `tracer tail`. docs/aggregator.md describes the API and the storage.
//!
//! Agents POST batches of events to `/v1/ingest`; the aggregator stores them
//! through a [`store::Store`] (SQLite: [`sqlite::SqliteStore`]) and answers
//! queries over every host's events in one time order.

pub mod api;
pub mod batch_json;
pub mod body;
pub mod clickhouse;
pub mod client;
#[cfg(test)]
pub(crate) mod conformance;
pub mod migrate;
pub mod series;
pub mod sqlite;
pub mod stitch;
pub mod store;
pub mod timespec;
pub mod tls;
pub mod ui;

use std::{
    io::IsTerminal as _, net::SocketAddr, os::unix::fs::PermissionsExt as _, path::PathBuf,
    sync::Arc,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use tokio::sync::watch;

use self::{
    api::{AppState, Limits, router},
    sqlite::SqliteStore,
    store::Store,
};

/// The cluster subcommands (flattened into `tracer`'s own).
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    Aggregator(AggregatorArgs),
    Timeline(client::TimelineArgs),
    Grep(client::GrepArgs),
    Tail(client::TailArgs),
    Migrate(migrate::MigrateArgs),
}

pub async fn run(cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Aggregator(args) => serve(args).await,
        ClusterCommand::Timeline(args) => client::timeline(args).await,
        ClusterCommand::Grep(args) => client::grep(args).await,
        ClusterCommand::Tail(args) => client::tail(args).await,
        ClusterCommand::Migrate(args) => migrate::run(args).await,
    }
}

/// Run the central aggregator: receive events from agents, store them,
/// answer timeline/grep/tail queries.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  head -c 32 /dev/urandom | base64 > /etc/tracer/token && chmod 600 /etc/tracer/token
  tracer aggregator --data /var/lib/tracer --token-file /etc/tracer/token
  tracer timeline --since 5m --token-file /etc/tracer/token

  # logpoints/eval on agents with --allow-control: admins as NAME:TOKEN lines
  echo \"alice:$(head -c 32 /dev/urandom | base64)\" > /etc/tracer/admins && chmod 600 /etc/tracer/admins
  tracer aggregator --listen 0.0.0.0:7878 --tls-cert cert.pem --tls-key key.pem \\
      --data /var/lib/tracer --token-file /etc/tracer/token --admin-token-file /etc/tracer/admins

  tracer aggregator --store clickhouse://127.0.0.1:8123/tracer \\
      --clickhouse-user tracer --clickhouse-password-file /etc/tracer/ch-password \\
      --token-file /etc/tracer/token

Every request needs `Authorization: Bearer <token>`; the control API
(/v1/control/commands, /v1/control/hosts) an admin token instead
(--admin-token-file). Batches are acknowledged
only once committed to disk (SQLite) or inserted (ClickHouse). The API is plain
HTTP unless --tls-cert/--tls-key are given (--tls-client-ca: mutual TLS).
See docs/aggregator.md.")]
pub struct AggregatorArgs {
    /// Address to listen on (port 0 picks a free port; the address is
    /// printed on stderr).
    #[arg(long, default_value = "127.0.0.1:7878", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Directory for the event store (created if missing). Required for
    /// the default store, SQLite.
    #[arg(long, value_name = "DIR", required_unless_present = "store")]
    pub data: Option<PathBuf>,

    /// Where events are stored: a ClickHouse database,
    /// `clickhouse://HOST:8123/DB` (`clickhouses://` for HTTPS), shared by
    /// any number of aggregators (docs/aggregator.md, "Scaling out").
    /// Without it, SQLite in --data.
    #[arg(long, value_name = "URL", conflicts_with = "data")]
    pub store: Option<String>,

    #[command(flatten)]
    pub clickhouse: ClickhouseArgs,

    /// File holding the API token agents and clients must present.
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,

    /// Enables the control API (logpoints and eval on agents started with
    /// --allow-control, docs/logpoints.md): a file of admin tokens, one per
    /// line as `NAME:TOKEN` (NAME is who audit events name) or a bare
    /// `TOKEN` (named by its fingerprint). Must differ from the ingest
    /// token. Off without it.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Accept only clients presenting a certificate this CA (PEM) signed
    /// (mutual TLS; agents give theirs with --client-cert/--client-key).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Largest request body accepted, as sent (compressed).
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    pub max_body: u64,

    /// Largest ingest body accepted once zstd-decompressed.
    #[arg(long, default_value_t = 128 << 20, value_name = "BYTES")]
    pub max_decompressed: u64,
}

/// Reads a token file: its content without surrounding whitespace.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    if token.contains(|c: char| c.is_whitespace() || c.is_control()) {
        bail!(
            "the token file {} holds more than one word; put the token alone in it",
            path.display()
        );
    }
    Ok(token.to_string())
}

async fn serve(args: AggregatorArgs) -> Result<()> {
    let token = read_token(&args.token_file)?;
    if token.len() < 16 {
        eprintln!(
            "tracer: warning: the token is shorter than 16 characters; use a long random one"
        );
    }
    if let Ok(meta) = std::fs::metadata(&args.token_file)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "tracer: warning: {} is readable by other users (chmod 600 it)",
            args.token_file.display()
        );
    }
    if args.max_body == 0 || args.max_decompressed == 0 {
        bail!("--max-body and --max-decompressed must be above 0");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(
            cert,
            key,
            args.tls_client_ca.as_deref(),
        )?),
        _ => None,
    };
    let admin = match &args.admin_token_file {
        Some(path) => {
            let admins = crate::control::read_admin_tokens(path)?;
            if admins.iter().any(|a| a.token == token) {
                bail!(
                    "{}: an admin token equals the ingest token; the admin token must be a \
                     different secret (every agent holds the ingest token)",
                    path.display()
                );
            }
            if !args.listen.ip().is_loopback() && tls.is_none() {
                bail!(
                    "--admin-token-file on {} without TLS: control commands cross the network \
                     only over TLS; add --tls-cert/--tls-key (or listen on 127.0.0.1)",
                    args.listen
                );
            }
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                eprintln!(
                    "tracer: warning: {} is readable by other users (chmod 600 it)",
                    path.display()
                );
            }
            Some(admins)
        }
        None => None,
    };
    let (store, described) = open_store(&args).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState::new(
        store,
        token.into_bytes(),
        admin.clone(),
        Limits {
            max_body: args.max_body,
            max_decompressed: args.max_decompressed,
        },
        stop_rx,
    );
    if !addr.ip().is_loopback() && tls.is_none() {
        eprintln!(
            "tracer: warning: listening on {addr}, beyond this machine, over plain HTTP: \
             the token and events cross the network unencrypted (use --tls-cert/--tls-key)"
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mtls = if args.tls_client_ca.is_some() {
        ", client certificates required"
    } else {
        ""
    };
    eprintln!("tracer: aggregator listening on {scheme}://{addr} (store: {described}{mtls})");
    match &admin {
        Some(a) => eprintln!(
            "tracer: control API on ({} admin token(s)): agents with --allow-control take \
             logpoint/eval commands",
            a.len()
        ),
        None => {
            eprintln!("tracer: control API off (no --admin-token-file): agents take no commands")
        }
    }
    if std::io::stderr().is_terminal() {
        eprintln!("tracer: Ctrl-C to stop");
    }
    let shutdown = async move {
        crate::aggregator::shutdown_signal().await;
        eprintln!("tracer: stopping");
        // Ends live tails; in-flight ingests finish (and commit) first.
        let _ = stop_tx.send(true);
    };
    match tls {
        Some(config) => {
            let listener =
                tls::TlsListener::new(listener, config).context("setting up the TLS listener")?;
            axum::serve(listener, router(state))
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, router(state))
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
    .context("serving the API")
}

/// How to log into a ClickHouse store and spread it over shards: the
/// flags of `tracer aggregator --store` and `tracer migrate --to`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClickhouseArgs {
    /// ClickHouse user (default: ClickHouse's `default`).
    #[arg(long, value_name = "NAME")]
    pub clickhouse_user: Option<String>,

    /// File holding the ClickHouse user's password.
    #[arg(long, value_name = "FILE")]
    pub clickhouse_password_file: Option<PathBuf>,

    /// Spread events over this cluster's shards (a `remote_servers` entry
    /// of the store's server) through `Distributed` tables.
    #[arg(long, value_name = "NAME", requires = "clickhouse_shards")]
    pub clickhouse_cluster: Option<String>,

    /// The cluster's shards, as HTTP URLs (comma-separated), where the
    /// local tables are created.
    #[arg(
        long,
        value_name = "URLS",
        value_delimiter = ',',
        requires = "clickhouse_cluster"
    )]
    pub clickhouse_shards: Vec<String>,
}

impl ClickhouseArgs {
    fn any(&self) -> bool {
        self.clickhouse_user.is_some()
            || self.clickhouse_password_file.is_some()
            || self.clickhouse_cluster.is_some()
    }

    /// The ClickHouse store `url` names, with these login and shards.
    pub fn config(&self, url: &str) -> Result<clickhouse::Config> {
        let mut config = clickhouse::Config::parse(url).map_err(anyhow::Error::msg)?;
        config.user = self.clickhouse_user.clone();
        config.cluster = self.clickhouse_cluster.clone();
        config.shards = self.clickhouse_shards.clone();
        if let Some(f) = &self.clickhouse_password_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the ClickHouse password file {}", f.display()))?;
            config.password = Some(text.trim_end_matches(['\n', '\r']).to_string());
        }
        Ok(config)
    }
}

/// Opens the store `args` name, off the async workers (opening may
/// upgrade a schema or wait for a server): the store and how to name it.
async fn open_store(args: &AggregatorArgs) -> Result<(Arc<dyn Store>, String)> {
    if let Some(url) = &args.store {
        let config = args.clickhouse.config(url)?;
        let described = format!("ClickHouse {}/{}", config.url, config.database);
        let store = tokio::task::spawn_blocking(move || clickhouse::ClickhouseStore::open(&config))
            .await
            .context("opening the store")?
            .with_context(|| format!("opening the store {described}"))?;
        return Ok((Arc::new(store), described));
    }
    if args.clickhouse.any() {
        bail!(
            "the --clickhouse-* options are for a ClickHouse store: give --store \
             clickhouse://HOST:8123/DB, or leave them out for SQLite in --data"
        );
    }
    let Some(data) = args.data.clone() else {
        bail!("give --data DIR (SQLite) or --store clickhouse://HOST:8123/DB");
    };
    let dir = data.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&dir))
        .await
        .context("opening the store")?
        .with_context(|| format!("opening the store in {}", data.display()))?;
    let described = store.path().display().to_string();
    Ok((Arc::new(store), described))
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            eprintln!("tracer: warning: cannot watch SIGTERM ({e}); stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
