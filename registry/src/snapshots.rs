//! Snapshots in the registry: one row per archive an export wrote, recorded only once the
//! archive is complete in its destination, and removed together with it.

use dfe_shared::records::SnapshotRecord;
use dfe_shared::store::Stores;
use tokio_postgres::Row;

use crate::{After, Error, Page, Paged, Registry, Result};

/// Which snapshots a list shows.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter<'a> {
    /// Only this instance's.
    pub instance_id: Option<&'a str>,
    /// Only this owner's (as text).
    pub owner_id: Option<&'a str>,
    /// Only those of these owners (what a client limited to owners may see).
    pub owners: Option<&'a [String]>,
}

const COLUMNS: &str = "snapshot_id, instance_id, owner_id, job_id, destination, key, encrypted, schedule, path, \
     size, sha256, manifest, created_at";

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
        key: row.get("key"),
        encrypted: row.get("encrypted"),
        schedule: row.get("schedule"),
        size: row.get("size"),
        sha256: row.get("sha256"),
        manifest: row.get("manifest"),
        created_at: row.get("created_at"),
        path: row.get("path"),
    })
}

impl Registry {
    /// Records a written snapshot (idempotent: a redelivered export rewrites the same id).
    /// Its schedule is the one its job was submitted by (`requested-by: schedule:<name>`).
    pub async fn record_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let client = self.client().await?;
        let owner = s.owner_id.as_ref().map(|o| serde_json::to_value(o).unwrap_or_default());
        client
            .execute(
                "INSERT INTO snapshots (snapshot_id, instance_id, owner_id, job_id, destination, path, size, sha256,
                                        manifest, key, encrypted, schedule)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                         (SELECT substr(requested_by, 10) FROM jobs WHERE job_id = $4 AND requested_by LIKE 'schedule:%'))
                 ON CONFLICT (snapshot_id) DO UPDATE SET path = EXCLUDED.path, size = EXCLUDED.size,
                     sha256 = EXCLUDED.sha256, manifest = EXCLUDED.manifest, key = EXCLUDED.key,
                     encrypted = EXCLUDED.encrypted, destination = EXCLUDED.destination, created_at = now()",
                &[
                    &s.snapshot_id,
                    &s.instance_id,
                    &owner,
                    &s.job_id,
                    &s.destination,
                    &s.path,
                    &s.size,
                    &s.sha256,
                    &s.manifest,
                    &s.key,
                    &s.encrypted,
                ],
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

    /// A page of the snapshots that pass `filter`, newest first.
    pub async fn snapshots(&self, filter: &SnapshotFilter<'_>, page: &Page) -> Result<Paged<SnapshotRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM snapshots
             WHERE ($1::text IS NULL OR instance_id = $1)
               AND ($2::text IS NULL OR owner_id #>> '{{}}' = $2)
               AND ($3::text[] IS NULL OR owner_id #>> '{{}}' = ANY($3))
               AND ($4::timestamptz IS NULL OR (created_at, snapshot_id) < ($4, $5::text))
             ORDER BY created_at DESC, snapshot_id DESC LIMIT $6"
        );
        let (at, id) = page.after.as_ref().map(|a| (a.created_at, a.id.as_str())).unzip();
        let rows = client
            .query(&sql, &[&filter.instance_id, &filter.owner_id, &filter.owners, &at, &id, &(page.limit + 1)])
            .await
            .map_err(Error::query("listing snapshots"))?;
        let snapshots = rows.iter().map(snapshot_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Paged::of(snapshots, page, |s| After { created_at: s.created_at, id: s.snapshot_id.clone() }))
    }

    /// Every snapshot a schedule made, newest first.
    pub async fn scheduled_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM snapshots WHERE schedule IS NOT NULL ORDER BY created_at DESC, snapshot_id DESC"
        );
        let rows = client.query(&sql, &[]).await.map_err(Error::query("listing scheduled snapshots"))?;
        rows.iter().map(snapshot_from_row).collect()
    }

    /// The id of the newest snapshot of each of `instances`, whatever made it.
    pub async fn newest_snapshots(&self, instances: &[String]) -> Result<std::collections::HashMap<String, String>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT ON (instance_id) instance_id, snapshot_id FROM snapshots
                 WHERE instance_id = ANY($1) ORDER BY instance_id, created_at DESC, snapshot_id DESC",
                &[&instances],
            )
            .await
            .map_err(Error::query("finding the newest snapshots"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Removes snapshot `id`, its archive and its row together: the row is locked, the
    /// archive removed from its destination, and only then the row deleted, so no row ever
    /// names an archive that is gone. A destination that refuses leaves both. `None` when
    /// the registry knows no such snapshot.
    pub async fn remove_snapshot(&self, stores: &Stores, id: &str) -> Result<Option<SnapshotRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(Error::query("starting a snapshot removal"))?;
        let sql = format!("SELECT {COLUMNS} FROM snapshots WHERE snapshot_id = $1 FOR UPDATE");
        let row = tx.query_opt(&sql, &[&id]).await.map_err(Error::query("reading a snapshot"))?;
        let Some(record) = row.as_ref().map(snapshot_from_row).transpose()? else { return Ok(None) };
        let store = stores.get(Some(&record.destination)).ok_or_else(|| {
            Error::Store(Box::new(dfe_shared::Error::Config(format!(
                "snapshot {id} is in destination {:?}, which is no longer configured",
                record.destination
            ))))
        })?;
        store.delete(&record.key).await.map_err(|e| Error::Store(Box::new(e)))?;
        tx.execute("DELETE FROM snapshots WHERE snapshot_id = $1", &[&id])
            .await
            .map_err(Error::query("deleting a snapshot"))?;
        tx.commit().await.map_err(Error::query("committing a snapshot removal"))?;
        Ok(Some(record))
    }
}
