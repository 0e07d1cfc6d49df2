//! End-to-end tests against the real RabbitMQ, PostgreSQL and Docker engine started by
//! `deploy/setup.sh`, with real `dfe-api` and `dfe-worker` processes.

mod access;
mod asyncapi;
mod bad_input;
mod cancel;
mod cli;
mod concurrency;
mod conflicts;
mod console;
mod crash;
mod expiry;
mod failures;
mod fleet;
mod fuzz;
mod hardening;
mod lifecycle;
mod metrics;
mod moves;
mod mysql;
mod openapi;
mod pagination;
mod reconcile;
mod remote_snapshots;
mod repairs;
mod resilience;
mod retries;
mod schemathesis;
mod secrets;
mod snapshots;
mod stream;
mod suspend;
mod telemetry;

use std::time::Duration;

/// How long a single provision may take end to end in a test.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(90);
