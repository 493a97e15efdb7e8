//! Child processes that can't outlive us: each runs in its own process group,
//! dies with xtask (PR_SET_PDEATHSIG) and is killed, group and all, when its
//! guard is dropped — on success, on error and on Ctrl-C alike.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus},
    sync::{
        Arc, Mutex, Once,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::{Pid, getppid},
};

use crate::cmd;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// From here on Ctrl-C (and SIGTERM/SIGHUP) only sets a flag that the waits
/// below check, so we can stop the children in order instead of dying with
/// them still running. Children sit in their own process groups, so the
/// terminal's SIGINT reaches only us.
pub fn catch_interrupts() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
            .context("could not install the Ctrl-C handler");
    });
    result
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted (Ctrl-C)");
    }
    Ok(())
}

const POLL: Duration = Duration::from_millis(50);
/// Lines kept per stream for waiting on and for error messages.
const TAIL_LINES: usize = 200;

/// Lines read from a child's piped stdout or stderr by a background thread.
struct Lines {
    rx: Receiver<String>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Lines {
    fn spawn(reader: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let keep = Arc::clone(&tail);
        thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut tail) = keep.lock() {
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                }
                // The receiver may be gone or never read again; the tail
                // still has the line.
                let _ = tx.send(line);
            }
        });
        Lines { rx, tail }
    }

    fn text(&self) -> String {
        self.tail
            .lock()
            .map(|tail| tail.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

#[derive(Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

pub struct Spawned {
    label: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout: Option<Lines>,
    stderr: Option<Lines>,
}

impl Spawned {
    /// Starts `command`; piped stdout/stderr are read by background threads
    /// (see [`Spawned::wait_for_line`], [`Spawned::output`]).
    pub fn start(label: &str, command: &mut Command) -> Result<Self> {
        let shown = cmd::display(command);
        let parent = nix::unistd::getpid();
        command.process_group(0);
        // SAFETY: runs in the forked child before exec; prctl and getppid are
        // async-signal-safe and nothing here allocates or takes locks.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // We may have died between fork and prctl: then the signal
                // will never come, so give up now.
                if getppid() != parent {
                    return Err(std::io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("{label}: could not start `{shown}`"))?;
        let stdout = child.stdout.take().map(Lines::spawn);
        let stderr = child.stderr.take().map(Lines::spawn);
        Ok(Spawned {
            label: label.to_string(),
            child,
            status: None,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn try_exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("{}: waiting for it failed", self.label))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still
    /// running. Fails early on Ctrl-C.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exited()? {
                return Ok(Some(status));
            }
            check_interrupted()?;
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until a line containing `needle` appears on a piped stream, and
    /// returns that line.
    pub fn wait_for_line(
        &mut self,
        stream: Stream,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = match stream {
                Stream::Stdout => self.stdout.as_ref(),
                Stream::Stderr => self.stderr.as_ref(),
            };
            let Some(lines) = lines else {
                bail!("{}: internal error: that stream is not piped", self.label);
            };
            match lines.rx.recv_timeout(POLL) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                // The stream closed: the process is exiting.
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait(Duration::from_secs(5))?;
                    bail!(
                        "{} exited ({}) before printing `{needle}`; its output:\n{}",
                        self.label,
                        status.map_or("still running".to_string(), |s| s.to_string()),
                        self.output()
                    );
                }
            }
            check_interrupted()?;
            if let Some(status) = self.try_exited()? {
                bail!(
                    "{} exited ({status}) before printing `{needle}`; its output:\n{}",
                    self.label,
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print `{needle}` within {}s; its output so far:\n{}",
                    self.label,
                    timeout.as_secs(),
                    self.output()
                );
            }
        }
    }

    /// The last lines of the piped streams, stdout first.
    pub fn output(&self) -> String {
        [&self.stdout, &self.stderr]
            .into_iter()
            .flatten()
            .map(Lines::text)
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// All of the piped stdout (up to the last lines kept) of a process that
    /// has exited, once the reader has drained the pipe.
    pub fn final_stdout(&self) -> String {
        let Some(lines) = &self.stdout else {
            return String::new();
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        // The pipe closes when the process (and any child holding it) is
        // gone; the reader then drops its sender.
        while Instant::now() < deadline {
            if let Err(RecvTimeoutError::Disconnected) = lines.rx.recv_timeout(POLL) {
                break;
            }
        }
        lines.text()
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(self.nix_pid(), signal)
            .with_context(|| format!("{}: sending {signal} failed", self.label))
    }

    /// Sends `signal`, waits up to `grace` for a clean exit, and kills the
    /// whole group if that doesn't come. Errors if it had to be killed.
    pub fn stop(&mut self, signal: Signal, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_exited()? {
            return Ok(status);
        }
        self.signal(signal)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exited()? {
                return Ok(status);
            }
            thread::sleep(POLL);
        }
        self.kill_group();
        bail!(
            "{} did not exit within {}s of {signal}; killed it. Its output:\n{}",
            self.label,
            grace.as_secs(),
            self.output()
        )
    }

    fn kill_group(&mut self) {
        // Errors mean the group is already gone, which is what we want.
        let _ = killpg(self.nix_pid(), Signal::SIGKILL);
        let _ = self.child.wait().map(|s| self.status = Some(s));
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // The group may hold children of the leader even after it exited.
        let _ = killpg(self.nix_pid(), Signal::SIGTERM);
        if self.status.is_none() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = self.child.try_wait() {
                    self.status = Some(status);
                    break;
                }
                thread::sleep(POLL);
            }
        }
        self.kill_group();
    }
}
