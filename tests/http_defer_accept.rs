//! HTTP on a listener with TCP_DEFER_ACCEPT (nginx's `listen ... deferred`,
//! HAProxy's `defer-accept`): the kernel ignores the handshake's last ACK
//! and creates the connection only when the client's first data segment
//! arrives. TCP runs the cgroup ingress hook for that segment with the
//! *listener* socket — the same path a lossy network takes when the last
//! ACK is lost. The request in that segment must still be reported, once,
//! with its exact size.
//!
//! With HTTPS the segment is the TLS ClientHello: every exchange must still
//! be reported once, in plaintext, from the OpenSSL probes, on both ends.
//!
//! The tests make the listening socket themselves (on loopback, with
//! TCP_DEFER_ACCEPT) and hand it to a node server as fd 3, then send
//! requests, each on a connection of its own: plain HTTP from real sockets
//! of the test with the whole request in one write, HTTPS from a node
//! client. The kernel's `TcpExt.TCPDeferAcceptDrop` counter proves the
//! deferral happened. Need root (load BPF programs).

mod common;
mod https_common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::Command,
    time::Duration,
};

use common::{
    Made, NODE, Proc, Run, StdoutTo, TempDir, Tracer, fixtures_dir, list_problems, require_root,
    start_node, wait_ready_line,
};
use https_common::make_cert;

/// Requests, each on a connection of its own: even ones GET, odd ones POST
/// with a body.
const REQUESTS: usize = 24;
/// The same over HTTPS (each pays a TLS handshake).
const TLS_REQUESTS: usize = 12;

/// `TcpExt.TCPDeferAcceptDrop` of this network namespace: bare ACKs a
/// TCP_DEFER_ACCEPT listener ignored.
fn defer_accept_drops() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").expect("/proc/net/netstat");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (names, values) = (lines[0], lines[1]);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPDeferAcceptDrop")
        .and_then(|(_, v)| v.parse().ok())
        .expect("TcpExt.TCPDeferAcceptDrop in /proc/net/netstat")
}

/// A loopback listener with TCP_DEFER_ACCEPT.
fn deferred_listener() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let seconds: libc::c_int = 5;
    // SAFETY: a valid socket fd and a pointer to a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&seconds).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(TCP_DEFER_ACCEPT): {}",
        std::io::Error::last_os_error()
    );
    listener
}

/// One request on a connection of its own, as made.
fn request(port: u16, n: usize) -> Made {
    let (method, body) = if n.is_multiple_of(2) {
        ("GET", String::new())
    } else {
        ("POST", "b".repeat(100 + n * 37))
    };
    let path = format!("/defer/{n}");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: defer\r\nConnection: close\r\n");
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // One write: the whole request is the connection's first data segment.
    s.write_all(req.as_bytes()).expect("write the request");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read the response");
    let text = String::from_utf8_lossy(&resp);
    let status: u64 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in the response {text:?}"));
    Made {
        method: method.to_owned(),
        path,
        status,
        req_bytes: req.len() as u64,
        resp_bytes: resp.len() as u64,
    }
}

/// A node server (`defer_server.js`, with `args`) serving on a deferred
/// loopback listener. Returns it and the port.
fn deferred_server(args: &[&str]) -> (Proc, u16) {
    let listener = deferred_listener();
    let port = listener.local_addr().expect("local addr").port();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(NODE);
    cmd.arg(fixtures_dir().join("defer_server.js")).args(args);
    // SAFETY: only dup2 and fcntl (async-signal-safe) between fork and
    // exec. dup2 onto itself keeps close-on-exec, so clear it explicitly.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Proc::spawn("defer_server.js", cmd, true);
    wait_ready_line(&mut server);
    // The server has its own copy of the listener now.
    drop(listener);
    (server, port)
}

