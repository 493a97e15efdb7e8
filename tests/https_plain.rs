//! `tracer attach --json` on a node `https` server and a node `https`
//! client (two processes, both `--pid`): the tracer reads the plaintext
//! out of node's own OpenSSL (uprobes on SSL_write / SSL_read), so every
//! request must be reported once on each side, `tls: true`, with the exact
//! method, path, status, plaintext request and response sizes, the
//! connection's ports, and a client-side duration within 1 ms of the
//! client's own measurement — over a keep-alive connection (several
//! requests per TLS session) and over connections of their own, round
//! after round, so that the addresses of node's `SSL` objects are freed and
//! handed to later connections by the allocator.
//! Needs root (loads BPF programs); `openssl` makes the certificate.

mod common;
mod https_common;

use std::time::Duration;

use common::{TempDir, Tracer, require_root};
use https_common::{
    DURATION_SLACK_NS, DurationCheck, Item, Plan, Scheme, assert_no_problems,
    assert_served_matches, check_http, check_tcp, client_results, loss_problems, make_cert, served,
    start_client, start_server, wait_for_all,
};

/// Rounds of the plan; each opens a keep-alive connection (4 requests) and
/// 3 connections of their own (1 request each).
const ROUNDS: u32 = 4;

/// One lane (requests one after the other). Per round: `GET /users/<n>`
/// (200), `POST /orders` with a JSON body (201) and `GET /missing` (404) on
/// the round's keep-alive connection, interleaved with a `GET /users/4`, a
/// `POST /orders` and a `GET /nope` (404) on connections of their own, so
/// fresh TLS connections open and close while the keep-alive one stays up.
fn plan() -> Plan {
    let s = Scheme::Https;
    let mut lane = Vec::new();
    for r in 0..ROUNDS {
        let ka = r + 1;
        lane.push(Item::user(s, 1 + r % 3, ka));
        lane.push(Item::user(s, 4, 0));
        lane.push(Item::order(s, &format!("widget-{r}"), r + 1, ka));
        lane.push(Item::order(s, "gadget", 10 + r, 0));
        lane.push(Item::missing(s, "/missing", ka));
        lane.push(Item::user(s, 1 + r % 3, ka));
        lane.push(Item::missing(s, "/nope", 0));
    }
    Plan { lanes: vec![lane] }
}

#[test]
fn https_exchanges_seen_in_plaintext_from_both_ends() {
    if !require_root("https_exchanges_seen_in_plaintext_from_both_ends") {
        return;
    }
    let plan = plan();
    assert_eq!(plan.connections(), 4 * ROUNDS as usize);
    let dir = TempDir::new("https-plain");
    let ca = make_cert(dir.path());
    let (mut server, tls_port, _) = start_server(dir.path(), false);
    let ports = (tls_port, 0);
    let mut client = start_client(tls_port, 0, &ca, &plan);
    let (spid, cpid) = (server.pid(), client.pid());

    let mut tracer = Tracer::attach(&[spid, cpid], &["--duration", "120"]);
    client.send_line("go");
    let results = client_results(&mut client, &plan);
    let served = served(
        server.stdout.as_mut().expect("piped"),
        plan.len(),
        Duration::from_secs(10),
    );
    assert_served_matches(&served, &[(&plan, &results)], ports);

    // The server keeps running: wait (bounded) for everything, then stop
    // the tracer like Ctrl-C.
    let all_seen = wait_for_all(
        &mut tracer,
        spid,
        &[(cpid, &plan)],
        ports,
        Duration::from_secs(20),
    );
    assert!(
        tracer.proc.try_status().is_none(),
        "the tracer ended although the server (pid {spid}) is still running"
    );
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(15));
    drop(server);

    let clients = [(cpid, &plan, results.as_slice())];
    let mut problems = check_http(
        &run,
        spid,
        &clients,
        ports,
        DurationCheck {
            client_slack_ns: DURATION_SLACK_NS,
        },
    );
    problems.extend(check_tcp(&run, spid, &clients, ports));
    problems.extend(loss_problems(&run));
    if !all_seen {
        problems.push(
            "not every exit, http event and server-side close was printed within 20 s".into(),
        );
    }
    assert_no_problems(
        "http events of a node https server and client",
        &problems,
        &run,
    );
    run.assert_clean_end();
}
