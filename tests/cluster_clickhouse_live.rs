//! The cluster, live, on ClickHouse: three hosts in network namespaces of
//! this test's own (the demo's gateway -> api -> store chain of real node
//! services, started before any agent), one real `tracer agent` per host
//! with a skewed clock, TWO real `tracer aggregator`s on one ClickHouse
//! cluster of two clickhouse-server 18.16 shards behind `Distributed`
//! tables (started by the test: own directories, configs, ports). The
//! agents take both aggregators, in different orders (h1 and h3 send to A1
//! first, h2 to A2 first), so each request's client and server halves are
//! ingested through different aggregators. Everything is checked through
//! the real `tracer grep`, `tracer timeline` and `tracer tail` clients, on
//! both aggregators, with exact counts:
//!
//! - every log line found by grep exactly once through either aggregator,
//!   in causal order although h2's clock is 3 s ahead and h3's 2 s behind,
//!   and each request's trace whole across the three hosts;
//! - `tail -f` on each aggregator shows every line, also those ingested
//!   through the other, once;
//! - then, mid-traffic, A1 SIGKILLed, the second ClickHouse shard stopped
//!   (SIGKILL) for 8 s (its part of every insert fails meanwhile: the
//!   agents spool) and started, then the first server (batch records,
//!   every query) for 5 s: afterwards every line and every exchange is
//!   there exactly once, through either aggregator.
//!
//! Needs root (BPF, network namespaces). Names `trc-c1-*`, subnet
//! 10.79.1.0/24: it may run in parallel with `cluster_live`.

mod cluster_common;
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use cluster_common::{
    HOSTS, Net, PORT, assert_each_once, http_events, line_path, parse_events, path_of, request,
    request_line_regex, service_js, traffic,
};
use common::{NODE, Proc, TRACER, TempDir, require_root};
use tracer_user::{
    aggregator::clickhouse::test_server::{CLUSTER, PASSWORD, Server, USER},
    event::{Event, EventData, HttpSide},
};

const TOKEN: &str = "cluster-clickhouse-live-token-0123";
/// How long events may take to reach the store once written: generous, as
/// this bounds a failing test, not a passing one. After the outage each
/// agent sends its spool (8 batches at a time), and a ClickHouse ingest
/// round trip is 100-300 ms on a loaded 2-core box (docs/aggregator.md).
const SETTLE: Duration = Duration::from_secs(180);
/// Which aggregator each host's agent tries first (0: A1, 1: A2).
const FIRST: [(&str, usize); 3] = [("h1", 0), ("h2", 1), ("h3", 0)];

/// The whole cluster. Field order is drop order: agents and services go
/// before the aggregators, the aggregators before ClickHouse, and all of
/// them before the network they live in.
struct Cluster {
    agents: BTreeMap<&'static str, Proc>,
    /// Kept so that they live (and their stdout is read) until the end.
    _services: Vec<Proc>,
    aggregators: [Option<Proc>; 2],
    addrs: [SocketAddr; 2],
    /// The two shards; the first also holds the small tables and answers
    /// the aggregators' queries.
    servers: Vec<Server>,
    dir: TempDir,
    net: Net,
}

