//! TLS on the aggregator's own listener: certificates made with `openssl`
//! (a CA, a server certificate for 127.0.0.1, client certificates from
//! that CA and from another), the real `tracer aggregator` with
//! --tls-cert/--tls-key and --tls-client-ca, the agent's forwarder with
//! --ca-cert and a client certificate, and curl. Unprivileged.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aggregator_common::{TOKEN, TRACER, TempDir};
use tracer_user::{
    client_tls::ClientTls,
    event::{Event, EventData, StreamName},
};

mod aggregator_common;

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

/// `name.pem`/`name.key`: a CA (no `ca`), or a certificate `ca` signed
/// with extensions `ext`.
fn cert(dir: &Path, name: &str, ca: Option<&str>, ext: &str) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    match ca {
        None => {
            let subj = format!("/CN=tracer test {name}");
            let mut a = vec!["req", "-x509", "-days", "1", "-subj", &subj];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &pem]);
            openssl(&a, dir);
        }
        Some(ca) => {
            let csr = format!("{name}.csr");
            let subj = format!("/CN={name}");
            let mut a = vec!["req", "-subj", &subj];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &csr]);
            openssl(&a, dir);
            let extfile = format!("{name}.ext");
            std::fs::write(dir.join(&extfile), ext).unwrap();
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            openssl(
                &[
                    "x509",
                    "-req",
                    "-days",
                    "1",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_pem,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-extfile",
                    &extfile,
                ],
                dir,
            );
        }
    }
}

