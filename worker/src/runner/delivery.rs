//! One delivery, from parsing to acknowledgement:
//!
//! check (size, content type, AMQP type) and parse, or dead-letter → assign the job id →
//! record, take the job's lock and start (one statement) → run the body (a panic or a hard
//! deadline becomes the job's failure, with its kind's abort transition) → retry later, or
//! record the outcome and release the lock → announce the final event → acknowledge.
//!
//! A crash anywhere before the acknowledgement makes RabbitMQ redeliver, and every step is
//! safe to repeat. A handling that fails before an outcome can be recorded is requeued only
//! while the fault may pass and the message has deliveries left; otherwise the message is
//! dead-lettered with its reason (and a recorded job is failed), so nothing loops.

use std::sync::Arc;
use std::time::Duration;

use dfe_registry::{Ending, Entered, Entry, InstanceLock, RunBy, Submitter, Transition};
use dfe_shared::broker;
use dfe_shared::event::{names, EventError};
use dfe_shared::ids::Tag;
use dfe_shared::job::{Job, JobKind, MAX_JOB_BYTES};
use dfe_shared::records::{JobRecord, JobState};
use dfe_shared::topology::{self, queue_name};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::BasicProperties;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::{deadletter, retry, JobSpec, Outcome, Runner};
use crate::error::{Error, Result};
use crate::events::{Events, JobMeta};

/// Pause before a message whose handling failed on infrastructure is requeued, so an
/// outage does not become a hot loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// How much longer than its deadline a body may run before it is dropped: the body's own
/// deadline handling (rolling back what it made) comes first.
const HARD_DEADLINE_GRACE: Duration = Duration::from_secs(60);

/// A handling that failed before the job's outcome was recorded.
struct Failure {
    error: Error,
    /// The job, when it is recorded: giving up on the message then fails the job too.
    job: Option<(JobMeta, Transition)>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure { error, job: None }
    }
}

impl Failure {
    fn of(job: &JobMeta, abort: Transition) -> impl FnOnce(Error) -> Failure + '_ {
        move |error| Failure { error, job: Some((job.clone(), abort)) }
    }
}

