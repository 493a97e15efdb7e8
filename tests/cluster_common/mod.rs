//! What the live cluster tests share (`tests/cluster_live.rs` on SQLite,
//! `tests/cluster_clickhouse_live.rs` on ClickHouse, and the network and
//! requests of `tests/cluster_control.rs`): the network of three
//! namespaces on a bridge, requests into the demo's gateway -> api ->
//! store chain, bounded traffic, and the exact-once checks on what grep
//! and timeline answer.

#![allow(
    dead_code,
    reason = "each test binary compiles this module and uses a different part of it"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use tracer_user::event::{Event, EventData, HttpExchange};

pub const PORT: u16 = 8080;
/// The chain, in call order: (service name, host name).
pub const HOSTS: [(&str, &str); 3] = [("gateway", "h1"), ("api", "h2"), ("store", "h3")];

pub fn service_js() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo-service.js")
}

/// The network of one test: a bridge and three namespaces joined by veth.
pub struct Net {
    prefix: String,
    subnet: String,
}

impl Net {
    /// Names start with `prefix` (at most 6 characters: interface names
    /// are short) and addresses are in `subnet`.0/24 (`10.78.1`), so tests
    /// running at once keep apart.
    pub fn new(prefix: &str, subnet: &str) -> Self {
        let net = Self {
            prefix: prefix.into(),
            subnet: subnet.into(),
        };
        net.teardown();
        ip(&["link", "add", &net.bridge(), "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", net.subnet),
            "dev",
            &net.bridge(),
        ]);
        ip(&["link", "set", &net.bridge(), "up"]);
        for (i, (_, host)) in HOSTS.iter().enumerate() {
            let ns = net.ns(host);
            let outer = format!("{}-{host}v", net.prefix);
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &outer, "master", &net.bridge(), "up"]);
            let addr = format!("{}/24", net.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    pub fn bridge(&self) -> String {
        format!("{}-br", self.prefix)
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    pub fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 11 + i)
    }

    pub fn gateway(&self) -> SocketAddr {
        self.service("h1")
    }

    /// Where the service of `host` (h1, h2 or h3) listens.
    pub fn service(&self, host: &str) -> SocketAddr {
        let i = HOSTS
            .iter()
            .position(|(_, h)| *h == host)
            .unwrap_or_else(|| panic!("no host {host}"));
        format!("{}:{PORT}", self.addr(i)).parse().unwrap()
    }

    fn teardown(&self) {
        for (_, host) in HOSTS {
            quiet_ip(&["netns", "del", &self.ns(host)]);
            quiet_ip(&["link", "del", &format!("{}-{host}v", self.prefix)]);
        }
        quiet_ip(&["link", "del", &self.bridge()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn quiet_ip(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A regex matching the demo service's per-request line for requests
/// tagged `tag`: `<name> #<n> GET /orders/<tag>-<i>`.
pub fn request_line_regex(host: &str, tag: &str) -> String {
    let name = HOSTS.iter().find(|(_, h)| *h == host).unwrap().0;
    format!("^{name} #[0-9]+ GET /orders/{tag}-[0-9]+$")
}

pub fn path_of(tag: &str, i: usize) -> String {
    format!("/orders/{tag}-{i}")
}

pub fn parse_events(out: &str) -> Vec<Event> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// One request to a service from outside the network (`Connection:
/// close`), e.g. through the chain at its gateway. Returns the HTTP status.
pub fn request(to: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .unwrap_or_else(|e| panic!("reading the answer to {path}: {e}"));
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {raw:?}"))
}

/// Requests sent by [`traffic`], one after another.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    /// Requests answered so far (request `i` is the `i`-th).
    answered: Arc<AtomicUsize>,
    thread: thread::JoinHandle<()>,
}

/// Sends `GET /orders/<tag>-<i>` one after another, `gap` apart, until
/// stopped or `max` were sent (a bounded load). Each must answer 200.
pub fn traffic(gateway: SocketAddr, tag: &'static str, gap: Duration, max: usize) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let (stop2, answered2) = (stop.clone(), answered.clone());
    let thread = thread::spawn(move || {
        for i in 0..max {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            let status = request(gateway, &path_of(tag, i));
            assert_eq!(status, 200, "request {i} of {tag}");
            answered2.store(i + 1, Ordering::Relaxed);
            thread::sleep(gap);
        }
    });
    Traffic {
        stop,
        answered,
        thread,
    }
}

impl Traffic {
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops and returns how many requests were sent (all answered 200).
    pub fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the traffic thread");
        self.answered.load(Ordering::Relaxed)
    }
}

/// The text of each log line of `host` in `events`, with how often it came.
pub fn line_counts<'a>(events: &'a [Event], host: &str) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for e in events.iter().filter(|e| e.host == host) {
        if let EventData::Log { text, .. } = &e.data {
            *counts.entry(text.as_str()).or_insert(0) += 1;
        }
    }
    counts
}

/// The request path in a demo service line `<name> #<n> GET <path>`.
pub fn line_path(text: &str) -> &str {
    text.rsplit(' ').next().unwrap()
}

/// Asserts that `host` logged each of `paths` exactly once in `events`
/// (and nothing else of this tag).
pub fn assert_each_once(events: &[Event], host: &str, paths: &BTreeSet<String>, what: &str) {
    let counts = line_counts(events, host);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (text, n) in &counts {
        *seen.entry(line_path(text)).or_insert(0) += n;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "{what}: {host} has duplicates: {dups:?}");
    let missing: Vec<_> = paths
        .iter()
        .filter(|p| !seen.contains_key(p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: {host} is missing {} of {} lines: {missing:?}",
        missing.len(),
        paths.len()
    );
    assert_eq!(seen.len(), paths.len(), "{what}: {host} has extra lines");
}

pub fn http_events(events: &[Event]) -> Vec<&HttpExchange> {
    events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::Http(h) => Some(h.as_ref()),
            _ => None,
        })
        .collect()
}
