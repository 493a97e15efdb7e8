//! `tracer probe` on a running node: libstdc++'s USDT points are listed,
//! and `uprobe:uv_fs_open` with its path argument reports exactly the
//! files a script opens, as bpftrace on the same function in the same run
//! does. `probe add --match REGEX` probes every running node process whose
//! command line matches, and no other. Needs root (loads BPF programs).

mod common;
mod probe_common;

use std::{collections::BTreeMap, process::Command, time::Duration};

use common::{Proc, StdoutTo, TRACER, TRACER_READY_TIMEOUT, TempDir, require_root, start_node};
use probe_common::{Bpftrace, ProbeRun, args_of, probe_list};

#[test]
fn node_usdt_points_and_uv_fs_open_paths() {
    if !require_root("node_usdt_points_and_uv_fs_open_paths") {
        return;
    }
    let dir = TempDir::new("probe-node");
    let dir_path = dir.path().display().to_string();
    let (mut node, _) = start_node("probe/fs_open.js", &[], &[&dir_path], StdoutTo::Pipe);
    let pid = node.pid();
    let pid_s = pid.to_string();

    // node has no USDT points of its own; the libstdc++ it maps has three.
    let listed = probe_list(&["--pid", &pid_s]);
    let mut points: Vec<&str> = listed
        .lines()
        .filter(|l| l.contains("/libstdc++.so"))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    points.sort();
    assert_eq!(
        points,
        ["libstdcxx:catch", "libstdcxx:rethrow", "libstdcxx:throw"],
        "{listed}"
    );
    let syms = probe_list(&["--pid", &pid_s, "--symbols", "uv_fs_open"]);
    assert!(syms.starts_with("/usr/bin/node uv_fs_open 0x"), "{syms}");

    // uv_fs_open(loop, req, path, flags, mode, cb): the path is arg2.
    let bt = Bpftrace::start(
        pid,
        "uprobe:/usr/bin/node:uv_fs_open { @open[str(arg2)] = count(); }",
    );
    let run = ProbeRun::start(
        pid,
        &[
            "--record",
            "args",
            "--args",
            "int,int,str,int",
            "uprobe:uv_fs_open",
        ],
    );
    node.send_line("go");
    node.stderr
        .wait_for("DONE", Duration::from_secs(30), |l| l == "DONE");
    let events = run.finish();
    let maps = bt.finish();

    let opened: Vec<(String, i64)> = args_of(&events, "uv_fs_open")
        .iter()
        .map(|a| {
            (
                a[2].as_str().expect("the path is a string").to_string(),
                a[3].as_i64().expect("flags"),
            )
        })
        .collect();
    let in_dir: Vec<(&str, i64)> = opened
        .iter()
        .filter(|(p, _)| p.starts_with(&dir_path))
        .map(|(p, f)| (&p[dir_path.len()..], *f & 3))
        .collect();
    // (file, O_ACCMODE): writeFileSync, readFileSync, fs.open(w),
    // fs.promises.writeFile.
    assert_eq!(
        in_dir,
        [
            ("/one.txt", libc::O_WRONLY as i64),
            ("/one.txt", libc::O_RDONLY as i64),
            ("/two.txt", libc::O_WRONLY as i64),
            ("/three.txt", libc::O_WRONLY as i64),
        ],
        "every uv_fs_open: {opened:?}"
    );
    // bpftrace saw the same calls (every path, not only the test's).
    let mut ours: BTreeMap<String, i64> = BTreeMap::new();
    for (p, _) in &opened {
        *ours.entry(format!("@open[{p}]")).or_default() += 1;
    }
    let theirs: BTreeMap<String, i64> = maps
        .into_iter()
        .filter(|(k, _)| k.starts_with("@open["))
        .collect();
    assert_eq!(ours, theirs);
}

#[test]
fn match_probes_every_matching_node_process() {
    if !require_root("match_probes_every_matching_node_process") {
        return;
    }
    // Two targets under one directory the regex names, one elsewhere.
    let parent = TempDir::new("probe-match");
    let other = TempDir::new("probe-nomatch");
    let dirs: Vec<String> = ["a", "b"]
        .iter()
        .map(|d| {
            let p = parent.path().join(d);
            std::fs::create_dir(&p).unwrap();
            p.display().to_string()
        })
        .collect();
    let other_dir = other.path().display().to_string();
    let mut nodes: Vec<_> = dirs
        .iter()
        .chain([&other_dir])
        .map(|d| start_node("probe/fs_open.js", &[], &[d], StdoutTo::Pipe).0)
        .collect();
    let mut cmd = Command::new(TRACER);
    cmd.args(["probe", "add", "--json", "--match"])
        .arg(parent.path().display().to_string().replace('.', "\\."))
        .args([
            "--record",
            "args",
            "--args",
            "int,int,str,int",
            "uprobe:uv_fs_open",
        ]);
    let mut tracer = Proc::spawn("tracer probe add --match", cmd, true);
    tracer
        .stderr
        .wait_for("tracer: ready", TRACER_READY_TIMEOUT, |l| {
            l == "tracer: ready"
        });
    for node in &mut nodes {
        node.send_line("go");
    }
    for node in &mut nodes {
        node.stderr
            .wait_for("DONE", Duration::from_secs(30), |l| l == "DONE");
    }
    tracer.signal(libc::SIGINT);
    let status = tracer.expect_exit(Duration::from_secs(30));
    tracer.drain(Duration::from_secs(10));
    assert!(status.success(), "{}", tracer.stderr.tail(40));
    let events: Vec<serde_json::Value> = tracer
        .stdout
        .as_ref()
        .unwrap()
        .seen()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("summary").is_none())
        .collect();
    let expected = [
        ("/one.txt".to_string(), libc::O_WRONLY as i64),
        ("/one.txt".to_string(), libc::O_RDONLY as i64),
        ("/two.txt".to_string(), libc::O_WRONLY as i64),
        ("/three.txt".to_string(), libc::O_WRONLY as i64),
    ];
    for (node, dir) in nodes.iter().zip(&dirs) {
        let pid = node.pid();
        let opens: Vec<(String, i64)> = events
            .iter()
            .filter(|e| e["kind"] == "probe" && e["pid"] == pid)
            .map(|e| {
                (
                    e["args"][2].as_str().unwrap_or("").to_string(),
                    e["args"][3].as_i64().unwrap() & 3,
                )
            })
            .filter(|(p, _)| p.starts_with(dir.as_str()))
            .map(|(p, f)| (p[dir.len()..].to_string(), f))
            .collect();
        assert_eq!(opens, expected, "PID {pid}");
    }
    let unmatched = nodes[2].pid();
    assert!(
        !events.iter().any(|e| e["pid"] == unmatched),
        "an event of the process --match does not name: {events:?}"
    );
    let stderr = tracer.stderr.seen().join("\n");
    for node in &nodes[..2] {
        assert!(
            stderr.contains(&format!("site(s) to PID {}", node.pid())),
            "{stderr}"
        );
    }
}
