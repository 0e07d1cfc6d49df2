//! A provision that fails midway removes what it made, in reverse order, and says why.

use dfe_tests::probes::footprint;
use dfe_tests::TestEnv;
use serde_json::json;

use crate::JOB_TIMEOUT;

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_fails_the_provision_and_leaves_no_container_volume_database_or_role() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("noimage");
    let job_id = env
        .submit("provision", json!({"owner-id": 1, "instance-id": instance, "offerings": {"image": "missing"}}))
        .await
        .expect("202");
    let failed = events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final");
    assert_eq!(failed["event"], "dfe.provision.failed", "{failed}");
    assert_eq!(failed["error"]["code"], "image-not-found", "{failed}");
    assert!(failed["error"]["message"].as_str().unwrap_or_default().contains("dfe/does-not-exist"), "{failed}");
    // Storage and database were made before the instance step failed...
    assert_eq!(
        events.names_of_job(&job_id),
        ["dfe.storage.provisioned", "dfe.database.provisioned", "dfe.provision.failed"]
    );
    // ...and removed again.
    let fp = footprint(&instance).await.expect("footprint");
    assert!(fp.is_empty(), "nothing left: {fp:?}");
    let (_, job) = env.get(&format!("/api/v1/ops/jobs/{job_id}")).await.expect("job");
    assert_eq!(job["state"], "failed");
    assert_eq!(job["error"]["code"], "image-not-found");
    let (status, _) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance");
    assert_eq!(status, 404, "a failed provision leaves no instance in the registry");

    // The id is free again: a good provision of it succeeds.
    let job_id = env.submit("provision", json!({"owner-id": 1, "instance-id": instance})).await.expect("202");
    assert_eq!(events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
    let job_id = env.submit("deprovision", json!({"instance-id": instance})).await.expect("202");
    assert_eq!(events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_server_that_refuses_fails_the_provision_and_removes_the_storage() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("nodb");
    let job_id = env
        .submit("provision", json!({"owner-id": 1, "instance-id": instance, "guest-location": "broken-db"}))
        .await
        .expect("202");
    let failed = events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final");
    assert_eq!(failed["event"], "dfe.provision.failed", "{failed}");
    assert_eq!(failed["error"]["code"], "database-error", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("refusing"), "names the server: {message}");
    assert!(!message.contains("not-the-password"), "never the admin password: {message}");
    assert_eq!(events.names_of_job(&job_id), ["dfe.storage.provisioned", "dfe.provision.failed"]);
    let fp = footprint(&instance).await.expect("footprint");
    assert!(fp.is_empty(), "the volume was removed: {fp:?}");
}