impl Cluster {
    fn start(skew_ms: &[(&'static str, i64)]) -> Self {
        let net = Net::new("trc-c1", "10.79.1");
        let dir = TempDir::new("cluster-clickhouse-live");
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        std::fs::write(dir.path().join("ch-password"), PASSWORD).unwrap();
        // Services first: they run before anything is attached, like in
        // production.
        let mut services = Vec::new();
        for (i, (name, host)) in HOSTS.iter().enumerate() {
            let next = HOSTS
                .get(i + 1)
                .map(|_| format!("http://{}:{PORT}", net.addr(i + 1)))
                .unwrap_or_default();
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &net.ns(host), NODE])
                .arg(service_js())
                .env("NAME", name)
                .env("PORT", PORT.to_string())
                .env("NEXT", next);
            let mut p = Proc::spawn(name, cmd, true);
            p.stdout
                .as_mut()
                .unwrap()
                .wait_for("listening", Duration::from_secs(15), |l| {
                    l.contains("listening on")
                });
            services.push(p);
        }
        let servers = Server::start_cluster("live", 2);
        let mut a1 = start_aggregator(dir.path(), &servers, "127.0.0.1:0");
        let addr1 = aggregator_address(&mut a1);
        let mut a2 = start_aggregator(dir.path(), &servers, "127.0.0.1:0");
        let addr2 = aggregator_address(&mut a2);
        let mut cluster = Self {
            agents: BTreeMap::new(),
            _services: services,
            aggregators: [Some(a1), Some(a2)],
            addrs: [addr1, addr2],
            servers,
            dir,
            net,
        };
        for (_, host) in HOSTS {
            let skew = skew_ms
                .iter()
                .find(|(h, _)| *h == host)
                .map_or(0, |(_, s)| *s);
            cluster.start_agent(host, skew);
        }
        cluster
    }

    fn start_agent(&mut self, host: &'static str, skew_ms: i64) {
        let first = FIRST.iter().find(|(h, _)| *h == host).unwrap().1;
        let urls = format!(
            "http://{},http://{}",
            self.addrs[first],
            self.addrs[1 - first]
        );
        let mut cmd = Command::new(TRACER);
        cmd.args(["agent", "--quiet", "--host", host, "--netns"])
            .arg(format!("/var/run/netns/{}", self.net.ns(host)))
            .args(["--aggregator", &urls])
            .arg("--token-file")
            .arg(self.dir.path().join("token"))
            .arg("--spool")
            .arg(self.dir.path().join(format!("spool-{host}")))
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg(format!("--debug-clock-offset-ms={skew_ms}"))
            .stdout(Stdio::null());
        let mut p = Proc::spawn(&format!("agent {host}"), cmd, false);
        p.stderr
            .wait_for("tracer: ready", Duration::from_secs(90), |l| {
                l == "tracer: ready"
            });
        self.agents.insert(host, p);
    }