struct Tls {
    child: Child,
    url: String,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, extra: &[&str]) -> Tls {
    let mut child = Command::new(TRACER)
        .args(["aggregator", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.join("data"))
        .arg("--token-file")
        .arg(dir.join("token"))
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[aggregator] {line}");
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the aggregator did not start");
    Tls { child, url }
}

fn curl(dir: &Path, url: &str, extra: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", "ca.pem", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .args(extra)
        .arg(url)
        .current_dir(dir)
        .output()
        .expect("running curl")
}

fn log(i: u64, t0: u64) -> Event {
    Event {
        ts_ns: t0 + i,
        host: "agent-1".into(),
        pid: 7,
        tid: 7,
        comm: "node".into(),
        data: EventData::Log {
            stream: StreamName::Stdout,
            path: None,
            text: format!("line {i}"),
            truncated: false,
            req_id: None,
        },
    }
}

/// A CA, another CA, a server certificate for 127.0.0.1 and client
/// certificates from each CA (`agent`: ours, `rogue`: the other's).
fn certificates(dir: &Path) {
    cert(dir, "ca", None, "");
    cert(dir, "other-ca", None, "");
    cert(
        dir,
        "server",
        Some("ca"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    cert(dir, "agent", Some("ca"), "extendedKeyUsage=clientAuth\n");
    cert(
        dir,
        "rogue",
        Some("other-ca"),
        "extendedKeyUsage=clientAuth\n",
    );
}

/// The client TLS options of an agent of `ca` with the `agent` certificate.
fn agent_tls(dir: &Path) -> ClientTls {
    ClientTls {
        ca_cert: Some(dir.join("ca.pem")),
        client_cert: Some(dir.join("agent.pem")),
        client_key: Some(dir.join("agent.key")),
    }
}

/// Sends `events` through the agent's forwarder (trusting the CA,
/// presenting its certificate); returns the batches acknowledged.
fn forward(url: &str, dir: &Path, events: &[Event]) -> u64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (handle, task) = tracer_user::forward::start(
            tracer_user::forward::ForwardConfig {
                url: url.to_owned(),
                token: TOKEN.into(),
                host: "agent-1".into(),
                spool_dir: dir.join("spool"),
                spool_max_bytes: 1 << 30,
                tls: agent_tls(dir),
            },
            Duration::from_secs(20),
        )
        .unwrap();
        for e in events {
            handle.push(e);
        }
        let stats = handle.stats.clone();
        drop(handle);
        task.await.unwrap();
        stats
            .acked_batches
            .load(std::sync::atomic::Ordering::Relaxed)
    })
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

const TLS_CLIENT_CA: [&str; 6] = [
    "--tls-cert",
    "server.pem",
    "--tls-key",
    "server.key",
    "--tls-client-ca",
    "ca.pem",
];

#[test]
fn https_and_client_certificates() {
    let tmp = TempDir::new("tls");
    let dir: PathBuf = tmp.path().to_path_buf();
    tmp.token_file();
    certificates(&dir);

    let agg = start(&dir, &TLS_CLIENT_CA);
    assert!(agg.url.starts_with("https://127.0.0.1:"), "{}", agg.url);

    // The agent's forwarder, trusting the CA and presenting its certificate.
    let t0 = now_ns();
    let sent: Vec<Event> = (0..50).map(|i| log(i, t0)).collect();
    assert!(forward(&agg.url, &dir, &sent) >= 1);

    let events = format!("{}/v1/events?since=0", agg.url);
    let ok = curl(
        &dir,
        &events,
        &["--cert", "agent.pem", "--key", "agent.key"],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let body = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(body.lines().count(), 50, "{body}");
    assert!(body.lines().next().unwrap().contains(r#""text":"line 0""#));
    // No client certificate, or one from another CA: no connection.
    for extra in [&[][..], &["--cert", "rogue.pem", "--key", "rogue.key"][..]] {
        let refused = curl(&dir, &events, extra);
        assert!(
            !refused.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&refused.stdout)
        );
        assert!(refused.stdout.is_empty());
    }
    // Plain HTTP to the TLS port gets no answer.
    let plain = curl(&dir, &events.replace("https://", "http://"), &[]);
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("line 0"));
    drop(agg);

    // TLS without client certificates: any client that trusts the CA.
    let agg = start(
        &dir,
        &["--tls-cert", "server.pem", "--tls-key", "server.key"],
    );
    let ok = curl(&dir, &format!("{}/v1/events?since=0", agg.url), &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).lines().count(), 50);
    // A key that is not the certificate's is refused at start.
    let out = Command::new(TRACER)
        .args(["aggregator", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.join("data2"))
        .arg("--token-file")
        .arg(dir.join("token"))
        .args(["--tls-cert", "server.pem", "--tls-key", "agent.key"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("do not make a usable pair"), "{msg}");
}

/// `tracer ARGS` run in `dir` (so the certificate paths are as typed).
fn tracer(dir: &Path, args: &[&str]) -> Output {
    Command::new(TRACER)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running tracer")
}

/// What a failed `tracer ARGS` printed on stderr (it must have failed).
fn fails(dir: &Path, args: &[&str]) -> String {
    let out = tracer(dir, args);
    assert!(
        !out.status.success(),
        "tracer {} succeeded: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn events_of(out: &Output) -> Vec<Event> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The first `n` lines `tracer tail -f ARGS` prints, then it is killed;
/// and its stderr up to then.
fn tail_follow(dir: &Path, args: &[&str], n: usize) -> Vec<String> {
    let mut child = Command::new(TRACER)
        .args(["tail", "-f"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while lines.len() < n {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    // Still following: nothing ended it but this kill.
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        still_running && lines.len() == n,
        "tail -f printed {lines:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines
}

/// Every client of the aggregator but the agent, over mutual TLS, with
/// the shared options (--ca-cert, --client-cert/--client-key): `tracer
/// grep`, `timeline` and `tail -f` return exactly the events the agent's
/// forwarder sent; `tracer logpoint list --aggregator` reaches an agent
/// (the agent's own control code, in this process, polling over mutual
/// TLS) and prints its exact answer. Without the client certificate,
/// without --ca-cert, with another CA's certificate or with a file that
/// is not there, each fails with the sentence that names the fix.
/// Unprivileged (the agent's control code runs here without BPF; the
/// command selects no process).
#[test]
fn cli_clients_over_mutual_tls() {
    const ADMIN: &str = "tls-cli-admin-token-0123456789";
    let tmp = TempDir::new("tls-cli");
    let dir: PathBuf = tmp.path().to_path_buf();
    tmp.token_file();
    certificates(&dir);
    cert(&dir, "admin", Some("ca"), "extendedKeyUsage=clientAuth\n");
    std::fs::write(dir.join("admins"), format!("ops:{ADMIN}\n")).unwrap();
    std::fs::set_permissions(
        dir.join("admins"),
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(dir.join("admin-token"), format!("{ADMIN}\n")).unwrap();
    let mut extra = TLS_CLIENT_CA.to_vec();
    extra.extend(["--admin-token-file", "admins"]);
    let agg = start(&dir, &extra);
    let url = agg.url.clone();

    let t0 = now_ns();
    let sent: Vec<Event> = (0..50).map(|i| log(i, t0)).collect();
    assert!(forward(&url, &dir, &sent) >= 1);

    let conn = [
        "--aggregator",
        url.as_str(),
        "--token-file",
        "token",
        "--ca-cert",
        "ca.pem",
        "--client-cert",
        "admin.pem",
        "--client-key",
        "admin.key",
    ];
    let with = |cmd: &[&str], conn: &[&str]| -> Vec<String> {
        cmd.iter().chain(conn).map(|s| s.to_string()).collect()
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tracer(&dir, &args)
    };

    // grep, timeline, tail -f: the exact events.
    let grep = ["grep", "^line", "--since", "0", "--json"];
    assert_eq!(events_of(&run(&with(&grep, &conn))), sent);
    let count = run(&with(&["grep", "-c", "^line 4"], &conn));
    assert_eq!(String::from_utf8_lossy(&count.stdout), "11\n");
    let timeline = ["timeline", "--since", "0", "--json"];
    assert_eq!(events_of(&run(&with(&timeline, &conn))), sent);
    let tail_args: Vec<&str> = ["-n", "5", "--json"].iter().copied().chain(conn).collect();
    let tailed: Vec<Event> = tail_follow(&dir, &tail_args, 5)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tailed, sent[45..]);

    // The failures, each naming its fix.
    let no_client_cert = format!(
        "error: the aggregator at {url} requires a client certificate (it runs with \
         --tls-client-ca): give --client-cert FILE --client-key FILE, a certificate issued by \
         that CA and its key\n"
    );
    let ca_only = &conn[..6];
    for cmd in [&grep[..], &timeline[..], &["tail", "-f", "-n", "5"][..]] {
        let args: Vec<&str> = cmd.iter().chain(ca_only).copied().collect();
        assert_eq!(fails(&dir, &args), no_client_cert, "{cmd:?}");
    }
    let untrusted = format!(
        "error: the aggregator at {url} presented a TLS certificate this client does not \
         trust: invalid peer certificate: UnknownIssuer (give --ca-cert CA.pem for a private \
         CA)\n"
    );
    let no_ca: Vec<&str> = conn[..4].iter().chain(&conn[6..]).copied().collect();
    let args: Vec<&str> = grep.iter().chain(&no_ca).copied().collect();
    assert_eq!(fails(&dir, &args), untrusted);
    let other_ca: Vec<&str> = conn[..5]
        .iter()
        .chain(&["other-ca.pem"])
        .chain(&conn[6..])
        .copied()
        .collect();
    let args: Vec<&str> = grep.iter().chain(&other_ca).copied().collect();
    assert_eq!(
        fails(&dir, &args),
        format!(
            "error: the aggregator at {url} presented a TLS certificate this client does not \
             trust: invalid peer certificate: UnknownIssuer (--ca-cert other-ca.pem is not the \
             CA that issued it; give that one)\n"
        )
    );
    let rogue: Vec<&str> = conn[..6]
        .iter()
        .chain(&["--client-cert", "rogue.pem", "--client-key", "rogue.key"])
        .copied()
        .collect();
    let args: Vec<&str> = grep.iter().chain(&rogue).copied().collect();
    assert_eq!(
        fails(&dir, &args),
        format!(
            "error: the aggregator at {url} refused the client certificate rogue.pem \
             (UnknownCA): give --client-cert a certificate issued by the CA of the \
             aggregator's --tls-client-ca, not expired, with its --client-key\n"
        )
    );
    let mismatched: Vec<&str> = conn[..8]
        .iter()
        .chain(&["--client-key", "rogue.key"])
        .copied()
        .collect();
    let args: Vec<&str> = grep.iter().chain(&mismatched).copied().collect();
    assert_eq!(
        fails(&dir, &args),
        "error: --client-key rogue.key is not the private key of --client-cert admin.pem\n"
    );
    let missing: Vec<&str> = conn[..6]
        .iter()
        .chain(&["--client-cert", "missing.pem", "--client-key", "admin.key"])
        .copied()
        .collect();
    let args: Vec<&str> = timeline.iter().chain(&missing).copied().collect();
    assert_eq!(
        fails(&dir, &args),
        "error: cannot read --client-cert missing.pem: No such file or directory (os error 2)\n"
    );
    // A certificate without its key is a usage error.
    let args: Vec<&str> = grep.iter().chain(&conn[..8]).copied().collect();
    let out = tracer(&dir, &args);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with(
            "error: the following required arguments were not provided:\n  --client-key <FILE>"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Control: the agent's poll over mutual TLS, the CLI over mutual TLS.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _poll = rt
        .block_on(async {
            tracer_user::control::agent::start(tracer_user::control::agent::ControlConfig {
                urls: vec![url.clone()],
                token: TOKEN.into(),
                host: "tls-agent".into(),
                tls: agent_tls(&dir),
                // Selects no process: the command is answered, nothing runs.
                scope: tracer_user::agent::Scope {
                    cmdline: Some(regex::Regex::new("^no such process$").unwrap()),
                    netns: None,
                },
                pids: Vec::new(),
            })
        })
        .unwrap();
    let control = [
        "--aggregator",
        url.as_str(),
        "--admin-token-file",
        "admin-token",
        "--ca-cert",
        "ca.pem",
        "--client-cert",
        "admin.pem",
        "--client-key",
        "admin.key",
    ];
    let list: Vec<&str> = ["logpoint", "list", "--match", "demo"]
        .iter()
        .chain(&control)
        .copied()
        .collect();
    // Until the agent's first poll arrives no host takes commands.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let err = loop {
        let err = fails(&dir, &list);
        if !err.contains("no agent takes commands") || std::time::Instant::now() > deadline {
            break err;
        }
        thread::sleep(Duration::from_millis(250));
    };
    // The host that only forwarded events is left out, by name; the agent
    // that polls answers (its error: the command selects no process).
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert_eq!(
        lines[0],
        "tracer: skipped host agent-1: control not allowed: its agent runs without \
         --allow-control (its events arrive, but it takes no commands)"
    );
    assert_eq!(
        lines[1],
        r#"error: host tls-agent: no node process this agent traces matches "demo""#
    );
    assert!(
        lines[2].starts_with("tracer: command ")
            && lines[2].ends_with(" by ops: 1 host(s), 0 process(es), 1 failed"),
        "{err}"
    );
    assert_eq!(lines[3], "error: 1 of 1 failed");
    // Without the client certificate: the same sentence as the queries'.
    let args: Vec<&str> = list[..list.len() - 4].to_vec();
    assert_eq!(fails(&dir, &args), no_client_cert);
}
