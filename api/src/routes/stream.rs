//! `GET /api/v1/events/stream`: the `dfe.events` a token may see, as server-sent events,
//! for the console and for scripts.
//!
//! Each stream has a queue of its own: exclusive, auto-delete, server-named, bound to
//! `dfe.events` with the stream's pattern, on a channel of the one connection the api keeps
//! for its streams ([`Streams`]). The broker does the topic matching; the api only drops what
//! the token may not see (a token limited to owners sees the events of those owners alone)
//! and writes the rest as SSE. When the client goes, the channel is closed and the queue goes
//! with it.
//!
//! A stream never holds up the workers: events are published to every bound queue and the
//! publishers do not wait for readers. A reader that falls behind has its queue capped at
//! [`QUEUE_MAX_LENGTH`] (the oldest are dropped first), and the api takes at most
//! [`PREFETCH`] unacknowledged deliveries at a time, so its memory does not grow with a slow
//! client either. Streams end when the api shuts down: a graceful shutdown waits for open
//! requests, and a stream would otherwise never end.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use dfe_shared::ids::FieldError;
use dfe_shared::topology::EVENTS_EXCHANGE;
use futures::{Stream, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::auth::{Client, Read, Scoped};
use crate::problem::{Problem, ProblemBody, CONTENT_TYPE as PROBLEM};
use crate::routes::openapi::text;
use crate::AppState;

/// The pattern of a stream that names none: every event.
pub const DEFAULT_PATTERN: &str = "dfe.#";
/// The query parameters the stream knows.
pub const STREAM_PARAMETERS: &[&str] = &["pattern"];
/// Deliveries the api holds for a stream before the client has taken them.
const PREFETCH: u16 = 64;
/// Events a stream's queue keeps for a reader that falls behind; beyond, the oldest go.
const QUEUE_MAX_LENGTH: i64 = 10_000;
/// How often an idle stream sends a comment, so that proxies and clients see it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The api's connection for event streams, opened on the first stream and again after it
/// is lost; each stream takes a channel of it.
/// One message of the stream, as its fields (`event: …`, `id: …`, `data: …`).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Documents the stream's messages, which axum's `Event` writes.
pub struct SseMessage {
    /// `ready`, `expired`, or the event's name (`dfe.provisioned`, …).
    event: Option<String>,
    /// The event's `event-id` (absent on `ready` and `expired`).
    id: Option<String>,
    /// One line of JSON: the event's body, or `{"pattern": …}` on `ready`.
    data: String,
}

#[derive(Clone)]
pub struct Streams {
    nodes: dfe_shared::broker::Nodes,
    conn: Arc<Mutex<Option<Connection>>>,
    shutdown: CancellationToken,
}

impl Streams {
    /// Streams from the broker at `urls` (the first node that answers, connected on first
    /// use and again after a lost connection), ended at `shutdown`.
    pub fn new(urls: &dfe_shared::config::AmqpUrls, shutdown: CancellationToken) -> Streams {
        Streams { nodes: dfe_shared::broker::Nodes::new(urls), conn: Arc::default(), shutdown }
    }

    async fn channel(&self) -> Result<Channel, dfe_shared::Error> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref().filter(|c| c.status().connected()) {
            return c
                .create_channel()
                .await
                .map_err(dfe_shared::Error::broker("opening a channel for an event stream"));
        }
        let c = self.nodes.connect("dfe-api event streams").await?;
        // The exchange exists before the first bind, even on a broker no worker has used yet.
        dfe_shared::topology::declare(&c, self.nodes.len()).await?;
        let channel =
            c.create_channel().await.map_err(dfe_shared::Error::broker("opening a channel for an event stream"))?;
        *conn = Some(c);
        Ok(channel)
    }

    /// A consumer of the events matching `pattern`, through a queue of its own.
    async fn subscribe(&self, pattern: &str) -> Result<Subscription, dfe_shared::Error> {
        let channel = self.channel().await?;
        let broker = dfe_shared::Error::broker;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(broker("limiting a stream's prefetch"))?;
        let mut args = FieldTable::default();
        args.insert(ShortString::from("x-max-length"), AMQPValue::LongLongInt(QUEUE_MAX_LENGTH));
        let private = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue =
            channel.queue_declare("".into(), private, args).await.map_err(broker("declaring a stream's queue"))?;
        let queue = queue.name().clone();
        channel
            .queue_bind(
                queue.clone(),
                EVENTS_EXCHANGE.into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker("binding a stream's queue to dfe.events"))?;
        let consume = BasicConsumeOptions { exclusive: true, ..Default::default() };
        let consumer = channel
            .basic_consume(queue, "dfe-api-stream".into(), consume, FieldTable::default())
            .await
            .map_err(broker("consuming a stream's queue"))?;
        Ok(Subscription { channel, consumer })
    }
}