impl<C: Clone + Send + Sync + 'static> Runner<C> {
    /// Handles a delivery from the queue of `kind` and settles it.
    pub(super) async fn handle(&self, events: &Events, kind: JobKind, delivery: Delivery) {
        // The delivery runs in the job's span: a continuation of the publisher's trace (its
        // `traceparent` header), else the root of one. Every line it writes carries the span's
        // `job_id`, `instance_id` (once read) and `trace_id`.
        let span = tracing::info_span!(
            "job",
            kind = %kind,
            job_id = tracing::field::Empty,
            instance_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            otel.name = %format!("job {kind}"),
        );
        dfe_shared::telemetry::continue_trace(&span, broker::traceparent_of(&delivery.properties).as_deref());
        if let Some(id) = dfe_shared::telemetry::trace_id(&span) {
            span.record("trace_id", id.as_str());
        }
        self.handle_in_span(events, kind, delivery).instrument(span).await;
    }

    async fn handle_in_span(&self, events: &Events, kind: JobKind, delivery: Delivery) {
        let Delivery { data, properties, acker, redelivered, .. } = delivery;
        let _busy = self.metrics.in_flight();
        let number = retry::delivery_number(&properties, redelivered);
        let settled = match self.process(events, kind, &data, &properties, redelivered).await {
            Ok(()) => acker.ack(BasicAckOptions::default()).await,
            Err(f) if f.error.is_transient() && self.retry.may_requeue(number) => {
                tracing::warn!(queue = %queue_name(kind), delivery = number, error = %f.error.chain(), "job handling failed; requeueing");
                tokio::time::sleep(REQUEUE_PAUSE).await;
                acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
            }
            Err(f) => match self.give_up_message(events, kind, &data, &properties, f, number).await {
                Ok(()) => acker.ack(BasicAckOptions::default()).await,
                Err(e) => {
                    // Not even the dead queue or the registry answers: keep the message. The
                    // queue's delivery limit bounds this.
                    tracing::error!(error = %e.chain(), "could not dead-letter a message; requeueing it");
                    tokio::time::sleep(REQUEUE_PAUSE).await;
                    acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
                }
            },
        };
        // `Ok(false)`: the acker's channel is gone. Either way the broker redelivers.
        match settled {
            Ok(true) => {}
            Ok(false) => tracing::warn!(error = "the channel is closed", "could not settle a delivery"),
            Err(e) => tracing::warn!(error = %e, "could not settle a delivery"),
        }
    }

    /// A message that cannot be handled (a permanent fault, or deliveries spent): it goes
    /// to `dfe.jobs.dead` with its reason; a recorded job is failed and announced.
    async fn give_up_message(
        &self,
        events: &Events,
        kind: JobKind,
        data: &[u8],
        props: &BasicProperties,
        f: Failure,
        number: u32,
    ) -> Result<()> {
        let mut reason = f.error.chain();
        if f.error.is_transient() {
            reason = format!("handled {number} times without an outcome; last error: {reason}");
        }
        match f.job {
            Some((meta, abort)) => {
                let code = if f.error.is_transient() { "undeliverable" } else { f.error.code() };
                let error = EventError { code: code.to_owned(), message: reason.clone() };
                let ending = Ending {
                    state: JobState::Failed,
                    result: &serde_json::json!({}),
                    error: Some(&error),
                    transition: abort,
                };
                if self.registry.complete(&meta.job_id, &meta.instance_id, &ending).await? {
                    self.metrics.finished(meta.kind, JobState::Failed);
                    events.emit(&meta, &names::failed(meta.kind), serde_json::json!({}), Some(error)).await?;
                }
                deadletter::dead_letter(events, kind, data, props, &reason).await?;
                tracing::error!(job_id = %meta.job_id, reason, "job given up and dead-lettered");
            }
            None => deadletter::reject(events, kind, data, props, &reason).await?,
        }
        self.metrics.dead_lettered();
        Ok(())
    }

    /// Everything up to (not including) the acknowledgement. `Ok` means: acknowledge.
    async fn process(
        &self,
        events: &Events,
        kind: JobKind,
        data: &[u8],
        props: &BasicProperties,
        redelivered: bool,
    ) -> std::result::Result<(), Failure> {
        let spec = self.kinds.get(kind).ok_or_else(|| Error::Config(format!("no job kind {kind} is served")))?;
        let mut job = match parse(kind, data, props) {
            Ok(job) => job,
            Err(reason) => return Ok(self.reject(events, kind, data, props, &reason).await?),
        };
        let explicit_id =
            job.job_id().cloned().or_else(|| props.message_id().as_ref().and_then(|m| Tag::parse(m.as_str()).ok()));
        let fingerprint = hex::encode(Sha256::digest(data));
        let job_id = match explicit_id {
            Some(id) => id,
            None => {
                let earlier = if redelivered {
                    self.registry.job_by_fingerprint(kind, &fingerprint).await.map_err(Error::from)?
                } else {
                    None
                };
                let id = earlier.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                Tag::parse(&id).map_err(Error::Invalid)?
            }
        };
        job.set_job_id(job_id.clone());
        let span = tracing::Span::current();
        span.record("job_id", job_id.as_str());
        span.record("instance_id", job.instance_id().as_str());
        let traceparent = dfe_shared::telemetry::traceparent(&span);
        let by = Submitter {
            source: "queue",
            requested_by: "queue",
            fingerprint: Some(&fingerprint),
            traceparent: traceparent.as_deref(),
            ..Default::default()
        };
        // Recorded, locked and started in one statement (the instance's lock is waited for
        // up to the deadline; the job is recorded meanwhile).
        let key = spec.lock_key(&job).clone();
        let runner =
            RunBy { worker: &self.worker_id, deadline_secs: self.deadline.as_secs_f64(), lock_wait: self.deadline };
        let entry = self.locks.enter(&job, key.as_str(), &by, &runner).await.map_err(Error::from)?;
        let meta_of = |entered: &Entered| {
            let mut meta = JobMeta::new(job_id.to_string(), kind, job.instance_id().to_string(), job.to_value());
            meta.trace_id = dfe_shared::telemetry::trace_id(&span);
            meta.traceparent = traceparent.clone();
            if meta.owner_id.is_none() {
                meta.owner_id = entered.owner_id.clone();
            }
            meta
        };
        match entry {
            Entry::OtherKind(e) => {
                let reason = format!("job-id {job_id} already names a {} job", e.record.kind);
                Ok(self.reject(events, kind, data, props, &reason).await?)
            }
            Entry::Ended(e) => Ok(announce_again(events, &meta_of(&e), &e.record).await?),
            Entry::Busy(e) => {
                let busy =
                    Error::LockBusy(format!("instance {key} stayed locked by another job for {:?}", self.deadline));
                Err(Failure::of(&meta_of(&e), spec.aborted())(busy))
            }
            Entry::Started(e, lock) => {
                let mut meta = meta_of(&e);
                // What the run read under its lock: the body's claim starts from it.
                meta.instance = e.instance;
                self.run_locked(events, spec, &job, meta, e.record, *lock).await
            }
        }
    }

    /// Dead-letters a message that is not a job (and counts it).
    async fn reject(
        &self,
        events: &Events,
        kind: JobKind,
        data: &[u8],
        props: &BasicProperties,
        reason: &str,
    ) -> Result<()> {
        deadletter::reject(events, kind, data, props, reason).await?;
        self.metrics.dead_lettered();
        Ok(())
    }

    /// Runs a started job under its instance's lock, records its outcome (or its retry)
    /// and releases the lock, then announces the outcome.
    async fn run_locked(
        &self,
        events: &Events,
        spec: &Arc<dyn JobSpec<C>>,
        job: &Job,
        mut meta: JobMeta,
        started: JobRecord,
        lock: InstanceLock,
    ) -> std::result::Result<(), Failure> {
        let abort = spec.aborted();
        meta.attempt = u32::try_from(started.attempts).unwrap_or(u32::MAX);
        let run_started = std::time::Instant::now();
        tracing::info!(job_id = %meta.job_id, kind = %meta.kind, instance = %meta.instance_id, attempt = meta.attempt, "job started");
        let mut outcome = self.run_body(spec, job, &meta, events).await;
        outcome.result = with_timings(outcome.result, &started, &meta, run_started.elapsed(), &self.metrics);

        if outcome.state == JobState::Failed && outcome.transient {
            if self.retry.retries(meta.attempt) {
                let retried = self.retry_later(events, &meta, &outcome).await;
                release(lock).await;
                return retried.map_err(Failure::of(&meta, abort));
            }
            if let Some(e) = outcome.error.as_mut() {
                e.message = format!("gave up after {} attempts: {}", meta.attempt, e.message);
            }
            if let Err(e) = self.out_of_attempts(events, &meta, &outcome).await {
                release(lock).await;
                return Err(Failure::of(&meta, abort)(e));
            }
        }
        let ending = Ending {
            state: outcome.state,
            result: &outcome.result,
            error: outcome.error.as_ref(),
            transition: outcome.transition.clone(),
        };
        let completed = lock
            .complete_and_release(&meta.job_id, &meta.instance_id, &ending)
            .await
            .map_err(|e| Failure::of(&meta, abort.clone())(e.into()))?;
        let record = if completed {
            // This run's outcome is what was recorded: no need to read it back.
            JobRecord {
                state: outcome.state,
                result: Some(outcome.result.clone()),
                error: outcome.error.clone(),
                ..started
            }
        } else {
            // Another delivery ended the job first: its outcome stands and is announced.
            let record = self.registry.job(&meta.job_id).await.map_err(Error::from)?;
            record.ok_or_else(|| {
                Error::Registry(dfe_registry::Error::Inconsistent(format!("job {} vanished", meta.job_id)))
            })?
        };
        self.metrics.finished(meta.kind, outcome.state);
        match outcome.state {
            JobState::Succeeded => tracing::info!(job_id = %meta.job_id, "job succeeded"),
            _ => tracing::warn!(job_id = %meta.job_id, error = ?outcome.error, "job failed"),
        }
        // The outcome is recorded: from here on a failure only repeats the announcement.
        Ok(events.emit_final(&meta, &record).await?)
    }

    /// Runs the body in a task of its own, so that a panic becomes the job's failure and a
    /// body past its hard deadline can be dropped; both leave the kind's abort transition.
    async fn run_body(&self, spec: &Arc<dyn JobSpec<C>>, job: &Job, meta: &JobMeta, events: &Events) -> Outcome {
        let mut task = {
            let (spec, context, job, meta, events) =
                (spec.clone(), self.context.clone(), job.clone(), meta.clone(), events.clone());
            let body = async move { spec.run(&context, &job, &meta, &events).await };
            tokio::spawn(body.instrument(tracing::Span::current()))
        };
        let hard_deadline = self.deadline + HARD_DEADLINE_GRACE;
        match tokio::time::timeout(hard_deadline, &mut task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                tracing::error!(job_id = %meta.job_id, error = %e, "job body panicked");
                Outcome::failed_with(
                    "internal-error",
                    "the worker hit an internal error running this job; what it made is left for a deprovision or \
                     the reconciler to remove"
                        .into(),
                    spec.aborted(),
                )
            }
            Err(_) => {
                task.abort();
                tracing::error!(job_id = %meta.job_id, "job body ran past its hard deadline and was dropped");
                Outcome::failed_with(
                    "timeout",
                    format!("the job was dropped {hard_deadline:?} after it started, mid-way"),
                    spec.aborted(),
                )
            }
        }
    }

    /// A transient failure with attempts left: the job waits in its kind's retry queue for
    /// the backoff delay (per-message expiration), then dead-letters back to `dfe.jobs`. The
    /// registry shows it `retrying` with the time of the next attempt. What the attempt
    /// made was removed by the body; the instance keeps its claim.
    async fn retry_later(&self, events: &Events, meta: &JobMeta, outcome: &Outcome) -> Result<()> {
        events.settle(meta).await?;
        let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0.8..1.2);
        let delay = self.retry.delay(meta.attempt, jitter);
        let error = outcome.error.clone().unwrap_or(EventError { code: "unknown".into(), message: String::new() });
        self.registry.schedule_retry(&meta.job_id, delay.as_secs_f64(), &error).await?;
        let body = serde_json::to_vec(&meta.request).map_err(|e| Error::Invalid(e.to_string()))?;
        let props = broker::job_properties(meta.kind, &meta.job_id, &self.worker_id, meta.traceparent.as_deref())
            .with_expiration(delay.as_millis().to_string().into());
        events.publisher().publish("", &topology::retry_queue_name(meta.kind), true, &body, props).await?;
        self.metrics.retried();
        tracing::warn!(
            job_id = %meta.job_id, attempt = meta.attempt, retry_in = ?delay, error = ?outcome.error,
            "job failed transiently; it will run again"
        );
        Ok(())
    }

    /// Out of attempts: the job message also goes to `dfe.jobs.dead` with the reason.
    async fn out_of_attempts(&self, events: &Events, meta: &JobMeta, outcome: &Outcome) -> Result<()> {
        let body = serde_json::to_vec(&meta.request).map_err(|e| Error::Invalid(e.to_string()))?;
        let reason = outcome.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
        let props = broker::job_properties(meta.kind, &meta.job_id, &self.worker_id, meta.traceparent.as_deref());
        deadletter::dead_letter(events, meta.kind, &body, &props, &reason).await?;
        self.metrics.dead_lettered();
        Ok(())
    }
}

