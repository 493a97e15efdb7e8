//! The web UI in real headless Chromium (Debian's /usr/bin/chromium, driven
//! by playwright-core from npm, installed by this test under
//! `target/test-npm/`), against a real `tracer demo` cluster: three network
//! namespace hosts (gateway -> api -> store), their agents, the aggregator
//! and traffic. `tests/web_ui/ui_check.js` does the browsing; this test
//! starts the demo on a free port with its own directory, waits for traffic,
//! runs the script with a deadline, checks what it reports, and stops the
//! demo with SIGTERM (so it removes its namespaces) whatever happens.
//!
//! What it proves: the page and assets load without a token and data
//! needs it (login form and `#token=`); a lane per host; a regex search
//! returns exactly the injected lines it matches, in order, with host, pid
//! and stream, and jumps the timeline; logpoint lines and probe hits are
//! found by the same search and shown marked apart, in it and in the tail; a clicked request shows all three
//! hops; a new log line appears in the live tail, and a burst of 20 000
//! lines neither freezes the page nor grows the list past its cap; the
//! requests/s graph has a drawn series per host; a `<script>`/`onerror=`
//! log line is displayed literally and never runs; the Logpoints panel,
//! given the demo's admin token (kept in memory only), adds a logpoint to
//! the api service on h2, its lines arrive in the live tail, and it is
//! listed and removed. Screenshots go to
//! `target/test-artifacts/web-ui/`.
//!
//! Also `tracer demo --store clickhouse` (no browser): its two aggregators
//! both answer, and the events are in its two ClickHouse shards.
//!
//! Needs root (the demo loads BPF programs and creates namespaces), the
//! npm registry (once) and the `chromium` package (`cargo xtask bootstrap`).

mod common;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{NODE, Proc, TRACER, TempDir, require_root};

/// The playwright-core release the test installs (pinned).
const PLAYWRIGHT_VERSION: &str = "1.65.1";
const CHROMIUM: &str = "/usr/bin/chromium";
const NPM_TIMEOUT: Duration = Duration::from_secs(300);
/// The demo: agents attached, services up, the UI URL printed.
const DEMO_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Traffic through all three hops, stored.
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(60);
/// The browser script as a whole (it bounds each of its own waits too).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .to_path_buf()
}

/// Runs `cmd` to completion within `timeout`, panicking with its output
/// when it fails or takes longer. It runs in its own process group, and
/// the whole group is killed on timeout (the browser script's Chromium
/// processes too).
fn run_bounded(what: &str, mut cmd: Command, timeout: Duration) -> (String, String) {
    use std::os::unix::process::CommandExt as _;
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let deadline = Instant::now() + timeout;
    // Read the pipes in threads so a chatty child never blocks on them.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting") {
            break s;
        }
        if Instant::now() >= deadline {
            let pgid = libc::pid_t::try_from(child.id()).expect("pid fits in pid_t");
            // SAFETY: kill(2) has no memory-safety preconditions; the group
            // is the one this child leads (process_group(0)), not yet reaped.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            let (o, e) = (
                out_t.join().unwrap_or_default(),
                err_t.join().unwrap_or_default(),
            );
            panic!("{what} took more than {timeout:?}\nstdout:\n{o}\nstderr:\n{e}");
        }
        thread::sleep(Duration::from_millis(100));
    };
    let (o, e) = (
        out_t.join().unwrap_or_default(),
        err_t.join().unwrap_or_default(),
    );
    assert!(
        status.success(),
        "{what} failed ({status})\nstdout:\n{o}\nstderr:\n{e}"
    );
    (o, e)
}

