//! The API's submission of a job: recorded as queued in one transaction with its claim on
//! the instance ([`crate::transitions::admit`]), and a check that no other job of the
//! instance is under way.
//!
//! It takes three round trips for a provision without placement (the `noop` provisioner),
//! four with a cluster or database servers to place on and five with a quota besides,
//! down from six to eleven: `BEGIN`, the job's insert, the instance's read under its row
//! lock and the look for other jobs go out together; then the owner's quota lock with its
//! count; then the placement's locks with their reads; then the claim's write; then
//! `COMMIT`. The registry's round trips were the api's largest cost (BENCHMARKS.md).
//!
//! What each statement sees is what it saw one round trip at a time: the statements of a
//! pipeline run one after the other, and the look for other jobs runs after the instance's
//! row lock was granted, so a concurrent submission for the same instance has committed
//! (and is seen) or waits behind this one.

use dfe_shared::job::Job;
use dfe_shared::placement::Plan;
use dfe_shared::records::JobRecord;

use crate::instances::instance_from_row;
use crate::jobs::{job_from_row, Submitter, JOB_COLUMNS};
use crate::pipeline::{Begun, Step};
use crate::transitions::{claim_read_sql, claim_with, Refusal};
use crate::{Error, Registry, Result};

/// What a submission came to.
#[derive(Debug)]
pub enum SubmitOutcome {
    /// Recorded as a new job.
    Created(JobRecord),
    /// The same job was submitted before (same job id or idempotency key): that job.
    Existing(JobRecord),
    /// The id or the idempotency key names another request.
    Conflict(String),
    /// The instance is not in a state this job can start from.
    Refused(Refusal),
}

const INSERT_JOB: &str = "INSERT INTO jobs (job_id, kind, state, instance_id, owner_id, request, source, requested_by,
                   client_id, idempotency_key, fingerprint, traceparent)
 VALUES ($1, $2, 'queued', $3, coalesce($4, (SELECT owner_id FROM instances WHERE instance_id = $3)),
         $5, $6, $7, $7, $8, $9, $10)
 ON CONFLICT DO NOTHING
 RETURNING *";

const OTHER_JOBS: &str = "SELECT job_id FROM jobs WHERE instance_id = $1 AND job_id <> $2
   AND state IN ('queued', 'running', 'retrying') LIMIT 1";

impl Registry {
    /// Records `job` (which must carry its id) as queued, with its claim on the instance and
    /// the check that no other job of the instance is under way, in one transaction. `plan`
    /// is what the configuration decides for a job that creates its instance; the claim
    /// places it (host, database server) by the plan.
    pub async fn submit(&self, job: &Job, by: &Submitter<'_>, plan: Option<&Plan>) -> Result<SubmitOutcome> {
        let job_id = job.job_id().map(|j| j.as_str().to_owned()).unwrap_or_default();
        let request = job.to_value();
        let owner = job.owner_id().map(|o| serde_json::to_value(o).unwrap_or_default());
        let (kind, id) = (job.kind().as_str(), job.instance_id().as_str());
        let client = self.client().await?;
        let insert = crate::stmt(&client, INSERT_JOB).await?;
        let read = crate::stmt(&client, &claim_read_sql()).await?;
        let others = crate::stmt(&client, OTHER_JOBS).await?;
        let insert_params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
            &job_id,
            &kind,
            &id,
            &owner,
            &request,
            &by.source,
            &by.requested_by,
            &by.idempotency_key,
            &by.fingerprint,
            &by.traceparent,
        ];
        let (tx, rows) = Begun::start(
            client,
            &[
                Step::new(&insert, &insert_params, "recording a job"),
                Step::new(&read, &[&id], "reading an instance"),
                Step::new(&others, &[&id, &job_id], "looking for jobs in progress"),
            ],
        )
        .await?;
        let [inserted, instance, others] = <[Vec<tokio_postgres::Row>; 3]>::try_from(rows)
            .map_err(|_| Error::Inconsistent("a submission's pipeline lost an answer".into()))?;
        let Some(row) = inserted.first() else {
            // The connection goes back first (after its rollback): waiting for a second one
            // while holding this one could exhaust the pool under load.
            drop(tx);
            return self.resubmission(job, by, &request).await;
        };
        let record = job_from_row(row)?;
        let current = instance.first().map(instance_from_row).transpose()?;
        // Dropping the transaction on a refusal rolls back the job row too: a refused job
        // is not recorded. The claim's own refusal comes first, as it is the more telling.
        if let Err(refusal) = claim_with(tx.client(), job, &job_id, plan, by.owners, current).await? {
            return Ok(SubmitOutcome::Refused(refusal));
        }
        if let Some(other) = others.first() {
            let other: String = other.get(0);
            return Ok(SubmitOutcome::Refused(Refusal::busy(id, format!("job {other}"))));
        }
        tx.commit("committing a submission").await?;
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
            .query_opt(&sql, &[&job_id, &by.requested_by, &by.idempotency_key])
            .await
            .map_err(Error::query("reading a resubmitted job"))?;
        let Some(row) = row else {
            return Err(Error::Inconsistent("job insert conflicted but no conflicting job was found".into()));
        };
        let existing = job_from_row(&row)?;
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
}

/// The request without its job id, to compare a resubmission with the original.
fn request_sans_id(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("job-id");
    }
    v
}
