//! `tracer attach` on two node processes at once, an HTTP server and its
//! client: every connection is seen from both ends with exact byte counts.
//! Needs root (loads BPF programs).

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{StdoutTo, Tracer, list_problems, require_root, short, start_node};
use serde_json::Value;

/// Number of requests (one connection each).
const M: usize = 10;
const REQUEST_BODY_LEN: usize = 100;
const RESPONSE_BODY_LEN: usize = 5000;

/// The bytes of request `i`, as tests/fixtures/tcp_messages.js builds them.
fn request(i: usize) -> String {
    let prefix = format!("request {i:03} ");
    let body = format!("{prefix}{}", "q".repeat(REQUEST_BODY_LEN - prefix.len()));
    format!(
        "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Length: {REQUEST_BODY_LEN}\r\n\r\n{body}"
    )
}

/// The bytes of response `i`, as tests/fixtures/tcp_messages.js builds them.
fn response(i: usize) -> String {
    let prefix = format!("response {i:03} ");
    let body = format!("{prefix}{}", "r".repeat(RESPONSE_BODY_LEN - prefix.len()));
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {RESPONSE_BODY_LEN}\r\n\
         Connection: close\r\n\r\n{body}"
    )
}

fn port_of(e: &Value, field: &str) -> u16 {
    e[field]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("{field} must be a port number: {e}"))
}

fn count_kind(events: &[Value], kind: &str, pid: u32) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["pid"] == pid)
        .count()
}

