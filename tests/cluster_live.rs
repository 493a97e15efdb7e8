//! The cluster, live: three hosts in network namespaces of this test's own
//! (a gateway -> api -> store chain of real node services, the demo's), one
//! real `tracer agent` per host scoped with `--netns`, one real
//! `tracer aggregator`, and requests sent by the test over the bridge. Every
//! check is on exact counts, through the real `tracer grep`, `tracer
//! timeline` and `tracer tail` clients:
//!
//! - every log line of every host is found by grep, exactly once, and each
//!   request's lines come out in causal order although h2's agent clock is
//!   3 s ahead and h3's 2 s behind; `timeline --trace` shows each request's
//!   whole chain;
//! - `tail -f` shows lines written on h3 (latency p50/p99 printed);
//! - the aggregator SIGKILLed mid-ingest and restarted, then down for 60 s
//!   while traffic goes on: afterwards every event is there exactly once;
//! - an agent SIGKILLed and restarted: no duplicates, and it stays up.
//!
//! Needs root (BPF, network namespaces). Each test builds its own cluster
//! with its own names (`trc-lN-*`) and subnet, so they may run in parallel.

mod cluster_common;
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use cluster_common::{
    HOSTS, Net, PORT, assert_each_once, http_events, line_counts, line_path, parse_events, path_of,
    request, request_line_regex, service_js, traffic,
};
use common::{NODE, Proc, TRACER, TempDir, require_root};
use tracer_user::event::{Event, EventData, HttpSide};

const TOKEN: &str = "cluster-live-token-0123456789";
/// How long events may take to reach the aggregator once written (generous:
/// the agents batch for 50 ms; this bounds a failing test, not a passing one).
const SETTLE: Duration = Duration::from_secs(60);

/// The whole cluster. Field order is drop order: agents and services go
/// before the network they live in.
struct Cluster {
    agents: BTreeMap<&'static str, Proc>,
    /// Kept so that they live (and their stdout is read) until the end.
    _services: Vec<Proc>,
    aggregator: Option<Proc>,
    addr: SocketAddr,
    dir: TempDir,
    net: Net,
}

