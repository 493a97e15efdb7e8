//! `tracer demo`: a 3-host cluster on this one machine, traced live.
//!
//! Each "host" is a network namespace joined to a bridge by a veth pair and
//! runs one node service of a gateway -> api -> store chain. One agent per
//! host (scoped with `--netns`) forwards to one aggregator (SQLite), or,
//! with `--store clickhouse`, to two aggregators on two local
//! clickhouse-server shards the demo starts in its directory (h1 and h3
//! send to the first, h2 to the second, each failing over to the other);
//! a traffic generator calls the gateway. Everything it creates is named `trc-demo*`
//! and removed on exit — also what a crashed earlier run left behind, at
//! start. Traffic stays inside the namespaces and the bridge it creates.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};

use crate::aggregator::clickhouse::local_server::{self, Server};

const BRIDGE: &str = "trc-demo-br";
const SUBNET: &str = "10.77.0";
const SERVICE_JS: &str = include_str!("../assets/demo-service.js");
const TRAFFIC_JS: &str = include_str!("../assets/demo-traffic.js");
const HOSTS: [(&str, &str); 3] = [("gateway", "h1"), ("api", "h2"), ("store", "h3")];
const PORT: u16 = 8080;

/// Run a 3-host demo cluster (network namespaces) with agents, an
/// aggregator and traffic, until Ctrl-C.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the aggregator listens (its query API is what grep/tail use).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: String,
    /// Aggregator data, token and agent spools (default: a temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Milliseconds between requests of the traffic generator.
    #[arg(long, default_value_t = 200)]
    pub interval_ms: u64,
    /// Where events are stored: `sqlite` (one aggregator, a file in
    /// --dir) or `clickhouse` (two aggregators on a ClickHouse cluster of
    /// two shards: clickhouse-server processes the demo starts in --dir,
    /// on free loopback ports; needs Debian's clickhouse-server package).
    /// The second aggregator listens on a free port, printed at start.
    #[arg(long, value_enum, default_value_t = DemoStore::Sqlite)]
    pub store: DemoStore,
}

/// The demo's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoStore {
    Sqlite,
    Clickhouse,
}

/// The ClickHouse database the demo's aggregators use.
const DATABASE: &str = "tracer";

/// Processes and network objects to remove when the demo ends.
struct Cluster {
    children: Vec<(String, Child)>,
    /// ClickHouse shards (`--store clickhouse`), stopped after everything
    /// else (fields drop after `drop` ran).
    servers: Vec<Server>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            // SAFETY: plain kill(2) on a child we started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        for (_, child) in self.children.iter_mut().rev() {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        teardown_network();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .context("running `ip` (package iproute2)")?;
    if !status.success() {
        bail!("`ip {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn netns_name(host: &str) -> String {
    format!("trc-demo-{host}")
}

/// Remove what this demo (or a crashed earlier one) created.
fn teardown_network() {
    for (_, host) in HOSTS {
        let _ = Command::new("ip")
            .args(["netns", "del", &netns_name(host)])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &format!("trc-demo-{host}v")])
            .stderr(Stdio::null())
            .status();
    }
    let _ = Command::new("ip")
        .args(["link", "del", BRIDGE])
        .stderr(Stdio::null())
        .status();
}

fn setup_network() -> Result<()> {
    teardown_network();
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{SUBNET}.1/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    for (i, (_, host)) in HOSTS.iter().enumerate() {
        let ns = netns_name(host);
        let outer = format!("trc-demo-{host}v");
        let addr = format!("{SUBNET}.{}/24", 11 + i);
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &outer, "master", BRIDGE, "up"])?;
        ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

fn spawn(cluster: &mut Cluster, name: &str, cmd: &mut Command) -> Result<u32> {
    let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let pid = child.id();
    cluster.children.push((name.to_string(), child));
    Ok(pid)
}

fn host_addr(i: usize) -> String {
    format!("{SUBNET}.{}", 11 + i)
}

