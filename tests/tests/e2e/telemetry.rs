//! Telemetry: one trace runs from a REST request (or an incoming `traceparent`) through the
//! broker to every step of the worker, exported over OTLP/HTTP to a collector (here a
//! stand-in that decodes the protobuf export), and its trace id is in the job's events and
//! record; with `log.format = "json"`, every log line is a JSON object, and every line a job
//! writes carries its `job_id`, `instance_id` and `trace_id`.

use std::time::Duration;

use dfe_tests::otlp::Collector;
use dfe_tests::{Options, TestEnv};
use serde_json::{json, Value};

use crate::JOB_TIMEOUT;

/// A W3C traceparent of a trace the test makes up.
const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const INCOMING_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// The JSON lines of a log; anything else must be one of the plain stdout lines the
/// binaries print for scripts.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            if l.starts_with("dfe-api listening on ") || l.starts_with("dfe-worker metrics on ") {
                return None;
            }
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
            for member in ["timestamp", "level", "message", "target"] {
                assert!(v.get(member).is_some(), "no {member}: {l}");
            }
            Some(v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_runs_from_the_rest_request_through_the_worker_steps_and_into_the_events_and_logs() {
    let collector = Collector::start().await.expect("an OTLP receiver");
    let options = Options {
        workers: 1,
        env: vec![
            ("DFE__TELEMETRY__OTLP_ENDPOINT".into(), collector.endpoint.clone()),
            ("DFE__LOG__FORMAT".into(), "json".into()),
            // Export every 200 ms rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
        ],
        ..Default::default()
    };
    let env = TestEnv::start_with(options).await.expect("environment");
    let events = env.events().await.expect("subscribe");

    // A REST request with no trace of its own: the api's request span starts one.
    let instance = env.instance_id("traced");
    let job = env
        .submit("provision", json!({"owner-id": 7, "instance-id": instance, "guest-location": "noop"}))
        .await
        .expect("202");
    let done = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.provisioned");
    let trace = done["trace-id"].as_str().expect("the event names its trace").to_owned();
    assert_eq!(trace.len(), 32, "{trace}");
    for e in events.of_job(&job) {
        assert_eq!(e["trace-id"], trace.as_str(), "every event of the job: {e}");
    }
    let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("get");
    assert_eq!(record["trace-id"], trace.as_str(), "{record}");
    let spans = collector
        .wait_for(
            &trace,
            &[
                ("dfe-api", "POST /api/v1/ops/provision"),
                ("dfe-worker", "job provision"),
                ("dfe-worker", "storage"),
                ("dfe-worker", "database"),
                ("dfe-worker", "instance"),
            ],
            Duration::from_secs(30),
        )
        .await
        .expect("one trace from the request to the steps");
    let request =
        spans.iter().find(|s| s.service == "dfe-api" && s.name == "POST /api/v1/ops/provision").expect("request");
    assert_eq!(request.parent_span_id, "", "the request span is the root: {request:?}");
    let worker_job = spans.iter().find(|s| s.name == "job provision").expect("job span");
    // The job's span hangs under the span that published it (the api's, within the request).
    assert!(spans.iter().any(|s| s.span_id == worker_job.parent_span_id && s.service == "dfe-api"), "{spans:#?}");
    for step in ["storage", "database", "instance"] {
        let s = spans.iter().find(|s| s.name == step).expect("a step span");
        assert_eq!(s.parent_span_id, worker_job.span_id, "{step} is a step of the job: {s:?}");
    }

    // A caller's traceparent is continued: through the REST api, and straight over the queue.
    let second = env.instance_id("traced-rest");
    let (status, answer) = env
        .post_raw(
            "/api/v1/ops/provision",
            json!({"owner-id": 7, "instance-id": second, "guest-location": "noop"}).to_string().as_bytes(),
            Some(&env.token),
            &[("traceparent", INCOMING)],
        )
        .await
        .expect("post");
    assert_eq!(status, 202, "{answer}");
    let rest_job = answer["job-id"].as_str().expect("a job id").to_owned();
    assert_eq!(events.wait_final(&rest_job, JOB_TIMEOUT).await.expect("final")["trace-id"], INCOMING_TRACE);
    let third = env.instance_id("traced-queue");
    let mut headers = lapin::types::FieldTable::default();
    dfe_shared::broker::set_header(&mut headers, "traceparent", INCOMING);
    let queue_job = format!("traced-queue-{}", dfe_tests::random_hex(8));
    let body = json!({"job-id": queue_job, "owner-id": 7, "instance-id": third, "guest-location": "noop"});
    let props = lapin::BasicProperties::default().with_content_type("application/json".into()).with_headers(headers);
    env.publish_raw("provision", body.to_string().as_bytes(), props).await.expect("publish");
    assert_eq!(events.wait_final(&queue_job, JOB_TIMEOUT).await.expect("final")["trace-id"], INCOMING_TRACE);
    collector
        .wait_for(
            INCOMING_TRACE,
            &[("dfe-api", "POST /api/v1/ops/provision"), ("dfe-worker", "job provision"), ("dfe-worker", "instance")],
            Duration::from_secs(30),
        )
        .await
        .expect("the incoming trace goes on");

    // JSON logs: every line parses; every line written in a job's span names the job, its
    // instance and its trace.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let worker = json_lines(&env.workers[0].log());
    let api = json_lines(&env.api.as_ref().expect("api").log());
    let of_job: Vec<&Value> = worker.iter().filter(|l| l["job_id"] == job.as_str()).collect();
    assert!(of_job.iter().any(|l| l["message"] == "job started"), "{of_job:#?}");
    assert!(of_job.iter().any(|l| l["message"] == "job succeeded"), "{of_job:#?}");
    for line in &of_job {
        assert_eq!((&line["instance_id"], &line["trace_id"]), (&json!(instance), &json!(trace)), "{line}");
    }
    assert!(api.iter().any(|l| l["trace_id"] == trace.as_str()), "the api's lines of the request carry its trace");
}
