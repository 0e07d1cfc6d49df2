//! A Docker host of the fleet goes away and comes back (engine `b` of
//! `deploy/setup-fleet.sh` is stopped): it is marked unreachable once, takes no new
//! instances, its own instances' deprovisions fail cleanly, and they are finished once it
//! is back.

use std::process::Command;
use std::time::Duration;

use dfe_tests::fleet::{self, A, B};
use dfe_tests::{repo_root, EventLog, Options, TestEnv};
use serde_json::json;

const LONG: Duration = Duration::from_secs(120);

/// Stops extra engine `b` (its dockerd, by its pidfile), as a host that went down.
fn stop_engine_b() {
    let pid = std::fs::read_to_string("/run/dfe-docker-b.pid").expect("engine b's pidfile (deploy/setup.sh)");
    let out = Command::new("kill").arg(pid.trim()).output().expect("kill");
    assert!(out.status.success(), "stopping engine b: {}", String::from_utf8_lossy(&out.stderr));
    for _ in 0..100 {
        if Command::new("kill").args(["-0", pid.trim()]).output().map(|o| !o.status.success()).unwrap_or(true) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("engine b did not stop");
}

/// Starts it again (setup-fleet.sh starts what is missing).
fn start_engine_b() {
    let out = Command::new(repo_root().join("deploy/setup-fleet.sh")).output().expect("setup-fleet.sh");
    assert!(
        out.status.success(),
        "restarting engine b: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_goes_away_takes_no_instances_and_its_deprovisions_finish_when_it_is_back() {
    fleet::preflight().await.expect("the fleet's engines");
    let extra = [
        "\n[clusters.duo]\n".to_owned(),
        fleet::host("duo", "da", A, ""),
        fleet::host("duo", "db", B, ""),
        fleet::provisioner("duo", "duo", &[], true),
    ]
    .concat();
    let env = [
        ("DFE__WORKER__PROBE_INTERVAL_SECS".to_owned(), "1".to_owned()),
        ("DFE__WORKER__MAX_ATTEMPTS".to_owned(), "2".to_owned()),
        ("DFE__WORKER__RETRY_BASE_MS".to_owned(), "300".to_owned()),
    ];
    let env = TestEnv::start_with(Options { workers: 2, extra_config: extra, env: env.to_vec(), ..Default::default() })
        .await
        .expect("environment");
    let events = EventLog::subscribe_durable(&env.amqp_url, &format!("events-{}", env.id)).await.expect("subscribe");
    let first: Vec<String> = (0..2).map(|i| env.instance_id(&format!("out{i}"))).collect();
    let jobs = env
        .submit_all("provision", &first, |i| json!({"owner-id": 1, "instance-id": i, "guest-location": "duo"}))
        .await
        .expect("accepted");
    for job in &jobs {
        assert_eq!(env.wait_job(job, LONG).await.expect("ends")["state"], "succeeded");
    }
    let mut on_b = None;
    for i in &first {
        let (_, r) = env.get(&format!("/api/v1/instances/{i}")).await.expect("instance");
        if r["host-id"] == "db" {
            on_b = Some(i.clone());
        }
    }
    let on_b = on_b.expect("spread put one instance on each host");

    stop_engine_b();
    let outcome = async {
        let down = events
            .wait_for("dfe.host.unreachable", LONG, |e| e["event"] == "dfe.host.unreachable")
            .await
            .expect("announced");
        assert_eq!(
            (&down["result"]["host-id"], &down["result"]["cluster-id"]),
            (&json!("db"), &json!("duo")),
            "{down}"
        );
        assert!(down["error"]["message"].is_string(), "with the last probe's error: {down}");
        let (_, host) = env.get("/api/v1/hosts/db").await.expect("host");
        assert_eq!(host["state"], "unreachable", "{host}");
        // New instances go to the other host.
        let more: Vec<String> = (0..3).map(|i| env.instance_id(&format!("after{i}"))).collect();
        let jobs = env
            .submit_all("provision", &more, |i| json!({"owner-id": 1, "instance-id": i, "guest-location": "duo"}))
            .await
            .expect("accepted");
        for (i, job) in more.iter().zip(&jobs) {
            assert_eq!(env.wait_job(job, LONG).await.expect("ends")["state"], "succeeded");
            let (_, r) = env.get(&format!("/api/v1/instances/{i}")).await.expect("instance");
            assert_eq!(r["host-id"], "da", "{r}");
        }
        // The instance on the lost host cannot be removed now: its deprovision fails cleanly.
        let job = env.submit("deprovision", json!({"instance-id": on_b})).await.expect("202");
        let failed = env.wait_job(&job, LONG).await.expect("ends");
        assert_eq!(
            (&failed["state"], &failed["error"]["code"]),
            (&json!("failed"), &json!("host-unreachable")),
            "{failed}"
        );
        let (_, r) = env.get(&format!("/api/v1/instances/{on_b}")).await.expect("instance");
        assert_eq!(r["state"], "failed", "left for the reconciler to finish: {r}");
        let unreachable = events.all().iter().filter(|e| e["event"] == "dfe.host.unreachable").count();
        assert_eq!(unreachable, 1, "announced once per outage, not per probe");
    };
    let result = tokio::time::timeout(LONG, outcome).await;
    // Whatever happened, the engine comes back for the tests after this one.
    start_engine_b();
    result.expect("the outage was handled in time");

    let up =
        events.wait_for("dfe.host.recovered", LONG, |e| e["event"] == "dfe.host.recovered").await.expect("recovered");
    assert_eq!(up["result"]["host-id"], "db", "{up}");
    // The failed deprovision is submitted again and finishes.
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (_, r) = env.get(&format!("/api/v1/instances/{on_b}")).await.expect("instance");
        if r["state"] == "deprovisioned" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never finished: {r}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(B.parts_of(&on_b).await.expect("parts"), (0, 0), "removed from the host once it was back");
}