/// A stream's channel and consumer; the channel is closed when the stream is dropped (the
/// client went away), which deletes its queue.
struct Subscription {
    channel: Channel,
    consumer: Consumer,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        // Drop cannot wait; the close is a courtesy (the queue also goes with the connection).
        tokio::spawn(async move {
            let _ = channel.close(200, "event stream ended".into()).await;
        });
    }
}

/// Whether `pattern` is an AMQP topic pattern of words (`[A-Za-z0-9_-]+`, `*` or `#`)
/// separated by dots, as routing keys of `dfe.events` are made.
pub fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= 255
        && pattern.split('.').all(|w| {
            w == "*"
                || w == "#"
                || (!w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        })
}

/// The stream's pattern from the query: `pattern` once, valid, or the default.
fn pattern(query: Option<&str>) -> Result<String, Problem> {
    let mut found = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key != "pattern" {
            let name = if key.chars().any(char::is_control) { "query".to_owned() } else { key.into_owned() };
            return Err(Problem::invalid_field(FieldError::new(
                name,
                "is not a parameter of the stream (known: pattern)",
            )));
        }
        if found.replace(value.into_owned()).is_some() {
            return Err(Problem::malformed_field(FieldError::new("pattern", "is given more than once")));
        }
    }
    let pattern = found.unwrap_or_else(|| DEFAULT_PATTERN.to_owned());
    if !valid_pattern(&pattern) {
        return Err(Problem::invalid_field(FieldError::new(
            "pattern",
            "must be a topic pattern: words of [A-Za-z0-9_-], `*` (one word) or `#` (any words), separated by dots",
        )));
    }
    Ok(pattern)
}

