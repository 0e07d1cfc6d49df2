//! End-to-end tests against the real RabbitMQ, PostgreSQL and Docker engine started by
//! `deploy/setup.sh`, with real `dfe-api` and `dfe-worker` processes.

mod bad_input;
mod cli;
mod concurrency;
mod conflicts;
mod crash;
mod failures;
mod fleet;
mod fuzz;
mod hardening;
mod lifecycle;
mod metrics;
mod openapi;
mod reconcile;
mod remote_snapshots;
mod repairs;
mod resilience;
mod retries;
mod secrets;
mod snapshots;

use std::time::Duration;

/// How long a single provision may take end to end in a test.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(90);
