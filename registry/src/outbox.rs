//! The outbox: a job is recorded before it is published, so a job answered 202 survives a
//! broker outage or a crash between the two. This relay publishes what stayed unpublished.
//! It runs in the api and in every worker; a job published twice is harmless because
//! workers run each job id once.

use std::time::Duration;

use dfe_shared::broker::BrokerHandle;
use tokio_util::sync::CancellationToken;

use crate::Registry;

/// How long a job may stay unpublished before the relay takes it (the submitting request
/// normally publishes within milliseconds).
const MIN_AGE_SECS: f64 = 3.0;
/// How often the relay looks.
const INTERVAL: Duration = Duration::from_secs(2);

/// Publishes unpublished jobs until `shutdown` is cancelled.
pub async fn relay(registry: Registry, broker: BrokerHandle, app_id: String, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = relay_once(&registry, &broker, &app_id).await {
            tracing::warn!(error = %e, "outbox relay pass failed; will retry");
        }
    }
}

/// One pass: publishes up to 500 unpublished jobs. Returns how many it published.
pub async fn relay_once(registry: &Registry, broker: &BrokerHandle, app_id: &str) -> crate::Result<usize> {
    let pending = registry.unpublished(MIN_AGE_SECS, 500).await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let publisher = broker.publisher().await?;
    let mut published = 0;
    for (job_id, kind, request, traceparent) in pending {
        let body = serde_json::to_vec(&request).unwrap_or_default();
        if let Err(e) = publisher.publish_job(kind, &job_id, &body, app_id, traceparent.as_deref()).await {
            broker.reset().await;
            return Err(e.into());
        }
        registry.mark_published(&job_id).await?;
        tracing::info!(job_id, %kind, "outbox published a job");
        published += 1;
    }
    Ok(published)
}
