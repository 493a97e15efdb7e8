//! A clickhouse-server of a test's own (Debian's 18.16, `cargo xtask
//! bootstrap` installs it): its own temporary directory, config, user and
//! free loopback ports; no system service. Used by the store's unit tests
//! by the integration tests of the aggregator binary on ClickHouse, and by
//! the benchmarks (`cargo xtask bench clickhouse`, through
//! `examples/aggregator_load.rs clickhouse-server`).

use std::{
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::Config;

const SERVER: &str = "/usr/sbin/clickhouse-server";
pub const USER: &str = "tracer";
pub const PASSWORD: &str = "tracer-test-password";
/// The cluster name in [`Server::start_cluster`]'s configs.
pub const CLUSTER: &str = "tracer_test";

/// A clickhouse-server of the test's own.
pub struct Server {
    /// None for a handle to a server another owner runs.
    child: Option<Child>,
    pub http_port: u16,
    pub dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        // It may be gone already (a test stopped it).
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Server {
    /// Starts a server in a new temporary directory and waits until it
    /// answers.
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, free_port(), free_port(), "")
    }

    /// `n` servers, each configured with cluster `tracer_test` whose shards
    /// are all of them (one replica each): the first answers queries over
    /// `Distributed` tables. Their `Config` is [`Self::cluster_config`].
    pub fn start_cluster(tag: &str, n: usize) -> Vec<Self> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let shards: String = ports
            .iter()
            .map(|(_, tcp)| {
                format!(
                    "<shard><replica><host>127.0.0.1</host><port>{tcp}</port>\
                     <user>{USER}</user><password>{PASSWORD}</password></replica></shard>"
                )
            })
            .collect();
        let remote = format!("<remote_servers><{CLUSTER}>{shards}</{CLUSTER}></remote_servers>");
        ports
            .iter()
            .enumerate()
            .map(|(i, (http, tcp))| Self::start_with(&format!("{tag}-{i}"), *http, *tcp, &remote))
            .collect()
    }

    /// The store on `servers` (from [`Self::start_cluster`]), through the
    /// first.
    pub fn cluster_config(servers: &[Self], database: &str) -> Config {
        Config {
            cluster: Some(CLUSTER.into()),
            shards: servers
                .iter()
                .map(|s| format!("http://127.0.0.1:{}", s.http_port))
                .collect(),
            ..servers[0].config(database)
        }
    }

    fn start_with(tag: &str, http_port: u16, tcp_port: u16, extra: &str) -> Self {
        remove_stale_dirs();
        assert!(
            Path::new(SERVER).exists(),
            "{SERVER} is missing: run `cargo xtask bootstrap` (it installs Debian's \
             clickhouse-server package)"
        );
        let dir = std::env::temp_dir().join(format!(
            "tracer-clickhouse-{tag}-{}-{}",
            std::process::id(),
            super::now_ns()
        ));
        std::fs::create_dir_all(dir.join("data")).expect("creating the server's directory");
        let d = dir.display();
        std::fs::write(
            dir.join("config.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog></logger>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>134217728</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
    {extra}
</yandex>
"#
            ),
        )
        .expect("writing config.xml");
        std::fs::write(
            dir.join("users.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users>
        <{USER}>
            <password>{PASSWORD}</password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </{USER}>
    </users>
    <quotas><default></default></quotas>
</yandex>
"#
            ),
        )
        .expect("writing users.xml");
        let server = Self {
            child: Some(spawn(&dir)),
            http_port,
            dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.http_port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "clickhouse-server did not listen within 30 s; see {}",
                self.dir.join("error.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A handle to a server another owner runs (nothing is stopped when
    /// it is dropped).
    pub fn handle(http_port: u16, dir: PathBuf) -> Self {
        Self {
            child: None,
            http_port,
            dir,
        }
    }

    /// The server process's id, when this handle runs it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same directory and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(&self.dir));
        self.wait_ready();
    }

    pub fn config(&self, database: &str) -> Config {
        Config {
            user: Some(USER.into()),
            password: Some(PASSWORD.into()),
            ..Config::parse(&format!(
                "clickhouse://127.0.0.1:{}/{database}",
                self.http_port
            ))
            .expect("a valid store URL")
        }
    }
}

/// Removes the directories of servers whose test process is gone (a
/// server shared by a process's tests is never dropped, so its directory
/// is left behind; the pid is in the name).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("tracer-clickhouse-") else {
            continue;
        };
        let pid = rest
            .split('-')
            .rev()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Runs clickhouse-server on the config in `dir`.
fn spawn(dir: &Path) -> Child {
    let mut cmd = Command::new(SERVER);
    cmd.arg(format!("--config-file={}/config.xml", dir.display()))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only asks
    // the kernel to kill the server when the thread that started it ends,
    // so a test's server never outlives the test.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting {SERVER}: {e}"))
}
