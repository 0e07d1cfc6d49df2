//! The main story: provision an instance, see it run, deprovision it, see nothing left —
//! over REST and straight over the queue.

use dfe_tests::probes::{self, container_env, db_name, footprint};
use dfe_tests::TestEnv;
use serde_json::{json, Value};

use crate::JOB_TIMEOUT;

async fn assert_provisioned(env: &TestEnv, instance: &str, job_id: &str, final_event: &Value) {
    assert_eq!(final_event["event"], "dfe.provisioned", "final event: {final_event}");
    let resource_uri = final_event["result"]["resource-uri"].as_str().expect("resource-uri in the result").to_owned();
    assert!(resource_uri.starts_with("http://127.0.0.1:"), "published on loopback: {resource_uri}");

    // The container runs, with its labels, limits and volume.
    let c = probes::container(instance).await.expect("container exists");
    assert_eq!(c.state.as_ref().and_then(|s| s.running), Some(true));
    let labels = c.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
    assert_eq!(labels.get("dfe.managed").map(String::as_str), Some("true"));
    assert_eq!(labels.get("dfe.instance-id").map(String::as_str), Some(instance));
    assert_eq!(labels.get("dfe.owner-id").map(String::as_str), Some("42"));
    assert_eq!(labels.get("dfe.job-id").map(String::as_str), Some(job_id));
    let hc = c.host_config.clone().unwrap_or_default();
    assert_eq!(hc.memory, Some(64 << 20), "memory limit from the offering");
    assert_eq!(hc.pids_limit, Some(64), "pids limit from the offering");
    let mounts = c.mounts.clone().unwrap_or_default();
    assert!(
        mounts.iter().any(|m| m.name.as_deref() == Some(&format!("dfe-{instance}-storage"))
            && m.destination.as_deref() == Some("/storage")),
        "volume mounted at /storage: {mounts:?}"
    );
    assert_eq!(container_env(&c, "DB_DATABASE").as_deref(), Some(db_name(instance).as_str()));

    // Volume, database and role exist; PUBLIC may not connect; the instance's own
    // credentials work.
    let fp = footprint(instance).await.expect("footprint");
    assert!(fp.is_complete(), "one running container, volume, database, role: {fp:?}");
    let pg = probes::pg(dfe_tests::PG_ADMIN_URL).await.expect("pg");
    let acl: Option<String> = pg
        .query_one("SELECT datacl::text FROM pg_database WHERE datname = $1", &[&db_name(instance)])
        .await
        .expect("acl")
        .get(0);
    let acl = acl.expect("explicit ACL");
    assert!(!acl.contains("{=") && !acl.contains(",="), "no privileges for PUBLIC: {acl}");
    let password = container_env(&c, "DB_PASSWORD").expect("DB_PASSWORD set");
    assert!(password.len() >= 24, "a long generated password");
    let own = format!("postgres://{0}:{password}@127.0.0.1:5432/{0}", db_name(instance));
    probes::pg_exec(&own, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .expect("the instance's role can use its database");

    // The resource-uri answers, and the image wrote into its storage.
    let body = reqwest::get(&resource_uri).await.expect("resource-uri answers").text().await.expect("body");
    assert!(body.contains(instance), "resource-uri body names the instance: {body}");

    // The registry agrees.
    let (status, job) = env.get(&format!("/api/v1/ops/jobs/{job_id}")).await.expect("job");
    assert_eq!(status, 200);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1);
    let (status, inst) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance");
    assert_eq!(status, 200);
    assert_eq!(inst["state"], "provisioned", "{inst}");
    assert_eq!(inst["resource-uri"], resource_uri.as_str());
    assert_eq!(inst["guest-location"], "docker");
}

async fn assert_deprovisioned(env: &TestEnv, instance: &str, names: &[String], final_event: &Value) {
    assert_eq!(final_event["event"], "dfe.deprovisioned", "{final_event}");
    assert_eq!(names, ["dfe.database.deprovisioned", "dfe.storage.deprovisioned", "dfe.deprovisioned"]);
    let fp = footprint(instance).await.expect("footprint");
    assert!(fp.is_empty(), "nothing of the instance is left: {fp:?}");
    let (_, inst) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance");
    assert_eq!(inst["state"], "deprovisioned", "{inst}");
}

#[tokio::test(flavor = "multi_thread")]
async fn provisioning_over_rest_makes_a_running_instance_and_deprovisioning_leaves_nothing() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("rest");

    let job_id = env.submit("provision", json!({"owner-id": 42, "instance-id": instance})).await.expect("202");
    let done = events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final event");
    assert_eq!(
        events.names_of_job(&job_id),
        ["dfe.storage.provisioned", "dfe.database.provisioned", "dfe.provisioned"],
        "sub-events in order, then the final event"
    );
    assert_provisioned(&env, &instance, &job_id, &done).await;
    assert_eq!(done["owner-id"], 42);
    assert_eq!(done["request"]["instance-id"], instance.as_str());
    assert_eq!(done["service"], "dfe-worker");

    let job_id = env.submit("deprovision", json!({"instance-id": instance})).await.expect("202");
    let done = events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final event");
    assert_deprovisioned(&env, &instance, &events.names_of_job(&job_id), &done).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_published_straight_onto_the_queue_by_a_plain_amqp_client_is_carried_out() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("queue");

    // No job id, no message id, no type: the least a publisher can send.
    let body = json!({"owner-id": "42", "instance-id": instance}).to_string();
    env.publish_raw("provision", body.as_bytes(), lapin::BasicProperties::default()).await.expect("publish");
    let done = events
        .wait_for("dfe.provisioned", JOB_TIMEOUT, |e| {
            e["instance-id"] == instance.as_str() && e["event"] == "dfe.provisioned"
        })
        .await
        .expect("provisioned");
    let job_id = done["job-id"].as_str().expect("a job id was assigned").to_owned();
    assert_eq!(
        events.names_of_job(&job_id),
        ["dfe.storage.provisioned", "dfe.database.provisioned", "dfe.provisioned"]
    );
    // The owner id keeps the form the publisher gave it; labels carry its text.
    assert_eq!(done["owner-id"], "42");
    assert_provisioned(&env, &instance, &job_id, &done).await;
    let (_, job) = env.get(&format!("/api/v1/ops/jobs/{job_id}")).await.expect("job");
    assert_eq!(job["source"], "queue");

    let props = lapin::BasicProperties::default()
        .with_message_id("queue-deprovision-1".into())
        .with_type("DeprovisionJob".into())
        .with_content_type("application/json".into());
    let body = json!({"instance-id": instance}).to_string();
    env.publish_raw("deprovision", body.as_bytes(), props).await.expect("publish");
    let done = events.wait_final("queue-deprovision-1", JOB_TIMEOUT).await.expect("final");
    assert_deprovisioned(&env, &instance, &events.names_of_job("queue-deprovision-1"), &done).await;
}
