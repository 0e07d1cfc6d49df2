//! Arbitrary input, generated (proptest), against the real api and workers: no job field,
//! path or query value costs a 5xx, every refusal is problem+json and names its field, and
//! no queue message loops.

use std::collections::BTreeMap;
use std::time::Duration;

use dfe_tests::{probes, Options, TestEnv};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use crate::JOB_TIMEOUT;

/// Strings that break rules: NUL and other controls, non-ASCII, long ones, and valid ids.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,12}",
        "[a-z][a-z0-9-]{1,12}[a-z0-9]",
        "[\\x00-\\x1f]{1,4}",
        "[A-Za-z0-9._-]{1,70}",
        Just("\u{0}".to_owned()),
        Just("a\u{0}b".to_owned()),
        Just("x".repeat(300)),
        Just(String::new()),
        Just("../../etc/passwd".to_owned()),
        Just("'; DROP TABLE jobs; --".to_owned()),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        tricky_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(tricky_string(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for a known field: mostly plausible, often wrong.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    let plausible: BoxedStrategy<Value> = match field {
        "owner-id" | "owner-type" => {
            prop_oneof![any::<u32>().prop_map(|n| json!(n)), "[a-z0-9._-]{1,20}".prop_map(Value::String)].boxed()
        }
        "instance-id" => "[a-z][a-z0-9-]{1,20}[a-z0-9]".prop_map(Value::String).boxed(),
        "keep-database" | "clean" => any::<bool>().prop_map(Value::Bool).boxed(),
        "packages" => {
            prop::collection::vec(tricky_string().prop_map(Value::String), 0..4).prop_map(Value::Array).boxed()
        }
        "offerings" => prop::collection::btree_map(tricky_string(), tricky_string().prop_map(Value::String), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed(),
        "guest-location" => {
            prop_oneof![Just(json!("noop")), Just(json!("docker")), tricky_string().prop_map(Value::String)].boxed()
        }
        _ => tricky_string().prop_map(Value::String).boxed(),
    };
    prop_oneof![3 => plausible, 1 => json_value()].boxed()
}

/// The fields of a job kind (DESIGN.md, Jobs).
fn fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "provision" => &[
            "job-id",
            "owner-id",
            "instance-id",
            "guest-location",
            "cluster-id",
            "owner-type",
            "offerings",
            "packages",
        ],
        "deprovision" => &["job-id", "instance-id", "cluster-id", "keep-database"],
        "import" => {
            &["job-id", "owner-id", "instance-id", "snapshot", "guest-location", "cluster-id", "owner-type", "clean"]
        }
        _ => &["job-id", "instance-id", "destination"],
    }
}

/// A job body of `kind`: a random subset of its fields with random values, now and then an
/// unknown field, now and then not an object at all.
fn job_body(kind: &'static str) -> BoxedStrategy<Value> {
    let entries: Vec<BoxedStrategy<Option<(String, Value)>>> = fields(kind)
        .iter()
        .map(|f| prop::option::weighted(0.7, field_value(f).prop_map(move |v| ((*f).to_owned(), v))).boxed())
        .collect();
    let object = (entries, prop::option::weighted(0.15, (tricky_string(), json_value()))).prop_map(|(known, extra)| {
        let mut map: BTreeMap<String, Value> = known.into_iter().flatten().collect();
        if let Some((k, v)) = extra {
            map.insert(k, v);
        }
        Value::Object(map.into_iter().collect())
    });
    prop_oneof![9 => object, 1 => json_value()].boxed()
}

/// Draws `n` values of `strategy` (no shrinking: a failing value is printed whole).
fn draw<T: std::fmt::Debug>(strategy: &impl Strategy<Value = T>, n: usize, seed: &str) -> Vec<T> {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &{
            let mut s = [0u8; 32];
            for (i, b) in seed.bytes().enumerate().take(32) {
                s[i] = b;
            }
            s
        }),
    );
    (0..n).map(|_| strategy.new_tree(&mut runner).expect("a value").current()).collect()
}