/// Installs playwright-core into `target/test-npm/playwright-core-<v>`
/// unless it is there; returns its `node_modules`. The install goes to a
/// staging directory renamed into place only when npm succeeded.
fn ensure_playwright() -> PathBuf {
    let dir = target_dir()
        .join("test-npm")
        .join(format!("playwright-core-{PLAYWRIGHT_VERSION}"));
    let modules = dir.join("node_modules");
    if modules.join("playwright-core/package.json").is_file() {
        return modules;
    }
    let staging = dir.with_file_name(format!(
        "playwright-core-{PLAYWRIGHT_VERSION}.staging-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .unwrap_or_else(|e| panic!("creating {}: {e}", staging.display()));
    std::fs::write(
        staging.join("package.json"),
        format!(
            r#"{{"name":"tracer-test-playwright","private":true,"dependencies":{{"playwright-core":"{PLAYWRIGHT_VERSION}"}}}}"#
        ),
    )
    .expect("writing package.json");
    let mut npm = Command::new("npm");
    npm.args(["install", "--no-audit", "--no-fund", "--no-update-notifier"])
        .current_dir(&staging);
    run_bounded(
        &format!("npm install playwright-core@{PLAYWRIGHT_VERSION}"),
        npm,
        NPM_TIMEOUT,
    );
    if let Err(e) = std::fs::rename(&staging, &dir) {
        let _ = std::fs::remove_dir_all(&staging);
        assert!(
            modules.join("playwright-core/package.json").is_file(),
            "moving {} to {}: {e}",
            staging.display(),
            dir.display()
        );
    }
    modules
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free loopback port")
        .port()
}

/// `tracer demo`, stopped with SIGTERM (it then removes its namespaces)
/// and, if it does not exit in time, killed by [`Proc`]'s drop.
struct Demo(Proc);

impl Drop for Demo {
    fn drop(&mut self) {
        if self.0.try_status().is_none() {
            self.0.signal(libc::SIGTERM);
            if self.0.wait_exit(Duration::from_secs(30)).is_none() {
                eprintln!("web_ui: the demo did not exit 30 s after SIGTERM; killing it");
            }
        }
    }
}

/// A plain HTTP/1.1 GET with the token over loopback; returns the body.
fn get(addr: &str, token: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the aggregator");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending a request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("reading the answer");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The demo's namespaces, bridge and metrics ports have fixed names: one
/// demo at a time.
static ONE_DEMO: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn web_ui_in_chromium_against_the_demo() {
    if !require_root("web_ui") {
        return;
    }
    let _one = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: install the `chromium` package (cargo xtask bootstrap does)"
    );
    let modules = ensure_playwright();
    let artifacts = target_dir().join("test-artifacts/web-ui");
    std::fs::create_dir_all(&artifacts).expect("creating the artifacts directory");
    let dir = TempDir::new("web-ui");
    let profile = TempDir::new("web-ui-chromium");

    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(TRACER);
    cmd.args(["demo", "--listen", &addr, "--interval-ms", "100", "--dir"])
        .arg(dir.path().join("demo"))
        .stdout(Stdio::null());
    let mut demo = Demo(Proc::spawn("tracer demo", cmd, false));

    // The demo prints the UI's URL, with the token in the fragment, once
    // its agents are attached and traffic started.
    let line = demo
        .0
        .stderr
        .wait_for("the web UI URL", DEMO_READY_TIMEOUT, |l| {
            l.contains("[demo] web UI: ")
        });
    let url = line.split("[demo] web UI: ").nth(1).expect("a URL").trim();
    let expected_prefix = format!("http://{addr}/#token=");
    assert!(url.starts_with(&expected_prefix), "the demo printed {url}");
    let token = url[expected_prefix.len()..].to_string();
    let stored = std::fs::read_to_string(dir.path().join("demo/token")).expect("the demo's token");
    assert_eq!(token, stored.trim(), "the URL carries the demo's token");

    // Traffic through all three hops is stored.
    let deadline = Instant::now() + TRAFFIC_TIMEOUT;
    loop {
        let counts: Vec<u64> = ["gateway", "api", "store"]
            .iter()
            .map(|name| {
                let body = get(
                    &addr,
                    &token,
                    &format!("/v1/grep?count=1&re=%5E{name}%20%23"),
                );
                let v: serde_json::Value = serde_json::from_str(&body).expect("a count");
                v["count"].as_u64().unwrap_or(0)
            })
            .collect();
        if counts.iter().all(|&c| c >= 60) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no traffic through all three hops within {TRAFFIC_TIMEOUT:?} (log lines per hop: {counts:?}); demo stderr:\n{}",
            demo.0.stderr.tail(30)
        );
        thread::sleep(Duration::from_millis(500));
    }

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/web_ui/ui_check.js");
    let mut node = Command::new(NODE);
    node.arg(&script)
        .env("NODE_PATH", &modules)
        .env("BASE", format!("http://{addr}"))
        .env("TOKEN", &token)
        .env(
            "ADMIN_TOKEN",
            std::fs::read_to_string(dir.path().join("demo/admin-token"))
                .expect("the demo's admin token")
                .trim(),
        )
        .env("ARTIFACTS", &artifacts)
        .env("USER_DATA", profile.path());
    let (out, err) = run_bounded(
        "the browser script (tests/web_ui/ui_check.js)",
        node,
        SCRIPT_TIMEOUT,
    );
    eprintln!("{err}");
    let result = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line from the script:\n{out}\n{err}"));
    let v: serde_json::Value = serde_json::from_str(result).expect("RESULT is JSON");
    eprintln!("web_ui: the browser saw {v}");
    assert_eq!(v["lanes"], serde_json::json!(["h1", "h2", "h3"]), "{v}");
    assert_eq!(v["search"], 15, "{v}");
    assert_eq!(
        v["trace"]["servers"],
        serde_json::json!(["h1", "h2", "h3"]),
        "{v}"
    );
    assert_eq!(
        v["trace"]["clients"],
        serde_json::json!(["h1", "h2"]),
        "{v}"
    );
    assert_eq!(v["tail"], true, "{v}");
    assert_eq!(v["grep"], true, "{v}");
    assert_eq!(
        v["marked"],
        serde_json::json!(["log", "logpoint", "probe"]),
        "{v}"
    );
    assert_eq!(v["tailMarked"], true, "{v}");
    assert_eq!(v["probeGraph"], serde_json::json!(["h1/4242"]), "{v}");
    assert_eq!(v["xss_inert"], true, "{v}");
    assert!(v["graph"]["inked"].as_u64().unwrap_or(0) > 200, "{v}");
    assert_eq!(v["logpoint"]["removed"], true, "{v}");
    assert!(v["logpoint"]["lines"].as_u64().unwrap_or(0) >= 3, "{v}");
    for shot in [
        "timeline",
        "trace",
        "search",
        "tail",
        "graphs",
        "logpoints-tail",
        "logpoints",
    ] {
        let p = artifacts.join(format!("{shot}.png"));
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 10_000,
            "screenshot {} is missing or empty",
            p.display()
        );
    }
    drop(demo);
    eprintln!("web_ui: screenshots in {}", artifacts.display());
}

