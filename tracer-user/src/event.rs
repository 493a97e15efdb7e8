//! The public event model: what `--json` prints (docs/events.md) and what
//! the text renderer shows. One struct for every front end.

use std::{borrow::Cow, fmt::Write as _, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Wall clock, ns since the Unix epoch.
    pub ts_ns: u64,
    pub host: String,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub data: EventData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamName {
    Stdout,
    Stderr,
    File,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tuple {
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

fn one_segment() -> u32 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventData {
    Log {
        stream: StreamName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        text: String,
        #[serde(default, skip_serializing_if = "is_false")]
        truncated: bool,
        /// The request this line was written while serving, when that is
        /// certain (docs/correlation.md).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<String>,
    },
    Http(Box<HttpExchange>),
    TcpConnect(Tuple),
    TcpAccept(Tuple),
    TcpClose {
        #[serde(flatten)]
        tuple: Tuple,
        bytes_sent: u64,
        bytes_received: u64,
        /// tcp_sock.total_retrans at close: segments the kernel
        /// retransmitted on the connection over its whole life (for a
        /// connection opened before attach, including before attach).
        #[serde(default)]
        retransmits: u32,
        /// None when the connection predates the tracer.
        duration_ns: Option<u64>,
        #[serde(default, skip_serializing_if = "is_false")]
        preexisting: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        failed: bool,
    },
    TcpRetransmit {
        #[serde(flatten)]
        tuple: Tuple,
        /// Segments resent by this retransmission (a GSO skb carries several);
        /// the kernel's RetransSegs counter grows by the same number.
        #[serde(default = "one_segment")]
        segments: u32,
    },
    Loop {
        poll_ns: u64,
        busy_ns: u64,
    },
    Gc {
        duration_ns: u64,
    },
    Exec {
        exe: String,
    },
    Lost {
        count: u64,
        stage: LossStage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_kind: Option<String>,
    },
    Exit {
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// A logpoint hit (docs/logpoints.md).
    Logpoint {
        /// The id `tracer logpoint add` printed.
        id: String,
        /// Where it fired: script path or URL, line, column (1-based).
        location: String,
        /// The rendered template.
        text: String,
        /// Hits the rate cap suppressed since the previous line.
        #[serde(default, skip_serializing_if = "is_zero")]
        dropped: u64,
        /// Milliseconds since the previous line during which the rate cap
        /// had lifted the logpoint (its hits then were not seen).
        #[serde(default, skip_serializing_if = "is_zero")]
        unwatched_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<String>,
    },
    /// A line node printed on stderr about its inspector opening or
    /// closing (not the program's own output).
    Inspector {
        text: String,
    },
    /// An ad-hoc probe's hit or per-interval aggregate (`tracer probe`).
    Probe(Box<ProbeHit>),
    /// A control command sent through the aggregator (logpoint add/list/rm,
    /// eval): who, what, which processes, the result. Stored by the
    /// aggregator under the host the command went to (docs/logpoints.md,
    /// "Across the cluster").
    Audit(Box<AuditRecord>),
}

/// What an `audit` event records (docs/events.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The command's id (one per command, shared by its hosts).
    pub command: String,
    /// `requested` (recorded before it is sent), `done` (with the
    /// results), or `refused` (never sent, `error` says why).
    pub phase: String,
    /// The admin token's name in --admin-token-file, or its fingerprint.
    pub who: String,
    /// `logpoint.add`, `logpoint.list`, `logpoint.rm` or `eval`.
    pub op: String,
    /// The command's arguments (location, template, expression, ids...).
    pub args: serde_json::Value,
    /// The process selector (`--match`), when there is one.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_cmdline: Option<String>,
    /// done: one outcome per process the command ran on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessOutcome>,
    /// refused, or done without an answer from the host: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outcome of a control command in one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessOutcome {
    pub pid: u32,
    pub ok: bool,
    /// What the operation answered (the resolved logpoint, the value...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The same, as the human report `tracer logpoint`/`eval` print.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What an ad-hoc probe recorded (docs/events.md, `probe`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeHit {
    /// The probe as given (`usdt:python:function__entry`, `uprobe:uv_fs_*`).
    pub probe: String,
    /// The object the point is in, as the process sees its path.
    pub object: String,
    /// `provider:name` of a USDT point, or the function symbol.
    pub point: String,
    /// `count`, `args` or `latency`.
    pub record: String,
    /// count/latency: hits (latency: returns) in the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// count/latency: the interval the aggregate covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ns: Option<u64>,
    /// args: `arg0..`, integers or strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<serde_json::Value>>,
    /// latency: `[upper_bound_ns, count]` of each non-empty power-of-two
    /// bucket (durations below the bound, at least half of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ns: Option<Vec<[u64; 2]>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum HttpSide {
    /// The traced process served the request.
    Server,
    /// The traced process made the request.
    Client,
}

/// One HTTP/1.x request and its response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpExchange {
    pub side: HttpSide,
    pub method: String,
    pub path: String,
    /// 0 when the connection closed before a response.
    pub status: u16,
    /// First byte of the request to last byte of the response.
    pub duration_ns: u64,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    #[serde(flatten)]
    pub tuple: Tuple,
    pub tls: bool,
    /// Stable id of this request.
    pub req_id: String,
    /// For a client request: the server request being served when it was
    /// made, when that is certain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_req_id: Option<String>,
    /// W3C traceparent or x-request-id sent with the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// False when the exchange was cut (connection closed, capture gap).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub complete: bool,
    /// First bytes of the bodies, only with `--capture-bodies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp_body: Option<String>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum LossStage {
    /// The kernel ring buffer was full.
    Ring,
    /// A record user space could not decode (a bug; reported, not hidden).
    Decode,
    /// An HTTP parser lost framing on a connection (a capture gap, bytes
    /// it could not parse) and resynchronised; requests may be missing.
    Parse,
    /// Payload bytes of traced connections that never reached the HTTP
    /// parser: a TCP segment's record was lost (ring full) or never made,
    /// leaving a hole in the byte stream that the process read past or
    /// that never filled. Counted in bytes.
    Capture,
    /// The agent's queue to its forwarder was full.
    Forward,
    /// The agent's on-disk spool hit its cap while the aggregator was
    /// unreachable; the oldest batches were deleted.
    Spool,
    /// Retransmits the kernel counted on a connection (its total_retrans
    /// at close) beyond the tcp_retransmit events that reached user space
    /// for it, without a ring or recursion loss to account for them.
    Probe,
    /// Hits of an ad-hoc probe over its per-probe rate cap (`tracer probe
    /// --rate`), counted in the kernel and not emitted.
    Rate,
}

impl LossStage {
    pub const ALL: [LossStage; 8] = [
        LossStage::Ring,
        LossStage::Decode,
        LossStage::Parse,
        LossStage::Capture,
        LossStage::Forward,
        LossStage::Spool,
        LossStage::Probe,
        LossStage::Rate,
    ];

    /// The name used in JSON, metrics labels and summaries.
    pub fn name(self) -> &'static str {
        match self {
            LossStage::Ring => "ring",
            LossStage::Decode => "decode",
            LossStage::Parse => "parse",
            LossStage::Capture => "capture",
            LossStage::Forward => "forward",
            LossStage::Spool => "spool",
            LossStage::Probe => "probe",
            LossStage::Rate => "rate",
        }
    }
}

impl EventData {
    /// The `kind` string, as in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            EventData::Log { .. } => "log",
            EventData::Http(_) => "http",
            EventData::TcpConnect(_) => "tcp_connect",
            EventData::TcpAccept(_) => "tcp_accept",
            EventData::TcpClose { .. } => "tcp_close",
            EventData::TcpRetransmit { .. } => "tcp_retransmit",
            EventData::Loop { .. } => "loop",
            EventData::Gc { .. } => "gc",
            EventData::Exec { .. } => "exec",
            EventData::Lost { .. } => "lost",
            EventData::Exit { .. } => "exit",
            EventData::Logpoint { .. } => "logpoint",
            EventData::Inspector { .. } => "inspector",
            EventData::Probe(_) => "probe",
            EventData::Audit(_) => "audit",
        }
    }

    /// The text `tracer grep` searches, for the kinds that have one: a log
    /// line's text, a logpoint's rendered line, node's inspector message,
    /// and a probe hit as `tracer attach` prints it (`PROBE OBJECT:POINT
    /// arg0=...`). Other kinds are structured only and never match a grep.
    pub fn search_text(&self) -> Option<Cow<'_, str>> {
        match self {
            EventData::Log { text, .. }
            | EventData::Logpoint { text, .. }
            | EventData::Inspector { text } => Some(Cow::Borrowed(text)),
            EventData::Probe(p) => {
                let mut s = String::new();
                let _ = p.write_text(&mut s);
                Some(Cow::Owned(s.trim_start().to_owned()))
            }
            _ => None,
        }
    }

    /// The request a log line or a logpoint hit belongs to (`req_id`).
    pub fn line_req_id(&self) -> Option<&str> {
        match self {
            EventData::Log { req_id, .. } | EventData::Logpoint { req_id, .. } => req_id.as_deref(),
            _ => None,
        }
    }
}

