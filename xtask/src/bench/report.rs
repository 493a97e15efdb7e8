//! Medians and the results tables.

use std::fmt::Write;

use super::wrk::Sample;

/// Above this many cores busy in the quiet gap before a round (nothing of
/// ours running), something else on the machine was working: the round is
/// marked.
pub const FOREIGN_BUSY_CORES: f64 = 0.25;

/// One round of one configuration.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub wrk: Sample,
    /// CPU the attached tool's own process used during the load window
    /// (its user space plus the syscalls it made; not the BPF programs,
    /// which run in the traced process's context), in µs.
    pub tool_cpu_us: Option<f64>,
    /// HTTP exchanges the tool reported (its summary's `http=N`), for
    /// configurations that trace HTTP.
    pub http_events: Option<u64>,
    /// Cores busy on the machine in the half second before the round, while
    /// nothing of the benchmark ran: other people's work.
    pub foreign_cores: f64,
}

impl Measured {
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        let cpu = self.tool_cpu_us?;
        (self.wrk.requests > 0).then(|| cpu / self.wrk.requests as f64)
    }

    /// The tool's CPU as a share of one core over the load window.
    pub fn cpu_share(&self, seconds: u32) -> Option<f64> {
        Some(self.tool_cpu_us? / (f64::from(seconds) * 1e6))
    }

    /// HTTP events per completed wrk request. wrk does not count the
    /// requests still in flight when it stops, so this may be a little
    /// above 1.
    pub fn http_seen(&self) -> Option<f64> {
        let events = self.http_events?;
        (self.wrk.requests > 0).then(|| events as f64 / self.wrk.requests as f64)
    }

    pub fn noisy(&self) -> bool {
        self.foreign_cores > FOREIGN_BUSY_CORES
    }
}

/// All samples of one configuration, in round order.
pub struct Series {
    pub name: &'static str,
    pub description: String,
    pub samples: Vec<Measured>,
}

impl Series {
    pub fn median_rps(&self) -> f64 {
        median(
            self.samples
                .iter()
                .map(|s| s.wrk.requests_per_sec)
                .collect(),
        )
    }

    pub fn median_p99_us(&self) -> f64 {
        median(self.samples.iter().map(|s| s.wrk.p99_us).collect())
    }

    fn median_of(&self, value: impl Fn(&Measured) -> Option<f64>) -> Option<f64> {
        let values: Vec<f64> = self.samples.iter().filter_map(value).collect();
        (!values.is_empty()).then(|| median(values))
    }

    pub fn median_cpu_us_per_request(&self) -> Option<f64> {
        self.median_of(Measured::cpu_us_per_request)
    }

    pub fn median_cpu_share(&self, seconds: u32) -> Option<f64> {
        self.median_of(|m| m.cpu_share(seconds))
    }

    pub fn median_http_seen(&self) -> Option<f64> {
        self.median_of(Measured::http_seen)
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// `0.962 (-3.8%)`; the base itself is `1.000`.
pub fn ratio_text(value: f64, base: f64) -> String {
    let ratio = value / base;
    if (ratio - 1.0).abs() < 1e-12 {
        return "1.000".to_string();
    }
    format!("{ratio:.3} ({:+.1}%)", (ratio - 1.0) * 100.0)
}

fn or_dash(value: Option<f64>, show: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "-".to_string(), show)
}

/// A Markdown table (readable as plain text too). `series[0]` is the base;
/// `seconds` is the load window per round.
pub fn table(series: &[Series], seconds: u32) -> String {
    let base = series.first().map_or(f64::NAN, Series::median_rps);
    let mut out = String::from(
        "| config | median req/s | vs base | median p99 | tool CPU µs/req | tool CPU % of a core | HTTP seen |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in series {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {:.2} ms | {} | {} | {} |",
            s.name,
            s.median_rps(),
            ratio_text(s.median_rps(), base),
            s.median_p99_us() / 1000.0,
            or_dash(s.median_cpu_us_per_request(), |v| format!("{v:.2}")),
            or_dash(s.median_cpu_share(seconds), |v| format!(
                "{:.1}%",
                v * 100.0
            )),
            or_dash(s.median_http_seen(), |v| format!("{:.1}%", v * 100.0)),
        );
    }
    out
}

/// Every round's numbers, to show how noisy the run was: req/s, and in
/// brackets the cores other work kept busy just before the round (`*` when
/// that was enough to disturb it).
pub fn rounds(series: &[Series]) -> String {
    let mut out = String::new();
    for s in series {
        let values: Vec<String> = s
            .samples
            .iter()
            .map(|x| {
                format!(
                    "{:.0} [{:.2}{}]",
                    x.wrk.requests_per_sec,
                    x.foreign_cores,
                    if x.noisy() { "*" } else { "" }
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "- {} ({}): {}",
            s.name,
            s.description,
            values.join(", ")
        );
    }
    out
}

/// How many of all rounds ran while other work kept the machine busy.
pub fn noisy_rounds(series: &[Series]) -> (usize, usize) {
    let all = series.iter().flat_map(|s| &s.samples);
    let total = all.clone().count();
    (all.filter(|m| m.noisy()).count(), total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rps: f64, p99: f64) -> Measured {
        Measured {
            wrk: Sample {
                requests_per_sec: rps,
                p99_us: p99,
                requests: 1000,
                errors: 0,
            },
            tool_cpu_us: None,
            http_events: None,
            foreign_cores: 0.0,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio_text(100.0, 100.0), "1.000");
        assert_eq!(ratio_text(96.2, 100.0), "0.962 (-3.8%)");
        assert_eq!(ratio_text(105.0, 100.0), "1.050 (+5.0%)");
    }

    #[test]
    fn per_request_cpu_and_coverage() {
        let mut m = sample(100.0, 1000.0);
        assert_eq!(m.cpu_us_per_request(), None);
        m.tool_cpu_us = Some(2500.0);
        m.http_events = Some(1010);
        assert_eq!(m.cpu_us_per_request(), Some(2.5));
        assert_eq!(m.cpu_share(5), Some(0.0005));
        assert_eq!(m.http_seen(), Some(1.01));
        m.wrk.requests = 0;
        assert_eq!(m.cpu_us_per_request(), None);
        assert_eq!(m.http_seen(), None);
    }

    #[test]
    fn table_rows() {
        let mut traced = sample(80.0, 2000.0);
        traced.tool_cpu_us = Some(3000.0);
        traced.http_events = Some(990);
        let series = [
            Series {
                name: "base",
                description: "nothing attached".into(),
                samples: vec![
                    sample(100.0, 1000.0),
                    sample(90.0, 1200.0),
                    sample(110.0, 800.0),
                ],
            },
            Series {
                name: "full",
                description: "tracer".into(),
                samples: vec![traced],
            },
        ];
        let text = table(&series, 1);
        assert!(
            text.contains("| base | 100 | 1.000 | 1.00 ms | - | - | - |"),
            "{text}"
        );
        assert!(
            text.contains("| full | 80 | 0.800 (-20.0%) | 2.00 ms | 3.00 | 0.3% | 99.0% |"),
            "{text}"
        );
    }

    #[test]
    fn noisy_rounds_are_marked() {
        let mut busy = sample(50.0, 1000.0);
        busy.foreign_cores = 0.9;
        let series = [Series {
            name: "base",
            description: "nothing attached".into(),
            samples: vec![sample(100.0, 1000.0), busy],
        }];
        assert_eq!(noisy_rounds(&series), (1, 2));
        assert!(rounds(&series).contains("100 [0.00], 50 [0.90*]"));
    }
}
