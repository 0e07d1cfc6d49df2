//! The AsyncAPI document describes what goes over the broker: every job body published onto
//! `dfe.jobs` (by the api, the CLI's `--via queue`, the outbox) validates against the message
//! its AMQP `type` names, and every event on `dfe.events` (successes, steps, failures, a
//! cancellation, a rejection) against the message its name names.

use std::time::Duration;

use dfe_tests::asyncapi::Document;
use dfe_tests::events::JobTap;
use dfe_tests::{Options, TestEnv};
use serde_json::json;

use crate::JOB_TIMEOUT;

#[tokio::test(flavor = "multi_thread")]
async fn every_job_and_event_body_on_the_broker_validates_against_the_asyncapi_document() {
    let env = TestEnv::start_with(Options { workers: 1, ..Default::default() }).await.expect("environment");
    let doc = Document::fetch(&env.api_url).await.expect("the AsyncAPI document");
    let events = env.events().await.expect("subscribe");
    let tap = JobTap::subscribe(&env.amqp_url, &["provision", "deprovision", "import", "export"]).await.expect("tap");

    // Real provisioners: a provision, an export, an import into a new instance, deprovisions.
    let real = env.instance_id("aa-real");
    let copy = env.instance_id("aa-copy");
    let job = env.submit("provision", json!({"owner-id": 7, "instance-id": real})).await.expect("202");
    assert_eq!(env.wait_job(&job, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded");
    let export = env.submit("export", json!({"instance-id": real})).await.expect("202");
    let exported = env.wait_job(&export, JOB_TIMEOUT).await.expect("ends");
    let snapshot = exported["result"]["snapshot-id"].as_str().expect("a snapshot id").to_owned();
    let import =
        env.submit("import", json!({"owner-id": 7, "instance-id": copy, "snapshot": snapshot})).await.expect("202");
    assert_eq!(env.wait_job(&import, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded");
    // Over the queue, with the CLI: a provision, and one of an id in use (a failure event).
    let queued = env.instance_id("aa-queue");
    let (code, _, err) = env.cli(&["--via", "queue", "provision", "--wait", "7", &queued, "noop"]).await.expect("dfe");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = env.cli(&["--via", "queue", "provision", "--wait", "7", &queued, "noop"]).await.expect("dfe");
    assert_eq!(code, 1, "an id in use fails: {err}");
    // A job cancelled before it ran (its failure event comes from the api), and a message
    // that is no job (a rejection).
    env.workers[0].terminate().expect("stop the worker");
    env.workers[0].wait_for_line("worker stopped", Duration::from_secs(60)).await.expect("stopped");
    let cancelled = env
        .submit("provision", json!({"owner-id": 7, "instance-id": env.instance_id("aa-x"), "guest-location": "noop"}))
        .await
        .expect("202");
    let (status, answer) = env.post(&format!("/api/v1/ops/jobs/{cancelled}/cancel"), &json!({})).await.expect("cancel");
    assert_eq!(status, 200, "{answer}");
    let mut env = env;
    env.start_worker().expect("a worker");
    env.publish_raw("export", b"{not json", lapin::BasicProperties::default()).await.expect("publish");
    events.wait_for("a rejection", JOB_TIMEOUT, |e| e["event"] == "dfe.job.rejected").await.expect("rejected");
    for id in [&real, &copy, &queued] {
        let job = env.submit("deprovision", json!({"instance-id": id})).await.expect("202");
        assert_eq!(env.wait_job(&job, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let all = events.all();
    let names: std::collections::BTreeSet<&str> = all.iter().filter_map(|e| e["event"].as_str()).collect();
    for expected in [
        "dfe.provisioned",
        "dfe.storage.provisioned",
        "dfe.database.provisioned",
        "dfe.exported",
        "dfe.imported",
        "dfe.deprovisioned",
        "dfe.provision.failed",
        "dfe.job.rejected",
    ] {
        assert!(names.contains(expected), "no {expected} among {names:?}");
    }
    let refused: Vec<String> = all.iter().filter_map(|e| doc.check_event(e)).collect();
    assert!(refused.is_empty(), "{} of {} events do not validate:\n{}", refused.len(), all.len(), refused.join("\n"));
    let jobs = tap.all();
    assert!(jobs.len() >= 9, "{} job messages tapped", jobs.len());
    let mut checked = 0;
    for message in jobs.iter().filter(|m| m.body.is_object()) {
        let kind = message.kind.as_deref().expect("a job message names its AMQP type");
        if let Some(why) = doc.check(kind, &message.body) {
            panic!("a job message does not validate: {why}");
        }
        checked += 1;
    }
    assert!(checked >= 9, "{checked} job bodies checked");
    // The api's messages carry the request's trace.
    assert!(jobs.iter().any(|m| m.traceparent.is_some()), "traceparent headers: {jobs:?}");
}
