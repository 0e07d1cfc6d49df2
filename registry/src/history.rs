//! Retention of finished jobs (`registry.keep-finished-days`), so that the registry does
//! not grow with every job ever run.
//!
//! A job goes once it has finished (`succeeded` or `failed`) longer ago than the retention,
//! together with what hangs on it: its events given up on in `event_outbox` and its
//! schedule slot. A finished job stays, however old, while something still needs it:
//! - an instance names it (`job_id`: the job that last acted on it, which the reconciler and
//!   the fleet read; `previous_job_id`: what a cancel hands the instance back to);
//! - a snapshot names it (the export that made it);
//! - one of its events still waits in `event_outbox` for another attempt;
//! - it is the newest slot of its schedule for its instance: the schedules look the current
//!   slot's job up by its derived id, and a slot whose job had gone would be exported again.
//!
//! Its `Idempotency-Key` goes with it: a request repeated with the same key after the
//! retention is a new job.
//!
//! Deletion runs in batches of a bounded number of jobs, each one statement and one
//! transaction of its own, so that no lock is held for long and the hot path is never
//! kept waiting behind it; rows another transaction holds are skipped and taken next time.

use crate::{Error, Registry, Result};

/// Jobs deleted by one statement at most.
pub const BATCH: i64 = 1_000;

/// One batch: the oldest finished jobs past the retention that nothing needs (see the
/// module doc), and what hangs on them, in one statement.
const DELETE_BATCH: &str = "
WITH doomed AS (
    SELECT j.job_id FROM jobs j
     WHERE j.state IN ('succeeded', 'failed')
       AND j.finished_at < now() - make_interval(days => $1)
       AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.job_id = j.job_id)
       AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.previous_job_id = j.job_id)
       AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.job_id = j.job_id)
       AND NOT EXISTS (SELECT 1 FROM event_outbox e WHERE e.job_id = j.job_id AND e.abandoned_at IS NULL)
       AND NOT EXISTS (SELECT 1 FROM schedule_slots s
                        WHERE s.job_id = j.job_id
                          AND NOT EXISTS (SELECT 1 FROM schedule_slots n
                                           WHERE n.schedule = s.schedule AND n.instance_id = s.instance_id
                                             AND n.slot > s.slot))
     ORDER BY j.finished_at
     LIMIT $2
     FOR UPDATE OF j SKIP LOCKED
), slots AS (
    DELETE FROM schedule_slots WHERE job_id IN (SELECT job_id FROM doomed)
), outbox AS (
    DELETE FROM event_outbox WHERE job_id IN (SELECT job_id FROM doomed)
)
DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM doomed)";

impl Registry {
    /// Deletes finished jobs older than `keep_days` days that nothing needs any more, with
    /// their dependent rows (see the module doc), `batch` jobs a statement until none is
    /// left; returns how many went. `keep_days` 0 deletes nothing (retention off).
    pub async fn delete_finished_jobs(&self, keep_days: u32, batch: i64) -> Result<u64> {
        if keep_days == 0 {
            return Ok(0);
        }
        let days = i32::try_from(keep_days).unwrap_or(i32::MAX);
        let batch = batch.max(1);
        let mut deleted = 0;
        loop {
            // A connection per batch: between batches the pool serves the hot path.
            let client = self.client().await?;
            let n = client
                .execute(DELETE_BATCH, &[&days, &batch])
                .await
                .map_err(Error::query("deleting finished jobs past their retention"))?;
            drop(client);
            deleted += n;
            if n < u64::try_from(batch).unwrap_or(u64::MAX) {
                return Ok(deleted);
            }
            tokio::task::yield_now().await;
        }
    }
}
