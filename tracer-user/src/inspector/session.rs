//! Opening a node process's inspector for one operation and closing it.
//!
//! The port is open only while tracer needs it: SIGUSR1 opens it, tracer
//! connects, runs the operation, and `process._debugEnd()` closes it. Two
//! guards make that safe on a shared host:
//! - a lock per network namespace (`/run/tracer/inspector/netns-INODE.lock`,
//!   flock): every node in a namespace opens the same port (9229), so
//!   tracer's operations there run one at a time;
//! - a marker (`open-PID-STARTTIME`) written before SIGUSR1 and removed
//!   after the port is closed: if tracer is killed in between, the next
//!   run finds the marker and closes the port it left open. A port opened
//!   by anyone else (`--inspect`, a developer's own SIGUSR1) is used as
//!   found and left open.
//!
//! A target in another network namespace is reached from a thread that
//! joins that namespace (setns) before it makes any socket.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::json;

use super::{
    cdp::{self, Cdp},
    target::Target,
};

const STATE_DIR: &str = "/run/tracer/inspector";
/// How long a process may take to open its inspector after SIGUSR1.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for another tracer's operation in the same namespace.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long node may take to close the port after `process._debugEnd()`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Closes the port a moment later, from a timer: calling
/// `process._debugEnd()` inside the session's own request makes node answer
/// on a session it already destroyed and crash (SIGSEGV; seen here on node
/// 20, nodejs/node#18761). By the time the timer fires tracer has
/// disconnected.
/// It also disarms the port guard.
const CLOSE_EXPRESSION: &str = "(() => { const k = Symbol.for('tracer.portGuard'); \
     clearTimeout(process[k]); delete process[k]; \
     setTimeout(() => process._debugEnd(), 50).unref(); })()";
/// A port tracer opened closes by itself this long after tracer last armed
/// its guard, so a tracer killed mid-operation (SIGKILL) leaves it open for
/// at most that long even if no tracer runs again. Long operations re-arm
/// it ([`arm_port_guard`]).
pub const PORT_GUARD: Duration = Duration::from_secs(20);

/// How the inspector was found and what tracer does with it afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// Closed; tracer opened it and closes it after.
    OpenedByTracer,
    /// Left open by a tracer that was killed mid-operation; closed after.
    LeftOpenByTracer,
    /// Open already (`--inspect`, or someone else's SIGUSR1): left open.
    AlreadyOpen,
}

/// Runs `op` with a connection to the inspector of `target`, on a thread
/// in the target's network namespace, and closes the port afterwards if
/// tracer opened it. SIGINT/SIGTERM during the operation end it early, and
/// the port is still closed.
pub fn with_inspector<T, F>(target: &Target, op: F) -> Result<T>
where
    F: AsyncFnOnce(&mut Cdp, PortState) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    with_inspector_on(target, true, op)
}

/// Like [`with_inspector`]; with `ctrl_c_ends` false, SIGINT is left to
/// `op` (the REPL cancels one evaluation with it, not the session).
pub fn with_inspector_on<T, F>(target: &Target, ctrl_c_ends: bool, op: F) -> Result<T>
where
    F: AsyncFnOnce(&mut Cdp, PortState) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let target = target.clone();
    let pid = target.pid;
    std::thread::Builder::new()
        .name("tracer-inspector".into())
        .spawn(move || -> Result<T> {
            enter_netns_of(&target)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the inspector thread's runtime")?;
            rt.block_on(run(&target, ctrl_c_ends, op))
        })
        .context("starting the inspector thread")?
        .join()
        .map_err(|_| anyhow!("the inspector thread for PID {pid} panicked"))?
}

/// setns(2) this thread into the target's network namespace when it is
/// not ours (sockets are made in the namespace of the thread that makes
/// them).
fn enter_netns_of(target: &Target) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let ours = std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading this thread's network namespace")?
        .ino();
    if ours == target.netns {
        return Ok(());
    }
    let path = format!("/proc/{}/ns/net", target.pid);
    let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: ns is an open namespace fd; setns only changes this thread's
    // network namespace (CLONE_NEWNET is per thread).
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!(
                "joining the network namespace of PID {} (needs CAP_SYS_ADMIN: run as root)",
                target.pid
            )
        });
    }
    Ok(())
}

