//! What a target already had open before we attached, read from /proc:
//! its listening ports (so new accepts are attributed to it) and its open
//! connections (so their close is reported, with byte counts).

use std::{collections::HashSet, net::SocketAddr, os::unix::fs::MetadataExt as _};

use anyhow::{Context as _, Result};
use procfs::{
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};
use tracer_common::{ListenKey, PortPairKey};

#[derive(Debug, Default)]
pub struct Sockets {
    pub netns: u32,
    pub listeners: Vec<ListenKey>,
    /// Open connections and whether we accepted them (local port is one we
    /// listen on) rather than connected out.
    pub connections: Vec<(PortPairKey, bool)>,
    /// Full addresses of `connections`, same order (the probes only know
    /// the ports of a connection they adopt).
    pub addresses: Vec<(SocketAddr, SocketAddr)>,
}

/// Network namespace inode of a process (0 if unreadable).
pub fn netns_of(pid: u32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| m.ino() as u32)
        .unwrap_or(0)
}

/// TCP sockets owned by `pid`. `with_netns` is false when kernel offsets are
/// unknown, so the probes see netns 0 and the keys must match that.
pub fn sockets_of(pid: u32, with_netns: bool) -> Result<Sockets> {
    let process = Process::new(pid as i32).with_context(|| format!("opening /proc/{pid}"))?;
    let inodes: HashSet<u64> = process
        .fd()
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .filter_map(|fd| match fd.ok()?.target {
            FDTarget::Socket(inode) => Some(inode),
            _ => None,
        })
        .collect();
    let netns = if with_netns { netns_of(pid) } else { 0 };
    let mut entries: Vec<TcpNetEntry> = process.tcp().unwrap_or_default();
    entries.extend(process.tcp6().unwrap_or_default());
    let mut out = Sockets {
        netns,
        ..Default::default()
    };
    let owned: Vec<TcpNetEntry> = entries
        .into_iter()
        .filter(|e| inodes.contains(&e.inode))
        .collect();
    for e in owned.iter().filter(|e| e.state == TcpState::Listen) {
        out.listeners.push(ListenKey {
            netns,
            port: e.local_address.port(),
            _pad: 0,
        });
    }
    for e in owned
        .iter()
        .filter(|e| !matches!(e.state, TcpState::Listen | TcpState::Close))
    {
        let lport = e.local_address.port();
        let accepted = out.listeners.iter().any(|l| l.port == lport);
        let key = PortPairKey {
            netns,
            lport,
            rport: e.remote_address.port(),
        };
        out.connections.push((key, accepted));
        out.addresses.push((e.local_address, e.remote_address));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// Our own sockets, read back through /proc (no privileges needed).
    #[test]
    fn finds_own_listener_and_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server_side, _) = listener.accept().unwrap();
        let cport = client.local_addr().unwrap().port();
        let s = sockets_of(std::process::id(), true).unwrap();
        assert_eq!(s.netns, netns_of(std::process::id()));
        assert!(s.netns != 0);
        assert!(s.listeners.iter().any(|l| l.port == port), "{s:?}");
        assert!(
            s.connections
                .iter()
                .any(|(c, accepted)| c.lport == cport && c.rport == port && !accepted),
            "client side missing: {s:?}"
        );
        assert!(
            s.connections
                .iter()
                .any(|(c, accepted)| c.lport == port && c.rport == cport && *accepted),
            "server side missing: {s:?}"
        );
    }
}