/// The `http` events of `pid` must be exactly `made`, on `side`, complete,
/// with `tls` as given; nothing lost; the kernel deferred every handshake.
fn check(run: &Run, pid: u32, side: &str, tls: bool, made: &[Made], drops: u64) -> Vec<String> {
    let mut problems = Vec::new();
    if drops < made.len() as u64 {
        problems.push(format!(
            "the kernel deferred {drops} handshakes (TCPDeferAcceptDrop), expected at least \
             {}: the scenario did not happen",
            made.len()
        ));
    }
    let seen: Vec<Made> = run
        .of("http", pid)
        .into_iter()
        .map(Made::from_event)
        .collect();
    if seen != made {
        problems.push(format!(
            "{side} http events (method, path, status, request bytes, response bytes) \
             {seen:#?}\nmust be exactly the requests made {made:#?}"
        ));
    }
    for e in run.of("http", pid) {
        if e["side"] != side || e["complete"] == false || e["tls"] != tls {
            problems.push(format!("unexpected http event {e}"));
        }
    }
    let summary = run.events.last().expect("summary");
    for stage in ["parse", "capture"] {
        if summary["lost"][stage].as_u64() != Some(0) {
            problems.push(format!(
                "summary.lost.{stage} must be 0: {}",
                summary["lost"]
            ));
        }
    }
    problems
}

fn http_of(evs: &[serde_json::Value], pid: u32) -> usize {
    evs.iter()
        .filter(|e| e["kind"] == "http" && e["pid"] == pid)
        .count()
}

#[test]
fn requests_in_the_segment_that_completes_a_deferred_handshake_are_reported() {
    if !require_root("requests_in_the_segment_that_completes_a_deferred_handshake_are_reported") {
        return;
    }
    let (server, port) = deferred_server(&[]);
    let spid = server.pid();

    let mut tracer = Tracer::attach(&[spid], &[]);
    let drops_before = defer_accept_drops();
    let made: Vec<Made> = (0..REQUESTS).map(|n| request(port, n)).collect();
    let drops = defer_accept_drops() - drops_before;

    tracer.wait_events(Duration::from_secs(15), |evs| {
        http_of(evs, spid) >= REQUESTS
    });
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(15));
    drop(server);
    run.assert_clean_end();
    let problems = check(&run, spid, "server", false, &made, drops);
    assert!(
        problems.is_empty(),
        "{}\ntracer stderr:\n{}",
        list_problems(&problems),
        run.stderr_text()
    );
}

#[test]
fn tls_whose_client_hello_completes_a_deferred_handshake_is_seen_in_plaintext() {
    if !require_root("tls_whose_client_hello_completes_a_deferred_handshake_is_seen_in_plaintext") {
        return;
    }
    let dir = TempDir::new("defer-tls");
    let ca = make_cert(dir.path());
    let key = dir.path().join("key.pem");
    let (server, port) = deferred_server(&[
        key.to_str().expect("utf-8 path"),
        ca.to_str().expect("utf-8 path"),
    ]);
    let (mut client, _) = start_node(
        "defer_https_client.js",
        &[],
        &[
            &port.to_string(),
            ca.to_str().expect("utf-8 path"),
            &TLS_REQUESTS.to_string(),
        ],
        StdoutTo::Pipe,
    );
    let (spid, cpid) = (server.pid(), client.pid());

    let mut tracer = Tracer::attach(&[spid, cpid], &[]);
    let drops_before = defer_accept_drops();
    client.send_line("go");
    let status = client.expect_exit(Duration::from_secs(60));
    assert!(
        status.success(),
        "defer_https_client.js failed ({status}):\n{}",
        client.stderr.tail(20)
    );
    let drops = defer_accept_drops() - drops_before;
    let out = client.stdout.as_mut().expect("piped");
    out.wait_closed(Duration::from_secs(5));
    let made = Made::from_result_lines(out.seen());
    assert_eq!(made.len(), TLS_REQUESTS, "the client's RESULT lines");

    tracer.wait_events(Duration::from_secs(15), |evs| {
        http_of(evs, spid) >= TLS_REQUESTS && http_of(evs, cpid) >= TLS_REQUESTS
    });
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(15));
    drop(client);
    drop(server);
    run.assert_clean_end();
    let mut problems = check(&run, spid, "server", true, &made, drops);
    problems.extend(check(&run, cpid, "client", true, &made, drops));
    assert!(
        problems.is_empty(),
        "{}\ntracer stderr:\n{}",
        list_problems(&problems),
        run.stderr_text()
    );
}
