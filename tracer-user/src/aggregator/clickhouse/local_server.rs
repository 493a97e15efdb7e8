//! A clickhouse-server of our own (Debian's 18.16, `cargo xtask bootstrap`
//! installs it): its own directory, config, user and free loopback ports;
//! no system service. Used by the store's unit tests, the integration
//! tests of the aggregator binary on ClickHouse, and `tracer demo --store
//! clickhouse` (two of them as two shards, in the demo's directory). The
//! `start*` functions panic with the reason (for tests); `try_start*`
//! return it.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::Config;

pub const SERVER: &str = "/usr/sbin/clickhouse-server";
pub const USER: &str = "tracer";
pub const PASSWORD: &str = "tracer-test-password";
/// The cluster name in [`Server::start_cluster`]'s configs.
pub const CLUSTER: &str = "tracer_test";

/// A clickhouse-server of our own.
pub struct Server {
    /// None for a handle to a server another owner runs.
    child: Option<Child>,
    pub http_port: u16,
    pub dir: PathBuf,
    /// The password of [`USER`].
    pub password: String,
    /// Keep `dir` (its data) when dropped, and stop the server gently.
    keep: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        // It may be gone already (a test stopped it).
        let Some(c) = &mut self.child else {
            return;
        };
        if self.keep {
            // SIGTERM: the server finishes what it writes (15 s at most).
            // SAFETY: plain kill(2) on a child we started and not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
        if !self.keep {
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
        Self::try_start_with(
            &std::env::temp_dir(),
            tag,
            free_port(),
            free_port(),
            "",
            PASSWORD,
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `n` servers, each configured with cluster `tracer_test` whose shards
    /// are all of them (one replica each): the first answers queries over
    /// `Distributed` tables. Their `Config` is [`Self::cluster_config`].
    pub fn start_cluster(tag: &str, n: usize) -> Vec<Self> {
        Self::try_start_cluster(&std::env::temp_dir(), tag, n, PASSWORD, false)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start_cluster`] with the servers' directories in `base`
    /// and `password` for [`USER`]; what went wrong if one does not start
    /// (those started are stopped again). With `keep`, server `i` lives in
    /// `base/TAG-i`, started again on the data a previous run left there,
    /// and keeps it when dropped (the demo's store, like its SQLite file);
    /// without, in a new directory removed when dropped.
    pub fn try_start_cluster(
        base: &Path,
        tag: &str,
        n: usize,
        password: &str,
        keep: bool,
    ) -> Result<Vec<Self>, String> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let shards: String = ports
            .iter()
            .map(|(_, tcp)| {
                format!(
                    "<shard><replica><host>127.0.0.1</host><port>{tcp}</port>\
                     <user>{USER}</user><password>{password}</password></replica></shard>"
                )
            })
            .collect();
        let remote = format!("<remote_servers><{CLUSTER}>{shards}</{CLUSTER}></remote_servers>");
        ports
            .iter()
            .enumerate()
            .map(|(i, (http, tcp))| {
                Self::try_start_with(
                    base,
                    &format!("{tag}-{i}"),
                    *http,
                    *tcp,
                    &remote,
                    password,
                    keep,
                )
            })
            .collect()
    }

    /// The store on `servers` (from [`Self::start_cluster`]), through the
    /// first.
    pub fn cluster_config(servers: &[Self], database: &str) -> Config {
        Config {
            cluster: Some(CLUSTER.into()),
            shards: Self::shard_urls(servers),
            ..servers[0].config(database)
        }
    }

    /// The HTTP URLs of `servers`, for `--clickhouse-shards`.
    pub fn shard_urls(servers: &[Self]) -> Vec<String> {
        servers
            .iter()
            .map(|s| format!("http://127.0.0.1:{}", s.http_port))
            .collect()
    }

    fn try_start_with(
        base: &Path,
        tag: &str,
        http_port: u16,
        tcp_port: u16,
        extra: &str,
        password: &str,
        keep: bool,
    ) -> Result<Self, String> {
        remove_stale_dirs();
        if !Path::new(SERVER).exists() {
            return Err(format!(
                "{SERVER} is missing: install Debian's clickhouse-server package \
                 (`apt-get install clickhouse-server`; `cargo xtask bootstrap` does)"
            ));
        }
        let dir = if keep {
            base.join(tag)
        } else {
            base.join(format!(
                "tracer-clickhouse-{tag}-{}-{}",
                std::process::id(),
                super::now_ns()
            ))
        };
        let io = |what: &str, e: std::io::Error| format!("{what} in {}: {e}", dir.display());
        std::fs::create_dir_all(dir.join("data"))
            .map_err(|e| io("creating the server's directory", e))?;
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
        .map_err(|e| io("writing config.xml", e))?;
        std::fs::write(
            dir.join("users.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users>
        <{USER}>
            <password>{password}</password>
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
        .map_err(|e| io("writing users.xml", e))?;
        let server = Self {
            child: Some(spawn(&dir)?),
            http_port,
            dir,
            password: password.into(),
            keep,
        };
        server.try_wait_ready()?;
        Ok(server)
    }

    fn try_wait_ready(&self) -> Result<(), String> {
        // Generous: a loaded 2-core machine takes seconds to start it.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.http_port)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "clickhouse-server did not listen on port {} within 60 s; see {}",
                    self.http_port,
                    self.dir.join("error.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// A handle to a server another owner runs (nothing is stopped when
    /// it is dropped).
    pub fn handle(http_port: u16, dir: PathBuf) -> Self {
        Self {
            child: None,
            http_port,
            dir,
            password: PASSWORD.into(),
            keep: true,
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
        self.child = Some(spawn(&self.dir).unwrap_or_else(|e| panic!("{e}")));
        self.try_wait_ready().unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn config(&self, database: &str) -> Config {
        Config {
            user: Some(USER.into()),
            password: Some(self.password.clone()),
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

/// Adds `rows` rows to `store`'s `batches`, as 50 hosts' agents sending
/// small batches leave them (one every 50 ms from each fills 10M rows in
/// under three hours), for the tests and benchmarks of how reads cost as
/// that table grows: committed over the 30 days before yesterday (this
/// machine's clock), their events' raw times over the 30 days before the
/// day before `before_ns`. Their events are not stored: what these rows
/// change is how much of `batches` a read opens.
pub fn insert_history(
    store: &super::ClickhouseStore,
    rows: u64,
    before_ns: i64,
) -> super::Result<()> {
    const DAY_MS: i64 = 86_400_000;
    let rows = i64::try_from(rows.max(1)).unwrap_or(i64::MAX);
    let now_ms = super::now_ns() / 1_000_000;
    store.exec(&format!(
        "INSERT INTO {db}.batches SELECT concat('old', toString(number % 50)) AS host, \
         'run' AS run_id, toInt64(number) AS seq, \
         toInt64({c0} + number * {c_step}) AS commit_id, toUInt32(2000) AS events, \
         toInt64(0) AS received_ns, toInt64({t0} + number * {t_step}) AS min_raw_ts, \
         toInt64({t0} + number * {t_step} + 40000000) AS max_raw_ts \
         FROM system.numbers LIMIT {rows}",
        db = store.db,
        c0 = super::IdSource::floor_at(now_ms - 31 * DAY_MS),
        c_step = super::IdSource::floor_at(30 * DAY_MS) / rows,
        t0 = before_ns - 31 * DAY_MS * 1_000_000,
        t_step = 30 * DAY_MS * 1_000_000 / rows,
    ))?;
    // Their hosts' first commits, as the aggregators that stored them
    // would have recorded them.
    store.exec(&format!(
        "INSERT INTO {db}.hosts (host, first_commit) SELECT host, min(commit_id) \
         FROM {db}.batches WHERE startsWith(host, 'old') GROUP BY host",
        db = store.db
    ))
}

/// How many batches `store` holds and in how many groups they were
/// stored: the batches of one group share their `received_ns` (taken
/// once per group, `insert_group`), for the benchmarks' batches per
/// group.
pub fn groups(store: &super::ClickhouseStore) -> super::Result<(u64, u64)> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Groups {
        batches: u64,
        groups: u64,
    }
    let found: Vec<Groups> = store.fetch(&format!(
        "SELECT toUInt64(count()) AS batches, toUInt64(uniqExact(received_ns)) AS groups \
         FROM {}.batches",
        store.db
    ))?;
    Ok(found.first().map_or((0, 0), |g| (g.batches, g.groups)))
}

/// Adds `exchanges` older HTTP exchanges of `hosts` (in turn) to `store`
/// (each a row of `http_index` and of `http_keys`, and two of `events`:
/// its event and a log line of its request), their raw times over the 30
/// days before the day before `before_ns`, for the tests and benchmarks
/// of how a trace's reads cost as a store grows. Their batches are not
/// recorded (they never show): what they change is how much of each
/// table a read opens. `http_keys` is filled from `http_index` as an
/// upgrade fills it: how long that took is returned.
pub fn insert_exchange_history(
    store: &super::ClickhouseStore,
    exchanges: u64,
    before_ns: i64,
    hosts: &[&str],
) -> super::Result<std::time::Duration> {
    const DAY_NS: i64 = 86_400_000_000_000;
    let n = i64::try_from(exchanges.max(1)).unwrap_or(i64::MAX);
    let t0 = before_ns - 31 * DAY_NS;
    let step = 30 * DAY_NS / n;
    let db = &store.db;
    let names: Vec<String> = hosts.iter().map(|h| super::sql::lit(h)).collect();
    let host = |of: &str| format!("[{}][{of} % {} + 1]", names.join(", "), hosts.len().max(1));
    let req = "concat('old-', toString(number))";
    store.exec(&format!(
        "INSERT INTO {db}.http_index ({cols}) SELECT toInt64(number), toInt64(number), {host}, \
         if(number % 2 = 0, 'client', 'server'), \
         concat('10.9.0.1:', toString(number % 60000), '>10.9.0.2:80'), \
         toInt64({t0} + number * {step}), toInt64({t0} + number * {step} + 1000000), \
         {req}, '', {req} FROM system.numbers LIMIT {n}",
        cols = super::schema::EXCHANGE_COLUMN_NAMES,
        host = host("number"),
    ))?;
    // `http_keys` as an upgrade fills it, of these rows alone.
    let filling = std::time::Instant::now();
    for fill in super::schema::http_keys_from(db, "http_keys", "http_index") {
        store.exec(&format!("{fill} AND startsWith(req_id, 'old-')"))?;
    }
    let filled_in = filling.elapsed();
    let x = "intDiv(number, 2)";
    store.exec(&format!(
        "INSERT INTO {db}.events (id, commit_id, raw_ts, host, pid, tid, comm, kind, stream, \
         text, req_id, json) SELECT toInt64(number), toInt64({x}), \
         toInt64({t0} + {x} * {step} + number % 2), {}, \
         toUInt32(1), toUInt32(1), 'node', if(number % 2 = 0, 'http', 'log'), \
         if(number % 2 = 0, '', 'stdout'), if(number % 2 = 0, '', 'handling'), \
         concat('old-', toString({x})), '' FROM system.numbers LIMIT {}",
        host(x),
        2 * n
    ))?;
    Ok(filled_in)
}

/// Runs clickhouse-server on the config in `dir`.
fn spawn(dir: &Path) -> Result<Child, String> {
    let mut cmd = Command::new(SERVER);
    cmd.arg(format!("--config-file={}/config.xml", dir.display()))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only asks
    // the kernel to kill the server when the thread that started it ends,
    // so a test's server never outlives the test (and the demo's, started
    // from its main thread, never outlives the demo).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| format!("starting {SERVER}: {e}"))
}