#[test]
fn tcp_connections_seen_from_both_ends() {
    if !require_root("tcp_connections_seen_from_both_ends") {
        return;
    }
    // The fixture builds the same bytes: check that the two definitions agree.
    let out = std::process::Command::new(common::NODE)
        .current_dir(common::fixtures_dir())
        .args([
            "-e",
            "const m = require('./tcp_messages.js'); \
             process.stdout.write(m.request(7) + '|' + m.response(7));",
        ])
        .output()
        .expect("running node");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}|{}", request(7), response(7)),
        "tests/fixtures/tcp_messages.js and this test build different messages"
    );
    let req_len = request(1).len() as u64;
    let resp_len = response(1).len() as u64;
    assert!(
        (1..=M).all(|i| request(i).len() as u64 == req_len && response(i).len() as u64 == resp_len)
    );

    let (server, port) = start_node("tcp_server.js", &[], &[], StdoutTo::Pipe);
    let port: u16 = port
        .parse()
        .unwrap_or_else(|e| panic!("tcp_server.js READY line must carry its port ({port:?}): {e}"));
    let (mut client, _) = start_node(
        "tcp_client.js",
        &[],
        &[&port.to_string(), &M.to_string()],
        StdoutTo::Pipe,
    );
    let (spid, cpid) = (server.pid(), client.pid());

    let mut tracer = Tracer::attach(&[spid, cpid], &["--duration", "60"]);
    client.send_line("go");
    let status = client.expect_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "tcp_client.js failed ({status}):\n{}",
        client.stderr.tail(20)
    );
    let ports_line = client.stdout.as_mut().expect("piped").wait_for(
        "the client's PORTS line",
        Duration::from_secs(5),
        |l| l.starts_with("PORTS "),
    );
    let client_ports: Vec<u16> = ports_line["PORTS ".len()..]
        .split(',')
        .map(|p| p.parse().expect("port"))
        .collect();
    assert_eq!(
        client_ports.len(),
        M,
        "the client reports one local port per request"
    );

    // The server keeps running, so the tracer does not end by itself: wait
    // until both sides' closes are out (bounded), then stop it like Ctrl-C.
    tracer.wait_events(Duration::from_secs(15), |evs| {
        count_kind(evs, "tcp_close", cpid) >= M && count_kind(evs, "tcp_close", spid) >= M
    });
    // One of its two targets is still running, so the tracer must be too.
    assert!(
        tracer.proc.try_status().is_none(),
        "the tracer ended although the server (pid {spid}) is still running"
    );
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(15));
    drop(server);

    let mut problems = Vec::new();
    let tuple = |e: &Value| {
        (
            e["saddr"].as_str().unwrap_or("?").to_owned(),
            e["daddr"].as_str().unwrap_or("?").to_owned(),
        )
    };
    let loopback = ("127.0.0.1".to_owned(), "127.0.0.1".to_owned());

    // Client side: M connects out to the server, from the reported ports.
    let connects = run.of("tcp_connect", cpid);
    let mut connect_ports: Vec<u16> = Vec::new();
    for e in &connects {
        if port_of(e, "dport") != port || tuple(e) != loopback {
            problems.push(format!("client connect not to 127.0.0.1:{port}: {e}"));
        }
        connect_ports.push(port_of(e, "sport"));
    }
    if connect_ports != client_ports {
        problems.push(format!(
            "client tcp_connect source ports (in order) {connect_ports:?} != the ports the \
             client used {client_ports:?}"
        ));
    }

    // Server side: M accepts on the listening port, from the client's ports.
    let accepts = run.of("tcp_accept", spid);
    let mut accept_ports: Vec<u16> = Vec::new();
    for e in &accepts {
        if port_of(e, "sport") != port || tuple(e) != loopback {
            problems.push(format!("server accept not on 127.0.0.1:{port}: {e}"));
        }
        accept_ports.push(port_of(e, "dport"));
    }
    if accept_ports != client_ports {
        problems.push(format!(
            "server tcp_accept peer ports (in order) {accept_ports:?} != the ports the client \
             used {client_ports:?}"
        ));
    }

    // Closes on both sides, matched by the client's port.
    let mut client_close: BTreeMap<u16, &Value> = BTreeMap::new();
    let client_closes = run.of("tcp_close", cpid);
    for e in &client_closes {
        let p = port_of(e, "sport");
        if port_of(e, "dport") != port || tuple(e) != loopback {
            problems.push(format!(
                "client close not of a connection to the server: {e}"
            ));
        }
        if client_close.insert(p, e).is_some() {
            problems.push(format!("client connection from port {p} closed twice: {e}"));
        }
    }
    let mut server_close: BTreeMap<u16, &Value> = BTreeMap::new();
    let server_closes = run.of("tcp_close", spid);
    for e in &server_closes {
        let p = port_of(e, "dport");
        if port_of(e, "sport") != port || tuple(e) != loopback {
            problems.push(format!("server close not of a connection on its port: {e}"));
        }
        if server_close.insert(p, e).is_some() {
            problems.push(format!("server connection from port {p} closed twice: {e}"));
        }
    }
    // One line per close event that is wrong, naming every wrong field.
    let check_close =
        |side: &str, e: &Value, sent: u64, received: u64, problems: &mut Vec<String>| {
            let mut wrong = Vec::new();
            if e["bytes_sent"].as_u64() != Some(sent) {
                wrong.push(format!("bytes_sent {} (want {sent})", e["bytes_sent"]));
            }
            if e["bytes_received"].as_u64() != Some(received) {
                wrong.push(format!(
                    "bytes_received {} (want {received})",
                    e["bytes_received"]
                ));
            }
            if !e["duration_ns"]
                .as_u64()
                .is_some_and(|d| d > 0 && d < 60_000_000_000)
            {
                wrong.push(format!(
                    "duration_ns {} (want > 0, < 60 s)",
                    e["duration_ns"]
                ));
            }
            if e.get("preexisting").is_some_and(|v| v != false)
                || e.get("failed").is_some_and(|v| v != false)
            {
                wrong.push("marked preexisting or failed".to_owned());
            }
            if !wrong.is_empty() {
                problems.push(format!("{side} close: {}: {e}", wrong.join(", ")));
            }
        };
    for p in &client_ports {
        match (client_close.get(p), server_close.get(p)) {
            (Some(c), Some(s)) => {
                check_close("client", c, req_len, resp_len, &mut problems);
                check_close("server", s, resp_len, req_len, &mut problems);
                if c["bytes_sent"] != s["bytes_received"] || c["bytes_received"] != s["bytes_sent"]
                {
                    problems.push(format!(
                        "both ends of port {p} disagree: client sent {} received {}, server \
                         received {} sent {}",
                        c["bytes_sent"], c["bytes_received"], s["bytes_received"], s["bytes_sent"]
                    ));
                }
            }
            (c, s) => problems.push(format!(
                "connection from client port {p}: client close {:?}, server close {:?}",
                c.map(|v| v.to_string()),
                s.map(|v| v.to_string())
            )),
        }
    }
    let counts = [
        ("client tcp_connect", connects.len()),
        ("server tcp_accept", accepts.len()),
        ("client tcp_close", client_closes.len()),
        ("server tcp_close", server_closes.len()),
    ];
    for (what, n) in counts {
        if n != M {
            problems.push(format!("expected exactly {M} {what} events, got {n}"));
        }
    }
    // Nothing TCP should be attributed the wrong way round.
    for (kind, pid) in [("tcp_connect", spid), ("tcp_accept", cpid)] {
        for e in run.of(kind, pid) {
            problems.push(format!(
                "unexpected {kind} for pid {pid}: {}",
                short(&e.to_string())
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "server pid {spid} port {port}, client pid {cpid}, request {req_len} bytes, response \
         {resp_len} bytes:\n{}\ntracer stderr:\n{}",
        list_problems(&problems),
        run.stderr_text()
    );

    // The client exited 0 while traced.
    let exits = run.of("exit", cpid);
    assert!(
        exits.len() == 1 && exits[0]["exit_code"] == 0,
        "expected one exit event with exit_code 0 for the client, got {exits:?}"
    );
    // The run itself ended cleanly (status 0, summary last, counts match).
    run.assert_clean_end();
}
