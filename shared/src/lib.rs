//! Shared foundations of the DFE provisioner.
//!
//! Module map:
//! - [`ids`]: validated identifiers (`instance-id`, `owner-id`, job ids, tags).
//! - [`job`]: the job kinds and their kebab-case JSON, parsed with field-named errors.
//! - [`event`]: events published on `dfe.events` and their names.
//! - [`config`]: the TOML + `DFE__…` configuration shared by every binary.
//! - [`topology`]: exchange and queue names, declared idempotently.
//! - [`broker`]: AMQP connection and a publisher that waits for confirms.
//! - [`records`]: the job, instance, snapshot and reconciliation records the API serves.
//! - [`lifecycle`]: the expiry schedule of an instance (warnings, then the job at expiry).
//! - [`placement`]: where a new instance goes and which offering items it gets.
//! - [`snapshot_store`]: where snapshot archives are written and found.
//! - `store` (feature `store`): the destinations' client, directories and S3-compatible
//!   buckets, streaming archives both ways.
//! - [`secret`]: a string that never prints.
//! - [`telemetry`]: logging set-up.
//! - [`error`]: the crate's error type.

pub mod broker;
pub mod config;
pub mod error;
pub mod event;
pub mod ids;
pub mod job;
pub mod lifecycle;
pub mod placement;
pub mod records;
pub mod secret;
pub mod snapshot_store;
#[cfg(feature = "store")]
pub mod store;
pub mod telemetry;
pub mod topology;

pub use error::{Error, Result};