impl Cluster {
    /// Services first (they run before anything is attached, like in
    /// production), then the aggregator, then one agent per host with its
    /// clock shifted by `skew_ms[host]`.
    fn start(id: u8, skew_ms: &[(&'static str, i64)]) -> Self {
        let net = Net::new(&format!("trc-l{id}"), &format!("10.78.{id}"));
        let dir = TempDir::new(&format!("cluster-live-{id}"));
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
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
        let mut aggregator = start_aggregator(dir.path(), "127.0.0.1:0");
        let addr = aggregator_address(&mut aggregator);
        let mut cluster = Self {
            agents: BTreeMap::new(),
            _services: services,
            aggregator: Some(aggregator),
            addr,
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
        let mut cmd = Command::new(TRACER);
        cmd.args(["agent", "--quiet", "--host", host, "--netns"])
            .arg(format!("/var/run/netns/{}", self.net.ns(host)))
            .args(["--aggregator", &format!("http://{}", self.addr)])
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

    /// `tracer <args> --aggregator URL --token-file F`; panics unless it
    /// exits 0.
    fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            out.status.success(),
            "tracer {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    fn cli_output(&self, args: &[&str]) -> Output {
        Command::new(TRACER)
            .args(args)
            .args(["--aggregator", &format!("http://{}", self.addr)])
            .arg("--token-file")
            .arg(self.dir.path().join("token"))
            .stdin(Stdio::null())
            .output()
            .expect("running a tracer client")
    }

    fn grep_count(&self, regex: &str, host: &str) -> u64 {
        let out = self.cli(&["grep", "-c", regex, "--host", host]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("grep -c printed {out:?}"))
    }

    /// Every event `tracer grep --json REGEX` prints.
    fn grep_json(&self, regex: &str) -> Vec<Event> {
        parse_events(&self.cli(&["grep", "--json", regex]))
    }

    fn timeline(&self, args: &[&str]) -> Vec<Event> {
        let mut all = vec!["timeline", "--json", "--since", "1h"];
        all.extend_from_slice(args);
        parse_events(&self.cli(&all))
    }

    /// Waits until `grep -c` of the tag's request lines reaches `want` on
    /// every host (panics with the counts seen when it does not).
    fn wait_for_lines(&mut self, tag: &str, want: &BTreeMap<&str, u64>) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let got: BTreeMap<&str, u64> = want
                .keys()
                .map(|h| (*h, self.grep_count(&request_line_regex(h, tag), h)))
                .collect();
            if &got == want {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "log lines of {tag} per host after {SETTLE:?}: {got:?}, want {want:?}\n{}",
                    self.diagnosis()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// What the agents said and what their spools hold, for failures.
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
        if let Some(agg) = &mut self.aggregator {
            agg.stderr.poll();
            out += &format!("aggregator:\n{}\n", agg.stderr.tail(15));
        }
        out
    }

    fn kill_aggregator(&mut self) {
        let mut p = self.aggregator.take().expect("the aggregator runs");
        p.signal(libc::SIGKILL);
        p.wait_exit(Duration::from_secs(10))
            .expect("the aggregator exits on SIGKILL");
    }

    fn restart_aggregator(&mut self) {
        assert!(self.aggregator.is_none());
        let mut p = start_aggregator(self.dir.path(), &self.addr.to_string());
        assert_eq!(aggregator_address(&mut p), self.addr);
        self.aggregator = Some(p);
    }
}

fn start_aggregator(dir: &Path, listen: &str) -> Proc {
    let mut cmd = Command::new(TRACER);
    cmd.args(["aggregator", "--listen", listen, "--data"])
        .arg(dir.join("data"))
        .arg("--token-file")
        .arg(dir.join("token"))
        .stdout(Stdio::null());
    Proc::spawn("aggregator", cmd, false)
}

fn aggregator_address(p: &mut Proc) -> SocketAddr {
    // The aggregator prints `tracer: aggregator listening on http://ADDR ...`.
    let line = p
        .stderr
        .wait_for("the aggregator's address", Duration::from_secs(30), |l| {
            l.contains("listening on http://")
        });
    let rest = line.split("http://").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn every_line_once_in_causal_order_with_skewed_clocks() {
    if !require_root("cluster_live") {
        return;
    }
    const N: usize = 60;
    let tag = "skew";
    let mut cluster = Cluster::start(1, &[("h2", 3000), ("h3", -2000)]);
    for i in 0..N {
        assert_eq!(request(cluster.net.gateway(), &path_of(tag, i)), 200);
        thread::sleep(Duration::from_millis(20));
    }
    let want: BTreeMap<&str, u64> = HOSTS.iter().map(|(_, h)| (*h, N as u64)).collect();
    cluster.wait_for_lines(tag, &want);

    // grep: exact counts, across hosts and per host, and -i.
    let all = cluster.cli(&["grep", "-c", &format!("GET /orders/{tag}-")]);
    assert_eq!(all.trim(), (3 * N).to_string(), "grep -c over the cluster");
    let upper = cluster.cli(&["grep", "-c", "-i", &format!("get /ORDERS/{tag}-")]);
    assert_eq!(upper.trim(), (3 * N).to_string(), "grep -c -i");
    let none = cluster.cli(&["grep", "-c", "no such line anywhere"]);
    assert_eq!(none.trim(), "0");
    let paths: BTreeSet<String> = (0..N).map(|i| path_of(tag, i)).collect();
    let lines = cluster.grep_json(&format!("GET /orders/{tag}-"));
    assert_eq!(lines.len(), 3 * N);
    for (_, host) in HOSTS {
        assert_each_once(&lines, host, &paths, "grep");
    }
    // grep's text output is sorted by time and names time, host and pid.
    let text = cluster.cli(&["grep", &format!("^store #[0-9]+ GET /orders/{tag}-")]);
    assert_eq!(text.lines().count(), N, "grep text output:\n{text}");
    assert!(
        text.lines().all(|l| l.contains(" h3 ")),
        "grep lines name the host:\n{text}"
    );

    // Clock offsets were recovered from matched connections.
    let offsets = http_get(cluster.addr, "/v1/offsets");
    let offsets: serde_json::Value = serde_json::from_str(&offsets).unwrap();
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
    let (o1, o2, o3) = (offset_of("h1"), offset_of("h2"), offset_of("h3"));
    let ms = |ns: i64| ns as f64 / 1e6;
    eprintln!(
        "cluster_live: offsets h1 {:.3} ms, h2 {:.3} ms, h3 {:.3} ms",
        ms(o1),
        ms(o2),
        ms(o3)
    );
    assert!(
        (ms(o2 - o1) + 3000.0).abs() < 50.0,
        "h2 runs 3 s ahead of h1: offset difference {} ms",
        ms(o2 - o1)
    );
    assert!(
        (ms(o3 - o1) - 2000.0).abs() < 50.0,
        "h3 runs 2 s behind h1: offset difference {} ms",
        ms(o3 - o1)
    );

    // Causal order on the timeline: for every request, gateway's line, then
    // api's, then store's.
    let logs = cluster.timeline(&["--kind", "log"]);
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
        assert_eq!(
            in_timeline,
            ["h1", "h2", "h3"],
            "{path}: timeline order {hops:?}"
        );
        hops.sort();
        let by_time: Vec<_> = hops.iter().map(|(_, h)| h.as_str()).collect();
        assert_eq!(by_time, ["h1", "h2", "h3"], "{path}: times {hops:?}");
    }

    // timeline --trace: each request's whole chain, and nothing else.
    let https = cluster.timeline(&["--kind", "http"]);
    let mut traced = 0;
    for e in &https {
        let EventData::Http(h) = &e.data else {
            continue;
        };
        if e.host != "h1" || h.side != HttpSide::Server || !h.path.contains(tag) {
            continue;
        }
        let trace = cluster.timeline(&["--trace", &h.req_id]);
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
        let want: BTreeSet<(String, String)> = [
            ("h1", "Server"),
            ("h1", "Client"),
            ("h2", "Server"),
            ("h2", "Client"),
            ("h3", "Server"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(hops, want, "trace of {} ({})", h.path, h.req_id);
        assert_eq!(http_events(&trace).len(), 5, "trace of {}", h.path);
        let trace_logs: Vec<(String, String)> = trace
            .iter()
            .filter_map(|t| match &t.data {
                EventData::Log { text, .. } => Some((t.host.clone(), text.clone())),
                _ => None,
            })
            .collect();
        let hosts: Vec<&str> = trace_logs.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(
            hosts,
            ["h1", "h2", "h3"],
            "trace of {}: {trace_logs:?}",
            h.path
        );
        assert!(
            trace_logs.iter().all(|(_, t)| line_path(t) == h.path),
            "trace of {}: {trace_logs:?}",
            h.path
        );
        traced += 1;
    }
    assert_eq!(traced, N, "one gateway request per request sent");
}

/// GET on the aggregator's API with the token.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
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

/// A node program in h3 that prints `tick <i> <epoch µs>` every 10 ms once
/// told `go` on stdin; the time is taken right before the write.
const TICKER_JS: &str = r#"
process.stderr.write('READY\n');
process.stdin.once('data', () => {
  let i = 0;
  const t = setInterval(() => {
    const us = Math.round((performance.timeOrigin + performance.now()) * 1000);
    console.log(`tick ${i} ${us}`);
    if (++i === Number(process.argv[2])) { clearInterval(t); }
  }, 10);
});
"#;

#[test]
fn tail_follow_shows_lines_from_h3_live() {
    if !require_root("cluster_live") {
        return;
    }
    const TICKS: usize = 300;
    let mut net_ticker = None;
    let mut cluster = {
        // The ticker starts before the agents attach, like the services.
        let c = Cluster::start(2, &[]);
        let script = c.dir.path().join("ticker.js");
        std::fs::write(&script, TICKER_JS).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &c.net.ns("h3"), NODE])
            .arg(&script)
            .arg(TICKS.to_string())
            .stdout(Stdio::piped());
        let mut p = Proc::spawn("ticker", cmd, false);
        p.stderr
            .wait_for("READY", Duration::from_secs(15), |l| l == "READY");
        net_ticker.replace(p);
        c
    };
    // The agent of h3 attaches to the ticker by its scan; restart it so the
    // ticker was running before it attached.
    cluster.agents.remove("h3");
    cluster.start_agent("h3", 0);

    let (tx, rx) = mpsc::channel::<(SystemTime, String)>();
    let mut tail = Command::new(TRACER);
    tail.args([
        "tail", "-f", "--json", "-n", "0", "--host", "h3", "--kind", "log",
    ])
    .args(["--aggregator", &format!("http://{}", cluster.addr)])
    .arg("--token-file")
    .arg(cluster.dir.path().join("token"))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut tail = tail.spawn().expect("starting tracer tail -f");
    let stdout = tail.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((SystemTime::now(), line)).is_err() {
                break;
            }
        }
    });
    // Let the tail connect before the first tick.
    thread::sleep(Duration::from_secs(1));
    let ticker = net_ticker.as_mut().unwrap();
    ticker.send_line("go");

