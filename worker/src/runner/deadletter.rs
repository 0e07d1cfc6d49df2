//! Messages that cannot be run: moved intact to `dfe.jobs.dead` with an `x-dfe-error`
//! header saying why, then acknowledged. A message that never became a job (it cannot be
//! parsed, is too large, of the wrong type, or the registry cannot store it) is also
//! announced as `dfe.job.rejected`; a recorded job announces its own failure event instead.
//! Nothing is dropped silently and the worker carries on.

use dfe_shared::broker::set_header;
use dfe_shared::event::{names, Event, EventError};
use dfe_shared::job::{JobKind, MAX_JOB_BYTES};
use dfe_shared::topology::{queue_name, DEAD_QUEUE, ERROR_HEADER};
use lapin::BasicProperties;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::Result;
use crate::events::{Events, SERVICE};

/// How much of a body that is not a job the rejection event echoes.
const ECHO_LIMIT: usize = 2048;

/// Moves `body` (from the queue of `kind`) into the dead queue with `reason`, waiting for
/// the broker's confirm before the caller acknowledges the original: the message is never
/// in neither place.
pub async fn dead_letter(
    events: &Events,
    kind: JobKind,
    body: &[u8],
    props: &BasicProperties,
    reason: &str,
) -> Result<()> {
    let mut headers = props.headers().clone().unwrap_or_default();
    set_header(&mut headers, ERROR_HEADER, reason);
    set_header(&mut headers, "x-dfe-queue", &queue_name(kind));
    let dead_props = props.clone().with_headers(headers);
    events.publisher().publish("", DEAD_QUEUE, true, body, dead_props).await?;
    Ok(())
}

/// Dead-letters a message that never became a job and publishes `dfe.job.rejected`.
pub async fn reject(events: &Events, kind: JobKind, body: &[u8], props: &BasicProperties, reason: &str) -> Result<()> {
    dead_letter(events, kind, body, props, reason).await?;
    let message_id = props.message_id().as_ref().map(|m| m.to_string());
    let key = message_id.clone().unwrap_or_else(|| hex::encode(Sha256::digest(body)));
    // The request is echoed as JSON only when it is a job-sized JSON document; anything else
    // (too large, not JSON) as the start of its text, so a rejection stays small.
    let parsed =
        (body.len() <= MAX_JOB_BYTES).then(|| serde_json::from_slice::<serde_json::Value>(body).ok()).flatten();
    let request = parsed.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body[..body.len().min(ECHO_LIMIT)]);
        serde_json::Value::String(text.into_owned())
    });
    let text_field = |name: &str| request.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let event = Event {
        event_id: Event::id_for(&key, names::JOB_REJECTED),
        event: names::JOB_REJECTED.to_owned(),
        occurred_at: OffsetDateTime::now_utc(),
        job_id: message_id,
        service: SERVICE.to_owned(),
        instance_id: text_field("instance-id"),
        owner_id: request.get("owner-id").cloned(),
        result: serde_json::json!({ "queue": queue_name(kind), "dead-lettered-to": DEAD_QUEUE, "size": body.len() }),
        request,
        error: Some(EventError { code: "invalid-message".into(), message: reason.to_owned() }),
        // The trace the message came with (the delivery's span continues it).
        trace_id: dfe_shared::telemetry::trace_id(&tracing::Span::current()),
    };
    events.publish(&event).await?;
    tracing::warn!(queue = %queue_name(kind), reason, "message dead-lettered");
    Ok(())
}
