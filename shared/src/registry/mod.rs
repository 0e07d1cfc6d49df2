//! The registry: PostgreSQL tables of jobs and instances, migrated at start.
//!
//! - [`jobs`]: submission (with idempotency and instance claims), the job life cycle.
//! - [`instances`]: the registry view of instances and their state changes.
//! - [`snapshots`]: the snapshots written by exports.
//! - [`lock`]: per-instance mutual exclusion across every worker (advisory locks).
//! - [`migrations`]: the schema, applied once under a lock however many processes start.

pub mod instances;
pub mod jobs;
pub mod lock;
mod migrations;
pub mod snapshots;

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::{Error, Result};

pub use instances::{InstanceRecord, InstanceState};
pub use jobs::{JobRecord, JobState, SubmitOutcome};
pub use lock::{InstanceLock, LockPool};
pub use snapshots::SnapshotRecord;

/// A handle on the registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    pool: Pool,
}

fn pool(url: &str, size: usize, recycling: RecyclingMethod) -> Result<Pool> {
    let pg = tokio_postgres::Config::from_str(url).map_err(Error::registry("parsing registry.url"))?;
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: recycling });
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(std::time::Duration::from_secs(10)))
        .create_timeout(Some(std::time::Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| Error::Config(format!("registry pool: {e}")))
}

/// A prepared statement from the connection's cache: a hot query then costs one round trip
/// instead of two (parse and describe, then bind and execute).
pub(crate) async fn stmt(c: &impl deadpool_postgres::GenericClient, sql: &str) -> Result<tokio_postgres::Statement> {
    c.prepare_cached(sql).await.map_err(Error::registry("preparing a statement"))
}

impl Registry {
    /// Connects to the registry at `url` and applies pending migrations.
    pub async fn connect(url: &str, size: usize) -> Result<Registry> {
        let registry = Registry { pool: pool(url, size, RecyclingMethod::Fast)? };
        registry.migrate().await?;
        Ok(registry)
    }

    /// Connects without migrating (for read-only tools).
    pub fn connect_lazy(url: &str, size: usize) -> Result<Registry> {
        Ok(Registry { pool: pool(url, size, RecyclingMethod::Fast)? })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<()> {
        let mut client = self.pool.get().await?;
        migrations::apply(&mut client).await
    }

    /// Whether the registry answers now (for readiness).
    pub async fn is_ready(&self) -> bool {
        match self.pool.get().await {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }
}
