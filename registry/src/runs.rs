//! A job's run on a worker, in as few round trips as its guarantees allow: entering it
//! (record the message, take the instance lock, start the run) is one statement on the
//! lock's connection, sent together with a read of the instance that the body's claim
//! starts from; ending it (the completion, then the unlock) is two statements sent
//! together on that same connection. Before, the same took seven round trips on two
//! connections; the registry's round trips were the top cost of a job (BENCHMARKS.md).
//!
//! The order of effects is what it was: a job is recorded before its run starts, it starts
//! only under its instance's lock, and the lock is released only after the completion has
//! committed (PostgreSQL runs pipelined statements one after the other, each in its own
//! transaction).

use std::time::Duration;

use dfe_shared::job::Job;
use dfe_shared::records::{InstanceRecord, JobRecord};

use crate::instances::{instance_from_row, INSTANCE_COLUMNS};
use crate::jobs::{job_from_row, Submitter, JOB_COLUMNS};
use crate::lock::{InstanceLock, LockPool, LOCK_SPACE, UNLOCK};
use crate::pipeline::Step;
use crate::transitions::Completion;
use crate::{Ending, Error, Result};

/// How often a job waiting for its instance's lock tries again.
const POLL: Duration = Duration::from_millis(200);

/// What entering a job's run came to.
pub enum Entry {
    /// Recorded (or found) and started, under its instance's lock: run it, then end it with
    /// [`InstanceLock::complete_and_release`] (or release the lock).
    Started(Entered, Box<InstanceLock>),
    /// The job had ended already (a duplicate delivery): its outcome is to be announced again.
    Ended(Entered),
    /// The job id names a job of another kind: the message is not this job.
    OtherKind(Entered),
    /// The instance stayed locked by another job for the whole wait; the job is recorded.
    Busy(Entered),
}

/// The job as the registry has it, and its owner (the request's, else its instance's).
pub struct Entered {
    /// The job's record (for a started job: after the start).
    pub record: JobRecord,
    /// The owner recorded with the job.
    pub owner_id: Option<serde_json::Value>,
    /// The job's instance as read right after the lock was tried (None: there is none).
    /// For a started job that is under the lock, so its claim ([`crate::Registry::claim`])
    /// need not read it again.
    pub instance: Option<InstanceRecord>,
}

/// Who runs a job and for how long.
pub struct RunBy<'a> {
    /// The worker's id (the job's `worker`).
    pub worker: &'a str,
    /// How long the run may take (the job's `deadline_at`).
    pub deadline_secs: f64,
    /// How long to wait for the instance's lock.
    pub lock_wait: Duration,
}

/// Records, locks and starts in one statement. The lock is tried first; the job is inserted
/// (as `running` with the lock, `queued` without) unless it is known; a known job is started
/// if the lock was taken, it has not ended and it is of this kind; else it is read as it is.
/// The row carries whether the lock was taken and which of the three happened.
fn enter_sql() -> String {
    format!(
        "WITH lock AS MATERIALIZED (SELECT pg_try_advisory_lock($10, hashtext($11)) AS held),
         ins AS (
            INSERT INTO jobs (job_id, kind, state, attempts, instance_id, owner_id, request, source, requested_by,
                              fingerprint, published_at, traceparent, worker, started_at, deadline_at)
            SELECT $1::text, $2::text, CASE WHEN held THEN 'running' ELSE 'queued' END,
                   CASE WHEN held THEN 1 ELSE 0 END, $3::text,
                   coalesce($4::jsonb, (SELECT owner_id FROM instances WHERE instance_id = $3::text)),
                   $5::jsonb, $6::text, $7::text, $8::text, now(), $9::text,
                   CASE WHEN held THEN $12::text END, CASE WHEN held THEN now() END,
                   CASE WHEN held THEN now() + make_interval(secs => $13::float8) END
            FROM lock
            ON CONFLICT (job_id) DO NOTHING
            RETURNING {JOB_COLUMNS}, owner_id),
         started AS (
            UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = now(), updated_at = now(),
                   worker = $12::text, published_at = coalesce(published_at, now()), next_retry_at = NULL,
                   deadline_at = now() + make_interval(secs => $13::float8)
            WHERE job_id = $1::text AND kind = $2::text AND state NOT IN ('succeeded', 'failed')
              AND (SELECT held FROM lock) AND NOT EXISTS (SELECT 1 FROM ins)
            RETURNING {JOB_COLUMNS}, owner_id),
         found AS (
            SELECT {JOB_COLUMNS}, owner_id FROM jobs
            WHERE job_id = $1::text AND NOT EXISTS (SELECT 1 FROM ins) AND NOT EXISTS (SELECT 1 FROM started))
         SELECT lock.held, r.* FROM lock LEFT JOIN (
            SELECT 'new' AS how, * FROM ins
            UNION ALL SELECT 'started', * FROM started
            UNION ALL SELECT 'found', * FROM found) r ON true"
    )
}

