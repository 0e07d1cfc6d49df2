//! Per-instance mutual exclusion across all workers: a session-level PostgreSQL advisory
//! lock held on a dedicated connection for the length of a job. When a worker dies, its
//! connection closes and PostgreSQL releases the lock, so a redelivered job can go on.

use std::time::Duration;

use deadpool_postgres::{Object, Pool, RecyclingMethod};

use crate::ids::InstanceId;
use crate::{Error, Result};

/// First key of the two-key advisory lock space used for instances ("dfe").
const LOCK_SPACE: i32 = 0x0064_6665;

/// How often a waiting job retries the lock.
const POLL: Duration = Duration::from_millis(200);

/// Connections dedicated to instance locks. They are recycled with `DISCARD ALL`, which
/// also releases advisory locks, so a lock can never outlive its guard on a reused connection.
#[derive(Clone)]
pub struct LockPool {
    pool: Pool,
}

/// A held lock; release it with [`InstanceLock::release`]. Dropping it without releasing
/// still frees the lock when the connection is recycled or closed.
pub struct InstanceLock {
    client: Object,
    instance: String,
}

impl LockPool {
    /// A pool of `size` lock connections to the registry at `url`.
    pub fn new(url: &str, size: usize) -> Result<LockPool> {
        Ok(LockPool { pool: super::pool(url, size, RecyclingMethod::Clean)? })
    }

    /// Waits up to `timeout` for the lock of `instance`. `Ok(None)` when it stayed busy.
    pub async fn acquire(&self, instance: &InstanceId, timeout: Duration) -> Result<Option<InstanceLock>> {
        let client = self.pool.get().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1, hashtext($2))", &[&LOCK_SPACE, &instance.as_str()])
                .await
                .map_err(Error::registry("taking an instance lock"))?;
            if row.get::<_, bool>(0) {
                return Ok(Some(InstanceLock { client, instance: instance.as_str().to_owned() }));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl InstanceLock {
    /// Releases the lock.
    pub async fn release(self) -> Result<()> {
        self.client
            .query_one("SELECT pg_advisory_unlock($1, hashtext($2))", &[&LOCK_SPACE, &self.instance])
            .await
            .map_err(Error::registry("releasing an instance lock"))?;
        Ok(())
    }
}
