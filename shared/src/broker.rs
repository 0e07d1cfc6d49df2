//! AMQP connections (to the first node of a cluster that answers) and a publisher that
//! waits for confirms.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm};
use tokio::sync::Mutex;

use crate::config::AmqpUrls;
use crate::event::Event;
use crate::job::JobKind;
use crate::topology::{EVENTS_EXCHANGE, JOBS_EXCHANGE};
use crate::{Error, Result};

/// How long a publication may wait for the broker's confirm before it counts as failed.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Persistent delivery mode.
const PERSISTENT: u8 = 2;

/// How long connecting to one node may take before the next one is tried: a hung node
/// (paused, or cut off from its cluster) accepts the TCP connection and never answers.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to RabbitMQ on the tokio runtime; `name` shows in the management UI.
///
/// lapin's `tokio` feature makes the current tokio runtime its default one (no executor or
/// reactor to hand over); automatic recovery stays off, as [`BrokerHandle`] and the worker
/// reconnect themselves (through [`Nodes`], which also picks the node).
pub async fn connect(url: &str, name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props).await.map_err(Error::broker("connecting to RabbitMQ"))
}

/// The nodes of `amqp.url`, and which one to try first: the one place that knows how to
/// reach "the first node that answers". A connection goes to the first node that answers,
/// in the configured order; each later connection starts with the node after the one
/// connected to last. Connections are only made again once the previous one was lost, so a
/// reconnection goes on to the next node instead of waiting first on the one that just
/// failed (a dead node refuses at once, a hung one only times out). Clones share the
/// rotation; separate `Nodes` (one per [`BrokerHandle`]) each begin with the first node.
#[derive(Clone)]
pub struct Nodes {
    /// The node URLs, in the configured order.
    urls: Arc<[String]>,
    /// Index of the node the next connection tries first.
    next: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("Nodes").field("urls", &shown).field("next", &self.next.load(Ordering::Relaxed)).finish()
    }
}

impl Nodes {
    /// The nodes of `urls`.
    pub fn new(urls: &AmqpUrls) -> Nodes {
        Nodes { urls: urls.urls().into(), next: Arc::new(AtomicUsize::new(0)) }
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Always false: [`AmqpUrls`] is never empty.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The node URLs without their passwords, comma-separated, for messages.
    pub fn redacted(&self) -> String {
        self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",")
    }

    /// Connects to the first node that answers, each tried once (for at most
    /// [`NODE_CONNECT_TIMEOUT`]), starting with the node after the one connected to last.
    /// With one node, its error is the error; with several, the error names every node's.
    pub async fn connect(&self, name: &str) -> Result<Connection> {
        let n = self.urls.len();
        let start = self.next.load(Ordering::Relaxed);
        let mut tried = Vec::new();
        let mut last = None;
        for i in 0..n {
            let index = (start + i) % n;
            let url = &self.urls[index];
            // Moved on before trying, not after: a caller that gives up (drops this future)
            // while a hung node keeps it waiting starts with the following node next time.
            self.next.store((index + 1) % n, Ordering::Relaxed);
            match tokio::time::timeout(NODE_CONNECT_TIMEOUT, connect(url, name)).await {
                Ok(Ok(conn)) => {
                    if n > 1 {
                        tracing::info!(node = %redact_url(url), connection = name, "connected to RabbitMQ");
                    }
                    return Ok(conn);
                }
                Ok(Err(e)) if n == 1 => return Err(e),
                Ok(Err(Error::Broker { source, .. })) => {
                    tried.push(format!("{}: {source}", redact_url(url)));
                    last = Some(source);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    tried.push(format!("{}: no answer within {NODE_CONNECT_TIMEOUT:?}", redact_url(url)));
                    last = None;
                }
            }
        }
        Err(Error::Unreachable { tried: tried.join("; "), source: last })
    }
}

/// A URL with its password replaced by `***`, for log lines and error messages. A value
/// that does not parse as a URL is shown as its scheme alone: it might hold a password in
/// a shape the parser does not know.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                // Setting a password fails only for URLs that cannot have one.
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => raw.split_once("://").map_or_else(|| "[unparsable URL]".to_owned(), |(s, _)| format!("{s}://…")),
    }
}

/// The header carrying a job's W3C trace context from its publisher to the workers.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The AMQP properties of a job message: JSON, persistent, `message-id` = job id, `type`,
/// and the `traceparent` header when the job is part of a trace.
pub fn job_properties(kind: JobKind, job_id: &str, app_id: &str, traceparent: Option<&str>) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(job_id.into())
        .with_type(kind.message_type().into())
        .with_app_id(app_id.into());
    match traceparent {
        Some(tp) => {
            let mut headers = FieldTable::default();
            set_header(&mut headers, TRACEPARENT_HEADER, tp);
            props.with_headers(headers)
        }
        None => props,
    }
}

