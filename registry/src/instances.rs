//! Instance rows: reading and listing. Claims and the changes a job's end makes live in
//! [`crate::transitions`].

use dfe_shared::records::{InstanceRecord, InstanceState};
use tokio_postgres::Row;

use crate::{json_column, parse_column, After, Error, Page, Paged, Registry, Result};

pub(crate) const INSTANCE_COLUMNS: &str = "instance_id, owner_id, owner_type, state, guest_location, cluster_id, \
     host_id, database_server, offerings, resource_uri, resources, job_id, created_at, updated_at, provisioned_at, \
     deprovisioned_at, expires_at";

/// Reads an instance row; an unknown state or an unreadable owner is an error.
pub(crate) fn instance_from_row(row: &Row) -> Result<InstanceRecord> {
    let id: String = row.get("instance_id");
    let owner_type: Option<serde_json::Value> = row.get("owner_type");
    let owner_type = match owner_type {
        None | Some(serde_json::Value::Null) => None,
        Some(_) => Some(json_column(row, "instances", &id, "owner_type")?),
    };
    Ok(InstanceRecord {
        owner_id: json_column(row, "instances", &id, "owner_id")?,
        owner_type,
        state: parse_column::<InstanceState>(row, "instances", &id, "state")?,
        guest_location: row.get("guest_location"),
        cluster_id: row.get("cluster_id"),
        host_id: row.get("host_id"),
        database_server: row.get("database_server"),
        offerings: json_column(row, "instances", &id, "offerings")?,
        resource_uri: row.get("resource_uri"),
        resources: row.get("resources"),
        job_id: row.get("job_id"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        provisioned_at: row.get("provisioned_at"),
        deprovisioned_at: row.get("deprovisioned_at"),
        expires_at: row.get("expires_at"),
        instance_id: id,
    })
}

/// Which instances a list shows.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter<'a> {
    /// Only in this state (deprovisioned included when it is the state asked for).
    pub state: Option<InstanceState>,
    /// Deprovisioned ones too (when no state is asked for).
    pub include_removed: bool,
    /// Only this owner's (as text).
    pub owner_id: Option<&'a str>,
    /// Only those placed on this Docker host.
    pub host_id: Option<&'a str>,
    /// Only those of these owners (what a client limited to owners may see).
    pub owners: Option<&'a [String]>,
}

impl Registry {
    /// The instance `instance_id`.
    pub async fn instance(&self, instance_id: &str) -> Result<Option<InstanceRecord>> {
        let client = self.client().await?;
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = $1");
        let row = client
            .query_opt(&crate::stmt(&client, &sql).await?, &[&instance_id])
            .await
            .map_err(Error::query("reading an instance"))?;
        row.as_ref().map(instance_from_row).transpose()
    }

    /// A page of the instances that pass `filter`, newest first.
    pub async fn instances(&self, filter: &InstanceFilter<'_>, page: &Page) -> Result<Paged<InstanceRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances
             WHERE (CASE WHEN $1::text IS NULL THEN $2 OR state <> 'deprovisioned' ELSE state = $1 END)
               AND ($3::text IS NULL OR owner_id #>> '{{}}' = $3)
               AND ($4::text IS NULL OR host_id = $4)
               AND ($5::text[] IS NULL OR owner_id #>> '{{}}' = ANY($5))
               AND ($6::timestamptz IS NULL OR (created_at, instance_id) < ($6, $7::text))
             ORDER BY created_at DESC, instance_id DESC LIMIT $8"
        );
        let state = filter.state.map(InstanceState::as_str);
        let (at, id) = page.after.as_ref().map(|a| (a.created_at, a.id.as_str())).unzip();
        let rows = client
            .query(
                &sql,
                &[
                    &state,
                    &filter.include_removed,
                    &filter.owner_id,
                    &filter.host_id,
                    &filter.owners,
                    &at,
                    &id,
                    &(page.limit + 1),
                ],
            )
            .await
            .map_err(Error::query("listing instances"))?;
        let instances = rows.iter().map(instance_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Paged::of(instances, page, |i| After { created_at: i.created_at, id: i.instance_id.clone() }))
    }

    /// Every instance that is not deprovisioned (for the reconciler, which compares all of
    /// them with the hosts).
    pub async fn live_instances(&self) -> Result<Vec<InstanceRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE state <> 'deprovisioned'
             ORDER BY created_at DESC, instance_id DESC"
        );
        let rows = client.query(&sql, &[]).await.map_err(Error::query("listing instances"))?;
        rows.iter().map(instance_from_row).collect()
    }

    /// Instances left mid-operation (`provisioning`, `deprovisioning`) by a job that has
    /// ended, or by no job at all: nothing will move them on, so the reconciler does.
    pub async fn abandoned_instances(&self) -> Result<Vec<InstanceRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances i
             WHERE state IN ('provisioning', 'deprovisioning')
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = i.job_id
                                 AND j.state NOT IN ('succeeded', 'failed'))
             ORDER BY created_at"
        );
        let rows = client.query(&sql, &[]).await.map_err(Error::query("listing abandoned instances"))?;
        rows.iter().map(instance_from_row).collect()
    }
}
