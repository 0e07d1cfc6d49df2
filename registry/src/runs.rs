//! The statements of a job's run on a worker, and the rows they take. Entering a run
//! (record the message, take the instance lock, start the run) is one statement, sent
//! together with a read of the instance that the body's claim starts from; ending it is the
//! completion ([`crate::Registry::complete`]'s statement), then the unlock. Each statement
//! takes the rows of every run that asked for it meanwhile ([`crate::session`] sends them,
//! [`crate::lock`] is what a run calls): one round trip and one commit for all of them.
//!
//! The order of effects is what it was with a statement per run: a job is recorded before
//! its run starts, it starts only under its instance's lock, and the lock is released only
//! after the completion has committed (PostgreSQL runs pipelined statements one after the
//! other, each in its own transaction; the unlock releases only the locks of jobs it finds
//! ended).

use std::time::Duration;

use dfe_shared::records::{InstanceRecord, JobRecord};

use crate::jobs::JOB_COLUMNS;
use crate::transitions::EndedJob;

/// First key of the two-key advisory lock space used for instances ("dfe").
pub(crate) const LOCK_SPACE: i32 = 0x0064_6665;

/// The job as the registry has it, and its owner (the request's, else its instance's).
#[derive(Debug)]
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

/// One try at entering a run, as the lock session takes it.
#[derive(Debug)]
pub(crate) struct EnterRow {
    pub(crate) job_id: String,
    pub(crate) kind: &'static str,
    pub(crate) instance_id: String,
    pub(crate) owner: Option<serde_json::Value>,
    pub(crate) request: serde_json::Value,
    pub(crate) source: String,
    pub(crate) requested_by: String,
    pub(crate) fingerprint: Option<String>,
    pub(crate) traceparent: Option<String>,
    /// The lock's key.
    pub(crate) key: String,
    pub(crate) worker: String,
    pub(crate) deadline_secs: f64,
}

/// The answer to one try.
#[derive(Debug)]
pub(crate) struct EntryRow {
    /// The lock was taken for this run, which is started: the session keeps it.
    pub(crate) started: bool,
    /// The session's connection that holds it.
    pub(crate) generation: u64,
    /// The job as the statement found or made it (None: another delivery inserted it after
    /// the statement's snapshot; the next try sees it).
    pub(crate) entered: Option<Entered>,
}

/// A run's end as the lock session takes it.
pub(crate) struct EndRow {
    pub(crate) ended: EndedJob,
    pub(crate) key: String,
    pub(crate) generation: u64,
}

/// Records, locks and starts runs, one row each, in one statement. For each row whose
/// session may try its lock (it does not hold it already), the lock is tried first; the job
/// is inserted (as `running` with the lock, `queued` without) unless it is known; a known job
/// is started if the lock was taken, it has not ended and it is of this kind; else it is
/// read as it is. A row per run carries whether the lock was taken and which of the three
/// happened (`how`: `new`, `started`, `found`, or null). The given rows' columns are
/// prefixed `r_` so that in the CTEs an unqualified name is always the table's; `ins` takes
/// its rows in job id order, so that two batches lock the same rows in one order. `jobs` is
/// read only by its key (`job_id = ANY($1)`), whatever the plan (see [`crate::session`]).
pub(crate) fn enter_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH req AS MATERIALIZED (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], $6::text[],
                                 $7::text[], $8::text[], $9::text[], $10::text[], $11::bool[], $12::text[],
                                 $13::float8[])
                WITH ORDINALITY AS r(r_job, r_kind, r_instance, r_owner, r_request, r_source, r_requested_by,
                                     r_fingerprint, r_traceparent, r_key, r_may_lock, r_worker, r_deadline, r_n)),
         lock AS MATERIALIZED (
            SELECT r_n AS l_n,
                   CASE WHEN r_may_lock THEN pg_try_advisory_lock($14, hashtext(r_key)) ELSE false END AS held
            FROM req),
         ins AS (
            INSERT INTO jobs (job_id, kind, state, attempts, instance_id, owner_id, request, source, requested_by,
                              fingerprint, published_at, traceparent, worker, started_at, deadline_at)
            SELECT r_job, r_kind, CASE WHEN held THEN 'running' ELSE 'queued' END, CASE WHEN held THEN 1 ELSE 0 END,
                   r_instance, coalesce(r_owner, (SELECT owner_id FROM instances WHERE instance_id = r_instance)),
                   r_request, r_source, r_requested_by, r_fingerprint, now(), r_traceparent,
                   CASE WHEN held THEN r_worker END, CASE WHEN held THEN now() END,
                   CASE WHEN held THEN now() + make_interval(secs => r_deadline) END
            FROM req JOIN lock ON l_n = r_n
            ORDER BY r_job
            ON CONFLICT (job_id) DO NOTHING
            RETURNING {JOB_COLUMNS}, owner_id),
         started AS (
            UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = now(), updated_at = now(),
                   worker = r_worker, published_at = coalesce(published_at, now()), next_retry_at = NULL,
                   deadline_at = now() + make_interval(secs => r_deadline)
            FROM req JOIN lock ON l_n = r_n
            WHERE job_id = ANY($1::text[]) AND job_id = r_job AND kind = r_kind
              AND state NOT IN ('succeeded', 'failed') AND held
              AND r_job NOT IN (SELECT job_id FROM ins)
            RETURNING {JOB_COLUMNS}, owner_id),
         found AS (
            SELECT {JOB_COLUMNS}, owner_id FROM jobs
            WHERE job_id = ANY($1::text[])
              AND job_id NOT IN (SELECT job_id FROM ins) AND job_id NOT IN (SELECT job_id FROM started))
         SELECT r_n, held, x.* FROM req JOIN lock ON l_n = r_n LEFT JOIN (
            SELECT 'new' AS how, * FROM ins
            UNION ALL SELECT 'started', * FROM started
            UNION ALL SELECT 'found', * FROM found) x ON x.job_id = r_job
         ORDER BY r_n"
        )
    })
}

/// Reads the instances of the runs just entered: a statement of its own, sent after the
/// entering one, so that its snapshot is taken after the locks were granted and it sees what
/// each lock's last holder committed.
pub(crate) fn read_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!("SELECT {} FROM instances WHERE instance_id = ANY($1::text[])", crate::instances::INSTANCE_COLUMNS)
    })
}

/// Releases locks, a row per key given: a key with a job id only once that job has ended
/// (its completion, sent before, committed), a key without one at once. `unlocked` is null
/// where the lock was kept, and false where the session did not hold it. The job is looked
/// up row by row (a scalar subquery): as a join, a plan made while `jobs` was small would
/// read every finished job to hash them, at every unlock.
pub(crate) const UNLOCK_SQL: &str = "SELECT u_key,
        CASE WHEN u_job IS NULL OR (SELECT state FROM jobs WHERE job_id = u_job) IN ('succeeded', 'failed')
             THEN pg_advisory_unlock($1, hashtext(u_key)) END AS unlocked
    FROM unnest($2::text[], $3::text[]) AS u(u_key, u_job)";