/// The `traceparent` header of a message, when it has one as a string.
pub fn traceparent_of(props: &BasicProperties) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(TRACEPARENT_HEADER)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A channel in confirm mode. Cloning shares the channel; publications from many tasks
/// interleave and each waits for its own confirm.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    /// Opens a confirm-mode channel on `conn`.
    pub async fn open(conn: &Connection) -> Result<Self> {
        let channel = conn.create_channel().await.map_err(Error::broker("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(Error::broker("enabling publisher confirms"))?;
        Ok(Publisher { channel })
    }

    /// The underlying channel (for declarations).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes and waits for the broker's confirm. With `mandatory`, a message no queue
    /// takes is an error rather than silently dropped.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<()> {
        self.start_publish(exchange, routing_key, mandatory, body, props).await?.confirmed().await
    }

    /// Publishes without waiting for the confirm yet: several publications can then wait
    /// for theirs together. Messages on one channel reach the broker in publication order.
    pub async fn start_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<Pending> {
        let opts = BasicPublishOptions { mandatory, ..Default::default() };
        let confirm = self
            .channel
            .basic_publish(exchange.into(), routing_key.into(), opts, body, props)
            .await
            .map_err(Error::broker("publishing"))?;
        Ok(Pending { confirm, exchange: exchange.to_owned(), routing_key: routing_key.to_owned() })
    }

    /// Publishes a job message onto `dfe.jobs` (with its trace context, when it has one).
    pub async fn publish_job(
        &self,
        kind: JobKind,
        job_id: &str,
        body: &[u8],
        app_id: &str,
        traceparent: Option<&str>,
    ) -> Result<()> {
        let props = job_properties(kind, job_id, app_id, traceparent);
        self.publish(JOBS_EXCHANGE, kind.as_str(), true, body, props).await
    }

    /// Publishes an event onto `dfe.events` (not mandatory: an event nobody listens to is fine).
    pub async fn publish_event(&self, event: &Event, app_id: &str) -> Result<()> {
        self.start_event(event, app_id).await?.confirmed().await
    }

    /// Publishes an event without waiting for its confirm yet (see [`Publisher::start_publish`]).
    pub async fn start_event(&self, event: &Event, app_id: &str) -> Result<Pending> {
        let body = serde_json::to_vec(event).map_err(Error::Json)?;
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(event.event_id.to_string().into())
            .with_type(event.event.as_str().into())
            .with_app_id(app_id.into());
        self.start_publish(EVENTS_EXCHANGE, &event.event, false, &body, props).await
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("exchange", &self.exchange).field("routing_key", &self.routing_key).finish()
    }
}

/// A publication whose confirm is still to be awaited.
pub struct Pending {
    confirm: PublisherConfirm,
    exchange: String,
    routing_key: String,
}

impl Pending {
    /// Waits for the broker's confirm: an error unless the broker took the message.
    pub async fn confirmed(self) -> Result<()> {
        self.confirmed_within(CONFIRM_TIMEOUT).await
    }

    /// Like [`Pending::confirmed`], waiting at most `timeout`.
    pub async fn confirmed_within(self, timeout: Duration) -> Result<()> {
        let not_confirmed = |reason: String| Error::NotConfirmed {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            reason,
        };
        let confirmation = tokio::time::timeout(timeout, self.confirm)
            .await
            .map_err(|_| not_confirmed(format!("no confirm within {timeout:?}")))?
            .map_err(Error::broker("waiting for a publisher confirm"))?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(not_confirmed("no queue is bound for it".into())),
            Confirmation::Nack(_) => Err(not_confirmed("the broker refused it (nack)".into())),
        }
    }
}

/// Adds a string header to a header table.
pub fn set_header(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
}

/// A lazily (re)connecting publisher: the API keeps accepting jobs while the broker is down
/// (they are recorded first) and reconnects on the next use once it is back, to the next
/// node of a cluster when the one it used is gone.
#[derive(Clone)]
pub struct BrokerHandle {
    nodes: Nodes,
    name: String,
    state: Arc<Mutex<Option<(Connection, Publisher)>>>,
}

impl BrokerHandle {
    /// A handle that connects on first use.
    pub fn new(urls: &AmqpUrls, name: &str) -> Self {
        BrokerHandle { nodes: Nodes::new(urls), name: name.to_owned(), state: Arc::new(Mutex::new(None)) }
    }

    /// A connected publisher, connecting (and declaring the topology) when needed.
    pub async fn publisher(&self) -> Result<Publisher> {
        let mut state = self.state.lock().await;
        if let Some((conn, publisher)) = state.as_ref() {
            if conn.status().connected() && publisher.channel.status().connected() {
                return Ok(publisher.clone());
            }
        }
        *state = None;
        let conn = self.nodes.connect(&self.name).await?;
        let publisher = Publisher::open(&conn).await?;
        crate::topology::declare(&conn, self.nodes.len()).await?;
        *state = Some((conn, publisher.clone()));
        Ok(publisher)
    }

    /// Whether the broker answers now (for readiness).
    pub async fn is_ready(&self) -> bool {
        self.publisher().await.is_ok()
    }

    /// Forgets the connection after a failure so the next use reconnects.
    pub async fn reset(&self) {
        if let Some((conn, _)) = self.state.lock().await.take() {
            let _ = conn.close(200, "reconnecting".into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn when_no_node_answers_the_error_names_each_node_without_its_password() {
        // Ports that were free a moment ago: nothing listens there.
        let closed = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
        let (a, b) = (closed().expect("port"), closed().expect("port"));
        let urls = AmqpUrls::from_list(vec![
            format!("amqp://u:secret@127.0.0.1:{a}/%2f"),
            format!("amqp://u:secret@127.0.0.1:{b}/%2f"),
        ])
        .expect("two nodes");
        let nodes = Nodes::new(&urls);
        let e = nodes.connect("test").await.expect_err("nothing listens");
        let text = e.to_string();
        assert!(text.contains(&format!("127.0.0.1:{a}")) && text.contains(&format!("127.0.0.1:{b}")), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(e.is_transient());
        assert!(!format!("{nodes:?}").contains("secret"));
    }

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_url("postgres://dfe:s3cr%40t@h/db"), "postgres://dfe:***@h/db");
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
