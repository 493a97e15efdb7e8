//! The small node programs the demo and the benchmark trace. Their sources are
//! embedded in xtask and written to a temporary directory at run time, so the
//! traced process runs a real file like any service would.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::procs::{self, Spawned};

/// A JavaScript program embedded in xtask.
pub struct Script {
    pub name: &'static str,
    pub source: &'static str,
}

pub const BENCH_SERVER: Script = Script {
    name: "bench-server.js",
    source: include_str!("../assets/bench-server.js"),
};

/// A temporary directory holding the scripts; removed when dropped.
pub struct Scripts {
    dir: TempDir,
}

impl Scripts {
    pub fn write(scripts: &[Script]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tracer-xtask-")
            .tempdir()
            .context("could not create a temporary directory for the node scripts")?;
        for script in scripts {
            let path = dir.path().join(script.name);
            fs::write(&path, script.source)
                .with_context(|| format!("could not write {}", path.display()))?;
        }
        Ok(Scripts { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `node <script>` (optionally behind a `taskset -c <cpu>`, which execs
    /// node, so the pid is node's), with PORT in its environment.
    pub fn command(&self, script: &Script, port: u16, cpu: Option<u32>) -> Command {
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", &cpu.to_string(), "node"]);
                cmd
            }
            None => Command::new("node"),
        };
        cmd.arg(self.path(script.name))
            .env("PORT", port.to_string())
            .stdin(Stdio::null());
        cmd
    }
}

/// A port nothing listens on right now. Another process could take it before
/// node binds it; unlikely enough on a test machine, and the wait for the port
/// below would then fail with a clear message.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("could not bind a TCP port on 127.0.0.1 to find a free one")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `server` accepts connections on 127.0.0.1:`port`.
pub fn wait_for_port(server: &mut Spawned, port: u16, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        procs::check_interrupted()?;
        if let Some(status) = server.try_exited()? {
            bail!(
                "the node server exited ({status}) before listening on {addr}; its output:\n{}",
                server.output()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the node server did not listen on {addr} within {}s",
                timeout.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}
