//! Snapshots in the registry: one row per archive an export wrote.

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::Registry;
use crate::{Error, Result};

/// A snapshot as the registry holds it (and `GET /api/v1/snapshots/{id}` shows it).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotRecord {
    /// The snapshot id.
    pub snapshot_id: String,
    /// The exported instance.
    pub instance_id: String,
    /// Its owner.
    pub owner_id: Option<serde_json::Value>,
    /// The export job.
    pub job_id: String,
    /// The store it is in (`default` or a named destination).
    pub destination: String,
    /// Size of the archive in bytes.
    pub size: i64,
    /// SHA-256 (hex) of the archive.
    pub sha256: String,
    /// The archive's `snapshot.json`.
    pub manifest: serde_json::Value,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Where the file is on the store's host (not shown to clients).
    #[serde(skip)]
    pub path: String,
}

const COLUMNS: &str =
    "snapshot_id, instance_id, owner_id, job_id, destination, path, size, sha256, manifest, created_at";

impl SnapshotRecord {
    fn from_row(row: &Row) -> SnapshotRecord {
        SnapshotRecord {
            snapshot_id: row.get("snapshot_id"),
            instance_id: row.get("instance_id"),
            owner_id: row.get("owner_id"),
            job_id: row.get("job_id"),
            destination: row.get("destination"),
            size: row.get("size"),
            sha256: row.get("sha256"),
            manifest: row.get("manifest"),
            created_at: row.get("created_at"),
            path: row.get("path"),
        }
    }
}

impl Registry {
    /// Records a written snapshot (idempotent: a redelivered export rewrites the same id).
    pub async fn record_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO snapshots (snapshot_id, instance_id, owner_id, job_id, destination, path, size, sha256, manifest)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (snapshot_id) DO UPDATE SET path = EXCLUDED.path, size = EXCLUDED.size,
                     sha256 = EXCLUDED.sha256, manifest = EXCLUDED.manifest, created_at = now()",
                &[&s.snapshot_id, &s.instance_id, &s.owner_id, &s.job_id, &s.destination, &s.path, &s.size, &s.sha256, &s.manifest],
            )
            .await
            .map_err(Error::registry("recording a snapshot"))?;
        Ok(())
    }

    /// The snapshot `id`.
    pub async fn snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>> {
        let client = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM snapshots WHERE snapshot_id = $1");
        let row = client.query_opt(&sql, &[&id]).await.map_err(Error::registry("reading a snapshot"))?;
        Ok(row.as_ref().map(SnapshotRecord::from_row))
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
        let rows = client
            .query(&sql, &[&instance_id, &owner_id, &limit])
            .await
            .map_err(Error::registry("listing snapshots"))?;
        Ok(rows.iter().map(SnapshotRecord::from_row).collect())
    }
}
