//! Job bodies: one file per job kind. A body knows nothing of AMQP: it gets the parsed job
//! and an [`Env`], does its work through the manager's sub-provisioners, publishes its
//! sub-events, and returns an [`Outcome`] that the consumer records and announces.

mod deprovision;
mod export;
mod import;
mod provision;

use std::sync::Arc;
use std::time::Duration;

use dfe_shared::config::Config;
use dfe_shared::event::EventError;
use dfe_shared::job::Job;
use dfe_shared::registry::instances::InstanceChange;
use dfe_shared::registry::{JobState, Registry};
use serde_json::{json, Value};

use crate::error::Error;
use crate::events::{Events, JobMeta};
use crate::manager::Manager;

/// What job bodies work with.
#[derive(Clone)]
pub struct Env {
    /// The registry.
    pub registry: Registry,
    /// Provisioners by guest location.
    pub manager: Arc<Manager>,
    /// Event publisher.
    pub events: Events,
    /// The configuration.
    pub config: Arc<Config>,
}

impl Env {
    /// How long a job may run.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.config.worker.job_timeout_secs)
    }
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `succeeded` or `failed`.
    pub state: JobState,
    /// What was made.
    pub result: Value,
    /// Why it failed.
    pub error: Option<EventError>,
    /// What happens to the instance's registry row.
    pub change: InstanceChange,
    /// The failure may pass by itself: the job is worth another attempt.
    pub transient: bool,
}

impl Outcome {
    /// Success.
    pub fn succeeded(result: Value, change: InstanceChange) -> Outcome {
        Outcome { state: JobState::Succeeded, result, error: None, change, transient: false }
    }

    /// Failure with `error`'s code and message (with its causes).
    pub fn failed(error: &Error, change: InstanceChange) -> Outcome {
        Outcome { transient: error.is_transient(), ..Outcome::failed_with(error.code(), error.chain(), change) }
    }

    /// Failure with an explicit code and message.
    pub fn failed_with(code: &str, message: String, change: InstanceChange) -> Outcome {
        Outcome {
            state: JobState::Failed,
            result: json!({}),
            error: Some(EventError { code: code.to_owned(), message }),
            change,
            transient: false,
        }
    }
}

/// Runs a job body.
pub async fn run(env: &Env, job: &Job, meta: &JobMeta) -> Outcome {
    match job {
        Job::Provision(p) => provision::run(env, p, meta).await,
        Job::Deprovision(d) => deprovision::run(env, d, meta).await,
        Job::Import(i) => import::run(env, i, meta).await,
        Job::Export(e) => export::run(env, e, meta).await,
    }
}
