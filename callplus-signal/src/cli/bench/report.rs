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

/// Latency samples in microseconds, summarised through an HDR histogram (1 µs to 10 minutes,
/// 3 significant digits) when reported.
///
/// Every simulated pair keeps its own, as raw samples rather than a histogram: a histogram of
/// that range is 170 KiB of zeroed counters, and creating four per pair for hundreds of pairs at
/// the start of a run kept the load generator busy for its first ~100 ms, which showed up as
/// 100 ms "latencies" that belonged to the tool, not to the server.
#[derive(Default)]
pub(crate) struct Latency {
    samples_us: Vec<u64>,
}

impl Latency {
    pub(crate) fn record(&mut self, d: Duration) {
        self.samples_us.push(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
    }

    pub(crate) fn merge(&mut self, other: &Latency) {
        self.samples_us.extend_from_slice(&other.samples_us);
    }

    #[allow(clippy::expect_used)] // Constant, valid bounds: creation cannot fail.
    fn histogram(&self) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        for &us in &self.samples_us {
            h.saturating_record(us);
        }
        h
    }

    fn ms(us: u64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let ms = us as f64 / 1000.0;
        (ms * 1000.0).round() / 1000.0
    }

    /// `{p50, p90, p99, max, count}` in milliseconds.
    pub(crate) fn json(&self) -> Value {
        let h = &self.histogram();
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
        let h = &self.histogram();
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_every_merged_sample() {
        let (mut a, mut b) = (Latency::default(), Latency::default());
        for ms in 1..=50 {
            a.record(Duration::from_millis(ms));
        }
        for ms in 51..=100 {
            b.record(Duration::from_millis(ms));
        }
        a.merge(&b);
        let v = a.json();
        assert_eq!(v["count"], 100);
        // 3 significant digits: within 0.1 % of the exact value.
        let near = |key: &str, ms: f64| (v[key].as_f64().unwrap() - ms).abs() <= ms / 1000.0;
        assert!(near("p50", 50.0) && near("p90", 90.0) && near("p99", 99.0) && near("max", 100.0), "{v}");
        assert!(a.line().contains("(100 samples)"), "{}", a.line());
        assert_eq!(Latency::default().json()["count"], 0);
    }
}
