//! Against the real PostgreSQL of `deploy/setup.sh`, in a database of its own: the api's
//! submission, which begins its transaction in the round trip of its first statements and
//! sends the placement's locks with their reads, records a job with its claim or not at all,
//! never leaves a refused job's transaction on a pooled connection, and keeps quotas and
//! placement limits exact under concurrent submissions.

use std::collections::BTreeMap;

use dfe_registry::{Registry, SubmitOutcome, Submitter};
use dfe_shared::config::PlacementPolicy;
use dfe_shared::job::JobKind;
use dfe_shared::placement::{ClusterPlan, HostLimits, Plan, ServerLimits};
use serde_json::json;

mod common;

use common::{drop_scratch, job, scratch, Scratch};

const API: Submitter<'static> = Submitter {
    source: "api",
    requested_by: "test",
    idempotency_key: None,
    fingerprint: None,
    traceparent: None,
    owners: None,
};

/// A plan without placement (the `noop` provisioner's).
fn plain() -> Plan {
    Plan {
        guest_location: "noop".into(),
        offerings: BTreeMap::new(),
        cluster: None,
        servers: Vec::new(),
        memory: 0,
        quota: None,
        ttl_days: None,
    }
}

fn refusal(outcome: &SubmitOutcome) -> Option<&'static str> {
    match outcome {
        SubmitOutcome::Refused(r) => Some(r.code),
        _ => None,
    }
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect("count").get(0)
}

