//! `tracer attach` follows what a traced process starts after the attach:
//! its threads (a `worker_threads` Worker) and its child processes (a child
//! node spawned with `child_process.spawn`), with the right pid and tid on
//! every event. Needs root (loads BPF programs).

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{
    LogLine, Run, StdoutTo, TempDir, Tracer, list_problems, require_root, short, start_node,
};
use serde_json::Value;

/// One log line the test expects, with the thread that must have written it.
struct Expected {
    line: LogLine,
    tid: u32,
    comm: String,
}

/// Asserts that the `log` events of `pid` are exactly `expected`: each line
/// once, byte-exact, on its stream (and path), with the expected tid and
/// comm, and none extra.
fn assert_lines_with_tids(run: &Run, pid: u32, expected: &[Expected], who: &str) {
    let mut problems = Vec::new();
    let mut got: Vec<(LogLine, &Value)> = Vec::new();
    for e in run.of("log", pid) {
        let stream = e["stream"].as_str().unwrap_or("?");
        let path = e.get("path").and_then(Value::as_str).map(str::to_owned);
        let truncated = e.get("truncated").is_some_and(|t| t != false);
        got.push((
            LogLine {
                stream: stream.to_owned(),
                path,
                text: e["text"].as_str().unwrap_or("?").to_owned(),
                truncated,
            },
            e,
        ));
    }
    for want in expected {
        let hits: Vec<&Value> = got
            .iter()
            .filter(|(l, _)| *l == want.line)
            .map(|&(_, e)| e)
            .collect();
        match hits.as_slice() {
            [e] => {
                if e["tid"] != want.tid {
                    problems.push(format!(
                        "tid must be {} (the thread that wrote it): {}",
                        want.tid,
                        short(&e.to_string())
                    ));
                }
                if e["comm"] != want.comm.as_str() {
                    problems.push(format!(
                        "comm must be {:?}: {}",
                        want.comm,
                        short(&e.to_string())
                    ));
                }
            }
            _ => problems.push(format!(
                "expected once, seen {} times: {:?} {:?} {:?}",
                hits.len(),
                want.line.stream,
                want.line.path,
                want.line.text
            )),
        }
    }
    for (l, e) in &got {
        if !expected.iter().any(|w| w.line == *l) {
            problems.push(format!("unexpected line: {}", short(&e.to_string())));
        }
    }
    assert!(
        problems.is_empty(),
        "{who}: the log events of pid {pid} differ from what was written ({} expected, {} \
         seen):\n{}\ntracer stderr:\n{}",
        expected.len(),
        got.len(),
        list_problems(&problems),
        run.stderr_text()
    );
}

/// A Worker started after the attach: the lines it writes itself carry the
/// worker thread's tid; the lines it console.logs are written by node's main
/// thread (node forwards a worker's stdout to the main thread, which does the
/// write(); seen with strace), so they carry the main thread's tid.
#[test]
fn worker_thread_lines_carry_the_worker_tid() {
    if !require_root("worker_thread_lines_carry_the_worker_tid") {
        return;
    }
    let dir = TempDir::new("follow-worker");
    let log_path = dir.path().join("worker.log");
    let log_arg = log_path.to_str().expect("utf-8 path");
    let (mut node, _) = start_node("worker.js", &[], &[log_arg], StdoutTo::Pipe);
    let pid = node.pid();

    let tracer = Tracer::attach(&[pid], &["--duration", "60"]);
    node.send_line("go");
    let status = node.expect_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "worker.js failed ({status}):\n{}",
        node.stderr.tail(20)
    );
    let run = tracer.finish(Duration::from_secs(75));

    let worker_line = node
        .stderr
        .wait_for("the WORKER line", Duration::from_secs(5), |l| {
            l.starts_with("WORKER ")
        });
    let (tid, comm) = worker_line["WORKER tid=".len()..]
        .split_once(" comm=")
        .unwrap_or_else(|| panic!("bad WORKER line: {worker_line}"));
    let tid: u32 = tid.parse().expect("worker tid");
    let comm = comm.to_owned();
    assert_ne!(tid, pid, "the worker runs on its own thread");
    // The fixture really wrote its file.
    let file = std::fs::read_to_string(&log_path).expect("the worker wrote its log file");
    assert_eq!(
        file,
        "worker file line 1 of 3\nworker file line 2 of 3\nworker file line 3 of 3\n"
    );

    let main = |stream: &str, text: &str| Expected {
        line: LogLine::new(stream, None, text),
        tid: pid,
        comm: "node".to_owned(),
    };
    let mut expected = Vec::new();
    for i in 1..=5 {
        expected.push(main("stdout", &format!("worker console line {i} of 5")));
    }
    for i in 1..=2 {
        expected.push(Expected {
            line: LogLine::new("stdout", None, &format!("worker direct line {i} of 2")),
            tid,
            comm: comm.clone(),
        });
    }
    for i in 1..=3 {
        expected.push(Expected {
            line: LogLine::new(
                "file",
                Some(&log_path),
                &format!("worker file line {i} of 3"),
            ),
            tid,
            comm: comm.clone(),
        });
    }
    expected.push(main("stderr", &worker_line));
    expected.push(main("stdout", "main thread: worker done"));
    assert_lines_with_tids(&run, pid, &expected, "worker thread");

    // Every event of the process names it by its pid; the worker thread's
    // exit is not a process exit.
    let exits = run.of("exit", pid);
    assert!(
        exits.len() == 1 && exits[0]["exit_code"] == 0,
        "expected one exit event with exit_code 0 for pid {pid}, got {exits:?}"
    );
    let foreign: Vec<String> = run
        .events
        .iter()
        .filter(|e| e["kind"] != "summary" && e["pid"] != pid)
        .map(|e| short(&e.to_string()))
        .collect();
    assert!(
        foreign.is_empty(),
        "only pid {pid} is traced; events of other pids:\n{}",
        foreign.join("\n")
    );
    run.assert_clean_end();
}

