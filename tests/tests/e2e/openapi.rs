//! The OpenAPI document describes the API that is served: every documented path is routed.

use dfe_tests::{Options, TestEnv};

#[tokio::test(flavor = "multi_thread")]
async fn every_path_in_the_openapi_document_is_served() {
    let env = TestEnv::start_with(Options { workers: 0, ..Default::default() }).await.expect("environment");
    let resp = reqwest::get(format!("{}/api/v1/openapi.json", env.api_url)).await.expect("get");
    assert_eq!(resp.status(), 200, "the document needs no token");
    let doc: serde_json::Value = resp.json().await.expect("JSON");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 15, "{}", paths.len());
    for (path, ops) in paths {
        let concrete =
            path.replace("{job-id}", "nope").replace("{instance-id}", "nope").replace("{snapshot-id}", "nope");
        for method in ops.as_object().expect("operations").keys() {
            let (status, body) = match method.as_str() {
                "get" => env.get(&concrete).await.expect("get"),
                "post" => env.post(&concrete, &serde_json::json!({})).await.expect("post"),
                other => panic!("undocumented method {other}"),
            };
            let unrouted = status == 404 && body["detail"] == "no such endpoint";
            assert!(!unrouted && status != 405, "{method} {path} is not served: {status} {body}");
        }
    }
}
