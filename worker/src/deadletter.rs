//! Messages that cannot be parsed or validated: moved intact to `dfe.jobs.dead` with an
//! `x-dfe-error` header saying why, announced as `dfe.job.rejected`, then acknowledged.
//! Nothing is dropped silently and the worker carries on.

use dfe_shared::broker::set_header;
use dfe_shared::event::{names, Event};
use dfe_shared::job::JobKind;
use dfe_shared::topology::{queue_name, DEAD_QUEUE, ERROR_HEADER};
use lapin::BasicProperties;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::Result;
use crate::events::{Events, SERVICE};

/// How much of an unparsable body the rejection event echoes.
const ECHO_LIMIT: usize = 2048;

/// Dead-letters `body` (from the queue of `kind`) with `reason` and publishes the rejection.
pub async fn reject(events: &Events, kind: JobKind, body: &[u8], props: &BasicProperties, reason: &str) -> Result<()> {
    let mut headers = props.headers().clone().unwrap_or_default();
    set_header(&mut headers, ERROR_HEADER, reason);
    set_header(&mut headers, "x-dfe-queue", &queue_name(kind));
    let dead_props = props.clone().with_headers(headers);
    // Straight into the dead queue through the default exchange, waiting for the confirm
    // before the original is acknowledged: the message is never in neither place.
    events.publisher().publish("", DEAD_QUEUE, true, body, dead_props).await?;

    let message_id = props.message_id().as_ref().map(|m| m.to_string());
    let key = message_id.clone().unwrap_or_else(|| hex::encode(Sha256::digest(body)));
    let request = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(body);
        serde_json::Value::String(text.chars().take(ECHO_LIMIT).collect())
    });
    let event = Event {
        event_id: Event::id_for(&key, names::JOB_REJECTED),
        event: names::JOB_REJECTED.to_owned(),
        occurred_at: OffsetDateTime::now_utc(),
        job_id: message_id,
        service: SERVICE.to_owned(),
        instance_id: request.get("instance-id").and_then(|v| v.as_str()).map(str::to_owned),
        owner_id: request.get("owner-id").cloned(),
        request,
        result: serde_json::json!({ "queue": queue_name(kind), "dead-lettered-to": DEAD_QUEUE }),
        error: Some(dfe_shared::event::EventError { code: "invalid-message".into(), message: reason.to_owned() }),
    };
    events.publisher().publish_event(&event, SERVICE).await?;
    tracing::warn!(queue = %queue_name(kind), reason, "message dead-lettered");
    Ok(())
}
