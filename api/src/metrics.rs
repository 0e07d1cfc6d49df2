//! The API's Prometheus metrics (`prometheus-client`), served on `GET /metrics`.

use dfe_shared::job::JobKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the submission histograms: a registry commit or a publisher
/// confirm takes a millisecond or so; anything past a few seconds is an outage.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The API's metrics and the registry they are exposed from.
pub struct Metrics {
    registry: Registry,
    accepted: Family<KindLabel, Counter>,
    deferred: Counter,
    /// Accepted submissions by step: record (the registry transaction), publish (until
    /// confirmed).
    steps: HistogramFamily<StepLabel>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let accepted = Family::<KindLabel, Counter>::default();
        registry.register("dfe_api_jobs_accepted", "Jobs accepted (answered 202) by type", accepted.clone());
        let deferred = Counter::default();
        registry.register(
            "dfe_api_publish_deferred",
            "Accepted jobs whose publication was left to the outbox",
            deferred.clone(),
        );
        let steps = HistogramFamily::<StepLabel>::new_with_constructor(histogram as fn() -> Histogram);
        registry.register(
            "dfe_api_submit_step_duration_seconds",
            "Steps of an accepted submission: record (registry transaction), publish (until confirmed)",
            steps.clone(),
        );
        Metrics { registry, accepted, deferred, steps }
    }
}

impl Metrics {
    /// Counts an accepted job.
    pub fn submitted(&self, kind: JobKind) {
        self.accepted.get_or_create(&KindLabel { r#type: kind.as_str() }).inc();
    }

    /// Counts a publication left to the outbox.
    pub fn publish_failed(&self) {
        self.deferred.inc();
    }

    /// Records how long an accepted submission took to be recorded and to be published.
    pub fn submit_timings(&self, record: std::time::Duration, publish: std::time::Duration) {
        self.steps.get_or_create(&StepLabel { step: "record" }).observe(record.as_secs_f64());
        self.steps.get_or_create(&StepLabel { step: "publish" }).observe(publish.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_jobs_are_counted_by_type() {
        let m = Metrics::default();
        m.submitted(JobKind::Provision);
        m.submitted(JobKind::Provision);
        m.submit_timings(std::time::Duration::from_millis(2), std::time::Duration::from_millis(1));
        let text = m.render();
        assert!(text.contains("dfe_api_jobs_accepted_total{type=\"provision\"} 2"), "{text}");
        assert!(text.contains("dfe_api_submit_step_duration_seconds_count{step=\"record\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