/// Releases an instance lock whose job's outcome is not recorded here (it runs again).
async fn release(lock: InstanceLock) {
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "instance lock release failed; its connection is closed, which frees the lock");
    }
}

/// Announces the outcome of a job that has ended again, for a duplicate delivery (the first
/// may have ended before its final event went out) — except a cancelled job's: the one that
/// cancelled it announced it, so its message is dropped.
async fn announce_again(events: &Events, meta: &JobMeta, record: &JobRecord) -> Result<()> {
    if record.error.as_ref().is_some_and(|e| e.code == CANCELLED) {
        tracing::info!(job_id = %meta.job_id, "job was cancelled before it ran; its message is dropped");
        return Ok(());
    }
    tracing::info!(job_id = %meta.job_id, "job already ended; announcing its outcome again");
    events.emit_final(meta, record).await
}

/// `error.code` of a job cancelled before it ran.
const CANCELLED: &str = "cancelled";

/// The step durations of a run (`result.timings` of its final event), also observed in the
/// metrics: queue wait (recorded → started, by the registry's clock), each step the body
/// measured, and the whole run.
fn with_timings(
    mut result: serde_json::Value,
    started: &JobRecord,
    meta: &JobMeta,
    total: Duration,
    metrics: &crate::metrics::Metrics,
) -> serde_json::Value {
    let mut steps = meta.timings.snapshot();
    if let Some(at) = started.started_at {
        let wait = (at - started.created_at).max(time::Duration::ZERO);
        steps.insert("queue", Duration::try_from(wait).unwrap_or_default());
    }
    steps.insert("total", total);
    for (step, d) in &steps {
        metrics.observe(step, *d);
    }
    if let Some(r) = result.as_object_mut() {
        r.insert("timings".into(), crate::timings::to_json(&steps));
    }
    result
}