/// The owner an event names, as text (numbers in decimal), as [`Client::sees`] compares.
fn owner_of(event: &Value) -> Option<String> {
    match event.get("owner-id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The SSE event of a delivery, if `client` may see it: `id` is the event's `event-id` (the
/// same for a redelivered duplicate), `event` its name, `data` its body on one line.
fn visible(client: &Client, body: &[u8]) -> Option<SseEvent> {
    let event: Value = serde_json::from_slice(body).ok()?;
    if client.owners().is_some() && !client.sees(owner_of(&event).as_deref()) {
        return None;
    }
    let mut sse = SseEvent::default().data(event.to_string());
    if let Some(name) = event.get("event").and_then(Value::as_str).filter(|n| valid_pattern(n)) {
        sse = sse.event(name);
    }
    if let Some(id) = event.get("event-id").and_then(Value::as_str).filter(|i| i.bytes().all(|b| b.is_ascii_graphic()))
    {
        sse = sse.id(id);
    }
    Some(sse)
}

/// Where a stream is: delivering, or past its token's expiry (one last event, then the end).
// One per open stream, moved from one delivery to the next: its size costs nothing.
#[allow(clippy::large_enum_variant)]
enum Tail {
    Open { sub: Subscription, client: Client, shutdown: CancellationToken },
    Done,
}

/// What ended a wait for the next delivery.
// Lives for one wait on the stack; boxing the delivery would allocate for every event.
#[allow(clippy::large_enum_variant)]
enum Next {
    Delivery(Option<Result<lapin::message::Delivery, lapin::Error>>),
    Expired,
    ShuttingDown,
}

/// The events of `sub` that `client` sees, until the broker ends them, the token expires or
/// the api shuts down.
fn tail(
    sub: Subscription,
    client: Client,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold(Tail::Open { sub, client, shutdown }, |tail| async move {
        let Tail::Open { mut sub, client, shutdown } = tail else { return None };
        loop {
            let left = client.expires_at.map(|at| (at - OffsetDateTime::now_utc()).max(time::Duration::ZERO));
            let expiry = async {
                match left {
                    Some(left) => tokio::time::sleep(left.unsigned_abs()).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                d = sub.consumer.next() => Next::Delivery(d),
                () = expiry => Next::Expired,
                () = shutdown.cancelled() => Next::ShuttingDown,
            };
            let next = match next {
                Next::ShuttingDown => return None,
                Next::Expired => None,
                Next::Delivery(d) => Some(d),
            };
            match next {
                None => {
                    let ended =
                        SseEvent::default().event("expired").data("the token has expired; sign in with a new one");
                    return Some((Ok(ended), Tail::Done));
                }
                Some(None) => return None,
                Some(Some(Err(e))) => {
                    tracing::info!(error = %e, "an event stream ended: the broker connection failed");
                    return None;
                }
                Some(Some(Ok(delivery))) => {
                    let event = visible(&client, &delivery.data);
                    // Acked once taken: the stream's own queue, nothing to redeliver to.
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    if let Some(event) = event {
                        return Some((Ok(event), Tail::Open { sub, client, shutdown }));
                    }
                }
            }
        }
    })
}

/// GET /api/v1/events/stream
#[utoipa::path(
    get,
    path = "/api/v1/events/stream",
    operation_id = "streamEvents",
    tag = "events",
    summary = "The events of dfe.events, as they happen (server-sent events)",
    description = "A `text/event-stream` of the events published on `dfe.events` from now on whose routing key \
        matches `pattern` (an AMQP topic pattern; default `dfe.#`, every event). A token limited to owners \
        receives only the events naming one of its owners. The stream opens with `event: ready` (data \
        `{\"pattern\": …}`) once it is subscribed; then each event is `id: <event-id>`, `event: <event name>` \
        and `data: <the event body, one line of JSON>`; a comment every 15 s keeps it alive. It ends with \
        `event: expired` when the token expires, and ends when the broker connection is lost (reconnect; \
        events published meanwhile are not replayed). EventSource cannot send an Authorization header: \
        read it with fetch() or `curl -N -H 'Authorization: Bearer …'`.",
    params(("pattern" = Option<String>, Query, description = "Topic pattern of the event names, e.g. `dfe.#`, \
        `dfe.*.failed`, `dfe.provisioned` (words of [A-Za-z0-9_-], `*` one word, `#` any words)",
        pattern = r"^([A-Za-z0-9_-]+|\*|#)(\.([A-Za-z0-9_-]+|\*|#))*$", max_length = 255)),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The stream: each message as its fields", content_type = "text/event-stream",
            body = SseMessage),
        (status = 400, description = text::REPEATED_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = "An unknown query parameter, or a `pattern` that is not a topic pattern",
            body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = "The broker is not reachable; retry later", body = ProblemBody,
            content_type = PROBLEM),
    ),
)]
pub async fn stream(
    State(state): State<AppState>,
    client: Scoped<Read>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let pattern = pattern(query.as_deref())?;
    let sub = state
        .streams
        .subscribe(&pattern)
        .await
        .map_err(|e| Problem::unavailable("the broker is not reachable; retry later", &e))?;
    tracing::debug!(client = %client.id, %pattern, "event stream opened");
    let ready = SseEvent::default().event("ready").data(serde_json::json!({ "pattern": pattern }).to_string());
    let events =
        futures::stream::once(async move { Ok(ready) }).chain(tail(sub, client.0, state.streams.shutdown.clone()));
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    // Proxies that buffer answers (nginx) would hold events back.
    response.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_are_words_stars_and_hashes() {
        for ok in ["dfe.#", "#", "dfe.*.failed", "dfe.provisioned", "dfe.host.un-reachable_2"] {
            assert!(valid_pattern(ok), "{ok}");
        }
        for bad in ["", "dfe..x", "dfe.#x", "dfe. x", "dfe.*/", ".dfe", "dfe.", &"a".repeat(256), "dfe.\u{0}"] {
            assert!(!valid_pattern(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_query_names_one_valid_pattern_or_none() {
        assert_eq!(pattern(None).ok().as_deref(), Some(DEFAULT_PATTERN));
        assert_eq!(pattern(Some("pattern=dfe.%2A.failed")).ok().as_deref(), Some("dfe.*.failed"));
        assert!(pattern(Some("pattern=dfe.#&pattern=x")).is_err());
        assert!(pattern(Some("limit=3")).is_err());
        assert!(pattern(Some("pattern=a%20b")).is_err());
    }

    #[test]
    fn an_owner_limited_client_sees_only_its_owners_events() {
        let event = |owner: Value| serde_json::json!({"event-id": "e1", "event": "dfe.provisioned", "owner-id": owner});
        let body = |v: Value| v.to_string().into_bytes();
        let all = Client::for_tests(None);
        let limited = Client::for_tests(Some(&["7", "acme"]));
        assert!(visible(&all, &body(event(Value::Null))).is_some());
        assert!(visible(&limited, &body(event(serde_json::json!(7)))).is_some());
        assert!(visible(&limited, &body(event(serde_json::json!("acme")))).is_some());
        assert!(visible(&limited, &body(event(serde_json::json!(8)))).is_none());
        assert!(visible(&limited, &body(event(Value::Null))).is_none(), "no owner: not one of its owners");
        assert!(visible(&all, b"not json").is_none());
    }
}
