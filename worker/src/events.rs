//! Publishing a job's events: sub-events as its steps complete, then exactly one final
//! event. Ids derive from the job id and the event name, so a redelivered job republishes
//! the same ids and subscribers can drop duplicates.
//!
//! Events do not wait on subscribers. An event the broker does not confirm (a subscriber's
//! queue full with `reject-publish`, a quorum queue without a leader, no confirm in time)
//! is kept in the registry's event outbox and retried on its own by [`relay`] with a
//! backoff, a bounded number of times; the job's outcome is recorded and its message
//! acknowledged regardless. So every queue that accepts gets each event at least once, and
//! healthy subscribers get at most `worker.event-attempts` copies of an event that another
//! subscriber's queue keeps refusing.

use std::sync::Arc;
use std::time::Duration;

use dfe_registry::Registry;
use dfe_shared::broker::{BrokerHandle, Pending, Publisher};
use dfe_shared::event::{names, Event, EventError};
use dfe_shared::job::JobKind;
use dfe_shared::records::{InstanceRecord, JobRecord, JobState};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::metrics::Metrics;
use crate::timings::StepTimings;

/// The service name in events.
pub const SERVICE: &str = "dfe-worker";

/// How long a job waits for an event's confirm before leaving the event to the outbox.
const CONFIRM_WAIT: Duration = Duration::from_secs(5);

/// What every event of one job repeats, and what a run gathers on the way.
#[derive(Debug, Clone)]
pub struct JobMeta {
    /// The job id.
    pub job_id: String,
    /// The job kind.
    pub kind: JobKind,
    /// The instance.
    pub instance_id: String,
    /// The owner, when known.
    pub owner_id: Option<serde_json::Value>,
    /// The original job.
    pub request: serde_json::Value,
    /// Which run of the job this is (1 for the first).
    pub attempt: u32,
    /// Step durations of this run, filled in by the job body.
    pub timings: Arc<StepTimings>,
    /// Sub-events published whose confirms are still to be awaited (before the final event).
    pub pending: Arc<tokio::sync::Mutex<Vec<(Event, Pending)>>>,
    /// The trace id of the job's span (`trace-id` of its events).
    pub trace_id: Option<String>,
    /// The W3C trace context of the job's span, handed on to a retry of the job.
    pub traceparent: Option<String>,
    /// The job's instance as the run read it under its lock when it started (None: there
    /// was none, or it was not read); the body's claim starts from it.
    pub instance: Option<InstanceRecord>,
}

impl JobMeta {
    /// The metadata of a run of a job.
    pub fn new(job_id: String, kind: JobKind, instance_id: String, request: serde_json::Value) -> JobMeta {
        JobMeta {
            job_id,
            kind,
            instance_id,
            owner_id: request.get("owner-id").cloned(),
            request,
            attempt: 1,
            timings: Arc::default(),
            pending: Arc::default(),
            trace_id: None,
            traceparent: None,
            instance: None,
        }
    }
}

/// Publishes events with confirms, leaving refused ones to the registry's event outbox.
#[derive(Clone)]
pub struct Events {
    publisher: Publisher,
    registry: Registry,
    metrics: Arc<Metrics>,
}

impl Events {
    /// Events through `publisher`, deferred into `registry` when refused.
    pub fn new(publisher: Publisher, registry: Registry, metrics: Arc<Metrics>) -> Events {
        Events { publisher, registry, metrics }
    }

    /// The publisher (for dead-lettering and retries).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Publishes `event` and waits for its confirm; a refusal keeps it in the event outbox
    /// for another attempt. An error only when even that fails (the registry is away too).
    pub async fn publish(&self, event: &Event) -> Result<()> {
        let outcome = match self.publisher.start_event(event, SERVICE).await {
            Ok(pending) => pending.confirmed_within(CONFIRM_WAIT).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(e) => self.defer(event, &e).await,
        }
    }

    async fn defer(&self, event: &Event, why: &dfe_shared::Error) -> Result<()> {
        tracing::warn!(event = %event.event, job_id = ?event.job_id, error = %why, "event not confirmed; it is kept and retried on its own");
        self.registry.defer_event(event, &why.to_string(), backoff(1).as_secs_f64()).await?;
        self.metrics.event_deferred();
        Ok(())
    }

    /// Waits for the confirms of the sub-events published so far; refused ones are deferred.
    pub async fn settle(&self, meta: &JobMeta) -> Result<()> {
        let pending = std::mem::take(&mut *meta.pending.lock().await);
        let waits =
            pending.into_iter().map(|(event, p)| async move { (event, p.confirmed_within(CONFIRM_WAIT).await) });
        for (event, outcome) in futures::future::join_all(waits).await {
            if let Err(e) = outcome {
                self.defer(&event, &e).await?;
            }
        }
        Ok(())
    }

