//! Jobs a worker submits itself (the expiry schedule's, the snapshot schedules'): recorded
//! through the registry like any client's, then published at once rather than left to the
//! outbox relay, which would publish them a few seconds later.

use dfe_registry::Registry;
use dfe_shared::broker::BrokerHandle;
use dfe_shared::job::Job;

/// Publishes `job` (recorded as `job_id`) onto `dfe.jobs` and marks it published. A failure
/// leaves it to the outbox relay: the job is recorded, so it is not lost.
pub async fn publish_now(broker: &BrokerHandle, registry: &Registry, app_id: &str, job: &Job, job_id: &str) {
    let body = serde_json::to_vec(&job.to_value()).unwrap_or_default();
    let published = match broker.publisher().await {
        Ok(p) => p.publish_job(job.kind(), job_id, &body, app_id, None).await,
        Err(e) => Err(e),
    };
    match published {
        Ok(()) => {
            if let Err(e) = registry.mark_published(job_id).await {
                tracing::debug!(error = %e, job_id, "could not mark a job published; the outbox may publish it again");
            }
        }
        Err(e) => {
            broker.reset().await;
            tracing::warn!(error = %e, job_id, "could not publish a job; the outbox relay will");
        }
    }
}
