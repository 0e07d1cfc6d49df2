//! Bad input gets a clear error and loses nothing; the processes keep running.

use std::time::Duration;

use dfe_tests::probes;
use dfe_tests::TestEnv;
use lapin::types::AMQPValue;
use serde_json::json;

use crate::JOB_TIMEOUT;

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_problem_answers_that_name_what_is_wrong() {
    let env = TestEnv::start_with(dfe_tests::Options { workers: 0, ..Default::default() }).await.expect("environment");
    let good = json!({"owner-id": 1, "instance-id": "acme"}).to_string();

    let (status, p) = env.post_raw("/api/v1/ops/provision", good.as_bytes(), None, &[]).await.expect("post");
    assert_eq!(status, 401, "no token: {p}");
    let (status, _) =
        env.post_raw("/api/v1/ops/provision", good.as_bytes(), Some("not-a-token"), &[]).await.expect("post");
    assert_eq!(status, 401, "unknown token");
    let (status, _) = env.post_raw("/api/v1/ops/jobs", b"", None, &[]).await.expect("post");
    assert_eq!(status, 405, "jobs are read, not posted");

    let long = "a".repeat(64);
    for bad in ["Acme", "../x", "a;drop", long.as_str()] {
        let (status, p) =
            env.post("/api/v1/ops/provision", &json!({"owner-id": 1, "instance-id": bad})).await.expect("post");
        assert_eq!(status, 422, "{bad}: {p}");
        assert_eq!(p["errors"][0]["field"], "instance-id", "{bad}: {p}");
        assert_eq!(p["status"], 422);
        assert!(p["title"].is_string() && p["detail"].is_string());
    }
    let (status, p) = env
        .post("/api/v1/ops/provision", &json!({"owner-id": 1, "instance-id": "acme", "colour": "red"}))
        .await
        .expect("post");
    assert_eq!((status, p["errors"][0]["field"].clone()), (422, json!("colour")), "unknown fields are refused: {p}");
    let (status, p) = env.post("/api/v1/ops/provision", &json!({"instance-id": "acme"})).await.expect("post");
    assert_eq!((status, p["errors"][0]["field"].clone()), (422, json!("owner-id")), "{p}");
    let (status, p) =
        env.post("/api/v1/ops/provision", &json!({"owner-id": -3, "instance-id": "acme"})).await.expect("post");
    assert_eq!((status, p["errors"][0]["field"].clone()), (422, json!("owner-id")), "{p}");
    let (status, p) = env
        .post("/api/v1/ops/provision", &json!({"owner-id": 1, "instance-id": "acme", "guest-location": "mars"}))
        .await
        .expect("post");
    assert_eq!((status, p["errors"][0]["field"].clone()), (422, json!("guest-location")), "{p}");
    let (status, p) = env
        .post("/api/v1/ops/provision", &json!({"owner-id": 1, "instance-id": "acme", "offerings": {"image": "nope"}}))
        .await
        .expect("post");
    assert_eq!((status, p["errors"][0]["field"].clone()), (422, json!("offerings.image")), "{p}");

    let (status, p) =
        env.post_raw("/api/v1/ops/provision", b"{\"owner-id\": 1,", Some(&env.token), &[]).await.expect("post");
    assert_eq!(status, 400, "malformed JSON: {p}");
    let (status, p) = env.post("/api/v1/ops/deprovision", &json!({"instance-id": "nobody-here"})).await.expect("post");
    assert_eq!(status, 404, "deprovisioning an unknown instance: {p}");
    let (status, _) = env.get("/api/v1/ops/jobs/no-such-job").await.expect("get");
    assert_eq!(status, 404);
    let (status, p) = env.get("/api/v1/instances/no-such-instance").await.expect("get");
    assert_eq!(status, 404, "{p}");

    // None of that was recorded.
    let (_, jobs) = env.get("/api/v1/ops/jobs").await.expect("jobs");
    assert_eq!(jobs["jobs"], json!([]), "refused requests leave no job");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_a_job_queue_is_dead_lettered_with_its_reason_and_the_worker_goes_on() {
    let mut env =
        TestEnv::start_with(dfe_tests::Options { workers: 1, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let garbage: Vec<(&str, Vec<u8>, lapin::BasicProperties)> = vec![
        ("provision", b"this is not json".to_vec(), Default::default()),
        ("provision", b"[1, 2, 3]".to_vec(), Default::default()),
        ("provision", br#"{"owner-id": 1}"#.to_vec(), Default::default()),
        ("provision", br#"{"owner-id": 1, "instance-id": "Bad_Id"}"#.to_vec(), Default::default()),
        ("deprovision", br#"{"instance-id": "abc", "unknown": true}"#.to_vec(), Default::default()),
        (
            "provision",
            br#"{"owner-id": 1, "instance-id": "abc"}"#.to_vec(),
            lapin::BasicProperties::default().with_type("DeprovisionJob".into()),
        ),
        ("export", vec![0xff, 0xfe, 0x00, 0x01], Default::default()),
    ];
    for (rk, body, props) in &garbage {
        env.publish_raw(rk, body, props.clone()).await.expect("publish");
    }
    // A valid job behind the garbage is still served.
    let instance = env.instance_id("after-garbage");
    let body = json!({"job-id": "valid-after-garbage", "owner-id": 1, "instance-id": instance}).to_string();
    env.publish_raw("provision", body.as_bytes(), Default::default()).await.expect("publish");
    let done = events.wait_final("valid-after-garbage", JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.provisioned", "{done}");

    let dead =
        probes::drain(&env.amqp_url, "dfe.jobs.dead", garbage.len(), Duration::from_secs(20)).await.expect("drain");
    assert_eq!(dead.len(), garbage.len(), "every bad message is in dfe.jobs.dead");
    for d in &dead {
        assert!(
            garbage.iter().any(|(_, b, _)| *b == d.data),
            "dead-lettered intact: {:?}",
            String::from_utf8_lossy(&d.data)
        );
        let headers = d.properties.headers().clone().unwrap_or_default();
        let reason = headers.inner().get("x-dfe-error").cloned();
        let Some(AMQPValue::LongString(reason)) = reason else { panic!("x-dfe-error header missing: {headers:?}") };
        assert!(!reason.to_string().is_empty());
    }
    let reasons: Vec<String> = dead
        .iter()
        .filter_map(|d| match d.properties.headers().as_ref()?.inner().get("x-dfe-error")? {
            AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        })
        .collect();
    assert!(reasons.iter().any(|r| r.contains("instance-id") && r.contains("required")), "{reasons:#?}");
    assert!(reasons.iter().any(|r| r.contains("malformed JSON")), "{reasons:#?}");
    assert!(reasons.iter().any(|r| r.contains("unknown")), "{reasons:#?}");
    assert!(reasons.iter().any(|r| r.contains("does not match queue")), "{reasons:#?}");

    let rejected = events.all().into_iter().filter(|e| e["event"] == "dfe.job.rejected").count();
    assert_eq!(rejected, garbage.len(), "one dfe.job.rejected per bad message");
    assert!(env.workers[0].is_running(), "the worker kept running");
}
