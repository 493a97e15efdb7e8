//! `tracer timeline`, `tracer grep` and `tracer tail`: clients of the
//! aggregator's query API (docs/aggregator.md).

use std::{
    io::{self, IsTerminal as _, Write},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use regex::Regex;
use reqwest::{StatusCode, Url};

use super::{
    read_token,
    store::TextMatch,
    timespec::{format_ns, parse_time},
};
use crate::{
    client_tls::{ClientTls, http_client, transport_error},
    event::{Event, EventData, StreamName},
};

/// The environment variable holding the token when --token-file is absent.
pub const TOKEN_ENV: &str = "TRACER_TOKEN";

/// How to reach the aggregator, and the output format.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The aggregator's base URL.
    #[arg(long, default_value = "http://127.0.0.1:7878", value_name = "URL")]
    pub aggregator: String,

    /// File holding the API token (default: the TRACER_TOKEN environment
    /// variable).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Print events as JSON Lines (docs/events.md) instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub tls: ClientTls,
}

/// Show events from every host in one time order.
#[derive(Debug, Args)]
#[command(after_help = "\
Times: a duration ago (30s, 5m, 2h), an RFC 3339 time (2026-11-26T23:40:01Z),
`now`, or ns since the epoch (`--since 0`: from the beginning).

Examples:
  tracer timeline --since 10m --host web-1 --host web-2
  tracer timeline --trace 4bf92f3577b34da6a3ce929d0e0e4736   # one request across hosts
  tracer timeline --kind http,log --json | jq .
  tracer timeline --aggregator https://agg:7878 --token-file /etc/tracer/token \\
      --ca-cert ca.pem --client-cert me.pem --client-key me.key   # mutual TLS")]
pub struct TimelineArgs {
    /// Start of the window.
    #[arg(long, default_value = "5m", value_name = "TIME")]
    pub since: String,

    /// End of the window (exclusive; default: now and on).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,

    /// Only these hosts (repeat or comma-separate).
    #[arg(long = "host", value_name = "HOST", value_delimiter = ',')]
    pub hosts: Vec<String>,

    /// Only these kinds: log, http, tcp_connect, tcp_accept, tcp_close,
    /// tcp_retransmit, loop, gc, exec, exit, lost, logpoint, inspector, probe,
    /// audit.
    #[arg(long = "kind", value_name = "KIND", value_delimiter = ',')]
    pub kinds: Vec<String>,

    /// Only one trace: a W3C trace id, an x-request-id, or a tracer req_id.
    #[arg(long, value_name = "ID")]
    pub trace: Option<String>,

    /// At most this many events (the earliest).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// Search log lines, logpoint lines and probe hits from every host with a
/// regex; matches in time order.
#[derive(Debug, Args)]
#[command(after_help = "\
A log line prints as `TIME HOST PID STREAM| LINE`; a logpoint line or a
probe hit as `tracer timeline` prints it (`... logpoint ID FILE:LINE| TEXT`,
`... probe SPEC OBJECT:POINT arg0=...`). The regex is matched against a log
line's text, a logpoint's rendered text (after `| `) and a probe hit's text
after the word `probe`. The regex syntax is the Rust regex crate's (like
ripgrep's). Times as for `tracer timeline`.

Examples:
  tracer grep 'ERROR|panic' --since 1h
  tracer grep -i timeout --host web-1 --stream stderr
  tracer grep -c 'GET /users/\\d+'")]
pub struct GrepArgs {
    /// The regular expression.
    #[arg(value_name = "REGEX")]
    pub pattern: String,

    /// Start of the window (default: the beginning).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,

    /// End of the window (exclusive).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,

    /// Only these hosts (repeat or comma-separate).
    #[arg(long = "host", value_name = "HOST", value_delimiter = ',')]
    pub hosts: Vec<String>,

    /// Only log lines of this stream: stdout, stderr or file.
    #[arg(long, value_name = "STREAM")]
    pub stream: Option<String>,

    /// Match case-insensitively.
    #[arg(short = 'i', long)]
    pub ignore_case: bool,

    /// Print only the number of matching lines.
    #[arg(short = 'c', long)]
    pub count: bool,

    /// At most this many lines (the earliest).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// Show the latest events, and with -f every new one as it arrives.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tracer tail -f
  tracer tail -n 50 --host web-1 --kind log
  tracer tail -f --grep 'ERROR|panic' -i     # a live grep across every host

--grep matches what `tracer grep` matches: a log line's text, a logpoint's
rendered text, a probe hit's text.")]
pub struct TailArgs {
    /// Keep printing events as the aggregator stores them (Ctrl-C stops).
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// How many of the latest events to print first.
    #[arg(short = 'n', long = "lines", default_value_t = 10, value_name = "N")]
    pub lines: usize,

    /// Only these hosts (repeat or comma-separate).
    #[arg(long = "host", value_name = "HOST", value_delimiter = ',')]
    pub hosts: Vec<String>,

    /// Only these kinds (repeat or comma-separate).
    #[arg(long = "kind", value_name = "KIND", value_delimiter = ',')]
    pub kinds: Vec<String>,

