//! The worker's Prometheus metrics and the small HTTP listener that serves them on
//! `GET /metrics` (`worker.metrics-listen`). Hand-written exposition and HTTP: one page of
//! text does not justify an HTTP framework in the worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dfe_shared::job::JobKind;
use dfe_shared::metrics::{header, Histogram};
use dfe_shared::registry::JobState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The steps whose durations are measured, as named in metrics and in `result.timings`.
pub const STEPS: [&str; 6] = ["queue", "storage", "database", "instance", "health", "total"];

/// Counters, gauges and histograms of one worker process.
#[derive(Default)]
pub struct Metrics {
    /// Finished jobs by kind (index in `JobKind::ALL`) and outcome (0 succeeded, 1 failed).
    jobs: [[AtomicU64; 2]; 4],
    /// Jobs being handled now.
    in_flight: AtomicI64,
    /// Transient failures sent to a retry queue.
    retries: AtomicU64,
    /// Messages moved to `dfe.jobs.dead` (invalid ones and jobs out of attempts).
    dead_lettered: AtomicU64,
    /// Step durations, in the order of [`STEPS`].
    steps: [Histogram; 6],
}

impl Metrics {
    /// Counts a finished job.
    pub fn finished(&self, kind: JobKind, state: JobState) {
        let k = JobKind::ALL.iter().position(|x| *x == kind).unwrap_or(0);
        let o = usize::from(state != JobState::Succeeded);
        self.jobs[k][o].fetch_add(1, Ordering::Relaxed);
    }

    /// A job starts being handled; the guard ends it.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Counts a retry.
    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a dead-lettered message.
    pub fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the duration of `step` (one of [`STEPS`]).
    pub fn observe(&self, step: &str, d: Duration) {
        if let Some(i) = STEPS.iter().position(|s| *s == step) {
            self.steps[i].observe(d);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        header(&mut out, "dfe_worker_jobs_total", "counter", "Jobs that ended, by type and outcome.");
        for (k, kind) in JobKind::ALL.iter().enumerate() {
            for (o, outcome) in ["succeeded", "failed"].iter().enumerate() {
                let n = self.jobs[k][o].load(Ordering::Relaxed);
                let _ = writeln!(out, "dfe_worker_jobs_total{{type=\"{kind}\",outcome=\"{outcome}\"}} {n}");
            }
        }
        header(&mut out, "dfe_worker_jobs_in_flight", "gauge", "Jobs this worker is handling now.");
        let _ = writeln!(out, "dfe_worker_jobs_in_flight {}", self.in_flight.load(Ordering::Relaxed));
        header(&mut out, "dfe_worker_retries_total", "counter", "Transient failures sent to a retry queue.");
        let _ = writeln!(out, "dfe_worker_retries_total {}", self.retries.load(Ordering::Relaxed));
        header(&mut out, "dfe_worker_dead_lettered_total", "counter", "Messages moved to dfe.jobs.dead.");
        let _ = writeln!(out, "dfe_worker_dead_lettered_total {}", self.dead_lettered.load(Ordering::Relaxed));
        header(
            &mut out,
            "dfe_worker_step_duration_seconds",
            "histogram",
            "Duration of each step: queue wait (recorded to started), storage, database, instance \
             (with health wait), health wait alone, whole job.",
        );
        for (i, step) in STEPS.iter().enumerate() {
            self.steps[i].render(&mut out, "dfe_worker_step_duration_seconds", &format!("step=\"{step}\""));
        }
        out
    }
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Step durations of one job run, filled in by the job body and read by the consumer.
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

/// Serves `GET /metrics` on `listener` for as long as the process runs. Anything else gets
/// a 404; each connection answers one request and closes.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head (bounded: a request line and a few headers).
            let head = loop {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf[len..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
                    Ok(Ok(n)) => len += n,
                }
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                if text.contains("\r\n\r\n") || text.contains("\n\n") || len == buf.len() {
                    break text;
                }
            };
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            let (status, kind, body) = if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
                ("200 OK", "text/plain; version=0.0.4", metrics.render())
            } else {
                ("404 Not Found", "text/plain", "not found: the worker serves GET /metrics\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
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
        assert!(text.contains("dfe_worker_jobs_total{type=\"provision\",outcome=\"succeeded\"} 1\n"));
        assert!(text.contains("dfe_worker_jobs_total{type=\"export\",outcome=\"failed\"} 1\n"));
        assert!(text.contains("dfe_worker_jobs_in_flight 1\n"));
        assert!(text.contains("dfe_worker_step_duration_seconds_count{step=\"storage\"} 1\n"));
        drop(busy);
        assert!(m.render().contains("dfe_worker_jobs_in_flight 0\n"));
    }

    #[tokio::test]
    async fn the_listener_serves_metrics_and_404_for_anything_else() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, std::sync::Arc::default()));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("dfe_worker_retries_total 0"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    }
}
