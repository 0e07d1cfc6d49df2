//! Against the real PostgreSQL of `deploy/setup.sh`, in a database of its own: a worker's
//! run of a job is recorded, locked and started in one statement, waits while another run
//! holds the instance, finds an ended job ended and another kind's id taken, and its end
//! records the outcome with the instance's change and then frees the instance.

use std::time::Duration;

use dfe_registry::{Ending, Entry, LockSession, RunBy, SessionStats, Submitter, Transition};
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
    let (one, two) = (LockSession::new(&url).expect("session"), LockSession::new(&url).expect("session"));

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
    assert_eq!(locks_held(&db).await, 0, "no run holds a lock any more");

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

/// Advisory locks held in the scratch database `db` is connected to.
async fn locks_held(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[],
    )
    .await
    .expect("pg_locks")
    .get(0)
}

#[tokio::test]
async fn the_runs_of_one_worker_share_its_session_but_never_a_lock() {
    let name = format!("dfe_registry_runs_shared_{}", std::process::id());
    let Scratch { url, db, .. } = scratch(&name).await;
    let session = LockSession::new(&url).expect("session");

    let provision = job(JobKind::Provision, json!({"job-id": "s1", "owner-id": 7, "instance-id": "acme"}));
    let Entry::Started(_, first) = session.enter(&provision, "acme", &QUEUE, &by("w1", 0)).await.expect("enter") else {
        panic!("the first run starts");
    };
    // The session holds the lock already; a second run of the same worker on the same
    // instance must wait all the same (a session's advisory locks would stack).
    let export = job(JobKind::Export, json!({"job-id": "s2", "instance-id": "acme"}));
    let Entry::Busy(waiting) = session.enter(&export, "acme", &QUEUE, &by("w1", 300)).await.expect("enter") else {
        panic!("a second run on a held instance waits, even in the same session");
    };
    assert_eq!(waiting.record.state, JobState::Queued);
    assert_eq!(locks_held(&db).await, 1);

    let none = Ending { state: JobState::Succeeded, result: &json!({}), error: None, transition: Transition::None };
    assert!(first.complete_and_release("s1", "acme", &none).await.expect("end"));
    assert_eq!(locks_held(&db).await, 0, "released once the completion committed");
    let Entry::Started(started, second) = session.enter(&export, "acme", &QUEUE, &by("w1", 0)).await.expect("enter")
    else {
        panic!("the waiting run starts once the instance is free");
    };
    assert_eq!((started.record.state, started.record.attempts), (JobState::Running, 1));
    // Given back without an end: the job stays running, the lock is free.
    second.release().await.expect("release");
    assert_eq!(locks_held(&db).await, 0);
    // Dropped without either: released in the background.
    let Entry::Started(_, dropped) = session.enter(&export, "acme", &QUEUE, &by("w1", 0)).await.expect("enter") else {
        panic!("a run whose lock was given back starts again");
    };
    drop(dropped);
    let mut held = locks_held(&db).await;
    for _ in 0..50 {
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        held = locks_held(&db).await;
    }
    assert_eq!(held, 0, "a dropped lock is released");
    drop_scratch(&name).await;
}

