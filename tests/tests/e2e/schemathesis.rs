//! Schemathesis, a property-based fuzzer of OpenAPI documents, against the real api of a
//! TestEnv (`deploy/fuzz-api.sh`): it finds no 5xx and no answer that contradicts the
//! document. Bounded to about two minutes.

use std::time::Duration;

use dfe_tests::{repo_root, Options, TestEnv};

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_the_document_contradicts() {
    // One worker with the noop provisioner as default: what the fuzzer submits ends fast and
    // touches no Docker host or database server, and a POST /api/v1/reconcile is answered.
    let options =
        Options { workers: 1, env: vec![("DFE__PROVISIONERS__DEFAULT".into(), "noop".into())], ..Default::default() };
    let env = TestEnv::start_with(options).await.expect("environment");
    let started = std::time::Instant::now();
    let run = tokio::process::Command::new(repo_root().join("deploy/fuzz-api.sh"))
        .arg(&env.api_url)
        .env("DFE_TOKEN", &env.token)
        .env("DFE_FUZZ_MAX_TIME", "110")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run).await.expect("schemathesis ends").expect("it runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- schemathesis ({:?}) ---\n{stdout}\n{stderr}", started.elapsed());
    assert!(out.status.success(), "schemathesis found problems (its report is above)");
    assert!(!env.all_logs().contains("panicked"), "no handler panicked");
}
