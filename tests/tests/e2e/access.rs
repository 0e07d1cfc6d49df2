//! Access: what a token may do is what its `[[api.clients]]` entry says. A read-only token
//! reads but cannot submit (403 naming the scope); a token limited to an owner sees that
//! owner's instances, jobs and snapshots and nothing else (another owner's are 404s, by id,
//! by filter, by download), and submits only for it; an expired token is a 401 saying so;
//! every documented scope is the one enforced.

use dfe_tests::{client_config, Options, TestEnv};
use serde_json::{json, Value};

use crate::JOB_TIMEOUT;

const READER: &str = "reader-token-0123456789abcdef";
const ACME: &str = "acme-token-0123456789abcdef";
const OPERATOR: &str = "operator-token-0123456789abcdef";
const EXPIRED: &str = "expired-token-0123456789abcdef";

fn clients() -> String {
    [
        client_config("reader", READER, r#"scopes = ["read"]"#),
        client_config("acme", ACME, r#"owners = ["acme"]"#),
        client_config("operator", OPERATOR, r#"scopes = ["read", "ops"]"#),
        client_config("expired", EXPIRED, r#"expires-at = "2020-01-01T00:00:00Z""#),
    ]
    .concat()
}

/// An environment with the clients above and one worker running the `noop` provisioner.
async fn env() -> TestEnv {
    let options = Options {
        workers: 1,
        extra_config: clients(),
        env: vec![("DFE__PROVISIONERS__DEFAULT".into(), "noop".into())],
        ..Default::default()
    };
    TestEnv::start_with(options).await.expect("environment")
}

/// `answer` with every occurrence of `ids` replaced by `ID`: two answers about different ids
/// that read the same this way tell a client nothing apart.
fn masked(answer: &Value, ids: &[&str]) -> String {
    let mut text = answer.to_string();
    for id in ids {
        text = text.replace(id, "ID");
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_token_reads_but_cannot_submit_cancel_or_administer_and_403_names_the_scope() {
    let env = env().await;
    let instance = env.instance_id("ro");
    let body = json!({"owner-id": 7, "instance-id": instance});
    let (status, answer) = env.post_as(Some(READER), "/api/v1/ops/provision", &body).await.expect("post");
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["type"], "urn:dfe:problem:forbidden");
    assert!(answer["detail"].as_str().expect("detail").contains("lacks the `ops` scope"), "{answer}");
    assert_eq!(env.get(&format!("/api/v1/instances/{instance}")).await.expect("get").0, 404, "nothing was submitted");
    let job = env.submit("provision", body).await.expect("the full token submits");
    env.wait_job(&job, JOB_TIMEOUT).await.expect("ends");
    let (status, answer) = env.get_as(Some(READER), &format!("/api/v1/ops/jobs/{job}")).await.expect("get");
    assert_eq!((status, &answer["requested-by"]), (200, &json!("tests")), "{answer}");
    let (status, answer) =
        env.post_as(Some(READER), &format!("/api/v1/ops/jobs/{job}/cancel"), &json!({})).await.expect("post");
    assert_eq!(status, 403, "{answer}");
    for path in ["/api/v1/reconcile", "/api/v1/reconcile/6b1a2c3d-0000-4000-8000-000000000001"] {
        for token in [READER, OPERATOR] {
            let (status, answer) = env.get_as(Some(token), path).await.expect("get");
            assert_eq!(status, 403, "GET {path}: {answer}");
            assert!(answer["detail"].as_str().expect("detail").contains("`admin` scope"), "{answer}");
        }
    }
    let (status, answer) = env.post_as(Some(OPERATOR), "/api/v1/hosts/local/cordon", &json!({})).await.expect("post");
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = env.post_as(Some(OPERATOR), "/api/v1/reconcile", &json!({})).await.expect("post");
    assert_eq!(status, 403, "{answer}");
    // Through the CLI the refusal reads the same.
    let (code, _, err) = env
        .cli_with_env(&["provision", "7", &env.instance_id("ro-cli"), "noop"], &[("DFE_TOKEN", Some(READER))])
        .await
        .expect("dfe");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("403 Forbidden: this token lacks the `ops` scope"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_a_401_that_says_it_expired() {
    let env = env().await;
    for path in ["/api/v1/instances", "/api/v1/ops/jobs"] {
        let (status, answer) = env.get_as(Some(EXPIRED), path).await.expect("get");
        assert_eq!(status, 401, "{answer}");
        assert!(answer["detail"].as_str().expect("detail").contains("expired at 2020-01-01T00:00:00Z"), "{answer}");
    }
    let (code, _, err) = env.cli_with_env(&["instances"], &[("DFE_TOKEN", Some(EXPIRED))]).await.expect("dfe");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("expired at 2020-01-01T00:00:00Z"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_limited_to_an_owner_sees_and_acts_for_that_owner_alone() {
    let env = env().await;
    let mine = env.instance_id("acme");
    let theirs = env.instance_id("other");
    let job_mine =
        env.submit("provision", json!({"owner-id": "acme", "instance-id": mine})).await.expect("provision acme's");
    let job_theirs =
        env.submit("provision", json!({"owner-id": "other", "instance-id": theirs})).await.expect("provision other's");
    for job in [&job_mine, &job_theirs] {
        assert_eq!(env.wait_job(job, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded");
    }
    for (id, owner) in [(&mine, "acme"), (&theirs, "other")] {
        let job = env.submit("export", json!({"instance-id": id})).await.expect("export");
        assert_eq!(env.wait_job(&job, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded", "export of {owner}'s");
    }

    // Lists: only acme's, whatever the filter asks.
    let (_, list) = env.get_as(Some(ACME), "/api/v1/instances").await.expect("list");
    let listed: Vec<&str> =
        list["instances"].as_array().expect("instances").iter().filter_map(|i| i["instance-id"].as_str()).collect();
    assert_eq!(listed, [mine.as_str()], "{list}");
    let (_, jobs) = env.get_as(Some(ACME), "/api/v1/ops/jobs").await.expect("jobs");
    let jobs = jobs["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 2, "acme's provision and export (an export names no owner; its instance's is recorded)");
    assert!(jobs.iter().all(|j| j["instance-id"] == mine.as_str()), "{jobs:?}");
    let (_, snapshots) = env.get_as(Some(ACME), "/api/v1/snapshots").await.expect("snapshots");
    let snapshots = snapshots["snapshots"].as_array().expect("snapshots").clone();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0]["instance-id"], mine.as_str());
    for list in ["/api/v1/ops/jobs", "/api/v1/snapshots"] {
        let (status, answer) = env.get_as(Some(ACME), &format!("{list}?instance-id={theirs}")).await.expect("list");
        assert_eq!(status, 200, "{list}?instance-id={theirs}: {answer}");
        assert!(!answer.to_string().contains(&theirs), "{list} shows nothing of the other owner: {answer}");
    }
    for list in ["/api/v1/instances", "/api/v1/ops/jobs", "/api/v1/snapshots"] {
        // An owner filter naming another owner: 404 whether or not that owner has anything.
        let (s1, a) = env.get_as(Some(ACME), &format!("{list}?owner-id=other")).await.expect("list");
        let (s2, b) = env.get_as(Some(ACME), &format!("{list}?owner-id=nobody")).await.expect("list");
        assert_eq!((s1, s2), (404, 404), "{list}: {a} {b}");
        assert_eq!(masked(&a, &["other"]), masked(&b, &["nobody"]), "{list}");
        let (status, answer) = env.get_as(Some(ACME), &format!("{list}?owner-id=acme")).await.expect("list");
        assert_eq!(status, 200, "{list}?owner-id=acme: {answer}");
    }

    // By id: another owner's instance, job and snapshot answer as what does not exist.
    let ghost = env.instance_id("ghost");
    let (s1, theirs_answer) = env.get_as(Some(ACME), &format!("/api/v1/instances/{theirs}")).await.expect("get");
    let (s2, ghost_answer) = env.get_as(Some(ACME), &format!("/api/v1/instances/{ghost}")).await.expect("get");
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(masked(&theirs_answer, &[&theirs]), masked(&ghost_answer, &[&ghost]), "no existence leak");
    assert_eq!(env.get_as(Some(ACME), &format!("/api/v1/instances/{mine}")).await.expect("get").0, 200);
    let (s1, a) = env.get_as(Some(ACME), &format!("/api/v1/ops/jobs/{job_theirs}")).await.expect("get");
    let (s2, b) = env.get_as(Some(ACME), "/api/v1/ops/jobs/no-such-job").await.expect("get");
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(masked(&a, &[&job_theirs]), masked(&b, &["no-such-job"]));
    let (_, all) = env.get("/api/v1/snapshots").await.expect("snapshots");
    let their_snapshot = all["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .find(|s| s["instance-id"] == theirs.as_str())
        .and_then(|s| s["snapshot-id"].as_str())
        .expect("the other owner's snapshot")
        .to_owned();
    for path in [format!("/api/v1/snapshots/{their_snapshot}"), format!("/api/v1/snapshots/{their_snapshot}/download")]
    {
        let (status, answer) = env.get_as(Some(ACME), &path).await.expect("get");
        assert_eq!(status, 404, "{path}: {answer}");
        assert_eq!(env.get(&path).await.expect("get").0, 200, "{path} exists for a token of every owner");
    }

    // Acting: for acme only; on another's instance, as if it did not exist.
    let other_new = env.instance_id("other-new");
    let (status, answer) = env
        .post_as(Some(ACME), "/api/v1/ops/provision", &json!({"owner-id": "other", "instance-id": other_new}))
        .await
        .expect("post");
    assert_eq!(status, 403, "{answer}");
    assert!(answer["detail"].as_str().expect("detail").contains("owner other"), "{answer}");
    for kind in ["deprovision", "export"] {
        let (s1, a) = env
            .post_as(Some(ACME), &format!("/api/v1/ops/{kind}"), &json!({"instance-id": theirs}))
            .await
            .expect("post");
        let (s2, b) = env
            .post_as(Some(ACME), &format!("/api/v1/ops/{kind}"), &json!({"instance-id": ghost}))
            .await
            .expect("post");
        assert_eq!((s1, s2), (404, 404), "{kind}: {a} {b}");
        assert_eq!(masked(&a, &[&theirs]), masked(&b, &[&ghost]), "{kind}");
    }
    let import = json!({"owner-id": "acme", "instance-id": env.instance_id("acme-copy"), "snapshot": their_snapshot});
    let (status, answer) = env.post_as(Some(ACME), "/api/v1/ops/import", &import).await.expect("post");
    assert_eq!(status, 404, "another owner's snapshot is not there to import: {answer}");
    let (status, answer) =
        env.post_as(Some(ACME), &format!("/api/v1/ops/jobs/{job_theirs}/cancel"), &json!({})).await.expect("post");
    assert_eq!(status, 404, "{answer}");
    let job = env.submit_as(ACME, "deprovision", json!({"instance-id": mine})).await;
    let record = env.wait_job(&job, JOB_TIMEOUT).await.expect("ends");
    assert_eq!((&record["state"], &record["requested-by"]), (&json!("succeeded"), &json!("acme")), "{record}");
    let fresh = env.instance_id("acme-fresh");
    let job = env.submit_as(ACME, "provision", json!({"owner-id": "acme", "instance-id": fresh})).await;
    assert_eq!(env.wait_job(&job, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded");
    // The other owner's instance was never touched.
    let (_, other) = env.get(&format!("/api/v1/instances/{theirs}")).await.expect("get");
    assert_eq!(other["state"], "provisioned", "{other}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_scope_is_the_one_enforced() {
    let env = TestEnv::start_with(Options { workers: 0, extra_config: clients(), ..Default::default() })
        .await
        .expect("environment");
    let (_, doc) = env.get_as(None, "/api/v1/openapi.json").await.expect("the document");
    let tokens = [("read", READER), ("ops", OPERATOR)];
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("operations") {
            let Some(scope) = op["security"][0]["bearer"][0].as_str() else { continue };
            let uri = path
                .replace("{job-id}", "no-such-job")
                .replace("{instance-id}", "no-such-instance")
                .replace("{snapshot-id}", "no-such-snapshot")
                .replace("{host-id}", "no-such-host")
                .replace("{owner-id}", "no-such-owner")
                .replace("{id}", "6b1a2c3d-0000-4000-8000-000000000001");
            for (held, token) in tokens {
                // The `operator` token holds read and ops; the `reader` read alone.
                let has = held == "ops" && scope == "read" || held == scope;
                // A body no operation accepts: nothing is submitted or changed.
                let body = json!({"no-such-field": true});
                let body = (method != "get").then_some(&body);
                let (status, answer) = env.request_as(method, Some(token), &uri, body).await.expect("answer");
                if has {
                    assert_ne!(status, 403, "{method} {uri} with {held}: {answer}");
                } else {
                    assert_eq!(status, 403, "{method} {uri} with {held} (needs {scope}): {answer}");
                    let detail = answer["detail"].as_str().unwrap_or_default();
                    assert!(detail.contains(&format!("`{scope}` scope")), "{method} {uri}: {answer}");
                }
            }
        }
    }
}

trait SubmitAs {
    async fn submit_as(&self, token: &str, kind: &str, body: Value) -> String;
}

impl SubmitAs for TestEnv {
    async fn submit_as(&self, token: &str, kind: &str, body: Value) -> String {
        let (status, answer) = self.post_as(Some(token), &format!("/api/v1/ops/{kind}"), &body).await.expect("post");
        assert_eq!(status, 202, "POST {kind} {body}: {answer}");
        answer["job-id"].as_str().expect("a job id").to_owned()
    }
}
