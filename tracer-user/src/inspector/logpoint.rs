//! `tracer logpoint add|list|rm`: log lines added to a running node
//! process at a source location, without a restart (docs/logpoints.md).

use std::{fmt::Write as _, time::Duration};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{
    audit::Audit,
    evaluate_json,
    session::{PortState, with_inspector},
    target::Target,
};

/// The code installed in the target (see the file's own comments).
const INJECTED: &str = include_str!("injected.js");
/// Longest --ttl: a forgotten logpoint must not outlive a working day.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Add, list and remove logpoints in running node processes.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tracer logpoint add --pid 4242 routes/orders.js:57 'order ${order.id} total=${total}'
  tracer logpoint add --pid 4242 app.js:12:9 'slow ${ms}ms' --condition 'ms > 100' --ttl 10m
  tracer logpoint list --pid 4242
  tracer logpoint add --match 'api/server\\.js' routes/orders.js:57 'order ${order.id}'
  tracer logpoint rm --pid 4242 lp-1a2b3c4d
  tracer logpoint rm --pid 4242 --all

Across the cluster (agents started with --allow-control; an admin token of
the aggregator's --admin-token-file; https://, or http:// on this machine):
  tracer logpoint add --aggregator https://agg:7878 --admin-token-file ~/.tracer-admin \\
      --host h1,h2 --match api routes/orders.js:57 'order ${order.id}'
  tracer logpoint list --aggregator https://agg:7878 --admin-token-file ~/.tracer-admin
  tracer logpoint rm --all --aggregator https://agg:7878 --admin-token-file ~/.tracer-admin

Each hit becomes a `logpoint` event in `tracer attach` / `tracer agent` output
(docs/events.md). The inspector port is open only while tracer installs or
removes a logpoint; the logpoints keep working with it closed. Needs root
(on this host); every operation is appended to the audit log, and through
the aggregator is an `audit` event too (docs/logpoints.md).")]
pub struct LogpointArgs {
    #[command(subcommand)]
    pub command: LogpointCommand,
}

#[derive(Debug, Subcommand)]
pub enum LogpointCommand {
    /// Add a logpoint at FILE:LINE[:COL] of a loaded script.
    Add(AddArgs),
    /// List the logpoints of processes.
    List(ListArgs),
    /// Remove logpoints (by id, or --all).
    Rm(RmArgs),
}

/// The processes a logpoint command acts on.
#[derive(Debug, Args)]
pub struct Targets {
    /// Process to act on (repeatable; this host only).
    #[arg(
        long = "pid",
        required_unless_present_any = ["match_cmdline", "aggregator"],
        conflicts_with = "aggregator",
        value_name = "PID"
    )]
    pub pids: Vec<u32>,
    /// Also every node process whose command line matches this regex
    /// (with --aggregator: on every selected host).
    #[arg(long = "match", value_name = "REGEX")]
    pub match_cmdline: Option<String>,
    #[command(flatten)]
    pub remote: crate::control::remote::RemoteArgs,
}

impl Targets {
    /// Turn `--match` into PIDs (see `select_pids`).
    fn resolve(&mut self) -> Result<()> {
        self.pids = super::select_pids(&self.pids, self.match_cmdline.as_deref())?;
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub targets: Targets,
    /// FILE:LINE[:COL], 1-based. FILE matches the end of a loaded script's
    /// path or URL (`routes/orders.js`, `/srv/app/routes/orders.js`).
    pub location: String,
    /// The line to log: JavaScript template-literal text evaluated in the
    /// scope of the location, e.g. 'user ${req.user.id} total=${total}'.
    pub template: String,
    /// Log only hits where this JavaScript expression is truthy.
    #[arg(long, value_name = "EXPR")]
    pub condition: Option<String>,
    /// Remove the logpoint by itself after this long (at most 24h).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Remove the logpoint by itself after this many lines.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_hits: Option<u64>,
    /// At most this many lines per second; hits beyond it are counted
    /// (`dropped` on the next line, and in `list`), not logged. Each hit
    /// costs ~100-200 µs of V8's breakpoint machinery, so once a second
    /// has counted as many dropped as it logged, the logpoint is lifted
    /// until that second ends (`unwatched_ms` says for how long).
    #[arg(long, default_value_t = 100, value_name = "LINES",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The id to give the logpoint (a command through the aggregator gives
    /// every process the same one, so `rm ID` works cluster-wide).
    #[arg(skip)]
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub targets: Targets,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub targets: Targets,
    /// Logpoint ids to remove.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub ids: Vec<String>,
    /// Remove every logpoint (and everything tracer installed).
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub json: bool,
}

/// FILE:LINE[:COL] split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: u32,
    pub column: Option<u32>,
}

