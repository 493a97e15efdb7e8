//! Bucketed time series for the web UI's graphs (`GET /v1/series`,
//! docs/ui.md): per host and process, over `[since, until)` cut into
//! `step` buckets. Pure: a backend reads the events of the window reduced
//! to [`Sample`]s (`sqlite_series.rs`) and feeds them to a
//! [`SeriesBuilder`]; everything computed from them is here.
//!
//! What each series is (one value per bucket):
//! - `requests_per_s`: server-side HTTP exchanges started in the bucket,
//!   per second;
//! - `latency_p50_ms`, `latency_p99_ms`: nearest-rank percentiles of those
//!   exchanges' durations (`null` without any);
//! - `error_rate`: the fraction of them answered 5xx or cut before an answer
//!   (status 0) (`null` without any);
//! - `loop_delay_ms`: the longest event-loop turn (`loop` event `busy_ns`)
//!   reported in the bucket (`null` without any; turns under the agent's
//!   threshold are not reported);
//! - `gc_pause_ms`: total GC pause time in the bucket;
//! - `bytes_in_per_s`, `bytes_out_per_s`: HTTP bytes received and sent
//!   (server: request in, response out; client: the reverse), per second;
//! - `retransmits_per_s`, `log_lines_per_s`, `lost_per_s`: counts per
//!   second (`lost` sums the events' `count`; losses are reported with
//!   pid 0, the host's agent);
//! - `probe_hits_per_s`: hits of ad-hoc probes (`tracer probe`, the
//!   agent's `--probe`) per second: a count or latency aggregate adds its
//!   `count`, an `args` event one hit.

use std::collections::BTreeMap;

use serde::Serialize;

/// Most buckets one answer may have.
pub const MAX_BUCKETS: i64 = 5000;

/// The window and bucket size, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesQuery {
    /// Corrected time, inclusive (ns since the epoch).
    pub since: i64,
    /// Corrected time, exclusive.
    pub until: i64,
    /// Bucket width in ns.
    pub step: i64,
    /// Only these hosts (empty: all).
    pub hosts: Vec<String>,
}

impl SeriesQuery {
    pub fn new(since: i64, until: i64, step: i64, hosts: Vec<String>) -> Result<Self, String> {
        if until <= since {
            return Err("until must be after since".into());
        }
        if step <= 0 {
            return Err("step must be positive".into());
        }
        let buckets = div_ceil(until - since, step);
        if buckets > MAX_BUCKETS {
            return Err(format!(
                "{buckets} buckets asked for; at most {MAX_BUCKETS} (use a larger step)"
            ));
        }
        Ok(Self {
            since,
            until,
            step,
            hosts,
        })
    }

    /// A step giving about `n` buckets over the window, rounded up to a
    /// whole millisecond (at least 1 ms).
    pub fn auto_step(since: i64, until: i64, n: i64) -> i64 {
        const MS: i64 = 1_000_000;
        let raw = div_ceil(until.saturating_sub(since).max(1), n.max(1));
        div_ceil(raw, MS).max(1) * MS
    }

    pub fn buckets(&self) -> usize {
        usize::try_from(div_ceil(self.until - self.since, self.step)).unwrap_or(0)
    }

    /// The bucket of corrected time `ts`, if inside the window.
    pub fn bucket(&self, ts: i64) -> Option<usize> {
        if ts < self.since || ts >= self.until {
            return None;
        }
        usize::try_from((ts - self.since) / self.step).ok()
    }
}

/// `a / b` rounded up, for `a >= 0`, `b > 0` (`i64::div_ceil` is not
/// stable).
fn div_ceil(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// One event reduced to what the graphs need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    Http {
        server: bool,
        status: u16,
        duration_ns: u64,
        req_bytes: u64,
        resp_bytes: u64,
    },
    Log,
    Loop {
        busy_ns: u64,
    },
    Gc {
        duration_ns: u64,
    },
    /// A retransmission of `segments` TCP segments.
    Retransmit {
        segments: u64,
    },
    Lost {
        count: u64,
    },
    /// `hits` hits of an ad-hoc probe.
    Probe {
        hits: u64,
    },
}

