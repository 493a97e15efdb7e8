//! Shared helpers for the root-only integration tests of `tracer attach`.
//!
//! Every test follows the same shape: start a real program first (a node
//! fixture from `tests/fixtures/`), wait until it says `READY` on stderr,
//! attach the tracer, wait for its `tracer: ready` line, and only then send
//! the program `go` on its stdin so that everything the test asserts on
//! happens while the probes are attached. Every wait has a deadline and every
//! child process is killed when its guard is dropped, also when an assertion
//! fails half-way.

#![allow(
    dead_code,
    reason = "each test binary compiles this module and uses a different part of it"
)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

/// Path of the `tracer` binary under test.
pub const TRACER: &str = env!("CARGO_BIN_EXE_tracer");
/// The node the fixtures run on (see shared/TOOLCHAIN.md).
pub const NODE: &str = "/usr/bin/node";

/// How long a fixture may take to print `READY`.
pub const FIXTURE_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the tracer may take to load and attach every probe. It takes
/// well under a second here (`ready after` in its summary); the bound is
/// generous for loaded CI machines yet catches a verifier that walks a
/// program for tens of seconds.
pub const TRACER_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Returns true when the test may run. Loading BPF programs needs root: without
/// it the test is skipped with a plain message, or fails when
/// `TRACER_REQUIRE_ROOT_TESTS=1` says skipping is not acceptable.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    if std::env::var("TRACER_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!(
            "{test}: needs root to load BPF programs (running as uid {euid}), and \
             TRACER_REQUIRE_ROOT_TESTS=1 forbids skipping. Run the tests as root."
        );
    }
    eprintln!("{test}: skipped: needs root to load BPF programs (running as uid {euid})");
    false
}

/// Directory of the node fixture programs.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .canonicalize()
        .expect("tests/fixtures must exist next to tracer-user")
}

/// Shortens a string for a failure message (some lines are 64 KiB long).
pub fn short(s: &str) -> String {
    const MAX: usize = 160;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &s[..end], s.len())
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock is after 1970");
    u64::try_from(d.as_nanos()).expect("time fits in u64")
}

/// This machine's host name, as the events must report it.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname writes at most that
    // many and we only read up to the first NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(rc, 0, "gethostname failed");
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A temporary directory removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir()
            .canonicalize()
            .expect("temp dir exists");
        let path = base.join(format!(
            "tracer-test-{tag}-{}-{n}-{}",
            std::process::id(),
            now_ns()
        ));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Lines read from a child's pipe by a background thread.
pub struct Lines {
    name: String,
    rx: Receiver<String>,
    seen: Vec<String>,
    closed: bool,
}

impl Lines {
    /// Reads `pipe` in a thread. With a `gate`, the thread does not read
    /// until the gate is opened (a message or the sender dropped; at most
    /// two minutes), so the writer meets a full pipe meanwhile.
    fn spawn(
        name: String,
        pipe: impl Read + Send + 'static,
        gate: Option<Receiver<()>>,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            if let Some(gate) = gate {
                let _ = gate.recv_timeout(Duration::from_secs(120));
            }
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if buf.last() == Some(&b'\n') {
                            buf.pop();
                        }
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        (
            Self {
                name,
                rx,
                seen: Vec::new(),
                closed: false,
            },
            handle,
        )
    }

