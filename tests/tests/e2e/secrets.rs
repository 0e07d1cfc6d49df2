//! The database password of an instance appears in no log line, event body or API answer.

use dfe_tests::probes;
use dfe_tests::TestEnv;
use serde_json::json;

use crate::JOB_TIMEOUT;

#[tokio::test(flavor = "multi_thread")]
async fn an_instances_database_password_appears_in_no_log_event_or_api_answer() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("secret");
    let job_id = env.submit("provision", json!({"owner-id": 1, "instance-id": instance})).await.expect("202");
    assert_eq!(events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");

    let c = probes::container(&instance).await.expect("container");
    let password = probes::container_env(&c, "DB_PASSWORD").expect("password");
    assert!(password.len() >= 24);

    // Read everything a client can read about it.
    for path in [
        format!("/api/v1/ops/jobs/{job_id}"),
        "/api/v1/ops/jobs".to_owned(),
        format!("/api/v1/instances/{instance}"),
        "/api/v1/instances".to_owned(),
        "/api/v1/ops/provisioners".to_owned(),
        "/metrics".to_owned(),
    ] {
        let (status, _) = env.get(&path).await.expect("get");
        assert_eq!(status, 200, "{path}");
    }
    let job_id2 = env.submit("deprovision", json!({"instance-id": instance})).await.expect("202");
    assert_eq!(events.wait_final(&job_id2, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");

    let answers = env.answers.lock().expect("answers").join("\n");
    let bodies: String = events.all().iter().map(|e| e.to_string()).collect();
    let logs = env.all_logs();
    assert!(!answers.is_empty() && !bodies.is_empty() && logs.contains("job succeeded"), "something was captured");
    assert!(!answers.contains(&password), "the password leaked into an API answer");
    assert!(!bodies.contains(&password), "the password leaked into an event");
    assert!(!logs.contains(&password), "the password leaked into a log line");
    // Nor the admin password of the database server (`dfe` would match too much; check the
    // configured admin URL is redacted instead).
    assert!(!logs.contains("postgres://dfe:dfe@"), "a credentialed URL was logged");
}
