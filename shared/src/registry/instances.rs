//! Instances in the registry. A provision claims the id (row in `provisioning`, owned by
//! its job); the outcome of each job moves the row on in the same transaction that ends
//! the job, so the registry never shows a finished job with a stale instance.

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::jobs::JobState;
use super::Registry;
use crate::ids::{InstanceId, OwnerId, Tag};
use crate::job::{ImportJob, ProvisionJob};
use crate::{Error, Result};

/// An instance's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Claimed by a provision that is running.
    Provisioning,
    /// Running.
    Provisioned,
    /// A deprovision is removing it.
    Deprovisioning,
    /// Removed (kept as history; the id may be provisioned again).
    Deprovisioned,
    /// A deprovision failed part-way; deprovisioning again finishes the removal.
    Failed,
}

impl InstanceState {
    fn parse(s: &str) -> InstanceState {
        match s {
            "provisioning" => InstanceState::Provisioning,
            "provisioned" => InstanceState::Provisioned,
            "deprovisioning" => InstanceState::Deprovisioning,
            "deprovisioned" => InstanceState::Deprovisioned,
            _ => InstanceState::Failed,
        }
    }
}

/// The registry view of an instance.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct InstanceRecord {
    /// The instance id.
    pub instance_id: String,
    /// Its owner, as the provision named it.
    pub owner_id: serde_json::Value,
    /// DFE's owner type, if given.
    pub owner_type: Option<serde_json::Value>,
    /// Where it is in its life.
    pub state: InstanceState,
    /// Provisioner tag.
    pub guest_location: String,
    /// Docker cluster.
    pub cluster_id: Option<String>,
    /// Docker host it runs on.
    pub host: Option<String>,
    /// Where the console talks to it.
    pub resource_uri: Option<String>,
    /// Names of what was made (container, volume, database, role).
    pub resources: serde_json::Value,
    /// The last job that changed it.
    pub job_id: String,
    /// When it was first claimed.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When its provision succeeded.
    #[serde(with = "time::serde::rfc3339::option")]
    pub provisioned_at: Option<OffsetDateTime>,
    /// When its deprovision succeeded.
    #[serde(with = "time::serde::rfc3339::option")]
    pub deprovisioned_at: Option<OffsetDateTime>,
}

impl InstanceRecord {
    fn from_row(row: &Row) -> InstanceRecord {
        let state: String = row.get("state");
        InstanceRecord {
            instance_id: row.get("instance_id"),
            owner_id: row.get("owner_id"),
            owner_type: row.get("owner_type"),
            state: InstanceState::parse(&state),
            guest_location: row.get("guest_location"),
            cluster_id: row.get("cluster_id"),
            host: row.get("host"),
            resource_uri: row.get("resource_uri"),
            resources: row.get("resources"),
            job_id: row.get("job_id"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
            provisioned_at: row.get("provisioned_at"),
            deprovisioned_at: row.get("deprovisioned_at"),
        }
    }
}

/// How a job's end changes its instance.
#[derive(Debug, Clone)]
pub enum InstanceChange {
    /// No change.
    None,
    /// A provision succeeded.
    Provisioned {
        /// The provisioner tag that made it (the job may have named none).
        guest_location: String,
        /// Docker cluster.
        cluster_id: Option<String>,
        /// Docker host.
        host: Option<String>,
        /// Where the console talks to it.
        resource_uri: Option<String>,
        /// Names of what was made.
        resources: serde_json::Value,
    },
    /// A provision failed and removed what it made: the claim is dropped.
    Released,
    /// A deprovision succeeded.
    Deprovisioned,
    /// A deprovision failed part-way.
    Failed,
}

/// What a job that creates an instance (a provision, or an import into a new instance)
/// records when it claims the id.
#[derive(Debug, Clone)]
pub struct NewInstance<'a> {
    /// The instance id.
    pub instance_id: &'a InstanceId,
    /// Its owner.
    pub owner_id: &'a OwnerId,
    /// DFE's owner type.
    pub owner_type: Option<&'a OwnerId>,
    /// The provisioner tag the job named.
    pub guest_location: Option<&'a Tag>,
    /// The cluster the job named.
    pub cluster_id: Option<&'a Tag>,
}

