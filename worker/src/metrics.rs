//! The worker's Prometheus metrics (`prometheus-client`), served by [`crate::http`] on
//! `worker.metrics-listen`.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use dfe_registry::LockSession;
use dfe_shared::job::JobKind;
use dfe_shared::records::JobState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::timings::STEPS;

/// Upper bounds (seconds) of the step histograms: from a millisecond (the `noop` pipeline)
/// to minutes (a container that is slow to answer).
const BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    r#type: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabel {
    host: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: &'static str,
}

type StepHistograms = Family<StepLabel, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Counters, gauges and histograms of one worker process.
pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Counter>,
    in_flight: Gauge<i64, AtomicI64>,
    retries: Counter,
    dead_lettered: Counter,
    events_deferred: Counter,
    events_redelivered: Counter,
    events_abandoned: Counter,
    steps: StepHistograms,
    host_instances: Family<HostLabel, Gauge<i64, AtomicI64>>,
    host_memory: Family<HostLabel, Gauge<i64, AtomicI64>>,
    host_reachable: Family<HostLabel, Gauge<i64, AtomicI64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register("dfe_worker_jobs", "Jobs that ended, by type and outcome", jobs.clone());
        let in_flight = Gauge::<i64, AtomicI64>::default();
        registry.register("dfe_worker_jobs_in_flight", "Jobs this worker is handling now", in_flight.clone());
        let retries = Counter::default();
        registry.register("dfe_worker_retries", "Transient failures sent to a retry queue", retries.clone());
        let dead_lettered = Counter::default();
        registry.register("dfe_worker_dead_lettered", "Messages moved to dfe.jobs.dead", dead_lettered.clone());
        let events_deferred = Counter::default();
        registry.register(
            "dfe_worker_events_deferred",
            "Events the broker did not confirm, kept in the registry for another attempt",
            events_deferred.clone(),
        );
        let events_redelivered = Counter::default();
        registry.register(
            "dfe_worker_events_redelivered",
            "Deferred events published on a later attempt",
            events_redelivered.clone(),
        );
        let events_abandoned = Counter::default();
        registry.register(
            "dfe_worker_events_abandoned",
            "Deferred events given up after their last attempt",
            events_abandoned.clone(),
        );
        let steps = StepHistograms::new_with_constructor(histogram as fn() -> Histogram);
        registry.register(
            "dfe_worker_step_duration_seconds",
            "Duration of each step: queue wait (recorded to started), storage, database, instance (with health \
             wait), health wait alone, whole job",
            steps.clone(),
        );
        let host_instances = Family::<HostLabel, Gauge<i64, AtomicI64>>::default();
        registry.register("dfe_host_instances", "Instances placed on each Docker host", host_instances.clone());
        let host_memory = Family::<HostLabel, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "dfe_host_memory_reserved_bytes",
            "Memory the instances placed on each Docker host reserve",
            host_memory.clone(),
        );
        let host_reachable = Family::<HostLabel, Gauge<i64, AtomicI64>>::default();
        registry.register("dfe_host_reachable", "1 when the Docker host answers its probes", host_reachable.clone());
        Metrics {
            registry,
            host_instances,
            host_memory,
            host_reachable,
            jobs,
            in_flight,
            retries,
            dead_lettered,
            events_deferred,
            events_redelivered,
            events_abandoned,
            steps,
        }
    }
}

impl Metrics {
    /// The metrics of a worker whose runs take their locks through `locks`: they show how
    /// many requests its lock session served and in how many round trips.
    pub fn with_lock_session(locks: LockSession) -> Metrics {
        let mut metrics = Metrics::default();
        metrics.registry.register_collector(Box::new(LockSessionCollector(locks)));
        metrics
    }

    /// Counts a finished job.
    pub fn finished(&self, kind: JobKind, state: JobState) {
        let outcome = if state == JobState::Succeeded { "succeeded" } else { "failed" };
        self.jobs.get_or_create(&JobLabels { r#type: kind.as_str(), outcome }).inc();
    }

    /// A job starts being handled; the guard ends it.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(self)
    }

    /// Counts a retry.
    pub fn retried(&self) {
        self.retries.inc();
    }

    /// Counts a dead-lettered message.
    pub fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }

    /// Counts an event left to the event outbox.
    pub fn event_deferred(&self) {
        self.events_deferred.inc();
    }

    /// Counts deferred events published on a later attempt.
    pub fn events_redelivered(&self, n: usize) {
        self.events_redelivered.inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Counts a deferred event given up.
    pub fn event_abandoned(&self) {
        self.events_abandoned.inc();
    }

    /// Sets the gauges of a Docker host.
    pub fn host(&self, host: &str, instances: i64, memory_reserved: i64, reachable: bool) {
        let label = HostLabel { host: host.to_owned() };
        self.host_instances.get_or_create(&label).set(instances);
        self.host_memory.get_or_create(&label).set(memory_reserved);
        self.host_reachable.get_or_create(&label).set(i64::from(reachable));
    }

    /// Records the duration of `step` (one of [`STEPS`]).
    pub fn observe(&self, step: &str, d: Duration) {
        if let Some(step) = STEPS.iter().find(|s| **s == step) {
            self.steps.get_or_create(&StepLabel { step }).observe(d.as_secs_f64());
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The lock session's counters, read at each scrape.
#[derive(Debug)]
struct LockSessionCollector(LockSession);

impl Collector for LockSessionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        let counters = [
            (
                "dfe_worker_lock_session_requests",
                "Requests of runs to the registry's lock session: entering (each try), ending, giving a lock back",
                stats.requests,
            ),
            (
                "dfe_worker_lock_session_batches",
                "Round trips of the lock session; requests / batches is how many runs share a statement",
                stats.batches,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        Ok(())
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Decrements the in-flight gauge when dropped.
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_jobs_count_by_type_and_outcome_and_the_gauge_follows_its_guard() {
        let m = Metrics::default();
        m.finished(JobKind::Provision, JobState::Succeeded);
        m.finished(JobKind::Export, JobState::Failed);
        let busy = m.in_flight();
        m.observe("storage", Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("dfe_worker_jobs_total{type=\"provision\",outcome=\"succeeded\"} 1\n"), "{text}");
        assert!(text.contains("dfe_worker_jobs_total{type=\"export\",outcome=\"failed\"} 1\n"), "{text}");
        assert!(text.contains("dfe_worker_jobs_in_flight 1\n"), "{text}");
        assert!(text.contains("dfe_worker_step_duration_seconds_count{step=\"storage\"} 1\n"), "{text}");
        drop(busy);
        assert!(m.render().contains("dfe_worker_jobs_in_flight 0\n"));
    }

    #[tokio::test]
    async fn the_lock_sessions_counters_are_read_at_each_scrape() {
        // The session connects on its first request; none is made here.
        let session = LockSession::new("postgres://dfe@127.0.0.1:1/none").expect("a session");
        let text = Metrics::with_lock_session(session).render();
        assert!(text.contains("dfe_worker_lock_session_requests_total 0\n"), "{text}");
        assert!(text.contains("dfe_worker_lock_session_batches_total 0\n"), "{text}");
    }
}