    let mut latencies_us = Vec::new();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + SETTLE;
    while seen.len() < TICKS && Instant::now() < deadline {
        let Ok((at, line)) = rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let e: Event = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let EventData::Log { text, .. } = &e.data else {
            continue;
        };
        let mut f = text.split(' ');
        if f.next() != Some("tick") {
            continue;
        }
        let i: usize = f.next().unwrap().parse().unwrap();
        let written_us: u128 = f.next().unwrap().parse().unwrap();
        let shown_us = at.duration_since(UNIX_EPOCH).unwrap().as_micros();
        assert!(seen.insert(i), "tick {i} shown twice");
        latencies_us.push(shown_us.saturating_sub(written_us) as u64);
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let _ = reader.join();
    assert_eq!(
        seen.len(),
        TICKS,
        "tail -f showed {} of {TICKS} ticks",
        seen.len()
    );
    latencies_us.sort_unstable();
    let pct = |p: usize| latencies_us[(latencies_us.len() * p / 100).min(latencies_us.len() - 1)];
    let (p50, p99) = (pct(50), pct(99));
    eprintln!(
        "cluster_live: tail -f latency, write() on h3 to the line on screen, {TICKS} lines: \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (aim: p99 <= 100 ms; \
         `cargo xtask bench tail` measures it on a quiet machine)",
        p50 as f64 / 1e3,
        p99 as f64 / 1e3,
        *latencies_us.last().unwrap() as f64 / 1e3
    );
    // A functional bound, not the aim: this test shares the machine with
    // builds and other tests.
    assert!(p50 < 1_000_000, "tail -f p50 {p50} µs");
}

#[test]
fn aggregator_killed_and_down_60s_loses_and_duplicates_nothing() {
    if !require_root("cluster_live") {
        return;
    }
    let tag = "outage";
    let mut cluster = Cluster::start(3, &[]);
    let sender = traffic(cluster.net.gateway(), tag, Duration::from_millis(40), 5000);
    // Mid-ingest: agents send a batch every 50 ms while traffic runs.
    thread::sleep(Duration::from_secs(4));
    cluster.kill_aggregator();
    cluster.restart_aggregator();
    thread::sleep(Duration::from_secs(4));
    cluster.kill_aggregator();
    eprintln!("cluster_live: aggregator down for 60 s, traffic continues");
    thread::sleep(Duration::from_secs(60));
    cluster.restart_aggregator();
    thread::sleep(Duration::from_secs(3));
    let sent = sender.finish();
    eprintln!("cluster_live: {sent} requests sent across the outages");
    assert!(sent > 500, "traffic ran on during the outage: {sent} sent");

    let want: BTreeMap<&str, u64> = HOSTS.iter().map(|(_, h)| (*h, sent as u64)).collect();
    cluster.wait_for_lines(tag, &want);
    let paths: BTreeSet<String> = (0..sent).map(|i| path_of(tag, i)).collect();
    let lines = cluster.grep_json(&format!("GET /orders/{tag}-"));
    for (_, host) in HOSTS {
        assert_each_once(&lines, host, &paths, "after the outages");
    }
    // The HTTP exchanges too: each side of each hop once.
    let https = cluster.timeline(&["--kind", "http"]);
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
        assert!(
            per.values().all(|n| *n == 1),
            "{host}: an exchange stored twice"
        );
        assert_eq!(per.len(), sides * sent, "{host}: http exchanges");
    }
}