    /// Every line received so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Takes every line already available without waiting.
    pub fn poll(&mut self) {
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line);
        }
    }

    /// Waits until a line matching `pred` arrives and returns it. Panics with
    /// what was seen when the deadline passes or the pipe closes first.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.closed || left.is_zero() {
                let why = if self.closed {
                    "the pipe closed".to_owned()
                } else {
                    format!("{timeout:?} passed")
                };
                panic!(
                    "waiting for {what} on {}: {why} first. Lines seen:\n{}",
                    self.name,
                    self.tail(40)
                );
            }
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.seen.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Reads until the pipe closes (the writer exited) or the deadline passes.
    /// Returns true when the pipe closed.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
        true
    }

    /// The last `n` lines, shortened, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let start = self.seen.len().saturating_sub(n);
        self.seen[start..]
            .iter()
            .map(|l| format!("  | {}", short(l)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<Lines>,
    pub stderr: Lines,
    stdout_gate: Option<mpsc::Sender<()>>,
    status: Option<ExitStatus>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Spawns `cmd` with stdin and stderr piped; stdout is piped unless the
    /// caller already set it (`stdout_piped == false`).
    pub fn spawn(name: &str, cmd: Command, stdout_piped: bool) -> Self {
        Self::spawn_gated(name, cmd, stdout_piped, false)
    }

    /// Like [`Proc::spawn`]; with `gated`, stdout (piped) is not read until
    /// [`Proc::release_stdout`].
    pub fn spawn_gated(name: &str, mut cmd: Command, stdout_piped: bool, gated: bool) -> Self {
        cmd.stdin(Stdio::piped()).stderr(Stdio::piped());
        if stdout_piped {
            cmd.stdout(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        let mut readers = Vec::new();
        let (stdout_gate, gate) = if gated {
            let (tx, rx) = mpsc::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let stdout = child.stdout.take().map(|p| {
            let (lines, h) = Lines::spawn(format!("{name} stdout"), p, gate);
            readers.push(h);
            lines
        });
        let (stderr, h) = Lines::spawn(
            format!("{name} stderr"),
            child.stderr.take().expect("stderr is piped"),
            None,
        );
        readers.push(h);
        Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            stdout_gate,
            status: None,
            readers,
        }
    }

    /// Lets the stdout reader start reading (see [`StdoutTo::GatedPipe`]).
    pub fn release_stdout(&mut self) {
        self.stdout_gate.take();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing {line:?} to {}'s stdin: {e}", self.name));
    }

    /// Sends a signal to the child.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits in pid_t");
        // SAFETY: kill has no memory-safety preconditions; the child is not yet
        // reaped (we hold its Child), so the pid still names it.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed for {}", self.name);
    }

    /// Non-blocking: the exit status if the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name));
        }
        self.status
    }

    /// Waits for the child to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Like [`Proc::wait_exit`] but panics with the child's stderr on timeout.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit(timeout) {
            Some(s) => s,
            None => {
                self.stderr.poll();
                panic!(
                    "{} (pid {}) did not exit within {timeout:?}. Its stderr:\n{}",
                    self.name,
                    self.pid(),
                    self.stderr.tail(40)
                )
            }
        }
    }

    /// Waits for both pipes to reach end-of-file (after the child exited).
    pub fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        if let Some(out) = self.stdout.as_mut() {
            assert!(
                out.wait_closed(timeout),
                "{}'s stdout did not close within {timeout:?}",
                self.name
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            self.stderr.wait_closed(left),
            "{}'s stderr did not close within {timeout:?}",
            self.name
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin.take();
        self.stdout_gate.take();
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The pipes close with the process; the reader threads end on EOF.
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
    }
}

/// How a fixture's stdout is connected.
pub enum StdoutTo {
    /// A pipe read (and kept) by a thread of the test.
    Pipe,
    /// A pipe the test does not read until [`Proc::release_stdout`]: once
    /// the pipe is full, node's writes meet EAGAIN and node queues them.
    GatedPipe,
    /// A regular file (created or truncated).
    File(PathBuf),
}

/// Starts `node [node_args] tests/fixtures/<script> [args]` and waits for its
/// `READY` line on stderr. Returns the process and the rest of the READY line.
pub fn start_node(
    script: &str,
    node_args: &[&str],
    args: &[&str],
    stdout: StdoutTo,
) -> (Proc, String) {
    let mut cmd = Command::new(NODE);
    cmd.args(node_args)
        .arg(fixtures_dir().join(script))
        .args(args);
    let (piped, gated) = match stdout {
        StdoutTo::Pipe => (true, false),
        StdoutTo::GatedPipe => (true, true),
        StdoutTo::File(path) => {
            let f = std::fs::File::create(&path)
                .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
            cmd.stdout(f);
            (false, false)
        }
    };
    let mut p = Proc::spawn_gated(script, cmd, piped, gated);
    let ready = wait_ready_line(&mut p);
    (p, ready)
}