/// What an event adds to the graphs (None: nothing).
pub fn sample_of(data: &crate::event::EventData) -> Option<Sample> {
    use crate::event::{EventData, HttpSide};
    Some(match data {
        EventData::Http(h) => Sample::Http {
            server: h.side == HttpSide::Server,
            status: h.status,
            duration_ns: h.duration_ns,
            req_bytes: h.req_bytes,
            resp_bytes: h.resp_bytes,
        },
        EventData::Log { .. } => Sample::Log,
        EventData::Loop { busy_ns, .. } => Sample::Loop { busy_ns: *busy_ns },
        EventData::Gc { duration_ns } => Sample::Gc {
            duration_ns: *duration_ns,
        },
        EventData::TcpRetransmit { segments, .. } => Sample::Retransmit {
            segments: u64::from(*segments),
        },
        EventData::Lost { count, .. } => Sample::Lost { count: *count },
        EventData::Probe(p) => Sample::Probe {
            hits: p.count.unwrap_or(1),
        },
        _ => return None,
    })
}

/// The series of one process (`pid` 0: the host's agent, for losses).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcSeries {
    pub host: String,
    pub pid: u32,
    pub requests_per_s: Vec<f64>,
    pub latency_p50_ms: Vec<Option<f64>>,
    pub latency_p99_ms: Vec<Option<f64>>,
    pub error_rate: Vec<Option<f64>>,
    pub loop_delay_ms: Vec<Option<f64>>,
    pub gc_pause_ms: Vec<f64>,
    pub bytes_in_per_s: Vec<f64>,
    pub bytes_out_per_s: Vec<f64>,
    pub retransmits_per_s: Vec<f64>,
    pub log_lines_per_s: Vec<f64>,
    pub lost_per_s: Vec<f64>,
    pub probe_hits_per_s: Vec<f64>,
}

/// The answer of `GET /v1/series`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub since_ns: i64,
    pub until_ns: i64,
    pub step_ns: i64,
    /// Start of each bucket.
    pub times_ns: Vec<i64>,
    /// Sorted by host, then pid.
    pub procs: Vec<ProcSeries>,
}

/// Per-bucket accumulators of one process.
#[derive(Debug, Clone)]
struct Acc {
    durations: Vec<Vec<u64>>,
    errors: Vec<u64>,
    loop_max: Vec<Option<u64>>,
    gc_ns: Vec<u64>,
    bytes_in: Vec<u64>,
    bytes_out: Vec<u64>,
    retransmits: Vec<u64>,
    logs: Vec<u64>,
    lost: Vec<u64>,
    probe_hits: Vec<u64>,
}