impl<'a> From<&'a ProvisionJob> for NewInstance<'a> {
    fn from(p: &'a ProvisionJob) -> Self {
        NewInstance {
            instance_id: &p.instance_id,
            owner_id: &p.owner_id,
            owner_type: p.owner_type.as_ref(),
            guest_location: p.guest_location.as_ref(),
            cluster_id: p.cluster_id.as_ref(),
        }
    }
}

impl<'a> From<&'a ImportJob> for NewInstance<'a> {
    fn from(p: &'a ImportJob) -> Self {
        NewInstance {
            instance_id: &p.instance_id,
            owner_id: &p.owner_id,
            owner_type: p.owner_type.as_ref(),
            guest_location: p.guest_location.as_ref(),
            cluster_id: p.cluster_id.as_ref(),
        }
    }
}

/// Claims `p.instance_id` for job `job_id`: inserts the row, takes over a deprovisioned one,
/// or finds it already claimed by this job. False when another instance holds the id.
pub(crate) async fn claim_for_provision(
    tx: &impl deadpool_postgres::GenericClient,
    p: &NewInstance<'_>,
    job_id: &str,
) -> Result<bool> {
    let guest = p.guest_location.map(|g| g.as_str().to_owned()).unwrap_or_default();
    let owner = serde_json::to_value(p.owner_id).unwrap_or_default();
    let owner_type = p.owner_type.map(|o| serde_json::to_value(o).unwrap_or_default());
    let cluster = p.cluster_id.map(|c| c.as_str());
    let claim = super::stmt(
        tx,
        "INSERT INTO instances (instance_id, owner_id, owner_type, state, guest_location, cluster_id, job_id)
             VALUES ($1, $2, $3, 'provisioning', $4, $5, $6)
             ON CONFLICT (instance_id) DO UPDATE
                SET owner_id = EXCLUDED.owner_id, owner_type = EXCLUDED.owner_type,
                    state = 'provisioning', guest_location = EXCLUDED.guest_location,
                    cluster_id = EXCLUDED.cluster_id, job_id = EXCLUDED.job_id, host = NULL,
                    resource_uri = NULL, resources = '{}'::jsonb, created_at = now(),
                    updated_at = now(), provisioned_at = NULL, deprovisioned_at = NULL
                WHERE instances.state = 'deprovisioned' OR instances.job_id = EXCLUDED.job_id
             RETURNING instance_id",
    )
    .await?;
    let row = tx
        .query_opt(&claim, &[&p.instance_id.as_str(), &owner, &owner_type, &guest, &cluster, &job_id])
        .await
        .map_err(Error::registry("claiming an instance id"))?;
    Ok(row.is_some())
}

const INSTANCE_COLUMNS: &str = "instance_id, owner_id, owner_type, state, guest_location, cluster_id, \
     host, resource_uri, resources, job_id, created_at, updated_at, provisioned_at, deprovisioned_at";

impl Registry {
    /// Claims an instance id for a provision that arrived straight on the queue (the API
    /// claims at submission). False when another instance holds the id.
    pub async fn claim_instance(&self, p: &NewInstance<'_>, job_id: &str) -> Result<bool> {
        let client = self.client().await?;
        // Usually the api claimed it for this very job at submission: then a read answers,
        // without rewriting the row (a write and a commit per job).
        let sql = "SELECT 1 FROM instances WHERE instance_id = $1 AND job_id = $2 AND state = 'provisioning'";
        let mine = client
            .query_opt(&super::stmt(&client, sql).await?, &[&p.instance_id.as_str(), &job_id])
            .await
            .map_err(Error::registry("reading an instance claim"))?;
        if mine.is_some() {
            return Ok(true);
        }
        claim_for_provision(&client, p, job_id).await
    }

