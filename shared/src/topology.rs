//! Broker names and their idempotent declaration. The api and every worker declare the
//! topology at start, so whichever starts first makes it and the others find it.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::job::JobKind;
use crate::{Error, Result};

/// Direct exchange of job messages; routing key = job kind.
pub const JOBS_EXCHANGE: &str = "dfe.jobs";
/// Topic exchange of events; routing key = event name.
pub const EVENTS_EXCHANGE: &str = "dfe.events";
/// Quorum queue that holds dead-lettered job messages.
pub const DEAD_QUEUE: &str = "dfe.jobs.dead";
/// Header naming why a message was dead-lettered.
pub const ERROR_HEADER: &str = "x-dfe-error";

/// The queue of a job kind: `dfe.jobs.provision`, …
pub fn queue_name(kind: JobKind) -> String {
    format!("{JOBS_EXCHANGE}.{}", kind.as_str())
}

/// The delayed-retry queue of a job kind: `dfe.jobs.provision.retry`. Nothing consumes
/// it: a message waits there for its per-message expiration (the backoff delay), then
/// dead-letters back to `dfe.jobs` under its kind, so a waiting retry costs no worker.
pub fn retry_queue_name(kind: JobKind) -> String {
    format!("{JOBS_EXCHANGE}.{}.retry", kind.as_str())
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
}

/// From how many nodes on the job queues are declared with a replica on each node: with
/// three, a quorum (two) survives the loss of any one of them. With fewer the broker's
/// default applies (a member on every node of the cluster).
pub const SPREAD_FROM_NODES: usize = 3;

/// The arguments of a quorum queue for a broker of `nodes` nodes (`amqp.url`): with
/// [`SPREAD_FROM_NODES`] or more, `x-quorum-initial-group-size` puts a replica on each,
/// so that the queue's replicas span the cluster even when a node is away at declaration.
fn quorum_args(nodes: usize) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), AMQPValue::LongString("quorum".into()));
    if nodes >= SPREAD_FROM_NODES {
        let size = i64::try_from(nodes).unwrap_or(i64::MAX);
        args.insert(ShortString::from("x-quorum-initial-group-size"), AMQPValue::LongLongInt(size));
    }
    args
}

/// How often the broker delivers one job message before it dead-letters it on its own
/// (`x-delivery-limit` of the quorum job queues). Workers stop requeueing well before
/// (`worker.max-deliveries`, with the reason in `x-dfe-error`); this bound is for a message
/// that kills every worker that takes it. Fixed, because a queue's arguments cannot change
/// once it is declared.
pub const DELIVERY_LIMIT: i64 = 20;

/// Whether a broker error is PRECONDITION_FAILED (406): a queue exists with other arguments.
fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// Declares the exchanges, the job queues (quorum, dead-lettering to [`DEAD_QUEUE`], with
/// [`DELIVERY_LIMIT`]), their retry queues and the dead queue, on channels of its own;
/// `nodes` is how many nodes `amqp.url` names (see [`quorum_args`]). Safe to call any
/// number of times. A queue declared by an earlier version with other arguments (without
/// the delivery limit, or before the cluster grew) is kept as it is, with a warning: the
/// broker refuses to change a queue's arguments, and the workers' own bounds still hold.
pub async fn declare(conn: &Connection, nodes: usize) -> Result<()> {
    let mut channel = conn.create_channel().await.map_err(Error::broker("opening a channel to declare"))?;
    let result = declare_on(conn, &mut channel, nodes).await;
    let _ = channel.close(200, "declared".into()).await;
    result
}

/// Declares `queue` with `args`, or keeps the existing one when the broker refuses the
/// arguments (see [`declare`]).
async fn declare_queue(conn: &Connection, channel: &mut Channel, queue: &str, args: FieldTable) -> Result<()> {
    match channel.queue_declare(queue.into(), durable(), args).await {
        Ok(_) => Ok(()),
        Err(e) if is_precondition_failed(&e) => {
            tracing::warn!(
                queue,
                error = %e,
                "this queue exists with other arguments (declared by an older version, or before amqp.url named \
                 the whole cluster); it is used as it is. To add the broker's delivery bound: rabbitmqctl \
                 set_policy dfe-delivery-limit '^dfe\\.jobs\\.' '{{\"delivery-limit\": {DELIVERY_LIMIT}}}' \
                 --apply-to queues; to give a quorum queue a replica on a node that lacks one: \
                 rabbitmq-queues grow <node> all"
            );
            // The refusal closed the channel: go on with a new one.
            *channel = conn.create_channel().await.map_err(Error::broker("reopening a channel to declare"))?;
            let passive = QueueDeclareOptions { passive: true, ..durable() };
            channel
                .queue_declare(queue.into(), passive, FieldTable::default())
                .await
                .map_err(Error::broker("declaring a queue"))?;
            Ok(())
        }
        Err(e) => Err(Error::broker("declaring a queue")(e)),
    }
}

async fn declare_on(conn: &Connection, channel: &mut Channel, nodes: usize) -> Result<()> {
    let exchange_opts = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(JOBS_EXCHANGE.into(), ExchangeKind::Direct, exchange_opts, FieldTable::default())
        .await
        .map_err(Error::broker("declaring exchange dfe.jobs"))?;
    channel
        .exchange_declare(EVENTS_EXCHANGE.into(), ExchangeKind::Topic, exchange_opts, FieldTable::default())
        .await
        .map_err(Error::broker("declaring exchange dfe.events"))?;
    declare_queue(conn, channel, DEAD_QUEUE, quorum_args(nodes)).await?;
    for kind in JobKind::ALL {
        let mut args = quorum_args(nodes);
        // Dead-letter through the default exchange straight into the dead queue.
        args.insert(ShortString::from("x-dead-letter-exchange"), AMQPValue::LongString("".into()));
        args.insert(ShortString::from("x-dead-letter-routing-key"), AMQPValue::LongString(DEAD_QUEUE.into()));
        args.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongLongInt(DELIVERY_LIMIT));
        let queue = queue_name(kind);
        declare_queue(conn, channel, &queue, args).await?;
        channel
            .queue_bind(
                queue.into(),
                JOBS_EXCHANGE.into(),
                kind.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::broker("binding a job queue"))?;

        let mut args = quorum_args(nodes);
        args.insert(ShortString::from("x-dead-letter-exchange"), AMQPValue::LongString(JOBS_EXCHANGE.into()));
        args.insert(ShortString::from("x-dead-letter-routing-key"), AMQPValue::LongString(kind.as_str().into()));
        // At-least-once dead-lettering: a retry is never lost between the two queues.
        args.insert(ShortString::from("x-dead-letter-strategy"), AMQPValue::LongString("at-least-once".into()));
        args.insert(ShortString::from("x-overflow"), AMQPValue::LongString("reject-publish".into()));
        declare_queue(conn, channel, &retry_queue_name(kind), args).await?;
    }
    Ok(())
}
