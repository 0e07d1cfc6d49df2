//! Jobs in the registry: submission with idempotency and instance claims, and the life
//! cycle `queued → running → (retrying →) succeeded | failed`.

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::Registry;
use crate::job::{Job, JobKind};
use crate::{Error, Result};

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Recorded, waiting for a worker.
    Queued,
    /// A worker runs it.
    Running,
    /// Failed transiently, will run again.
    Retrying,
    /// Done.
    Succeeded,
    /// Ended without success.
    Failed,
}

impl JobState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> JobState {
        match s {
            "running" => JobState::Running,
            "retrying" => JobState::Retrying,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            _ => JobState::Queued,
        }
    }

    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

/// A job as the registry holds it (and as `GET /api/v1/ops/jobs/{id}` shows it).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct JobRecord {
    /// The job id.
    pub job_id: String,
    /// `provision`, `deprovision`, `import` or `export`.
    #[serde(rename = "type")]
    pub kind: JobKind,
    /// Where it is in its life cycle.
    pub state: JobState,
    /// How many times a worker started it.
    pub attempts: i32,
    /// The instance it is about.
    pub instance_id: String,
    /// The original job.
    pub request: serde_json::Value,
    /// What was made, once succeeded.
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<serde_json::Value>,
    /// `api` or `queue`.
    pub source: String,
    /// When it was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When it was published onto `dfe.jobs` (None: not yet, the outbox will).
    #[serde(with = "time::serde::rfc3339::option")]
    pub published_at: Option<OffsetDateTime>,
    /// When a worker last started it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When it ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// When a job that is `retrying` runs again.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_retry_at: Option<OffsetDateTime>,
    /// When the running attempt must be over.
    #[serde(with = "time::serde::rfc3339::option")]
    pub deadline_at: Option<OffsetDateTime>,
}

const JOB_COLUMNS: &str = "job_id, kind, state, attempts, instance_id, request, result, error, \
     source, created_at, updated_at, published_at, started_at, finished_at, next_retry_at, deadline_at";

impl JobRecord {
    fn from_row(row: &Row) -> JobRecord {
        let kind: String = row.get("kind");
        let state: String = row.get("state");
        JobRecord {
            job_id: row.get("job_id"),
            kind: kind.parse().unwrap_or(JobKind::Provision),
            state: JobState::parse(&state),
            attempts: row.get("attempts"),
            instance_id: row.get("instance_id"),
            request: row.get("request"),
            result: row.get("result"),
            error: row.get("error"),
            source: row.get("source"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
            published_at: row.get("published_at"),
            started_at: row.get("started_at"),
            finished_at: row.get("finished_at"),
            next_retry_at: row.get("next_retry_at"),
            deadline_at: row.get("deadline_at"),
        }
    }
}

/// Who submits a job and how.
#[derive(Debug, Clone, Default)]
pub struct Submitter<'a> {
    /// `api` or `queue`.
    pub source: &'a str,
    /// The API client id.
    pub client_id: Option<&'a str>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<&'a str>,
    /// SHA-256 of a queue message body that carried no id (to find it on redelivery).
    pub fingerprint: Option<&'a str>,
}

/// What a submission came to.
#[derive(Debug)]
pub enum SubmitOutcome {
    /// Recorded as a new job.
    Created(JobRecord),
    /// The same job was submitted before (same job id or idempotency key): that job.
    Existing(JobRecord),
    /// Refused: the instance exists, is mid-operation, or the id/key names another request.
    Conflict(String),
    /// Refused: the instance it names does not exist.
    NotFound(String),
}

/// The request without its job id, to compare a resubmission with the original.
fn request_sans_id(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("job-id");
    }
    v
}