#[test]
fn agent_killed_and_restarted_duplicates_nothing_and_stays_up() {
    if !require_root("cluster_live") {
        return;
    }
    let tag = "agentkill";
    let mut cluster = Cluster::start(4, &[]);
    let sender = traffic(cluster.net.gateway(), tag, Duration::from_millis(20), 5000);
    thread::sleep(Duration::from_secs(3));
    let mut killed = cluster.agents.remove("h2").unwrap();
    let answered_at_kill = sender.answered();
    killed.signal(libc::SIGKILL);
    killed
        .wait_exit(Duration::from_secs(10))
        .expect("the agent exits on SIGKILL");
    drop(killed);
    cluster.start_agent("h2", 0);
    // Requests from here on are all traced by the new agent (the one in
    // flight may have started before it attached).
    let answered_at_ready = sender.answered() + 1;
    thread::sleep(Duration::from_secs(5));
    let sent = sender.finish();
    assert!(
        sent > answered_at_ready + 100,
        "traffic went on: {sent} sent"
    );

    // h1 and h3 saw everything, exactly once.
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    want.insert("h1", sent as u64);
    want.insert("h3", sent as u64);
    cluster.wait_for_lines(tag, &want);
    let lines = cluster.grep_json(&format!("GET /orders/{tag}-"));
    let paths: BTreeSet<String> = (0..sent).map(|i| path_of(tag, i)).collect();
    assert_each_once(&lines, "h1", &paths, "agent restart");
    assert_each_once(&lines, "h3", &paths, "agent restart");
    // h2: nothing twice; everything after the restart; the gap only around
    // the kill (lines still in the killed agent's memory die with it; what
    // it had spooled is sent by the new one).
    let deadline = Instant::now() + SETTLE;
    let h2 = loop {
        let lines = cluster.grep_json(&format!("GET /orders/{tag}-"));
        let h2: BTreeMap<String, usize> = line_counts(&lines, "h2")
            .into_iter()
            .map(|(t, n)| (line_path(t).to_owned(), n))
            .collect();
        let after_complete = (answered_at_ready..sent).all(|i| h2.contains_key(&path_of(tag, i)));
        if after_complete || Instant::now() > deadline {
            break h2;
        }
        thread::sleep(Duration::from_millis(250));
    };
    let dups: Vec<_> = h2.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "h2 lines stored twice: {dups:?}");
    let missing: Vec<usize> = (0..sent)
        .filter(|i| !h2.contains_key(&path_of(tag, *i)))
        .collect();
    eprintln!(
        "cluster_live: agent h2 killed after request {answered_at_kill}, ready again at \
         {answered_at_ready}; h2 is missing {} of {sent} requests ({:?} to {:?})",
        missing.len(),
        missing.first(),
        missing.last()
    );
    let window = answered_at_kill.saturating_sub(25)..answered_at_ready;
    assert!(
        missing.iter().all(|i| window.contains(i)),
        "h2 lost requests outside the restart window {window:?}: {missing:?}"
    );

    // No crash loop: the new agent is still running and said ready once.
    let agent = cluster.agents.get_mut("h2").unwrap();
    assert!(
        agent.try_status().is_none(),
        "the restarted agent exited: {}",
        agent.stderr.tail(20)
    );
    agent.stderr.poll();
    let readies = agent
        .stderr
        .seen()
        .iter()
        .filter(|l| *l == "tracer: ready")
        .count();
    assert_eq!(readies, 1, "{}", agent.stderr.tail(20));
    let errors: Vec<_> = agent
        .stderr
        .seen()
        .iter()
        .filter(|l| l.starts_with("error"))
        .collect();
    assert!(errors.is_empty(), "the restarted agent: {errors:?}");
}
