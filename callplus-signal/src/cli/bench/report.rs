//! Latency histograms and the report (readable lines and one JSON object).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// What `callplus bench` prints.
pub(crate) struct Report {
    /// Readable lines.
    pub(crate) lines: Vec<String>,
    /// The same as one JSON object.
    pub(crate) json: Value,
}

/// A latency histogram in microseconds, from 1 µs to 10 minutes, 3 significant digits.
pub(crate) struct Latency(Histogram<u64>);

impl Latency {
    #[allow(clippy::expect_used)] // Constant, valid bounds: creation cannot fail.
    pub(crate) fn new() -> Latency {
        Latency(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }

    pub(crate) fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(us);
    }

    pub(crate) fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    fn ms(us: u64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let ms = us as f64 / 1000.0;
        (ms * 1000.0).round() / 1000.0
    }

    /// `{p50, p90, p99, max, count}` in milliseconds.
    pub(crate) fn json(&self) -> Value {
        let h = &self.0;
        if h.is_empty() {
            return json!({"p50": null, "p90": null, "p99": null, "max": null, "count": 0});
        }
        json!({
            "p50": Self::ms(h.value_at_quantile(0.50)),
            "p90": Self::ms(h.value_at_quantile(0.90)),
            "p99": Self::ms(h.value_at_quantile(0.99)),
            "max": Self::ms(h.max()),
            "count": h.len(),
        })
    }

    /// `p50 0.412 ms  p90 …` for the readable report.
    pub(crate) fn line(&self) -> String {
        let h = &self.0;
        if h.is_empty() {
            return "no samples".to_owned();
        }
        format!(
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  ({} samples)",
            Self::ms(h.value_at_quantile(0.50)),
            Self::ms(h.value_at_quantile(0.90)),
            Self::ms(h.value_at_quantile(0.99)),
            Self::ms(h.max()),
            h.len()
        )
    }
}

/// Failure counts by reason.
pub(crate) type Reasons = BTreeMap<String, u64>;

/// `reason=count, …` or `none`.
pub(crate) fn reasons_line(reasons: &Reasons) -> String {
    if reasons.is_empty() {
        return "none".to_owned();
    }
    reasons.iter().map(|(r, n)| format!("{r}={n}")).collect::<Vec<_>>().join(", ")
}

/// Rounds for the JSON (3 decimals).
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The machine: cores and CPU model, from `/proc/cpuinfo`.
pub(crate) fn machine() -> Value {
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(str::trim)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    json!({"cores": cores, "cpu_model": model})
}
