//! The reference for the `noop` pipeline: what RabbitMQ alone does with the same load, a
//! persistent publish with confirms into a quorum queue and a consume with acks, N
//! messages with C publishes in flight and a prefetch of C.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use dfe_shared::broker::Publisher;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use tokio::sync::Semaphore;

/// Throughput and per-message latency (publish start → consumed).
pub struct RawResult {
    /// First publish to last delivery.
    pub elapsed: Duration,
    /// Per message.
    pub latencies: Vec<Duration>,
}

/// Runs the loop in the vhost of `amqp_url`.
pub async fn run(amqp_url: &str, n: usize, concurrency: usize) -> Result<RawResult> {
    let conn = dfe_shared::broker::connect(amqp_url, "dfe-bench raw").await?;
    let publisher = Publisher::open(&conn).await?;
    let queue = "dfe-bench.raw";
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    publisher
        .channel()
        .queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await?;
    let consume = conn.create_channel().await?;
    consume.basic_qos(u16::try_from(concurrency).unwrap_or(u16::MAX), BasicQosOptions::default()).await?;
    let mut consumer = consume
        .basic_consume(queue.into(), "raw".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let start = Instant::now();
    let publish = {
        let (publisher, sent) = (publisher.clone(), sent.clone());
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(concurrency));
            let mut tasks = Vec::with_capacity(n);
            for i in 0..n {
                let permit = slots.clone().acquire_owned().await?;
                let (publisher, sent) = (publisher.clone(), sent.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    let id = i.to_string();
                    let body = format!("{{\"owner-id\":1,\"instance-id\":\"raw-{i}\",\"guest-location\":\"noop\"}}");
                    if let Ok(mut s) = sent.lock() {
                        s.insert(id.clone(), Instant::now());
                    }
                    let props = BasicProperties::default().with_delivery_mode(2).with_message_id(id.into());
                    publisher.publish("", "dfe-bench.raw", true, body.as_bytes(), props).await
                }));
            }
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        })
    };
    let mut latencies = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(600);
    while latencies.len() < n {
        let Some(Ok(d)) = consumer.next().await else { bail!("the raw consumer ended early") };
        let at = Instant::now();
        let id = d.properties.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default();
        d.acker.ack(BasicAckOptions::default()).await?;
        if let Some(t) = sent.lock().ok().and_then(|s| s.get(&id).copied()) {
            latencies.push(at.saturating_duration_since(t));
        }
        if Instant::now() > deadline {
            bail!("raw loop: only {} of {n} messages within 600 s", latencies.len());
        }
    }
    let elapsed = start.elapsed();
    publish.await??;
    let _ = publisher.channel().queue_delete(queue.into(), QueueDeleteOptions::default()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(RawResult { elapsed, latencies })
}