    /// The instance `instance_id`.
    pub async fn instance(&self, instance_id: &str) -> Result<Option<InstanceRecord>> {
        let client = self.client().await?;
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = $1");
        let row = client.query_opt(&sql, &[&instance_id]).await.map_err(Error::registry("reading an instance"))?;
        Ok(row.as_ref().map(InstanceRecord::from_row))
    }

    /// Instances, newest first; deprovisioned ones only when `include_removed`.
    pub async fn instances(&self, include_removed: bool, limit: i64) -> Result<Vec<InstanceRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE ($1 OR state <> 'deprovisioned')
             ORDER BY created_at DESC LIMIT $2"
        );
        let rows =
            client.query(&sql, &[&include_removed, &limit]).await.map_err(Error::registry("listing instances"))?;
        Ok(rows.iter().map(InstanceRecord::from_row).collect())
    }

    /// Marks an instance as being removed by `job_id`.
    pub async fn begin_deprovision(&self, instance_id: &str, job_id: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE instances SET state = 'deprovisioning', job_id = $2, updated_at = now()
                 WHERE instance_id = $1 AND state IN ('provisioned', 'failed', 'deprovisioning')",
                &[&instance_id, &job_id],
            )
            .await
            .map_err(Error::registry("marking an instance deprovisioning"))?;
        Ok(())
    }

    /// Ends job `job_id` and applies `change` to its instance, atomically. False when the
    /// job had already ended (a duplicate run): then nothing changes.
    pub async fn complete_job(
        &self,
        job_id: &str,
        instance_id: &str,
        state: JobState,
        result: Option<&serde_json::Value>,
        error: Option<&serde_json::Value>,
        change: InstanceChange,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(Error::registry("starting a job completion"))?;
        let finish = super::stmt(
            &tx,
            "UPDATE jobs SET state = $2, result = $3, error = $4, finished_at = now(), updated_at = now()
             WHERE job_id = $1 AND state NOT IN ('succeeded', 'failed')",
        )
        .await?;
        let n = tx
            .execute(&finish, &[&job_id, &state.as_str(), &result, &error])
            .await
            .map_err(Error::registry("finishing a job"))?;
        if n == 0 {
            return Ok(false);
        }
        let q = match &change {
            InstanceChange::None => None,
            InstanceChange::Provisioned { guest_location, cluster_id, host, resource_uri, resources } => Some(
                tx.execute(
                    &super::stmt(
                        &tx,
                        "UPDATE instances SET state = 'provisioned', cluster_id = coalesce($3, cluster_id),
                                host = $4, resource_uri = $5, resources = $6, guest_location = $7,
                                provisioned_at = now(), updated_at = now()
                         WHERE instance_id = $1 AND job_id = $2",
                    )
                    .await?,
                    &[&instance_id, &job_id, cluster_id, host, resource_uri, resources, guest_location],
                )
                .await,
            ),
            InstanceChange::Released => Some(
                tx.execute(
                    "DELETE FROM instances WHERE instance_id = $1 AND job_id = $2 AND state = 'provisioning'",
                    &[&instance_id, &job_id],
                )
                .await,
            ),
            InstanceChange::Deprovisioned => Some(
                tx.execute(
                    "UPDATE instances SET state = 'deprovisioned', deprovisioned_at = now(), updated_at = now(),
                            job_id = $2
                     WHERE instance_id = $1",
                    &[&instance_id, &job_id],
                )
                .await,
            ),
            InstanceChange::Failed => Some(
                tx.execute(
                    "UPDATE instances SET state = 'failed', updated_at = now(), job_id = $2 WHERE instance_id = $1",
                    &[&instance_id, &job_id],
                )
                .await,
            ),
        };
        if let Some(r) = q {
            r.map_err(Error::registry("updating an instance"))?;
        }
        tx.commit().await.map_err(Error::registry("committing a job completion"))?;
        Ok(true)
    }
}