fn ms(ns: u64) -> String {
    format!("{:.3}ms", ns as f64 / 1e6)
}

fn endpoint(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

impl Event {
    /// One human-readable line (no trailing newline).
    pub fn to_text(&self) -> String {
        let ts = std::time::UNIX_EPOCH + Duration::from_nanos(self.ts_ns);
        let mut s = format!(
            "{} {} {}/{} {} {}",
            humantime::format_rfc3339_micros(ts),
            self.host,
            self.pid,
            self.tid,
            self.comm,
            self.data.kind()
        );
        let _ = match &self.data {
            EventData::Http(h) => write!(
                s,
                " {} {} {} {} {} {}ms req={} resp={}{}",
                match h.side {
                    HttpSide::Server => "served",
                    HttpSide::Client => "called",
                },
                h.method,
                h.path,
                h.status,
                endpoint(&h.tuple.daddr, h.tuple.dport),
                format_args!("{:.3}", h.duration_ns as f64 / 1e6),
                h.req_bytes,
                h.resp_bytes,
                if h.tls { " tls" } else { "" },
            ),
            EventData::Log {
                stream,
                path,
                text,
                truncated,
                ..
            } => {
                let name = match stream {
                    StreamName::Stdout => "stdout",
                    StreamName::Stderr => "stderr",
                    StreamName::File => path.as_deref().unwrap_or("file"),
                };
                let cut = if *truncated { " [truncated]" } else { "" };
                write!(s, " {name}| {text}{cut}")
            }
            EventData::TcpConnect(t) | EventData::TcpAccept(t) => {
                write!(
                    s,
                    " {} -> {}",
                    endpoint(&t.saddr, t.sport),
                    endpoint(&t.daddr, t.dport)
                )
            }
            EventData::TcpRetransmit { tuple: t, segments } => {
                write!(
                    s,
                    " {} -> {} segments={segments}",
                    endpoint(&t.saddr, t.sport),
                    endpoint(&t.daddr, t.dport)
                )
            }
            EventData::TcpClose {
                tuple: t,
                bytes_sent,
                bytes_received,
                retransmits,
                duration_ns,
                preexisting,
                failed,
            } => {
                let dur = duration_ns.map_or_else(|| "?".to_string(), ms);
                write!(
                    s,
                    " {} -> {} sent={bytes_sent} recv={bytes_received} retrans={retransmits} \
                     dur={dur}{}{}",
                    endpoint(&t.saddr, t.sport),
                    endpoint(&t.daddr, t.dport),
                    if *preexisting {
                        " (opened before attach)"
                    } else {
                        ""
                    },
                    if *failed { " (never established)" } else { "" },
                )
            }
            EventData::Loop { poll_ns, busy_ns } => {
                write!(s, " poll={} busy={}", ms(*poll_ns), ms(*busy_ns))
            }
            EventData::Gc { duration_ns } => write!(s, " pause={}", ms(*duration_ns)),
            EventData::Exec { exe } => write!(s, " {exe}"),
            EventData::Lost {
                count,
                stage,
                for_kind,
            } => write!(
                s,
                " {count} events lost at the {} stage{}",
                stage.name(),
                for_kind
                    .as_deref()
                    .map(|k| format!(" ({k})"))
                    .unwrap_or_default()
            ),
            EventData::Exit { exit_code, signal } => match (exit_code, signal) {
                (_, Some(sig)) => write!(s, " killed by signal {sig}"),
                (Some(code), None) => write!(s, " code={code}"),
                (None, None) => write!(s, " code=unknown"),
            },
            EventData::Logpoint {
                id,
                location,
                text,
                dropped,
                unwatched_ms,
                ..
            } => {
                let more = match (*dropped, *unwatched_ms) {
                    (0, 0) => String::new(),
                    (d, 0) => format!(" [{d} dropped]"),
                    (d, ms) => format!(" [{d} dropped, not watched for {ms} ms]"),
                };
                write!(s, " {id} {location}| {text}{more}")
            }
            EventData::Inspector { text } => write!(s, " node| {text}"),
            EventData::Probe(p) => p.write_text(&mut s),
            EventData::Audit(a) => a.write_text(&mut s),
        };
        s
    }
}

impl AuditRecord {
    fn write_text(&self, s: &mut String) -> std::fmt::Result {
        write!(
            s,
            " {} {} by {} ({})",
            self.phase, self.op, self.who, self.command
        )?;
        if let Some(m) = &self.match_cmdline {
            write!(s, " match={m:?}")?;
        }
        write!(s, " {}", self.args)?;
        for p in &self.processes {
            match &p.error {
                Some(e) if !p.ok => write!(s, " | PID {}: error: {e}", p.pid)?,
                _ => write!(s, " | PID {}: ok", p.pid)?,
            }
        }
        if let Some(e) = &self.error {
            write!(s, " | error: {e}")?;
        }
        Ok(())
    }
}

impl ProbeHit {
    fn write_text(&self, s: &mut String) -> std::fmt::Result {
        let base = self.object.rsplit('/').next().unwrap_or(&self.object);
        write!(s, " {} {base}:{}", self.probe, self.point)?;
        if let Some(count) = self.count {
            write!(s, " count={count}")?;
        }
        if let Some(ns) = self.interval_ns {
            write!(s, " in {}", ms(ns))?;
        }
        for (i, v) in self.args.iter().flatten().enumerate() {
            write!(s, " arg{i}={v}")?;
        }
        if let Some(buckets) = &self.latency_ns {
            s.push_str(" latency");
            for [le, n] in buckets {
                write!(s, " <{}:{n}", ms(*le))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: EventData) -> Event {
        Event {
            ts_ns: 1_764_200_000_123_456_789,
            host: "h1".into(),
            pid: 1,
            tid: 2,
            comm: "node".into(),
            data,
        }
    }

    #[test]
    fn json_has_flat_schema() {
        let e = ev(EventData::TcpClose {
            tuple: Tuple {
                saddr: "127.0.0.1".parse().unwrap(),
                sport: 80,
                daddr: "::1".parse().unwrap(),
                dport: 5000,
            },
            bytes_sent: 10,
            bytes_received: 20,
            retransmits: 2,
            duration_ns: Some(30),
            preexisting: false,
            failed: false,
        });
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "ts_ns": 1_764_200_000_123_456_789u64, "host": "h1", "pid": 1, "tid": 2,
                "comm": "node", "kind": "tcp_close", "saddr": "127.0.0.1", "sport": 80,
                "daddr": "::1", "dport": 5000, "bytes_sent": 10, "bytes_received": 20,
                "retransmits": 2, "duration_ns": 30
            })
        );
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn log_json_omits_absent_fields() {
        let e = ev(EventData::Log {
            stream: StreamName::Stdout,
            path: None,
            text: "hi <b>".into(),
            truncated: false,
            req_id: None,
        });
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"ts_ns":1764200000123456789,"host":"h1","pid":1,"tid":2,"comm":"node","kind":"log","stream":"stdout","text":"hi <b>"}"#
        );
    }

    #[test]
    fn text_rendering() {
        let e = ev(EventData::Log {
            stream: StreamName::File,
            path: Some("/var/log/app.log".into()),
            text: "hello".into(),
            truncated: true,
            req_id: None,
        });
        assert_eq!(
            e.to_text(),
            "2025-11-26T23:33:20.123456Z h1 1/2 node log /var/log/app.log| hello [truncated]"
        );
        let e = ev(EventData::Exit {
            exit_code: None,
            signal: Some(9),
        });
        assert!(e.to_text().ends_with("exit killed by signal 9"));
    }
}
