//! A real Prometheus server scrapes `tracer_user::metrics::serve` and its
//! query API returns exactly the counts fed as events. Needs no root; needs
//! the `prometheus` binary from Debian (`cargo xtask bootstrap` installs it).

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tracer_user::{
    event::{Event, EventData, HttpExchange, HttpSide, StreamName, Tuple},
    metrics::{Metrics, serve},
};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const HOST: &str = "agent-test-host";
const PID: u32 = 4242;
/// How long Prometheus may take to start and scrape the expected values.
const DEADLINE: Duration = Duration::from_secs(90);

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// A Prometheus server and its temporary directory; killed and removed on drop.
struct PrometheusServer {
    child: Child,
    dir: PathBuf,
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("killing prometheus: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("waiting for prometheus: {e}");
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

impl PrometheusServer {
    fn start(target: SocketAddr, web: SocketAddr) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: run `cargo xtask bootstrap` (it installs Debian's prometheus package)"
        );
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "tracer-agent-prometheus-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(dir.join("data")).expect("creating the temp dir");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("writing prometheus.yml");
        let log = fs::File::create(dir.join("prometheus.log")).expect("creating prometheus.log");
        let log2 = log.try_clone().expect("cloning the log handle");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PROMETHEUS}: {e}"));
        PrometheusServer { child, dir }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// A plain HTTP/1.0 GET (the server closes the connection, no chunking).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn ev(data: EventData) -> Event {
    Event {
        ts_ns: 1_764_200_000_000_000_000,
        host: HOST.into(),
        pid: PID,
        tid: PID,
        comm: "node".into(),
        data,
    }
}

fn request(method: &str, path: &str, status: u16) -> Event {
    ev(EventData::Http(Box::new(HttpExchange {
        side: HttpSide::Server,
        method: method.into(),
        path: path.into(),
        status,
        duration_ns: 3_000_000,
        req_bytes: 80,
        resp_bytes: 120,
        tuple: Tuple {
            saddr: "127.0.0.1".parse().unwrap(),
            sport: 3000,
            daddr: "127.0.0.1".parse().unwrap(),
            dport: 40000,
        },
        tls: false,
        req_id: "r".into(),
        parent_req_id: None,
        traceparent: None,
        request_id: None,
        complete: true,
        req_body: None,
        resp_body: None,
    })))
}

/// (method, status_class, route) -> value, from a query API answer; panics
/// on series without the expected process labels.
fn counts(body: &str) -> Option<BTreeMap<(String, String, String), f64>> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    if v["status"] != "success" {
        return None;
    }
    let mut out = BTreeMap::new();
    for r in v["data"]["result"].as_array()? {
        let m = &r["metric"];
        let label = |k: &str| m[k].as_str().unwrap_or_default().to_string();
        assert_eq!(label("host"), HOST, "{r}");
        assert_eq!(label("pid"), PID.to_string(), "{r}");
        assert_eq!(label("comm"), "node", "{r}");
        assert_eq!(label("side"), "server", "{r}");
        assert_eq!(label("job"), "tracer", "{r}");
        let value: f64 = r["value"][1].as_str()?.parse().ok()?;
        out.insert(
            (label("method"), label("status_class"), label("route")),
            value,
        );
    }
    Some(out)
}

#[test]
fn prometheus_scrapes_exact_counts() {
    let metrics = Arc::new(Metrics::new());
    for i in 0..7 {
        metrics.observe(&request(
            "GET",
            &format!("/users/{}?session=s{i}", 100 + i),
            200,
        ));
    }
    metrics.observe(&request("POST", "/orders", 503));
    metrics.observe(&request("POST", "/orders?retry=1", 500));
    metrics.observe(&ev(EventData::Log {
        stream: StreamName::Stdout,
        path: None,
        text: "listening".into(),
        truncated: false,
        req_id: None,
    }));

    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let endpoint = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(serve(endpoint, Arc::clone(&metrics), async {
        _ = stop_rx.await;
    }));

    let web = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut prometheus = PrometheusServer::start(endpoint, web);

    let want: BTreeMap<(String, String, String), f64> = [
        (("GET", "2xx", "/users/:id"), 7.0),
        (("POST", "5xx", "/orders"), 2.0),
    ]
    .into_iter()
    .map(|((m, c, r), v)| ((m.to_string(), c.to_string(), r.to_string()), v))
    .collect();
    let started = Instant::now();
    let mut last;
    loop {
        match http_get(web, "/api/v1/query?query=tracer_http_requests_total") {
            Ok((200, body)) => {
                if counts(&body).as_ref() == Some(&want) {
                    break;
                }
                last = body;
            }
            Ok((status, body)) => last = format!("HTTP {status}: {body}"),
            Err(e) => last = format!("no answer: {e}"),
        }
        if let Ok(Some(status)) = prometheus.child.try_wait() {
            panic!(
                "prometheus exited ({status}); its log:\n{}",
                prometheus.log_tail()
            );
        }
        assert!(
            started.elapsed() < DEADLINE,
            "prometheus did not report {want:?} within {DEADLINE:?}; last answer: {last}\n\
             prometheus log:\n{}",
            prometheus.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // The scrape target is healthy, and the series count matches what was fed.
    let (_, targets) = http_get(web, "/api/v1/targets").expect("targets API");
    let t: serde_json::Value = serde_json::from_str(&targets).expect("targets JSON");
    assert_eq!(t["data"]["activeTargets"][0]["health"], "up", "{targets}");
    let (_, lines) = http_get(
        web,
        "/api/v1/query?query=tracer_log_lines_total%7Bstream%3D%22stdout%22%7D",
    )
    .expect("query API");
    let v: serde_json::Value = serde_json::from_str(&lines).expect("query JSON");
    assert_eq!(v["data"]["result"][0]["value"][1], "1", "{lines}");

    // The agent stops promptly while Prometheus still holds its keep-alive
    // scrape connection.
    stop_tx
        .send(())
        .expect("the metrics server is still running");
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), server).await })
        .expect("serve did not stop on shutdown while being scraped")
        .expect("serve task panicked")
        .expect("serve returned an error");
    drop(prometheus);
}