impl Registry {
    /// Records `job` (which must carry its id) as queued, in one transaction with the
    /// instance claim its kind needs: a provision claims the instance id (conflict when it
    /// exists), a deprovision needs an existing instance with no job in progress.
    pub async fn submit(&self, job: &Job, by: &Submitter<'_>) -> Result<SubmitOutcome> {
        let job_id = job.job_id().map(|j| j.as_str().to_owned()).unwrap_or_default();
        let request = job.to_value();
        let owner = job.owner_id().map(|o| serde_json::to_value(o).unwrap_or_default());
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(Error::registry("starting a submission"))?;
        let insert = super::stmt(
            &tx,
            "INSERT INTO jobs (job_id, kind, state, instance_id, owner_id, request, source,
                               client_id, idempotency_key, fingerprint)
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT DO NOTHING
             RETURNING *",
        )
        .await?;
        let inserted = tx
            .query_opt(
                &insert,
                &[
                    &job_id,
                    &job.kind().as_str(),
                    &job.instance_id().as_str(),
                    &owner,
                    &request,
                    &by.source,
                    &by.client_id,
                    &by.idempotency_key,
                    &by.fingerprint,
                ],
            )
            .await
            .map_err(Error::registry("recording a job"))?;
        let Some(row) = inserted else {
            drop(tx);
            // The connection goes back first: waiting for a second one while holding this
            // one could exhaust the pool under load.
            drop(client);
            return self.resubmission(job, by, &request).await;
        };
        let record = JobRecord::from_row(&row);
        if let Some(refusal) = claim(&tx, job, &job_id).await? {
            // Dropping the transaction rolls back the job row too: a refused job is not recorded.
            return Ok(refusal);
        }
        tx.commit().await.map_err(Error::registry("committing a submission"))?;
        Ok(SubmitOutcome::Created(record))
    }

    /// The job an id or idempotency key already names, if the request is the same one.
    async fn resubmission(&self, job: &Job, by: &Submitter<'_>, request: &serde_json::Value) -> Result<SubmitOutcome> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1
             OR (idempotency_key IS NOT NULL AND client_id IS NOT DISTINCT FROM $2 AND idempotency_key = $3)
             LIMIT 1"
        );
        let job_id = job.job_id().map(|j| j.as_str()).unwrap_or_default();
        let row = client
            .query_opt(&sql, &[&job_id, &by.client_id, &by.idempotency_key])
            .await
            .map_err(Error::registry("reading a resubmitted job"))?;
        let Some(row) = row else {
            return Err(Error::Inconsistent("job insert conflicted but no conflicting job was found".into()));
        };
        let existing = JobRecord::from_row(&row);
        let same = existing.kind == job.kind()
            && (by.idempotency_key.is_some() || existing.job_id == job_id)
            && request_sans_id(&existing.request) == request_sans_id(request);
        if same {
            Ok(SubmitOutcome::Existing(existing))
        } else if by.idempotency_key.is_some() && existing.job_id != job_id {
            Ok(SubmitOutcome::Conflict("this Idempotency-Key was used for a different request".into()))
        } else {
            Ok(SubmitOutcome::Conflict(format!("job-id {job_id} is already used by another job")))
        }
    }

    /// The job with `job_id`.
    pub async fn job(&self, job_id: &str) -> Result<Option<JobRecord>> {
        let client = self.client().await?;
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1");
        let row = client
            .query_opt(&super::stmt(&client, &sql).await?, &[&job_id])
            .await
            .map_err(Error::registry("reading a job"))?;
        Ok(row.as_ref().map(JobRecord::from_row))
    }

    /// The newest jobs, optionally of one instance.
    pub async fn jobs(&self, instance_id: Option<&str>, limit: i64) -> Result<Vec<JobRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::text IS NULL OR instance_id = $1)
             ORDER BY created_at DESC LIMIT $2"
        );
        let rows = client.query(&sql, &[&instance_id, &limit]).await.map_err(Error::registry("listing jobs"))?;
        Ok(rows.iter().map(JobRecord::from_row).collect())
    }

    /// A job still in progress that was recorded from a queue message with this body
    /// fingerprint (a redelivered message that carries no id of its own).
    pub async fn job_by_fingerprint(&self, kind: JobKind, fingerprint: &str) -> Result<Option<String>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT job_id FROM jobs WHERE fingerprint = $1 AND kind = $2
                   AND state NOT IN ('succeeded', 'failed')
                 ORDER BY created_at DESC LIMIT 1",
                &[&fingerprint, &kind.as_str()],
            )
            .await
            .map_err(Error::registry("finding a job by fingerprint"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Jobs running more than `running_grace_secs` past their deadline, or retrying more
    /// than `retry_grace_secs` past their retry time.
    pub async fn stuck_jobs(&self, running_grace_secs: f64, retry_grace_secs: f64) -> Result<Vec<JobRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE (state = 'running' AND deadline_at < now() - make_interval(secs => $1))
                OR (state = 'retrying' AND next_retry_at < now() - make_interval(secs => $2))
             ORDER BY created_at"
        );
        let rows = client
            .query(&sql, &[&running_grace_secs, &retry_grace_secs])
            .await
            .map_err(Error::registry("listing stuck jobs"))?;
        Ok(rows.iter().map(JobRecord::from_row).collect())
    }

    /// Marks a job published onto `dfe.jobs`.
    pub async fn mark_published(&self, job_id: &str) -> Result<()> {
        let client = self.client().await?;
        let sql = "UPDATE jobs SET published_at = now() WHERE job_id = $1 AND published_at IS NULL";
        client
            .execute(&super::stmt(&client, sql).await?, &[&job_id])
            .await
            .map_err(Error::registry("marking a job published"))?;
        Ok(())
    }

    /// Marks jobs published onto `dfe.jobs`, in one statement.
    pub async fn mark_published_many(&self, job_ids: &[String]) -> Result<()> {
        let client = self.client().await?;
        let sql = "UPDATE jobs SET published_at = now() WHERE job_id = ANY($1) AND published_at IS NULL";
        client
            .execute(&super::stmt(&client, sql).await?, &[&job_ids])
            .await
            .map_err(Error::registry("marking jobs published"))?;
        Ok(())
    }

    /// Starts a run of a job: `running`, one more attempt. `None` when the job has already
    /// ended (a duplicate delivery).
    pub async fn start_job(&self, job_id: &str, worker: &str, deadline_secs: f64) -> Result<Option<JobRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = now(),
                    updated_at = now(), worker = $2, published_at = coalesce(published_at, now()),
                    next_retry_at = NULL, deadline_at = now() + make_interval(secs => $3)
             WHERE job_id = $1 AND state NOT IN ('succeeded', 'failed')
             RETURNING {JOB_COLUMNS}"
        );
        let row = client
            .query_opt(&super::stmt(&client, &sql).await?, &[&job_id, &worker, &deadline_secs])
            .await
            .map_err(Error::registry("starting a job"))?;
        Ok(row.as_ref().map(JobRecord::from_row))
    }

    /// Records that a job failed transiently and runs again after `delay_secs`: `retrying`,
    /// with the error of the attempt and the time of the next one.
    pub async fn schedule_retry(&self, job_id: &str, delay_secs: f64, error: &serde_json::Value) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE jobs SET state = 'retrying', error = $3, updated_at = now(), deadline_at = NULL,
                        next_retry_at = now() + make_interval(secs => $2)
                 WHERE job_id = $1 AND state NOT IN ('succeeded', 'failed')",
                &[&job_id, &delay_secs, error],
            )
            .await
            .map_err(Error::registry("scheduling a retry"))?;
        Ok(())
    }

    /// Jobs recorded but not published for at least `min_age_secs`, oldest first: what
    /// the outbox must (re)publish.
    pub async fn unpublished(
        &self,
        min_age_secs: f64,
        limit: i64,
    ) -> Result<Vec<(String, JobKind, serde_json::Value)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT job_id, kind, request FROM jobs
                 WHERE published_at IS NULL AND state = 'queued'
                   AND created_at < now() - make_interval(secs => $1)
                 ORDER BY created_at LIMIT $2",
                &[&min_age_secs, &limit],
            )
            .await
            .map_err(Error::registry("listing unpublished jobs"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let kind: String = r.get(1);
                Some((r.get(0), kind.parse().ok()?, r.get(2)))
            })
            .collect())
    }
}