/// Waits for the `READY ...` handshake line of a fixture on its stderr.
pub fn wait_ready_line(p: &mut Proc) -> String {
    let line = p
        .stderr
        .wait_for("the fixture's READY line", FIXTURE_READY_TIMEOUT, |l| {
            l == "READY" || l.starts_with("READY ")
        });
    line.strip_prefix("READY").unwrap_or("").trim().to_owned()
}

/// A running `tracer attach`.
pub struct Tracer {
    pub proc: Proc,
    pub started_ns: u64,
}

impl Tracer {
    /// Starts `tracer attach --json --pid P... <extra>` and waits for
    /// `tracer: ready` on its stderr.
    pub fn attach(pids: &[u32], extra: &[&str]) -> Self {
        let mut t = Self::spawn(pids, extra);
        t.wait_ready();
        t
    }

    /// Starts `tracer attach --json --pid P... <extra>` without waiting.
    pub fn spawn(pids: &[u32], extra: &[&str]) -> Self {
        let mut cmd = Command::new(TRACER);
        cmd.arg("attach").arg("--json");
        for pid in pids {
            cmd.arg("--pid").arg(pid.to_string());
        }
        cmd.args(extra);
        let started_ns = now_ns();
        Self {
            proc: Proc::spawn("tracer", cmd, true),
            started_ns,
        }
    }

    /// Waits for exactly the line `tracer: ready` on stderr.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + TRACER_READY_TIMEOUT;
        loop {
            if let Some(s) = self.proc.try_status() {
                self.proc.stderr.wait_closed(Duration::from_secs(5));
                panic!(
                    "the tracer exited ({s}) before printing `tracer: ready`. Its stderr:\n{}",
                    self.proc.stderr.tail(40)
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.proc.stderr.poll();
                panic!(
                    "the tracer did not print `tracer: ready` within {TRACER_READY_TIMEOUT:?}. \
                     Its stderr:\n{}",
                    self.proc.stderr.tail(40)
                );
            }
            // Wake up now and then to notice an early exit.
            let step = left.min(Duration::from_millis(200));
            match self.proc.stderr.rx.recv_timeout(step) {
                Ok(line) => {
                    let hit = line == "tracer: ready";
                    self.proc.stderr.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // stderr closed: the process is exiting; the next turn
                    // sees its status.
                    self.proc.stderr.closed = true;
                    thread::sleep(step);
                }
            }
        }
    }

    pub fn stdout(&mut self) -> &mut Lines {
        self.proc.stdout.as_mut().expect("tracer stdout is piped")
    }

    /// Waits until the events printed so far satisfy `done` (parsed as JSON),
    /// or the deadline passes. Returns whether `done` became true.
    pub fn wait_events(&mut self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.stdout().poll();
            let events = parse_lines(self.stdout().seen());
            if done(&events) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGINT (what Ctrl-C does).
    pub fn interrupt(&self) {
        self.proc.signal(libc::SIGINT);
    }

    /// Waits for the tracer to exit by itself within `timeout` and returns its
    /// result. Panics (after killing it) when it does not.
    pub fn finish(mut self, timeout: Duration) -> Run {
        let status = self.proc.wait_exit(timeout);
        let Some(status) = status else {
            self.proc.stderr.poll();
            panic!(
                "the tracer did not exit within {timeout:?}. Its stderr:\n{}",
                self.proc.stderr.tail(40)
            );
        };
        self.proc.drain(Duration::from_secs(10));
        let lines = self.stdout().seen().to_vec();
        let stderr = self.proc.stderr.seen().to_vec();
        let events = parse_lines(&lines);
        Run {
            status,
            lines,
            stderr,
            events,
            started_ns: self.started_ns,
            ended_ns: now_ns(),
        }
    }
}

/// Lists problems for a failure message: the first 25, then how many more.
pub fn list_problems(problems: &[String]) -> String {
    const SHOWN: usize = 25;
    let mut out = problems
        .iter()
        .take(SHOWN)
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n");
    if problems.len() > SHOWN {
        out.push_str(&format!("\n  ... and {} more", problems.len() - SHOWN));
    }
    out
}

/// Parses JSON Lines; panics on a line that is not a JSON object.
pub fn parse_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| {
                panic!(
                    "tracer stdout line {} is not JSON ({e}): {}",
                    i + 1,
                    short(l)
                )
            });
            assert!(
                v.is_object(),
                "tracer stdout line {} is not a JSON object: {}",
                i + 1,
                short(l)
            );
            v
        })
        .collect()
}

