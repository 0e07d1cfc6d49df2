//! The job runner: the machinery that consumes job queues, records each job's life cycle in
//! the registry, runs its body under the job's lock, and announces and acknowledges its
//! outcome. It knows nothing of provisioning (crates.io's `crates_io_worker` is the model):
//! a job kind is a [`JobSpec`] — its name, its lock key, its body and what an abort leaves
//! behind — registered by the caller, and the body gets a context of the caller's type.
//!
//! - [`delivery`]: one delivery, from parsing to acknowledgement.
//! - [`retry`]: how a transient failure is retried, and when a message stops being tried.
//! - [`deadletter`]: messages that cannot be run, moved to `dfe.jobs.dead` with their reason.

pub mod deadletter;
pub mod delivery;
pub mod retry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dfe_registry::{LockSession, Registry, Transition};
use dfe_shared::broker::{self, Publisher};
use dfe_shared::event::EventError;
use dfe_shared::ids::InstanceId;
use dfe_shared::job::{Job, JobKind};
use dfe_shared::records::JobState;
use dfe_shared::topology::{self, queue_name};
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::events::{Events, JobMeta};
use crate::metrics::Metrics;
use retry::RetryPolicy;

/// One kind of job: what the runner needs to know of it.
#[async_trait]
pub trait JobSpec<C>: Send + Sync + 'static {
    /// The kind: its routing key, queue and event names.
    fn kind(&self) -> JobKind;

    /// What an abort leaves behind (the body panicked, or ran past its hard deadline and was
    /// dropped mid-way, or the reconciler gives up a job no worker finishes): the change
    /// recorded for the instance, so that a later job or the reconciler can finish it.
    fn aborted(&self) -> Transition;

    /// The key of the lock the job runs under: two jobs with one key never run at once.
    fn lock_key<'a>(&self, job: &'a Job) -> &'a InstanceId {
        job.instance_id()
    }

    /// The body. It claims what it works on, does the work, publishes its sub-events through
    /// `events` and says how it ended; the runner records and announces that.
    async fn run(&self, ctx: &C, job: &Job, meta: &JobMeta, events: &Events) -> Outcome;
}

/// How a job's run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `succeeded` or `failed`.
    pub state: JobState,
    /// What was made.
    pub result: Value,
    /// Why it failed.
    pub error: Option<EventError>,
    /// What happens to the instance.
    pub transition: Transition,
    /// The failure may pass by itself: the job is worth another attempt.
    pub transient: bool,
}

impl Outcome {
    /// Success.
    pub fn succeeded(result: Value, transition: Transition) -> Outcome {
        Outcome { state: JobState::Succeeded, result, error: None, transition, transient: false }
    }

    /// Failure with `error`'s code and message (with its causes).
    pub fn failed(error: &Error, transition: Transition) -> Outcome {
        Outcome { transient: error.is_transient(), ..Outcome::failed_with(error.code(), error.chain(), transition) }
    }

    /// Failure with an explicit code and message; never retried.
    pub fn failed_with(code: &str, message: String, transition: Transition) -> Outcome {
        Outcome {
            state: JobState::Failed,
            result: json!({}),
            error: Some(EventError { code: code.to_owned(), message }),
            transition,
            transient: false,
        }
    }
}

/// The job kinds a runner serves, by kind.
pub struct Kinds<C> {
    by_kind: HashMap<JobKind, Arc<dyn JobSpec<C>>>,
}

impl<C: 'static> Kinds<C> {
    /// The kinds of `specs`.
    pub fn new(specs: Vec<Arc<dyn JobSpec<C>>>) -> Kinds<C> {
        Kinds { by_kind: specs.into_iter().map(|s| (s.kind(), s)).collect() }
    }

    /// The spec of `kind`.
    pub fn get(&self, kind: JobKind) -> Option<&Arc<dyn JobSpec<C>>> {
        self.by_kind.get(&kind)
    }

    /// The kinds served, in a stable order.
    pub fn kinds(&self) -> Vec<JobKind> {
        let mut kinds: Vec<JobKind> = self.by_kind.keys().copied().collect();
        kinds.sort_by_key(|k| JobKind::ALL.iter().position(|x| x == k));
        kinds
    }
}

/// Why a consume session ended.
pub enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The broker connection was lost.
    ConnectionLost,
}

/// The runner of one worker process.
pub struct Runner<C> {
    /// Unique name of this worker (consumer tags, logs, the registry's `worker`).
    pub worker_id: String,
    /// The broker's nodes: each session connects to the next one that answers.
    pub nodes: broker::Nodes,
    /// Jobs run at once, and the prefetch of each queue.
    pub concurrency: u16,
    /// How long running jobs get to finish after a shutdown request.
    pub grace: Duration,
    /// How long one run of a job may take.
    pub deadline: Duration,
    /// Retries and delivery bounds.
    pub retry: RetryPolicy,
    /// The registry.
    pub registry: Registry,
    /// The session holding the job locks.
    pub locks: LockSession,
    /// The job kinds served.
    pub kinds: Kinds<C>,
    /// What the bodies work with.
    pub context: C,
    /// What `/metrics` shows.
    pub metrics: Arc<Metrics>,
}

impl<C: Clone + Send + Sync + 'static> Runner<C> {
    /// Consumes the queues of the registered kinds until shutdown or connection loss.
    pub async fn session(self: &Arc<Self>, shutdown: &CancellationToken) -> Result<Ended> {
        let conn = self.nodes.connect(&self.worker_id).await?;
        let publisher = Publisher::open(&conn).await?;
        topology::declare(&conn, self.nodes.len()).await?;
        let events = Events::new(publisher, self.registry.clone(), self.metrics.clone());
        let channel = conn.create_channel().await.map_err(dfe_shared::Error::broker("opening the consume channel"))?;
        // Per-consumer prefetch (quorum queues do not support global QoS); the semaphore
        // below bounds the jobs running at once across the queues.
        channel
            .basic_qos(self.concurrency, BasicQosOptions::default())
            .await
            .map_err(dfe_shared::Error::broker("setting the prefetch"))?;
        let mut streams = Vec::new();
        let mut tags = Vec::new();
        for kind in self.kinds.kinds() {
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

        let ended = loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.map_err(|_| Error::Config("semaphore closed".into()))?,
                _ = shutdown.cancelled() => break Ended::Shutdown,
            };
            let next = tokio::select! {
                n = deliveries.next() => n,
                _ = shutdown.cancelled() => break Ended::Shutdown,
            };
            match next {
                Some((kind, Ok(d))) => {
                    let me = self.clone();
                    let events = events.clone();
                    tokio::spawn(async move {
                        me.handle(&events, kind, d).await;
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
}
