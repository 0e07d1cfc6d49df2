//! Against the real PostgreSQL of `deploy/setup.sh`, in a database of its own: the retention
//! of finished jobs deletes old finished jobs with what hangs on them, in batches, and
//! keeps recent and unfinished jobs and every job something still refers to.

mod common;

use common::{drop_scratch, scratch, Scratch};

/// A job in `state` that finished `days_ago` days ago (`None`: it has not finished).
async fn job(db: &tokio_postgres::Client, id: &str, state: &str, days_ago: Option<i32>) {
    db.execute(
        "INSERT INTO jobs (job_id, kind, state, instance_id, request, source, requested_by, client_id,
                           idempotency_key, created_at, finished_at)
         VALUES ($1, 'provision', $2, 'inst-' || $1, '{}'::jsonb, 'api', 'tester', 'tester', 'key-' || $1,
                 now() - make_interval(days => coalesce($3, 0) + 1),
                 now() - make_interval(days => $3))",
        &[&id, &state, &days_ago],
    )
    .await
    .expect("insert job");
}

async fn remaining(db: &tokio_postgres::Client, table: &str, ids: &[&str]) -> Vec<String> {
    let ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    let rows = db
        .query(&format!("SELECT job_id FROM {table} WHERE job_id = ANY($1) ORDER BY job_id"), &[&ids])
        .await
        .expect("select");
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn old_finished_jobs_go_with_their_rows_while_recent_unfinished_and_referenced_ones_stay() {
    let name = format!("dfe_registry_history_{}", std::process::id());
    let Scratch { registry, db, .. } = scratch(&name).await;

    // Old and finished, nothing needs them: they go.
    job(&db, "old-ok", "succeeded", Some(40)).await;
    job(&db, "old-failed", "failed", Some(31)).await;
    // Recent, or not finished however old: they stay.
    job(&db, "recent", "succeeded", Some(5)).await;
    job(&db, "queued", "queued", None).await;
    job(&db, "running", "running", None).await;
    job(&db, "retrying", "retrying", None).await;
    // Old and finished, but something refers to them: they stay.
    for id in ["by-instance", "by-previous", "by-snapshot", "pending-event", "newest-slot"] {
        job(&db, id, "succeeded", Some(60)).await;
    }
    db.batch_execute(
        "INSERT INTO instances (instance_id, owner_id, state, guest_location, job_id, previous_job_id)
              VALUES ('inst-a', '\"o\"', 'provisioned', 'noop', 'by-instance', 'by-previous');
         INSERT INTO snapshots (snapshot_id, instance_id, job_id, destination, path, key, size, sha256, manifest)
              VALUES ('snap-1', 'inst-a', 'by-snapshot', 'default', '/s/snap-1', 'snap-1', 1, '00', '{}');
         -- An event still to be delivered keeps its job; one given up on goes with it.
         INSERT INTO event_outbox (event_id, routing_key, body, job_id)
              VALUES ('00000000-0000-0000-0000-000000000001', 'dfe.provisioned', '{}', 'pending-event');
         INSERT INTO event_outbox (event_id, routing_key, body, job_id, abandoned_at)
              VALUES ('00000000-0000-0000-0000-000000000002', 'dfe.provisioned', '{}', 'old-ok', now());
         -- The schedule's newest slot of an instance keeps its job; an older slot goes with it.
         INSERT INTO schedule_slots (job_id, schedule, instance_id, slot, submitted_at)
              VALUES ('old-failed', 'nightly', 'inst-a', 1, now()), ('newest-slot', 'nightly', 'inst-a', 2, now());",
    )
    .await
    .expect("dependents");

    // Retention off: nothing goes.
    assert_eq!(registry.delete_finished_jobs(0, 1_000).await.expect("retention off"), 0);

    let deleted = registry.delete_finished_jobs(30, 1_000).await.expect("retention");
    assert_eq!(deleted, 2);
    let all = [
        "old-ok",
        "old-failed",
        "recent",
        "queued",
        "running",
        "retrying",
        "by-instance",
        "by-previous",
        "by-snapshot",
        "pending-event",
        "newest-slot",
    ];
    assert_eq!(
        remaining(&db, "jobs", &all).await,
        [
            "by-instance",
            "by-previous",
            "by-snapshot",
            "newest-slot",
            "pending-event",
            "queued",
            "recent",
            "retrying",
            "running"
        ]
    );
    assert_eq!(remaining(&db, "event_outbox", &all).await, ["pending-event"]);
    assert_eq!(remaining(&db, "schedule_slots", &all).await, ["newest-slot"]);
    // The idempotency key went with its job: it is free again.
    let keys: i64 = db
        .query_one("SELECT count(*) FROM jobs WHERE idempotency_key IN ('key-old-ok', 'key-old-failed')", &[])
        .await
        .expect("keys")
        .get(0);
    assert_eq!(keys, 0);
    // A second run finds nothing more.
    assert_eq!(registry.delete_finished_jobs(30, 1_000).await.expect("again"), 0);

    drop(registry);
    drop_scratch(&name).await;
}

#[tokio::test]
async fn a_large_backlog_goes_in_bounded_batches_until_none_is_left() {
    let name = format!("dfe_registry_history_batches_{}", std::process::id());
    let Scratch { registry, db, .. } = scratch(&name).await;
    db.batch_execute(
        "INSERT INTO jobs (job_id, kind, state, instance_id, request, source, requested_by, created_at, finished_at)
         SELECT 'bulk-' || n, 'provision', 'succeeded', 'inst-' || n, '{}', 'queue', 'queue',
                now() - interval '50 days', now() - interval '45 days' + make_interval(secs => n)
           FROM generate_series(1, 2500) AS n;
         INSERT INTO jobs (job_id, kind, state, instance_id, request, source, requested_by, finished_at)
         SELECT 'fresh-' || n, 'provision', 'succeeded', 'inst-' || n, '{}', 'queue', 'queue', now()
           FROM generate_series(1, 10) AS n;",
    )
    .await
    .expect("backlog");
    assert_eq!(registry.delete_finished_jobs(30, 1_000).await.expect("retention"), 2500);
    let left: i64 = db.query_one("SELECT count(*) FROM jobs", &[]).await.expect("count").get(0);
    assert_eq!(left, 10);
    drop(registry);
    drop_scratch(&name).await;
}
