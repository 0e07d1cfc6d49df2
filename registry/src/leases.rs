//! Leases: one holder at a time for a named duty (the lifecycle schedule, …) across all
//! workers. A holder renews its lease well before it ends; when the holder dies the lease
//! runs out and another worker takes it within its length.

use crate::{Error, Registry, Result};

impl Registry {
    /// Takes or renews lease `name` for `holder` for `ttl_secs`. True when `holder` holds it
    /// now (it was free, had run out, or was `holder`'s already).
    pub async fn take_lease(&self, name: &str, holder: &str, ttl_secs: f64) -> Result<bool> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "INSERT INTO leases (name, holder, until) VALUES ($1, $2, now() + make_interval(secs => $3))
                 ON CONFLICT (name) DO UPDATE
                    SET holder = EXCLUDED.holder, until = EXCLUDED.until,
                        taken_at = CASE WHEN leases.holder = EXCLUDED.holder THEN leases.taken_at ELSE now() END
                  WHERE leases.holder = EXCLUDED.holder OR leases.until < now()
                 RETURNING holder",
                &[&name, &holder, &ttl_secs],
            )
            .await
            .map_err(Error::query("taking a lease"))?;
        Ok(row.is_some())
    }

    /// Gives lease `name` up if `holder` holds it (a clean shutdown hands it over at once).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM leases WHERE name = $1 AND holder = $2", &[&name, &holder])
            .await
            .map_err(Error::query("releasing a lease"))?;
        Ok(())
    }

    /// Who holds lease `name` now, if anyone.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT holder FROM leases WHERE name = $1 AND until >= now()", &[&name])
            .await
            .map_err(Error::query("reading a lease"))?;
        Ok(row.map(|r| r.get(0)))
    }
}
