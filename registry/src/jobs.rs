//! Job rows: recording a message that arrived on a queue, starting a run, scheduling a
//! retry, publication marks, and reading. What a job's end does to its instance lives in
//! [`crate::transitions`].

use dfe_shared::event::EventError;
use dfe_shared::job::JobKind;
use dfe_shared::records::{JobRecord, JobState};
use tokio_postgres::Row;

use crate::{parse_column, After, Error, Page, Paged, Registry, Result};

pub(crate) const JOB_COLUMNS: &str = "job_id, kind, state, attempts, instance_id, request, result, error, \
     source, requested_by, created_at, updated_at, published_at, started_at, finished_at, next_retry_at, deadline_at, \
     traceparent";

/// Reads a job row; an unknown kind or state is an error, not a guess.
pub(crate) fn job_from_row(row: &Row) -> Result<JobRecord> {
    let job_id: String = row.get("job_id");
    let error: Option<serde_json::Value> = row.get("error");
    let error = match error {
        None => None,
        Some(v) => Some(serde_json::from_value::<EventError>(v).map_err(|e| Error::Corrupt {
            table: "jobs",
            key: job_id.clone(),
            message: format!("error: {e}"),
        })?),
    };
    Ok(JobRecord {
        kind: parse_column::<JobKind>(row, "jobs", &job_id, "kind")?,
        state: parse_column::<JobState>(row, "jobs", &job_id, "state")?,
        attempts: row.get("attempts"),
        instance_id: row.get("instance_id"),
        request: row.get("request"),
        result: row.get("result"),
        error,
        source: row.get("source"),
        requested_by: row.get("requested_by"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        published_at: row.get("published_at"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        next_retry_at: row.get("next_retry_at"),
        deadline_at: row.get("deadline_at"),
        trace_id: row
            .get::<_, Option<String>>("traceparent")
            .as_deref()
            .and_then(dfe_shared::ids::trace_id_of_traceparent),
        job_id,
    })
}

pub(crate) fn jobs_from_rows(rows: &[Row]) -> Result<Vec<JobRecord>> {
    rows.iter().map(job_from_row).collect()
}

/// Who submits a job and how.
#[derive(Debug, Clone, Default)]
pub struct Submitter<'a> {
    /// `api` or `queue`.
    pub source: &'a str,
    /// Who asked: the API client id, `queue`, `lifecycle`, `schedule:<name>`.
    pub requested_by: &'a str,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<&'a str>,
    /// SHA-256 of a queue message body that carried no id (to find it on redelivery).
    pub fingerprint: Option<&'a str>,
    /// The W3C trace context the job was submitted under, kept for its later publications.
    pub traceparent: Option<&'a str>,
    /// The owners the submitter may act for (`None`: every owner). A job on an existing
    /// instance of another owner is refused as if the instance did not exist.
    pub owners: Option<&'a [String]>,
}

/// Which jobs a list shows.
#[derive(Debug, Clone, Default)]
pub struct JobFilter<'a> {
    /// Only this instance's.
    pub instance_id: Option<&'a str>,
    /// Only those naming this owner (as text).
    pub owner_id: Option<&'a str>,
    /// Only in this state.
    pub state: Option<JobState>,
    /// Only of this kind.
    pub kind: Option<JobKind>,
    /// Only those of these owners (what a client limited to owners may see).
    pub owners: Option<&'a [String]>,
}

/// What cancelling a job came to.
#[derive(Debug)]
pub enum Cancelled {
    /// It was queued or retrying and is now `failed` with `error.code` `cancelled`, its
    /// claim handed back; its failure event is to be published (it is in the event outbox
    /// already, due a little later, in case the caller cannot).
    Done(Box<(JobRecord, dfe_shared::event::Event)>),
    /// It runs or has ended (in this state): nothing changed.
    TooLate(JobState),
    /// No such job.
    NotFound,
}

