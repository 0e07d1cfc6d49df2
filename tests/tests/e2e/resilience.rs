//! Nothing lost, nothing doubled: graceful shutdown, a crash between recording and
//! publishing, and a flood of malformed messages.

use std::time::Duration;

use dfe_tests::probes;
use dfe_tests::{Options, TestEnv};
use serde_json::json;

use crate::JOB_TIMEOUT;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_busy_worker_finish_its_jobs_and_exit_zero() {
    let slow = vec![("DFE_TEST_STEP_DELAY_MS".to_owned(), "1500".to_owned())];
    let mut env =
        TestEnv::start_with(Options { workers: 1, worker_env: slow, ..Default::default() }).await.expect("env");
    let events = env.events().await.expect("subscribe");
    let instances: Vec<String> = (0..4).map(|i| env.instance_id(&format!("term{i}"))).collect();
    let jobs: Vec<String> =
        env.submit_all("provision", &instances, |i| json!({"owner-id": 1, "instance-id": i})).await.expect("202");
    for job in &jobs {
        events
            .wait_for("first step", JOB_TIMEOUT, |e| {
                e["job-id"] == job.as_str() && e["event"] == "dfe.storage.provisioned"
            })
            .await
            .expect("running");
    }
    env.workers[0].terminate().expect("SIGTERM");
    let code = env.workers[0].wait_exit(Duration::from_secs(60)).await.expect("exits");
    assert_eq!(code, Some(0), "a graceful stop exits 0");
    for job in &jobs {
        let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("job");
        assert_eq!(record["state"], "succeeded", "finished before the worker left: {record}");
        assert_eq!(record["attempts"], 1, "and not run twice: {record}");
    }
    // A new worker finds nothing left to redo.
    env.start_worker_with(&[]).expect("worker");
    env.workers[1].wait_for_line("consuming dfe.jobs", Duration::from_secs(30)).await.expect("ready");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!env.workers[1].log().contains("job started"), "nothing was redelivered:\n{}", env.workers[1].log());
    env.check_invariants(&events, &jobs, true).await.expect("invariants");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_recorded_by_an_api_that_dies_before_publishing_is_still_carried_out() {
    let mut env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    // Restart the api with the hook that aborts it right after recording a job.
    if let Some(mut api) = env.api.take() {
        api.kill();
    }
    std::env::set_var("DFE_TEST_API_DIE_BEFORE_PUBLISH", "1");
    let restarted = env.start_api().await;
    std::env::remove_var("DFE_TEST_API_DIE_BEFORE_PUBLISH");
    restarted.expect("api");
    let instance = env.instance_id("outbox");
    let body = json!({"job-id": "recorded-not-published", "owner-id": 1, "instance-id": instance});
    let answer = env.post("/api/v1/ops/provision", &body).await;
    assert!(answer.is_err(), "the api died before it could answer: {answer:?}");
    let code = env.api.as_mut().expect("api").wait_exit(Duration::from_secs(10)).await.expect("exited");
    assert_ne!(code, Some(0));

    // The workers' outbox relay publishes the recorded job.
    let done = events.wait_final("recorded-not-published", JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.provisioned", "{done}");
    env.start_api().await.expect("api back");
    env.check_invariants(&events, &["recorded-not-published".to_owned()], true).await.expect("invariants");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_malformed_messages_are_dead_lettered_while_valid_jobs_interleaved_succeed() {
    let mut env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let pids: Vec<u32> = env.workers.iter().map(|w| w.pid()).collect();
    let shapes: Vec<(&str, Vec<u8>, lapin::BasicProperties)> = vec![
        ("provision", b"not json at all".to_vec(), Default::default()),
        ("provision", b"{\"owner-id\": 1".to_vec(), Default::default()),
        ("provision", b"null".to_vec(), Default::default()),
        ("provision", b"\"a string\"".to_vec(), Default::default()),
        ("provision", br#"{"owner-id": {"nested": true}, "instance-id": "abc"}"#.to_vec(), Default::default()),
        ("provision", br#"{"owner-id": 1, "instance-id": "UPPER"}"#.to_vec(), Default::default()),
        ("deprovision", br#"{"instance-id": 42}"#.to_vec(), Default::default()),
        ("deprovision", br#"{"instance-id": "abc", "keep-database": "yes"}"#.to_vec(), Default::default()),
        ("export", br#"{"instance-id": "abc", "destination": "../etc"}"#.to_vec(), Default::default()),
        ("import", br#"{"owner-id": 1, "instance-id": "abc"}"#.to_vec(), Default::default()),
        ("provision", vec![0, 159, 146, 150], Default::default()),
        (
            "export",
            br#"{"instance-id": "abc"}"#.to_vec(),
            lapin::BasicProperties::default().with_type("ProvisionJob".into()),
        ),
    ];
    let mut valid = Vec::new();
    for i in 0..200 {
        let (rk, body, props) = &shapes[i % shapes.len()];
        env.publish_raw(rk, body, props.clone()).await.expect("publish");
        if i % 10 == 0 {
            // Valid jobs interleaved, on the noop provisioner (the pipeline alone).
            let job = format!("valid-{i}");
            let body = json!({"job-id": job, "owner-id": 1, "instance-id": format!("noop-{i}-{}", env.id), "guest-location": "noop"});
            env.publish_raw("provision", body.to_string().as_bytes(), Default::default()).await.expect("publish");
            valid.push(job);
        }
    }
    for job in &valid {
        let done = events.wait_final(job, JOB_TIMEOUT).await.expect("final");
        assert_eq!(done["event"], "dfe.provisioned", "{done}");
    }
    events
        .wait_for("200 rejections", JOB_TIMEOUT, |_| {
            events.all().iter().filter(|e| e["event"] == "dfe.job.rejected").count() >= 200
        })
        .await
        .expect("rejections");
    let dead = probes::drain(&env.amqp_url, "dfe.jobs.dead", 200, Duration::from_secs(30)).await.expect("drain");
    assert_eq!(dead.len(), 200, "every malformed message is in dfe.jobs.dead");
    assert!(dead.iter().all(|d| d
        .properties
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key("x-dfe-error"))));
    for w in env.workers.iter_mut() {
        assert!(w.is_running(), "no worker restarted");
    }
    assert_eq!(pids, env.workers.iter().map(|w| w.pid()).collect::<Vec<_>>());
    env.check_invariants(&events, &valid, false).await.expect("invariants");
}
