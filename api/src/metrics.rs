//! The API's counters, rendered as Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use dfe_shared::job::JobKind;
use dfe_shared::metrics::{header, Histogram};

/// Counters of the API.
#[derive(Default)]
pub struct Metrics {
    submitted: [AtomicU64; 4],
    publish_failures: AtomicU64,
    /// Accepted submissions: validate, record and publish (with its confirm), by step.
    record: Histogram,
    publish: Histogram,
}

impl Metrics {
    /// Counts an accepted job.
    pub fn submitted(&self, kind: JobKind) {
        let i = JobKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.submitted[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a publication left to the outbox.
    pub fn publish_failed(&self) {
        self.publish_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long an accepted submission took to be recorded and to be published.
    pub fn submit_timings(&self, record: std::time::Duration, publish: std::time::Duration) {
        self.record.observe(record);
        self.publish.observe(publish);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP dfe_api_jobs_accepted_total Jobs accepted (answered 202) by type.\n");
        out.push_str("# TYPE dfe_api_jobs_accepted_total counter\n");
        for (i, kind) in JobKind::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "dfe_api_jobs_accepted_total{{type=\"{kind}\"}} {}",
                self.submitted[i].load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP dfe_api_publish_deferred_total Accepted jobs whose publication was left to the outbox.\n");
        out.push_str("# TYPE dfe_api_publish_deferred_total counter\n");
        let _ = writeln!(out, "dfe_api_publish_deferred_total {}", self.publish_failures.load(Ordering::Relaxed));
        header(
            &mut out,
            "dfe_api_submit_step_duration_seconds",
            "histogram",
            "Steps of an accepted submission: record (registry transaction), publish (until confirmed).",
        );
        self.record.render(&mut out, "dfe_api_submit_step_duration_seconds", "step=\"record\"");
        self.publish.render(&mut out, "dfe_api_submit_step_duration_seconds", "step=\"publish\"");
        out
    }
}
