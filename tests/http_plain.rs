//! `tracer attach --json` on a node `http` server and a node `http` client
//! (two processes, both `--pid`): every request is reported once on each
//! side, with the exact method, path, status, request and response sizes,
//! ports and a duration that matches the client's own measurement, over a
//! keep-alive connection (an `http.Agent` with `keepAlive`) and over
//! connections of their own (`agent: false`), chunked responses included.
//! Needs root (loads BPF programs).

mod common;
mod http_common;

use std::time::Duration;

use common::{StdoutTo, require_root, start_node};
use http_common::{
    PlanItem, PlanRun, assert_no_losses, assert_no_problems, check_plan_run, count_http, run_plan,
};

/// The requests the client makes, in order: 6 `GET /users/<n>` (200),
/// 3 `POST /orders` with JSON bodies (201), 2 `GET /missing` (404),
/// 1 `GET /boom` (500) and 2 `GET /chunked` (200, two chunks 20 ms apart),
/// spread over the keep-alive connection and connections of their own.
fn plan() -> Vec<PlanItem> {
    let order = |item: &str, qty: u32| format!(r#"{{"item":"{item}","qty":{qty}}}"#);
    vec![
        PlanItem::new("GET", "/users/1", true, 200),
        PlanItem::new("POST", "/orders", true, 201).with_body(&order("widget", 2)),
        PlanItem::new("GET", "/users/2", false, 200),
        PlanItem::new("GET", "/missing", true, 404),
        PlanItem::new("GET", "/chunked", true, 200),
        PlanItem::new("POST", "/orders", false, 201).with_body(&order("gadget-xl", 12)),
        PlanItem::new("GET", "/users/3", true, 200),
        PlanItem::new("GET", "/boom", false, 500),
        PlanItem::new("GET", "/users/40", false, 200),
        PlanItem::new("GET", "/chunked", false, 200),
        PlanItem::new("GET", "/missing", false, 404),
        PlanItem::new("POST", "/orders", true, 201).with_body(&order(&"long-".repeat(40), 1)),
        PlanItem::new("GET", "/users/500", true, 200),
        PlanItem::new("GET", "/users/6000", false, 200),
    ]
}

#[test]
fn http_exchanges_seen_from_both_ends_with_exact_sizes() {
    if !require_root("http_exchanges_seen_from_both_ends_with_exact_sizes") {
        return;
    }
    let plan = plan();
    let (mut server, port) = start_node("http_server.js", &[], &[], StdoutTo::Pipe);
    let port: u16 = port.parse().unwrap_or_else(|e| {
        panic!("http_server.js READY line must carry its port ({port:?}): {e}")
    });
    let PlanRun {
        mut tracer,
        results,
        served,
        spid,
        cpid,
    } = run_plan(&mut server, port, &plan);
    for (r, p) in results.iter().zip(&plan) {
        if p.path == "/chunked" {
            assert_eq!(
                r.body, "first part\nsecond part\n",
                "the chunked response's body as the client received it"
            );
        }
    }

    // The server keeps running: wait (bounded) for both sides' exchanges,
    // then stop the tracer like Ctrl-C.
    let n = plan.len();
    tracer.wait_events(Duration::from_secs(15), |evs| {
        count_http(evs, spid) >= n && count_http(evs, cpid) >= n
    });
    assert!(
        tracer.proc.try_status().is_none(),
        "the tracer ended although the server (pid {spid}) is still running"
    );
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(15));
    drop(server);
    run.assert_clean_end();
    assert_no_losses(run.events.last().expect("summary"));

    let problems = check_plan_run(&run, spid, cpid, port, &plan, &results, &served);
    assert_no_problems(
        "http events of the plain http server and client",
        &problems,
        &run,
    );
}
