//! An instance id names one instance: provisioning it again is refused and leaves the
//! existing instance untouched.

use dfe_tests::probes::{self, footprint};
use dfe_tests::TestEnv;
use serde_json::json;

use crate::JOB_TIMEOUT;

#[tokio::test(flavor = "multi_thread")]
async fn provisioning_an_existing_instance_is_refused_and_the_instance_is_untouched() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("dup");
    let job_id = env.submit("provision", json!({"owner-id": 1, "instance-id": instance})).await.expect("202");
    let done = events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.provisioned", "{done}");
    let before = probes::container(&instance).await.expect("container");

    // Over REST: 409, nothing recorded.
    let (status, problem) =
        env.post("/api/v1/ops/provision", &json!({"owner-id": 2, "instance-id": instance})).await.expect("post");
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap_or_default().contains("already exists"), "{problem}");

    // Over the queue: a failure event.
    let body = json!({"job-id": "dup-over-queue", "owner-id": 2, "instance-id": instance}).to_string();
    env.publish_raw("provision", body.as_bytes(), lapin::BasicProperties::default()).await.expect("publish");
    let failed = events.wait_final("dup-over-queue", JOB_TIMEOUT).await.expect("final");
    assert_eq!(failed["event"], "dfe.provision.failed", "{failed}");
    assert_eq!(failed["error"]["code"], "instance-exists", "{failed}");

    // The same container (not recreated), still running, still the first owner's.
    let after = probes::container(&instance).await.expect("container");
    assert_eq!(before.id, after.id);
    assert_eq!(after.state.as_ref().and_then(|s| s.running), Some(true));
    assert!(footprint(&instance).await.expect("footprint").is_complete());
    let (_, inst) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance");
    assert_eq!(inst["state"], "provisioned");
    assert_eq!(inst["owner-id"], 1);
    assert_eq!(inst["job-id"], job_id.as_str());

    let job_id = env.submit("deprovision", json!({"instance-id": instance})).await.expect("202");
    let done = events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.deprovisioned");
    assert!(footprint(&instance).await.expect("footprint").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_idempotency_key_yields_one_job_and_one_instance() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("idem");
    let body = json!({"owner-id": 1, "instance-id": instance}).to_string();
    let key = [("idempotency-key", "order-4711")];
    let (s1, a1) = env.post_raw("/api/v1/ops/provision", body.as_bytes(), Some(&env.token), &key).await.expect("post");
    let (s2, a2) = env.post_raw("/api/v1/ops/provision", body.as_bytes(), Some(&env.token), &key).await.expect("post");
    assert_eq!((s1, s2), (202, 202), "{a1} {a2}");
    assert_eq!(a1["job-id"], a2["job-id"], "the same key returns the same job");
    let job_id = a1["job-id"].as_str().expect("id");
    let done = events.wait_final(job_id, JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.provisioned");

    // The same key for a different request is a conflict, not a silent replay.
    let other = json!({"owner-id": 1, "instance-id": env.instance_id("idem-other")}).to_string();
    let (s3, a3) = env.post_raw("/api/v1/ops/provision", other.as_bytes(), Some(&env.token), &key).await.expect("post");
    assert_eq!(s3, 409, "{a3}");

    let (_, jobs) = env.get(&format!("/api/v1/ops/jobs?instance-id={instance}")).await.expect("jobs");
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");
    assert!(footprint(&instance).await.expect("footprint").is_complete());
}