async fn run<T, F>(target: &Target, ctrl_c_ends: bool, op: F) -> Result<T>
where
    F: AsyncFnOnce(&mut Cdp, PortState) -> Result<T>,
{
    std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let _lock = NetnsLock::acquire(target.netns).await?;
    let marker = PathBuf::from(format!(
        "{STATE_DIR}/open-{}-{}",
        target.pid, target.start_time
    ));
    let port = target.inspect_port;
    let state = match target.port_holder(port) {
        Some(true) if marker.exists() => PortState::LeftOpenByTracer,
        Some(true) => PortState::AlreadyOpen,
        Some(false) => bail!(
            "port {port} in the network namespace of PID {} is held by another process \
             (another node's inspector?), so PID {}'s inspector cannot open there. Close \
             that one first (its `process._debugEnd()`), or start the target with \
             --inspect-port=OTHER",
            target.pid,
            target.pid
        ),
        None => {
            if !target.catches_sigusr1 {
                bail!(
                    "PID {} ({}) does not catch SIGUSR1 (node installs a handler at start; this \
                 process has none, e.g. --disable-sigusr1), so SIGUSR1 would kill it. Nothing \
                 was sent to it. Start it with --inspect=127.0.0.1:PORT to use tracer on it.",
                    target.pid,
                    target.exe
                );
            }
            // Written before the signal: if tracer dies from here on, the
            // next run knows the open port is its own to close.
            std::fs::write(&marker, b"")
                .with_context(|| format!("writing {}", marker.display()))?;
            open_with_sigusr1(target).await?;
            PortState::OpenedByTracer
        }
    };
    let result = connect_and_run(target, state, ctrl_c_ends, op).await;
    if !target.alive() {
        let _ = std::fs::remove_file(&marker);
    }
    let closed = match state {
        PortState::AlreadyOpen => Ok(()),
        PortState::OpenedByTracer | PortState::LeftOpenByTracer => {
            let r = close_port(target).await;
            if r.is_ok() {
                let _ = std::fs::remove_file(&marker);
            }
            r
        }
    };
    match (result, closed) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e),
    }
}