/// Writes a new random secret to `path` (mode 0600) unless it exists.
fn write_secret(path: &Path) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if path.exists() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(uuid::Uuid::new_v4().to_string().as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// Starts `tracer aggregator --listen LISTEN STORE_ARGS` and waits for the
/// address it listens on (it prints it). Its warnings and errors are
/// shown with `name` in front.
fn start_aggregator(
    cluster: &mut Cluster,
    exe: &Path,
    name: &str,
    listen: &str,
    token_file: &Path,
    store_args: &[String],
) -> Result<SocketAddr> {
    use std::io::BufRead as _;
    spawn(
        cluster,
        name,
        Command::new(exe)
            .args(["aggregator", "--listen", listen, "--token-file"])
            .arg(token_file)
            .args(store_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    let stderr = cluster
        .children
        .last_mut()
        .and_then(|(_, c)| c.stderr.take())
        .context("aggregator stderr")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let label = name.to_string();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("listening on http://") {
                let _ = tx.send(line);
            } else if line.contains("error") || line.contains("warning") {
                eprintln!("[demo] {label}: {line}");
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).with_context(|| {
        format!("the {name} did not start listening within 60 s (see its error above)")
    })?;
    line.split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in {line:?}"))
}

/// Two clickhouse-server shards in `dir/clickhouse/shard-{0,1}` (password
/// in `dir/clickhouse-password`), and the aggregator flags for them.
fn start_clickhouse(cluster: &mut Cluster, dir: &Path) -> Result<Vec<String>> {
    let password_file = dir.join("clickhouse-password");
    write_secret(&password_file)?;
    let password = std::fs::read_to_string(&password_file)
        .with_context(|| format!("reading {}", password_file.display()))?;
    let base = dir.join("clickhouse");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    eprintln!(
        "[demo] starting two clickhouse-server shards in {}",
        base.display()
    );
    // Kept in --dir across runs, like the SQLite store.
    cluster.servers = Server::try_start_cluster(&base, "shard", 2, password.trim(), true)
        .map_err(anyhow::Error::msg)
        .context("starting ClickHouse for --store clickhouse")?;
    let shards = Server::shard_urls(&cluster.servers);
    Ok(vec![
        "--store".into(),
        format!(
            "clickhouse://127.0.0.1:{}/{DATABASE}",
            cluster.servers[0].http_port
        ),
        "--clickhouse-user".into(),
        local_server::USER.into(),
        "--clickhouse-password-file".into(),
        password_file.display().to_string(),
        "--clickhouse-cluster".into(),
        local_server::CLUSTER.into(),
        "--clickhouse-shards".into(),
        shards.join(","),
    ])
}

pub async fn run(args: DemoArgs) -> Result<()> {
    crate::capture::preflight::check_privileges()?;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join("tracer-demo"),
    };
    if args.store == DemoStore::Clickhouse && !Path::new(local_server::SERVER).exists() {
        bail!(
            "--store clickhouse needs {} (Debian's clickhouse-server package: \
             `apt-get install clickhouse-server`; the demo starts its own servers, \
             no system service)",
            local_server::SERVER
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The ingest token is a secret: only root reads it.
    let token_file = dir.join("token");
    write_secret(&token_file)?;
    // The control API's admin token: another secret than the ingest token
    // (docs/logpoints.md, "Across the cluster").
    let admin_file = dir.join("admin-token");
    write_secret(&admin_file)?;
    let service_js = dir.join("demo-service.js");
    std::fs::write(&service_js, SERVICE_JS)?;
    let traffic_js = dir.join("demo-traffic.js");
    std::fs::write(&traffic_js, TRAFFIC_JS)?;
    let exe = std::env::current_exe().context("finding the tracer binary")?;

    eprintln!(
        "[demo] network: bridge {BRIDGE} {SUBNET}.1/24, hosts h1..h3 in namespaces trc-demo-h1..h3"
    );
    setup_network()?;
    let mut cluster = Cluster {
        children: Vec::new(),
        servers: Vec::new(),
    };
    // Control commands travel only over TLS or loopback; the demo serves
    // plain HTTP, so control is on only when it listens on loopback.
    let control = args
        .listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    if !control {
        eprintln!(
            "[demo] --listen {} is not loopback: logpoints through the aggregator are off \
             (control needs TLS beyond this machine)",
            args.listen
        );
    }
    let mut store_args = match args.store {
        DemoStore::Sqlite => vec!["--data".into(), dir.join("data").display().to_string()],
        DemoStore::Clickhouse => start_clickhouse(&mut cluster, &dir)?,
    };
    if control {
        store_args.push("--admin-token-file".into());
        store_args.push(admin_file.display().to_string());
    }
    let first = start_aggregator(
        &mut cluster,
        &exe,
        "aggregator",
        &args.listen,
        &token_file,
        &store_args,
    )?;
    // On ClickHouse a second aggregator on the same store: h2's agent
    // sends to it first, h1's and h3's to the first one.
    let urls: Vec<String> = match args.store {
        DemoStore::Sqlite => vec![format!("http://{first}"); HOSTS.len()],
        DemoStore::Clickhouse => {
            let second = start_aggregator(
                &mut cluster,
                &exe,
                "second aggregator",
                "127.0.0.1:0",
                &token_file,
                &store_args,
            )?;
            eprintln!(
                "[demo] store: ClickHouse, 2 shards (HTTP ports {}); aggregators http://{first} \
                 and http://{second}",
                cluster
                    .servers
                    .iter()
                    .map(|s| s.http_port.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let (a, b) = (format!("http://{first}"), format!("http://{second}"));
            vec![format!("{a},{b}"), format!("{b},{a}"), format!("{a},{b}")]
        }
    };
    // Agents poll every aggregator of their list for commands, so the
    // demo's commands may go through the first.
    let control_url = format!("http://{first}");
    // Agents first, so the services are traced from their first request.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<String>();
    for (i, (_, host)) in HOSTS.iter().enumerate() {
        let ns_path = format!("/var/run/netns/{}", netns_name(host));
        let mut agent = Command::new(&exe);
        if control {
            // The demo's agents take logpoint/eval commands from the
            // aggregator (off by default).
            agent.arg("agent").arg("--allow-control");
        } else {
            agent.arg("agent");
        }
        spawn(
            &mut cluster,
            &format!("agent {host}"),
            agent
                .args(["--quiet", "--host", host, "--netns", &ns_path])
                .args(["--aggregator", &urls[i], "--token-file"])
                .arg(&token_file)
                .arg("--spool")
                .arg(dir.join(format!("spool-{host}")))
                .args(["--metrics-listen", &format!("127.0.0.1:{}", 9464 + i)])
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )?;
        let stderr = cluster
            .children
            .last_mut()
            .and_then(|(_, c)| c.stderr.take())
            .context("agent stderr")?;
        watch_ready(host, stderr, ready_tx.clone());
    }
    wait_for_agents(&ready_rx, HOSTS.len())?;
    for (i, (name, host)) in HOSTS.iter().enumerate() {
        let next = HOSTS
            .get(i + 1)
            .map(|_| format!("http://{}:{PORT}", host_addr(i + 1)))
            .unwrap_or_default();
        spawn(
            &mut cluster,
            name,
            Command::new("ip")
                .args(["netns", "exec", &netns_name(host), "node"])
                .arg(&service_js)
                .env("NAME", name)
                .env("PORT", PORT.to_string())
                .env("NEXT", next)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
    }
    std::thread::sleep(Duration::from_millis(500));
    spawn(
        &mut cluster,
        "traffic",
        Command::new("node")
            .arg(&traffic_js)
            .env("TARGET", format!("http://{}:{PORT}", host_addr(0)))
            .env("INTERVAL_MS", args.interval_ms.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let api_pid = cluster
        .children
        .iter()
        .find(|(name, _)| name == "api")
        .map(|(_, c)| c.id());
    print_help(
        &exe,
        &first.to_string(),
        &token_file,
        control.then_some((admin_file.as_path(), control_url.as_str())),
        api_pid,
    );
    if let Some(s) = cluster.servers.first() {
        eprintln!(
            "[demo] ClickHouse itself (the events of both shards):\n\
             \x20   curl -s -H 'X-ClickHouse-User: {user}' -H \"X-ClickHouse-Key: $(cat {pw})\" \
             http://127.0.0.1:{port}/ --data-binary \
             'SELECT host, count() FROM {DATABASE}.events GROUP BY host ORDER BY host'\n",
            user = local_server::USER,
            pw = dir.join("clickhouse-password").display(),
            port = s.http_port,
        );
    }

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    eprintln!("[demo] stopping: services, agents, aggregators, the namespaces, ClickHouse");
    drop(cluster);
    eprintln!("[demo] cleaned up");
    Ok(())
}

/// Report on `tx` when an agent prints `tracer: ready`; show its errors.
fn watch_ready(host: &str, stderr: std::process::ChildStderr, tx: std::sync::mpsc::Sender<String>) {
    use std::io::BufRead as _;
    let host = host.to_string();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line == "tracer: ready" {
                let _ = tx.send(host.clone());
            } else if line.starts_with("tracer: ready;") {
                // Ready, with some probe families left out: say which.
                eprintln!("[demo] agent {host}: {line}");
                let _ = tx.send(host.clone());
            } else if line.starts_with("error:") {
                eprintln!("[demo] agent {host}: {line}");
            }
        }
    });
}

/// Wait until every agent has its probes attached (bounded).
fn wait_for_agents(ready: &std::sync::mpsc::Receiver<String>, n: usize) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for _ in 0..n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        ready
            .recv_timeout(left)
            .context("an agent did not get ready within 60 s (see its error above)")?;
    }
    eprintln!("[demo] {n} agents ready");
    Ok(())
}

fn print_help(
    exe: &Path,
    listen: &str,
    token_file: &Path,
    // The admin token file, and the aggregator the api host takes
    // commands from (control on).
    control: Option<(&Path, &str)>,
    api_pid: Option<u32>,
) {
    let t = token_file.display();
    let x = exe.display();
    // The token (a uuid, URL-safe) rides in the fragment: never sent to the server.
    let token = std::fs::read_to_string(token_file).unwrap_or_default();
    let token = token.trim();
    eprintln!(
        "\n[demo] running: traffic -> gateway (h1, {gw}) -> api (h2) -> store (h3); every hop logs a line.\n\
         [demo] web UI: http://{listen}/#token={token}\n\
         [demo] try, in another terminal:\n\
         \x20   {x} tail -f --aggregator http://{listen} --token-file {t}\n\
         \x20   {x} grep 'store #' --since 5m --aggregator http://{listen} --token-file {t}\n\
         \x20   {x} timeline --since 1m --kind http --aggregator http://{listen} --token-file {t}\n\
         \x20   curl -s 127.0.0.1:9464/metrics    # host h1's agent (h2: 9465, h3: 9466)\n\
         [demo] Ctrl-C stops everything and removes the namespaces.\n",
        gw = host_addr(0),
    );
    // docs/logpoints.md: a log line added to the running api service (line
    // 14 of demo-service.js is its per-request log line), through the
    // aggregator: the agents run with --allow-control.
    if let Some((a, c)) = control.map(|(a, c)| (a.display(), c)) {
        eprintln!(
            "[demo] add a log line to the running api service (h2) through the aggregator, and watch \
         its lines arrive, each tied to its request:\n\
         \x20   {x} logpoint add --aggregator {c} --admin-token-file {a} --host h2 --match demo-service demo-service.js:14 'api saw ${{req.url}} as request #${{n}}' --ttl 10m\n\
         \x20   {x} tail -f --kind logpoint --aggregator http://{listen} --token-file {t}\n\
         \x20   {x} timeline --since 5m --kind audit --aggregator http://{listen} --token-file {t}   # who did what\n\
         \x20   {x} logpoint rm --all --aggregator {c} --admin-token-file {a} --host h2\n"
        );
    }
    if let Some(pid) = api_pid {
        eprintln!(
            "[demo] or on this machine directly (root), by PID:\n\
             \x20   sudo {x} logpoint add --pid {pid} demo-service.js:14 'api saw ${{req.url}} as request #${{n}}' --ttl 10m\n\
             \x20   {x} tail -f --kind logpoint --aggregator http://{listen} --token-file {t}\n\
             \x20   sudo {x} logpoint rm --pid {pid} --all\n"
        );
    }
}
