//! Lifecycle in the registry: instance expiries, the warnings sent before them (each once),
//! and what an owner holds against its quota.

use std::collections::BTreeMap;

use dfe_shared::records::InstanceRecord;
use time::OffsetDateTime;

use crate::instances::{instance_from_row, INSTANCE_COLUMNS};
use crate::{Error, Registry, Result};

impl Registry {
    /// Sets or clears the expiry of an instance that is not deprovisioned. `None` when there
    /// is no such instance.
    pub async fn set_expiry(
        &self,
        instance_id: &str,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<Option<InstanceRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "UPDATE instances SET expires_at = $2, updated_at = now()
             WHERE instance_id = $1 AND state <> 'deprovisioned' RETURNING {INSTANCE_COLUMNS}"
        );
        let row =
            client.query_opt(&sql, &[&instance_id, &expires_at]).await.map_err(Error::query("setting an expiry"))?;
        row.as_ref().map(instance_from_row).transpose()
    }

    /// The expiry schedule: every instance with an expiry that is not deprovisioned,
    /// soonest first, with the warning days already sent (or passed over) for its current
    /// expiry. One query, however many instances expire.
    pub async fn expiry_schedule(&self) -> Result<Vec<(InstanceRecord, Vec<f64>)>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS},
                    ARRAY(SELECT w.days FROM lifecycle_warnings w
                           WHERE w.instance_id = instances.instance_id AND w.expires_at = instances.expires_at)
                      AS warned
               FROM instances WHERE expires_at IS NOT NULL AND state <> 'deprovisioned'
              ORDER BY expires_at, instance_id"
        );
        let rows = client.query(&sql, &[]).await.map_err(Error::query("reading the expiry schedule"))?;
        rows.iter().map(|r| Ok((instance_from_row(r)?, r.get::<_, Vec<f64>>("warned")))).collect()
    }

    /// Records that the warning `days` before `expires_at` went out for an instance. False
    /// when it had already been recorded (the warning is sent once).
    pub async fn record_warning(&self, instance_id: &str, expires_at: OffsetDateTime, days: f64) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO lifecycle_warnings (instance_id, expires_at, days) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&instance_id, &expires_at, &days],
            )
            .await
            .map_err(Error::query("recording a warning"))?;
        Ok(n > 0)
    }

    /// An owner's instances by state (deprovisioned ones left out).
    pub async fn owner_instances(&self, owner: &str) -> Result<BTreeMap<String, i64>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT state, count(*) FROM instances WHERE owner_id #>> '{}' = $1 AND state <> 'deprovisioned'
                 GROUP BY state ORDER BY state",
                &[&owner],
            )
            .await
            .map_err(Error::query("counting an owner's instances"))?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))).collect())
    }
}
