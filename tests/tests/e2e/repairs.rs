//! Bugs a review found, each shown fixed: what a panicking job leaves, the offerings an
//! instance was made with, and where its placement is recorded.

use std::time::Duration;

use dfe_tests::probes::{self, exec, footprint};
use dfe_tests::{Options, TestEnv};
use serde_json::{json, Value};

use crate::JOB_TIMEOUT;

/// An offering item with a storage path of its own, beside the suggested `test` item.
const ALT_ITEM: &str = r#"
[provisioners.hosts.docker.offerings.image.items.alt]
image = "dfe/test-instance:latest"
memory = "64m"
cpus = 0.5
pids = 64
port = 80
storage-path = "/data"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_body_panics_leaves_its_instance_for_a_deprovision_to_finish() {
    let mut env = TestEnv::start_with(Options { workers: 0, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    env.start_worker_with(&[("DFE_TEST_PANIC_AFTER".to_owned(), "storage".to_owned())]).expect("worker");
    env.workers[0].wait_for_line("consuming dfe.jobs", Duration::from_secs(30)).await.expect("ready");
    let instance = env.instance_id("panics");
    let job = env.submit("provision", json!({"owner-id": 1, "instance-id": instance})).await.expect("202");
    let failed = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(
        (failed["event"].clone(), failed["error"]["code"].clone()),
        (json!("dfe.provision.failed"), json!("internal-error")),
        "{failed}"
    );
    let (_, record) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance");
    assert_eq!(record["state"], "failed", "not left `provisioning` for good: {record}");
    assert_eq!(footprint(&instance).await.expect("fp").volumes, 1, "the volume made before the panic is still there");
    // A provision of the id is refused, a deprovision finishes the removal.
    let (status, _) =
        env.post("/api/v1/ops/provision", &json!({"owner-id": 1, "instance-id": instance})).await.expect("post");
    assert_eq!(status, 409);
    env.workers[0].kill();
    env.start_worker_with(&[]).expect("healthy worker");
    let job = env.submit("deprovision", json!({"instance-id": instance})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
    assert!(footprint(&instance).await.expect("fp").is_empty(), "nothing is left");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reconciler_repairs_an_instance_a_finished_job_left_mid_operation() {
    let env = TestEnv::start_with(Options { workers: 1, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("abandoned");
    let job = env.submit("provision", json!({"owner-id": 1, "instance-id": instance})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
    // As an older version's panic path left it: provisioning, owned by a job that ended.
    let registry = probes::pg(env.registry()).await.expect("registry");
    registry
        .execute("UPDATE instances SET state = 'provisioning' WHERE instance_id = $1", &[&instance])
        .await
        .expect("update");
    let (code, out) = env.worker_once(&["--reconcile", "--fix"]).await.expect("reconcile");
    assert_eq!(code, 3, "{out}");
    let report: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(report["abandoned"][0]["instance-id"], json!(instance), "{report}");
    assert_eq!(report["abandoned"][0]["failed"], true, "{report}");
    let (_, record) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance");
    assert_eq!(record["state"], "failed", "{record}");
    let job = env.submit("deprovision", json!({"instance-id": instance})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
    assert!(footprint(&instance).await.expect("fp").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn export_and_import_use_the_offerings_the_instance_was_made_with() {
    let env = TestEnv::start_with(Options { extra_config: ALT_ITEM.into(), ..Default::default() })
        .await
        .expect("environment");
    let events = env.events().await.expect("subscribe");
    let source = env.instance_id("alt-src");
    let body = json!({"owner-id": 1, "instance-id": source, "offerings": {"image": "alt"}});
    let job = env.submit("provision", body).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
    let (_, record) = env.get(&format!("/api/v1/instances/{source}")).await.expect("instance");
    assert_eq!(record["offerings"], json!({"image": "alt"}), "the choice is recorded: {record}");
    exec(&format!("dfe-{source}"), "echo on-data > /data/hello.txt").expect("write");

    let job = env.submit("export", json!({"instance-id": source})).await.expect("202");
    let exported = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(exported["event"], "dfe.exported", "{exported}");
    let snapshot = exported["result"]["snapshot-id"].as_str().expect("id").to_owned();
    let (_, snap) = env.get(&format!("/api/v1/snapshots/{snapshot}")).await.expect("snapshot");
    assert_eq!(snap["manifest"]["offerings"], json!({"image": "alt"}), "{snap}");
    assert_eq!(snap["manifest"]["database-engine"], "postgres", "{snap}");

    let target = env.instance_id("alt-dst");
    let job =
        env.submit("import", json!({"owner-id": 1, "instance-id": target, "snapshot": snapshot})).await.expect("202");
    let imported = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(imported["event"], "dfe.imported", "{imported}");
    assert_eq!(exec(&format!("dfe-{target}"), "cat /data/hello.txt").expect("read"), "on-data\n", "read from /data");
    for i in [&source, &target] {
        let job = env.submit("deprovision", json!({"instance-id": i})).await.expect("202");
        assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instances_placement_is_recorded_when_it_is_claimed() {
    let mut env = TestEnv::start_with(Options { workers: 0, ..Default::default() }).await.expect("environment");
    env.start_worker_with(&[("DFE_TEST_HOLD_AFTER".to_owned(), "storage".to_owned())]).expect("worker");
    env.workers[0].wait_for_line("consuming dfe.jobs", Duration::from_secs(30)).await.expect("ready");
    let instance = env.instance_id("placed");
    let (_, claimed) = {
        env.submit("provision", json!({"owner-id": 1, "instance-id": instance})).await.expect("202");
        env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance")
    };
    assert_eq!(claimed["state"], "provisioning", "{claimed}");
    assert_eq!(
        (&claimed["cluster-id"], &claimed["host-id"], &claimed["database-server"], &claimed["offerings"]),
        (&json!("local"), &json!("local"), &json!("local"), &json!({"image": "test"})),
        "recorded with the claim, before any step: {claimed}"
    );
    env.workers[0].wait_for_line("holding the job", JOB_TIMEOUT).await.expect("held");
    let (_, during) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance");
    assert_eq!(during["host-id"], "local", "{during}");
}