/// What the test's loopback server saw of its one connection.
struct Served {
    peer: SocketAddr,
    request: String,
}

const REPLY: &str = "hello back from the test\n";
const REQUEST: &str = "hello from the child\n";

/// Accepts one connection (within `timeout`), reads one line, answers
/// [`REPLY`] and closes.
fn serve_once(listener: TcpListener, timeout: Duration) -> mpsc::Receiver<Result<Served, String>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let result = (|| {
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + timeout;
            let (stream, peer) = loop {
                match listener.accept() {
                    Ok(s) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(format!("no connection within {timeout:?}"));
                        }
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            stream.set_nonblocking(false).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let mut request = String::new();
            BufReader::new(&stream)
                .read_line(&mut request)
                .map_err(|e| format!("reading the request: {e}"))?;
            (&stream)
                .write_all(REPLY.as_bytes())
                .map_err(|e| format!("writing the reply: {e}"))?;
            Ok(Served { peer, request })
        })();
        let _ = tx.send(result);
    });
    rx
}

/// A child node process spawned after the attach is traced as itself: its
/// exec, lines, TCP connection, GCs (runtime probes attached to it after its
/// exec) and exit all carry the child's pid, and the tracer keeps running
/// after the child exits because its parent still lives.
#[test]
fn child_process_is_followed() {
    if !require_root("child_process_is_followed") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = listener.local_addr().expect("local addr").port();
    let served = serve_once(listener, Duration::from_secs(30));

    let (mut parent, _) = start_node("spawner.js", &[], &[&port.to_string()], StdoutTo::Pipe);
    let ppid = parent.pid();
    let mut tracer = Tracer::attach(&[ppid], &[]);
    parent.send_line("go");
    let child_line = parent
        .stderr
        .wait_for("the CHILD line", Duration::from_secs(10), |l| {
            l.starts_with("CHILD ")
        });
    let cpid: u32 = child_line["CHILD ".len()..]
        .parse()
        .unwrap_or_else(|e| panic!("bad CHILD line {child_line:?}: {e}"));
    let exited_line = parent.stdout.as_mut().expect("piped").wait_for(
        "the parent's `child exited` line",
        Duration::from_secs(30),
        |l| l.starts_with("child exited with "),
    );
    assert_eq!(
        exited_line,
        "child exited with 4 null",
        "child.js should exit with status 4; parent stderr:\n{}",
        parent.stderr.tail(20)
    );
    let served = served
        .recv_timeout(Duration::from_secs(5))
        .expect("the server thread answers")
        .unwrap_or_else(|e| panic!("the test's server: {e}"));
    assert_eq!(served.request, REQUEST, "what the child sent");

    // The child's exit must not end the run: its parent is the traced root
    // and still runs. Give the tracer time to (wrongly) stop.
    let child_gone = tracer.wait_events(Duration::from_secs(10), |evs| {
        evs.iter().any(|e| e["kind"] == "exit" && e["pid"] == cpid)
    });
    thread::sleep(Duration::from_secs(1));
    assert!(
        tracer.proc.try_status().is_none(),
        "the tracer ended although the traced parent (pid {ppid}) is still running; stderr:\n{}",
        tracer.proc.stderr.tail(20)
    );
    assert!(
        parent.try_status().is_none(),
        "spawner.js must still be running"
    );
    tracer.interrupt();
    let run = tracer.finish(Duration::from_secs(15));
    drop(parent);
    assert!(
        child_gone,
        "no exit event for the child (pid {cpid}) within 10 s of its exit"
    );

    let mut problems = Vec::new();
    let show = |e: &Value| short(&e.to_string());

    // exec: one, for the child, of node, before any of the child's lines.
    let execs = run.of("exec", cpid);
    match execs.as_slice() {
        [e] => {
            if e["exe"] != common::NODE {
                problems.push(format!("exec exe must be {}: {}", common::NODE, show(e)));
            }
        }
        _ => problems.push(format!(
            "expected one exec event for the child pid {cpid}, got {}: {:?}",
            execs.len(),
            execs.iter().map(|e| show(e)).collect::<Vec<_>>()
        )),
    }
    for e in run.events.iter().filter(|e| e["kind"] == "exec") {
        if e["pid"] != cpid {
            problems.push(format!("unexpected exec event: {}", show(e)));
        }
    }
    let first_child_log = run
        .of("log", cpid)
        .iter()
        .filter_map(|e| e["ts_ns"].as_u64())
        .min();
    if let (Some(exec), Some(log)) = (
        execs.first().and_then(|e| e["ts_ns"].as_u64()),
        first_child_log,
    ) && exec > log
    {
        problems.push(format!(
            "the child's exec event (ts {exec}) comes after its first line (ts {log})"
        ));
    }

    // TCP: the child's one connection, with its pid, exact bytes.
    let connects = run.of("tcp_connect", cpid);
    let closes = run.of("tcp_close", cpid);
    let tuple_ok = |e: &Value| {
        e["saddr"] == "127.0.0.1"
            && e["daddr"] == "127.0.0.1"
            && e["dport"] == port
            && e["sport"] == served.peer.port()
    };
    if !(connects.len() == 1 && tuple_ok(connects[0]) && connects[0]["tid"] == cpid) {
        problems.push(format!(
            "expected one tcp_connect 127.0.0.1:{} -> 127.0.0.1:{port} with pid and tid {cpid}, \
             got {:?}",
            served.peer.port(),
            connects.iter().map(|e| show(e)).collect::<Vec<_>>()
        ));
    }
    let close_ok = |e: &Value| {
        tuple_ok(e)
            && e["bytes_sent"] == REQUEST.len()
            && e["bytes_received"] == REPLY.len()
            && e.get("preexisting").is_none_or(|v| v == false)
            && e.get("failed").is_none_or(|v| v == false)
    };
    if !(closes.len() == 1 && close_ok(closes[0])) {
        problems.push(format!(
            "expected one tcp_close of port {} with bytes_sent {} and bytes_received {}, got {:?}",
            served.peer.port(),
            REQUEST.len(),
            REPLY.len(),
            closes.iter().map(|e| show(e)).collect::<Vec<_>>()
        ));
    }
    for kind in ["tcp_connect", "tcp_close", "tcp_accept"] {
        for e in run.of(kind, ppid) {
            problems.push(format!("the parent made no connection: {}", show(e)));
        }
    }

    // GC: the child forces 10 full collections from 1 s after it started,
    // which is after the tracer has attached its runtime probes.
    let gcs = run.of("gc", cpid);
    if gcs.len() < 10 {
        problems.push(format!(
            "expected at least 10 gc events for the child pid {cpid} (10 gc() calls from 1 s \
             after its exec), got {}",
            gcs.len()
        ));
    }

    // exit: exactly one, code 4.
    let exits = run.of("exit", cpid);
    if !(exits.len() == 1 && exits[0]["exit_code"] == 4) {
        problems.push(format!(
            "expected one exit event with exit_code 4 for the child pid {cpid}, got {:?}",
            exits.iter().map(|e| show(e)).collect::<Vec<_>>()
        ));
    }
    if !run.of("exit", ppid).is_empty() {
        problems.push("the parent is still running: no exit event expected for it".to_owned());
    }
    assert!(
        problems.is_empty(),
        "parent pid {ppid}, child pid {cpid}:\n{}\ntracer stderr:\n{}",
        list_problems(&problems),
        run.stderr_text()
    );

    // Lines: the child's with the child's pid (and its main thread's tid).
    let child = |text: &str| Expected {
        line: LogLine::new("stdout", None, text),
        tid: cpid,
        comm: "node".to_owned(),
    };
    let mut want_child: Vec<Expected> = (1..=5)
        .map(|i| child(&format!("child line {i} of 5")))
        .collect();
    want_child.push(child(&format!("child got: {}", REPLY.trim_end())));
    assert_lines_with_tids(&run, cpid, &want_child, "child");
    let want_parent = [
        Expected {
            line: LogLine::new("stderr", None, &child_line),
            tid: ppid,
            comm: "node".to_owned(),
        },
        Expected {
            line: LogLine::new("stdout", None, &exited_line),
            tid: ppid,
            comm: "node".to_owned(),
        },
    ];
    assert_lines_with_tids(&run, ppid, &want_parent, "parent");
    let foreign: Vec<String> = run
        .events
        .iter()
        .filter(|e| e["kind"] != "summary" && e["pid"] != ppid && e["pid"] != cpid)
        .map(show)
        .collect();
    assert!(
        foreign.is_empty(),
        "only the parent {ppid} and its child {cpid} are traced; events of other pids:\n{}",
        foreign.join("\n")
    );
    run.assert_clean_end();
}