pub fn parse_location(s: &str) -> Result<Location> {
    let bad = || {
        anyhow::anyhow!(
            "location {s:?} must be FILE:LINE or FILE:LINE:COL with 1-based numbers \
             (e.g. routes/orders.js:57)"
        )
    };
    let mut parts = s.rsplitn(3, ':');
    let last = parts.next().ok_or_else(bad)?;
    let mid = parts.next().ok_or_else(bad)?;
    let num = |p: &str| p.parse::<u32>().ok().filter(|n| *n >= 1);
    let (file, line, column) = match (num(mid), num(last)) {
        (Some(line), Some(col)) => (parts.next().ok_or_else(bad)?.to_owned(), line, Some(col)),
        (_, Some(line)) => {
            // FILE:LINE: everything before the last colon is the file.
            let file = &s[..s.len() - last.len() - 1];
            (file.to_owned(), line, None)
        }
        _ => return Err(bad()),
    };
    if file.is_empty() {
        return Err(bad());
    }
    Ok(Location { file, line, column })
}

/// The body of a JavaScript template literal: `${...}` parts are kept as
/// code; backticks and backslashes in the text around them are escaped so
/// the text is logged as written. Fails on an unclosed `${`.
pub fn template_literal(template: &str) -> Result<String> {
    let mut out = String::with_capacity(template.len() + 8);
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '$' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push_str("${");
                // Copy the expression up to its matching brace, skipping
                // braces inside string literals.
                let mut depth = 1;
                let mut quote: Option<char> = None;
                loop {
                    let Some(e) = chars.next() else {
                        bail!("template {template:?}: a `${{` is not closed by `}}`");
                    };
                    out.push(e);
                    match (quote, e) {
                        (Some(_), '\\') => {
                            if let Some(n) = chars.next() {
                                out.push(n);
                            }
                        }
                        (Some(q), e) if e == q => quote = None,
                        (Some(_), _) => {}
                        (None, '\'' | '"' | '`') => quote = Some(e),
                        (None, '{') => depth += 1,
                        (None, '}') => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The statement a logpoint adds to its location's breakpoint condition
/// (injected.js composes one per logpoint there; the condition always
/// returns false, so nothing pauses): the user's condition, the caps, the
/// rendering and the hand-off. `__t` is tracer's global.
pub fn logpoint_block(id: &str, template: &str, condition: Option<&str>) -> Result<String> {
    let id = serde_json::to_string(id)?;
    let body = template_literal(template)?;
    let test = match condition {
        // On its own lines: a `//` comment in it cannot swallow the rest.
        Some(c) => format!("try {{ __ok = !!(\n{c}\n); }} catch (__e) {{ __ok = false; }} "),
        None => String::new(),
    };
    Ok(format!(
        "{{ let __ok = true; {test}if (__ok && __t.admit({id})) {{ let __s; \
         try {{ __s = `{body}`; }} catch (__e) {{ __s = '<logpoint error: ' + __e + '>'; }} \
         __t.emit({id}, __s); }} }}"
    ))
}

pub fn new_id() -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("lp-{}", &u[..8])
}

/// Calls `__tracer.METHOD(args)` in the target, installing tracer's code
/// first when `install` (else answering `absent` when it is not there).
fn call_expression(method: &str, args: &str, install: bool, absent: &str) -> String {
    if install {
        format!("({INJECTED})(require).{method}({args})")
    } else {
        format!(
            "(globalThis.__tracer === undefined ? {absent} : \
             globalThis.__tracer.{method}({args}))"
        )
    }
}

pub async fn run(args: LogpointArgs) -> Result<()> {
    let remote = match &args.command {
        LogpointCommand::Add(a) => &a.targets,
        LogpointCommand::List(a) => &a.targets,
        LogpointCommand::Rm(a) => &a.targets,
    };
    if remote.remote.aggregator.is_some() {
        return crate::control::remote::logpoint(&args).await;
    }
    super::require_root("logpoint")?;
    let none = Value::Null;
    let (results, json_out) = match args.command {
        LogpointCommand::Add(mut a) => {
            a.targets.resolve()?;
            (add(&a, &none), a.json)
        }
        LogpointCommand::List(mut a) => {
            a.targets.resolve()?;
            (list(&a, &none), a.json)
        }
        LogpointCommand::Rm(mut a) => {
            a.targets.resolve()?;
            (rm(&a, &none), a.json)
        }
    };
    let mut failed = 0;
    for (pid, r) in &results {
        match r {
            Ok(report) => {
                if json_out {
                    println!(
                        "{}",
                        json!({ "pid": pid, "ok": true, "result": report.json })
                    );
                } else {
                    print!("{}", report.text);
                }
            }
            Err(e) => {
                failed += 1;
                if json_out {
                    println!(
                        "{}",
                        json!({ "pid": pid, "ok": false, "error": format!("{e:#}") })
                    );
                } else {
                    // Most errors about a process already start by naming it.
                    let msg = format!("{e:#}");
                    if msg.starts_with(&format!("PID {pid}")) {
                        eprintln!("error: {msg}");
                    } else {
                        eprintln!("error: PID {pid}: {msg}");
                    }
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} processes failed", results.len());
    }
    Ok(())
}

pub struct Report {
    pub json: Value,
    pub text: String,
}

fn port_note(state: PortState) -> &'static str {
    match state {
        PortState::OpenedByTracer => "inspector opened with SIGUSR1 and closed again",
        PortState::LeftOpenByTracer => {
            "inspector was left open by an interrupted tracer; closed now"
        }
        PortState::AlreadyOpen => "inspector was already open; left open as found",
    }
}

/// Runs one audited operation on each process. `origin` (a command
/// through the aggregator: its id and who sent it) goes into the audit
/// record.
fn each_pid(
    pids: &[u32],
    op: &str,
    mut what: Value,
    origin: &Value,
    expression: impl Fn() -> Result<String>,
    render: impl Fn(u32, &Value, PortState) -> String,
) -> Vec<(u32, Result<Report>)> {
    if !origin.is_null() {
        what["origin"] = origin.clone();
    }
    let mut out = Vec::new();
    for &pid in pids {
        let r = (|| -> Result<Report> {
            let target = Target::inspect(pid)?;
            let audit = Audit::begin(op, pid, &target.exe, what.clone())?;
            let expr = expression()?;
            let result = with_inspector(&target, async move |cdp, state| {
                let v = evaluate_json(cdp, &expr).await?;
                Ok((v, state))
            });
            audit.end(
                &result,
                result
                    .as_ref()
                    .map(|(v, _)| v.clone())
                    .unwrap_or(Value::Null),
            );
            let (v, state) = result?;
            Ok(Report {
                text: render(pid, &v, state),
                json: v,
            })
        })();
        out.push((pid, r));
    }
    out
}

/// What a logpoint costs even where it never fires (docs/logpoints.md,
/// "Cost"): said at every `add`, since nothing else would show it.
const DEBUGGER_NOTE: &str = "while the process has logpoints, V8's debugger is on in it: \
every await and promise reaction costs ~1 µs more (see docs/logpoints.md, Cost)";

pub fn add(a: &AddArgs, origin: &Value) -> Vec<(u32, Result<Report>)> {
    let prepared = (|| -> Result<(Location, String, String)> {
        if a.ttl.is_zero() || a.ttl > MAX_TTL {
            bail!("--ttl must be more than 0 and at most 24h");
        }
        let loc = parse_location(&a.location)?;
        let id = a.id.clone().unwrap_or_else(new_id);
        if !id.starts_with("lp-")
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            bail!("logpoint id {id:?} must be lp- followed by letters and digits");
        }
        let block = logpoint_block(&id, &a.template, a.condition.as_deref())?;
        Ok((loc, id, block))
    })();
    let (loc, id, block) = match prepared {
        Ok(p) => p,
        Err(e) => return vec![(a.targets.pids.first().copied().unwrap_or(0), Err(e))],
    };
    let spec = json!({
        "id": id,
        "file": loc.file,
        "line": loc.line,
        "column": loc.column,
        "template": a.template,
        "condition": a.condition,
        "block": block,
        "maxHits": a.max_hits,
        "rate": a.rate,
        "ttlMs": a.ttl.as_millis() as u64,
    });
    let what = json!({
        "location": a.location, "template": a.template, "condition": a.condition,
        "ttl_s": a.ttl.as_secs(), "max_hits": a.max_hits, "rate": a.rate, "id": id,
    });
    let requested = a.location.clone();
    let ttl = humantime::format_duration(a.ttl).to_string();
    each_pid(
        &a.targets.pids,
        "logpoint.add",
        what,
        origin,
        || Ok(call_expression("add", &spec.to_string(), true, "null")),
        |pid, v, state| {
            format!(
                "logpoint {} added to PID {pid} at {}:{}:{} (asked for {requested}); \
                 removed after {ttl}{}\n  {}\n  {DEBUGGER_NOTE}\n",
                v["id"].as_str().unwrap_or("?"),
                v["url"].as_str().unwrap_or("?"),
                v["line"],
                v["column"],
                v["max_hits"]
                    .as_u64()
                    .map(|n| format!(" or {n} lines"))
                    .unwrap_or_default(),
                port_note(state),
            )
        },
    )
}

fn describe_line(lp: &Value) -> String {
    format!(
        "{}  {}:{}:{}  hits={} logged={} dropped={}{} expires_in={}s  {}{}",
        lp["id"].as_str().unwrap_or("?"),
        lp["url"].as_str().unwrap_or("?"),
        lp["line"],
        lp["column"],
        lp["hits"],
        lp["emitted"],
        lp["dropped"],
        match lp["unwatched_ms"].as_u64() {
            Some(ms) if ms > 0 => format!(" unwatched={ms}ms"),
            _ => String::new(),
        },
        lp["expires_in_ms"].as_u64().unwrap_or(0) / 1000,
        lp["template"].as_str().unwrap_or(""),
        lp["condition"]
            .as_str()
            .map(|c| format!("  if {c}"))
            .unwrap_or_default(),
    )
}

pub fn list(a: &ListArgs, origin: &Value) -> Vec<(u32, Result<Report>)> {
    each_pid(
        &a.targets.pids,
        "logpoint.list",
        json!({}),
        origin,
        || Ok(call_expression("list", "", false, "[]")),
        |pid, v, state| {
            let lps = v.as_array().cloned().unwrap_or_default();
            let mut s = format!(
                "PID {pid}: {} logpoint(s) ({})\n",
                lps.len(),
                port_note(state)
            );
            for lp in &lps {
                let _ = writeln!(s, "  {}", describe_line(lp));
            }
            s
        },
    )
}

pub fn rm(a: &RmArgs, origin: &Value) -> Vec<(u32, Result<Report>)> {
    let ids = if a.all {
        "null".to_owned()
    } else {
        serde_json::to_string(&a.ids).unwrap_or_else(|_| "[]".into())
    };
    let wanted = a.ids.clone();
    each_pid(
        &a.targets.pids,
        "logpoint.rm",
        json!({ "ids": a.ids, "all": a.all }),
        origin,
        || {
            Ok(call_expression(
                "rm",
                &ids,
                false,
                r#"{"removed":[],"remaining":0}"#,
            ))
        },
        |pid, v, state| {
            let removed = v["removed"].as_array().cloned().unwrap_or_default();
            let mut s = String::new();
            for lp in &removed {
                let _ = writeln!(s, "removed from PID {pid}: {}", describe_line(lp));
            }
            for id in &wanted {
                if !removed.iter().any(|lp| lp["id"] == id.as_str()) {
                    let _ = writeln!(s, "PID {pid} has no logpoint {id}");
                }
            }
            let remaining = v["remaining"].as_u64().unwrap_or(0);
            if remaining == 0 {
                let _ = writeln!(
                    s,
                    "PID {pid}: no logpoints left; nothing of tracer's remains in it ({})",
                    port_note(state)
                );
            } else {
                let _ = writeln!(s, "PID {pid}: {remaining} logpoint(s) left");
            }
            s
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            parse_location("routes/orders.js:57").unwrap(),
            Location {
                file: "routes/orders.js".into(),
                line: 57,
                column: None
            }
        );
        assert_eq!(
            parse_location("file:///srv/a.mjs:3:9").unwrap(),
            Location {
                file: "file:///srv/a.mjs".into(),
                line: 3,
                column: Some(9)
            }
        );
        assert!(parse_location("a.js").is_err());
        assert!(parse_location("a.js:0").is_err());
        assert!(parse_location(":3").is_err());
    }

    #[test]
    fn templates_keep_code_and_escape_text() {
        assert_eq!(
            template_literal("a `b` \\n ${x.y} ${ {a:1}.a } ${'}'}").unwrap(),
            "a \\`b\\` \\\\n ${x.y} ${ {a:1}.a } ${'}'}"
        );
        assert!(template_literal("x ${oops").is_err());
    }

    #[test]
    fn ids() {
        let id = new_id();
        assert_eq!(id.len(), 11, "{id}");
        assert!(id.starts_with("lp-"));
        assert!(id[3..].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_ne!(new_id(), id);
    }
}
