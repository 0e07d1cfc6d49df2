//! A subscriber of `dfe.events`: an exclusive queue bound before the test acts, collecting
//! every event body, so tests can wait for events and check their order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;

/// Events received so far.
pub struct EventLog {
    events: Arc<Mutex<Vec<Value>>>,
    _conn: lapin::Connection,
}

impl EventLog {
    /// Subscribes to `dfe.events` with `pattern` on the broker at `url`.
    pub async fn subscribe(url: &str, pattern: &str) -> Result<EventLog> {
        let conn = dfe_shared::broker::connect(url, "dfe-tests events").await?;
        let channel = conn.create_channel().await?;
        dfe_shared::topology::declare(&conn, 1).await?;
        let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = channel.queue_declare("".into(), opts, FieldTable::default()).await?;
        channel
            .queue_bind(
                queue.name().clone(),
                "dfe.events".into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(queue.name().clone(), "tests".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let body = serde_json::from_slice(&d.data)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&d.data).into()));
                if let Ok(mut e) = sink.lock() {
                    e.push(body);
                }
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
        });
        Ok(EventLog { events, _conn: conn })
    }

    /// Subscribes through a durable queue `queue` and reconnects whenever the broker goes
    /// away, so a broker restart loses no event for this subscriber (the queue keeps them).
    pub async fn subscribe_durable(url: &str, queue: &str) -> Result<EventLog> {
        let events = Arc::new(Mutex::new(Vec::new()));
        let (url, queue) = (url.to_owned(), queue.to_owned());
        let ready = Arc::new(tokio::sync::Notify::new());
        let (sink, ready2) = (events.clone(), ready.clone());
        let conn = dfe_shared::broker::connect(&url, "dfe-tests events (durable)").await?;
        tokio::spawn(async move {
            loop {
                if let Err(e) = consume_durable(&url, &queue, &sink, &ready2).await {
                    eprintln!("event subscriber: {e}; reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        ready.notified().await;
        Ok(EventLog { events, _conn: conn })
    }

    /// All events so far.
    pub fn all(&self) -> Vec<Value> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The events of one job, in arrival order.
    pub fn of_job(&self, job_id: &str) -> Vec<Value> {
        self.all().into_iter().filter(|e| e["job-id"] == job_id).collect()
    }

    /// The names of one job's events, in arrival order, duplicates (same event-id) dropped.
    pub fn names_of_job(&self, job_id: &str) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.of_job(job_id)
            .into_iter()
            .filter(|e| seen.insert(e["event-id"].to_string()))
            .filter_map(|e| e["event"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits for an event matching `pred`; returns it.
    pub async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.all().into_iter().find(|e| pred(e)) {
                return Ok(e);
            }
            if tokio::time::Instant::now() > deadline {
                let names: Vec<String> = self.all().iter().map(|e| format!("{} {}", e["event"], e["job-id"])).collect();
                bail!("no event {what} within {timeout:?}; seen: {names:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the final event (success or failure) of job `job_id`.
    pub async fn wait_final(&self, job_id: &str, timeout: Duration) -> Result<Value> {
        self.wait_for(&format!("final of job {job_id}"), timeout, |e| {
            e["job-id"] == job_id && is_final(e["event"].as_str().unwrap_or_default())
        })
        .await
    }
}

/// Whether an event name is a job's final event.
pub fn is_final(name: &str) -> bool {
    matches!(
        name,
        "dfe.provisioned"
            | "dfe.deprovisioned"
            | "dfe.imported"
            | "dfe.exported"
            | "dfe.suspended"
            | "dfe.resumed"
            | "dfe.moved"
    ) || (name.ends_with(".failed") && name.matches('.').count() == 2)
}

async fn consume_durable(url: &str, queue: &str, sink: &Mutex<Vec<Value>>, ready: &tokio::sync::Notify) -> Result<()> {
    let conn = dfe_shared::broker::connect(url, "dfe-tests events (durable)").await?;
    let channel = conn.create_channel().await?;
    dfe_shared::topology::declare(&conn, 1).await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("quorum".into()));
    channel.queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args).await?;
    channel
        .queue_bind(
            queue.into(),
            "dfe.events".into(),
            "dfe.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(queue.into(), "tests".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    ready.notify_one();
    while let Some(delivery) = consumer.next().await {
        let d = delivery?;
        let body =
            serde_json::from_slice(&d.data).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&d.data).into()));
        if let Ok(mut e) = sink.lock() {
            e.push(body);
        }
        d.acker.ack(BasicAckOptions::default()).await?;
    }
    bail!("the event stream ended")
}

/// A message taken off an exchange: its AMQP `type`, `traceparent` header and body.
#[derive(Debug, Clone)]
pub struct Tapped {
    /// The AMQP `type` property.
    pub kind: Option<String>,
    /// The `traceparent` header.
    pub traceparent: Option<String>,
    /// The body, as JSON (a string holding the text when it is not JSON).
    pub body: Value,
}

/// A copy of what is published onto `dfe.jobs`: an exclusive queue bound with every routing
/// key the exchange serves, so the workers' queues still get every message.
pub struct JobTap {
    messages: Arc<Mutex<Vec<Tapped>>>,
    _conn: lapin::Connection,
}

impl JobTap {
    /// Binds a queue to `dfe.jobs` for each of `routing_keys` on the broker at `url`.
    pub async fn subscribe(url: &str, routing_keys: &[&str]) -> Result<JobTap> {
        let conn = dfe_shared::broker::connect(url, "dfe-tests job tap").await?;
        dfe_shared::topology::declare(&conn, 1).await?;
        let channel = conn.create_channel().await?;
        let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = channel.queue_declare("".into(), opts, FieldTable::default()).await?;
        for key in routing_keys {
            channel
                .queue_bind(
                    queue.name().clone(),
                    "dfe.jobs".into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let mut consumer = channel
            .basic_consume(queue.name().clone(), "tap".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let body = serde_json::from_slice(&d.data)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&d.data).into()));
                let tapped = Tapped {
                    kind: d.properties.kind().as_ref().map(|k| k.to_string()),
                    traceparent: dfe_shared::broker::traceparent_of(&d.properties),
                    body,
                };
                if let Ok(mut m) = sink.lock() {
                    m.push(tapped);
                }
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
        });
        Ok(JobTap { messages, _conn: conn })
    }

    /// Everything taken so far.
    pub fn all(&self) -> Vec<Tapped> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }
}
