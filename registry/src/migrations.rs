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
    // Placement and offerings are decided when an instance is claimed and recorded then, so
    // a redelivered job goes on where it started; who asked for a job is kept as such.
    r#"
ALTER TABLE instances ADD COLUMN host_id text;
ALTER TABLE instances ADD COLUMN database_server text;
ALTER TABLE instances ADD COLUMN offerings jsonb NOT NULL DEFAULT '{}'::jsonb;
UPDATE instances SET host_id = cluster_id WHERE host_id IS NULL;
UPDATE instances SET database_server = resources->>'database-server' WHERE database_server IS NULL;
UPDATE instances SET offerings = resources->'offerings'
 WHERE jsonb_typeof(resources->'offerings') = 'object';
CREATE INDEX instances_mid_operation ON instances (state) WHERE state IN ('provisioning', 'deprovisioning');

ALTER TABLE jobs ADD COLUMN requested_by text;
UPDATE jobs SET requested_by = coalesce(client_id, source);
ALTER TABLE jobs ALTER COLUMN requested_by SET NOT NULL;

-- Events a subscriber's queue refused (or whose confirm never came), retried on their own
-- with a backoff so that no job waits for them.
CREATE TABLE event_outbox (
    event_id        uuid PRIMARY KEY,
    routing_key     text NOT NULL,
    body            jsonb NOT NULL,
    job_id          text,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    abandoned_at    timestamptz
);
CREATE INDEX event_outbox_due ON event_outbox (next_attempt_at) WHERE abandoned_at IS NULL;

-- Reconciliations: asked for through the API (POST /api/v1/reconcile), or run periodically
-- by the workers, which write their reports here for GET /api/v1/reconcile.
CREATE TABLE reconciliations (
    id            uuid PRIMARY KEY,
    fix           boolean NOT NULL,
    state         text NOT NULL,
    requested_by  text NOT NULL,
    worker        text,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    report        jsonb,
    error         text
);
CREATE INDEX reconciliations_pending ON reconciliations (requested_at) WHERE state = 'requested';
CREATE INDEX reconciliations_finished ON reconciliations (finished_at DESC) WHERE state = 'done';
"#,
    // The fleet: the state of every Docker host and database server as the workers' probes
    // see it (limits and labels stay in the configuration), and what each instance
    // reserves, so that a claim can count what is placed where.
    r#"
CREATE TABLE hosts (
    host_id       text PRIMARY KEY,
    cluster_id    text NOT NULL,
    reachability  text NOT NULL DEFAULT 'pending',
    cordoned      boolean NOT NULL DEFAULT false,
    failures      integer NOT NULL DEFAULT 0,
    last_error    text,
    last_probe_at timestamptz,
    last_seen_at  timestamptz,
    probe_due_at  timestamptz NOT NULL DEFAULT now(),
    probed_by     text
);
CREATE TABLE database_servers (
    server_id     text PRIMARY KEY,
    engine        text NOT NULL,
    reachability  text NOT NULL DEFAULT 'pending',
    failures      integer NOT NULL DEFAULT 0,
    last_error    text,
    last_probe_at timestamptz,
    last_seen_at  timestamptz,
    probe_due_at  timestamptz NOT NULL DEFAULT now(),
    probed_by     text
);
ALTER TABLE instances ADD COLUMN memory_reserved bigint NOT NULL DEFAULT 0;
CREATE INDEX instances_placed_host ON instances (host_id) WHERE state <> 'deprovisioned';
CREATE INDEX instances_placed_server ON instances (database_server) WHERE state <> 'deprovisioned';
"#,
    // Lifecycle: expiries, the warnings sent before them (each once), and leases that let
    // one worker at a time run a schedule.
    r#"
