//! `tracer eval`: evaluate one expression in a running node process's main
//! context and print its value.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use super::{
    audit::Audit,
    cdp::{self, Cdp},
    session::{PortState, with_inspector},
    target::Target,
};

/// Evaluate a JavaScript expression inside a running node process.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tracer eval --pid 4242 'process.memoryUsage()'
  tracer eval --pid 4242 'require(\"os\").loadavg()'
  tracer eval --pid 4242 'await fetch(\"http://127.0.0.1:8080/health\").then(r => r.status)'
  tracer eval --aggregator https://agg:7878 --admin-token-file ~/.tracer-admin \\
      --host h2 --match api 'process.memoryUsage().rss'     # across the cluster

The expression runs in the process's main context, like a line typed in
node's REPL: top-level `await` works and `require` is available. The value
is printed as JSON when it can be serialised, else as node's preview of it.
The inspector port is open only for the moment of the evaluation. Needs root;
every evaluation is appended to the audit log (docs/logpoints.md).")]
pub struct EvalArgs {
    /// Process to evaluate in (this host).
    #[arg(
        long,
        value_name = "PID",
        required_unless_present = "aggregator",
        conflicts_with = "aggregator"
    )]
    pub pid: Option<u32>,
    /// With --aggregator: every node process whose command line matches
    /// this regex, on every selected host.
    #[arg(long = "match", value_name = "REGEX", requires = "aggregator")]
    pub match_cmdline: Option<String>,
    #[command(flatten)]
    pub remote: crate::control::remote::RemoteArgs,
    /// The JavaScript to evaluate.
    pub expression: String,
    /// Give up waiting after this long. Synchronous code is stopped at the
    /// deadline; an awaited promise keeps running in the process.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print {"value": ...} or {"error": ...} as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluated {
    /// The value as JSON (`undefined` is JSON null with `undefined: true`).
    Json(Value),
    /// A value JSON cannot carry (a function, a cyclic object, NaN, 1n,
    /// undefined): node's description of it.
    Preview(String),
    /// It threw: the exception's text.
    Thrown(String),
}

impl Evaluated {
    pub fn to_text(&self) -> String {
        match self {
            Evaluated::Json(v) => serde_json::to_string_pretty(v).unwrap_or_default(),
            Evaluated::Preview(s) => s.clone(),
            Evaluated::Thrown(s) => format!("Uncaught {s}"),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Evaluated::Json(v) => json!({ "value": v }),
            Evaluated::Preview(s) => json!({ "preview": s }),
            Evaluated::Thrown(s) => json!({ "error": s }),
        }
    }
}

const OBJECT_GROUP: &str = "tracer-eval";

/// Evaluates `expression` like node's REPL does (`replMode`: top-level
/// await, redeclarable `let`), and releases every handle it made.
pub async fn evaluate(cdp: &mut Cdp, expression: &str, timeout: Duration) -> Result<Evaluated> {
    let params = json!({
        "expression": expression,
        "includeCommandLineAPI": true,
        "replMode": true,
        "awaitPromise": true,
        "generatePreview": true,
        "objectGroup": OBJECT_GROUP,
        "timeout": timeout.as_millis() as u64,
    });
    // V8 stops synchronous code at `timeout` and answers; the grace lets
    // that answer arrive.
    let wait = timeout + Duration::from_secs(2);
    let r = match tokio::time::timeout(wait, cdp.call("Runtime.evaluate", params)).await {
        Ok(Err(e))
            if e.downcast_ref::<cdp::CdpError>()
                .is_some_and(|c| c.message.contains("Execution was terminated")) =>
        {
            bail!("stopped at the deadline (--timeout): it was still running")
        }
        Ok(r) => r?,
        Err(_) => bail!(
            "no result within {} (an awaited promise may still be running in the process)",
            humantime::format_duration(timeout)
        ),
    };
    let out = describe(cdp, &r).await;
    let _ = cdp
        .call(
            "Runtime.releaseObjectGroup",
            json!({ "objectGroup": OBJECT_GROUP }),
        )
        .await;
    out
}

async fn describe(cdp: &mut Cdp, r: &Value) -> Result<Evaluated> {
    if let Some(details) = r.get("exceptionDetails") {
        let text = cdp::exception_text(details);
        if text.contains("Execution was terminated") {
            bail!("stopped at the deadline (--timeout): it was still running");
        }
        return Ok(Evaluated::Thrown(text));
    }
    let obj = &r["result"];
    if obj["type"] == "undefined" {
        return Ok(Evaluated::Preview("undefined".into()));
    }
    if let Some(u) = obj["unserializableValue"].as_str() {
        return Ok(Evaluated::Preview(u.to_owned()));
    }
    if let Some(v) = obj.get("value") {
        return Ok(Evaluated::Json(v.clone()));
    }
    if let Some(id) = obj["objectId"].as_str() {
        let s = cdp
            .call(
                "Runtime.callFunctionOn",
                json!({
                    "objectId": id,
                    "functionDeclaration": "function () { try { const s = JSON.stringify(this); \
                        return typeof this === 'function' ? null : (s === undefined ? null : s); } \
                        catch (e) { return null; } }",
                    "returnByValue": true,
                    "silent": true,
                }),
            )
            .await?;
        if let Some(text) = s["result"]["value"].as_str()
            && let Ok(v) = serde_json::from_str::<Value>(text)
        {
            return Ok(Evaluated::Json(v));
        }
    }
    Ok(Evaluated::Preview(
        obj["description"]
            .as_str()
            .unwrap_or("(no description)")
            .to_owned(),
    ))
}

pub async fn run(args: EvalArgs) -> Result<()> {
    if args.remote.aggregator.is_some() {
        return crate::control::remote::eval(&args).await;
    }
    super::require_root("eval")?;
    let pid = args
        .pid
        .context("give --pid PID (or --aggregator URL to run across the cluster)")?;
    let value = eval_pid(pid, &args.expression, args.timeout, &Value::Null)?;
    if args.json {
        println!("{}", value.to_json());
    } else {
        println!("{}", value.to_text());
    }
    if let Evaluated::Thrown(_) = value {
        bail!("the expression threw in PID {pid}");
    }
    Ok(())
}

/// One audited evaluation in `pid` (blocking: the inspector runs on a
/// thread of its own). `origin`: see `logpoint::each_pid`.
pub fn eval_pid(
    pid: u32,
    expression: &str,
    timeout: Duration,
    origin: &Value,
) -> Result<Evaluated> {
    let target = Target::inspect(pid)?;
    let mut what = json!({ "expression": expression });
    if !origin.is_null() {
        what["origin"] = origin.clone();
    }
    let audit = Audit::begin("eval", pid, &target.exe, what)?;
    let expression = expression.to_owned();
    let result = with_inspector(&target, async move |cdp, state| {
        // A long --timeout: the port must outlive the evaluation.
        let guard = super::session::PORT_GUARD.max(timeout + Duration::from_secs(10));
        if state != PortState::AlreadyOpen && guard > super::session::PORT_GUARD {
            super::session::arm_port_guard(cdp, guard).await?;
        }
        evaluate(cdp, &expression, timeout).await
    });
    audit.end(
        &result,
        result.as_ref().map(|e| e.to_json()).unwrap_or(Value::Null),
    );
    result
}
