//! A worker killed with SIGKILL in the middle of a provision: another worker completes the
//! job, with exactly one container, volume, database and role.

use dfe_tests::probes::footprint;
use dfe_tests::{Options, TestEnv};
use serde_json::json;

use crate::JOB_TIMEOUT;

#[tokio::test(flavor = "multi_thread")]
async fn a_provision_whose_worker_is_killed_midway_is_completed_by_another_worker() {
    // Only the doomed worker runs at first, so it is the one that takes the job. The test
    // hook makes it stop dead after the database step, holding the message unacknowledged.
    let hold = vec![("DFE_TEST_HOLD_AFTER".to_owned(), "database".to_owned())];
    let mut env =
        TestEnv::start_with(Options { workers: 1, worker_env: hold, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("crash");
    let job_id = env.submit("provision", json!({"owner-id": 1, "instance-id": instance})).await.expect("202");
    events
        .wait_for("dfe.database.provisioned", JOB_TIMEOUT, |e| {
            e["job-id"] == job_id.as_str() && e["event"] == "dfe.database.provisioned"
        })
        .await
        .expect("the first worker got half-way");

    env.workers[0].kill();
    env.start_worker_with(&[]).expect("second worker");
    let done = events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.provisioned", "{done}");

    let fp = footprint(&instance).await.expect("footprint");
    assert!(fp.is_complete(), "exactly one container, volume, database and role: {fp:?}");
    let (_, job) = env.get(&format!("/api/v1/ops/jobs/{job_id}")).await.expect("job");
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["attempts"], 2, "the second worker ran it again: {job}");
    // Deduplicated by event id, the subscriber sees each event once.
    assert_eq!(
        events.names_of_job(&job_id),
        ["dfe.storage.provisioned", "dfe.database.provisioned", "dfe.provisioned"]
    );
    let resource_uri = done["result"]["resource-uri"].as_str().expect("uri");
    assert!(reqwest::get(resource_uri).await.expect("answers").status().is_success());

    let job_id = env.submit("deprovision", json!({"instance-id": instance})).await.expect("202");
    assert_eq!(events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
    assert!(footprint(&instance).await.expect("footprint").is_empty());
}