#[tokio::test]
async fn concurrent_runs_enter_and_end_together_and_a_bad_one_fails_alone() {
    let name = format!("dfe_registry_runs_batch_{}", std::process::id());
    let Scratch { registry, url, db } = scratch(&name).await;
    let session = LockSession::new(&url).expect("session");
    let ids: Vec<String> = (0..7).map(|i| format!("inst-{i}")).collect();
    let jobs: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| job(JobKind::Provision, json!({"job-id": format!("b{i}"), "owner-id": 7, "instance-id": id})))
        .collect();
    let runner = by("w1", 0);
    // On this test's single-threaded runtime, every request is queued before the session's
    // task runs: five runs entering at once go out as one statement.
    let entries =
        futures::future::join_all(jobs[..5].iter().zip(&ids).map(|(j, id)| session.enter(j, id, &QUEUE, &runner)))
            .await;
    assert_eq!(session.stats(), SessionStats { requests: 5, batches: 1 }, "five runs, one round trip");
    let mut locks = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let Ok(Entry::Started(e, lock)) = entry else { panic!("run {i} starts") };
        assert_eq!((e.record.state, e.record.attempts), (JobState::Running, 1));
        locks.push((i, lock));
    }
    // One submitter's text PostgreSQL cannot store (NUL): its row fails, the one beside it
    // in the same batch must not.
    let bad = Submitter { fingerprint: Some("nul\u{0}here"), ..QUEUE };
    let (good, failed) = tokio::join!(session.enter(&jobs[5], &ids[5], &QUEUE, &runner), async {
        session.enter(&jobs[6], &ids[6], &bad, &runner).await
    });
    let Ok(Entry::Started(_, lock)) = good else { panic!("the good run starts beside the bad one") };
    locks.push((5, lock));
    let e = failed.err().expect("the run with a NUL in its text cannot be recorded");
    assert!(!e.is_transient(), "a NUL in a text is a data error: {e}");
    assert_eq!(locks_held(&db).await, 6, "the bad run's lock was given back");
    assert_eq!(registry.job("b6").await.expect("read"), None, "the bad run left no row");
    // A row this version cannot read (a kind a newer version wrote) fails its own run
    // alone, and that run keeps no lock.
    db.execute(
        "INSERT INTO jobs (job_id, kind, state, instance_id, request, source, requested_by)
         VALUES ('b7', 'teleport', 'queued', 'inst-7', '{}'::jsonb, 'api', 'tester')",
        &[],
    )
    .await
    .expect("insert");
    let odd = job(JobKind::Provision, json!({"job-id": "b7", "owner-id": 7, "instance-id": "inst-7"}));
    let neighbour = job(JobKind::Provision, json!({"job-id": "b8", "owner-id": 7, "instance-id": "inst-8"}));
    let (odd, good) = tokio::join!(session.enter(&odd, "inst-7", &QUEUE, &runner), async {
        session.enter(&neighbour, "inst-8", &QUEUE, &runner).await
    });
    let e = odd.err().expect("an unreadable row is an error");
    assert!(!e.is_transient() && e.to_string().contains("b7"), "{e}");
    let Ok(Entry::Started(_, neighbour_lock)) = good else { panic!("its neighbour starts") };
    assert_eq!(locks_held(&db).await, 7, "the unreadable run's lock was given back");
    neighbour_lock.release().await.expect("release");

    for (i, _) in &locks {
        db.execute(
            "INSERT INTO instances (instance_id, owner_id, state, guest_location, job_id)
             VALUES ($1, '7'::jsonb, 'provisioning', 'noop', $2)",
            &[&ids[*i], &format!("b{i}")],
        )
        .await
        .expect("insert");
    }
    // The ends, together; one result cannot be stored (jsonb refuses \u0000).
    let good = json!({"container": "c"});
    let poisoned = json!({"container": "nul\u{0}"});
    let ends = futures::future::join_all(locks.into_iter().map(|(i, lock)| {
        let (id, job_id, result) =
            (ids[i].clone(), format!("b{i}"), if i == 4 { poisoned.clone() } else { good.clone() });
        async move {
            let ending = Ending {
                state: JobState::Succeeded,
                result: &result,
                error: None,
                transition: Transition::Provisioned {
                    resource_uri: Some(format!("http://{id}")),
                    resources: json!({}),
                },
            };
            (i, lock.complete_and_release(&job_id, &id, &ending).await)
        }
    }))
    .await;
    for (i, ended) in ends {
        let job = registry.job(&format!("b{i}")).await.expect("read").expect("job");
        let instance = registry.instance(&ids[i]).await.expect("read").expect("instance");
        if i == 4 {
            assert!(ended.is_err(), "the poisoned end fails");
            assert_eq!((job.state, instance.state), (JobState::Running, InstanceState::Provisioning));
        } else {
            assert!(ended.expect("end"), "run {i} ended");
            assert_eq!((job.state, instance.state), (JobState::Succeeded, InstanceState::Provisioned));
            assert_eq!(instance.resource_uri, Some(format!("http://{}", ids[i])));
        }
    }
    assert_eq!(locks_held(&db).await, 0, "every lock is released, the failed end's too");
    drop_scratch(&name).await;
}