/// What a finished tracer run produced.
pub struct Run {
    pub status: ExitStatus,
    pub lines: Vec<String>,
    pub stderr: Vec<String>,
    pub events: Vec<Value>,
    pub started_ns: u64,
    pub ended_ns: u64,
}

impl Run {
    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }

    /// Events (not the summary) of `kind` for `pid`.
    pub fn of(&self, kind: &str, pid: u32) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["kind"] == kind && e["pid"] == pid)
            .collect()
    }

    /// Asserts the run ended well: exit status 0, every line an event with the
    /// common fields, and the summary as the last line, counting exactly the
    /// events printed and no losses.
    pub fn assert_clean_end(&self) {
        self.assert_clean_end_allowing(|_| false);
    }

    /// [`Run::assert_clean_end`], except that the `lost` events `allowed`
    /// accepts may appear (they have pid 0, as documented, so they skip the
    /// per-event field check).
    pub fn assert_clean_end_allowing(&self, allowed: impl Fn(&Value) -> bool) {
        assert!(
            self.status.success(),
            "the tracer should exit with status 0, got {}. Its stderr:\n{}",
            self.status,
            self.stderr_text()
        );
        assert!(
            !self.stderr_text().contains("panicked"),
            "the tracer panicked:\n{}",
            self.stderr_text()
        );
        let ready_lines = self.stderr.iter().filter(|l| *l == "tracer: ready").count();
        assert_eq!(
            ready_lines,
            1,
            "the tracer must print `tracer: ready` exactly once; stderr:\n{}",
            self.stderr_text()
        );
        let (summary, events) = self
            .events
            .split_last()
            .expect("the tracer printed nothing on stdout; expected at least the summary");
        assert_eq!(
            summary["kind"],
            "summary",
            "the last stdout line must be the summary, got: {}",
            short(&summary.to_string())
        );
        let host = hostname();
        let mut counted: BTreeMap<String, u64> = BTreeMap::new();
        for e in events {
            if !(e["kind"] == "lost" && allowed(e)) {
                check_common_fields(e, &host, self.started_ns, self.ended_ns);
            }
            let kind = e["kind"].as_str().expect("kind is a string").to_owned();
            assert_ne!(kind, "summary", "only the last line may be a summary");
            *counted.entry(kind).or_default() += 1;
        }
        let counts = summary["counts"]
            .as_object()
            .unwrap_or_else(|| panic!("summary.counts must be an object: {summary}"));
        for (kind, n) in &counted {
            assert_eq!(
                counts.get(kind).and_then(Value::as_u64),
                Some(*n),
                "summary.counts.{kind} must equal the {n} `{kind}` events printed; summary: {summary}"
            );
        }
        for (kind, n) in counts {
            let n = n
                .as_u64()
                .unwrap_or_else(|| panic!("summary.counts.{kind} is not a count: {summary}"));
            if n != 0 {
                assert_eq!(
                    counted.get(kind).copied().unwrap_or(0),
                    n,
                    "summary.counts.{kind} = {n} but that many `{kind}` events were not printed"
                );
            }
        }
        for stage in ["ring", "decode"] {
            assert_eq!(
                summary["lost"][stage].as_u64(),
                Some(0),
                "summary.lost.{stage} must be 0 for this small workload; summary: {summary}"
            );
        }
        assert!(
            self.events
                .iter()
                .all(|e| e["kind"] != "lost" || allowed(e)),
            "no `lost` event expected for this small workload"
        );
    }
}

