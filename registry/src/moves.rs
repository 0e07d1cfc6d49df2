//! Moving an instance to another Docker host: where it goes, and the switch of its record.
//!
//! A move job chooses its target first ([`Registry::move_target`], which decides only: the
//! instance stays counted where it is), makes the instance's parts there, and then switches
//! the record in one transaction ([`Registry::switch_host`]) that checks the target's
//! limits again under the same locks as a claim: two moves (or a move and a provision)
//! racing for a host's last place never both get it. Until the switch the record names the
//! old host, so a move that fails before it leaves the instance where it was.

use dfe_shared::placement::{Placement, Plan};
use dfe_shared::records::InstanceRecord;

use crate::instances::{instance_from_row, INSTANCE_COLUMNS};
use crate::transitions::Refusal;
use crate::{Error, Registry, Result};

/// What a move switches an instance's record to.
#[derive(Debug, Clone)]
pub struct Switch<'a> {
    /// The instance.
    pub instance_id: &'a str,
    /// The move job (kept in the record's `resources` as `moved-by`).
    pub job_id: &'a str,
    /// The host the record must still name (the move's source).
    pub from_host: Option<&'a str>,
    /// The placement plan, its cluster narrowed to the target host.
    pub plan: &'a Plan,
    /// The database server after the move.
    pub database_server: Option<&'a str>,
    /// Where the console talks to the instance now.
    pub resource_uri: Option<&'a str>,
    /// Names of what the instance is made of now.
    pub resources: &'a serde_json::Value,
}

impl Registry {
    /// Where a move would take an instance now: a host of `plan`'s cluster other than
    /// `from`, chosen by the cluster's policy among those active and under their limits.
    /// Nothing is written.
    pub async fn move_target(
        &self,
        plan: &Plan,
        from: Option<&str>,
    ) -> Result<std::result::Result<Placement, Refusal>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(Error::query("starting a move's placement"))?;
        let exclude: Vec<String> = from.map(str::to_owned).into_iter().collect();
        let placed = crate::fleet::place_in(&tx, plan, &exclude).await?;
        // Rolled back: the choice holds no place; the switch checks the limits again.
        drop(tx);
        Ok(placed)
    }

    /// Switches a moved instance's record to its new host (and database server), if the
    /// instance is still running on `from_host` and the target still has room. `Err`
    /// refusal: the target filled up meanwhile, or the instance changed under the move.
    pub async fn switch_host(&self, switch: &Switch<'_>) -> Result<std::result::Result<InstanceRecord, Refusal>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(Error::query("starting a move's switch"))?;
        let still = tx
            .query_opt(
                "SELECT 1 FROM instances WHERE instance_id = $1 AND state = 'provisioned'
                   AND host_id IS NOT DISTINCT FROM $2 FOR UPDATE",
                &[&switch.instance_id, &switch.from_host],
            )
            .await
            .map_err(Error::query("locking a moving instance"))?;
        if still.is_none() {
            return Ok(Err(Refusal {
                code: "instance-busy",
                message: format!(
                    "instance {} is no longer running on host {}",
                    switch.instance_id,
                    switch.from_host.unwrap_or("(none)")
                ),
            }));
        }
        let exclude: Vec<String> = switch.from_host.map(str::to_owned).into_iter().collect();
        let placement = match crate::fleet::place_in(&tx, switch.plan, &exclude).await? {
            Ok(p) => p,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let sql = format!(
            "UPDATE instances SET cluster_id = $2, host_id = $3, database_server = coalesce($4, database_server),
                    resource_uri = $5, resources = $6, updated_at = now()
             WHERE instance_id = $1 RETURNING {INSTANCE_COLUMNS}"
        );
        let row = tx
            .query_one(
                &sql,
                &[
                    &switch.instance_id,
                    &placement.cluster_id,
                    &placement.host_id,
                    &switch.database_server,
                    &switch.resource_uri,
                    switch.resources,
                ],
            )
            .await
            .map_err(Error::query("switching a moved instance"))?;
        let record = instance_from_row(&row)?;
        tx.commit().await.map_err(Error::query("committing a move's switch"))?;
        Ok(Ok(record))
    }

    /// Records where a running instance answers after its container was started again (a
    /// failed move's undo: the engine may publish its port on another host port).
    pub async fn set_address(&self, instance_id: &str, resource_uri: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE instances SET resource_uri = $2, updated_at = now()
                 WHERE instance_id = $1 AND state = 'provisioned'",
                &[&instance_id, &resource_uri],
            )
            .await
            .map_err(Error::query("recording an instance's address"))?;
        Ok(())
    }
}
