//! The consumer machinery: it knows AMQP, acknowledgements, locks and the registry life
//! cycle of a job, and nothing of provisioning (that is [`crate::jobs`]).
//!
//! Per delivery: parse (or dead-letter) → assign the job id → record → take the instance
//! lock → start → run the body (a panic becomes the job's failure) → record the outcome →
//! publish the final event → acknowledge. A crash anywhere before the acknowledgement makes
//! RabbitMQ redeliver, and every step is safe to repeat.

use std::sync::Arc;
use std::time::Duration;

use dfe_shared::broker::{self, Publisher};
use dfe_shared::ids::Tag;
use dfe_shared::job::{Job, JobKind};
use dfe_shared::registry::instances::InstanceChange;
use dfe_shared::registry::jobs::Submitter;
use dfe_shared::registry::{JobRecord, JobState, LockPool, Registry};
use dfe_shared::topology::{self, queue_name};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Semaphore};

use crate::deadletter;
use crate::error::{Error, Result};
use crate::events::{Events, JobMeta};
use crate::jobs::{self, Env, Outcome};
use crate::manager::Manager;
use crate::metrics::Metrics;
use dfe_shared::config::Config;

/// Pause before a message whose handling failed on infrastructure is requeued, so an
/// outage does not become a hot loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// Why a consume session ended.
pub enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The broker connection was lost.
    ConnectionLost,
}

/// The consumer of one worker process.
pub struct Consumer {
    /// Unique name of this worker (consumer tags, logs, the registry's `worker`).
    pub worker_id: String,
    /// Broker URL.
    pub amqp_url: String,
    /// Jobs run at once, and the prefetch of each queue.
    pub concurrency: u16,
    /// Seconds running jobs get to finish after a shutdown request.
    pub grace: Duration,
    /// The registry.
    pub registry: Registry,
    /// Connections holding instance locks.
    pub locks: LockPool,
    /// Provisioners by guest location.
    pub manager: Arc<Manager>,
    /// The configuration.
    pub config: Arc<Config>,
    /// What `/metrics` shows.
    pub metrics: Arc<Metrics>,
}

impl Consumer {
    /// Consumes the four job queues until shutdown or connection loss.
    pub async fn session(self: &Arc<Self>, shutdown: &mut watch::Receiver<bool>) -> Result<Ended> {
        let conn = broker::connect(&self.amqp_url, &self.worker_id).await?;
        let publisher = Publisher::open(&conn).await?;
        topology::declare(publisher.channel()).await?;
        let events = Events::new(publisher);
        let channel = conn.create_channel().await.map_err(dfe_shared::Error::broker("opening the consume channel"))?;
        // Per-consumer prefetch (quorum queues do not support global QoS); the semaphore
        // below bounds the jobs running at once across the four queues.
        channel
            .basic_qos(self.concurrency, BasicQosOptions::default())
            .await
            .map_err(dfe_shared::Error::broker("setting the prefetch"))?;
        let mut streams = Vec::new();
        let mut tags = Vec::new();
        for kind in JobKind::ALL {
            let tag = format!("{}.{kind}", self.worker_id);
            let consumer = channel
                .basic_consume(
                    queue_name(kind).into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(dfe_shared::Error::broker("starting a consumer"))?;
            streams.push(consumer.map(move |d| (kind, d)).boxed());
            tags.push(tag);
        }
        tracing::info!(worker = %self.worker_id, concurrency = self.concurrency, "consuming dfe.jobs.*");
        let mut deliveries = futures::stream::select_all(streams);
        let slots = Arc::new(Semaphore::new(usize::from(self.concurrency)));
        let env =
            Env { registry: self.registry.clone(), manager: self.manager.clone(), events, config: self.config.clone() };

        let ended = loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.map_err(|_| Error::Config("semaphore closed".into()))?,
                _ = shutdown.changed() => break Ended::Shutdown,
            };
            let next = tokio::select! {
                n = deliveries.next() => n,
                _ = shutdown.changed() => break Ended::Shutdown,
            };
            match next {
                Some((kind, Ok(delivery))) => {
                    let me = self.clone();
                    let env = env.clone();
                    tokio::spawn(async move {
                        me.handle(&env, kind, delivery).await;
                        drop(permit);
                    });
                }
                Some((_, Err(e))) => {
                    tracing::warn!(error = %e, "consumer stream failed");
                    break Ended::ConnectionLost;
                }
                None => break Ended::ConnectionLost,
            }
        };