    /// Publishes event `name` of the job after the job's earlier sub-events are settled.
    pub async fn emit(
        &self,
        meta: &JobMeta,
        name: &str,
        result: serde_json::Value,
        error: Option<EventError>,
    ) -> Result<()> {
        self.settle(meta).await?;
        let event = Self::event(meta, name, result, error);
        self.publish(&event).await?;
        tracing::debug!(job_id = %meta.job_id, event = name, "event published");
        Ok(())
    }

    /// Publishes a sub-event of a step without waiting for its confirm: the job goes on
    /// with its next step, and the confirm is awaited with the final event's. Order is
    /// kept: one channel delivers in publication order.
    pub async fn emit_step(&self, meta: &JobMeta, name: &str, result: serde_json::Value) -> Result<()> {
        let event = Self::event(meta, name, result, None);
        match self.publisher.start_event(&event, SERVICE).await {
            Ok(pending) => meta.pending.lock().await.push((event, pending)),
            Err(e) => self.defer(&event, &e).await?,
        }
        Ok(())
    }

    /// The event `name` of a job.
    pub fn event(meta: &JobMeta, name: &str, result: serde_json::Value, error: Option<EventError>) -> Event {
        Event {
            event_id: Event::id_for(&meta.job_id, name),
            event: name.to_owned(),
            occurred_at: OffsetDateTime::now_utc(),
            job_id: Some(meta.job_id.clone()),
            service: SERVICE.to_owned(),
            instance_id: Some(meta.instance_id.clone()),
            owner_id: meta.owner_id.clone(),
            request: meta.request.clone(),
            result,
            error,
            trace_id: meta.trace_id.clone(),
        }
    }

    /// Publishes the final event of a job that has ended, from its registry record (for a
    /// duplicate delivery of a finished job: same event id as the first time).
    pub async fn emit_final(&self, meta: &JobMeta, record: &JobRecord) -> Result<()> {
        let (name, error) = if record.state == JobState::Succeeded {
            (names::succeeded(record.kind), None)
        } else {
            (names::failed(record.kind), record.error.clone())
        };
        let result = record.result.clone().unwrap_or_else(|| serde_json::json!({}));
        self.emit(meta, &name, result, error).await
    }
}

/// The delay before attempt `attempt + 1` of a deferred event: 2 s doubling, at most a minute.
fn backoff(attempt: i32) -> Duration {
    let exp = u32::try_from(attempt.clamp(1, 6) - 1).unwrap_or(0);
    Duration::from_secs(2u64 << exp).min(Duration::from_secs(60))
}

/// Publishes deferred events that are due, every second, until `shutdown`. Each event is
/// tried until it is confirmed or `max_attempts` attempts are spent; then it is kept as
/// abandoned (`event_outbox.abandoned_at`), counted in the metrics and logged.
pub async fn relay(
    registry: Registry,
    broker: BrokerHandle,
    metrics: Arc<Metrics>,
    max_attempts: u32,
    shutdown: CancellationToken,
) {
    let max_attempts = i32::try_from(max_attempts.max(1)).unwrap_or(i32::MAX);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = relay_once(&registry, &broker, &metrics, max_attempts).await {
            tracing::debug!(error = %e, "event relay pass failed; will retry");
        }
    }
}

async fn relay_once(registry: &Registry, broker: &BrokerHandle, metrics: &Metrics, max_attempts: i32) -> Result<()> {
    let due = registry.due_events(100).await?;
    if due.is_empty() {
        return Ok(());
    }
    let publisher = broker.publisher().await?;
    let mut waits = Vec::with_capacity(due.len());
    for d in due {
        let started = publisher.start_event(&d.event, SERVICE).await;
        waits.push(async move {
            let outcome = match started {
                Ok(p) => p.confirmed_within(CONFIRM_WAIT).await,
                Err(e) => Err(e),
            };
            (d, outcome)
        });
    }
    let mut delivered = Vec::new();
    for (d, outcome) in futures::future::join_all(waits).await {
        match outcome {
            Ok(()) => delivered.push(d.event.event_id),
            Err(e) => {
                let abandon = d.attempts + 1 >= max_attempts;
                if abandon {
                    metrics.event_abandoned();
                    tracing::error!(
                        event = %d.event.event, event_id = %d.event.event_id, attempts = d.attempts + 1, error = %e,
                        "event given up after its last attempt; it stays in the registry's event_outbox"
                    );
                }
                registry
                    .event_refused(d.event.event_id, &e.to_string(), backoff(d.attempts + 1).as_secs_f64(), abandon)
                    .await?;
            }
        }
    }
    metrics.events_redelivered(delivered.len());
    registry.events_delivered(&delivered).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_events_back_off_up_to_a_minute() {
        let secs: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