/// The checks every refusal passes: problem+json, and a 422 names its field.
fn assert_refusal(status: u16, body: &Value, what: &str) {
    assert!(status < 500, "{what}: a 5xx: {status} {body}");
    if status >= 400 {
        assert!(
            body["type"].is_string()
                && body["title"].is_string()
                && body["status"] == status
                && body["detail"].is_string(),
            "{what}: {status} is not problem+json: {body}"
        );
    }
    if status == 422 {
        let field = body["errors"][0]["field"].as_str().unwrap_or_default();
        assert!(!field.is_empty(), "{what}: a 422 that names no field: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn arbitrary_job_bodies_paths_and_queries_never_cost_a_5xx_and_refusals_name_their_field() {
    let options =
        Options { workers: 0, env: vec![("DFE__PROVISIONERS__DEFAULT".into(), "noop".into())], ..Default::default() };
    let env = TestEnv::start_with(options).await.expect("environment");
    for kind in ["provision", "deprovision", "import", "export"] {
        for body in draw(&job_body(kind), 150, kind) {
            let (status, answer) = env.post(&format!("/api/v1/ops/{kind}"), &body).await.expect("post");
            assert_refusal(status, &answer, &format!("POST {kind} {body}"));
            assert!([202, 404, 409, 422].contains(&status), "POST {kind} {body}: unexpected {status} {answer}");
        }
    }
    let encode = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    for s in draw(&tricky_string(), 120, "paths") {
        for path in
            ["/api/v1/instances/{}", "/api/v1/ops/jobs/{}", "/api/v1/snapshots/{}", "/api/v1/snapshots/{}/download"]
        {
            let path = path.replace("{}", &encode(&s));
            if path.contains("//") || path.ends_with('/') {
                continue;
            }
            let (status, answer) = env.get(&path).await.expect("get");
            assert_refusal(status, &answer, &format!("GET {path}"));
            assert!([200, 400, 404].contains(&status), "GET {path}: unexpected {status} {answer}");
        }
    }
    let params = prop::sample::select(vec![
        "instance-id",
        "owner-id",
        "state",
        "type",
        "limit",
        "include-removed",
        "cursor",
        "x",
    ]);
    for (name, value) in draw(&(params, tricky_string()), 200, "queries") {
        for list in ["/api/v1/ops/jobs", "/api/v1/instances", "/api/v1/snapshots"] {
            let path = format!("{list}?{}={}", encode(name), encode(&value));
            let (status, answer) = env.get(&path).await.expect("get");
            assert_refusal(status, &answer, &format!("GET {path}"));
            assert!([200, 422].contains(&status), "GET {path}: unexpected {status} {answer}");
            if status == 422 {
                assert_eq!(answer["errors"][0]["field"], name, "GET {path}: the parameter is named: {answer}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn arbitrary_queue_messages_each_end_once_and_none_loops() {
    let options =
        Options { workers: 1, env: vec![("DFE__PROVISIONERS__DEFAULT".into(), "noop".into())], ..Default::default() };
    let env = TestEnv::start_with(options).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let mut published = Vec::new();
    for kind in ["provision", "deprovision", "export"] {
        for (i, mut body) in draw(&job_body(kind), 25, &format!("queue-{kind}")).into_iter().enumerate() {
            if let Some(o) = body.as_object_mut() {
                o.remove("job-id");
            }
            let id = format!("fuzz-{kind}-{i}");
            let props = lapin::BasicProperties::default().with_message_id(id.as_str().into());
            env.publish_raw(kind, body.to_string().as_bytes(), props).await.expect("publish");
            published.push(id);
        }
    }
    let sentinel = env.instance_id("sentinel");
    let body = json!({"job-id": "fuzz-sentinel", "owner-id": 1, "instance-id": sentinel}).to_string();
    env.publish_raw("provision", body.as_bytes(), Default::default()).await.expect("publish");
    events.wait_final("fuzz-sentinel", JOB_TIMEOUT).await.expect("the sentinel ends");
    for queue in ["dfe.jobs.provision", "dfe.jobs.deprovision", "dfe.jobs.export"] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while probes::queue_depth(&env.amqp_url, queue).await.expect("depth") > 0 {
            assert!(tokio::time::Instant::now() < deadline, "{queue} does not drain");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for id in &published {
        // Each message became a job that ended in one final event, or was rejected once.
        let outcome = events
            .wait_for(id, JOB_TIMEOUT, |e| {
                e["job-id"] == id.as_str()
                    && (dfe_tests::events::is_final(e["event"].as_str().unwrap_or_default())
                        || e["event"] == "dfe.job.rejected")
            })
            .await
            .unwrap_or_else(|e| panic!("message {id} came to no end: {e}"));
        let ends: Vec<Value> = events
            .of_job(id)
            .into_iter()
            .filter(|e| {
                dfe_tests::events::is_final(e["event"].as_str().unwrap_or_default()) || e["event"] == "dfe.job.rejected"
            })
            .collect();
        let distinct: std::collections::HashSet<String> = ends.iter().map(|e| e["event-id"].to_string()).collect();
        assert_eq!(distinct.len(), 1, "message {id} ended once: {outcome}");
    }
    assert!(!env.all_logs().contains("requeueing"), "no message was put back on its queue");
}