/// Checks the fields every event has (docs/events.md).
pub fn check_common_fields(e: &Value, host: &str, started_ns: u64, ended_ns: u64) {
    let show = || short(&e.to_string());
    let ts = e["ts_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("ts_ns must be an integer: {}", show()));
    // Wall clock: after the tracer started and before the test read the end
    // (one second of slack for the clock offset measured at start).
    assert!(
        ts + 1_000_000_000 >= started_ns && ts <= ended_ns + 1_000_000_000,
        "ts_ns {ts} is not between the tracer's start {started_ns} and the end {ended_ns}: {}",
        show()
    );
    assert_eq!(
        e["host"],
        host,
        "host must be this machine's name: {}",
        show()
    );
    assert!(e["pid"].as_u64().is_some_and(|p| p > 0), "pid: {}", show());
    assert!(e["tid"].as_u64().is_some_and(|p| p > 0), "tid: {}", show());
    assert!(e["comm"].is_string(), "comm must be a string: {}", show());
    assert!(e["kind"].is_string(), "kind must be a string: {}", show());
}

/// One line a fixture writes: the stream it goes to, the file path for
/// `file` lines, the text without its `\n`, and whether the tracer must
/// report it cut (`"truncated": true`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogLine {
    pub stream: String,
    pub path: Option<String>,
    pub text: String,
    pub truncated: bool,
}

impl LogLine {
    pub fn new(stream: &str, path: Option<&Path>, text: &str) -> Self {
        Self {
            stream: stream.to_owned(),
            path: path.map(|p| p.to_str().expect("utf-8 path").to_owned()),
            text: text.to_owned(),
            truncated: false,
        }
    }

    /// A line the tracer must report cut to `text`.
    pub fn cut(stream: &str, text: &str) -> Self {
        Self {
            truncated: true,
            ..Self::new(stream, None, text)
        }
    }

    fn show(&self) -> String {
        let cut = if self.truncated { " [truncated]" } else { "" };
        match &self.path {
            Some(p) => format!("{}({p}){cut}: {}", self.stream, short(&self.text)),
            None => format!("{}{cut}: {}", self.stream, short(&self.text)),
        }
    }
}

/// The lines tests/fixtures/logs.js writes after `go`, in the order it
/// writes them, built here independently of the fixture.
pub fn logs_fixture_lines(log_path: &Path) -> Vec<LogLine> {
    let mut v = Vec::new();
    for i in 1..=20 {
        let text = format!("stdout line {i} of 20 {}", "#".repeat(i));
        v.push(LogLine::new("stdout", None, &text));
    }
    for i in 1..=5 {
        v.push(LogLine::new(
            "stderr",
            None,
            &format!("stderr line {i} of 5"),
        ));
    }
    v.push(LogLine::new("stdout", None, "part-apart-bpart-c"));
    v.push(LogLine::new("stderr", None, "between the halves"));
    v.push(LogLine::new("stdout", None, "left-right"));
    v.push(LogLine::new("stdout", None, "héllo wörld — 日本語 🎉"));
    for i in 1..=3 {
        let text = format!("file line {i} appended");
        v.push(LogLine::new("file", Some(log_path), &text));
    }
    v.push(LogLine::new("stdout", None, &"x".repeat(65536)));
    v
}

