//! The expiry schedule (DFE's `dfe:daily`), run by one worker at a time: the worker that
//! holds the registry lease `lifecycle` runs it every `lifecycle.interval-secs`, renewing
//! the lease every few seconds; when it dies the lease runs out and another worker takes
//! over within [`LEASE_TTL`]. What is due is decided by [`dfe_shared::lifecycle::steps`],
//! the same function the API's preview (`dfe expire --dry-run`) shows.
//!
//! Nothing is done twice across a takeover: a warning's event id is derived from the
//! instance, its expiry and the warning day (a repeat is a duplicate subscribers drop) and
//! it is recorded once sent; the job at expiry has a job id derived from the instance and
//! its expiry, so submitting it again finds the first one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dfe_registry::{Registry, SubmitOutcome, Submitter};
use dfe_shared::broker::BrokerHandle;
use dfe_shared::config::LifecycleConfig;
use dfe_shared::event::{names, Event};
use dfe_shared::ids::{InstanceId, Tag};
use dfe_shared::job::{DeprovisionJob, Job, SuspendJob};
use dfe_shared::lifecycle::{applies, passed_over, steps, ExpiryAction, Step};
use dfe_shared::records::InstanceRecord;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{Events, SERVICE};
use crate::metrics::Metrics;

/// The lease's name in the registry.
pub const LEASE: &str = "lifecycle";
/// How long a lease lasts unless renewed: a dead holder's successor starts within this.
pub const LEASE_TTL: Duration = Duration::from_secs(6);
/// How often the holder renews it (well inside [`LEASE_TTL`]).
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// Who submits the jobs at expiry (`requested-by` of the job).
pub const REQUESTED_BY: &str = "lifecycle";

/// Namespace of the ids of warnings and expiry jobs.
const LIFECYCLE_NAMESPACE: Uuid = Uuid::from_u128(0x6466_652d_6c69_6665_6379_636c_6500_0001);

/// The job id of the job submitted when `instance` reaches `expires_at`: the same for every
/// worker, so the schedule submits it once however often it runs.
pub fn expiry_job_id(instance: &str, expires_at: OffsetDateTime) -> String {
    let key = format!("{instance}\u{0}{}", expires_at.unix_timestamp_nanos());
    format!("expire-{}", Uuid::new_v5(&LIFECYCLE_NAMESPACE, key.as_bytes()))
}

fn warning_event_id(instance: &str, expires_at: OffsetDateTime, days: f64) -> Uuid {
    let key = format!("warning\u{0}{instance}\u{0}{}\u{0}{days}", expires_at.unix_timestamp_nanos());
    Uuid::new_v5(&LIFECYCLE_NAMESPACE, key.as_bytes())
}

/// One worker's part in the schedule.
pub struct Lifecycle {
    /// This worker's id (the lease holder's name).
    pub worker_id: String,
    /// Where the schedule, the lease and the jobs are.
    pub registry: Registry,
    /// Where the warnings go.
    pub broker: BrokerHandle,
    /// The worker's metrics (deferred events).
    pub metrics: Arc<Metrics>,
    /// `[lifecycle]`.
    pub config: LifecycleConfig,
}

impl Lifecycle {
    /// Takes part until `shutdown`: runs the schedule while holding the lease, and gives the
    /// lease up on the way out so that another worker goes on at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = Duration::from_secs(self.config.interval_secs.max(1));
        let mut last_run: Option<Instant> = None;
        loop {
            match self.registry.take_lease(LEASE, &self.worker_id, LEASE_TTL).await {
                Ok(Some(_)) => {
                    if last_run.is_none_or(|t| t.elapsed() >= interval) {
                        if last_run.is_none() {
                            tracing::info!(worker = %self.worker_id, "this worker runs the expiry schedule");
                        }
                        last_run = Some(Instant::now());
                        if let Err(e) = self.round(OffsetDateTime::now_utc()).await {
                            tracing::warn!(error = %e, "a run of the expiry schedule failed; the next one tries again");
                        }
                    }
                }
                Ok(None) => last_run = None,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot reach the registry for the lifecycle lease");
                    last_run = None;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RENEW_EVERY.min(interval)) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if last_run.is_some() {
            let _ = self.registry.release_lease(LEASE, &self.worker_id).await;
        }
    }

