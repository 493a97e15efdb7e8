//! `tracer agent --json --metrics-listen ADDR`: which node processes it
//! traces, and what its `/metrics` says about them.
//! - no scope: a node server started after the agent is ready is found
//!   (an `exec` event), and its log lines and HTTP exchanges are reported
//!   under its pid and counted exactly in `tracer_http_requests_total`;
//! - `--match REGEX`: only node processes whose command line matches,
//!   whether they started before or after the agent;
//! - `--pid P`: only P, not a node process that starts later nor one
//!   already running;
//! - `--netns /var/run/netns/NAME`: only node processes inside that
//!   network namespace (created here with `ip netns add`, removed by a
//!   guard), reached from inside it with `ip netns exec NAME curl`.
//!
//! A process that must not be traced has no event at all with its pid, no
//! series in the metrics, and no mention in the agent's stderr.
//! Needs root (loads BPF programs, creates a network namespace).

mod common;
mod http_common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Command,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use common::{NODE, Proc, Run, Tracer, fixtures_dir, list_problems, require_root, wait_ready_line};
use http_common::{
    assert_agent_clean_end, check_http_fields, free_port, http_request_series, parse_exposition,
    raw_request, request_bytes, samples_of_pid, scrape, start_agent,
};
use serde_json::Value;