/// Asserts that the `log` events of `pid` are exactly `expected`: each line
/// once, byte-exact, on the right stream (and path), in write order within
/// each stream and path, `truncated` exactly where expected, none extra.
pub fn assert_log_lines(run: &Run, pid: u32, comm: &str, expected: &[LogLine], who: &str) {
    let mut got = Vec::new();
    let mut problems = Vec::new();
    for e in run.of("log", pid) {
        let show = || short(&e.to_string());
        let stream = e["stream"]
            .as_str()
            .unwrap_or_else(|| panic!("log without stream: {}", show()));
        let path = match (stream, e.get("path")) {
            ("file", Some(Value::String(p))) => Some(p.clone()),
            ("file", _) => panic!("a `file` log event must have a string path: {}", show()),
            ("stdout" | "stderr", None) => None,
            ("stdout" | "stderr", Some(p)) => {
                panic!(
                    "a {stream} log event must not have a path (got {p}): {}",
                    show()
                )
            }
            (other, _) => panic!("unknown stream {other:?}: {}", show()),
        };
        // docs/events.md: "present and `true` only when the line was cut".
        let truncated = match e.get("truncated") {
            None => false,
            Some(Value::Bool(true)) => true,
            Some(t) => {
                problems.push(format!(
                    "`truncated` must be absent or true, got {t}: {}",
                    show()
                ));
                false
            }
        };
        if e["tid"] != pid {
            problems.push(format!(
                "the main thread wrote it, so tid must be {pid}: {}",
                show()
            ));
        }
        if e["comm"] != comm {
            problems.push(format!("comm must be {comm:?}: {}", show()));
        }
        let text = e["text"]
            .as_str()
            .unwrap_or_else(|| panic!("log without text: {}", show()));
        got.push(LogLine {
            stream: stream.to_owned(),
            path,
            text: text.to_owned(),
            truncated,
        });
    }
    for want in expected {
        let n = got.iter().filter(|g| *g == want).count();
        if n != 1 {
            problems.push(format!("expected once, seen {n} times: {}", want.show()));
        }
    }
    for g in &got {
        if !expected.contains(g) {
            problems.push(format!("unexpected line: {}", g.show()));
        }
    }
    // Order within each stream/path must be the write order.
    let mut keys: Vec<(&String, &Option<String>)> =
        expected.iter().map(|l| (&l.stream, &l.path)).collect();
    keys.sort();
    keys.dedup();
    for (stream, path) in keys {
        let want: Vec<&String> = expected
            .iter()
            .filter(|l| &l.stream == stream && &l.path == path)
            .map(|l| &l.text)
            .collect();
        let seen: Vec<&String> = got
            .iter()
            .filter(|l| &l.stream == stream && &l.path == path && want.contains(&&l.text))
            .map(|l| &l.text)
            .collect();
        if problems.is_empty() && seen != want {
            problems.push(format!(
                "{stream} {path:?} lines out of order: got {:?}",
                seen.iter().map(|t| short(t)).collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{who}: the log events of pid {pid} differ from what the fixture wrote \
         ({} expected, {} seen):\n{}\ntracer stderr:\n{}",
        expected.len(),
        got.len(),
        list_problems(&problems),
        run.stderr_text()
    );
}

/// One HTTP exchange as a test client made it, or as an `http` event
/// reports it: what the tests compare, exactly.
#[derive(Debug, PartialEq, Eq)]
pub struct Made {
    pub method: String,
    pub path: String,
    pub status: u64,
    pub req_bytes: u64,
    pub resp_bytes: u64,
}

impl Made {
    /// The exchanges a fixture printed as
    /// `RESULT <method> <path> <status> <request bytes> <response bytes>`.
    pub fn from_result_lines(lines: &[String]) -> Vec<Made> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("RESULT "))
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                Made {
                    method: f[0].to_owned(),
                    path: f[1].to_owned(),
                    status: f[2].parse().expect("status"),
                    req_bytes: f[3].parse().expect("request bytes"),
                    resp_bytes: f[4].parse().expect("response bytes"),
                }
            })
            .collect()
    }

    /// What an `http` event reports.
    pub fn from_event(e: &Value) -> Made {
        Made {
            method: e["method"].as_str().unwrap_or("?").to_owned(),
            path: e["path"].as_str().unwrap_or("?").to_owned(),
            status: e["status"].as_u64().unwrap_or(0),
            req_bytes: e["req_bytes"].as_u64().unwrap_or(0),
            resp_bytes: e["resp_bytes"].as_u64().unwrap_or(0),
        }
    }
}
