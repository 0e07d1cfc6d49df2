//! Cancelling a job that has not started: it ends `failed` with `error.code` `cancelled`, its
//! one failure event goes out, its claim is handed back (a new instance's released, a
//! deprovision's instance back in the state it came from), and its message is dropped when a
//! worker takes it, announcing nothing again and doing nothing. A job that runs, or has
//! ended, answers 409.

use std::time::Duration;

use dfe_tests::{EventLog, Options, TestEnv};
use serde_json::{json, Value};

use crate::JOB_TIMEOUT;

/// The distinct final events of `job` (duplicates share an `event-id`).
fn finals(events: &EventLog, job: &str) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    events
        .of_job(job)
        .into_iter()
        .filter(|e| dfe_tests::events::is_final(e["event"].as_str().unwrap_or_default()))
        .filter(|e| seen.insert(e["event-id"].to_string()))
        .collect()
}

async fn cancel(env: &TestEnv, job: &str) -> (u16, Value) {
    env.post(&format!("/api/v1/ops/jobs/{job}/cancel"), &json!({})).await.expect("post")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_job_cancelled_ends_cancelled_with_one_failure_event_and_its_claim_handed_back() {
    // No worker: the jobs stay queued (noop needs no probed host).
    let mut env = TestEnv::start_with(Options { workers: 0, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("cancel");
    let job = env
        .submit("provision", json!({"owner-id": 7, "instance-id": instance, "guest-location": "noop"}))
        .await
        .expect("202");
    let (_, claimed) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("get");
    assert_eq!(claimed["state"], "provisioning");

    let (status, cancelled) = cancel(&env, &job).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(
        (&cancelled["state"], &cancelled["error"]["code"]),
        (&json!("failed"), &json!("cancelled")),
        "{cancelled}"
    );
    assert_eq!(cancelled["attempts"], 0, "it never ran");
    let event = events.wait_final(&job, Duration::from_secs(20)).await.expect("its failure event");
    assert_eq!(
        (&event["event"], &event["error"]["code"]),
        (&json!("dfe.provision.failed"), &json!("cancelled")),
        "{event}"
    );
    assert_eq!(event["instance-id"], instance.as_str());
    assert_eq!(event["request"]["instance-id"], instance.as_str());
    let (status, answer) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("get");
    assert_eq!(status, 404, "the new instance's claim is released: {answer}");
    let (status, again) = cancel(&env, &job).await;
    assert_eq!(status, 409, "an ended job: {again}");
    assert!(again["detail"].as_str().expect("detail").contains("is failed"), "{again}");
    let (status, _) = cancel(&env, "no-such-job").await;
    assert_eq!(status, 404);

    // The id is free again; a worker drops the cancelled job's message and runs the new one.
    let second = env
        .submit("provision", json!({"owner-id": 7, "instance-id": instance, "guest-location": "noop"}))
        .await
        .expect("the id is free");
    env.start_worker().expect("a worker");
    let worker = env.workers.last().expect("the worker");
    worker.wait_for_line("consuming dfe.jobs", Duration::from_secs(60)).await.expect("it consumes");
    assert_eq!(events.wait_final(&second, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
    worker
        .wait_for_line("job was cancelled before it ran; its message is dropped", Duration::from_secs(30))
        .await
        .expect("dropped");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(finals(&events, &job).len(), 1, "one failure event, not announced again: {:?}", events.of_job(&job));
    assert!(
        !env.all_logs().lines().any(|l| l.contains("job started") && l.contains(&job)),
        "the cancelled job did no work"
    );
    let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("get");
    assert_eq!((&record["state"], &record["attempts"]), (&json!("failed"), &json!(0)), "{record}");

    // A deprovision cancelled before it ran hands the instance back as it was.
    env.workers[0].kill();
    let (_, before) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("get");
    assert_eq!(before["state"], "provisioned");
    let deprovision = env.submit("deprovision", json!({"instance-id": instance})).await.expect("202");
    let (_, moved) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("get");
    assert_eq!((&moved["state"], &moved["job-id"]), (&json!("deprovisioning"), &json!(deprovision)), "{moved}");
    let (status, cancelled) = cancel(&env, &deprovision).await;
    assert_eq!(status, 200, "{cancelled}");
    let (_, after) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("get");
    assert_eq!((&after["state"], &after["job-id"]), (&before["state"], &before["job-id"]), "handed back: {after}");
    let event = events.wait_final(&deprovision, Duration::from_secs(20)).await.expect("its failure event");
    assert_eq!((&event["event"], &event["error"]["code"]), (&json!("dfe.deprovision.failed"), &json!("cancelled")));
    // And it can be deprovisioned for real.
    env.start_worker().expect("a worker");
    let last = env.submit("deprovision", json!({"instance-id": instance})).await.expect("202");
    assert_eq!(events.wait_final(&last, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
    assert_eq!(finals(&events, &deprovision).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_cannot_be_cancelled() {
    // The worker holds the job after its storage step: it is running, and stays so.
    let options = Options {
        workers: 1,
        worker_env: vec![("DFE_TEST_HOLD_AFTER".into(), "storage".into())],
        ..Default::default()
    };
    let env = TestEnv::start_with(options).await.expect("environment");
    let instance = env.instance_id("running");
    let job = env
        .submit("provision", json!({"owner-id": 7, "instance-id": instance, "guest-location": "noop"}))
        .await
        .expect("202");
    env.workers[0].wait_for_line("holding the job after this step", Duration::from_secs(60)).await.expect("held");
    let (status, answer) = cancel(&env, &job).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["type"], "urn:dfe:problem:conflict");
    assert!(answer["detail"].as_str().expect("detail").contains("is running"), "{answer}");
    let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("get");
    assert_eq!(record["state"], "running", "left as it was: {record}");
    // Through the CLI: the refusal, exit 2.
    let (code, _, err) = env.cli(&["cancel", &job]).await.expect("dfe");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("409 Conflict") && err.contains("only a queued or retrying job can be cancelled"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dfe_cancel_cancels_a_queued_job() {
    let env = TestEnv::start_with(Options { workers: 0, ..Default::default() }).await.expect("environment");
    let instance = env.instance_id("cli-cancel");
    let (code, out, err) = env.cli(&["provision", "7", &instance, "noop"]).await.expect("dfe");
    assert_eq!(code, 0, "{err}");
    let job = out.split_whitespace().nth(2).expect("a job id").to_owned();
    let (code, out, err) = env.cli(&["cancel", &job]).await.expect("dfe");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!(
            "provision job {job} cancelled: failed (cancelled: cancelled by tests before it ran)"
        )),
        "{out}"
    );
    let (code, _, err) = env.cli(&["cancel", &job]).await.expect("dfe");
    assert_eq!(code, 2, "{err}");
}

/// A loopback proxy to PostgreSQL that can be switched off: from then on it drops every
/// connection, the open ones included (a database server gone away mid-flight).
struct Switch {
    port: u16,
    down: tokio::sync::watch::Sender<bool>,
}

async fn switchable_postgres() -> Switch {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (down, watch) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if *watch.borrow() {
                continue;
            }
            let mut watch = watch.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await else { return };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = watch.wait_for(|down| *down) => {}
                }
            });
        }
    });
    Switch { port, down }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retrying_job_cancelled_leaves_its_instance_failed_and_its_retry_is_dropped() {
    let pg = switchable_postgres().await;
    let server = format!(
        r#"
[databases.dying]
host = "127.0.0.1"
port = {port}
instance-host = "172.17.0.1"
user = "dfe"
password = "dfe"

[provisioners.hosts.dying]
cluster = "local"
database = "dying"
[provisioners.hosts.dying.provides]
instance = "docker-container"
storage = "docker-volume"
db = "postgres"
[provisioners.hosts.dying.offerings.image]
suggested = "test"
[provisioners.hosts.dying.offerings.image.items.test]
image = "dfe/test-instance:latest"
"#,
        port = pg.port
    );
    let retries = [
        ("DFE__WORKER__MAX_ATTEMPTS", "5"),
        ("DFE__WORKER__RETRY_BASE_MS", "4000"),
        ("DFE__WORKER__RETRY_MAX_MS", "4000"),
    ];
    let options = Options {
        workers: 1,
        worker_env: retries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        extra_config: server,
        ..Default::default()
    };
    let env = TestEnv::start_with(options).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    // The worker probed the server at start (a placement needs it active); now it goes away.
    let (_, servers) = env.get("/api/v1/database-servers").await.expect("servers");
    let dying =
        servers["database-servers"].as_array().expect("servers").iter().find(|s| s["server-id"] == "dying").cloned();
    assert_eq!(dying.as_ref().map(|s| &s["state"]), Some(&json!("active")), "{servers}");
    let _ = pg.down.send(true);
    let instance = env.instance_id("retrying");
    let job = env
        .submit("provision", json!({"owner-id": 7, "instance-id": instance, "guest-location": "dying"}))
        .await
        .expect("202");
    let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
    loop {
        let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("get");
        if record["state"] == "retrying" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline && record["state"] != "failed", "never retrying: {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, cancelled) = cancel(&env, &job).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["error"]["code"], "cancelled");
    // It ran once and may have left parts behind: the instance is failed, for a deprovision.
    let (_, record) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("get");
    assert_eq!(record["state"], "failed", "{record}");
    // Its retry comes back from the delayed queue and is dropped, announcing nothing again.
    env.workers[0]
        .wait_for_line("job was cancelled before it ran; its message is dropped", Duration::from_secs(30))
        .await
        .expect("the retry is dropped");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let finals = finals(&events, &job);
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(finals[0]["error"]["code"], "cancelled");
    let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("get");
    assert_eq!((&record["state"], &record["attempts"]), (&json!("failed"), &json!(1)), "no second attempt: {record}");
}
