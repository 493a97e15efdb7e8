//! Shared helpers for the unprivileged tests that drive a real `tracer
//! aggregator`: starting it on a free loopback port, a data directory with a
//! token file, and a minimal HTTP/1.1 client for its API.

#![allow(
    dead_code,
    reason = "each test binary compiles this module and uses a different part of it"
)]

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub const TRACER: &str = env!("CARGO_BIN_EXE_tracer");
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A running aggregator; killed on drop.
pub struct Aggregator {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        // It may have been killed already by the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Aggregator {
    /// Starts `tracer aggregator --listen 127.0.0.1:0` and waits for the
    /// address it prints.
    pub fn start(data: &Path, token_file: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(TRACER)
            .args(["aggregator", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .arg("--token-file")
            .arg(token_file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tracer aggregator");
        let stderr = child.stderr.take().expect("aggregator stderr");
        let addr = wait_for_address(stderr);
        Self { child, addr }
    }

    /// Starts `tracer aggregator --listen 127.0.0.1:0 ARGS...` (a store
    /// other than `--data`, for instance).
    pub fn start_with(args: &[&str]) -> Self {
        let mut child = Command::new(TRACER)
            .args(["aggregator", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tracer aggregator");
        let stderr = child.stderr.take().expect("aggregator stderr");
        let addr = wait_for_address(stderr);
        Self { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for it to be gone.
    /// Sends SIGTERM; whether the aggregator exited within `limit`.
    pub fn terminate_within(&mut self, limit: std::time::Duration) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads stderr up to `listening on http://ADDR`, then keeps draining it
/// (echoed to the test's stderr) so the aggregator never blocks on it.
fn wait_for_address(stderr: ChildStderr) -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[aggregator] {line}");
            if !sent && let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(addr);
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the aggregator did not print its address within 30 s");
    addr.parse().expect("the printed address parses")
}

/// A temporary directory (the aggregator's data and token file), removed
/// when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("tracer-agg-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A file holding [`TOKEN`], readable by its owner only (the aggregator
    /// warns about a token file others can read).
    pub fn token_file(&self) -> PathBuf {
        let p = self.0.join("token");
        fs::write(&p, format!("{TOKEN}\n")).unwrap();
        fs::set_permissions(
            &p,
            <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )
        .unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
    }
}

/// The `Authorization` header value for [`TOKEN`].
pub fn auth() -> String {
    format!("Bearer {TOKEN}")
}

/// A minimal HTTP/1.1 exchange (Connection: close): status and body, with
/// chunked bodies decoded.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    try_http(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connecting: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // The server may answer (413, 401) before reading everything: a failed
    // write still leaves its answer to read.
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|()| s.write_all(body));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head in {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// `tracer tail -f` through `agg` with `extra` options, once it follows,
/// and its stdout lines as they come (with when).
pub fn follow(
    agg: &Aggregator,
    token: &Path,
    extra: &[&str],
) -> (std::process::Child, mpsc::Receiver<(Instant, String)>) {
    let mut child = Command::new(TRACER)
        .args(["tail", "-f"])
        .args(extra)
        .arg("--aggregator")
        .arg(agg.url())
        .arg("--token-file")
        .arg(token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[tail] {line}");
            if line.contains("following") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("tail -f did not start following");
    let stdout = child.stdout.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send((Instant::now(), line));
        }
    });
    (child, line_rx)
}

/// The next `n` lines of a follower (`follow`), within 10 s each, and then
/// no more for half a second.
pub fn exactly_lines(rx: &mpsc::Receiver<(Instant, String)>, n: usize, what: &str) -> Vec<String> {
    let got: Vec<String> = (0..n)
        .map(|i| {
            rx.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{what} printed {i} lines, not {n}"))
                .1
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    if let Ok((_, more)) = rx.try_recv() {
        panic!("{what} printed more than {n} lines: {got:?}, then {more:?}");
    }
    got
}
