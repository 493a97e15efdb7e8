//! Logpoints across the cluster: three hosts in network namespaces of this
//! test's own (the demo's layout: a real node service per host, started
//! before tracer), a real `tracer aggregator` with an admin token, and one
//! real `tracer agent` per host; h1 and h2 run with `--allow-control`, h3
//! without. Everything goes through the real `tracer` CLI:
//!
//! - the command is refused with the ingest token (exact message), and for
//!   h3 (exact message), and nothing runs anywhere;
//! - one `tracer logpoint add --aggregator ... --match demo-service` adds
//!   the logpoint to the api processes of h1 and h2 (not h3), and reports
//!   each process with its resolved location;
//! - N requests per api host give exactly N `logpoint` events per host,
//!   with the right text and the `req_id` of the request they fired in;
//! - every command is in the timeline as `audit` events (who, what, which
//!   processes, result), and in each agent's own audit log;
//! - the lines are found by `tracer grep` (exact counts) and each is in
//!   the trace of the request it fired in (`timeline --trace REQ_ID`);
//! - `tracer logpoint rm --all` through the aggregator: no more hits, and
//!   nothing listens on the inspector port on either host.
//!
//! Also: the refusals that need no cluster (control API off, admin token
//! equal to the ingest token, plain HTTP beyond loopback for aggregator,
//! agent and CLI, a host that takes a command and never answers), and
//! `tracer eval` through an HTTPS aggregator and `tracer logpoint list`
//! through one that requires client certificates (mutual TLS; all
//! certificates from openssl).
//!
//! Needs root (BPF, network namespaces). Names `trc-kN-*`, subnet 10.81.N (apart from cluster_live, cluster_clickhouse_live).

mod cluster_common;
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use cluster_common::{Net, request, service_js};
use common::{NODE, Proc, TRACER, TempDir, require_root};
use serde_json::Value;
use tracer_user::event::{Event, EventData, HttpSide};

const TOKEN: &str = "cluster-control-ingest-token-0123";
const ADMIN: &str = "cluster-control-admin-token-4567";
const PORT: u16 = 8080;
/// (service, host, allow control): two api hosts calling one store.
const HOSTS: [(&str, &str, bool); 3] = [
    ("api", "h1", true),
    ("api", "h2", true),
    ("store", "h3", false),
];
/// Generous bound on events reaching the aggregator (a loaded CI machine).
const SETTLE: Duration = Duration::from_secs(60);
/// The per-request log line of demo-service.js.
const LINE: u32 = 14;
const TEMPLATE: &str = "lp ${name} ${req.url} #${n}";
/// Node's inspector port (the services run without --inspect-port).
const INSPECTOR_PORT: u16 = 9229;

/// Field order is drop order: agents and services before the network.
struct Cluster {
    agents: BTreeMap<&'static str, Proc>,
    services: BTreeMap<&'static str, Proc>,
    aggregator: Proc,
    addr: SocketAddr,
    dir: TempDir,
    net: Net,
}

