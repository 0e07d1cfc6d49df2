//! Leases: one process at a time holds a named duty (the snapshot schedules, the expiry
//! schedule, …), elected through the registry. A lease is a row with a holder and an
//! expiry, taken when it is free or expired and renewed by its holder well before it
//! expires; when the holder dies, another takes it over once it has expired.
//!
//! Times are the registry server's (`now()`), so the processes' clocks do not matter. A
//! lease is not a fence: a holder that stalls past its expiry may still act for a moment
//! after another took over, so a duty done under a lease must be safe to do twice (the
//! snapshot schedules submit jobs with ids derived from their slots, which a second
//! submission finds already recorded).
//!
//! ```ignore
//! loop {
//!     if registry.take_lease("snapshot-schedules", &worker_id, ttl).await?.is_some() {
//!         run_the_duty().await;
//!     }
//!     tokio::time::sleep(ttl / 3).await;
//! }
//! ```

use std::time::Duration;

use time::OffsetDateTime;

use crate::{Error, Registry, Result};

/// A lease this process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// When this holder took it (unchanged by renewals).
    pub taken_at: OffsetDateTime,
    /// When it lapses unless renewed.
    pub expires_at: OffsetDateTime,
    /// Whether this call took it (it was free, expired, or another's) rather than renewed it.
    pub new: bool,
}

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The holder's name.
    pub holder: String,
    /// When it lapses unless renewed.
    pub expires_at: OffsetDateTime,
}

impl Registry {
    /// Takes lease `name` for `holder` for `ttl`, or renews it when `holder` has it already.
    /// `None` while another holder's lease runs.
    pub async fn take_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>> {
        let client = self.client().await?;
        let sql = "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at,
                 taken_at = CASE WHEN leases.holder = EXCLUDED.holder THEN leases.taken_at ELSE now() END
             WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now()
             RETURNING taken_at, expires_at, (taken_at = now()) AS new";
        let row = client
            .query_opt(&crate::stmt(&client, sql).await?, &[&name, &holder, &ttl.as_secs_f64()])
            .await
            .map_err(Error::query("taking a lease"))?;
        Ok(row.map(|r| Lease { taken_at: r.get(0), expires_at: r.get(1), new: r.get(2) }))
    }

    /// Gives lease `name` up if `holder` has it (a graceful stop: the next holder need not
    /// wait for the expiry).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM leases WHERE name = $1 AND holder = $2", &[&name, &holder])
            .await
            .map_err(Error::query("releasing a lease"))?;
        Ok(())
    }

    /// Who holds lease `name` now (`None`: nobody, or it expired).
    pub async fn lease_holder(&self, name: &str) -> Result<Option<LeaseHolder>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT holder, expires_at FROM leases WHERE name = $1 AND expires_at >= now()", &[&name])
            .await
            .map_err(Error::query("reading a lease"))?;
        Ok(row.map(|r| LeaseHolder { holder: r.get(0), expires_at: r.get(1) }))
    }
}
