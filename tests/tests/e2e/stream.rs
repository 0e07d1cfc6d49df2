//! `GET /api/v1/events/stream` without a browser: a script reading the stream sees a job's
//! events as they happen, a token limited to owners sees only its owners' events, the pattern
//! is the broker's topic match, and a stream's queue goes when its reader does.

use std::time::Duration;

use dfe_tests::console::{client_entry, EventStream};
use dfe_tests::{random_hex, Options, TestEnv};
use serde_json::json;

use crate::JOB_TIMEOUT;

/// The queues of the environment's vhost that the broker named (the streams' own).
fn server_named_queues(env: &TestEnv) -> Vec<String> {
    let vhost = env.amqp_url.rsplit('/').next().unwrap_or_default().to_owned();
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "-p", &vhost, "name"])
        .output()
        .expect("rabbitmqctl list_queues");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("amq.gen-")).map(str::to_owned).collect()
}

#[tokio::test]
async fn a_stream_reader_sees_a_jobs_events_and_an_owner_limited_token_only_its_owners() {
    let limited_token = format!("owner-token-{}", random_hex(24));
    let ops_token = format!("ops-token-{}", random_hex(24));
    let mine = format!("own{}", random_hex(6));
    let theirs = format!("other{}", random_hex(6));
    let mut extra = client_entry("owner-limited", &limited_token, &format!("owners = [\"{mine}\"]"));
    extra.push_str(&client_entry("ops-only", &ops_token, "scopes = [\"ops\"]"));
    let env = TestEnv::start_with(Options { extra_config: extra, ..Default::default() }).await.expect("env");

    // Refusals are the REST API's problems, before any stream opens.
    let url = format!("{}/api/v1/events/stream", env.api_url);
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let no_token = http.get(&url).send().await.expect("answer");
    assert_eq!(no_token.status(), 401);
    let ops_only = http.get(&url).bearer_auth(&ops_token).send().await.expect("answer");
    assert_eq!(ops_only.status(), 403, "reading events needs the read scope");
    let bad = http.get(format!("{url}?pattern=dfe..x")).bearer_auth(&env.token).send().await.expect("answer");
    assert_eq!(bad.status(), 422);
    let bad: serde_json::Value = bad.json().await.expect("problem");
    assert_eq!(bad["errors"][0]["field"], "pattern", "{bad}");

    let everything = EventStream::open(&env.api_url, &env.token, "dfe.#").await.expect("stream");
    let limited = EventStream::open(&env.api_url, &limited_token, "dfe.#").await.expect("stream");
    let finals = EventStream::open(&env.api_url, &env.token, "dfe.provisioned").await.expect("stream");
    assert_eq!(server_named_queues(&env).len(), 3, "one queue per stream");

    let a = env.instance_id("mine");
    let b = env.instance_id("theirs");
    let job_a = env
        .submit("provision", json!({"owner-id": mine, "instance-id": a, "guest-location": "noop"}))
        .await
        .expect("202");
    let job_b = env
        .submit("provision", json!({"owner-id": theirs, "instance-id": b, "guest-location": "noop"}))
        .await
        .expect("202");

    // The script sees each step of the job, then its final event, as SSE events named as
    // the events and identified by their event ids.
    for job in [&job_a, &job_b] {
        everything
            .wait_for(|e| e.data["job-id"] == job.as_str() && e.name == "dfe.provisioned", JOB_TIMEOUT)
            .await
            .expect("the final event of each job");
    }
    let of_a = everything.of_job(&job_a);
    let names: Vec<&str> = of_a.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["dfe.storage.provisioned", "dfe.database.provisioned", "dfe.provisioned"], "{of_a:?}");
    for e in &of_a {
        assert_eq!(e.data["event"], e.name.as_str());
        assert_eq!(e.id.as_deref(), e.data["event-id"].as_str(), "the SSE id is the event id");
        assert_eq!(e.data["instance-id"], a.as_str());
    }

    // The owner-limited token: all of its owner's events, none of the other's.
    limited
        .wait_for(|e| e.data["job-id"] == job_a.as_str() && e.name == "dfe.provisioned", JOB_TIMEOUT)
        .await
        .expect("its owner's final event");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(limited.of_job(&job_a).len(), 3, "{:?}", limited.all());
    let seen: Vec<_> = limited.all().into_iter().filter(|e| e.name != "ready").collect();
    assert!(seen.iter().all(|e| e.data["owner-id"] == mine.as_str()), "the limited token saw {seen:?}");

    // The pattern is a topic match: only the final success events.
    finals.wait_for(|e| e.data["job-id"] == job_b.as_str(), JOB_TIMEOUT).await.expect("b's final event");
    let names: Vec<String> = finals.all().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["ready", "dfe.provisioned", "dfe.provisioned"], "{names:?}");

    // Readers gone, queues gone.
    drop((everything, limited, finals));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server_named_queues(&env).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "left behind: {:?}", server_named_queues(&env));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An RFC 3339 time `secs` seconds from now (the tests crate has no date library).
fn in_seconds(secs: u32) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("+{secs} seconds"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn whoami_tells_a_token_what_it_may_do_and_a_stream_ends_with_its_token_or_the_api() {
    let viewer = format!("viewer-token-{}", random_hex(24));
    let brief = format!("brief-token-{}", random_hex(24));
    let mut extra = client_entry(
        "viewer",
        &viewer,
        "scopes = [\"read\"]\nowners = [7, \"acme\"]\nexpires-at = \"2999-01-01T00:00:00Z\"",
    );
    extra.push_str(&client_entry("brief", &brief, &format!("expires-at = \"{}\"", in_seconds(40))));
    let mut env =
        TestEnv::start_with(Options { extra_config: extra, workers: 0, ..Default::default() }).await.expect("env");
    let (status, all) = env.get("/api/v1/whoami").await.expect("answer");
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        all,
        json!({"client-id": "tests", "scopes": ["read", "ops", "admin"], "owners": null, "expires-at": null})
    );
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let answer = http.get(format!("{}/api/v1/whoami", env.api_url)).bearer_auth(&viewer).send().await.expect("answer");
    let text = answer.text().await.expect("body");
    let limited: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        limited,
        json!({"client-id": "viewer", "scopes": ["read"], "owners": ["7", "acme"], "expires-at": "2999-01-01T00:00:00Z"})
    );
    assert!(!text.contains(&viewer), "the token is not repeated");

    // A stream opened with a token that expires says so when it does, and ends.
    let expiring = EventStream::open(&env.api_url, &brief, "dfe.#").await.expect("stream");
    let ended = expiring.wait_for(|e| e.name == "expired", Duration::from_secs(60)).await.expect("`expired`");
    assert!(ended.data.as_str().is_some_and(|d| d.contains("expired")), "{ended:?}");
    let (status, _) = env.get("/api/v1/whoami").await.expect("answer");
    assert_eq!(status, 200, "the other tokens go on");

    // An open stream does not hold up a graceful stop of the api.
    let _open = EventStream::open(&env.api_url, &env.token, "dfe.#").await.expect("stream");
    let api = env.api.as_mut().expect("the api");
    api.terminate().expect("SIGTERM");
    assert_eq!(api.wait_exit(Duration::from_secs(15)).await.expect("the api stops"), Some(0));
}