impl LockPool {
    /// Enters the run of `job` (which must carry its id), arrived on a queue: records it
    /// (or finds it recorded, by the api or an earlier delivery), waits up to
    /// `runner.lock_wait` for the lock of `key`, and starts it. Every try is one statement.
    pub async fn enter(&self, job: &Job, key: &str, by: &Submitter<'_>, runner: &RunBy<'_>) -> Result<Entry> {
        let job_id = job.job_id().map(|j| j.as_str().to_owned()).unwrap_or_default();
        let owner = job.owner_id().map(|o| serde_json::to_value(o).unwrap_or_default());
        let request = job.to_value();
        let kind = job.kind().as_str();
        let instance_id = job.instance_id().as_str();
        let client = self.pool.get().await?;
        let sql = enter_sql();
        let statement = crate::stmt(&client, &sql).await?;
        // A statement of its own, sent with the first: its snapshot is taken after the lock
        // was granted, so it sees what the lock's last holder committed.
        let read =
            crate::stmt(&client, &format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = $1")).await?;
        let unlock = crate::stmt(&client, UNLOCK).await?;
        let deadline = tokio::time::Instant::now() + runner.lock_wait;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 13] = [
            &job_id,
            &kind,
            &instance_id,
            &owner,
            &request,
            &by.source,
            &by.requested_by,
            &by.fingerprint,
            &by.traceparent,
            &LOCK_SPACE,
            &key,
            &runner.worker,
            &runner.deadline_secs,
        ];
        loop {
            let answers = crate::pipeline::run(
                &client,
                &[
                    Step::new(&statement, &params, "recording and starting a job"),
                    Step::new(&read, &[&instance_id], "reading a job's instance"),
                ],
            )
            .await?;
            let (Some(row), Some(instance)) = (answers.first().and_then(|r| r.first()), answers.get(1)) else {
                return Err(Error::Inconsistent("entering a run came back without its rows".into()));
            };
            let held: bool = row.get("held");
            let how: Option<String> = row.get("how");
            let entered = match how {
                Some(_) => Some(Entered {
                    record: job_from_row(row)?,
                    owner_id: row.get("owner_id"),
                    instance: instance.first().map(instance_from_row).transpose()?,
                }),
                None => None,
            };
            let started = matches!(how.as_deref(), Some("new" | "started")) && held;
            if started {
                let entered = entered.ok_or_else(|| Error::Inconsistent("a started job without its row".into()))?;
                return Ok(Entry::Started(entered, Box::new(InstanceLock::held(client, key))));
            }
            if held {
                // Taken, but not for a run (the job ended, is another kind, or was being
                // inserted concurrently): given back at once. Session locks stack, so a lock
                // kept here would be taken twice by the next try.
                let row =
                    client.query_one(&unlock, &[&LOCK_SPACE, &key]).await.map_err(Error::query("releasing a lock"))?;
                if !row.get::<_, bool>(0) {
                    return Err(Error::Inconsistent(format!("the lock of {key} was not held after it was taken")));
                }
            }
            match entered {
                Some(e) if e.record.kind != job.kind() => return Ok(Entry::OtherKind(e)),
                Some(e) if e.record.state.is_terminal() => return Ok(Entry::Ended(e)),
                Some(e) if tokio::time::Instant::now() >= deadline => return Ok(Entry::Busy(e)),
                Some(_) => tokio::time::sleep(POLL).await,
                // Inserted by another delivery after this statement's snapshot: the next try
                // sees it.
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

impl InstanceLock {
    /// Ends the job this lock was taken for ([`crate::Registry::complete`]), then releases
    /// the lock: both statements go out together, and the unlock runs only after the
    /// completion's commit. False when the job had already ended. The lock is released even
    /// when the completion fails; a failed release closes the connection, which frees it.
    pub async fn complete_and_release(mut self, job_id: &str, instance_id: &str, ending: &Ending<'_>) -> Result<bool> {
        let Some(client) = self.client.as_ref() else {
            return Err(Error::Inconsistent("completing a job through a released lock".into()));
        };
        let completion = Completion::new(job_id, instance_id, ending);
        // Both prepared first (from the connection's cache): only then are the two sent in
        // the order they are polled.
        let complete = crate::stmt(client, completion.sql()).await?;
        let unlock = crate::stmt(client, UNLOCK).await?;
        let params = completion.params();
        let unlock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&LOCK_SPACE, &self.instance];
        let (completed, unlocked) =
            tokio::join!(client.query_one(&complete, &params), client.query_one(&unlock, &unlock_params));
        if unlocked.is_ok_and(|r| r.get::<_, bool>(0)) {
            // Released: the connection may serve the next job. (Otherwise Drop discards it.)
            self.client = None;
        }
        let completed = completed.map_err(Error::query("ending a job"))?;
        Ok(completed.get::<_, i64>(0) > 0)
    }
}