/// Checks and parses a delivery from the queue of `kind`; the error is the dead-letter
/// reason. Accepted: at most [`MAX_JOB_BYTES`], a JSON content type or none (simple
/// publishers set none), an AMQP `type` that matches the queue or none.
fn parse(kind: JobKind, data: &[u8], props: &BasicProperties) -> std::result::Result<Job, String> {
    if data.len() > MAX_JOB_BYTES {
        return Err(format!("the body is {} bytes; a job body is at most {MAX_JOB_BYTES} bytes", data.len()));
    }
    if let Some(ct) = props.content_type().as_ref() {
        let essence = ct.as_str().split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let json = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
        if !json {
            return Err(format!(
                "content-type {:?} is not JSON: publish jobs as application/json (or with no content type)",
                ct.as_str()
            ));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_job_sized_json_of_the_queues_type_is_taken() {
        let ok = br#"{"owner-id": 1, "instance-id": "acme"}"#;
        assert!(parse(JobKind::Provision, ok, &BasicProperties::default()).is_ok());
        let json = BasicProperties::default().with_content_type("application/json; charset=utf-8".into());
        assert!(parse(JobKind::Provision, ok, &json).is_ok());
        let text = BasicProperties::default().with_content_type("text/plain".into());
        assert!(parse(JobKind::Provision, ok, &text).expect_err("text").contains("not JSON"));
        let wrong = BasicProperties::default().with_type("ExportJob".into());
        assert!(parse(JobKind::Provision, ok, &wrong).expect_err("type").contains("does not match"));
        let huge =
            format!(r#"{{"owner-id": 1, "instance-id": "acme", "packages": ["{}"]}}"#, "a".repeat(MAX_JOB_BYTES));
        assert!(parse(JobKind::Provision, huge.as_bytes(), &BasicProperties::default())
            .expect_err("big")
            .contains("at most"));
        let nul = br#"{"owner-id": 1, "instance-id": "acme", "packages": ["a\u0000b"]}"#;
        assert!(parse(JobKind::Provision, nul, &BasicProperties::default()).expect_err("nul").contains("packages[0]"));
    }
}
