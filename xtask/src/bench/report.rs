//! Medians and the results table.

use std::fmt::Write;

use super::wrk::Sample;

/// All samples of one configuration, in round order.
pub struct Series {
    pub name: &'static str,
    pub description: &'static str,
    pub samples: Vec<Sample>,
}

impl Series {
    pub fn median_rps(&self) -> f64 {
        median(self.samples.iter().map(|s| s.requests_per_sec).collect())
    }

    pub fn median_p99_us(&self) -> f64 {
        median(self.samples.iter().map(|s| s.p99_us).collect())
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

/// A Markdown table (readable as plain text too). `series[0]` is the base.
pub fn table(series: &[Series]) -> String {
    let base = series.first().map_or(f64::NAN, Series::median_rps);
    let mut out =
        String::from("| config | median req/s | vs base | median p99 |\n|---|---:|---:|---:|\n");
    for s in series {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {:.2} ms |",
            s.name,
            s.median_rps(),
            ratio_text(s.median_rps(), base),
            s.median_p99_us() / 1000.0
        );
    }
    out
}

/// Every round's numbers, to show how noisy the run was.
pub fn rounds(series: &[Series]) -> String {
    let mut out = String::new();
    for s in series {
        let values: Vec<String> = s
            .samples
            .iter()
            .map(|x| format!("{:.0}", x.requests_per_sec))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rps: f64, p99: f64) -> Sample {
        Sample {
            requests_per_sec: rps,
            p99_us: p99,
            errors: 0,
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
    fn table_rows() {
        let series = [
            Series {
                name: "base",
                description: "nothing attached",
                samples: vec![
                    sample(100.0, 1000.0),
                    sample(90.0, 1200.0),
                    sample(110.0, 800.0),
                ],
            },
            Series {
                name: "full",
                description: "tracer",
                samples: vec![sample(80.0, 2000.0)],
            },
        ];
        let text = table(&series);
        assert!(text.contains("| base | 100 | 1.000 | 1.00 ms |"), "{text}");
        assert!(
            text.contains("| full | 80 | 0.800 (-20.0%) | 2.00 ms |"),
            "{text}"
        );
    }
}