    /// `tracer <args> --aggregator <aggregator `agg`> --token-file F`;
    /// panics unless it exits 0.
    fn cli(&self, agg: usize, args: &[&str]) -> String {
        let out = self.cli_output(agg, args);
        assert!(
            out.status.success(),
            "tracer {} (through A{}) failed ({}): {}",
            args.join(" "),
            agg + 1,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    fn cli_output(&self, agg: usize, args: &[&str]) -> Output {
        Command::new(TRACER)
            .args(args)
            .args(["--aggregator", &format!("http://{}", self.addrs[agg])])
            .arg("--token-file")
            .arg(self.dir.path().join("token"))
            .stdin(Stdio::null())
            .output()
            .expect("running a tracer client")
    }

    /// `grep -c` through aggregator `agg`; None while it answers an error
    /// (the store may be down).
    fn try_grep_count(&self, agg: usize, regex: &str, host: &str) -> Option<u64> {
        let out = self.cli_output(agg, &["grep", "-c", regex, "--host", host]);
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    fn grep_json(&self, agg: usize, regex: &str) -> Vec<Event> {
        parse_events(&self.cli(agg, &["grep", "--json", regex]))
    }

    fn timeline(&self, agg: usize, args: &[&str]) -> Vec<Event> {
        let mut all = vec!["timeline", "--json", "--since", "1h"];
        all.extend_from_slice(args);
        parse_events(&self.cli(agg, &all))
    }

    /// Waits until `grep -c` through aggregator `agg` of the tag's request
    /// lines reaches `want` on every host.
    fn wait_for_lines(&mut self, agg: usize, tag: &str, want: u64) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let got: BTreeMap<&str, Option<u64>> = HOSTS
                .iter()
                .map(|(_, h)| (*h, self.try_grep_count(agg, &request_line_regex(h, tag), h)))
                .collect();
            if got.values().all(|n| *n == Some(want)) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "log lines of {tag} per host through A{} after {SETTLE:?}: {got:?}, \
                     want {want} each\n{}",
                    agg + 1,
                    self.diagnosis()
                );
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// What the agents and aggregators said and what the spools hold.
    fn diagnosis(&mut self) -> String {
        let mut out = String::new();
        for (host, agent) in &mut self.agents {
            agent.stderr.poll();
            let spool = self.dir.path().join(format!("spool-{host}"));
            let files = std::fs::read_dir(&spool).map_or(0, |d| d.count());
            out += &format!(
                "agent {host} (spool: {files} files):\n{}\n",
                agent.stderr.tail(15)
            );
        }
        for (i, agg) in self.aggregators.iter_mut().enumerate() {
            if let Some(agg) = agg {
                agg.stderr.poll();
                out += &format!("aggregator A{}:\n{}\n", i + 1, agg.stderr.tail(15));
            }
        }
        out
    }

    fn kill_aggregator(&mut self, agg: usize) {
        let mut p = self.aggregators[agg].take().expect("the aggregator runs");
        p.signal(libc::SIGKILL);
        p.wait_exit(Duration::from_secs(10))
            .expect("the aggregator exits on SIGKILL");
    }

    /// Starts aggregator `agg` again on its address (the agents have it
    /// in their lists).
    fn restart_aggregator(&mut self, agg: usize) {
        assert!(self.aggregators[agg].is_none());
        let listen = self.addrs[agg].to_string();
        let mut p = start_aggregator(self.dir.path(), &self.servers, &listen);
        assert_eq!(aggregator_address(&mut p), self.addrs[agg]);
        self.aggregators[agg] = Some(p);
    }

    /// `tracer tail -f --json -n 0 --kind log` on aggregator `agg`: its
    /// lines as they come, and the process.
    fn tail(&self, agg: usize) -> (std::process::Child, mpsc::Receiver<String>) {
        let mut child = Command::new(TRACER)
            .args(["tail", "-f", "--json", "-n", "0", "--kind", "log"])
            .args(["--aggregator", &format!("http://{}", self.addrs[agg])])
            .arg("--token-file")
            .arg(self.dir.path().join("token"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tracer tail -f");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Connected once it says so on stderr.
        let stderr = child.stderr.take().unwrap();
        let (ctx, crx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("following") {
                    let _ = ctx.send(());
                }
            }
        });
        crx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("tail -f on A{} did not connect", agg + 1));
        (child, rx)
    }
}

fn start_aggregator(dir: &Path, servers: &[Server], listen: &str) -> Proc {
    let shards: Vec<String> = servers
        .iter()
        .map(|s| format!("http://127.0.0.1:{}", s.http_port))
        .collect();
    let mut cmd = Command::new(TRACER);
    cmd.args(["aggregator", "--listen", listen])
        .arg("--store")
        .arg(format!(
            "clickhouse://127.0.0.1:{}/tracer_live",
            servers[0].http_port
        ))
        .args(["--clickhouse-user", USER, "--clickhouse-password-file"])
        .arg(dir.join("ch-password"))
        .args(["--clickhouse-cluster", CLUSTER, "--clickhouse-shards"])
        .arg(shards.join(","))
        .arg("--token-file")
        .arg(dir.join("token"))
        .stdout(Stdio::null());
    Proc::spawn("aggregator", cmd, false)
}

fn aggregator_address(p: &mut Proc) -> SocketAddr {
    // The aggregator prints `tracer: aggregator listening on http://ADDR ...`.
    let line = p
        .stderr
        .wait_for("the aggregator's address", Duration::from_secs(60), |l| {
            l.contains("listening on http://")
        });
    let rest = line.split("http://").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// GET on an aggregator's API with the token.
fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    body.to_owned()
}

/// Per host, how often each request path of `tag` came in the log lines
/// `tail -f` printed (JSON lines) until `want` lines of the tag came or
/// the time ran out.
fn tail_lines(rx: &mpsc::Receiver<String>, tag: &str, want: usize) -> Vec<Event> {
    let needle = format!("/orders/{tag}-");
    let mut got = Vec::new();
    let deadline = Instant::now() + SETTLE;
    while got.len() < want && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let e: Event = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if matches!(&e.data, EventData::Log { text, .. } if text.contains(&needle)) {
            got.push(e);
        }
    }
    // Anything shown twice would come right behind; give it a moment.
    let quiet = Instant::now() + Duration::from_secs(3);
    while let Some(left) = quiet.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        let e: Event = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if matches!(&e.data, EventData::Log { text, .. } if text.contains(&needle)) {
            got.push(e);
        }
    }
    got
}

