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
