//! Per-instance mutual exclusion across all workers: a session-level PostgreSQL advisory
//! lock held on a dedicated connection for the length of a job. When a worker dies, its
//! connection closes and PostgreSQL releases the lock, so a redelivered job can go on.

use deadpool_postgres::{Object, Pool, RecyclingMethod};

use crate::{Error, Result};

/// First key of the two-key advisory lock space used for instances ("dfe").
pub(crate) const LOCK_SPACE: i32 = 0x0064_6665;

/// Releases the lock of an instance; true when it was held.
pub(crate) const UNLOCK: &str = "SELECT pg_advisory_unlock($1, hashtext($2))";

/// Connections dedicated to instance locks. A connection goes back to the pool only after
/// its lock was released; one whose release failed, or whose guard was dropped without
/// releasing, is taken out of the pool and closed, which makes PostgreSQL release the
/// lock. So a lock can never outlive its guard on a reused connection, without a
/// `DISCARD ALL` round trip (and a lost statement cache) on every checkout.
#[derive(Clone)]
pub struct LockPool {
    pub(crate) pool: Pool,
}

/// A held lock; release it with [`InstanceLock::release`]. Dropping it without releasing
/// closes its connection, which frees the lock.
pub struct InstanceLock {
    /// The connection holding the lock (None once released or discarded).
    pub(crate) client: Option<Object>,
    pub(crate) instance: String,
}

impl LockPool {
    /// A pool of `size` lock connections to the registry at `url`.
    pub fn new(url: &str, size: usize) -> Result<LockPool> {
        Ok(LockPool { pool: crate::pool(url, size, RecyclingMethod::Fast)? })
    }
}

impl InstanceLock {
    /// The lock of `instance`, held by `client`'s session.
    pub(crate) fn held(client: Object, instance: &str) -> InstanceLock {
        InstanceLock { client: Some(client), instance: instance.to_owned() }
    }

    /// Releases the lock.
    pub async fn release(mut self) -> Result<()> {
        let Some(client) = self.client.as_ref() else { return Ok(()) };
        let unlock = crate::stmt(client, UNLOCK).await?;
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
