//! No input costs a 5xx or a redelivery loop, and no subscriber can stall the pipeline.

use std::time::Duration;

use dfe_tests::probes::{self, header};
use dfe_tests::{Options, TestEnv};
use serde_json::json;

use crate::JOB_TIMEOUT;

/// Lines a worker logs when it puts a message back on its queue.
const REQUEUE: &str = "requeueing";

fn noop_env(workers: usize, extra: &[(&str, &str)]) -> Options {
    let mut env: Vec<(String, String)> = vec![("DFE__PROVISIONERS__DEFAULT".into(), "noop".into())];
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Options { workers, env, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_are_dead_lettered_once_with_their_reason_and_never_loop() {
    let env = TestEnv::start_with(noop_env(2, &[])).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    // PostgreSQL cannot store NUL in text or jsonb: before this was checked, the registry
    // refused the job on every delivery and the workers requeued it for good.
    let nul = br#"{"job-id": "poison-nul", "owner-id": 1, "instance-id": "poison-a", "packages": ["a\u0000b"]}"#;
    let text = br#"{"job-id": "poison-text", "owner-id": 1, "instance-id": "poison-b"}"#;
    let huge = format!(
        r#"{{"job-id": "poison-huge", "owner-id": 1, "instance-id": "poison-c", "packages": ["{}"]}}"#,
        "x".repeat(2 << 20)
    );
    env.publish_raw("provision", nul, Default::default()).await.expect("publish");
    let plain =
        lapin::BasicProperties::default().with_content_type("text/plain".into()).with_message_id("poison-text".into());
    env.publish_raw("provision", text, plain).await.expect("publish");
    env.publish_raw("provision", huge.as_bytes(), Default::default()).await.expect("publish");
    // A valid job behind them is served.
    let ok = env.instance_id("after-poison");
    let body = json!({"job-id": "after-poison", "owner-id": 1, "instance-id": ok}).to_string();
    env.publish_raw("provision", body.as_bytes(), Default::default()).await.expect("publish");
    assert_eq!(events.wait_final("after-poison", JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");

    let dead = probes::drain(&env.amqp_url, "dfe.jobs.dead", 3, Duration::from_secs(20)).await.expect("drain");
    assert_eq!(dead.len(), 3, "each poison message is dead-lettered");
    let reasons: Vec<String> = dead.iter().map(|d| header(d, "x-dfe-error").expect("x-dfe-error")).collect();
    assert!(reasons.iter().any(|r| r.contains("packages[0]") && r.contains("control")), "{reasons:#?}");
    assert!(reasons.iter().any(|r| r.contains("text/plain") && r.contains("not JSON")), "{reasons:#?}");
    assert!(reasons.iter().any(|r| r.contains("at most 65536 bytes")), "{reasons:#?}");
    assert!(dead.iter().any(|d| d.data.len() > 2 << 20), "the large message is dead-lettered intact");

    tokio::time::sleep(Duration::from_secs(3)).await;
    let rejected: Vec<_> = events.all().into_iter().filter(|e| e["event"] == "dfe.job.rejected").collect();
    assert_eq!(rejected.len(), 3, "one rejection each, not one per redelivery: {rejected:#?}");
    for r in &rejected {
        let size = r.to_string().len();
        assert!(size < 8 * 1024, "a rejection echoes little of the message: {size} bytes");
    }
    assert!(!env.all_logs().contains(REQUEUE), "nothing was requeued");
    assert_eq!(probes::queue_depth(&env.amqp_url, "dfe.jobs.provision").await.expect("depth"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_keeps_failing_is_dead_lettered_after_its_delivery_bound() {
    let options = noop_env(1, &[("DFE__WORKER__JOB_TIMEOUT_SECS", "2"), ("DFE__WORKER__MAX_DELIVERIES", "2")]);
    let env = TestEnv::start_with(options).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("locked");
    // Another party holds the instance's lock (as a job that never ends would): every
    // delivery waits for it past the job's deadline and fails transiently.
    let registry = probes::pg(env.registry()).await.expect("registry");
    registry
        .execute("SELECT pg_advisory_lock($1, hashtext($2))", &[&0x0064_6665_i32, &instance])
        .await
        .expect("take the instance lock");
    let job = env.submit("provision", json!({"owner-id": 1, "instance-id": instance})).await.expect("202");
    let failed = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(failed["event"], "dfe.provision.failed", "{failed}");
    assert_eq!(failed["error"]["code"], "undeliverable", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("handled 2 times") && message.contains("locked"), "{message}");

    let dead = probes::drain(&env.amqp_url, "dfe.jobs.dead", 1, Duration::from_secs(20)).await.expect("drain");
    assert_eq!(dead.len(), 1, "the message ends in the dead queue");
    assert!(header(&dead[0], "x-dfe-error").is_some_and(|r| r.contains("handled 2 times")), "with its reason");
    let requeued = env.all_logs().matches(REQUEUE).count();
    assert_eq!(requeued, 1, "requeued once (delivery 1 of 2), then given up");
    let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("job");
    assert_eq!(record["state"], "failed", "{record}");
    let (_, instance_record) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance");
    assert_eq!(instance_record["state"], "failed", "the claim is left for a deprovision to finish: {instance_record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_whose_queue_refuses_events_neither_stalls_jobs_nor_floods_the_others() {
    let options = noop_env(2, &[("DFE__WORKER__EVENT_ATTEMPTS", "3")]);
    let env = TestEnv::start_with(options).await.expect("environment");
    let healthy = env.events().await.expect("subscribe");
    let _broken = probes::broken_subscriber(&env.amqp_url, "broken-subscriber").await.expect("broken queue");
    let instances: Vec<String> = (0..20).map(|i| env.instance_id(&format!("sub{i}"))).collect();
    let jobs =
        env.submit_all("provision", &instances, |i| json!({"owner-id": 1, "instance-id": i})).await.expect("submit");
    for job in &jobs {
        let record = env.wait_job(job, JOB_TIMEOUT).await.expect("ends");
        assert_eq!((&record["state"], &record["attempts"]), (&json!("succeeded"), &json!(1)), "{record}");
    }
    // The refused events are retried on their own (3 attempts here: 2 s, 4 s apart).
    tokio::time::sleep(Duration::from_secs(12)).await;
    for job in &jobs {
        let finals = healthy.of_job(job).into_iter().filter(|e| e["event"] == "dfe.provisioned").count();
        assert!((1..=3).contains(&finals), "job {job}: {finals} copies of its final event (at most 3)");
    }
    assert!(!env.all_logs().contains(REQUEUE), "no job message went back to its queue");
    let registry = probes::pg(env.registry()).await.expect("registry");
    let row = registry
        .query_one(
            "SELECT count(*) FILTER (WHERE abandoned_at IS NULL), count(*) FILTER (WHERE abandoned_at IS NOT NULL)
             FROM event_outbox",
            &[],
        )
        .await
        .expect("outbox");
    let (pending, abandoned): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(pending, 0, "nothing is left to retry");
    assert!(abandoned >= 20, "the refused events were given up after their attempts: {abandoned}");
    // A new job is not held up by any of it.
    let late = env.instance_id("late");
    let job = env.submit("provision", json!({"owner-id": 1, "instance-id": late})).await.expect("202");
    let record = env.wait_job(&job, Duration::from_secs(10)).await.expect("prompt");
    assert_eq!(record["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn path_and_query_values_are_checked_as_the_contract_defines_them() {
    let env = TestEnv::start_with(Options { workers: 0, ..Default::default() }).await.expect("environment");
    for path in [
        "/api/v1/instances/a%00b",
        "/api/v1/ops/jobs/a%00b",
        "/api/v1/snapshots/a%00b",
        "/api/v1/snapshots/a%00b/download",
    ] {
        let (status, p) = env.get(path).await.expect("get");
        assert_eq!(status, 404, "{path}: {p}");
        assert!(p["type"].is_string() && p["detail"].is_string(), "{path}: problem+json: {p}");
    }
    for (query, field) in [
        ("/api/v1/ops/jobs?instance-id=%00", "instance-id"),
        ("/api/v1/snapshots?owner-id=%00", "owner-id"),
        ("/api/v1/ops/jobs?owner-id=a%20b", "owner-id"),
        ("/api/v1/ops/jobs?limit=abc", "limit"),
        ("/api/v1/ops/jobs?limit=0", "limit"),
        ("/api/v1/instances?limit=1001", "limit"),
        ("/api/v1/ops/jobs?state=done", "state"),
        ("/api/v1/ops/jobs?colour=red", "colour"),
        ("/api/v1/instances?include-removed=maybe", "include-removed"),
    ] {
        let (status, p) = env.get(query).await.expect("get");
        assert_eq!((status, p["errors"][0]["field"].clone()), (422, json!(field)), "{query}: {p}");
    }
    let (status, p) = env.get("/api/v1/ops/jobs?limit=1&limit=2").await.expect("get");
    assert_eq!((status, p["errors"][0]["field"].clone()), (400, json!("limit")), "a repeated parameter: {p}");
    let (status, p) = env.get("/api/v1/ops/jobs?limit=5&state=queued").await.expect("get");
    assert_eq!(status, 200, "{p}");
    let (status, p) = env.post_raw("/api/v1/ops/jobs", b"", Some(&env.token), &[]).await.expect("post");
    assert_eq!(status, 405, "{p}");
    assert!(p["type"].is_string(), "405 is problem+json too: {p}");
    for answer in env.answers.lock().expect("answers").iter() {
        assert!(!answer.contains("Failed to deserialize"), "axum's text answers never reach a client: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_refused_with_a_problem_that_names_what_is_wrong() {
    let env = TestEnv::start_with(noop_env(1, &[])).await.expect("environment");
    let nul = br#"{"owner-id": 1, "instance-id": "acme", "packages": ["ok", "a\u0000b"]}"#;
    let (status, p) = env.post_raw("/api/v1/ops/provision", nul, Some(&env.token), &[]).await.expect("post");
    assert_eq!((status, p["errors"][0]["field"].clone()), (422, json!("packages[1]")), "not a 503: {p}");
    let body = json!({"owner-id": 1, "instance-id": "acme"}).to_string();
    for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"] {
        let (status, p) = env
            .post_raw("/api/v1/ops/provision", body.as_bytes(), Some(&env.token), &[("content-type", ct)])
            .await
            .expect("post");
        assert_eq!((status, p["errors"][0]["field"].clone()), (415, json!("Content-Type")), "{ct}: {p}");
    }
    let big = json!({"owner-id": 1, "instance-id": "acme", "packages": ["x".repeat(70 * 1024)]}).to_string();
    let (status, p) = env.post_raw("/api/v1/ops/provision", big.as_bytes(), Some(&env.token), &[]).await.expect("post");
    assert_eq!(status, 413, "{p}");
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("65536")), "problem+json: {p}");
    let long_key = "k".repeat(256);
    for key in ["", long_key.as_str(), "no spaces"] {
        let (status, p) = env
            .post_raw("/api/v1/ops/provision", body.as_bytes(), Some(&env.token), &[("idempotency-key", key)])
            .await
            .expect("post");
        assert_eq!((status, p["errors"][0]["field"].clone()), (422, json!("Idempotency-Key")), "{key:?}: {p}");
    }
    // With no content type at all (a simple client) a valid job is accepted.
    let instance = env.instance_id("no-ct");
    let req = reqwest::Client::new()
        .post(format!("{}/api/v1/ops/provision", env.api_url))
        .bearer_auth(&env.token)
        .body(json!({"owner-id": 1, "instance-id": instance}).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(req.status(), 202);
    let (_, jobs) = env.get("/api/v1/ops/jobs").await.expect("jobs");
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "only the valid job was recorded: {jobs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_take_over_ends_what_the_dead_workers_run_left_on_the_database_server() {
    let mut env = TestEnv::start_with(Options { workers: 0, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let hold = [("DFE_TEST_HOLD_AFTER".to_owned(), "storage".to_owned())];
    env.start_worker_with(&hold).expect("doomed worker");
    env.workers[0].wait_for_line("consuming dfe.jobs", Duration::from_secs(30)).await.expect("ready");
    let instance = env.instance_id("takeover");
    let job = env.submit("provision", json!({"owner-id": 1, "instance-id": instance})).await.expect("202");
    env.workers[0].wait_for_line("holding the job", JOB_TIMEOUT).await.expect("held");
    // What the dead worker left running on the server: a statement of this job's session.
    let (lingering, connection) = tokio_postgres::connect(
        &format!(
            "{} application_name={}",
            "host=127.0.0.1 user=dfe password=dfe dbname=postgres",
            probes::job_session_name(&job)
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(connection);
    let sleeping = tokio::spawn(async move { lingering.simple_query("SELECT pg_sleep(600)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.workers[0].kill();
    env.start_worker_with(&[]).expect("rescuer");
    let done = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.provisioned", "{done}");
    let ended = tokio::time::timeout(Duration::from_secs(5), sleeping).await.expect("the lingering statement ended");
    assert!(ended.expect("task").is_err(), "it was terminated by the take-over, not finished");
    let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("job");
    assert_eq!(record["attempts"], 2, "{record}");
    assert!(env.all_logs().contains("ended database sessions an earlier run of this job left"));
    assert!(probes::footprint(&instance).await.expect("fp").is_complete());
}
