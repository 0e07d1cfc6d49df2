//! The registry: PostgreSQL tables of jobs, instances and snapshots, migrated at start.
//!
//! Module map:
//! - [`transitions`]: the one state machine of claims and ends that spans jobs and
//!   instances (claim, complete, cancel), used by the API and every job body alike.
//! - [`submission`]: the API's recording of a job with its claim, in three to five round trips.
//! - `pipeline`: statements sent together, and a transaction begun with its first ones.
//! - [`jobs`]: job rows: recording a queue message, starting a run, retries, reading.
//! - [`instances`]: instance rows: reading and listing.
//! - [`snapshots`]: the snapshots written by exports, removed with their archives.
//! - [`retention`]: what the snapshot schedules keep and prune, and their slots.
//! - [`history`]: finished jobs deleted past `registry.keep-finished-days`, with what hangs on them.
//! - [`leases`]: one process at a time for a duty (the snapshot schedules), by expiring leases.
//! - [`fleet`]: the state of hosts and database servers, and placement inside a claim.
//! - [`lifecycle`]: expiries, their warnings, owners against their quotas.
//! - [`moves`]: where a move takes an instance, and the switch of its record.
//! - [`lock`]: per-instance mutual exclusion across every worker (advisory locks), all of a
//!   process's held by one registry session: what a worker's run calls to enter and end.
//! - `session`: the lock session's task, which sends the statements of concurrent runs
//!   together, several runs' rows to a statement.
//! - [`runs`]: those statements (record, lock and start in one; end, then unlock) and their rows.
//! - [`outbox`]: republishes recorded jobs whose publication did not complete.
//! - [`events`]: events whose publication was refused, kept until the broker takes them.
//! - [`reconciliation`]: requests for a reconciliation and the reports the workers write.
//! - [`migrations`]: the schema, applied once under a lock however many processes start.
//! - [`error`]: the crate's error type.
//!
//! Only this crate speaks SQL to the registry; clients read its records through the API as
//! the types of `dfe_shared::records`.

pub mod error;
pub mod events;
pub mod fleet;
pub mod history;
pub mod instances;
pub mod jobs;
pub mod leases;
pub mod lifecycle;
pub mod lock;
mod migrations;
pub mod moves;
pub mod outbox;
mod pipeline;
pub mod reconciliation;
pub mod retention;
pub mod runs;
mod session;
pub mod snapshots;
pub mod submission;
pub mod transitions;

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

pub use error::{Error, Result};
pub use instances::InstanceFilter;
pub use jobs::{Cancelled, JobFilter, Submitter};
pub use lock::{Entry, InstanceLock, LockSession, SessionStats};
pub use moves::Switch;
pub use runs::{Entered, RunBy};
pub use snapshots::SnapshotFilter;
pub use submission::SubmitOutcome;
pub use transitions::{Admission, Claimed, Ending, Refusal, Transition};

/// Where a page of a list starts: after the row with this creation time and id. Lists are
/// newest first, ordered by (`created_at`, id), so a page read after rows were added neither
/// repeats nor skips a row that was there before (keyset pagination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    /// The last row's creation time (the registry keeps microseconds).
    pub created_at: time::OffsetDateTime,
    /// The last row's id.
    pub id: String,
}

/// One page of a list: at most `limit` rows, after `after` (from the start when `None`).
#[derive(Debug, Clone)]
pub struct Page {
    /// Rows at most.
    pub limit: i64,
    /// Where the page starts.
    pub after: Option<After>,
}

/// A page read: its rows, and where the next one starts (`None`: this was the last).
#[derive(Debug, Clone)]
pub struct Paged<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Where the next page starts.
    pub next: Option<After>,
}

impl<T> Paged<T> {
    /// The page of `page` from up to `limit + 1` rows read: one more than the page holds says
    /// that another page follows, which starts after the page's last row.
    pub(crate) fn of(mut rows: Vec<T>, page: &Page, key: impl Fn(&T) -> After) -> Paged<T> {
        let limit = usize::try_from(page.limit).unwrap_or(0);
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(key)
        } else {
            None
        };
        Paged { items: rows, next }
    }
}

/// A handle on the registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    pool: Pool,
}

fn pool(url: &str, size: usize, recycling: RecyclingMethod) -> Result<Pool> {
    let pg = tokio_postgres::Config::from_str(url)
        .map_err(|e| Error::Setup(format!("registry.url is not a PostgreSQL URL: {e}")))?;
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: recycling });
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(std::time::Duration::from_secs(10)))
        .create_timeout(Some(std::time::Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| Error::Setup(format!("registry pool: {e}")))
}

/// A prepared statement from the connection's cache: a hot query then costs one round trip
/// instead of two (parse and describe, then bind and execute).
pub(crate) async fn stmt(c: &impl deadpool_postgres::GenericClient, sql: &str) -> Result<tokio_postgres::Statement> {
    c.prepare_cached(sql).await.map_err(Error::query("preparing a statement"))
}

/// Reads a column that holds a state or kind name, refusing values this version does not know.
pub(crate) fn parse_column<T: FromStr>(
    row: &tokio_postgres::Row,
    table: &'static str,
    key: &str,
    column: &str,
) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let text: String = row.try_get(column).map_err(Error::query("reading a column"))?;
    text.parse().map_err(|e: T::Err| Error::Corrupt { table, key: key.to_owned(), message: format!("{column}: {e}") })
}

/// Reads a jsonb column into a typed value, refusing what does not fit.
pub(crate) fn json_column<T: serde::de::DeserializeOwned>(
    row: &tokio_postgres::Row,
    table: &'static str,
    key: &str,
    column: &str,
) -> Result<T> {
    let value: serde_json::Value = row.try_get(column).map_err(Error::query("reading a column"))?;
    serde_json::from_value(value).map_err(|e| Error::Corrupt {
        table,
        key: key.to_owned(),
        message: format!("{column}: {e}"),
    })
}

impl Registry {
    /// Connects to the registry at `url` and applies pending migrations.
    pub async fn connect(url: &str, size: usize) -> Result<Registry> {
        let registry = Registry { pool: pool(url, size, RecyclingMethod::Fast)? };
        registry.migrate().await?;
        Ok(registry)
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

/// Whether a PostgreSQL client error may pass by itself: the connection failed or broke
/// (no SQLSTATE), or the server reports a connection exception (08), insufficient resources
/// (53), an operator intervention such as a shutdown (57P), a serialization failure or a
/// deadlock. A data exception (22, e.g. NUL in a string), a constraint (23) or a syntax
/// error (42) is permanent. The workers' database sub-provisioners use the same rule.
pub fn pg_is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => {
            // Conversions between Rust and SQL values fail the same way every time.
            let text = e.to_string();
            !(text.starts_with("error deserializing") || text.starts_with("error serializing"))
        }
        Some(state) => {
            let code = state.code();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
        }
    }
}