        if matches!(ended, Ended::Shutdown) {
            for tag in &tags {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
            }
            let all = u32::from(self.concurrency);
            tracing::info!(grace = ?self.grace, "shutdown: waiting for running jobs");
            if tokio::time::timeout(self.grace, slots.acquire_many(all)).await.is_err() {
                tracing::warn!("shutdown: grace period over; unfinished jobs go back to their queue");
            }
        }
        // Closing returns every unacknowledged message to its queue.
        let _ = conn.close(200, "worker stopping".into()).await;
        Ok(ended)
    }

    async fn handle(&self, env: &Env, kind: JobKind, delivery: Delivery) {
        let Delivery { data, properties, acker, redelivered, .. } = delivery;
        let _busy = self.metrics.in_flight();
        let settled = match self.process(env, kind, &data, &properties, redelivered).await {
            Ok(()) => acker.ack(BasicAckOptions::default()).await,
            Err(e) => {
                tracing::error!(queue = %queue_name(kind), error = %e.chain(), "job handling failed; requeueing");
                tokio::time::sleep(REQUEUE_PAUSE).await;
                acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
            }
        };
        // `Ok(false)`: the acker's channel is gone (lapin 4 no longer reports that as an error).
        // Either way the broker redelivers the message elsewhere.
        match settled {
            Ok(true) => {}
            Ok(false) => tracing::warn!(error = "the channel is closed", "could not settle a delivery"),
            Err(e) => tracing::warn!(error = %e, "could not settle a delivery"),
        }
    }

    /// Everything up to (not including) the acknowledgement. `Ok` means: acknowledge.
    async fn process(
        &self,
        env: &Env,
        kind: JobKind,
        data: &[u8],
        props: &BasicProperties,
        redelivered: bool,
    ) -> Result<()> {
        let mut job = match parse(kind, data, props) {
            Ok(job) => job,
            Err(reason) => return self.reject(env, kind, data, props, &reason).await,
        };
        let explicit_id =
            job.job_id().cloned().or_else(|| props.message_id().as_ref().and_then(|m| Tag::parse(m.as_str()).ok()));
        let fingerprint = hex::encode(Sha256::digest(data));
        let job_id = match explicit_id {
            Some(id) => id,
            None => {
                let earlier =
                    if redelivered { self.registry.job_by_fingerprint(kind, &fingerprint).await? } else { None };
                let id = earlier.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                Tag::parse(&id).map_err(Error::Invalid)?
            }
        };
        job.set_job_id(job_id.clone());
        let by = Submitter { source: "queue", fingerprint: Some(&fingerprint), ..Default::default() };
        let record = self.registry.record(&job, &by).await?;
        if record.kind != kind {
            let reason = format!("job-id {job_id} already names a {} job", record.kind);
            return self.reject(env, kind, data, props, &reason).await;
        }
        let meta = self.meta(&job).await?;
        if record.state.is_terminal() {
            tracing::info!(job_id = %job_id, "job already ended; announcing its outcome again");
            return env.events.emit_final(&meta, &record).await;
        }

        let Some(lock) = self.locks.acquire(job.instance_id(), env.deadline()).await? else {
            return Err(Error::Conflict(format!("instance {} stayed locked by another job", job.instance_id())));
        };
        let mut outcome = self.run_locked(env, &job, &meta).await;
        if outcome.is_ok() {
            // Every event of the job is confirmed before the message is acknowledged (the
            // final event's publication has waited for them already; this covers the rest).
            outcome = meta.settle().await;
        }
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "instance lock release failed; its connection is closed, which frees the lock");
        }
        outcome
    }

    /// Dead-letters an invalid message (and counts it).
    async fn reject(&self, env: &Env, kind: JobKind, data: &[u8], props: &BasicProperties, reason: &str) -> Result<()> {
        deadletter::reject(&env.events, kind, data, props, reason).await?;
        self.metrics.dead_lettered();
        Ok(())
    }

    async fn run_locked(&self, env: &Env, job: &Job, meta: &JobMeta) -> Result<()> {
        let deadline = env.deadline().as_secs_f64();
        let Some(started) = self.registry.start_job(&meta.job_id, &self.worker_id, deadline).await? else {
            // Finished by another delivery while this one waited for the lock.
            let record = self.registry.job(&meta.job_id).await?.ok_or_else(|| Error::NotFound(meta.job_id.clone()))?;
            return env.events.emit_final(meta, &record).await;
        };
        let run_started = std::time::Instant::now();
        tracing::info!(job_id = %meta.job_id, kind = %meta.kind, instance = %meta.instance_id, attempt = started.attempts, "job started");
        let body = {
            let (env, job, meta) = (env.clone(), job.clone(), meta.clone());
            tokio::spawn(async move { jobs::run(&env, &job, &meta).await })
        };
        let mut outcome = match body.await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(job_id = %meta.job_id, error = %e, "job body panicked");
                Outcome::failed_with(
                    "internal-error",
                    "the worker hit an internal error running this job".into(),
                    InstanceChange::None,
                )
            }
        };
        let timings = self.timings(&started, meta, run_started.elapsed());
        if let Some(r) = outcome.result.as_object_mut() {
            r.insert("timings".into(), timings);
        }
        let attempts = u32::try_from(started.attempts).unwrap_or(u32::MAX);
        if outcome.state == JobState::Failed && outcome.transient {
            if attempts < self.config.worker.max_attempts {
                return self.retry_later(env, meta, &outcome, attempts).await;
            }
            if let Some(e) = outcome.error.as_mut() {
                e.message = format!("gave up after {attempts} attempts: {}", e.message);
            }
            self.give_up(env, meta, &outcome).await?;
        }
        let error_json = outcome.error.as_ref().map(|e| serde_json::to_value(e).unwrap_or_default());
        let completed = self
            .registry
            .complete_job(
                &meta.job_id,
                &meta.instance_id,
                outcome.state,
                Some(&outcome.result),
                error_json.as_ref(),
                outcome.change.clone(),
            )
            .await?;
        let record = if completed {
            // This run's outcome is what was recorded: no need to read it back.
            JobRecord { state: outcome.state, result: Some(outcome.result.clone()), error: error_json, ..started }
        } else {
            // Another delivery ended the job first: its outcome stands and is announced.
            self.registry.job(&meta.job_id).await?.ok_or_else(|| Error::NotFound(meta.job_id.clone()))?
        };
        self.metrics.finished(meta.kind, outcome.state);
        match outcome.state {
            JobState::Succeeded => tracing::info!(job_id = %meta.job_id, "job succeeded"),
            _ => tracing::warn!(job_id = %meta.job_id, error = ?outcome.error, "job failed"),
        }
        env.events.emit_final(meta, &record).await
    }

    /// A transient failure with attempts left: the job waits in its kind's retry queue for
    /// the backoff delay (per-message expiration), then dead-letters back to `dfe.jobs`. The
    /// registry shows it `retrying` with the time of the next attempt. What the attempt
    /// made was removed by the body; the instance keeps its claim.
    async fn retry_later(&self, env: &Env, meta: &JobMeta, outcome: &Outcome, attempts: u32) -> Result<()> {
        let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0.8..1.2);
        let delay = self.config.worker.retry_delay(attempts, jitter);
        let error = outcome.error.as_ref().map(|e| serde_json::to_value(e).unwrap_or_default()).unwrap_or_default();
        self.registry.schedule_retry(&meta.job_id, delay.as_secs_f64(), &error).await?;
        let body = serde_json::to_vec(&meta.request).map_err(|e| Error::Invalid(e.to_string()))?;
        let props = broker::job_properties(meta.kind, &meta.job_id, &self.worker_id)
            .with_expiration(delay.as_millis().to_string().into());
        env.events.publisher().publish("", &topology::retry_queue_name(meta.kind), true, &body, props).await?;
        self.metrics.retried();
        tracing::warn!(
            job_id = %meta.job_id, attempt = attempts, retry_in = ?delay, error = ?outcome.error,
            "job failed transiently; it will run again"
        );
        Ok(())
    }

    /// Out of attempts: the job message also goes to `dfe.jobs.dead` with the reason.
    async fn give_up(&self, env: &Env, meta: &JobMeta, outcome: &Outcome) -> Result<()> {
        let body = serde_json::to_vec(&meta.request).map_err(|e| Error::Invalid(e.to_string()))?;
        let reason = outcome.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
        let mut headers = lapin::types::FieldTable::default();
        broker::set_header(&mut headers, topology::ERROR_HEADER, &reason);
        broker::set_header(&mut headers, "x-dfe-queue", &queue_name(meta.kind));
        let props = broker::job_properties(meta.kind, &meta.job_id, &self.worker_id).with_headers(headers);
        env.events.publisher().publish("", topology::DEAD_QUEUE, true, &body, props).await?;
        self.metrics.dead_lettered();
        Ok(())
    }

    /// The step durations of a run in milliseconds (`result.timings` of its final event),
    /// also recorded in the histograms: queue wait (recorded → started, by the registry's
    /// clock), each sub-provisioner step the body measured, and the whole run.
    fn timings(&self, started: &JobRecord, meta: &JobMeta, total: Duration) -> serde_json::Value {
        let mut steps = meta.timings.snapshot();
        if let Some(at) = started.started_at {
            let wait = (at - started.created_at).max(time::Duration::ZERO);
            steps.insert("queue", Duration::try_from(wait).unwrap_or_default());
        }
        steps.insert("total", total);
        let mut out = serde_json::Map::new();
        for (step, d) in steps {
            self.metrics.observe(step, d);
            let ms = (d.as_secs_f64() * 1e6).round() / 1e3;
            out.insert(format!("{step}-ms"), serde_json::json!(ms));
        }
        serde_json::Value::Object(out)
    }

    async fn meta(&self, job: &Job) -> Result<JobMeta> {
        let owner_id = match job.owner_id() {
            Some(o) => Some(serde_json::to_value(o).unwrap_or_default()),
            None => self.registry.instance(job.instance_id().as_str()).await?.map(|i| i.owner_id),
        };
        Ok(JobMeta {
            job_id: job.job_id().map(|j| j.to_string()).unwrap_or_default(),
            kind: job.kind(),
            instance_id: job.instance_id().to_string(),
            owner_id,
            request: job.to_value(),
            timings: Default::default(),
            pending: Default::default(),
        })
    }
}

/// Parses a delivery from the queue of `kind`; the error is the dead-letter reason.
fn parse(kind: JobKind, data: &[u8], props: &BasicProperties) -> std::result::Result<Job, String> {
    if let Some(t) = props.kind().as_ref() {
        match JobKind::from_message_type(t.as_str()) {
            Some(k) if k == kind => {}
            _ => {
                return Err(format!(
                    "AMQP type {:?} does not match queue {} (expected {})",
                    t.as_str(),
                    queue_name(kind),
                    kind.message_type()
                ))
            }
        }
    }
    Job::parse(kind, data).map_err(|e| e.to_string())
}
