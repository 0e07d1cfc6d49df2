//! Snapshots in the registry: one row per archive an export wrote.

use dfe_shared::records::SnapshotRecord;
use tokio_postgres::Row;

use crate::{Error, Registry, Result};

const COLUMNS: &str =
    "snapshot_id, instance_id, owner_id, job_id, destination, path, size, sha256, manifest, created_at";

fn snapshot_from_row(row: &Row) -> Result<SnapshotRecord> {
    let id: String = row.get("snapshot_id");
    let owner: Option<serde_json::Value> = row.get("owner_id");
    let owner_id = match owner {
        None | Some(serde_json::Value::Null) => None,
        Some(_) => Some(crate::json_column(row, "snapshots", &id, "owner_id")?),
    };
    Ok(SnapshotRecord {
        snapshot_id: id,
        instance_id: row.get("instance_id"),
        owner_id,
        job_id: row.get("job_id"),
        destination: row.get("destination"),
        size: row.get("size"),
        sha256: row.get("sha256"),
        manifest: row.get("manifest"),
        created_at: row.get("created_at"),
        path: row.get("path"),
    })
}

impl Registry {
    /// Records a written snapshot (idempotent: a redelivered export rewrites the same id).
    pub async fn record_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let client = self.client().await?;
        let owner = s.owner_id.as_ref().map(|o| serde_json::to_value(o).unwrap_or_default());
        client
            .execute(
                "INSERT INTO snapshots (snapshot_id, instance_id, owner_id, job_id, destination, path, size, sha256, manifest)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (snapshot_id) DO UPDATE SET path = EXCLUDED.path, size = EXCLUDED.size,
                     sha256 = EXCLUDED.sha256, manifest = EXCLUDED.manifest, created_at = now()",
                &[&s.snapshot_id, &s.instance_id, &owner, &s.job_id, &s.destination, &s.path, &s.size, &s.sha256, &s.manifest],
            )
            .await
            .map_err(Error::query("recording a snapshot"))?;
        Ok(())
    }

    /// The snapshot `id`.
    pub async fn snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>> {
        let client = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM snapshots WHERE snapshot_id = $1");
        let row = client.query_opt(&sql, &[&id]).await.map_err(Error::query("reading a snapshot"))?;
        row.as_ref().map(snapshot_from_row).transpose()
    }

    /// Snapshots, newest first, optionally of one instance and/or one owner (as text).
    pub async fn snapshots(
        &self,
        instance_id: Option<&str>,
        owner_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SnapshotRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM snapshots
             WHERE ($1::text IS NULL OR instance_id = $1)
               AND ($2::text IS NULL OR owner_id #>> '{{}}' = $2)
             ORDER BY created_at DESC LIMIT $3"
        );
        let rows =
            client.query(&sql, &[&instance_id, &owner_id, &limit]).await.map_err(Error::query("listing snapshots"))?;
        rows.iter().map(snapshot_from_row).collect()
    }
}