#[tokio::test]
async fn a_submission_records_its_job_with_its_claim_or_nothing() {
    let name = format!("dfe_registry_submission_{}", std::process::id());
    let Scratch { url, db, .. } = scratch(&name).await;
    // One connection: every submission below reuses the one a refusal rolled back.
    let registry = Registry::connect(&url, 1).await.expect("registry");
    // A transaction left open would hold the instance's row lock: fail, not hang.
    db.batch_execute("SET lock_timeout = '10s'").await.expect("lock_timeout");
    let plan = plain();
    let p1 = job(JobKind::Provision, json!({"job-id": "p1", "owner-id": 7, "instance-id": "acme"}));

    let created = registry.submit(&p1, &API, Some(&plan)).await.expect("submit");
    assert!(matches!(&created, SubmitOutcome::Created(r) if r.job_id == "p1"), "{created:?}");
    let row = db
        .query_one("SELECT i.state, i.job_id, j.state FROM instances i JOIN jobs j USING (instance_id)", &[])
        .await
        .expect("claim");
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2)),
        ("provisioning".into(), "p1".into(), "queued".into()),
        "the job and its claim, committed together"
    );

    // The same request again is that job; the same id with another body is a conflict.
    let again = registry.submit(&p1, &API, Some(&plan)).await.expect("submit");
    assert!(matches!(&again, SubmitOutcome::Existing(r) if r.job_id == "p1"), "{again:?}");
    let other = job(JobKind::Provision, json!({"job-id": "p1", "owner-id": 7, "instance-id": "other"}));
    let conflict = registry.submit(&other, &API, Some(&plan)).await.expect("submit");
    assert!(matches!(&conflict, SubmitOutcome::Conflict(m) if m.contains("p1")), "{conflict:?}");

    // Refusals by the claim: nothing of them is recorded.
    let ghost = job(JobKind::Deprovision, json!({"job-id": "d1", "instance-id": "ghost"}));
    let refused = registry.submit(&ghost, &API, None).await.expect("submit");
    assert_eq!(refusal(&refused), Some("instance-not-found"), "{refused:?}");
    let taken = job(JobKind::Provision, json!({"job-id": "p2", "owner-id": 8, "instance-id": "acme"}));
    let refused = registry.submit(&taken, &API, Some(&plan)).await.expect("submit");
    assert_eq!(refusal(&refused), Some("instance-exists"), "{refused:?}");

    // A refusal by another job under way: the instance is provisioned, its provision
    // still queued, and an export would start beside it.
    db.execute("UPDATE instances SET state = 'provisioned' WHERE instance_id = 'acme'", &[]).await.expect("set");
    let export = job(JobKind::Export, json!({"job-id": "e1", "instance-id": "acme"}));
    let refused = registry.submit(&export, &API, None).await.expect("submit");
    assert!(
        matches!(&refused, SubmitOutcome::Refused(r) if r.code == "instance-busy" && r.message.contains("job p1")),
        "{refused:?}"
    );

    // The connection those refusals rolled back serves the next submission, which commits
    // alone: had a refused transaction stayed open on it, its rows would commit now too.
    let p3 = job(JobKind::Provision, json!({"job-id": "p3", "owner-id": 7, "instance-id": "beta"}));
    let created = registry.submit(&p3, &API, Some(&plan)).await.expect("submit");
    assert!(matches!(created, SubmitOutcome::Created(_)), "{created:?}");
    let jobs: Vec<String> = db
        .query("SELECT job_id FROM jobs ORDER BY job_id", &[])
        .await
        .expect("jobs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(jobs, ["p1", "p3"], "only the accepted jobs are recorded");
    assert_eq!(count(&db, "SELECT count(*) FROM instances").await, 2, "acme and beta; no ghost, no other");
    let idle = count(&db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'");
    assert_eq!(idle.await, 0, "no connection is left inside a transaction");

    drop(registry);
    drop_scratch(&name).await;
}

#[tokio::test]
async fn concurrent_submissions_keep_quotas_and_placement_limits_exact() {
    let name = format!("dfe_registry_submission_limits_{}", std::process::id());
    let Scratch { url, db, .. } = scratch(&name).await;
    let registry = Registry::connect(&url, 10).await.expect("registry");
    db.batch_execute(
        "INSERT INTO hosts (host_id, cluster_id, reachability) VALUES ('h1', 'c', 'active'), ('h2', 'c', 'active');
         INSERT INTO database_servers (server_id, engine, reachability) VALUES ('s1', 'postgres', 'active')",
    )
    .await
    .expect("fleet");
    let host = |id: &str| HostLimits {
        host_id: id.into(),
        max_instances: Some(3),
        memory_budget: None,
        labels: BTreeMap::new(),
    };
    // Six places on the hosts, four databases on the server, a quota of five: the server
    // is the limit, and spreading puts two on each host.
    let placed = Plan {
        cluster: Some(ClusterPlan {
            cluster_id: "c".into(),
            policy: PlacementPolicy::Spread,
            hosts: vec![host("h1"), host("h2")],
            required_labels: BTreeMap::new(),
        }),
        servers: vec![ServerLimits { server_id: "s1".into(), max_databases: Some(4) }],
        quota: Some(("7".into(), 5)),
        ..plain()
    };
    let submit_all = |owner: u32, plan: Plan| {
        let registry = registry.clone();
        async move {
            let submissions = (0..10).map(|n| {
                let (registry, plan) = (registry.clone(), plan.clone());
                tokio::spawn(async move {
                    let j = job(
                        JobKind::Provision,
                        json!({"job-id": format!("o{owner}-{n}"), "owner-id": owner, "instance-id": format!("o{owner}-i{n}")}),
                    );
                    registry.submit(&j, &API, Some(&plan)).await.expect("submit")
                })
            });
            let mut codes = BTreeMap::<&'static str, usize>::new();
            for outcome in futures::future::join_all(submissions).await {
                let outcome = outcome.expect("a submission's task");
                *codes.entry(refusal(&outcome).unwrap_or("created")).or_default() += 1;
            }
            codes
        }
    };
    let codes = submit_all(7, placed).await;
    assert_eq!(codes, BTreeMap::from([("created", 4), ("no-capacity", 6)]));
    let spread: Vec<(String, i64)> = db
        .query("SELECT host_id || '/' || database_server, count(*) FROM instances GROUP BY 1 ORDER BY 1", &[])
        .await
        .expect("placement")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(spread, [("h1/s1".to_owned(), 2), ("h2/s1".to_owned(), 2)]);

    // The quota alone (no placement): two for owner 8, however many ask at once.
    let codes = submit_all(8, Plan { quota: Some(("8".into(), 2)), ..plain() }).await;
    assert_eq!(codes, BTreeMap::from([("created", 2), ("quota-exceeded", 8)]));
    assert_eq!(count(&db, "SELECT count(*) FROM jobs").await, 6, "a refused job is not recorded");

    drop(registry);
    drop_scratch(&name).await;
}
