//! One node process serving plain HTTP and HTTPS at the same time on two
//! ports, to two client processes that each run three lanes of requests
//! concurrently over both schemes (keep-alive connections and connections
//! of their own), all traced by one `tracer attach --json`. The HTTPS
//! exchanges come from node's OpenSSL (plaintext, `tls: true`), the plain
//! ones from the sockets (`tls` absent or false); counts, sizes, ports and
//! sides must be exact on both ends, and ciphertext must never reach the
//! HTTP parser: no `lost` event of stage `parse`, and the summary's
//! `lost.parse` is 0.
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

const LANES: u32 = 3;
const ROUNDS: u32 = 3;

/// Client `c`'s plan: `LANES` concurrent lanes; per round each lane makes,
/// alternating the schemes, 2 requests on its https keep-alive connection,
/// 2 on its http keep-alive connection, and 4 on connections of their own
/// (2 https, 2 http): 200s, 201s with JSON bodies and 404s. The user ids
/// differ per client and lane so that counts per path are known.
fn plan(c: u32) -> Plan {
    let (s, p) = (Scheme::Https, Scheme::Http);
    let lanes = (0..LANES)
        .map(|l| {
            let n = 10 * c + l;
            let mut lane = Vec::new();
            for r in 0..ROUNDS {
                let ka = r + 1;
                lane.push(Item::user(s, n, ka));
                lane.push(Item::user(p, n, ka));
                lane.push(Item::order(s, &format!("tls-{c}-{l}"), r + 1, 0));
                lane.push(Item::order(p, &format!("plain-{c}-{l}"), r + 1, 0));
                lane.push(Item::missing(s, "/missing", ka));
                lane.push(Item::order(p, "ka", 7, ka));
                lane.push(Item::user(s, 100 + n, 0));
                lane.push(Item::missing(p, "/nope", 0));
            }
            lane
        })
        .collect();
    Plan { lanes }
}

#[test]
fn http_and_https_served_at_once_are_told_apart() {
    if !require_root("http_and_https_served_at_once_are_told_apart") {
        return;
    }
    let plans = [plan(1), plan(2)];
    let dir = TempDir::new("https-mixed");
    let ca = make_cert(dir.path());
    let (mut server, tls_port, plain_port) = start_server(dir.path(), true);
    let ports = (tls_port, plain_port);
    let mut clients: Vec<_> = plans
        .iter()
        .map(|p| start_client(tls_port, plain_port, &ca, p))
        .collect();
    let spid = server.pid();
    let cpids: Vec<u32> = clients.iter().map(|c| c.pid()).collect();

    let mut tracer = Tracer::attach(&[spid, cpids[0], cpids[1]], &["--duration", "120"]);
    for c in &mut clients {
        c.send_line("go");
    }
    let results: Vec<_> = clients
        .iter_mut()
        .zip(&plans)
        .map(|(c, p)| client_results(c, p))
        .collect();
    let total: usize = plans.iter().map(Plan::len).sum();
    let served = served(
        server.stdout.as_mut().expect("piped"),
        total,
        Duration::from_secs(10),
    );
    assert_served_matches(
        &served,
        &[(&plans[0], &results[0]), (&plans[1], &results[1])],
        ports,
    );

    let all_seen = wait_for_all(
        &mut tracer,
        spid,
        &[(cpids[0], &plans[0]), (cpids[1], &plans[1])],
        ports,
        Duration::from_secs(30),
    );
    assert!(
        tracer.proc.try_status().is_none(),
        "the tracer ended although the server (pid {spid}) is still running"
    );
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(15));
    drop(server);

    let clients = [
        (cpids[0], &plans[0], results[0].as_slice()),
        (cpids[1], &plans[1], results[1].as_slice()),
    ];
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
            "not every exit, http event and server-side close was printed within 30 s".into(),
        );
    }
    assert_no_problems(
        "http events of a server speaking http and https at once",
        &problems,
        &run,
    );
    run.assert_clean_end();
}
