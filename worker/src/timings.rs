//! Step timings of a job run: what each sub-provisioner step took, gathered by the job
//! body, reported in the final event's `result.timings` and observed in the metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// The steps whose durations are measured, as named in metrics and in `result.timings`.
pub const STEPS: [&str; 6] = ["queue", "storage", "database", "instance", "health", "total"];

/// Step durations of one job run, filled in by the job body and read by the runner.
#[derive(Debug, Default)]
pub struct StepTimings(Mutex<BTreeMap<&'static str, Duration>>);

impl StepTimings {
    /// Records `step` (adding to it when a step runs twice, e.g. an import's provision).
    pub fn record(&self, step: &'static str, d: Duration) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(step).or_default() += d;
        }
    }

    /// What was recorded.
    pub fn snapshot(&self) -> BTreeMap<&'static str, Duration> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// The span of one step of a job (`storage`, `database`, `instance`, …), inside the job's
/// span: its lines carry `step` beside the job's fields, and the trace shows each step.
pub fn step_span(step: &'static str) -> tracing::Span {
    tracing::info_span!("step", step, otel.name = step)
}

/// `{"<step>-ms": 12.345, …}`: milliseconds to the microsecond.
pub fn to_json(steps: &BTreeMap<&'static str, Duration>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (step, d) in steps {
        let ms = (d.as_secs_f64() * 1e6).round() / 1e3;
        out.insert(format!("{step}-ms"), serde_json::json!(ms));
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_add_up_and_render_in_milliseconds() {
        let t = StepTimings::default();
        t.record("storage", Duration::from_micros(1500));
        t.record("storage", Duration::from_micros(500));
        let json = to_json(&t.snapshot());
        assert_eq!(json["storage-ms"], 2.0);
    }
}