/// The scenarios each run an agent that may trace every node process on
/// the host; one at a time keeps them from tracing each other's fixtures
/// in the middle of an assertion.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long the agent may take to notice a process that just started.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The requests made to every server: (method, path, body, status).
const TRAFFIC: [(&str, &str, &str, u64); 6] = [
    ("GET", "/users/1", "", 200),
    ("GET", "/users/22", "", 200),
    ("POST", "/orders", r#"{"item":"a"}"#, 201),
    ("GET", "/missing", "", 404),
    ("GET", "/users/333", "", 200),
    ("POST", "/orders", r#"{"item":"bb","qty":2}"#, 201),
];

/// A running tests/fixtures/agent_server.js.
struct Server {
    proc: Proc,
    port: u16,
    tag: String,
    /// The network namespace it runs in (None: this test's).
    netns: Option<String>,
    /// Started after the agent was ready (so the agent must report an
    /// `exec` for it), or before (found by the agent's initial scan).
    after: bool,
}

impl Server {
    fn start(tag: &str, netns: Option<&str>, after: bool) -> Self {
        match netns {
            None => Self::start_via(tag, &[], after),
            // `ip netns exec` execs node in the same process.
            Some(ns) => Self::start_in(tag, ns, after),
        }
    }

    /// Starts the server as `<wrapper...> node agent_server.js <tag>`: the
    /// wrapper program (if any) runs first in the new process and execs
    /// node in that same process, so the pid is node's.
    fn start_via(tag: &str, wrapper: &[&str], after: bool) -> Self {
        Self::spawn(tag, wrapper, None, after)
    }

    fn start_in(tag: &str, ns: &str, after: bool) -> Self {
        Self::spawn(tag, &["ip", "netns", "exec", ns], Some(ns), after)
    }

    fn spawn(tag: &str, wrapper: &[&str], netns: Option<&str>, after: bool) -> Self {
        let mut cmd = match wrapper {
            [] => Command::new(NODE),
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(NODE);
                c
            }
        };
        cmd.arg(fixtures_dir().join("agent_server.js")).arg(tag);
        let mut proc = Proc::spawn(&format!("agent_server.js {tag}"), cmd, true);
        let port = wait_ready_line(&mut proc);
        let port = port.parse().unwrap_or_else(|e| {
            panic!("agent_server.js READY must carry its port ({port:?}): {e}")
        });
        Self {
            proc,
            port,
            tag: tag.to_owned(),
            netns: netns.map(str::to_owned),
            after,
        }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Makes the [`TRAFFIC`] requests, one connection each: from this test
    /// when the server is in this namespace, with curl inside its
    /// namespace otherwise. Returns what went over the wire.
    fn drive(&self) -> Vec<Exchange> {
        TRAFFIC
            .iter()
            .map(|&(method, path, body, status)| {
                let x = match &self.netns {
                    None => {
                        let headers: &[(&str, &str)] = if body.is_empty() {
                            &[]
                        } else {
                            &[("Content-Type", "application/json")]
                        };
                        let r = raw_request(
                            SocketAddr::from(([127, 0, 0, 1], self.port)),
                            &request_bytes(method, path, headers, body),
                        );
                        Exchange {
                            method,
                            path,
                            status: u64::from(r.status),
                            client_port: r.port,
                            req_bytes: r.req_bytes,
                            resp_bytes: r.resp_bytes,
                        }
                    }
                    Some(ns) => curl_in(ns, self.port, method, path, body),
                };
                assert_eq!(
                    x.status,
                    status,
                    "{method} {path} on {} (pid {})",
                    self.tag,
                    self.pid()
                );
                x
            })
            .collect()
    }
}

/// One request made to a server and what it took on the wire.
#[derive(Debug)]
struct Exchange {
    method: &'static str,
    path: &'static str,
    status: u64,
    client_port: u16,
    req_bytes: u64,
    resp_bytes: u64,
}

/// A request made with curl inside network namespace `ns`; curl reports
/// the bytes it sent and received (headers + body) and its local port.
fn curl_in(ns: &str, port: u16, method: &'static str, path: &'static str, body: &str) -> Exchange {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "curl", "-sS", "--max-time", "10"])
        .args(["-o", "/dev/null", "-X", method])
        .args([
            "-w",
            "%{http_code} %{size_request} %{size_header} %{size_download} %{local_port}",
        ]);
    if !body.is_empty() {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running curl in {ns}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {method} {path} in {ns} failed ({}): {text} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let n: Vec<u64> = text
        .split_whitespace()
        .map(|x| {
            x.parse()
                .unwrap_or_else(|e| panic!("curl -w output {text:?}: {e}"))
        })
        .collect();
    let [status, sent, header, download, local_port] = n[..] else {
        panic!("curl -w output {text:?}: want 5 numbers");
    };
    Exchange {
        method,
        path,
        status,
        client_port: u16::try_from(local_port).expect("port"),
        req_bytes: sent,
        resp_bytes: header + download,
    }
}

/// A network namespace, deleted (with `ip netns delete`) when dropped.
/// Declare it before the processes that run in it, so that they are
/// killed first.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str) -> Self {
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        // A namespace left over by a killed run of this test (same pid).
        let _ = ip(&["netns", "delete", name]);
        let (ok, err) = ip(&["netns", "add", name]);
        assert!(ok, "ip netns add {name}: {err}");
        let ns = Self {
            name: name.to_owned(),
        };
        let (ok, err) = ip(&["-n", name, "link", "set", "lo", "up"]);
        assert!(ok, "ip -n {name} link set lo up: {err}");
        ns
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Starts the agent with `--metrics-listen` on a free port.
fn agent(extra: &[&str]) -> (Tracer, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = addr.to_string();
    let mut args = vec!["--metrics-listen", listen.as_str()];
    args.extend_from_slice(extra);
    (start_agent(&args), addr)
}

/// Waits until the agent reports the `exec` of `pid` (it traces it from
/// then on).
fn wait_discovered(agent: &mut Tracer, pid: u32) {
    let found = agent.wait_events(DISCOVERY_TIMEOUT, |evs| {
        evs.iter().any(|e| e["kind"] == "exec" && e["pid"] == pid)
    });
    if !found {
        agent.proc.stderr.poll();
        panic!(
            "the agent did not report the exec of node pid {pid} within {DISCOVERY_TIMEOUT:?}. \
             Its stderr:\n{}",
            agent.proc.stderr.tail(30)
        );
    }
}

/// Waits until the agent printed every exchange and log line of the
/// traced servers, and its metrics count every exchange; returns the last
/// scrape.
fn wait_reported(
    agent: &mut Tracer,
    addr: SocketAddr,
    traced: &[(&Server, &[Exchange])],
) -> String {
    let want: Vec<(u32, usize)> = traced.iter().map(|(s, xs)| (s.pid(), xs.len())).collect();
    let of = |evs: &[Value], kind: &str, pid: u32| {
        evs.iter()
            .filter(|e| e["kind"] == kind && e["pid"] == pid)
            .count()
    };
    agent.wait_events(Duration::from_secs(15), |evs| {
        want.iter()
            .all(|&(pid, n)| of(evs, "http", pid) >= n && of(evs, "log", pid) >= n)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(addr);
        let samples = parse_exposition(&text);
        let done = want
            .iter()
            .all(|&(pid, n)| http_request_series(&samples, pid).values().sum::<f64>() >= n as f64);
        if done || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything the agent must have said about a server it traces.
fn check_traced(run: &Run, s: &Server, exchanges: &[Exchange], problems: &mut Vec<String>) {
    let pid = s.pid();
    let who = format!("{} (pid {pid})", s.tag);
    // exec: exactly one for a process started after the agent, none for
    // one found by the initial scan.
    let execs = run.of("exec", pid);
    let want_execs = usize::from(s.after);
    if execs.len() != want_execs
        || execs
            .iter()
            .any(|e| e["exe"] != NODE || e["comm"] != "node" || e["tid"] != pid)
    {
        problems.push(format!(
            "{who}: expected {want_execs} exec event(s) of {NODE} (started {} the agent), got \
             {execs:?}",
            if s.after { "after" } else { "before" }
        ));
    }
    // One http event per request, matched by the client's port.
    let https = run.of("http", pid);
    if https.len() != exchanges.len() {
        problems.push(format!(
            "{who}: {} requests made, {} http events",
            exchanges.len(),
            https.len()
        ));
    }
    // The req_id of each request, in request order (None: no single event).
    let mut req_ids: Vec<Option<String>> = Vec::new();
    for x in exchanges {
        let hits: Vec<&&Value> = https
            .iter()
            .filter(|e| e["dport"] == x.client_port)
            .collect();
        let [e] = hits.as_slice() else {
            problems.push(format!(
                "{who}: {} {} from port {}: {} http events",
                x.method,
                x.path,
                x.client_port,
                hits.len()
            ));
            req_ids.push(None);
            continue;
        };
        check_http_fields(e, pid, problems);
        let want = [
            ("side", Value::from("server")),
            ("method", Value::from(x.method)),
            ("path", Value::from(x.path)),
            ("status", Value::from(x.status)),
            ("req_bytes", Value::from(x.req_bytes)),
            ("resp_bytes", Value::from(x.resp_bytes)),
            ("sport", Value::from(s.port)),
        ];
        let wrong: Vec<String> = want
            .iter()
            .filter(|(f, w)| e[*f] != *w)
            .map(|(f, w)| format!("{f} {} (want {w})", e[*f]))
            .collect();
        if !wrong.is_empty() {
            problems.push(format!("{who}: {}: {e}", wrong.join(", ")));
        }
        req_ids.push(e["req_id"].as_str().map(str::to_owned));
    }
    // Its lines: one per request, in request order (the requests came one
    // at a time), each written while serving exactly that request, so
    // carrying its req_id.
    let mut stdout = Vec::new();
    for e in run.of("log", pid) {
        match e["stream"].as_str() {
            Some("stdout") => stdout.push(e),
            // The READY line may be written before or after the agent
            // attached to a process it discovered; nothing else goes there.
            Some("stderr") if s.after && e["text"] == format!("READY {}", s.port) => {}
            _ => problems.push(format!("{who}: unexpected log line: {e}")),
        }
    }
    if stdout.len() != exchanges.len() {
        problems.push(format!(
            "{who}: {} requests served, {} stdout lines: {stdout:?}",
            exchanges.len(),
            stdout.len()
        ));
    }
    for ((x, id), e) in exchanges.iter().zip(&req_ids).zip(&stdout) {
        let text = format!("{} {} {}", s.tag, x.method, x.path);
        let got_id = e.get("req_id").and_then(Value::as_str);
        if e["text"] != text.as_str() || got_id.is_none() || got_id != id.as_deref() {
            problems.push(format!(
                "{who}: want the line {text:?} with req_id {id:?} (written while serving \
                 that request alone): {e}"
            ));
        }
    }
}

/// A process the agent must not trace: no event, no mention on stderr.
fn check_untraced(run: &Run, s: &Server, problems: &mut Vec<String>) {
    let pid = s.pid();
    let evs: Vec<&Value> = run.events.iter().filter(|e| e["pid"] == pid).collect();
    if !evs.is_empty() {
        problems.push(format!(
            "{} (pid {pid}) must not be traced, yet {} event(s) have its pid: {}",
            s.tag,
            evs.len(),
            evs.iter()
                .take(5)
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let needle = format!("PID {pid} ");
    if let Some(l) = run.stderr.iter().find(|l| l.contains(&needle)) {
        problems.push(format!(
            "{} (pid {pid}) must not be traced, yet the agent says: {l}",
            s.tag
        ));
    }
}

/// The agent's metrics: exact `tracer_http_requests_total` and log line
/// counts for the traced servers, nothing for the others.
fn check_metrics(
    metrics: &str,
    traced: &[(&Server, &[Exchange])],
    untraced: &[&Server],
    problems: &mut Vec<String>,
) {
    let samples = parse_exposition(metrics);
    for (s, exchanges) in traced {
        let pid = s.pid();
        let mut want: BTreeMap<(String, String, String, String), f64> = BTreeMap::new();
        for x in *exchanges {
            let route = if x.path.starts_with("/users/") {
                "/users/:id"
            } else {
                x.path
            };
            let class = format!("{}xx", x.status / 100);
            *want
                .entry((
                    "server".to_owned(),
                    x.method.to_owned(),
                    class,
                    route.to_owned(),
                ))
                .or_default() += 1.0;
        }
        let got = http_request_series(&samples, pid);
        if got != want {
            problems.push(format!(
                "{} (pid {pid}): tracer_http_requests_total {got:?}, expected {want:?}",
                s.tag
            ));
        }
        let lines: Vec<(String, f64)> = samples_of_pid(&samples, pid)
            .into_iter()
            .filter(|x| x.name == "tracer_log_lines_total")
            .map(|x| (x.labels.get("stream").cloned().unwrap_or_default(), x.value))
            .collect();
        let stdout = lines
            .iter()
            .find(|(st, _)| st == "stdout")
            .map_or(0.0, |(_, v)| *v);
        if stdout != exchanges.len() as f64 {
            problems.push(format!(
                "{} (pid {pid}): tracer_log_lines_total{{stream=\"stdout\"}} = {stdout}, \
                 expected {} ({lines:?})",
                s.tag,
                exchanges.len()
            ));
        }
    }
    for s in untraced {
        let pid = s.pid();
        let mine = samples_of_pid(&samples, pid);
        if !mine.is_empty() {
            problems.push(format!(
                "{} (pid {pid}) is not traced, yet the metrics have series for it: {:?}",
                s.tag,
                mine.iter().take(5).collect::<Vec<_>>()
            ));
        }
    }
}

fn assert_ok(what: &str, problems: &[String], run: &Run) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n{}\nagent stderr:\n{}",
        problems.len(),
        list_problems(problems),
        run.stderr_text()
    );
}

#[test]
fn discovers_a_node_server_started_later_and_counts_its_requests() {
    if !require_root("discovers_a_node_server_started_later_and_counts_its_requests") {
        return;
    }
    let _serial = serial();
    let (mut agent, addr) = agent(&[]);
    let server = Server::start(&format!("later-{}", std::process::id()), None, true);
    wait_discovered(&mut agent, server.pid());
    let exchanges = server.drive();
    let traced = [(&server, &exchanges[..])];
    let metrics = wait_reported(&mut agent, addr, &traced);
    agent.interrupt();
    let run = agent.finish(Duration::from_secs(15));
    assert_agent_clean_end(&run);

    let mut problems = Vec::new();
    check_traced(&run, &server, &exchanges, &mut problems);
    check_metrics(&metrics, &traced, &[], &mut problems);
    let needle = format!("tracer: now tracing PID {} (/usr/bin/node)", server.pid());
    if !run.stderr.iter().any(|l| l.starts_with(&needle)) {
        problems.push(format!("the agent's stderr must say `{needle}: ...`"));
    }
    assert_ok("agent discovery without scope", &problems, &run);
}

#[test]
fn match_traces_only_matching_command_lines() {
    if !require_root("match_traces_only_matching_command_lines") {
        return;
    }
    let _serial = serial();
    let me = std::process::id();
    let yes = |n: u32| format!("match-yes-{me}-{n}");
    let no = |n: u32| format!("match-no-{me}-{n}");
    let yes_before = Server::start(&yes(1), None, false);
    let no_before = Server::start(&no(1), None, false);
    let regex = format!(r"agent_server\.js match-yes-{me}-[0-9]+$");
    let (mut agent, addr) = agent(&["--match", &regex]);
    let yes_after = Server::start(&yes(2), None, true);
    let no_after = Server::start(&no(2), None, true);
    wait_discovered(&mut agent, yes_after.pid());
    // Not-traced first: whatever the agent printed about them is out by
    // the time it printed what follows.
    no_before.drive();
    no_after.drive();
    let xb = yes_before.drive();
    let xa = yes_after.drive();
    let traced = [(&yes_before, &xb[..]), (&yes_after, &xa[..])];
    let metrics = wait_reported(&mut agent, addr, &traced);
    agent.interrupt();
    let run = agent.finish(Duration::from_secs(15));
    assert_agent_clean_end(&run);

    let mut problems = Vec::new();
    check_traced(&run, &yes_before, &xb, &mut problems);
    check_traced(&run, &yes_after, &xa, &mut problems);
    check_untraced(&run, &no_before, &mut problems);
    check_untraced(&run, &no_after, &mut problems);
    check_metrics(&metrics, &traced, &[&no_before, &no_after], &mut problems);
    assert_ok(&format!("agent --match {regex:?}"), &problems, &run);
}

#[test]
fn pid_traces_only_that_process() {
    if !require_root("pid_traces_only_that_process") {
        return;
    }
    let _serial = serial();
    let me = std::process::id();
    let chosen = Server::start(&format!("pid-chosen-{me}"), None, false);
    let other_before = Server::start(&format!("pid-other-{me}-1"), None, false);
    let pid = chosen.pid().to_string();
    let (mut agent, addr) = agent(&["--pid", &pid]);
    let other_after = Server::start(&format!("pid-other-{me}-2"), None, true);
    other_before.drive();
    other_after.drive();
    let x = chosen.drive();
    let traced = [(&chosen, &x[..])];
    let metrics = wait_reported(&mut agent, addr, &traced);
    agent.interrupt();
    let run = agent.finish(Duration::from_secs(15));
    assert_agent_clean_end(&run);

    let mut problems = Vec::new();
    check_traced(&run, &chosen, &x, &mut problems);
    check_untraced(&run, &other_before, &mut problems);
    check_untraced(&run, &other_after, &mut problems);
    check_metrics(
        &metrics,
        &traced,
        &[&other_before, &other_after],
        &mut problems,
    );
    // Only the chosen process, and no discovery: not a single exec.
    let execs: Vec<&Value> = run.events.iter().filter(|e| e["kind"] == "exec").collect();
    if !execs.is_empty() {
        problems.push(format!("--pid does not discover, yet: {execs:?}"));
    }
    let foreign: Vec<&Value> = run
        .events
        .iter()
        .filter(|e| e["kind"] != "summary" && e["pid"] != chosen.pid())
        .take(5)
        .collect();
    if !foreign.is_empty() {
        problems.push(format!("--pid {pid}: events of other pids: {foreign:?}"));
    }
    assert_ok(&format!("agent --pid {pid}"), &problems, &run);
}

#[test]
fn netns_traces_only_processes_in_that_namespace() {
    if !require_root("netns_traces_only_processes_in_that_namespace") {
        return;
    }
    let _serial = serial();
    let me = std::process::id();
    // Before the servers: dropped (deleted) after they are killed.
    let ns = Netns::create(&format!("tracer-agent-{me}"));
    let inside_before = Server::start(&format!("ns-in-{me}-1"), Some(&ns.name), false);
    let outside_before = Server::start(&format!("ns-out-{me}-1"), None, false);
    let (mut agent, addr) = agent(&["--netns", &ns.path()]);
    let inside_after = Server::start(&format!("ns-in-{me}-2"), Some(&ns.name), true);
    let outside_after = Server::start(&format!("ns-out-{me}-2"), None, true);
    wait_discovered(&mut agent, inside_after.pid());
    outside_before.drive();
    outside_after.drive();
    let xb = inside_before.drive();
    let xa = inside_after.drive();
    let traced = [(&inside_before, &xb[..]), (&inside_after, &xa[..])];
    let metrics = wait_reported(&mut agent, addr, &traced);
    agent.interrupt();
    let run = agent.finish(Duration::from_secs(15));
    assert_agent_clean_end(&run);

    let mut problems = Vec::new();
    check_traced(&run, &inside_before, &xb, &mut problems);
    check_traced(&run, &inside_after, &xa, &mut problems);
    check_untraced(&run, &outside_before, &mut problems);
    check_untraced(&run, &outside_after, &mut problems);
    check_metrics(
        &metrics,
        &traced,
        &[&outside_before, &outside_after],
        &mut problems,
    );
    assert_ok(&format!("agent --netns {}", ns.path()), &problems, &run);
}

/// A service is often started through a program that execs node in the
/// same process (`env node ...`, `sh -c 'exec node ...'`, `ip netns exec`,
/// npm scripts). When the agent handles the wrapper's exec only after node
/// has replaced it (the agent lags a few milliseconds behind, as on a busy
/// host; here it is held with SIGSTOP for that moment), it must still
/// report one exec, node's: the wrapper's exec is not a node program's.
#[test]
fn a_wrapper_that_execs_node_is_reported_once() {
    if !require_root("a_wrapper_that_execs_node_is_reported_once") {
        return;
    }
    let _serial = serial();
    let me = std::process::id();
    let regex = format!(r"agent_server\.js wrapped-{me}$");
    let (mut agent, addr) = agent(&["--match", &regex]);
    // Hold the agent while `env` starts and execs node.
    agent.proc.signal(libc::SIGSTOP);
    let server = Server::start_via(&format!("wrapped-{me}"), &["/usr/bin/env"], true);
    agent.proc.signal(libc::SIGCONT);
    wait_discovered(&mut agent, server.pid());
    let x = server.drive();
    let traced = [(&server, &x[..])];
    let metrics = wait_reported(&mut agent, addr, &traced);
    agent.interrupt();
    let run = agent.finish(Duration::from_secs(15));
    assert_agent_clean_end(&run);

    let mut problems = Vec::new();
    check_traced(&run, &server, &x, &mut problems);
    check_metrics(&metrics, &traced, &[], &mut problems);
    assert_ok("a node server started through env", &problems, &run);
}