#[tokio::test]
async fn a_run_whose_session_lost_its_connection_is_told_at_its_end() {
    let name = format!("dfe_registry_runs_lost_{}", std::process::id());
    let Scratch { registry, url, db } = scratch(&name).await;
    let (one, two) = (LockSession::new(&url).expect("session"), LockSession::new(&url).expect("session"));
    let provision = job(JobKind::Provision, json!({"job-id": "l1", "owner-id": 7, "instance-id": "acme"}));
    let Entry::Started(_, lock) = one.enter(&provision, "acme", &QUEUE, &by("w1", 0)).await.expect("enter") else {
        panic!("starts");
    };
    // The connection holding the lock dies (a registry restart, a network cut).
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[],
    )
    .await
    .expect("terminate");
    // PostgreSQL released the lock: another worker may take the instance.
    let export = job(JobKind::Export, json!({"job-id": "l2", "instance-id": "acme"}));
    let Entry::Started(_, other) = two.enter(&export, "acme", &QUEUE, &by("w2", 3000)).await.expect("enter") else {
        panic!("the lock died with its connection");
    };
    // So the first run must not record its outcome as if it still held it.
    let none = Ending { state: JobState::Succeeded, result: &json!({}), error: None, transition: Transition::None };
    let ended = lock.complete_and_release("l1", "acme", &none).await;
    let e = ended.expect_err("the lock was lost");
    assert!(e.is_transient(), "the job runs again: {e}");
    assert_eq!(registry.job("l1").await.expect("read").expect("job").state, JobState::Running);
    assert!(other.complete_and_release("l2", "acme", &none).await.expect("end"));
    // The session connects again for the next run.
    let Entry::Started(again, lock) = one.enter(&provision, "acme", &QUEUE, &by("w1", 0)).await.expect("enter") else {
        panic!("the redelivered job starts again on a new connection");
    };
    assert_eq!(again.record.attempts, 2);
    assert!(lock.complete_and_release("l1", "acme", &none).await.expect("end"));
    drop_scratch(&name).await;
}

#[tokio::test]
async fn marking_jobs_published_never_waits_for_a_row_a_run_holds() {
    let name = format!("dfe_registry_runs_marks_{}", std::process::id());
    let Scratch { registry, url, db } = scratch(&name).await;
    for id in ["m1", "m2"] {
        db.execute(
            "INSERT INTO jobs (job_id, kind, state, instance_id, request, source, requested_by)
             VALUES ($1, 'export', 'queued', 'acme', '{}'::jsonb, 'api', 'tester')",
            &[&id],
        )
        .await
        .expect("insert");
    }
    // Another transaction holds m1's row (a worker's batch starting it, say).
    let mut holder = common::connect(&url).await;
    let tx = holder.transaction().await.expect("begin");
    tx.execute("SELECT 1 FROM jobs WHERE job_id = 'm1' FOR UPDATE", &[]).await.expect("lock");
    let marked =
        tokio::time::timeout(Duration::from_secs(5), registry.mark_published_many(&["m1".to_owned(), "m2".to_owned()]))
            .await;
    assert!(matches!(marked, Ok(Ok(()))), "the marks did not wait for the held row: {marked:?}");
    let published = |id: &'static str| {
        let db = &db;
        async move {
            db.query_one("SELECT published_at IS NOT NULL FROM jobs WHERE job_id = $1", &[&id])
                .await
                .expect("read")
                .get::<_, bool>(0)
        }
    };
    assert!(published("m2").await, "the free row is marked");
    assert!(!published("m1").await, "the held row is left to its holder");
    tx.rollback().await.expect("rollback");
    drop_scratch(&name).await;
}
