//! Per-instance mutual exclusion across all workers: a session-level PostgreSQL advisory
//! lock held on a dedicated connection for the length of a job. When a worker dies, its
//! connection closes and PostgreSQL releases the lock, so a redelivered job can go on.

use std::time::Duration;

use deadpool_postgres::{Object, Pool, RecyclingMethod};

use dfe_shared::ids::InstanceId;

use crate::{Error, Result};

/// First key of the two-key advisory lock space used for instances ("dfe").
const LOCK_SPACE: i32 = 0x0064_6665;

/// How often a waiting job retries the lock.
const POLL: Duration = Duration::from_millis(200);

/// Connections dedicated to instance locks. A connection goes back to the pool only after
/// its lock was released; one whose release failed, or whose guard was dropped without
/// releasing, is taken out of the pool and closed, which makes PostgreSQL release the
/// lock. So a lock can never outlive its guard on a reused connection, without a
/// `DISCARD ALL` round trip (and a lost statement cache) on every checkout.
#[derive(Clone)]
pub struct LockPool {
    pool: Pool,
}

/// A held lock; release it with [`InstanceLock::release`]. Dropping it without releasing
/// closes its connection, which frees the lock.
pub struct InstanceLock {
    /// The connection holding the lock (None once released or discarded).
    client: Option<Object>,
    instance: String,
}

impl LockPool {
    /// A pool of `size` lock connections to the registry at `url`.
    pub fn new(url: &str, size: usize) -> Result<LockPool> {
        Ok(LockPool { pool: crate::pool(url, size, RecyclingMethod::Fast)? })
    }

    /// Waits up to `timeout` for the lock of `instance`. `Ok(None)` when it stayed busy.
    pub async fn acquire(&self, instance: &InstanceId, timeout: Duration) -> Result<Option<InstanceLock>> {
        let client = self.pool.get().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let try_lock = crate::stmt(&client, "SELECT pg_try_advisory_lock($1, hashtext($2))").await?;
        loop {
            let row = client
                .query_one(&try_lock, &[&LOCK_SPACE, &instance.as_str()])
                .await
                .map_err(Error::query("taking an instance lock"))?;
            if row.get::<_, bool>(0) {
                return Ok(Some(InstanceLock { client: Some(client), instance: instance.as_str().to_owned() }));
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
    pub async fn release(mut self) -> Result<()> {
        let Some(client) = self.client.as_ref() else { return Ok(()) };
        let unlock = crate::stmt(client, "SELECT pg_advisory_unlock($1, hashtext($2))").await?;
        let row = client
            .query_one(&unlock, &[&LOCK_SPACE, &self.instance])
            .await
            .map_err(Error::query("releasing an instance lock"))?;
        if row.get::<_, bool>(0) {
            // Released: the connection may serve the next lock. (On any error above, Drop
            // discards it instead.)
            self.client = None;
        }
        Ok(())
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Not released: closing the connection is what frees the lock.
            drop(Object::take(client));
        }
    }
}