/// The instance side of a submission; `Some` refuses it.
async fn claim(tx: &deadpool_postgres::Transaction<'_>, job: &Job, job_id: &str) -> Result<Option<SubmitOutcome>> {
    use super::instances::{claim_for_provision, NewInstance};
    let id = job.instance_id().as_str();
    let creates = match job {
        Job::Provision(p) => Some(NewInstance::from(p)),
        Job::Import(i) => Some(NewInstance::from(i)),
        Job::Deprovision(_) | Job::Export(_) => None,
    };
    let select = super::stmt(tx, "SELECT state FROM instances WHERE instance_id = $1 FOR UPDATE").await?;
    let row = tx.query_opt(&select, &[&id]).await.map_err(Error::registry("reading an instance"))?;
    let state: Option<String> = row.map(|r| r.get(0));
    match (state.as_deref(), creates) {
        // A provision, or an import into an instance that does not exist yet, claims the id.
        (None | Some("deprovisioned"), Some(new)) => {
            let claimed = claim_for_provision(tx, &new, job_id).await?;
            return Ok((!claimed).then(|| SubmitOutcome::Conflict(format!("instance {id} already exists"))));
        }
        (None | Some("deprovisioned"), None) => {
            return Ok(Some(SubmitOutcome::NotFound(format!("instance {id} does not exist"))));
        }
        (Some(_), Some(_)) if matches!(job, Job::Provision(_)) => {
            return Ok(Some(SubmitOutcome::Conflict(format!("instance {id} already exists"))));
        }
        // Deprovision may finish a removal that failed part-way; the others need a running instance.
        (Some("provisioned"), _) | (Some("failed"), Some(_)) if !matches!(job, Job::Deprovision(_)) => {}
        (Some("provisioned" | "failed"), None) if matches!(job, Job::Deprovision(_)) => {}
        (Some(other), _) => {
            return Ok(Some(SubmitOutcome::Conflict(format!("instance {id} is mid-operation ({other})"))));
        }
    }
    let busy = super::stmt(
        tx,
        "SELECT job_id FROM jobs WHERE instance_id = $1 AND job_id <> $2
           AND state IN ('queued', 'running', 'retrying') LIMIT 1",
    )
    .await?;
    let busy = tx.query_opt(&busy, &[&id, &job_id]).await.map_err(Error::registry("looking for jobs in progress"))?;
    Ok(busy.map(|r| {
        let other: String = r.get(0);
        SubmitOutcome::Conflict(format!("instance {id} is mid-operation (job {other})"))
    }))
}

