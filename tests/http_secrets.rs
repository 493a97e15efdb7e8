//! Secrets in HTTP headers never leave the tracer: a node client sends
//! `Authorization`, `Proxy-Authorization` and `Cookie` headers (upper, lower
//! and mixed case; one head cut in the middle of the token across two
//! writes) and a password in a body, and a node server answers with a
//! secret `Set-Cookie`. Three tracers watch both processes at once:
//! `tracer attach --json`, `tracer attach` (text) and `tracer agent --json
//! --pid ...` with its `/metrics`. No secret value appears anywhere in
//! their stdout, stderr or metrics, while the exchanges are all reported.
//! Needs root (loads BPF programs).

mod common;
mod http_common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use common::{Proc, TRACER, Tracer, now_ns, require_root};
use http_common::{
    HttpKey, assert_agent_clean_end, assert_no_losses, assert_no_problems, check_http_fields,
    count_http, diff_counts, free_port, http_counts, http_request_series, key, parse_exposition,
    scrape, start_agent, start_node_with_env,
};
use serde_json::Value;

/// Requests the client makes: (method, path, how many).
const REQUESTS: [(&str, &str, usize); 4] = [
    ("GET", "/profile", 2),
    ("POST", "/login", 1),
    ("GET", "/proxy-check", 1),
    ("GET", "/raw", 1),
];
const TOTAL: usize = 5;

/// Every string in a JSON value, keys included.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                out.push(k.clone());
                strings(x, out);
            }
        }
        _ => {}
    }
}