impl Cluster {
    fn start(id: u8) -> Self {
        let net = Net::new(&format!("trc-k{id}"), &format!("10.81.{id}"));
        let dir = TempDir::new(&format!("cluster-control-{id}"));
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        // The aggregator's admin file names the admin; the CLI's holds
        // just the token.
        std::fs::write(dir.path().join("admins"), format!("alice:{ADMIN}\n")).unwrap();
        std::fs::write(dir.path().join("admin-token"), ADMIN).unwrap();
        let store = format!("http://{}:{PORT}", net.addr(2));
        let mut services = BTreeMap::new();
        for (name, host, _) in HOSTS {
            let next = if name == "api" {
                store.clone()
            } else {
                String::new()
            };
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &net.ns(host), NODE])
                .arg(service_js())
                .env("NAME", name)
                .env("PORT", PORT.to_string())
                .env("NEXT", next);
            let mut p = Proc::spawn(&format!("{name} on {host}"), cmd, true);
            p.stdout
                .as_mut()
                .unwrap()
                .wait_for("listening", Duration::from_secs(15), |l| {
                    l.contains("listening on")
                });
            services.insert(host, p);
        }
        let mut cmd = Command::new(TRACER);
        cmd.args(["aggregator", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .arg("--token-file")
            .arg(dir.path().join("token"))
            .arg("--admin-token-file")
            .arg(dir.path().join("admins"))
            .stdout(Stdio::null());
        let mut aggregator = Proc::spawn("aggregator", cmd, false);
        let line =
            aggregator
                .stderr
                .wait_for("the aggregator's address", Duration::from_secs(30), |l| {
                    l.contains("listening on http://")
                });
        let addr: SocketAddr = line
            .split("http://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut agents = BTreeMap::new();
        for (_, host, control) in HOSTS {
            let mut cmd = Command::new(TRACER);
            cmd.args(["agent", "--quiet", "--host", host, "--netns"])
                .arg(format!("/var/run/netns/{}", net.ns(host)))
                .args(["--aggregator", &format!("http://{addr}")])
                .arg("--token-file")
                .arg(dir.path().join("token"))
                .arg("--spool")
                .arg(dir.path().join(format!("spool-{host}")))
                .args(["--metrics-listen", "127.0.0.1:0"])
                .env(
                    "TRACER_AUDIT_LOG",
                    dir.path().join(format!("audit-{host}.jsonl")),
                )
                .stdout(Stdio::null());
            if control {
                cmd.arg("--allow-control");
            }
            let mut p = Proc::spawn(&format!("agent {host}"), cmd, false);
            p.stderr
                .wait_for("tracer: ready", Duration::from_secs(90), |l| {
                    l == "tracer: ready"
                });
            agents.insert(host, p);
        }
        Self {
            agents,
            services,
            aggregator,
            addr,
            dir,
            net,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `tracer <args>`, run to the end.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(TRACER)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running tracer")
    }

    /// `tracer logpoint|eval ... --aggregator URL --admin-token-file F`.
    fn control(&self, args: &[&str], token_file: &str) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend([
            "--aggregator".into(),
            self.url(),
            "--admin-token-file".into(),
            self.dir.path().join(token_file).display().to_string(),
        ]);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.run(&refs)
    }

    fn timeline(&self, kinds: &str) -> Vec<Event> {
        let out = self.run(&[
            "timeline",
            "--json",
            "--since",
            "1h",
            "--kind",
            kinds,
            "--aggregator",
            &self.url(),
            "--token-file",
            &self.dir.path().join("token").display().to_string(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// GET on the API with a bearer token: (status, body).
    fn api_get(&self, path: &str, token: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    }

    /// What the agents and the aggregator said, for failures.
    fn diagnosis(&mut self) -> String {
        let mut out = String::new();
        for (host, agent) in &mut self.agents {
            agent.stderr.poll();
            out += &format!("agent {host}:\n{}\n", agent.stderr.tail(15));
        }
        self.aggregator.stderr.poll();
        out += &format!("aggregator:\n{}\n", self.aggregator.stderr.tail(15));
        out
    }
}

/// Whether anything listens on `port` in the network namespace of `pid`.
fn listening_in_netns_of(pid: u32, port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == "0A"
            })
    })
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Logpoint events per host: (text, req_id).
fn logpoints(events: &[Event]) -> BTreeMap<String, Vec<(String, Option<String>)>> {
    let mut out: BTreeMap<String, Vec<(String, Option<String>)>> = BTreeMap::new();
    for e in events {
        if let EventData::Logpoint { text, req_id, .. } = &e.data {
            out.entry(e.host.clone())
                .or_default()
                .push((text.clone(), req_id.clone()));
        }
    }
    out
}

#[test]
fn one_command_adds_a_logpoint_on_two_hosts_audited_and_refused_where_it_must() {
    if !require_root("cluster_control") {
        return;
    }
    const N: usize = 20;
    let mut c = Cluster::start(1);
    let api_hosts = ["h1", "h2"];
    let pid_of = |c: &Cluster, host: &str| c.services[host].pid();

    // One request per api host first: every host has sent events (h3 is
    // known to the aggregator, so it is "control not allowed", not
    // unknown), and each service has served request #1.
    for host in api_hosts {
        assert_eq!(
            request(c.net.service(host), &format!("/warmup-{host}")),
            200
        );
    }
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, body) = c.api_get("/v1/control/hosts", ADMIN);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let control: BTreeMap<String, bool> = v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["host"].as_str().unwrap().to_owned(), h["control"] == true))
            .collect();
        let want: BTreeMap<String, bool> = HOSTS
            .iter()
            .map(|(_, h, allow)| (h.to_string(), *allow))
            .collect();
        if control == want {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "control hosts: {control:?}, want {want:?}\n{}",
                c.diagnosis()
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
    // The hosts API itself takes only the admin token.
    let (status, body) = c.api_get("/v1/control/hosts", TOKEN);
    assert_eq!(status, 403, "{body}");

    let location = format!("demo-service.js:{LINE}");
    let add = |c: &Cluster, extra: &[&str], token_file: &str| {
        let mut args = vec!["logpoint", "add", "--json", "--match", "demo-service"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[location.as_str(), TEMPLATE]);
        c.control(&args, token_file)
    };

    // Refused: the ingest token in place of the admin token.
    let out = add(&c, &[], "token");
    assert!(!out.status.success());
    assert_eq!(
        stderr_of(&out),
        "error: the aggregator refused the command (403 Forbidden): this is the control API: \
         it takes an admin token (the aggregator's --admin-token-file), not the ingest token\n"
    );
    // Refused: a host whose agent runs without --allow-control, alone or
    // with one that allows it (nothing runs on h1 then either).
    let h3_refusal = "host h3: control not allowed: its agent runs without --allow-control \
                      (its events arrive, but it takes no commands)";
    for hosts in ["h3", "h1,h3"] {
        let out = add(&c, &["--host", hosts], "admin-token");
        assert!(!out.status.success());
        assert_eq!(
            stderr_of(&out),
            format!(
                "error: the aggregator refused the command (409 Conflict): refused, nothing \
                 was run: {h3_refusal}\n"
            ),
            "--host {hosts}"
        );
    }
    // Refused by the CLI itself: control over plain HTTP to another machine.
    let out = c.run(&[
        "logpoint",
        "list",
        "--aggregator",
        &format!("http://{}:{}", c.net.addr(0), c.addr.port()),
        "--admin-token-file",
        &c.dir.path().join("admin-token").display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("refusing to carry control commands over plain HTTP")
            && stderr_of(&out).contains("--tls-cert"),
        "{}",
        stderr_of(&out)
    );

    // The command: every host that allows control (h1, h2), every process
    // matching demo-service there.
    let started = Instant::now();
    let out = add(&c, &[], "admin-token");
    eprintln!(
        "cluster_control: `tracer logpoint add` through the aggregator on 2 hosts took {} ms \
         (CLI start to answer, SIGUSR1 open and close included)",
        started.elapsed().as_millis()
    );
    assert!(
        out.status.success(),
        "logpoint add failed: {}\n{}",
        stderr_of(&out),
        c.diagnosis()
    );
    // h3 is left out, and the CLI says so.
    assert!(
        stderr_of(&out)
            .lines()
            .any(|l| l == format!("tracer: skipped {h3_refusal}")),
        "{}",
        stderr_of(&out)
    );
    let reports = json_lines(&out);
    let mut ids = BTreeSet::new();
    let mut reported: BTreeMap<String, u64> = BTreeMap::new();
    for r in &reports {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["result"]["line"], LINE, "{r}");
        assert!(
            r["result"]["url"]
                .as_str()
                .unwrap()
                .ends_with("/demo-service.js"),
            "{r}"
        );
        ids.insert(r["result"]["id"].as_str().unwrap().to_owned());
        reported.insert(
            r["host"].as_str().unwrap().to_owned(),
            r["pid"].as_u64().unwrap(),
        );
    }
    let want_pids: BTreeMap<String, u64> = api_hosts
        .iter()
        .map(|h| (h.to_string(), u64::from(pid_of(&c, h))))
        .collect();
    assert_eq!(
        reported, want_pids,
        "one report per api process: {reports:?}"
    );
    assert_eq!(ids.len(), 1, "one logpoint id across the cluster: {ids:?}");
    let lp_id = ids.into_iter().next().unwrap();
    for host in api_hosts {
        assert!(
            !listening_in_netns_of(pid_of(&c, host), INSPECTOR_PORT),
            "{host}: the inspector port stayed open after add"
        );
    }

    // N requests to each api host: request i is the service's #(i + 2).
    for i in 0..N {
        for host in api_hosts {
            let path = format!("/orders/ctl-{host}-{i}");
            assert_eq!(request(c.net.service(host), &path), 200);
        }
    }
    let want_texts = |host: &str| -> BTreeSet<String> {
        (0..N)
            .map(|i| format!("lp api /orders/ctl-{host}-{i} #{}", i + 2))
            .collect()
    };
    let deadline = Instant::now() + SETTLE;
    let lps = loop {
        let lps = logpoints(&c.timeline("logpoint"));
        let counts: BTreeMap<&str, usize> =
            lps.iter().map(|(h, v)| (h.as_str(), v.len())).collect();
        if api_hosts.iter().all(|h| counts.get(h) == Some(&N)) {
            break lps;
        }
        if Instant::now() > deadline {
            panic!(
                "logpoint events per host: {counts:?}, want {N} on h1 and h2\n{}",
                c.diagnosis()
            );
        }
        thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        lps.keys().collect::<Vec<_>>(),
        ["h1", "h2"],
        "logpoint events only on the hosts it was added to"
    );
    // Each line once, with the text rendered in the request's scope and
    // the req_id of the server exchange of the same request on that host.
    // The server exchanges of those requests (an exchange is reported once
    // its response is complete, so it may come after the logpoint line).
    let deadline = Instant::now() + SETTLE;
    let https = loop {
        let https = c.timeline("http");
        let served: BTreeSet<(String, String)> = https
            .iter()
            .filter_map(|e| match &e.data {
                EventData::Http(h) if h.side == HttpSide::Server => {
                    Some((e.host.clone(), h.path.clone()))
                }
                _ => None,
            })
            .collect();
        let missing: Vec<(String, String)> = api_hosts
            .iter()
            .flat_map(|h| (0..N).map(move |i| (h.to_string(), format!("/orders/ctl-{h}-{i}"))))
            .filter(|k| !served.contains(k))
            .collect();
        if missing.is_empty() {
            break https;
        }
        if Instant::now() > deadline {
            panic!("server exchanges missing: {missing:?}\n{}", c.diagnosis());
        }
        thread::sleep(Duration::from_millis(250));
    };
    for host in api_hosts {
        let texts: BTreeSet<String> = lps[host].iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(texts, want_texts(host), "{host}: logpoint texts");
        for (text, req_id) in &lps[host] {
            let path = text.split(' ').nth(2).unwrap();
            let served: Vec<&str> = https
                .iter()
                .filter(|e| e.host == host)
                .filter_map(|e| match &e.data {
                    EventData::Http(h) if h.side == HttpSide::Server && h.path == path => {
                        Some(h.req_id.as_str())
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(served.len(), 1, "{host}: one server exchange for {path}");
            assert_eq!(
                req_id.as_deref(),
                Some(served[0]),
                "{host}: the req_id of {text:?}"
            );
        }
    }
    // The lines are searchable with `tracer grep`, exactly once each...
    let token = c.dir.path().join("token").display().to_string();
    let c_url = c.url();
    let grep = |args: &[&str]| {
        let mut all = vec!["grep"];
        all.extend_from_slice(args);
        all.extend(["--aggregator", &c_url, "--token-file", &token]);
        let out = c.run(&all);
        assert!(out.status.success(), "tracer grep: {}", stderr_of(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        grep(&["-c", "^lp api /orders/ctl-"]),
        format!("{}\n", 2 * N)
    );
    for host in api_hosts {
        let found: Vec<Value> = grep(&["--json", &format!("^lp api /orders/ctl-{host}-")])
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(
            found.len(),
            N,
            "{host}: grep finds each line once: {found:?}"
        );
        assert!(
            found
                .iter()
                .all(|e| e["kind"] == "logpoint" && e["host"] == host),
            "{found:?}"
        );
    }
    // ... and each is in the trace of the request it fired in: the trace
    // of that request's gateway exchange (h3 -> h1/h2 -> store) holds it.
    for host in api_hosts {
        for (text, req_id) in lps[host].iter().take(3) {
            let req_id = req_id.as_deref().unwrap();
            let out = c.run(&[
                "timeline",
                "--json",
                "--since",
                "1h",
                "--trace",
                req_id,
                "--aggregator",
                &c_url,
                "--token-file",
                &token,
            ]);
            assert!(out.status.success(), "{}", stderr_of(&out));
            let trace: Vec<Value> = json_lines(&out);
            let hits: Vec<&Value> = trace.iter().filter(|e| e["kind"] == "logpoint").collect();
            assert_eq!(
                hits.len(),
                1,
                "{host}: the trace of {req_id} holds its logpoint line: {trace:?}"
            );
            assert_eq!(hits[0]["text"], text.as_str());
            assert!(
                trace
                    .iter()
                    .any(|e| e["kind"] == "http" && e["req_id"] == req_id),
                "{host}: the trace of {req_id} holds its exchange"
            );
        }
    }

    // Remove it everywhere through the aggregator.
    let started = Instant::now();
    let out = c.control(&["logpoint", "rm", "--json", "--all"], "admin-token");
    eprintln!(
        "cluster_control: `tracer logpoint rm --all` through the aggregator on 2 hosts took {} ms",
        started.elapsed().as_millis()
    );
    assert!(out.status.success(), "logpoint rm: {}", stderr_of(&out));
    let removed = json_lines(&out);
    assert_eq!(removed.len(), 2, "{removed:?}");
    for r in &removed {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["result"]["remaining"], 0, "{r}");
        let ids: Vec<&str> = r["result"]["removed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|lp| lp["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [lp_id.as_str()], "{r}");
    }
    for host in api_hosts {
        assert!(
            !listening_in_netns_of(pid_of(&c, host), INSPECTOR_PORT),
            "{host}: the inspector port stayed open after rm"
        );
    }
    // No more hits: N more requests per host, whose own log lines arrive
    // (so their logpoint events would have too).
    for i in 0..N {
        for host in api_hosts {
            let path = format!("/orders/after-{host}-{i}");
            assert_eq!(request(c.net.service(host), &path), 200);
        }
    }
    let deadline = Instant::now() + SETTLE;
    loop {
        let logs = c.timeline("log");
        let after = logs
            .iter()
            .filter(|e| {
                matches!(&e.data, EventData::Log { text, .. }
                    if text.starts_with("api #") && text.contains("/orders/after-"))
            })
            .count();
        if after == 2 * N {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "after rm: {after} of {} request lines arrived\n{}",
                2 * N,
                c.diagnosis()
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
    let lps = logpoints(&c.timeline("logpoint"));
    for host in api_hosts {
        assert_eq!(lps[host].len(), N, "{host}: logpoint events after rm");
    }
    for host in api_hosts {
        assert!(
            !listening_in_netns_of(pid_of(&c, host), INSPECTOR_PORT),
            "{host}: something listens on the inspector port at the end"
        );
    }

    // The audit trail in the timeline: the refusals, and each command
    // requested then done on each host with its processes.
    let audits: Vec<(String, Value)> = c
        .timeline("audit")
        .into_iter()
        .map(|e| {
            let EventData::Audit(a) = &e.data else {
                panic!("not an audit event: {e:?}")
            };
            (e.host.clone(), serde_json::to_value(a.as_ref()).unwrap())
        })
        .collect();
    let find = |host: &str, op: &str, phase: &str| -> Vec<&Value> {
        audits
            .iter()
            .filter(|(h, a)| h == host && a["op"] == op && a["phase"] == phase)
            .map(|(_, a)| a)
            .collect()
    };
    let refused = find("h3", "logpoint.add", "refused");
    assert_eq!(refused.len(), 2, "h3 refusals: {audits:?}");
    for a in refused {
        assert_eq!(a["who"], "alice");
        assert_eq!(a["error"], h3_refusal);
    }
    for host in api_hosts {
        let pid = u64::from(pid_of(&c, host));
        for op in ["logpoint.add", "logpoint.rm"] {
            assert_eq!(
                find(host, op, "requested").len(),
                1,
                "{host} {op}: {audits:?}"
            );
            let done = find(host, op, "done");
            assert_eq!(done.len(), 1, "{host} {op}: {audits:?}");
            let a = done[0];
            assert_eq!(a["who"], "alice", "{a}");
            let want_match = if op == "logpoint.add" {
                "demo-service".into()
            } else {
                Value::Null
            };
            assert_eq!(a["match"], want_match, "{a}");
            assert_eq!(a["processes"].as_array().unwrap().len(), 1, "{a}");
            assert_eq!(a["processes"][0]["pid"], pid, "{a}");
            assert_eq!(a["processes"][0]["ok"], true, "{a}");
        }
        let add = find(host, "logpoint.add", "done")[0];
        assert_eq!(add["args"]["id"], lp_id.as_str(), "{add}");
        assert_eq!(add["args"]["template"], TEMPLATE, "{add}");
        assert_eq!(add["args"]["location"], location.as_str(), "{add}");
        // The agent's own audit log names the command and who sent it.
        let local = std::fs::read_to_string(c.dir.path().join(format!("audit-{host}.jsonl")))
            .unwrap_or_default();
        let begins: Vec<Value> = local
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["phase"] == "begin")
            .collect();
        assert_eq!(begins.len(), 2, "{host}: {local}");
        assert!(
            begins
                .iter()
                .all(|r| r["what"]["origin"]["who"] == "alice" && r["pid"] == pid),
            "{host}: {local}"
        );
    }
    // h3 never ran anything: its agent's audit log was never written.
    assert!(!c.dir.path().join("audit-h3.jsonl").exists());
    // The services kept serving and none of them exited.
    for (host, p) in &mut c.services {
        assert!(p.try_status().is_none(), "the service on {host} exited");
    }
}

/// An aggregator on loopback with `args` added; returns it and its address.
fn aggregator(dir: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(TRACER);
    cmd.args(["aggregator", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.join("data"))
        .arg("--token-file")
        .arg(dir.join("token"))
        .args(extra)
        .stdout(Stdio::null());
    let mut p = Proc::spawn("aggregator", cmd, false);
    let line = p
        .stderr
        .wait_for("the aggregator's address", Duration::from_secs(30), |l| {
            l.contains("listening on http://")
        });
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (p, addr)
}

/// What `tracer ARGS` prints on stderr, and that it failed.
fn fails(args: &[&str]) -> String {
    let out = Command::new(TRACER)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("running tracer");
    assert!(!out.status.success(), "tracer {} succeeded", args.join(" "));
    stderr_of(&out)
}

/// Refusals that need no cluster: a control API that is off, an admin
/// token equal to the ingest token, control over plain HTTP beyond this
/// machine (aggregator and agent), and a host that takes a command but
/// never answers (reported by name when --wait runs out).
#[test]
fn control_is_refused_without_its_preconditions() {
    if !require_root("cluster_control") {
        return;
    }
    let dir = TempDir::new("cluster-control-refusals");
    let d = dir.path();
    std::fs::write(d.join("token"), TOKEN).unwrap();
    std::fs::write(d.join("admin-token"), ADMIN).unwrap();
    std::fs::write(d.join("same"), TOKEN).unwrap();
    let path = |f: &str| d.join(f).display().to_string();

    // Off without --admin-token-file.
    let (mut agg, addr) = aggregator(d, &[]);
    let url = format!("http://{addr}");
    let err = fails(&[
        "logpoint",
        "list",
        "--aggregator",
        &url,
        "--admin-token-file",
        &path("admin-token"),
    ]);
    assert_eq!(
        err,
        "error: the aggregator refused the command (503 Service Unavailable): the control API \
         is disabled on this aggregator: start it with --admin-token-file FILE \
         (docs/logpoints.md)\n"
    );
    agg.signal(libc::SIGTERM);
    agg.wait_exit(Duration::from_secs(10));

    // The admin token must be another secret than the ingest token.
    let err = fails(&[
        "aggregator",
        "--listen",
        "127.0.0.1:0",
        "--data",
        &path("data2"),
        "--token-file",
        &path("token"),
        "--admin-token-file",
        &path("same"),
    ]);
    assert!(
        err.contains("an admin token equals the ingest token"),
        "{err}"
    );
    // Not on a network address without TLS.
    let err = fails(&[
        "aggregator",
        "--listen",
        "0.0.0.0:0",
        "--data",
        &path("data3"),
        "--token-file",
        &path("token"),
        "--admin-token-file",
        &path("admin-token"),
    ]);
    assert!(
        err.contains("without TLS") && err.contains("--tls-cert"),
        "{err}"
    );
    // An agent with --allow-control refuses plain HTTP to another machine,
    // before it loads anything.
    let err = fails(&[
        "agent",
        "--allow-control",
        "--aggregator",
        "http://192.0.2.1:7878",
        "--token-file",
        &path("token"),
        "--spool",
        &path("spool"),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    assert!(
        err.contains("refusing to carry control commands over plain HTTP")
            && err.contains("--tls-cert"),
        "{err}"
    );

    // A host that takes the command (polls) but never answers.
    let (_agg, addr) = aggregator(d, &["--admin-token-file", &path("admin-token")]);
    let url = format!("http://{addr}");
    let poller = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "GET /v1/control/poll?host=mute HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer {TOKEN}\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        raw
    });
    thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let err = fails(&[
        "eval",
        "--aggregator",
        &url,
        "--admin-token-file",
        &path("admin-token"),
        "--wait",
        "2s",
        "--timeout",
        "1s",
        "1 + 1",
    ]);
    let took = started.elapsed();
    let polled = poller.join().unwrap();
    assert!(
        polled.starts_with("HTTP/1.1 200") && polled.contains(r#""op":"eval""#),
        "the poll got the command: {polled}"
    );
    let first = err.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        "error: host mute: no answer from host mute within 2s (its agent may be busy, stuck \
         or gone; the command may still run there)"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl (Debian: openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ca.pem/ca.key and server.pem/server.key for 127.0.0.1, signed by it.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=tracer control CA",
    ];
    a.extend(ec);
    a.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&a, dir);
    let mut a = vec!["req", "-subj", "/CN=aggregator"];
    a.extend(ec);
    a.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&a, dir);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ],
        dir,
    );
}

/// `name.pem`/`name.key`: a client certificate issued by ca.pem.
fn client_certificate(dir: &Path, name: &str) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let subj = format!("/CN={name}");
    openssl(
        &[
            "req",
            "-subj",
            &subj,
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
        dir,
    );
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-extfile",
            "client.ext",
        ],
        dir,
    );
}

/// What the TLS tests share: a directory with the certificates
/// ([`certificates`], plus client ones named in `clients`) and the tokens,
/// a node target that prints READY (`globalThis.answer` is 21), and an
/// aggregator with the control API and `tls_args` (paths relative to the
/// directory). Field order is drop order.
struct TlsSetup {
    _aggregator: Proc,
    target: Proc,
    /// The aggregator's `https://` address.
    url: String,
    name: String,
    dir: TempDir,
}

impl TlsSetup {
    fn start(name: &str, clients: &[&str], tls_args: &[&str]) -> Self {
        let dir = TempDir::new(&format!("cluster-control-{name}"));
        let d = dir.path();
        certificates(d);
        for client in clients {
            client_certificate(d, client);
        }
        std::fs::write(d.join("token"), TOKEN).unwrap();
        std::fs::write(d.join("admins"), format!("ops:{ADMIN}\n")).unwrap();
        std::fs::write(d.join("admin-token"), ADMIN).unwrap();
        let script = d.join(format!("ctl-{name}-target.js"));
        std::fs::write(
            &script,
            "globalThis.answer = 21;\nsetInterval(() => {}, 1000);\nconsole.log('READY');\n",
        )
        .unwrap();
        let mut cmd = Command::new(NODE);
        cmd.arg(&script);
        let mut target = Proc::spawn("target", cmd, true);
        target
            .stdout
            .as_mut()
            .unwrap()
            .wait_for("READY", Duration::from_secs(15), |l| l == "READY");

        let mut cmd = Command::new(TRACER);
        cmd.args(["aggregator", "--listen", "127.0.0.1:0", "--data", "data"])
            .args(["--token-file", "token", "--admin-token-file", "admins"])
            .args(tls_args)
            .current_dir(d)
            .stdout(Stdio::null());
        let mut aggregator = Proc::spawn("aggregator", cmd, false);
        let line =
            aggregator
                .stderr
                .wait_for("the aggregator's address", Duration::from_secs(30), |l| {
                    l.contains("listening on https://")
                });
        if tls_args.contains(&"--tls-client-ca") {
            assert!(line.contains("client certificates required"), "{line}");
        }
        let url = format!(
            "https://{}",
            line.split("https://")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
        );
        TlsSetup {
            _aggregator: aggregator,
            target,
            url,
            name: name.to_owned(),
            dir,
        }
    }

    /// `tracer agent --allow-control` on the target as `host`, with
    /// `tls_args` (paths relative to the directory), not yet waited for.
    fn agent(&self, host: &str, tls_args: &[&str]) -> Proc {
        let d = self.dir.path();
        let mut cmd = Command::new(TRACER);
        cmd.args(["agent", "--quiet", "--host", host, "--match"])
            .arg(self.target_name())
            .args(["--aggregator", &self.url, "--token-file", "token"])
            .args(tls_args)
            .arg("--allow-control")
            .arg("--spool")
            .arg(d.join(format!("spool-{host}")))
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("TRACER_AUDIT_LOG", d.join(format!("audit-{host}.jsonl")))
            .current_dir(d)
            .stdout(Stdio::null());
        Proc::spawn(&format!("agent {host}"), cmd, false)
    }

    /// What `--match` finds the target by (its script's name).
    fn target_name(&self) -> String {
        format!("ctl-{}-target", self.name)
    }

    /// A control command run (in the directory) until the agents' first
    /// poll has arrived: before it, no host takes commands.
    fn once_agents_poll(&self, args: &[&str]) -> Output {
        let run = || {
            Command::new(TRACER)
                .args(args)
                .current_dir(self.dir.path())
                .stdin(Stdio::null())
                .output()
                .expect("running tracer")
        };
        let deadline = Instant::now() + SETTLE;
        loop {
            let out = run();
            if out.status.success() || Instant::now() > deadline {
                return out;
            }
            assert!(
                stderr_of(&out)
                    .contains("no agent takes commands: start agents with --allow-control"),
                "{}",
                stderr_of(&out)
            );
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// The target survived, and its inspector port is closed again.
    fn assert_target_as_found(&mut self) {
        assert!(
            !listening_in_netns_of(self.target.pid(), INSPECTOR_PORT),
            "the inspector port stayed open"
        );
        assert!(self.target.try_status().is_none(), "the target exited");
    }
}

/// Mutual TLS end to end: an aggregator with --tls-client-ca, an agent
/// with --allow-control presenting its certificate (ingest and the control
/// poll), and `tracer logpoint list --aggregator https://...` presenting
/// the admin's: it lists the (no) logpoints of the node process the agent
/// traces. Without --client-cert the CLI is told which flag to give, and
/// so is an agent (in its log).
#[test]
fn logpoint_list_through_a_mutual_tls_aggregator() {
    if !require_root("cluster_control") {
        return;
    }
    let mut setup = TlsSetup::start(
        "mtls",
        &["agent", "admin"],
        &[
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
            "--tls-client-ca",
            "ca.pem",
        ],
    );
    let url = setup.url.clone();
    let target = setup.target_name();
    let mut agent = setup.agent(
        "mtls-host",
        &[
            "--ca-cert",
            "ca.pem",
            "--client-cert",
            "agent.pem",
            "--client-key",
            "agent.key",
        ],
    );
    agent
        .stderr
        .wait_for("tracer: ready", Duration::from_secs(90), |l| {
            l == "tracer: ready"
        });

    let list = [
        "logpoint",
        "list",
        "--aggregator",
        &url,
        "--admin-token-file",
        "admin-token",
        "--ca-cert",
        "ca.pem",
        "--match",
        &target,
    ];
    let out = setup.once_agents_poll(
        &[
            &list[..],
            &["--client-cert", "admin.pem", "--client-key", "admin.key"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "[mtls-host] PID {}: 0 logpoint(s) (inspector opened with SIGUSR1 and closed \
             again)\n",
            setup.target.pid()
        )
    );
    assert!(
        stderr_of(&out).contains(" by ops: 1 host(s), 1 process(es), 0 failed"),
        "{}",
        stderr_of(&out)
    );
    let out = Command::new(TRACER)
        .args(list)
        .current_dir(setup.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr_of(&out),
        format!(
            "error: the aggregator at {url} requires a client certificate (it runs with \
             --tls-client-ca): give --client-cert FILE --client-key FILE, a certificate issued \
             by that CA and its key\n"
        )
    );
    // An agent without its certificate is told the same, in its log.
    let mut no_cert = setup.agent("no-cert-host", &["--ca-cert", "ca.pem"]);
    let told = no_cert
        .stderr
        .wait_for("the agent's control error", Duration::from_secs(90), |l| {
            l.starts_with("tracer: control: ")
        });
    assert_eq!(
        told,
        format!(
            "tracer: control: the aggregator at {url} requires a client certificate (it runs \
             with --tls-client-ca): give --client-cert FILE --client-key FILE, a certificate \
             issued by that CA and its key; retrying"
        )
    );
    no_cert.signal(libc::SIGTERM);
    no_cert.wait_exit(Duration::from_secs(30));
    setup.assert_target_as_found();
}

/// The whole path over HTTPS: an aggregator with --tls-cert, an agent
/// trusting it with --ca-cert and --allow-control, and `tracer eval
/// --aggregator https://...` evaluating in a node process the agent traces.
#[test]
fn eval_through_an_https_aggregator() {
    if !require_root("cluster_control") {
        return;
    }
    let mut setup = TlsSetup::start(
        "tls",
        &[],
        &["--tls-cert", "server.pem", "--tls-key", "server.key"],
    );
    let url = setup.url.clone();
    let target = setup.target_name();
    let mut agent = setup.agent("tls-host", &["--ca-cert", "ca.pem"]);
    agent
        .stderr
        .wait_for("tracer: ready", Duration::from_secs(90), |l| {
            l == "tracer: ready"
        });

    let out = setup.once_agents_poll(&[
        "eval",
        "--aggregator",
        &url,
        "--admin-token-file",
        "admin-token",
        "--ca-cert",
        "ca.pem",
        "--match",
        &target,
        "globalThis.answer * 2",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("[tls-host] PID {}: 42\n", setup.target.pid())
    );
    assert!(
        stderr_of(&out).contains(" by ops: 1 host(s), 1 process(es), 0 failed"),
        "{}",
        stderr_of(&out)
    );
    // Without trusting the CA, the CLI does not talk to it.
    let out = Command::new(TRACER)
        .args(["eval", "--aggregator", &url, "--admin-token-file"])
        .arg(setup.dir.path().join("admin-token"))
        .arg("1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains(&format!(
            "error: the aggregator at {url} presented a TLS certificate this client does not \
             trust"
        )) && stderr_of(&out).contains("(give --ca-cert CA.pem for a private CA)"),
        "{}",
        stderr_of(&out)
    );
    setup.assert_target_as_found();
}
