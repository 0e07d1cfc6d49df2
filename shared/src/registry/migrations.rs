//! Schema migrations, applied in order under a transaction-scoped advisory lock so that an
//! api and several workers starting together migrate exactly once.

use deadpool_postgres::Object;

use crate::{Error, Result};

/// Advisory-lock key of the migration lock ("dfemigr").
const MIGRATION_LOCK: i64 = 0x0064_6665_6d69_6772;

/// The migrations, in order; a version is its index + 1. Never edit a released one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jobs (
    job_id          text PRIMARY KEY,
    kind            text NOT NULL,
    state           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    instance_id     text NOT NULL,
    owner_id        jsonb,
    request         jsonb NOT NULL,
    result          jsonb,
    error           jsonb,
    source          text NOT NULL,
    client_id       text,
    idempotency_key text,
    fingerprint     text,
    worker          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (client_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_unpublished ON jobs (created_at) WHERE published_at IS NULL;
CREATE INDEX jobs_instance ON jobs (instance_id, created_at);
CREATE INDEX jobs_fingerprint ON jobs (fingerprint) WHERE fingerprint IS NOT NULL;
CREATE INDEX jobs_created ON jobs (created_at DESC);

CREATE TABLE instances (
    instance_id      text PRIMARY KEY,
    owner_id         jsonb NOT NULL,
    owner_type       jsonb,
    state            text NOT NULL,
    guest_location   text NOT NULL,
    cluster_id       text,
    host             text,
    resource_uri     text,
    resources        jsonb NOT NULL DEFAULT '{}'::jsonb,
    job_id           text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    provisioned_at   timestamptz,
    deprovisioned_at timestamptz
);
CREATE INDEX instances_owner ON instances (owner_id);
"#,
    r#"
CREATE TABLE snapshots (
    snapshot_id  text PRIMARY KEY,
    instance_id  text NOT NULL,
    owner_id     jsonb,
    job_id       text NOT NULL,
    destination  text NOT NULL,
    path         text NOT NULL,
    size         bigint NOT NULL,
    sha256       text NOT NULL,
    manifest     jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX snapshots_instance ON snapshots (instance_id, created_at DESC);
CREATE INDEX snapshots_owner ON snapshots (owner_id);
"#,
    r#"
ALTER TABLE jobs ADD COLUMN next_retry_at timestamptz;
ALTER TABLE jobs ADD COLUMN deadline_at timestamptz;
"#,
];

/// Applies the migrations not yet recorded in `dfe_schema_migrations`.
pub(super) async fn apply(client: &mut Object) -> Result<()> {
    let tx = client.transaction().await.map_err(Error::registry("starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(Error::registry("taking the migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS dfe_schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(Error::registry("creating dfe_schema_migrations"))?;
    let row = tx
        .query_one("SELECT coalesce(max(version), 0) FROM dfe_schema_migrations", &[])
        .await
        .map_err(Error::registry("reading the schema version"))?;
    let current: i32 = row.get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        if version <= current {
            continue;
        }
        tx.batch_execute(sql).await.map_err(Error::registry("applying a migration"))?;
        tx.execute("INSERT INTO dfe_schema_migrations (version) VALUES ($1)", &[&version])
            .await
            .map_err(Error::registry("recording a migration"))?;
        tracing::info!(version, "registry migration applied");
    }
    tx.commit().await.map_err(Error::registry("committing the migration"))
}
