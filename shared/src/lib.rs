//! Shared foundations of the DFE provisioner.
//!
//! Module map:
//! - [`ids`]: validated identifiers (`instance-id`, `owner-id`, job ids, tags).
//! - [`job`]: the four job kinds and their kebab-case JSON, parsed with field-named errors.
//! - [`event`]: events published on `dfe.events` and their names.
//! - [`config`]: the TOML + `DFE__…` configuration shared by every binary.
//! - [`topology`]: exchange and queue names, declared idempotently.
//! - [`broker`]: AMQP connection and a publisher that waits for confirms.
//! - [`registry`]: the PostgreSQL registry of jobs and instances, its migrations and locks.
//! - [`metrics`]: Prometheus text exposition (counters, histograms) for `/metrics`.
//! - [`outbox`]: republishes recorded jobs whose publication did not complete.
//! - [`secret`]: a string that never prints.
//! - [`telemetry`]: logging set-up.
//! - [`error`]: the crate's error type.

pub mod broker;
pub mod config;
pub mod error;
pub mod event;
pub mod ids;
pub mod job;
pub mod metrics;
pub mod outbox;
pub mod registry;
pub mod secret;
pub mod telemetry;
pub mod topology;

pub use error::{Error, Result};
