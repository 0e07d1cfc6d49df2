//! RabbitMQ for the CLI: publishing a job straight onto `dfe.jobs`, and subscribing to
//! `dfe.events` through a private queue that disappears with the connection.

use anyhow::Context;
use dfe_shared::broker::{Nodes, Publisher};
use dfe_shared::config::AmqpUrls;
use dfe_shared::job::Job;
use dfe_shared::topology::{self, EVENTS_EXCHANGE};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, Consumer, ExchangeKind};

/// Name of the CLI's connections and the `app-id` of the messages it publishes.
pub const APP_ID: &str = "dfe-cli";

/// A connection to RabbitMQ, and the nodes to go on to when it is lost.
pub struct Broker {
    conn: Connection,
    nodes: Nodes,
}

impl Broker {
    /// Connects to the first node of `urls` that answers, with an error that says how to
    /// point the CLI elsewhere.
    pub async fn connect(urls: &AmqpUrls) -> anyhow::Result<Self> {
        Broker::connect_to(Nodes::new(urls)).await
    }

    /// A new connection after this one was lost: to the next node that answers.
    pub async fn reconnect(&self) -> anyhow::Result<Self> {
        Broker::connect_to(self.nodes.clone()).await
    }

    async fn connect_to(nodes: Nodes) -> anyhow::Result<Self> {
        match nodes.connect(APP_ID).await {
            Ok(conn) => Ok(Broker { conn, nodes }),
            Err(e) => {
                let shown = nodes.redacted();
                let unreachable =
                    "is RabbitMQ running? set --amqp-url, amqp.url in the configuration, or DFE__AMQP__URL";
                // A transport failure (or no answer at all) means nothing answers there;
                // anything else is the broker answering and refusing (user, password, vhost).
                let silent = matches!(e, dfe_shared::Error::Unreachable { source: None, .. });
                let hint = if silent || has_io_cause(&e) {
                    unreachable
                } else {
                    "check the user, password and vhost of --amqp-url, amqp.url or DFE__AMQP__URL"
                };
                // Several nodes: say what each answered; one: its root cause reads best.
                let cause = match &e {
                    dfe_shared::Error::Unreachable { tried, .. } if nodes.len() > 1 || silent => tried.clone(),
                    _ => crate::api::root_cause(&e),
                };
                Err(anyhow::anyhow!("cannot connect to RabbitMQ at {shown}: {cause} — {hint}"))
            }
        }
    }

    /// Publishes `job` (whose id must be set) onto `dfe.jobs` and waits for the broker's
    /// confirm. The topology is declared first, so a broker no service has touched yet still
    /// routes the job to its queue rather than dropping it. On a cluster, a publication that
    /// fails (its node went away before confirming) is made once more through the next node
    /// that answers: the job id makes a second copy harmless, as workers run a job id once.
    pub async fn publish_job(&self, job: &Job) -> anyhow::Result<()> {
        match self.publish_job_here(job).await {
            Err(e) if self.nodes.len() > 1 => {
                eprintln!("warning: {e:#}; publishing through the next node");
                let next = self.reconnect().await?;
                let published = next.publish_job_here(job).await;
                next.close().await;
                published
            }
            published => published,
        }
    }

    async fn publish_job_here(&self, job: &Job) -> anyhow::Result<()> {
        let job_id = job.job_id().context("a job published onto the queue needs a job id")?;
        let body = serde_json::to_vec(&job.to_value()).context("serializing the job")?;
        topology::declare(&self.conn, self.nodes.len())
            .await
            .context("declaring the broker topology (exchanges and job queues)")?;
        let publisher = Publisher::open(&self.conn).await.context("opening a publishing channel")?;
        publisher
            .publish_job(job.kind(), job_id.as_str(), &body, APP_ID, None)
            .await
            .with_context(|| format!("publishing the {} job onto {}", job.kind(), topology::JOBS_EXCHANGE))?;
        Ok(())
    }

    /// How many nodes the broker has (`amqp.url`).
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// A consumer of the events whose routing key matches the topic `pattern`, through an
    /// exclusive, server-named queue: it receives what is published from now on.
    pub async fn subscribe(&self, pattern: &str) -> anyhow::Result<Consumer> {
        // An AMQP short string: lapin would panic on a longer one, so refuse it here.
        let routing_pattern = ShortString::try_new(pattern)
            .map_err(|e| anyhow::anyhow!("the event pattern {pattern:?} is too long for AMQP: {e}"))?;
        let channel = self.conn.create_channel().await.context("opening a channel for events")?;
        // Same properties as the services declare it with, so this is a no-op where it exists
        // and makes binding possible where no service has run yet.
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(EVENTS_EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await
            .with_context(|| format!("declaring the exchange {EVENTS_EXCHANGE}"))?;
        let private = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = channel
            .queue_declare("".into(), private, FieldTable::default())
            .await
            .context("declaring a private event queue")?;
        let queue = queue.name().clone();
        channel
            .queue_bind(
                queue.clone(),
                EVENTS_EXCHANGE.into(),
                routing_pattern,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding the event queue to {EVENTS_EXCHANGE} with {pattern:?}"))?;
        // Auto-ack: the queue is ours alone and dies with us; nothing is gained by acking.
        let consume = BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() };
        channel
            .basic_consume(queue, APP_ID.into(), consume, FieldTable::default())
            .await
            .context("consuming the event queue")
    }

    /// Closes the connection politely (the private queues go with it).
    pub async fn close(self) {
        let _ = self.conn.close(200, "dfe-cli done".into()).await;
    }
}

/// Whether an I/O error lies in the chain of `e`.
fn has_io_cause(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<std::io::Error>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The next event body from `consumer`: `None` once the stream ends, an error when the
/// broker connection fails.
pub async fn next_body(consumer: &mut Consumer) -> Option<anyhow::Result<Vec<u8>>> {
    consumer.next().await.map(|d| {
        d.map(|delivery| delivery.data)
            .map_err(|e| anyhow::anyhow!("the event stream from RabbitMQ broke: {}", crate::api::root_cause(&e)))
    })
}
