//! The OpenAPI document describes the API that is served: every documented operation is
//! routed, and answers with a status and a content type it documents; its errors are
//! problems; and an operation that needs a token answers its documented 401 without one.

use dfe_tests::{Options, TestEnv};
use serde_json::{json, Value};

/// What an operation answered.
struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_is_served_and_answers_as_documented() {
    let env = TestEnv::start_with(Options { workers: 0, ..Default::default() }).await.expect("environment");
    let http = reqwest::Client::new();
    let resp = http.get(format!("{}/api/v1/openapi.json", env.api_url)).send().await.expect("get");
    assert_eq!(resp.status(), 200, "the document needs no token");
    let doc: Value = resp.json().await.expect("JSON");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 18, "{} paths", paths.len());
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("operations") {
            let uri = concrete(path, op);
            let needs_token = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            // With the token, then (where one is needed) without it.
            let tokens = if needs_token { vec![Some(env.token.as_str()), None] } else { vec![None] };
            for token in tokens {
                let answer = send(&http, &env.api_url, method, &uri, token).await;
                let (status, body) = (answer.status, &answer.body);
                let unrouted = status == 404 && body["detail"] == "no such endpoint";
                assert!(!unrouted && status != 405, "{method} {uri} is not served: {status} {body}");
                let documented = &op["responses"][status.to_string()];
                assert!(documented.is_object(), "{method} {uri} answered {status}, which it does not document: {body}");
                if needs_token && token.is_none() {
                    assert_eq!(status, 401, "{method} {uri} without a token: {body}");
                }
                if let Some(content) = documented["content"].as_object() {
                    assert!(
                        content.keys().any(|k| k.split(';').next().unwrap_or_default().trim() == answer.content_type),
                        "{method} {uri} answered {status} as {}, documented as {:?}",
                        answer.content_type,
                        content.keys().collect::<Vec<_>>()
                    );
                }
                if answer.content_type == "application/problem+json" {
                    for member in ["type", "title", "status", "detail"] {
                        assert!(body.get(member).is_some(), "{method} {uri}: the problem has no {member}: {body}");
                    }
                    assert_eq!(body["status"], status, "{method} {uri}: {body}");
                }
            }
        }
    }
}

/// `path` with its placeholders filled with ids that exist nowhere (a UUID where the
/// parameter is one, else an id that is valid as an instance, job or snapshot id).
fn concrete(path: &str, op: &Value) -> String {
    let mut uri = path.to_owned();
    for p in op["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "path") {
        let name = p["name"].as_str().expect("a parameter name");
        let value =
            if p["schema"]["format"] == "uuid" { uuid::Uuid::new_v4().to_string() } else { "no-such-id".to_owned() };
        uri = uri.replace(&format!("{{{name}}}"), &value);
    }
    uri
}

/// Sends one request. A POST, PATCH or DELETE carries a body no operation accepts, so that
/// nothing is submitted, run or changed. An event stream's body is not read (it would not end).
async fn send(http: &reqwest::Client, api: &str, method: &str, uri: &str, token: Option<&str>) -> Answer {
    let url = format!("{api}{uri}");
    let mut req = match method {
        "get" => http.get(url),
        "post" => http.post(url).json(&json!({ "no-such-field": true })),
        "patch" => http.patch(url).json(&json!({ "no-such-field": true })),
        "delete" => http.delete(url).json(&json!({ "no-such-field": true })),
        other => panic!("a method this test does not know: {other}"),
    };
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("an answer");
    let status = resp.status().as_u16();
    // The media type alone: `text/html; charset=utf-8` is documented as `text/html`.
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let content_type = content_type.split(';').next().unwrap_or_default().trim().to_owned();
    if content_type.starts_with("text/event-stream") {
        return Answer { status, content_type: "text/event-stream".to_owned(), body: Value::Null };
    }
    let text = resp.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, content_type, body }
}