/// A query on a ClickHouse server's HTTP port; its answer, trimmed.
fn clickhouse(port: u16, password: &str, query: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting to ClickHouse");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-ClickHouse-User: tracer\r\n\
         X-ClickHouse-Key: {password}\r\nContent-Length: {}\r\n\r\n{query}",
        query.len()
    )
    .expect("sending a query");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("reading the answer");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{query}: {head}\n{body}");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    body.trim().to_string()
}

/// `tracer demo --store clickhouse`: two aggregators on two shards the
/// demo starts itself; traffic through all three hops is answered by
/// both aggregators and lies in ClickHouse; SIGTERM stops the servers too.
#[test]
fn demo_on_clickhouse_two_aggregators_two_shards() {
    if !require_root("web_ui") {
        return;
    }
    let _one = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("demo-clickhouse");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(TRACER);
    cmd.args(["demo", "--store", "clickhouse", "--listen", &addr])
        .args(["--interval-ms", "100", "--dir"])
        .arg(dir.path().join("demo"))
        .stdout(Stdio::null());
    let mut demo = Demo(Proc::spawn("tracer demo --store clickhouse", cmd, false));
    // `[demo] store: ClickHouse, 2 shards (HTTP ports P1, P2); aggregators
    // http://A and http://B`
    let line = demo
        .0
        .stderr
        .wait_for("the ClickHouse store line", DEMO_READY_TIMEOUT, |l| {
            l.starts_with("[demo] store: ClickHouse")
        });
    let ports: Vec<u16> = line
        .split("HTTP ports ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("the shards' ports")
        .split(", ")
        .map(|p| p.parse().expect("a port"))
        .collect();
    assert_eq!(ports.len(), 2, "{line}");
    let aggregators: Vec<String> = line
        .split("http://")
        .skip(1)
        .map(|a| a.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(
        aggregators,
        [addr.clone(), aggregators[1].clone()],
        "{line}"
    );
    demo.0
        .stderr
        .wait_for("the web UI URL", DEMO_READY_TIMEOUT, |l| {
            l.contains("[demo] web UI: ")
        });
    let token = std::fs::read_to_string(dir.path().join("demo/token")).expect("the demo's token");
    let token = token.trim();
    let password = std::fs::read_to_string(dir.path().join("demo/clickhouse-password"))
        .expect("the demo's ClickHouse password");
    let password = password.trim();

    // Traffic through all three hops, answered by both aggregators.
    let deadline = Instant::now() + TRAFFIC_TIMEOUT;
    for agg in &aggregators {
        loop {
            let counts: Vec<u64> = ["gateway", "api", "store"]
                .iter()
                .map(|name| {
                    let body = get(agg, token, &format!("/v1/grep?count=1&re=%5E{name}%20%23"));
                    let v: serde_json::Value = serde_json::from_str(&body).expect("a count");
                    v["count"].as_u64().unwrap_or(0)
                })
                .collect();
            if counts.iter().all(|&c| c >= 20) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no traffic through all three hops on {agg} within {TRAFFIC_TIMEOUT:?} \
                 (log lines per hop: {counts:?}); demo stderr:\n{}",
                demo.0.stderr.tail(30)
            );
            thread::sleep(Duration::from_millis(500));
        }
    }
    // In ClickHouse: every host's events, spread over the two shards'
    // local tables (their sum is what the Distributed table holds).
    let hosts = clickhouse(
        ports[0],
        password,
        "SELECT DISTINCT host FROM tracer.events ORDER BY host FORMAT TSV",
    );
    assert_eq!(hosts.lines().collect::<Vec<_>>(), ["h1", "h2", "h3"]);
    let local: Vec<u64> = ports
        .iter()
        .map(|p| {
            clickhouse(*p, password, "SELECT count() FROM tracer.events_local")
                .parse()
                .expect("a count")
        })
        .collect();
    eprintln!("web_ui: the demo's ClickHouse shards hold {local:?} event rows");
    assert!(local.iter().sum::<u64>() > 0);

    // A logpoint through the first aggregator reaches the api on h2, whose
    // agent sends its events to the second one first: agents poll every
    // aggregator of their list for commands. The demo prints this command.
    let admin = dir.path().join("demo/admin-token").display().to_string();
    let printed =
        format!("logpoint add --aggregator http://{addr} --admin-token-file {admin} --host h2");
    demo.0.stderr.wait_for(
        "the demo's logpoint command",
        Duration::from_secs(10),
        |l| l.contains(&printed),
    );
    let control = |args: &[&str]| {
        let out = Command::new(TRACER)
            .args(args)
            .args([
                "--aggregator",
                &format!("http://{addr}"),
                "--admin-token-file",
                &admin,
            ])
            .output()
            .expect("running tracer logpoint");
        assert!(
            out.status.success(),
            "tracer {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let added = control(&[
        "logpoint",
        "add",
        "--host",
        "h2",
        "--match",
        "demo-service",
        "demo-service.js:14",
        "ch-demo saw ${req.url}",
        "--ttl",
        "2m",
    ]);
    assert!(added.contains("[h2] logpoint"), "{added}");
    let token_file = dir.path().join("demo/token").display().to_string();
    let deadline = Instant::now() + TRAFFIC_TIMEOUT;
    let seen = loop {
        let out = Command::new(TRACER)
            .args([
                "grep",
                "-c",
                "^ch-demo saw /",
                "--since",
                "5m",
                "--aggregator",
            ])
            .arg(format!("http://{}", aggregators[1]))
            .args(["--token-file", &token_file])
            .output()
            .expect("running tracer grep");
        let n: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if n >= 5 {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no logpoint lines from h2 through the second aggregator ({n}); demo stderr:\n{}",
            demo.0.stderr.tail(30)
        );
        thread::sleep(Duration::from_millis(500));
    };
    eprintln!("web_ui: {seen} logpoint lines from h2, added through the first aggregator");
    let removed = control(&["logpoint", "rm", "--all", "--host", "h2"]);
    assert!(removed.contains("[h2]"), "{removed}");

    // SIGTERM: the demo stops everything, ClickHouse too.
    demo.0.signal(libc::SIGTERM);
    let status = demo
        .0
        .wait_exit(Duration::from_secs(60))
        .expect("the demo exits after SIGTERM");
    assert!(status.success(), "{status}: {}", demo.0.stderr.tail(20));
    for p in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", p)).is_err(),
            "clickhouse-server on port {p} still runs after the demo ended"
        );
    }
    // Its data stays in --dir for the next run, like the SQLite demo's.
    for shard in ["shard-0", "shard-1"] {
        let data = dir.path().join("demo/clickhouse").join(shard).join("data");
        assert!(data.is_dir(), "{} is gone", data.display());
    }
}
