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
use tracer_user::event::{Event, EventData, StreamName};

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
            let mut a = vec!["req", "-x509", "-days", "1", "-subj", "/CN=tracer test CA"];
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

#[test]
fn https_and_client_certificates() {
    let tmp = TempDir::new("tls");
    let dir: PathBuf = tmp.path().to_path_buf();
    tmp.token_file();
    cert(&dir, "ca", None, "");
    cert(&dir, "other-ca", None, "");
    cert(
        &dir,
        "server",
        Some("ca"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    cert(&dir, "agent", Some("ca"), "extendedKeyUsage=clientAuth\n");
    cert(
        &dir,
        "rogue",
        Some("other-ca"),
        "extendedKeyUsage=clientAuth\n",
    );

    let agg = start(
        &dir,
        &[
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
            "--tls-client-ca",
            "ca.pem",
        ],
    );
    assert!(agg.url.starts_with("https://127.0.0.1:"), "{}", agg.url);

    // The agent's forwarder, trusting the CA and presenting its certificate.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked = rt.block_on(async {
        let (handle, task) = tracer_user::forward::start(
            tracer_user::forward::ForwardConfig {
                url: agg.url.clone(),
                token: TOKEN.into(),
                host: "agent-1".into(),
                spool_dir: dir.join("spool"),
                spool_max_bytes: 1 << 30,
                ca_cert: Some(dir.join("ca.pem")),
                client_cert: Some((dir.join("agent.pem"), dir.join("agent.key"))),
            },
            Duration::from_secs(20),
        )
        .unwrap();
        let t0 = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        for i in 0..50 {
            handle.push(&log(i, t0));
        }
        let stats = handle.stats.clone();
        drop(handle);
        task.await.unwrap();
        stats
            .acked_batches
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    assert!(acked >= 1);

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
