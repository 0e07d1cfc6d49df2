//! Events whose publication was refused (a subscriber's queue full or without a leader, a
//! confirm that never came). A job never waits for them: its outcome is recorded and its
//! message acknowledged, and the event is kept here and retried on its own with a backoff
//! (by [`Registry::due_events`] in the workers' event relay) until the broker takes it, or
//! until its attempts run out, when it is kept as `abandoned` for an operator to see.

use dfe_shared::event::Event;
use uuid::Uuid;

use crate::{Error, Registry, Result};

/// An event waiting for another attempt.
#[derive(Debug, Clone)]
pub struct DeferredEvent {
    /// The event.
    pub event: Event,
    /// Attempts made so far (the first, refused publication counts as one).
    pub attempts: i32,
}

/// Seconds a relay holds the events it took before another relay may take them: longer
/// than one publication with its confirm.
const LEASE_SECS: f64 = 60.0;

impl Registry {
    /// Keeps `event` for another attempt after `delay_secs` (a second deferral of the same
    /// event id keeps the first).
    pub async fn defer_event(&self, event: &Event, error: &str, delay_secs: f64) -> Result<()> {
        let client = self.client().await?;
        let body = serde_json::to_value(event).unwrap_or_default();
        let sql =
            "INSERT INTO event_outbox (event_id, routing_key, body, job_id, attempts, last_error, next_attempt_at)
                   VALUES ($1, $2, $3, $4, 1, $5, now() + make_interval(secs => $6))
                   ON CONFLICT (event_id) DO NOTHING";
        client
            .execute(
                &crate::stmt(&client, sql).await?,
                &[&event.event_id, &event.event, &body, &event.job_id, &error, &delay_secs],
            )
            .await
            .map_err(Error::query("keeping an event for another attempt"))?;
        Ok(())
    }

    /// Takes up to `limit` events that are due, leasing them to the caller so that two
    /// relays never publish the same one at once.
    pub async fn due_events(&self, limit: i64) -> Result<Vec<DeferredEvent>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "UPDATE event_outbox SET next_attempt_at = now() + make_interval(secs => $2)
                 WHERE event_id IN (SELECT event_id FROM event_outbox
                                     WHERE abandoned_at IS NULL AND next_attempt_at <= now()
                                     ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                 RETURNING body, attempts",
                &[&limit, &LEASE_SECS],
            )
            .await
            .map_err(Error::query("taking due events"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let body: serde_json::Value = row.get(0);
            match serde_json::from_value::<Event>(body) {
                Ok(event) => out.push(DeferredEvent { event, attempts: row.get(1) }),
                Err(e) => tracing::error!(error = %e, "a deferred event cannot be read; it stays in event_outbox"),
            }
        }
        Ok(out)
    }

    /// The broker took these events: they are done.
    pub async fn events_delivered(&self, ids: &[Uuid]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute("DELETE FROM event_outbox WHERE event_id = ANY($1)", &[&ids])
            .await
            .map_err(Error::query("removing delivered events"))?;
        Ok(())
    }

    /// Another attempt failed: try again after `delay_secs`, or, with `abandon`, stop.
    pub async fn event_refused(&self, id: Uuid, error: &str, delay_secs: f64, abandon: bool) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE event_outbox SET attempts = attempts + 1, last_error = $2,
                        next_attempt_at = now() + make_interval(secs => $3),
                        abandoned_at = CASE WHEN $4 THEN now() END
                 WHERE event_id = $1",
                &[&id, &error, &delay_secs, &abandon],
            )
            .await
            .map_err(Error::query("recording a refused event"))?;
        Ok(())
    }

    /// Events waiting for another attempt, and events given up on.
    pub async fn deferred_event_counts(&self) -> Result<(i64, i64)> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE abandoned_at IS NULL), count(*) FILTER (WHERE abandoned_at IS NOT NULL)
                 FROM event_outbox",
                &[],
            )
            .await
            .map_err(Error::query("counting deferred events"))?;
        Ok((row.get(0), row.get(1)))
    }
}
