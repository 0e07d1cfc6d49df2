//! Reconciliations through the registry: the API holds no Docker or database-server
//! credentials, so `POST /api/v1/reconcile` records a request here, a worker takes it
//! ([`Registry::take_reconciliation`]), runs it and writes its report back; periodic
//! reconciliations of the workers write their reports here too, for `GET /api/v1/reconcile`.

use dfe_shared::records::{ReconcileReport, Reconciliation};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{json_column, Error, Registry, Result};

const COLUMNS: &str = "id, state, fix, requested_by, worker, requested_at, finished_at, report, error";

fn from_row(row: &Row) -> Result<Reconciliation> {
    let id: Uuid = row.get("id");
    let report: Option<serde_json::Value> = row.get("report");
    let report: Option<ReconcileReport> = match report {
        None => None,
        Some(_) => Some(json_column(row, "reconciliations", &id.to_string(), "report")?),
    };
    Ok(Reconciliation {
        id,
        state: row.get("state"),
        fix: row.get("fix"),
        requested_by: row.get("requested_by"),
        worker: row.get("worker"),
        requested_at: row.get("requested_at"),
        finished_at: row.get("finished_at"),
        report,
        error: row.get("error"),
    })
}

impl Registry {
    /// Asks for a reconciliation; a worker takes it within its polling interval.
    pub async fn request_reconciliation(&self, fix: bool, requested_by: &str) -> Result<Reconciliation> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO reconciliations (id, fix, state, requested_by) VALUES ($1, $2, 'requested', $3)
             RETURNING {COLUMNS}"
        );
        let row = client
            .query_one(&sql, &[&Uuid::new_v4(), &fix, &requested_by])
            .await
            .map_err(Error::query("requesting a reconciliation"))?;
        from_row(&row)
    }

    /// Takes the oldest requested reconciliation for `worker`, if any.
    pub async fn take_reconciliation(&self, worker: &str) -> Result<Option<Reconciliation>> {
        let client = self.client().await?;
        let sql = format!(
            "UPDATE reconciliations SET state = 'running', worker = $1, started_at = now()
             WHERE id = (SELECT id FROM reconciliations WHERE state = 'requested'
                          ORDER BY requested_at LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING {COLUMNS}"
        );
        let row = client
            .query_opt(&crate::stmt(&client, &sql).await?, &[&worker])
            .await
            .map_err(Error::query("taking a reconciliation"))?;
        row.as_ref().map(from_row).transpose()
    }

    /// Records a periodic reconciliation a worker ran on its own.
    pub async fn record_reconciliation(&self, worker: &str, fix: bool, report: &ReconcileReport) -> Result<()> {
        let client = self.client().await?;
        let report = serde_json::to_value(report).unwrap_or_default();
        client
            .execute(
                "INSERT INTO reconciliations (id, fix, state, requested_by, worker, started_at, finished_at, report)
                 VALUES ($1, $2, 'done', 'worker', $3, now(), now(), $4)",
                &[&Uuid::new_v4(), &fix, &worker, &report],
            )
            .await
            .map_err(Error::query("recording a reconciliation"))?;
        // Only recent history is worth keeping.
        client
            .execute(
                "DELETE FROM reconciliations WHERE state IN ('done', 'failed')
                   AND finished_at < now() - interval '7 days'",
                &[],
            )
            .await
            .map_err(Error::query("pruning old reconciliations"))?;
        Ok(())
    }

    /// Ends a taken reconciliation with its report, or with the error that stopped it.
    pub async fn finish_reconciliation(
        &self,
        id: Uuid,
        outcome: std::result::Result<&ReconcileReport, &str>,
    ) -> Result<()> {
        let client = self.client().await?;
        let (state, report, error) = match outcome {
            Ok(r) => ("done", Some(serde_json::to_value(r).unwrap_or_default()), None),
            Err(e) => ("failed", None, Some(e.to_owned())),
        };
        client
            .execute(
                "UPDATE reconciliations SET state = $2, report = $3, error = $4, finished_at = now() WHERE id = $1",
                &[&id, &state, &report, &error],
            )
            .await
            .map_err(Error::query("finishing a reconciliation"))?;
        Ok(())
    }

    /// A reconciliation by id.
    pub async fn reconciliation(&self, id: Uuid) -> Result<Option<Reconciliation>> {
        let client = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM reconciliations WHERE id = $1");
        let row = client.query_opt(&sql, &[&id]).await.map_err(Error::query("reading a reconciliation"))?;
        row.as_ref().map(from_row).transpose()
    }

    /// The last reconciliation that finished with a report.
    pub async fn last_reconciliation(&self) -> Result<Option<Reconciliation>> {
        let client = self.client().await?;
        let sql =
            format!("SELECT {COLUMNS} FROM reconciliations WHERE state = 'done' ORDER BY finished_at DESC LIMIT 1");
        let row = client.query_opt(&sql, &[]).await.map_err(Error::query("reading the last reconciliation"))?;
        row.as_ref().map(from_row).transpose()
    }
}