ALTER TABLE instances ADD COLUMN expires_at timestamptz;
CREATE INDEX instances_expiring ON instances (expires_at) WHERE expires_at IS NOT NULL AND state <> 'deprovisioned';
CREATE INDEX instances_owner_live ON instances ((owner_id #>> '{}')) WHERE state <> 'deprovisioned';
CREATE TABLE lifecycle_warnings (
    instance_id text NOT NULL,
    expires_at  timestamptz NOT NULL,
    days        double precision NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, expires_at, days)
);
CREATE TABLE leases (
    name      text PRIMARY KEY,
    holder    text NOT NULL,
    until     timestamptz NOT NULL,
    taken_at  timestamptz NOT NULL DEFAULT now()
);
"#,
    // Access, pagination, cancel and traces: every job names its instance's owner (so that a
    // client limited to owners sees its deprovisions and exports too); lists are read a page
    // at a time by (created_at, id); a claim that moves an instance remembers where it came
    // from, so that cancelling the job hands it back; a job keeps the trace it was
    // submitted under.
    r#"
UPDATE jobs j SET owner_id = i.owner_id FROM instances i
 WHERE j.owner_id IS NULL AND i.instance_id = j.instance_id;
CREATE INDEX jobs_owner ON jobs ((owner_id #>> '{}'), created_at DESC, job_id DESC);
DROP INDEX IF EXISTS jobs_created;
CREATE INDEX jobs_page ON jobs (created_at DESC, job_id DESC);
CREATE INDEX instances_page ON instances (created_at DESC, instance_id DESC);
CREATE INDEX snapshots_page ON snapshots (created_at DESC, snapshot_id DESC);
ALTER TABLE instances ADD COLUMN previous_state text;
ALTER TABLE instances ADD COLUMN previous_job_id text;
ALTER TABLE jobs ADD COLUMN traceparent text;
"#,
    // Snapshots anywhere (a directory or a bucket: the key in the destination), encrypted or
    // not, and the schedule that made them; the leases' expiry named as elsewhere; and the slots of the schedules, each exported
    // by one job whose id derives from (schedule, instance, slot).
    r#"
ALTER TABLE snapshots ADD COLUMN key text;
UPDATE snapshots SET key = regexp_replace(path, '^.*/', '') WHERE key IS NULL;
ALTER TABLE snapshots ALTER COLUMN key SET NOT NULL;
ALTER TABLE snapshots ADD COLUMN encrypted boolean NOT NULL DEFAULT false;
ALTER TABLE snapshots ADD COLUMN schedule text;
CREATE INDEX snapshots_schedule ON snapshots (schedule, instance_id, created_at DESC) WHERE schedule IS NOT NULL;

-- The leases table came with the lifecycle (migration 6): one name for its expiry column.
ALTER TABLE leases RENAME COLUMN until TO expires_at;

CREATE TABLE schedule_slots (
    job_id       text PRIMARY KEY,
    schedule     text NOT NULL,
    instance_id  text NOT NULL,
    slot         bigint NOT NULL,
    submitted_at timestamptz,
    overdue_at   timestamptz,
    UNIQUE (schedule, instance_id, slot)
);
"#,
    // Retention of finished jobs (`registry.keep-finished-days`): the oldest finished jobs are
    // found in order of their end without reading the whole table.
    r#"
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('succeeded', 'failed');
"#,
];

/// Applies the migrations not yet recorded in `dfe_schema_migrations`.
pub(super) async fn apply(client: &mut Object) -> Result<()> {
    let tx = client.transaction().await.map_err(Error::query("starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(Error::query("taking the migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS dfe_schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(Error::query("creating dfe_schema_migrations"))?;
    let row = tx
        .query_one("SELECT coalesce(max(version), 0) FROM dfe_schema_migrations", &[])
        .await
        .map_err(Error::query("reading the schema version"))?;
    let current: i32 = row.get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        if version <= current {
            continue;
        }
        tx.batch_execute(sql).await.map_err(Error::query("applying a migration"))?;
        tx.execute("INSERT INTO dfe_schema_migrations (version) VALUES ($1)", &[&version])
            .await
            .map_err(Error::query("recording a migration"))?;
        tracing::info!(version, "registry migration applied");
    }
    tx.commit().await.map_err(Error::query("committing the migration"))
}
