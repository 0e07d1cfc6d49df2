//! Retention of finished jobs: one worker at a time, the holder of the registry lease
//! `job-retention`, deletes every [`EVERY`] the finished jobs older than
//! `registry.keep-finished-days` (what goes and what stays: [`dfe_registry::history`]).
//!
//! The lease lasts longer than the pause between runs, so its holder keeps it by running;
//! when the holder dies another worker takes over once it has lapsed. Two runs at once (a
//! holder that stalled past its lease) are harmless: each batch skips the rows the other
//! holds, and deleting what is gone already deletes nothing.

use std::time::Duration;

use dfe_registry::history::BATCH;
use dfe_registry::Registry;
use tokio_util::sync::CancellationToken;

/// The lease's name in the registry.
pub const LEASE: &str = "job-retention";
/// Pause between runs.
pub const EVERY: Duration = Duration::from_secs(600);
/// How long the lease lasts unless renewed: more than [`EVERY`], so the holder renews it.
const LEASE_TTL: Duration = Duration::from_secs(1_500);
/// Pause before the first try: the start of a worker is busy enough.
const FIRST_AFTER: Duration = Duration::from_secs(30);

/// One worker's part in the retention.
pub struct Retention {
    /// This worker's id (the lease holder's name).
    pub worker_id: String,
    /// Where the jobs and the lease are.
    pub registry: Registry,
    /// `registry.keep-finished-days`: 0 keeps every job.
    pub keep_days: u32,
}

impl Retention {
    /// Takes part until `shutdown`; gives the lease up on the way out.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.keep_days == 0 {
            tracing::info!("registry.keep-finished-days = 0: finished jobs are kept for ever");
            return;
        }
        let mut pause = FIRST_AFTER;
        let mut holding = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => break,
            }
            pause = EVERY;
            match self.registry.take_lease(LEASE, &self.worker_id, LEASE_TTL).await {
                Ok(Some(_)) => {
                    holding = true;
                    self.once().await;
                }
                Ok(None) => holding = false,
                Err(e) => tracing::debug!(error = %e, "cannot take the job retention's lease; trying again later"),
            }
        }
        if holding {
            if let Err(e) = self.registry.release_lease(LEASE, &self.worker_id).await {
                tracing::debug!(error = %e, "could not give the job retention's lease up; it expires by itself");
            }
        }
    }

    /// One run: deletes what is past the retention, logging how much.
    pub async fn once(&self) {
        let started = tokio::time::Instant::now();
        match self.registry.delete_finished_jobs(self.keep_days, BATCH).await {
            Ok(0) => tracing::debug!("no finished job is past its retention"),
            Ok(n) => tracing::info!(
                deleted = n,
                keep_days = self.keep_days,
                ms = started.elapsed().as_millis() as u64,
                "finished jobs past their retention deleted"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "deleting finished jobs past their retention failed; the next run tries again")
            }
        }
    }
}
