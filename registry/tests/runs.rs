//! Against the real PostgreSQL of `deploy/setup.sh`, in a database of its own: a worker's
//! run of a job is recorded, locked and started in one statement, waits while another run
//! holds the instance, finds an ended job ended and another kind's id taken, and its end
//! records the outcome with the instance's change and then frees the instance.

use std::time::Duration;

use dfe_registry::{Ending, Entry, LockPool, RunBy, Submitter, Transition};
use dfe_shared::job::JobKind;
use dfe_shared::records::{InstanceState, JobState};
use serde_json::json;

mod common;

use common::{drop_scratch, job, scratch, Scratch};

const QUEUE: Submitter<'static> = Submitter {
    source: "queue",
    requested_by: "queue",
    idempotency_key: None,
    fingerprint: None,
    traceparent: None,
    owners: None,
};

fn by(worker: &str, wait_ms: u64) -> RunBy<'_> {
    RunBy { worker, deadline_secs: 60.0, lock_wait: Duration::from_millis(wait_ms) }
}

#[tokio::test]
async fn a_run_is_recorded_locked_and_started_at_once_and_its_end_frees_the_instance() {
    let name = format!("dfe_registry_runs_{}", std::process::id());
    let Scratch { registry, url, db } = scratch(&name).await;
    let (one, two) = (LockPool::new(&url, 2).expect("pool"), LockPool::new(&url, 2).expect("pool"));

    // A new job straight off the queue: recorded running, attempt 1, the owner kept.
    let provision = job(JobKind::Provision, json!({"job-id": "j1", "owner-id": 7, "instance-id": "acme"}));
    let Entry::Started(entered, lock) = one.enter(&provision, "acme", &QUEUE, &by("w1", 0)).await.expect("enter")
    else {
        panic!("the first run of a new job starts");
    };
    assert_eq!((entered.record.state, entered.record.attempts), (JobState::Running, 1));
    assert!(entered.instance.is_none(), "no instance yet: the claim will make it");
    assert_eq!(entered.owner_id, Some(json!(7)));
    let row = db
        .query_one("SELECT state, worker, deadline_at IS NOT NULL FROM jobs WHERE job_id = 'j1'", &[])
        .await
        .expect("query");
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, bool>(2)),
        ("running".into(), "w1".into(), true)
    );

    // A second delivery of it while the first runs: the instance stays locked, so after its
    // wait it is told so; the job was neither started again nor duplicated.
    let Entry::Busy(busy) = two.enter(&provision, "acme", &QUEUE, &by("w2", 300)).await.expect("enter") else {
        panic!("a run of a locked instance waits and is then busy");
    };
    assert_eq!((busy.record.state, busy.record.attempts), (JobState::Running, 1));
    // Another job on the same instance is recorded queued while it waits.
    let other = job(JobKind::Export, json!({"job-id": "j2", "instance-id": "acme"}));
    let Entry::Busy(queued) = two.enter(&other, "acme", &QUEUE, &by("w2", 0)).await.expect("enter") else {
        panic!("busy");
    };
    assert_eq!((queued.record.state, queued.record.attempts), (JobState::Queued, 0));
    assert_eq!(queued.owner_id, None, "no owner in the request and no instance yet");

    // The end: the job and its instance change in one statement, then the lock is freed.
    db.execute(
        "INSERT INTO instances (instance_id, owner_id, state, guest_location, job_id)
         VALUES ('acme', '7'::jsonb, 'provisioning', 'noop', 'j1')",
        &[],
    )
    .await
    .expect("insert");
    let result = json!({"container": "dfe-acme"});
    let ending = Ending {
        state: JobState::Succeeded,
        result: &result,
        error: None,
        transition: Transition::Provisioned { resource_uri: Some("http://acme".into()), resources: result.clone() },
    };
    assert!(lock.complete_and_release("j1", "acme", &ending).await.expect("end"));
    let acme = registry.instance("acme").await.expect("read").expect("instance");
    assert_eq!((acme.state, acme.resource_uri.as_deref()), (InstanceState::Provisioned, Some("http://acme")));
    assert_eq!(registry.job("j1").await.expect("read").expect("present").state, JobState::Succeeded);

    // Freed: the waiting job starts now, and it finds its owner through the instance.
    let Entry::Started(started, lock) = two.enter(&other, "acme", &QUEUE, &by("w2", 0)).await.expect("enter") else {
        panic!("the instance is free after the end");
    };
    assert_eq!((started.record.state, started.record.attempts), (JobState::Running, 1));
    // Read after the lock was granted: what the lock's last holder committed is seen.
    let seen = started.instance.as_ref().map(|i| (i.state, i.job_id.clone()));
    assert_eq!(seen, Some((InstanceState::Provisioned, "j1".to_owned())), "the instance under the lock");
    let none = Ending { state: JobState::Failed, result: &json!({}), error: None, transition: Transition::None };
    assert!(lock.complete_and_release("j2", "acme", &none).await.expect("end"));

    // An ended job is found ended (its outcome is announced again) and not started, and
    // its lock is not kept: the next run on the instance takes it.
    let Entry::Ended(ended) = one.enter(&provision, "acme", &QUEUE, &by("w1", 0)).await.expect("enter") else {
        panic!("an ended job is not run again");
    };
    assert_eq!((ended.record.state, ended.record.attempts), (JobState::Succeeded, 1));
    // Its id on a message of another kind is not that job.
    let impostor = job(JobKind::Deprovision, json!({"job-id": "j1", "instance-id": "acme"}));
    assert!(matches!(one.enter(&impostor, "acme", &QUEUE, &by("w1", 0)).await, Ok(Entry::OtherKind(_))));
    let held = db
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .expect("pg_locks")
        .get::<_, i64>(0);
    assert_eq!(held, 0, "no run holds a lock any more");

    // A job recorded by the api (queued, unpublished) is started by its first run.
    db.execute(
        "INSERT INTO jobs (job_id, kind, state, instance_id, owner_id, request, source, requested_by)
         VALUES ('j3', 'suspend', 'queued', 'acme', '7'::jsonb, '{}'::jsonb, 'api', 'tester')",
        &[],
    )
    .await
    .expect("insert");
    let suspend = job(JobKind::Suspend, json!({"job-id": "j3", "instance-id": "acme"}));
    let Entry::Started(s, lock) = one.enter(&suspend, "acme", &QUEUE, &by("w1", 0)).await.expect("enter") else {
        panic!("a recorded job starts");
    };
    assert_eq!((s.record.state, s.record.attempts, s.record.source.as_str()), (JobState::Running, 1, "api"));
    assert!(s.record.published_at.is_some(), "a job that runs was published");
    let suspended =
        Ending { state: JobState::Succeeded, result: &json!({}), error: None, transition: Transition::Suspended };
    assert!(lock.complete_and_release("j3", "acme", &suspended).await.expect("end"));
    assert_eq!(registry.instance("acme").await.expect("read").expect("present").state, InstanceState::Suspended);
    // Ending it twice changes nothing and says so.
    assert!(!registry.complete("j3", "acme", &suspended).await.expect("end"));
    let again = two.enter(&suspend, "acme", &QUEUE, &by("w1", 0)).await.expect("enter");
    assert!(matches!(again, Entry::Ended(_)));

    drop_scratch(&name).await;
}