impl Registry {
    /// Records a job that arrived straight on a queue (no claim: the worker claims when it
    /// runs, so a refusal becomes a failure event). Returns the job as recorded, which is
    /// the earlier record when the job id is already known.
    pub async fn record(&self, job: &Job, by: &Submitter<'_>) -> Result<JobRecord> {
        let job_id = job.job_id().map(|j| j.as_str().to_owned()).unwrap_or_default();
        let owner = job.owner_id().map(|o| serde_json::to_value(o).unwrap_or_default());
        let client = self.client().await?;
        // One round trip whether the job is new or known (the api recorded it, or this is a
        // redelivery): the CTE inserts, and the second branch reads the existing row.
        let sql = format!(
            "WITH ins AS (
                INSERT INTO jobs (job_id, kind, state, instance_id, owner_id, request, source, fingerprint, published_at)
                VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, now())
                ON CONFLICT (job_id) DO NOTHING
                RETURNING {JOB_COLUMNS})
             SELECT {JOB_COLUMNS} FROM ins
             UNION ALL
             SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1 AND NOT EXISTS (SELECT 1 FROM ins)"
        );
        let inserted = client
            .query_opt(
                &super::stmt(&client, &sql).await?,
                &[
                    &job_id,
                    &job.kind().as_str(),
                    &job.instance_id().as_str(),
                    &owner,
                    &job.to_value(),
                    &by.source,
                    &by.fingerprint,
                ],
            )
            .await
            .map_err(Error::registry("recording a queued job"))?;
        if let Some(row) = inserted {
            return Ok(JobRecord::from_row(&row));
        }
        // Inserted concurrently by another delivery (invisible to the statement's snapshot):
        // read it now, on the same connection, so a job never holds two pool connections.
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1");
        let row = client
            .query_opt(&super::stmt(&client, &sql).await?, &[&job_id])
            .await
            .map_err(Error::registry("reading a job"))?;
        row.as_ref()
            .map(JobRecord::from_row)
            .ok_or_else(|| Error::Inconsistent(format!("job {job_id} vanished right after it was recorded")))
    }
}