/// One problem per place a secret (or a recognisable half of one) shows.
fn find_secrets(where_: &str, text: &str, secrets: &[(&str, String)], problems: &mut Vec<String>) {
    for (name, secret) in secrets {
        // The whole value, and each half of it: the head that carries the
        // token is also cut in the middle of it.
        let half = secret.len() / 2;
        for needle in [&secret[..], &secret[..half], &secret[half..]] {
            if let Some(at) = text.find(needle) {
                let start = text[..at]
                    .char_indices()
                    .rev()
                    .nth(60)
                    .map_or(0, |(i, _)| i);
                let end = (at + needle.len() + 60).min(text.len());
                let end = (end..=text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(text.len());
                problems.push(format!(
                    "{where_}: {name} ({needle:?}) appears: ...{}...",
                    &text[start..end]
                ));
                break;
            }
        }
    }
}

#[test]
fn header_secrets_never_reach_output_or_metrics() {
    if !require_root("header_secrets_never_reach_output_or_metrics") {
        return;
    }
    // Unique per run, so that nothing else on the machine can contain them.
    let stamp = now_ns();
    let secret = |what: &str| format!("S3CRET-{what}-{stamp:x}-{:x}", std::process::id());
    let secrets = [
        ("the bearer token", secret("TOKEN")),
        ("the session cookie", secret("COOKIE")),
        ("the Set-Cookie value", secret("SETCOOKIE")),
        ("the proxy credentials", secret("PROXY")),
        ("the password in a body", secret("PASSWORD")),
    ];
    let (server, port) = start_node_with_env(
        "secrets_server.js",
        &[],
        &[("SECRET_SET_COOKIE", &secrets[2].1)],
    );
    let port: u16 = port
        .parse()
        .unwrap_or_else(|e| panic!("secrets_server.js READY must carry its port ({port:?}): {e}"));
    let (mut client, _) = start_node_with_env(
        "secrets_client.js",
        &[&port.to_string()],
        &[
            ("SECRET_TOKEN", &secrets[0].1),
            ("SECRET_COOKIE", &secrets[1].1),
            ("SECRET_PROXY", &secrets[3].1),
            ("SECRET_PASSWORD", &secrets[4].1),
        ],
    );
    let (spid, cpid) = (server.pid(), client.pid());
    let (s, c) = (spid.to_string(), cpid.to_string());

    let metrics_port = free_port();
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let mut agent = start_agent(&[
        "--pid",
        &s,
        "--pid",
        &c,
        "--metrics-listen",
        &metrics_addr.to_string(),
    ]);
    let mut json = Tracer::attach(&[spid, cpid], &["--duration", "60"]);
    let mut text = {
        let mut cmd = Command::new(TRACER);
        cmd.args(["attach", "--pid", &s, "--pid", &c, "--duration", "60"]);
        let mut t = Tracer {
            proc: Proc::spawn("tracer attach (text)", cmd, true),
            started_ns: now_ns(),
        };
        t.wait_ready();
        t
    };

    client.send_line("go");
    let status = client.expect_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "secrets_client.js failed ({status}):\n{}",
        client.stderr.tail(20)
    );
    client.drain(Duration::from_secs(5));
    assert_eq!(
        client.stdout.as_ref().expect("piped").seen(),
        ["DONE 5"],
        "the client's stdout"
    );

    for t in [&mut json, &mut agent] {
        t.wait_events(Duration::from_secs(15), |evs| {
            count_http(evs, spid) >= TOTAL && count_http(evs, cpid) >= TOTAL
        });
    }
    let text_http = |t: &mut Tracer| {
        t.stdout().poll();
        t.stdout()
            .seen()
            .iter()
            .filter(|l| l.contains(" http served ") || l.contains(" http called "))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while text_http(&mut text) < 2 * TOTAL && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The counters reach the metrics as the events are printed; wait until
    // the scrape shows them all (bounded).
    let mut metrics = scrape(metrics_addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = parse_exposition(&metrics);
        let total = |pid| http_request_series(&samples, pid).values().sum::<f64>();
        if (total(spid) == TOTAL as f64 && total(cpid) == TOTAL as f64)
            || Instant::now() >= deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        metrics = scrape(metrics_addr);
    }

    for t in [&json, &text, &agent] {
        t.interrupt();
    }
    let json_run = json.finish(Duration::from_secs(15));
    let agent_run = agent.finish(Duration::from_secs(15));
    assert!(
        text.proc.wait_exit(Duration::from_secs(15)).is_some(),
        "the text-mode tracer did not exit after SIGINT"
    );
    text.proc.drain(Duration::from_secs(10));
    let text_stdout = text.stdout().seen().to_vec();
    let text_stderr = text.proc.stderr.seen().to_vec();
    drop(server);
    json_run.assert_clean_end();
    assert_no_losses(json_run.events.last().expect("summary"));
    assert_agent_clean_end(&agent_run);

    let mut problems = Vec::new();
    // 1. No secret anywhere: raw lines (stdout, stderr) of all three, every
    //    string of every JSON event (escapes decoded), the metrics.
    let outputs: [(&str, &[String]); 6] = [
        ("tracer attach --json stdout", &json_run.lines),
        ("tracer attach --json stderr", &json_run.stderr),
        ("tracer attach (text) stdout", &text_stdout),
        ("tracer attach (text) stderr", &text_stderr),
        ("tracer agent stdout", &agent_run.lines),
        ("tracer agent stderr", &agent_run.stderr),
    ];
    for (what, lines) in outputs {
        find_secrets(what, &lines.join("\n"), &secrets, &mut problems);
    }
    for (what, run) in [("attach", &json_run), ("agent", &agent_run)] {
        let mut all = Vec::new();
        for e in &run.events {
            strings(e, &mut all);
        }
        find_secrets(
            &format!("decoded strings of the {what} events"),
            &all.join("\n"),
            &secrets,
            &mut problems,
        );
    }
    find_secrets("/metrics", &metrics, &secrets, &mut problems);
    if !problems.is_empty() {
        // Keep the message about the leak, not about everything else.
        assert_no_problems("secrets leaked", &problems, &json_run);
    }

    // 2. The exchanges are all there, on both sides, in every output.
    let mut want: BTreeMap<HttpKey, usize> = BTreeMap::new();
    for (method, path, n) in REQUESTS {
        want.insert(key("server", method, path, 200), n);
    }
    let want_client: BTreeMap<HttpKey, usize> = want
        .iter()
        .map(|((_, m, p, st), n)| (key("client", m, p, *st), *n))
        .collect();
    for (what, run) in [("attach --json", &json_run), ("agent", &agent_run)] {
        diff_counts(
            &format!("{what}: server pid {spid}"),
            &want,
            &http_counts(&run.events, spid),
            &mut problems,
        );
        diff_counts(
            &format!("{what}: client pid {cpid}"),
            &want_client,
            &http_counts(&run.events, cpid),
            &mut problems,
        );
        for e in run.of("http", spid).into_iter().chain(run.of("http", cpid)) {
            let pid = u32::try_from(e["pid"].as_u64().unwrap_or(0)).unwrap_or(0);
            check_http_fields(e, pid, &mut problems);
        }
    }
    let mut text_counts: BTreeMap<String, usize> = BTreeMap::new();
    for l in &text_stdout {
        for (verb, pid) in [("served", &s), ("called", &c)] {
            let marker = format!(" {pid}/{pid} node http {verb} ");
            if let Some((_, rest)) = l.split_once(&marker) {
                let what: Vec<&str> = rest.split(' ').take(3).collect();
                *text_counts
                    .entry(format!("{verb} {}", what.join(" ")))
                    .or_default() += 1;
            }
        }
    }
    let mut want_text = BTreeMap::new();
    for (method, path, n) in REQUESTS {
        for verb in ["served", "called"] {
            want_text.insert(format!("{verb} {method} {path} 200"), n);
        }
    }
    diff_counts("text output", &want_text, &text_counts, &mut problems);
    let samples = parse_exposition(&metrics);
    for (pid, side) in [(spid, "server"), (cpid, "client")] {
        let got = http_request_series(&samples, pid);
        let want: BTreeMap<(String, String, String, String), f64> = REQUESTS
            .iter()
            .map(|(m, p, n)| {
                (
                    (
                        side.to_owned(),
                        (*m).to_owned(),
                        "2xx".to_owned(),
                        (*p).to_owned(),
                    ),
                    *n as f64,
                )
            })
            .collect();
        diff_counts(
            &format!("/metrics tracer_http_requests_total of pid {pid}"),
            &want,
            &got,
            &mut problems,
        );
    }
    assert_no_problems("http events next to secrets", &problems, &json_run);
}
