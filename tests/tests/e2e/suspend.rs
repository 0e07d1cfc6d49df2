//! Suspend and resume: a suspended instance's container is stopped and its database role
//! cannot log in, nothing is removed; resumed, it answers again with the same data. Both
//! survive a worker SIGKILLed after any of their steps.

use dfe_tests::probes::{self, exec, footprint};
use dfe_tests::{Options, TestEnv};
use serde_json::json;

use crate::crash::kill_after;
use crate::JOB_TIMEOUT;

async fn running(instance: &str) -> bool {
    let c = probes::container(instance).await.expect("container");
    c.state.and_then(|s| s.running).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_instance_is_stopped_and_locked_out_and_resumes_with_its_data() {
    let env = TestEnv::start_with(Options { workers: 1, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let i = env.instance_id("susp");
    let job = env.submit("provision", json!({"owner-id": 1, "instance-id": i})).await.expect("202");
    let provisioned = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    exec(&format!("dfe-{i}"), "echo kept > /storage/kept.txt").expect("file");
    let db = probes::instance_db(&i).await.expect("the role logs in");
    db.batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (42)").await.expect("rows");
    drop(db);

    let job = env.submit("suspend", json!({"instance-id": i, "reason": "non-payment"})).await.expect("202");
    let done = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.suspended", "{done}");
    assert_eq!(events.names_of_job(&job), ["dfe.database.suspended", "dfe.suspended"]);
    let (_, record) = env.get(&format!("/api/v1/instances/{i}")).await.expect("instance");
    assert_eq!(record["state"], "suspended", "{record}");
    assert!(!running(&i).await, "the container is stopped");
    let refused = probes::instance_db(&i).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(refused.contains("not permitted to log in"), "the role cannot log in: {refused}");
    let fp = footprint(&i).await.expect("fp");
    assert_eq!((fp.containers, fp.volumes, fp.databases, fp.roles), (1, 1, 1, 1), "nothing removed: {fp:?}");
    // A provision of the id is a 409; an export works on a suspended instance.
    let (status, _) = env.post("/api/v1/ops/provision", &json!({"owner-id": 1, "instance-id": i})).await.expect("post");
    assert_eq!(status, 409);
    let job = env.submit("export", json!({"instance-id": i})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.exported");
    // Suspending again finds it done.
    let job = env.submit("suspend", json!({"instance-id": i})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.suspended");

    let job = env.submit("resume", json!({"instance-id": i})).await.expect("202");
    let resumed = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(resumed["event"], "dfe.resumed", "{resumed}");
    assert!(running(&i).await);
    let uri = resumed["result"]["resource-uri"].as_str().expect("resource-uri").to_owned();
    assert!(reqwest::get(&uri).await.expect("answers").status().is_success(), "{uri} answers again");
    let (_, record) = env.get(&format!("/api/v1/instances/{i}")).await.expect("instance");
    assert_eq!((&record["state"], &record["resource-uri"]), (&json!("provisioned"), &json!(uri)), "{record}");
    assert_eq!(exec(&format!("dfe-{i}"), "cat /storage/kept.txt").expect("file"), "kept\n");
    let db = probes::instance_db(&i).await.expect("the role logs in again");
    let n: i32 = db.query_one("SELECT n FROM t", &[]).await.expect("row").get(0);
    assert_eq!(n, 42);
    drop(db);
    let _ = provisioned;
    let job = env.submit("deprovision", json!({"instance-id": i})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
    assert!(footprint(&i).await.expect("fp").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn suspend_and_resume_survive_a_worker_killed_after_any_step() {
    let mut env = TestEnv::start_with(Options { workers: 1, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let i = env.instance_id("susp-kill");
    let job = env.submit("provision", json!({"owner-id": 1, "instance-id": i})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
    env.workers[0].kill();
    let mut jobs = vec![job];
    for step in ["instance", "database"] {
        let (job, done) = kill_after(&mut env, &events, step, "suspend", json!({"instance-id": i})).await;
        assert_eq!(done["event"], "dfe.suspended", "after {step}: {done}");
        assert!(!running(&i).await, "after {step}");
        assert!(probes::instance_db(&i).await.is_err(), "after {step}: locked out");
        jobs.push(job);
        let (job, done) = kill_after(&mut env, &events, step, "resume", json!({"instance-id": i})).await;
        assert_eq!(done["event"], "dfe.resumed", "after {step}: {done}");
        assert!(running(&i).await, "after {step}");
        assert!(probes::instance_db(&i).await.is_ok(), "after {step}: logs in again");
        jobs.push(job);
    }
    env.start_worker_with(&[]).expect("worker");
    let job = env.submit("deprovision", json!({"instance-id": i})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
    jobs.push(job);
    env.check_invariants(&events, &jobs, true).await.expect("invariants");
}