/// How many batches wait in a spool directory.
fn spooled_batches(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".zst"))
        })
        .count()
    })
}

/// The five exchanges of one request's trace, (host, side).
fn whole_chain() -> BTreeSet<(String, String)> {
    [
        ("h1", "Server"),
        ("h1", "Client"),
        ("h2", "Server"),
        ("h2", "Client"),
        ("h3", "Server"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

#[test]
fn two_aggregators_two_shards_skewed_clocks_then_kills_and_both_servers_restarted() {
    if !require_root("cluster_clickhouse_live") {
        return;
    }
    let mut cluster = Cluster::start(&[("h2", 3000), ("h3", -2000)]);

    // Phase 1: N requests, with a tail -f on each aggregator.
    const N: usize = 40;
    let tag = "chskew";
    let tails = [cluster.tail(0), cluster.tail(1)];
    for i in 0..N {
        assert_eq!(request(cluster.net.gateway(), &path_of(tag, i)), 200);
        thread::sleep(Duration::from_millis(20));
    }
    cluster.wait_for_lines(0, tag, N as u64);
    let paths: BTreeSet<String> = (0..N).map(|i| path_of(tag, i)).collect();

    // grep: exact counts through either aggregator.
    for agg in 0..2 {
        let all = cluster.cli(agg, &["grep", "-c", &format!("GET /orders/{tag}-")]);
        assert_eq!(
            all.trim(),
            (3 * N).to_string(),
            "grep -c through A{}",
            agg + 1
        );
        let upper = cluster.cli(agg, &["grep", "-c", "-i", &format!("get /ORDERS/{tag}-")]);
        assert_eq!(upper.trim(), (3 * N).to_string(), "grep -c -i");
        let none = cluster.cli(agg, &["grep", "-c", "no such line anywhere"]);
        assert_eq!(none.trim(), "0");
        let lines = cluster.grep_json(agg, &format!("GET /orders/{tag}-"));
        assert_eq!(lines.len(), 3 * N);
        for (_, host) in HOSTS {
            assert_each_once(&lines, host, &paths, &format!("grep through A{}", agg + 1));
        }
    }

    // tail -f on each aggregator showed every line once, the other's too.
    for (agg, (mut child, rx)) in tails.into_iter().enumerate() {
        let shown = tail_lines(&rx, tag, 3 * N);
        let _ = child.kill();
        let _ = child.wait();
        for (_, host) in HOSTS {
            assert_each_once(&shown, host, &paths, &format!("tail -f on A{}", agg + 1));
        }
        eprintln!(
            "cluster_clickhouse_live: tail -f on A{} showed all {} lines once, {} of them \
             ingested through the other aggregator",
            agg + 1,
            shown.len(),
            shown
                .iter()
                .filter(|e| FIRST.iter().any(|(h, a)| *h == e.host && *a != agg))
                .count()
        );
    }

    // Clock offsets recovered from connections whose halves came through
    // different aggregators.
    let offsets: serde_json::Value =
        serde_json::from_str(&http_get(cluster.addrs[1], "/v1/offsets")).unwrap();
    let offset_of = |host: &str| -> i64 {
        offsets["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["host"] == host)
            .unwrap_or_else(|| panic!("no offset for {host}: {offsets}"))["offset_ns"]
            .as_i64()
            .unwrap()
    };
    let ms = |ns: i64| ns as f64 / 1e6;
    let (o1, o2, o3) = (offset_of("h1"), offset_of("h2"), offset_of("h3"));
    eprintln!(
        "cluster_clickhouse_live: offsets h1 {:.3} ms, h2 {:.3} ms, h3 {:.3} ms",
        ms(o1),
        ms(o2),
        ms(o3)
    );
    assert!((ms(o2 - o1) + 3000.0).abs() < 50.0, "h2 runs 3 s ahead");
    assert!((ms(o3 - o1) - 2000.0).abs() < 50.0, "h3 runs 2 s behind");

    // Causal order on each aggregator's timeline: gateway, api, store.
    for agg in 0..2 {
        let logs = cluster.timeline(agg, &["--kind", "log"]);
        let mut order: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        for e in &logs {
            if let EventData::Log { text, .. } = &e.data
                && text.contains(&format!("/orders/{tag}-"))
            {
                order
                    .entry(line_path(text).to_owned())
                    .or_default()
                    .push((e.ts_ns, e.host.clone()));
            }
        }
        assert_eq!(order.len(), N);
        for (path, mut hops) in order {
            let in_timeline: Vec<_> = hops.iter().map(|(_, h)| h.as_str()).collect();
            assert_eq!(in_timeline, ["h1", "h2", "h3"], "A{}: {path}", agg + 1);
            hops.sort();
            let by_time: Vec<_> = hops.iter().map(|(_, h)| h.as_str()).collect();
            assert_eq!(
                by_time,
                ["h1", "h2", "h3"],
                "A{}: {path}: {hops:?}",
                agg + 1
            );
        }
    }

    // Every request's trace, whole across the hosts, asked of either
    // aggregator in turn.
    let https = cluster.timeline(0, &["--kind", "http"]);
    let mut traced = 0;
    for e in &https {
        let EventData::Http(h) = &e.data else {
            continue;
        };
        if e.host != "h1" || h.side != HttpSide::Server || !h.path.contains(tag) {
            continue;
        }
        let trace = cluster.timeline(traced % 2, &["--trace", &h.req_id]);
        let hops: BTreeSet<(String, String)> = trace
            .iter()
            .filter_map(|t| match &t.data {
                EventData::Http(x) => {
                    assert_eq!(x.path, h.path, "trace {} holds another request", h.req_id);
                    Some((t.host.clone(), format!("{:?}", x.side)))
                }
                _ => None,
            })
            .collect();
        assert_eq!(hops, whole_chain(), "trace of {} ({})", h.path, h.req_id);
        assert_eq!(http_events(&trace).len(), 5, "trace of {}", h.path);
        let hosts: Vec<&str> = trace
            .iter()
            .filter(|t| matches!(t.data, EventData::Log { .. }))
            .map(|t| t.host.as_str())
            .collect();
        assert_eq!(
            hosts,
            ["h1", "h2", "h3"],
            "log lines of the trace of {}",
            h.path
        );
        traced += 1;
    }
    assert_eq!(traced, N, "one gateway request per request sent");

    // Phase 2, mid-traffic: A1 SIGKILLed (h1 and h3 fail over to A2), then
    // shard 2 stopped (every insert fails: the agents spool) and started,
    // then server 1 the same.
    let tag = "chdown";
    // ~10 requests/s: every request is a batch per agent (the agents cut
    // a batch when no event came for 3 ms), and the spools fill with them
    // while the shard is down.
    let sender = traffic(cluster.net.gateway(), tag, Duration::from_millis(100), 2000);
    thread::sleep(Duration::from_secs(4));
    cluster.kill_aggregator(0);
    eprintln!(
        "cluster_clickhouse_live: A1 SIGKILLed after {} requests",
        sender.answered()
    );
    thread::sleep(Duration::from_secs(4));
    cluster.servers[1].kill();
    eprintln!(
        "cluster_clickhouse_live: shard 2 stopped after {} requests; down for 8 s",
        sender.answered()
    );
    thread::sleep(Duration::from_secs(8));
    cluster.servers[1].restart();
    let spooled: Vec<(&str, usize)> = HOSTS
        .iter()
        .map(|(_, h)| {
            (
                *h,
                spooled_batches(&cluster.dir.path().join(format!("spool-{h}"))),
            )
        })
        .collect();
    eprintln!("cluster_clickhouse_live: shard 2 back; batches in the agents' spools: {spooled:?}");
    thread::sleep(Duration::from_secs(2));
    // The first server too (it holds the batch records and answers every
    // query): ingest and queries fail until it is back.
    cluster.servers[0].kill();
    eprintln!(
        "cluster_clickhouse_live: server 1 stopped after {} requests; down for 5 s",
        sender.answered()
    );
    thread::sleep(Duration::from_secs(5));
    cluster.servers[0].restart();
    thread::sleep(Duration::from_secs(2));
    cluster.restart_aggregator(0);
    thread::sleep(Duration::from_secs(3));
    let sent = sender.finish();
    let stopped = Instant::now();
    eprintln!("cluster_clickhouse_live: {sent} requests sent across the failures");
    assert!(sent > 100, "traffic ran on: {sent} sent");

    let paths: BTreeSet<String> = (0..sent).map(|i| path_of(tag, i)).collect();
    for agg in [1, 0] {
        cluster.wait_for_lines(agg, tag, sent as u64);
        eprintln!(
            "cluster_clickhouse_live: all lines answered by A{} {:.1} s after the traffic \
             stopped",
            agg + 1,
            stopped.elapsed().as_secs_f64()
        );
        let lines = cluster.grep_json(agg, &format!("GET /orders/{tag}-"));
        for (_, host) in HOSTS {
            assert_each_once(
                &lines,
                host,
                &paths,
                &format!("after the failures, A{}", agg + 1),
            );
        }
        // The HTTP exchanges too: each side of each hop once.
        let https = cluster.timeline(agg, &["--kind", "http"]);
        for (host, sides) in [("h1", 2), ("h2", 2), ("h3", 1)] {
            let mut per: BTreeMap<(String, String), usize> = BTreeMap::new();
            for e in https.iter().filter(|e| e.host == host) {
                if let EventData::Http(h) = &e.data
                    && h.path.contains(tag)
                {
                    *per.entry((h.path.clone(), format!("{:?}", h.side)))
                        .or_insert(0) += 1;
                }
            }
            let twice: Vec<_> = per.iter().filter(|(_, n)| **n > 1).collect();
            assert!(
                twice.is_empty(),
                "A{}: {host}: stored twice: {twice:?}",
                agg + 1
            );
            assert_eq!(
                per.len(),
                sides * sent,
                "A{}: {host}: http exchanges",
                agg + 1
            );
        }
    }
    // And the traces of some requests sent while things failed are whole.
    let https = cluster.timeline(1, &["--kind", "http", "--host", "h1"]);
    let mut checked = 0;
    for e in https.iter().step_by(41) {
        let EventData::Http(h) = &e.data else {
            continue;
        };
        if h.side != HttpSide::Server || !h.path.contains(tag) {
            continue;
        }
        let trace = cluster.timeline(checked % 2, &["--trace", &h.req_id]);
        let hops: BTreeSet<(String, String)> = trace
            .iter()
            .filter_map(|t| match &t.data {
                EventData::Http(x) => Some((t.host.clone(), format!("{:?}", x.side))),
                _ => None,
            })
            .collect();
        assert_eq!(
            hops,
            whole_chain(),
            "trace of {} after the failures",
            h.path
        );
        checked += 1;
    }
    assert!(checked > 0);
}