    /// One run of the schedule at `now`: every due warning sent, every due job submitted.
    pub async fn round(&self, now: OffsetDateTime) -> crate::error::Result<()> {
        let action = ExpiryAction::from_config(&self.config.on_expiry);
        for (instance, sent) in self.registry.expiry_schedule().await? {
            let Some(expires_at) = instance.expires_at else { continue };
            if !applies(instance.state, action) {
                continue;
            }
            for step in steps(expires_at, now, &self.config.warn_days, &sent, action) {
                match step {
                    Step::Warning { days, due: true, .. } => {
                        self.warn(&instance, expires_at, days, now).await?;
                        for passed in passed_over(expires_at, now, &self.config.warn_days, &sent) {
                            self.registry.record_warning(&instance.instance_id, expires_at, passed).await?;
                        }
                    }
                    Step::Expiry { action, due: true, .. } => self.expire(&instance, expires_at, action).await?,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Publishes `dfe.instance.expiring` (before recording it: a worker that dies between
    /// the two sends it again under the same event id, rather than never).
    async fn warn(
        &self,
        instance: &InstanceRecord,
        expires_at: OffsetDateTime,
        days: f64,
        now: OffsetDateTime,
    ) -> crate::error::Result<()> {
        let id = &instance.instance_id;
        let expires = expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let event = Event {
            event_id: warning_event_id(id, expires_at, days),
            event: names::INSTANCE_EXPIRING.to_owned(),
            occurred_at: now,
            job_id: None,
            service: SERVICE.to_owned(),
            instance_id: Some(id.clone()),
            owner_id: serde_json::to_value(&instance.owner_id).ok(),
            request: serde_json::json!({}),
            result: serde_json::json!({
                "expires-at": expires,
                "days": days,
                "seconds-left": (expires_at - now).whole_seconds().max(0),
                "on-expiry": ExpiryAction::from_config(&self.config.on_expiry),
            }),
            error: None,
            // The schedule runs outside any request: there is no trace to continue.
            trace_id: None,
        };
        let publisher = match self.broker.publisher().await {
            Ok(p) => p,
            Err(e) => {
                // Not recorded: the next run sends it.
                tracing::warn!(error = %e, instance = %id, "cannot send an expiry warning: the broker is away");
                return Ok(());
            }
        };
        Events::new(publisher, self.registry.clone(), self.metrics.clone()).publish(&event).await?;
        self.registry.record_warning(id, expires_at, days).await?;
        tracing::info!(instance = %id, days, expires_at = %expires, "expiry warning sent");
        Ok(())
    }

    /// Submits the job at expiry; the outbox relay publishes it. A refusal (a job of the
    /// instance under way) is tried again at the next run.
    async fn expire(
        &self,
        instance: &InstanceRecord,
        expires_at: OffsetDateTime,
        action: ExpiryAction,
    ) -> crate::error::Result<()> {
        let id = &instance.instance_id;
        let (Ok(instance_id), Ok(job_id)) = (InstanceId::parse(id), Tag::parse(&expiry_job_id(id, expires_at))) else {
            return Ok(());
        };
        let job = match action {
            ExpiryAction::Deprovision => Job::Deprovision(DeprovisionJob {
                job_id: Some(job_id.clone()),
                instance_id,
                cluster_id: None,
                keep_database: None,
            }),
            ExpiryAction::Suspend => {
                Job::Suspend(SuspendJob { job_id: Some(job_id.clone()), instance_id, reason: Some("expired".into()) })
            }
        };
        let by = Submitter { source: REQUESTED_BY, requested_by: REQUESTED_BY, ..Default::default() };
        match self.registry.submit(&job, &by, None).await? {
            SubmitOutcome::Created(_) => {
                tracing::info!(instance = %id, job_id = %job_id, ?action, "instance expired: job submitted");
                crate::submitted::publish_now(&self.broker, &self.registry, &self.worker_id, &job, job_id.as_str())
                    .await;
            }
            SubmitOutcome::Existing(_) => {}
            SubmitOutcome::Conflict(why) => tracing::warn!(instance = %id, %why, "cannot submit the expiry job"),
            SubmitOutcome::Refused(r) => {
                tracing::debug!(instance = %id, refusal = ?r, "expiry job refused for now; tried again next run")
            }
        }
        Ok(())
    }
}
