//! `tracer attach --json` on a real framework app: express 4 from npm
//! (installed by this test under `target/test-npm/`), with a route with a
//! parameter (`/users/:id`), a POST with a JSON body parsed by
//! `express.json()`, express's own 404 and its default error handler (500),
//! driven by the node `http` client of tests/fixtures/http_client.js over a
//! keep-alive connection and connections of their own. Checked exactly as
//! in http_plain.rs: counts per (side, method, path, status), sizes, ports,
//! durations, req ids. Needs root (loads BPF programs) and the npm registry
//! the first time (then the install is reused).

mod common;
mod http_common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::require_root;
use http_common::{
    PlanItem, PlanRun, assert_no_losses, assert_no_problems, check_plan_run, count_http, run_plan,
    start_node_with_env,
};

/// The express release the test installs (pinned: the app's behaviour, not
/// whatever is newest, is what the test is about).
const EXPRESS_VERSION: &str = "4.22.3";
/// Longest an `npm install` may take.
const NPM_TIMEOUT: Duration = Duration::from_secs(300);

/// `target/test-npm/express-<version>`, owned by this test.
fn install_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .join("test-npm")
        .join(format!("express-{EXPRESS_VERSION}"))
}

/// Installs express into [`install_dir`] unless it is there already, and
/// returns its `node_modules`. The install goes to a fresh staging
/// directory that is renamed into place only when npm succeeded, so an
/// interrupted install is never mistaken for a finished one.
fn ensure_express() -> PathBuf {
    let dir = install_dir();
    let modules = dir.join("node_modules");
    if modules.join("express/package.json").is_file() {
        return modules;
    }
    let staging = dir.with_file_name(format!(
        "express-{EXPRESS_VERSION}.staging-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .unwrap_or_else(|e| panic!("creating {}: {e}", staging.display()));
    std::fs::write(
        staging.join("package.json"),
        format!(
            r#"{{"name":"tracer-test-express","private":true,"dependencies":{{"express":"{EXPRESS_VERSION}"}}}}"#
        ),
    )
    .expect("writing package.json");
    let mut child = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--no-update-notifier"])
        .current_dir(&staging)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("running npm (needed to install express {EXPRESS_VERSION}): {e}")
        });
    let deadline = Instant::now() + NPM_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for npm") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("npm install express@{EXPRESS_VERSION} took more than {NPM_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().expect("npm output");
    assert!(
        status.success(),
        "npm install express@{EXPRESS_VERSION} in {} failed ({status}):\n{}\n{}",
        staging.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        staging.join("node_modules/express/package.json").is_file(),
        "npm install succeeded but left no node_modules/express in {}",
        staging.display()
    );
    if let Err(e) = std::fs::rename(&staging, &dir) {
        // Another run finished first: use its install.
        let _ = std::fs::remove_dir_all(&staging);
        assert!(
            modules.join("express/package.json").is_file(),
            "moving {} to {}: {e}",
            staging.display(),
            dir.display()
        );
    }
    modules
}

fn plan() -> Vec<PlanItem> {
    let order = |item: &str, qty: u32| format!(r#"{{"item":"{item}","qty":{qty}}}"#);
    vec![
        PlanItem::new("GET", "/users/7", true, 200),
        PlanItem::new("POST", "/orders", true, 201).with_body(&order("widget", 3)),
        PlanItem::new("GET", "/nope", false, 404),
        PlanItem::new("GET", "/users/42", false, 200),
        PlanItem::new("GET", "/boom", true, 500),
        PlanItem::new("POST", "/orders", false, 201).with_body(&order("sprocket-assortment", 250)),
        PlanItem::new("GET", "/nope", true, 404),
        PlanItem::new("GET", "/users/1234", true, 200),
        PlanItem::new("GET", "/users/99", false, 200),
    ]
}

#[test]
fn express_app_exchanges_are_exact() {
    if !require_root("express_app_exchanges_are_exact") {
        return;
    }
    let modules = ensure_express();
    let plan = plan();
    let (mut server, ready) = start_node_with_env(
        "express_app.js",
        &[],
        &[("NODE_PATH", modules.to_str().expect("utf-8 path"))],
    );
    let (port, version) = ready
        .split_once(' ')
        .unwrap_or_else(|| panic!("express_app.js READY must be `<port> <version>`: {ready:?}"));
    assert_eq!(
        version, EXPRESS_VERSION,
        "the app must run the express the test installed"
    );
    let port: u16 = port.parse().expect("port");
    let PlanRun {
        mut tracer,
        results,
        served,
        spid,
        cpid,
    } = run_plan(&mut server, port, &plan);
    for r in &results {
        if r.path == "/nope" {
            assert!(
                r.body.contains("Cannot GET /nope"),
                "the 404 must come from express's own handler: {:?}",
                r.body
            );
        }
    }

    let n = plan.len();
    tracer.wait_events(Duration::from_secs(15), |evs| {
        count_http(evs, spid) >= n && count_http(evs, cpid) >= n
    });
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(15));
    drop(server);
    run.assert_clean_end();
    assert_no_losses(run.events.last().expect("summary"));

    let problems = check_plan_run(&run, spid, cpid, port, &plan, &results, &served);
    assert_no_problems(
        "http events of the express app and its client",
        &problems,
        &run,
    );
}