impl Acc {
    fn new(n: usize) -> Self {
        Self {
            durations: vec![Vec::new(); n],
            errors: vec![0; n],
            loop_max: vec![None; n],
            gc_ns: vec![0; n],
            bytes_in: vec![0; n],
            bytes_out: vec![0; n],
            retransmits: vec![0; n],
            logs: vec![0; n],
            lost: vec![0; n],
            probe_hits: vec![0; n],
        }
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted values: the smallest
/// value with at least `p`% of the values at or below it.
pub fn percentile(sorted: &[u64], p: u32) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as u64;
    let rank = (u64::from(p.min(100)) * n).div_ceil(100).max(1);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Accumulates samples into buckets; [`SeriesBuilder::finish`] gives the
/// series.
#[derive(Debug, Clone)]
pub struct SeriesBuilder {
    q: SeriesQuery,
    procs: BTreeMap<(String, u32), Acc>,
}

impl SeriesBuilder {
    pub fn new(q: SeriesQuery) -> Self {
        Self {
            q,
            procs: BTreeMap::new(),
        }
    }

    pub fn query(&self) -> &SeriesQuery {
        &self.q
    }

    /// Adds one event (corrected time `ts_ns`); outside the window or of a
    /// host not asked for, it is ignored.
    pub fn add(&mut self, ts_ns: i64, host: &str, pid: u32, sample: Sample) {
        let Some(b) = self.q.bucket(ts_ns) else {
            return;
        };
        if !self.q.hosts.is_empty() && !self.q.hosts.iter().any(|h| h == host) {
            return;
        }
        let n = self.q.buckets();
        let acc = self
            .procs
            .entry((host.to_string(), pid))
            .or_insert_with(|| Acc::new(n));
        match sample {
            Sample::Http {
                server,
                status,
                duration_ns,
                req_bytes,
                resp_bytes,
            } => {
                let (inb, outb) = if server {
                    (req_bytes, resp_bytes)
                } else {
                    (resp_bytes, req_bytes)
                };
                acc.bytes_in[b] = acc.bytes_in[b].saturating_add(inb);
                acc.bytes_out[b] = acc.bytes_out[b].saturating_add(outb);
                if server {
                    acc.durations[b].push(duration_ns);
                    if status == 0 || status >= 500 {
                        acc.errors[b] += 1;
                    }
                }
            }
            Sample::Log => acc.logs[b] += 1,
            Sample::Loop { busy_ns } => {
                acc.loop_max[b] = Some(acc.loop_max[b].map_or(busy_ns, |m| m.max(busy_ns)));
            }
            Sample::Gc { duration_ns } => acc.gc_ns[b] = acc.gc_ns[b].saturating_add(duration_ns),
            Sample::Retransmit { segments } => acc.retransmits[b] += segments,
            Sample::Lost { count } => acc.lost[b] = acc.lost[b].saturating_add(count),
            Sample::Probe { hits } => {
                acc.probe_hits[b] = acc.probe_hits[b].saturating_add(hits);
            }
        }
    }

    pub fn finish(self) -> Series {
        let q = self.q;
        let n = q.buckets();
        let step_s = q.step as f64 / 1e9;
        let per_s = |v: &[u64]| v.iter().map(|&x| x as f64 / step_s).collect::<Vec<_>>();
        let procs = self
            .procs
            .into_iter()
            .map(|((host, pid), mut acc)| {
                let mut p50 = Vec::with_capacity(n);
                let mut p99 = Vec::with_capacity(n);
                let mut err = Vec::with_capacity(n);
                let mut reqs = Vec::with_capacity(n);
                for (d, &e) in acc.durations.iter_mut().zip(&acc.errors) {
                    d.sort_unstable();
                    p50.push(percentile(d, 50).map(ms));
                    p99.push(percentile(d, 99).map(ms));
                    err.push((!d.is_empty()).then(|| e as f64 / d.len() as f64));
                    reqs.push(d.len() as f64 / step_s);
                }
                ProcSeries {
                    host,
                    pid,
                    requests_per_s: reqs,
                    latency_p50_ms: p50,
                    latency_p99_ms: p99,
                    error_rate: err,
                    loop_delay_ms: acc.loop_max.iter().map(|m| m.map(ms)).collect(),
                    gc_pause_ms: acc.gc_ns.iter().map(|&x| ms(x)).collect(),
                    bytes_in_per_s: per_s(&acc.bytes_in),
                    bytes_out_per_s: per_s(&acc.bytes_out),
                    retransmits_per_s: per_s(&acc.retransmits),
                    log_lines_per_s: per_s(&acc.logs),
                    lost_per_s: per_s(&acc.lost),
                    probe_hits_per_s: per_s(&acc.probe_hits),
                }
            })
            .collect();
        let times_ns = (0..n as i64).map(|i| q.since + i * q.step).collect();
        Series {
            since_ns: q.since,
            until_ns: q.until,
            step_ns: q.step,
            times_ns,
            procs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn http(server: bool, status: u16, ms: u64) -> Sample {
        Sample::Http {
            server,
            status,
            duration_ns: ms * 1_000_000,
            req_bytes: 100,
            resp_bytes: 1000,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&v, 100), Some(100));
        assert_eq!(percentile(&v, 0), Some(1));
        assert_eq!(percentile(&[7], 50), Some(7));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[1, 2, 3, 4], 50), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 99), Some(4));
        assert_eq!(percentile(&[10, 20, 30], 50), Some(20));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn query_validates_and_buckets() {
        assert!(SeriesQuery::new(10, 10, 1, vec![]).is_err());
        assert!(SeriesQuery::new(0, 10, 0, vec![]).is_err());
        assert!(SeriesQuery::new(0, MAX_BUCKETS + 1, 1, vec![]).is_err());
        let q = SeriesQuery::new(100, 350, 100, vec![]).unwrap();
        assert_eq!(q.buckets(), 3);
        assert_eq!(q.bucket(99), None);
        assert_eq!(q.bucket(100), Some(0));
        assert_eq!(q.bucket(199), Some(0));
        assert_eq!(q.bucket(200), Some(1));
        assert_eq!(q.bucket(349), Some(2));
        assert_eq!(q.bucket(350), None);
        assert_eq!(SeriesQuery::auto_step(0, 300 * S, 120), 2_500_000_000);
        assert_eq!(SeriesQuery::auto_step(0, 10, 120), 1_000_000);
        assert_eq!(SeriesQuery::auto_step(0, 121_000_001, 120), 2_000_000);
    }

    #[test]
    fn buckets_rates_percentiles_and_errors() {
        // Two 2-second buckets from t=10 s.
        let q = SeriesQuery::new(10 * S, 14 * S, 2 * S, vec![]).unwrap();
        let mut b = SeriesBuilder::new(q);
        // Bucket 0 on h1/7: server requests of 1..=10 ms, one 500, one cut.
        for ms in 1..=8 {
            b.add(10 * S + ms as i64, "h1", 7, http(true, 200, ms));
        }
        b.add(11 * S, "h1", 7, http(true, 500, 9));
        b.add(11 * S, "h1", 7, http(true, 0, 10));
        // A client request: bytes only (reversed), not a request served.
        b.add(11 * S, "h1", 7, http(false, 200, 50));
        b.add(11 * S, "h1", 7, Sample::Log);
        b.add(11 * S, "h1", 7, Sample::Log);
        b.add(11 * S, "h1", 7, Sample::Loop { busy_ns: 3_000_000 });
        b.add(11 * S, "h1", 7, Sample::Loop { busy_ns: 9_000_000 });
        b.add(
            12 * S,
            "h1",
            7,
            Sample::Gc {
                duration_ns: 1_500_000,
            },
        );
        b.add(
            13 * S,
            "h1",
            7,
            Sample::Gc {
                duration_ns: 500_000,
            },
        );
        b.add(13 * S, "h1", 7, Sample::Retransmit { segments: 1 });
        b.add(13 * S, "h1", 0, Sample::Lost { count: 5 });
        // Outside the window: ignored.
        b.add(14 * S, "h1", 7, Sample::Log);
        b.add(10 * S - 1, "h1", 7, Sample::Log);
        let s = b.finish();
        assert_eq!(s.times_ns, vec![10 * S, 12 * S]);
        assert_eq!(s.step_ns, 2 * S);
        assert_eq!(s.procs.len(), 2);
        let (agent, p) = (&s.procs[0], &s.procs[1]);
        assert_eq!((agent.host.as_str(), agent.pid), ("h1", 0));
        assert_eq!(agent.lost_per_s, vec![0.0, 2.5]);
        assert_eq!(agent.requests_per_s, vec![0.0, 0.0]);
        assert_eq!(agent.latency_p50_ms, vec![None, None]);
        assert_eq!((p.host.as_str(), p.pid), ("h1", 7));
        assert_eq!(p.requests_per_s, vec![5.0, 0.0]);
        assert_eq!(p.latency_p50_ms, vec![Some(5.0), None]);
        assert_eq!(p.latency_p99_ms, vec![Some(10.0), None]);
        assert_eq!(p.error_rate, vec![Some(0.2), None]);
        assert_eq!(p.loop_delay_ms, vec![Some(9.0), None]);
        assert_eq!(p.gc_pause_ms, vec![0.0, 2.0]);
        // Server: 10 requests of 100 B in, 10 responses of 1000 B out;
        // client: 1000 B in, 100 B out. Over 2 s.
        assert_eq!(p.bytes_in_per_s, vec![(1000.0 + 1000.0) / 2.0, 0.0]);
        assert_eq!(p.bytes_out_per_s, vec![(10_000.0 + 100.0) / 2.0, 0.0]);
        assert_eq!(p.log_lines_per_s, vec![1.0, 0.0]);
        assert_eq!(p.retransmits_per_s, vec![0.0, 0.5]);
    }

    #[test]
    fn host_filter_and_order() {
        let q = SeriesQuery::new(0, S, S, vec!["b".into(), "c".into()]).unwrap();
        let mut b = SeriesBuilder::new(q);
        b.add(1, "c", 2, Sample::Log);
        b.add(1, "a", 1, Sample::Log);
        b.add(1, "b", 9, Sample::Log);
        b.add(1, "b", 3, Sample::Log);
        let s = b.finish();
        let keys: Vec<_> = s.procs.iter().map(|p| (p.host.as_str(), p.pid)).collect();
        assert_eq!(keys, vec![("b", 3), ("b", 9), ("c", 2)]);
    }
}