async fn connect_and_run<T, F>(
    target: &Target,
    state: PortState,
    ctrl_c_ends: bool,
    op: F,
) -> Result<T>
where
    F: AsyncFnOnce(&mut Cdp, PortState) -> Result<T>,
{
    let port = target.inspect_port;
    let addr = target
        .listening()
        .into_iter()
        .find(|(_, p)| *p == port)
        .map(|(a, _)| a)
        .with_context(|| {
            format!(
                "PID {} stopped listening on its inspector port {port}",
                target.pid
            )
        })?;
    let url = cdp::debugger_url(addr, port).await?;
    let mut conn = Cdp::connect(&url).await?;
    if state != PortState::AlreadyOpen {
        arm_port_guard(&mut conn, PORT_GUARD).await?;
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("handling SIGTERM")?;
    let result = tokio::select! {
        r = op(&mut conn, state) => r,
        _ = interrupted(ctrl_c_ends) => Err(anyhow!("interrupted (the operation was abandoned)")),
        _ = sigterm.recv() => Err(anyhow!("terminated (the operation was abandoned)")),
    };
    if state != PortState::AlreadyOpen {
        let _ = tokio::time::timeout(Duration::from_secs(2), schedule_close(&mut conn)).await;
    }
    conn.close().await;
    match result {
        Ok(v) => Ok(v),
        Err(e) => {
            // A process on its way out breaks the connection first.
            for _ in 0..50 {
                if !target.alive() {
                    return Err(
                        e.context(format!("PID {} exited during the operation", target.pid))
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e)
        }
    }
}

/// Resolves on SIGINT when it ends the operation; never otherwise.
async fn interrupted(ctrl_c_ends: bool) {
    if ctrl_c_ends {
        let _ = tokio::signal::ctrl_c().await;
    } else {
        std::future::pending::<()>().await;
    }
}

async fn open_with_sigusr1(target: &Target) -> Result<()> {
    let pid = target.pid;
    let port = target.inspect_port;
    if !target.alive() {
        bail!("PID {pid} exited before its inspector could be opened");
    }
    // SAFETY: kill has no memory-safety preconditions. Target::inspect
    // checked that this is a node process that catches SIGUSR1, and
    // alive() just now that the pid still names it.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("sending SIGUSR1 to PID {pid}"));
    }
    let started = Instant::now();
    loop {
        if target.port_holder(port) == Some(true) {
            return Ok(());
        }
        if !target.alive() {
            bail!("PID {pid} exited right after SIGUSR1");
        }
        if started.elapsed() > OPEN_TIMEOUT {
            bail!(
                "PID {pid} did not open its inspector on port {port} within {}s of SIGUSR1. \
                 It is still running, untouched. Likely causes: it handles SIGUSR1 itself \
                 (process.on('SIGUSR1', ...) replaces node's handler), it runs with \
                 --disable-sigusr1, or its event loop is blocked. Start it with \
                 --inspect-port=PORT (closed until needed) or --inspect=127.0.0.1:PORT instead.",
                OPEN_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Closes a port tracer opened. The close was scheduled on the
/// operation's connection; if the port is still open (the connection
/// broke first), a fresh connection schedules it again.
async fn close_port(target: &Target) -> Result<()> {
    let port = target.inspect_port;
    let started = Instant::now();
    let mut retried = false;
    loop {
        if target.port_holder(port) != Some(true) || !target.alive() {
            return Ok(());
        }
        if !retried && started.elapsed() > Duration::from_millis(500) {
            retried = true;
            if let Some((addr, _)) = target.listening().into_iter().find(|(_, p)| *p == port)
                && let Ok(url) = cdp::debugger_url(addr, port).await
                && let Ok(mut c) = Cdp::connect(&url).await
            {
                let _ = tokio::time::timeout(Duration::from_secs(2), schedule_close(&mut c)).await;
                c.close().await;
            }
        }
        if started.elapsed() > CLOSE_TIMEOUT {
            bail!(
                "PID {}'s inspector port {port} is still open {}s after process._debugEnd(); \
                 the next tracer operation on it will close it",
                target.pid,
                CLOSE_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (Re)arms the timer in the target that closes the port `after` from now
/// unless tracer closes it first. Kept on `process` under a symbol (no
/// global), deleted when the port is closed.
pub async fn arm_port_guard(conn: &mut Cdp, after: Duration) -> Result<()> {
    let expression = format!(
        "(() => {{ const k = Symbol.for('tracer.portGuard'); clearTimeout(process[k]); \
         const t = setTimeout(() => {{ delete process[k]; process._debugEnd(); }}, {}); \
         t.unref(); Object.defineProperty(process, k, \
         {{ value: t, configurable: true, enumerable: false, writable: true }}); }})()",
        after.as_millis()
    );
    conn.call(
        "Runtime.evaluate",
        json!({ "expression": expression, "silent": true }),
    )
    .await
    .map(|_| ())
    .context("arming the port guard")
}

async fn schedule_close(conn: &mut Cdp) -> Result<()> {
    conn.call(
        "Runtime.evaluate",
        json!({ "expression": CLOSE_EXPRESSION, "silent": true }),
    )
    .await
    .map(|_| ())
}

/// An exclusive flock on the namespace's lock file, released on drop.
struct NetnsLock {
    _file: File,
}

impl NetnsLock {
    async fn acquire(netns: u64) -> Result<NetnsLock> {
        let path = format!("{STATE_DIR}/netns-{netns}.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        let started = Instant::now();
        loop {
            // SAFETY: file is an open fd for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(NetnsLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err).with_context(|| format!("locking {path}"));
            }
            if started.elapsed() > LOCK_TIMEOUT {
                bail!(
                    "another tracer operation has held {path} for {}s (one inspector \
                     operation per network namespace at a time); try again",
                    LOCK_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