impl Registry {
    /// The job with `job_id`.
    pub async fn job(&self, job_id: &str) -> Result<Option<JobRecord>> {
        let client = self.client().await?;
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1");
        let row = client
            .query_opt(&crate::stmt(&client, &sql).await?, &[&job_id])
            .await
            .map_err(Error::query("reading a job"))?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// A page of the jobs that pass `filter`, newest first.
    pub async fn jobs(&self, filter: &JobFilter<'_>, page: &Page) -> Result<Paged<JobRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE ($1::text IS NULL OR instance_id = $1)
               AND ($2::text IS NULL OR owner_id #>> '{{}}' = $2)
               AND ($3::text IS NULL OR state = $3)
               AND ($4::text IS NULL OR kind = $4)
               AND ($5::text[] IS NULL OR owner_id #>> '{{}}' = ANY($5))
               AND ($6::timestamptz IS NULL OR (created_at, job_id) < ($6, $7::text))
             ORDER BY created_at DESC, job_id DESC LIMIT $8"
        );
        let state = filter.state.map(JobState::as_str);
        let kind = filter.kind.map(JobKind::as_str);
        let (at, id) = page.after.as_ref().map(|a| (a.created_at, a.id.as_str())).unzip();
        let rows = client
            .query(
                &sql,
                &[&filter.instance_id, &filter.owner_id, &state, &kind, &filter.owners, &at, &id, &(page.limit + 1)],
            )
            .await
            .map_err(Error::query("listing jobs"))?;
        let jobs = jobs_from_rows(&rows)?;
        Ok(Paged::of(jobs, page, |j| After { created_at: j.created_at, id: j.job_id.clone() }))
    }

    /// The owner recorded with job `job_id` (as text): what decides which clients see it.
    pub async fn job_owner(&self, job_id: &str) -> Result<Option<String>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT owner_id #>> '{}' FROM jobs WHERE job_id = $1", &[&job_id])
            .await
            .map_err(Error::query("reading a job's owner"))?;
        Ok(row.and_then(|r| r.get(0)))
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
            .map_err(Error::query("finding a job by fingerprint"))?;
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
            .map_err(Error::query("listing stuck jobs"))?;
        jobs_from_rows(&rows)
    }

    /// Marks a job published onto `dfe.jobs`.
    pub async fn mark_published(&self, job_id: &str) -> Result<()> {
        self.mark_published_many(&[job_id.to_owned()]).await
    }

    /// Marks jobs published onto `dfe.jobs`, in one statement. A job whose row another
    /// transaction holds is left alone rather than waited for: that is a worker starting it
    /// (which marks it published itself) or a cancellation. Waiting, the statement could
    /// deadlock with a worker's lock session, which starts several jobs in one statement,
    /// locking their rows in another order.
    pub async fn mark_published_many(&self, job_ids: &[String]) -> Result<()> {
        let client = self.client().await?;
        let sql = "UPDATE jobs SET published_at = now() WHERE job_id IN (
                       SELECT job_id FROM jobs WHERE job_id = ANY($1) AND published_at IS NULL
                       FOR UPDATE SKIP LOCKED)";
        client
            .execute(&crate::stmt(&client, sql).await?, &[&job_ids])
            .await
            .map_err(Error::query("marking jobs published"))?;
        Ok(())
    }

    /// Records that a job failed transiently and runs again after `delay_secs`: `retrying`,
    /// with the error of the attempt and the time of the next one.
    pub async fn schedule_retry(&self, job_id: &str, delay_secs: f64, error: &EventError) -> Result<()> {
        let client = self.client().await?;
        let error = serde_json::to_value(error).unwrap_or_default();
        client
            .execute(
                "UPDATE jobs SET state = 'retrying', error = $3, updated_at = now(), deadline_at = NULL,
                        next_retry_at = now() + make_interval(secs => $2)
                 WHERE job_id = $1 AND state NOT IN ('succeeded', 'failed')",
                &[&job_id, &delay_secs, &error],
            )
            .await
            .map_err(Error::query("scheduling a retry"))?;
        Ok(())
    }

    /// Jobs recorded but not published for at least `min_age_secs`, oldest first, with the
    /// trace each was submitted under: what the outbox must (re)publish. A row whose kind this version cannot read is skipped
    /// (and logged) rather than published under a guessed kind.
    pub async fn unpublished(
        &self,
        min_age_secs: f64,
        limit: i64,
    ) -> Result<Vec<(String, JobKind, serde_json::Value, Option<String>)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT job_id, kind, request, traceparent FROM jobs
                 WHERE published_at IS NULL AND state = 'queued'
                   AND created_at < now() - make_interval(secs => $1)
                 ORDER BY created_at LIMIT $2",
                &[&min_age_secs, &limit],
            )
            .await
            .map_err(Error::query("listing unpublished jobs"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let job_id: String = r.get(0);
            match parse_column::<JobKind>(r, "jobs", &job_id, "kind") {
                Ok(kind) => out.push((job_id, kind, r.get(2), r.get(3))),
                Err(e) => tracing::error!(error = %e, "the outbox skips a job it cannot read"),
            }
        }
        Ok(out)
    }
}
