//! Transient faults are retried with backoff through the delayed-retry queues; a job out of
//! attempts ends failed, announced, and in `dfe.jobs.dead`.

use std::time::Duration;

use dfe_tests::probes::{self, footprint};
use dfe_tests::{Options, TestEnv};
use serde_json::json;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};

use crate::JOB_TIMEOUT;

fn fast_retries() -> Vec<(String, String)> {
    vec![
        ("DFE__WORKER__MAX_ATTEMPTS".into(), "4".into()),
        ("DFE__WORKER__RETRY_BASE_MS".into(), "500".into()),
        ("DFE__WORKER__RETRY_MAX_MS".into(), "2000".into()),
    ]
}

fn db_server(id: &str, port: u16) -> String {
    format!(
        r#"
[databases.{id}]
host = "127.0.0.1"
port = {port}
instance-host = "172.17.0.1"
user = "dfe"
password = "dfe"

[provisioners.hosts.{id}]
cluster = "local"
database = "{id}"
[provisioners.hosts.{id}.provides]
instance = "docker-container"
storage = "docker-volume"
db = "postgres"
[provisioners.hosts.{id}.offerings.image]
suggested = "test"
[provisioners.hosts.{id}.offerings.image.items.test]
image = "dfe/test-instance:latest"
"#
    )
}

/// A loopback proxy to PostgreSQL that drops every connection until `outage` has passed
/// since the first one (so the outage does not depend on how fast the services start).
async fn flaky_postgres(outage: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut until = None;
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let until = *until.get_or_insert_with(|| tokio::time::Instant::now() + outage);
            if tokio::time::Instant::now() < until {
                drop(client);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await {
                    let _ = copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provision_rides_out_a_database_outage_by_retrying_with_backoff() {
    let port = flaky_postgres(Duration::from_secs(3)).await;
    let options = Options {
        workers: 2,
        worker_env: fast_retries(),
        extra_config: db_server("flaky", port),
        ..Default::default()
    };
    let env = TestEnv::start_with(options).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("flaky");
    let job_id = env
        .submit("provision", json!({"owner-id": 1, "instance-id": instance, "guest-location": "flaky"}))
        .await
        .expect("202");

    // While the database server is away, the job shows as retrying with its next attempt.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let retrying = loop {
        let (_, job) = env.get(&format!("/api/v1/ops/jobs/{job_id}")).await.expect("job");
        if job["state"] == "retrying" {
            break job;
        }
        assert!(tokio::time::Instant::now() < deadline, "never seen retrying: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(retrying["next-retry-at"].is_string(), "{retrying}");
    assert_eq!(retrying["error"]["code"], "database-error", "{retrying}");

    let done = events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.provisioned", "{done}");
    let (_, job) = env.get(&format!("/api/v1/ops/jobs/{job_id}")).await.expect("job");
    assert_eq!(job["state"], "succeeded");
    assert!(job["attempts"].as_i64().unwrap_or(0) >= 2, "it took more than one attempt: {job}");
    // Exactly one final event, and one of each resource.
    let finals = events
        .of_job(&job_id)
        .iter()
        .filter(|e| e["event"] == "dfe.provisioned" || e["event"] == "dfe.provision.failed")
        .count();
    assert_eq!(finals, 1);
    assert!(footprint(&instance).await.expect("fp").is_complete());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_out_of_attempts_fails_once_and_lands_in_the_dead_queue() {
    // Nothing listens on this port: every attempt is refused, a transient fault.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
    let options = Options {
        workers: 1,
        worker_env: fast_retries(),
        extra_config: db_server("gone", closed),
        ..Default::default()
    };
    let env = TestEnv::start_with(options).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("gone");
    let job_id = env
        .submit("provision", json!({"owner-id": 1, "instance-id": instance, "guest-location": "gone"}))
        .await
        .expect("202");

    let done = events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.provision.failed", "{done}");
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("gave up after 4 attempts"), "{message}");
    let (_, job) = env.get(&format!("/api/v1/ops/jobs/{job_id}")).await.expect("job");
    assert_eq!((job["state"].clone(), job["attempts"].clone()), (json!("failed"), json!(4)), "{job}");
    // Each attempt made its volume and removed it again. Whether a role was left on the
    // unreachable server cannot be known, so the instance stays visible as failed (a
    // deprovision finishes it) rather than silently freed.
    assert!(footprint(&instance).await.expect("fp").is_empty());
    assert!(message.contains("rollback incomplete"), "{message}");
    let (_, inst) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance");
    assert_eq!(inst["state"], "failed", "{inst}");

    let dead = probes::drain(&env.amqp_url, "dfe.jobs.dead", 1, Duration::from_secs(10)).await.expect("drain");
    assert_eq!(dead.len(), 1, "the job message is in dfe.jobs.dead");
    let body: serde_json::Value = serde_json::from_slice(&dead[0].data).expect("json");
    assert_eq!(body["job-id"], job_id.as_str());
    let headers = dead[0].properties.headers().clone().unwrap_or_default();
    assert!(headers.inner().contains_key("x-dfe-error"), "{headers:?}");
    let finals = events.of_job(&job_id).iter().filter(|e| e["event"] == "dfe.provision.failed").count();
    assert_eq!(finals, 1, "one failure event, not one per attempt");
}
