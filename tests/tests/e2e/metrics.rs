//! Each worker serves Prometheus metrics, and final events carry the job's step timings.

use std::time::Duration;

use dfe_tests::{Options, TestEnv};
use serde_json::json;

use crate::JOB_TIMEOUT;

#[tokio::test(flavor = "multi_thread")]
async fn a_workers_metrics_and_the_final_events_timings_account_for_its_jobs() {
    let env = TestEnv::start_with(Options { workers: 1, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let line = env.workers[0].wait_for_line("dfe-worker metrics on ", Duration::from_secs(10)).await.expect("listener");
    let url = format!("{}/metrics", line.split("metrics on ").nth(1).unwrap_or_default().trim());

    let mut jobs = Vec::new();
    for i in 0..3 {
        let body = json!({"owner-id": 1, "instance-id": format!("m{i}-{}", env.id), "guest-location": "noop"});
        jobs.push(env.submit("provision", body).await.expect("202"));
    }
    // One job that fails at once (deprovisioning what does not exist, over the queue).
    let body = json!({"job-id": "metrics-failure", "instance-id": "nothing-here"}).to_string();
    env.publish_raw("deprovision", body.as_bytes(), Default::default()).await.expect("publish");
    for job in &jobs {
        let done = events.wait_final(job, JOB_TIMEOUT).await.expect("final");
        let timings = &done["result"]["timings"];
        for key in ["queue-ms", "storage-ms", "database-ms", "instance-ms", "total-ms"] {
            assert!(timings[key].is_number(), "{key} in {done}");
        }
    }
    events.wait_final("metrics-failure", JOB_TIMEOUT).await.expect("final");

    let text = reqwest::get(&url).await.expect("metrics").text().await.expect("body");
    assert!(text.contains("dfe_worker_jobs_total{type=\"provision\",outcome=\"succeeded\"} 3\n"), "{text}");
    assert!(text.contains("dfe_worker_jobs_total{type=\"deprovision\",outcome=\"failed\"} 1\n"), "{text}");
    assert!(text.contains("dfe_worker_step_duration_seconds_count{step=\"storage\"} 3\n"), "{text}");
    assert!(text.contains("dfe_worker_jobs_in_flight 0\n"), "{text}");
    assert!(text.contains("# TYPE dfe_worker_step_duration_seconds histogram"), "{text}");
}
