//! Publishing a job's events: sub-events as its steps complete, then exactly one final
//! event. Ids are derived from the job id and the event name, so a redelivered job
//! republishes the same ids and subscribers can drop duplicates.

use dfe_shared::broker::Publisher;
use dfe_shared::event::{names, Event, EventError};
use dfe_shared::job::JobKind;
use dfe_shared::registry::{JobRecord, JobState};
use time::OffsetDateTime;

use crate::error::Result;

/// The service name in events.
pub const SERVICE: &str = "dfe-worker";

/// What every event of one job repeats.
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
    /// Step durations of this run, filled in by the job body.
    pub timings: std::sync::Arc<crate::metrics::StepTimings>,
    /// Sub-events published whose confirms are still to be awaited (before the final event).
    pub pending: std::sync::Arc<tokio::sync::Mutex<Vec<dfe_shared::broker::Pending>>>,
}

impl JobMeta {
    /// Waits for the confirms of the sub-events published so far.
    pub async fn settle(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock().await);
        for p in futures::future::join_all(pending.into_iter().map(|p| p.confirmed())).await {
            p?;
        }
        Ok(())
    }
}

/// Publishes events with confirms.
#[derive(Clone)]
pub struct Events {
    publisher: Publisher,
}

impl Events {
    /// Events through `publisher`.
    pub fn new(publisher: Publisher) -> Events {
        Events { publisher }
    }

    /// The publisher (for dead-lettering).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Publishes event `name` of the job and waits for the broker's confirm (and for those
    /// of the job's sub-events still pending).
    pub async fn emit(
        &self,
        meta: &JobMeta,
        name: &str,
        result: serde_json::Value,
        error: Option<EventError>,
    ) -> Result<()> {
        let event = Self::event(meta, name, result, error);
        let pending = self.publisher.start_event(&event, SERVICE).await?;
        meta.settle().await?;
        pending.confirmed().await?;
        tracing::debug!(job_id = %meta.job_id, event = name, "event published");
        Ok(())
    }

    /// Publishes a sub-event of a step without waiting for its confirm: the job goes on
    /// with its next step, and the confirm is awaited with the final event's (before the
    /// message is acknowledged). Order is kept: one channel delivers in publication order.
    pub async fn emit_step(&self, meta: &JobMeta, name: &str, result: serde_json::Value) -> Result<()> {
        let event = Self::event(meta, name, result, None);
        let pending = self.publisher.start_event(&event, SERVICE).await?;
        meta.pending.lock().await.push(pending);
        Ok(())
    }

    fn event(meta: &JobMeta, name: &str, result: serde_json::Value, error: Option<EventError>) -> Event {
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
        }
    }

    /// Publishes the final event of a job that has ended, from its registry record (for a
    /// duplicate delivery of a finished job: same event id as the first time).
    pub async fn emit_final(&self, meta: &JobMeta, record: &JobRecord) -> Result<()> {
        let (name, error) = if record.state == JobState::Succeeded {
            (names::succeeded(record.kind), None)
        } else {
            let error = record.error.clone().and_then(|e| serde_json::from_value::<EventError>(e).ok());
            (names::failed(record.kind), error)
        };
        let result = record.result.clone().unwrap_or_else(|| serde_json::json!({}));
        self.emit(meta, &name, result, error).await
    }
}