    /// Only events whose text matches this regex (Rust regex syntax, as in
    /// `tracer grep`).
    #[arg(long, value_name = "REGEX")]
    pub grep: Option<String>,

    /// With --grep: match case-insensitively.
    #[arg(short = 'i', long, requires = "grep")]
    pub ignore_case: bool,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// An authenticated connection to the aggregator's API.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: String,
    tls: ClientTls,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Self> {
        let mut base = Url::parse(&args.aggregator).map_err(|e| {
            anyhow!(
                "--aggregator {}: not a URL ({e}); e.g. http://127.0.0.1:7878",
                args.aggregator
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!(
                "--aggregator {}: use an http:// or https:// URL",
                args.aggregator
            );
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let token = match &args.token_file {
            Some(path) => read_token(path)?,
            None => match std::env::var(TOKEN_ENV) {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => bail!(
                    "no token: pass --token-file FILE (the file the aggregator was started \
                     with) or set {TOKEN_ENV}"
                ),
            },
        };
        // No total timeout: `tail -f` is one answer that lasts.
        let http = http_client(&args.tls, Duration::from_secs(5), None)?;
        Ok(Self {
            http,
            base,
            token,
            tls: args.tls.clone(),
        })
    }

    fn shown_url(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    /// GET `path?params`; errors name what went wrong in the user's terms.
    pub async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<reqwest::Response> {
        let mut url = self
            .base
            .join(path)
            .with_context(|| format!("building the URL for {path}"))?;
        if !params.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let resp = match self.http.get(url).bearer_auth(&self.token).send().await {
            Ok(resp) => resp,
            Err(e) => return Err(transport_error(e, &self.shown_url(), &self.tls).await),
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::UNAUTHORIZED {
            bail!("the aggregator rejected the token (check --token-file)");
        }
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(body);
        bail!("the aggregator answered {status}: {}", msg.trim())
    }
}

/// Reads a streamed answer line by line (JSON Lines, or SSE's lines):
/// `f(Some(line))` for each, and `f(None)` each time the lines received so
/// far are all handled (a follower prints them then, not after each line:
/// a write per line was most of `tail -f`'s cost during a firehose).
async fn for_each_line(
    mut resp: reqwest::Response,
    mut f: impl FnMut(Option<&str>) -> Result<Flow>,
) -> Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = resp
            .chunk()
            .await
            .context("the aggregator's answer was cut short")?;
        let Some(chunk) = chunk else { break };
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[start..start + nl]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if f(Some(line))? == Flow::Stop {
                return Ok(());
            }
            start += nl + 1;
        }
        buf.drain(..start);
        if f(None)? == Flow::Stop {
            return Ok(());
        }
    }
    if !buf.is_empty() {
        let line = String::from_utf8_lossy(&buf);
        f(Some(&line))?;
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// Output that ends quietly when the reader goes away (`| head`).
struct Out {
    w: io::BufWriter<io::Stdout>,
    /// The reader closed stdout.
    gone: bool,
}

impl Out {
    fn new() -> Self {
        Self {
            w: io::BufWriter::new(io::stdout()),
            gone: false,
        }
    }

    fn line(&mut self, s: &str) -> Result<Flow> {
        let r = writeln!(self.w, "{s}");
        self.done(r)
    }

    /// Prints what was written so far (a follower, whenever it waits).
    fn flush(&mut self) -> Result<Flow> {
        let r = self.w.flush();
        self.done(r)
    }

    fn done(&mut self, r: io::Result<()>) -> Result<Flow> {
        match r {
            Ok(()) => Ok(Flow::Go),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(Flow::Stop)
            }
            Err(e) => Err(e).context("writing to stdout"),
        }
    }

    fn finish(mut self) -> Result<()> {
        match self.w.flush() {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
            _ => Ok(()),
        }
    }
}

fn parse_event(line: &str) -> Result<Event> {
    serde_json::from_str(line).with_context(|| {
        format!("the aggregator sent an event this tracer cannot read (a newer version?): {line}")
    })
}

fn time_param(name: &'static str, spec: &str) -> Result<(&'static str, String)> {
    let ns = parse_time(spec).map_err(|e| anyhow!("--{name}: {e}"))?;
    Ok((name, ns.to_string()))
}

fn common_params(
    since: Option<&str>,
    until: Option<&str>,
    hosts: &[String],
) -> Result<Vec<(&'static str, String)>> {
    let mut p = Vec::new();
    if let Some(s) = since {
        p.push(time_param("since", s)?);
    }
    if let Some(u) = until {
        p.push(time_param("until", u)?);
    }
    if !hosts.is_empty() {
        p.push(("host", hosts.join(",")));
    }
    Ok(p)
}

/// Prints a JSON-Lines answer: as is with --json, else as text.
async fn print_events(
    resp: reqwest::Response,
    json: bool,
    mut render: impl FnMut(&Event) -> String,
) -> Result<()> {
    let mut out = Out::new();
    for_each_line(resp, |line| {
        let Some(line) = line else {
            return Ok(Flow::Go);
        };
        if line.is_empty() {
            return Ok(Flow::Go);
        }
        if json {
            out.line(line)
        } else {
            out.line(&render(&parse_event(line)?))
        }
    })
    .await?;
    out.finish()
}

pub async fn timeline(args: TimelineArgs) -> Result<()> {
    let client = Client::new(&args.client)?;
    let mut params = common_params(Some(&args.since), args.until.as_deref(), &args.hosts)?;
    if !args.kinds.is_empty() {
        params.push(("kind", args.kinds.join(",")));
    }
    if let Some(t) = &args.trace {
        params.push(("trace", t.clone()));
    }
    if let Some(n) = args.limit {
        params.push(("limit", n.to_string()));
    }
    let resp = client.get("v1/events", &params).await?;
    print_events(resp, args.client.json, Event::to_text).await
}

/// `TIME HOST PID STREAM| LINE`, matches highlighted on a terminal.
fn grep_line(e: &Event, highlight: Option<&Regex>) -> String {
    let EventData::Log {
        stream,
        path,
        text,
        truncated,
        ..
    } = &e.data
    else {
        return e.to_text();
    };
    let stream = match stream {
        StreamName::Stdout => "stdout",
        StreamName::Stderr => "stderr",
        StreamName::File => path.as_deref().unwrap_or("file"),
    };
    let text = match highlight {
        Some(re) => re
            .replace_all(text, |c: &regex::Captures<'_>| {
                format!("\x1b[1;31m{}\x1b[0m", &c[0])
            })
            .into_owned(),
        None => text.clone(),
    };
    format!(
        "{} {} {} {stream}| {text}{}",
        format_ns(e.ts_ns),
        e.host,
        e.pid,
        if *truncated { " [truncated]" } else { "" }
    )
}

pub async fn grep(args: GrepArgs) -> Result<()> {
    let text = TextMatch {
        pattern: args.pattern.clone(),
        case_insensitive: args.ignore_case,
    };
    let re = text.compile().map_err(|e| anyhow!("invalid regex: {e}"))?;
    let client = Client::new(&args.client)?;
    let mut params = common_params(args.since.as_deref(), args.until.as_deref(), &args.hosts)?;
    params.push(("re", args.pattern.clone()));
    if args.ignore_case {
        params.push(("i", "1".into()));
    }
    if let Some(s) = &args.stream {
        params.push(("stream", s.clone()));
    }
    if let Some(n) = args.limit {
        params.push(("limit", n.to_string()));
    }
    if args.count {
        params.push(("count", "1".into()));
        let resp = client.get("v1/grep", &params).await?;
        let v: serde_json::Value = resp
            .json()
            .await
            .context("reading the count from the aggregator")?;
        let n = v
            .get("count")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| anyhow!("the aggregator's answer has no count: {v}"))?;
        let mut out = Out::new();
        out.line(&if args.client.json {
            v.to_string()
        } else {
            n.to_string()
        })?;
        return out.finish();
    }
    let resp = client.get("v1/grep", &params).await?;
    let highlight = (!args.client.json && io::stdout().is_terminal()).then_some(&re);
    print_events(resp, args.client.json, |e| grep_line(e, highlight)).await
}

pub async fn tail(args: TailArgs) -> Result<()> {
    let client = Client::new(&args.client)?;
    let mut params = common_params(None, None, &args.hosts)?;
    if !args.kinds.is_empty() {
        params.push(("kind", args.kinds.join(",")));
    }
    if let Some(re) = &args.grep {
        params.push(("re", re.clone()));
        if args.ignore_case {
            params.push(("i", "1".into()));
        }
    }
    params.push(("n", args.lines.to_string()));
    if args.follow {
        params.push(("follow", "1".into()));
    }
    let resp = client.get("v1/tail", &params).await?;
    if args.follow {
        eprintln!("tracer: following {} (Ctrl-C to stop)", client.shown_url());
    }
    let json = args.client.json;
    let mut out = Out::new();
    let mut event_type = String::new();
    let mut data = String::new();
    let mut failure = None;
    // Server-Sent Events: `field: value` lines, a blank line ends an event.
    for_each_line(resp, |line| {
        let Some(line) = line else {
            return out.flush();
        };
        if line.is_empty() {
            let ev = std::mem::take(&mut data);
            let ty = std::mem::take(&mut event_type);
            if ev.is_empty() {
                return Ok(Flow::Go);
            }
            if ty == "error" {
                failure = Some(ev);
                return Ok(Flow::Stop);
            }
            return if json {
                out.line(&ev)
            } else {
                out.line(&parse_event(&ev)?.to_text())
            };
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            "event" => event_type = value.to_string(),
            _ => {} // comments (`: ...`), id, retry
        }
        Ok(Flow::Go)
    })
    .await?;
    let gone = out.gone;
    out.finish()?;
    if let Some(msg) = failure {
        bail!("the aggregator stopped the tail: {msg}");
    }
    if args.follow && !gone {
        bail!("the aggregator closed the stream (did it stop?)");
    }
    Ok(())
}
