//! The API and the workers ride out restarts of RabbitMQ, PostgreSQL and the Docker engine
//! without being restarted themselves; every accepted job ends, once.

use std::process::Command;
use std::time::{Duration, Instant};

use dfe_tests::{EventLog, Options, TestEnv};
use futures::future::join_all;
use serde_json::json;

pub(crate) const LONG: Duration = Duration::from_secs(300);

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("run");
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub(crate) async fn submit_noop(env: &TestEnv, prefix: &str, n: usize) -> (Vec<String>, usize) {
    let answers = join_all((0..n).map(|i| {
        let body = json!({"owner-id": 1, "instance-id": format!("{prefix}-{i}-{}", env.id), "guest-location": "noop"});
        async move { env.post("/api/v1/ops/provision", &body).await }
    }))
    .await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for a in answers {
        match a {
            Ok((202, body)) => accepted.push(body["job-id"].as_str().expect("id").to_owned()),
            Ok((503, _)) => refused += 1,
            other => panic!("unexpected answer: {other:?}"),
        }
    }
    (accepted, refused)
}

pub(crate) async fn wait_all(env: &TestEnv, events: &EventLog, jobs: &[String]) -> Duration {
    let start = Instant::now();
    for job in jobs {
        env.wait_job(job, LONG).await.expect("job ends");
        events.wait_final(job, LONG).await.expect("final event");
    }
    start.elapsed()
}

/// Workers whose jobs take a while (500 ms per step), so that many are in flight.
fn slow_workers() -> Options {
    Options { workers: 2, worker_env: vec![("DFE_TEST_STEP_DELAY_MS".into(), "500".into())], ..Default::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rabbitmq_restart_with_300_jobs_in_flight_loses_and_doubles_nothing() {
    let env = TestEnv::start_with(slow_workers()).await.expect("environment");
    let events = EventLog::subscribe_durable(&env.amqp_url, &format!("events-{}", env.id)).await.expect("subscribe");
    let pids: Vec<u32> = env.workers.iter().map(|w| w.pid()).chain(env.api.iter().map(|a| a.pid())).collect();

    let (mut jobs, _) = submit_noop(&env, "rmq-a", 150).await;
    let restart = tokio::task::spawn_blocking(|| run("rabbitmqctl", &["stop_app"]));
    let (more, refused) = submit_noop(&env, "rmq-b", 150).await;
    restart.await.expect("stopped");
    assert_eq!(refused, 0, "jobs are recorded (and published later) while the broker is down");
    jobs.extend(more);
    tokio::time::sleep(Duration::from_secs(3)).await;
    run("rabbitmqctl", &["start_app"]);
    run("rabbitmqctl", &["await_startup"]);
    let recovered = wait_all(&env, &events, &jobs).await;
    eprintln!(
        "figures: rabbitmq restart: {} jobs submitted, 0 lost, all ended {recovered:?} after the broker was back",
        jobs.len()
    );
    assert_eq!(jobs.len(), 300);
    let now: Vec<u32> = env.workers.iter().map(|w| w.pid()).chain(env.api.iter().map(|a| a.pid())).collect();
    assert_eq!(pids, now, "no process was restarted");
    env.check_invariants(&events, &jobs, false).await.expect("invariants");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_restart_with_100_jobs_in_flight_loses_and_doubles_nothing() {
    let env = TestEnv::start_with(slow_workers()).await.expect("environment");
    let events = EventLog::subscribe_durable(&env.amqp_url, &format!("events-{}", env.id)).await.expect("subscribe");
    let (mut jobs, _) = submit_noop(&env, "pg-a", 60).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let registry = dfe_tests::probes::pg(env.registry()).await.expect("registry");
    let open: i64 = registry
        .query_one("SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed')", &[])
        .await
        .expect("count")
        .get(0);
    assert!(open > 0, "jobs are in flight when PostgreSQL restarts");
    drop(registry);
    let restart = tokio::task::spawn_blocking(|| run("pg_ctlcluster", &["15", "main", "restart"]));
    let (more, refused) = submit_noop(&env, "pg-b", 40).await;
    restart.await.expect("restarted");
    jobs.extend(more);
    eprintln!("{refused} submissions were refused with 503 while the registry was down (nothing accepted was lost)");
    let recovered = wait_all(&env, &events, &jobs).await;
    eprintln!(
        "figures: postgresql restart: {} jobs accepted, 0 lost, all ended {recovered:?} after the restart",
        jobs.len()
    );
    assert!(jobs.len() >= 60);
    let mut rerun = 0;
    for job in &jobs {
        let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("job");
        rerun += usize::from(record["attempts"].as_i64().unwrap_or(0) > 1);
    }
    eprintln!("{open} jobs were in flight at the restart; {rerun} of them had to run again");
    env.check_invariants(&events, &jobs, false).await.expect("invariants");
}

async fn stop_dockerd() {
    let pid = dockerd_pid().expect("dockerd runs");
    run("kill", &["-TERM", &pid]);
    while dockerd_pid().is_some() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the engine again the way the setup does (it knows the flags this machine needs).
async fn start_dockerd() {
    let setup = dfe_tests::repo_root().join("deploy/setup.sh");
    tokio::task::spawn_blocking(move || run(&setup.display().to_string(), &[])).await.expect("docker back");
}

/// The main engine's pid, from its pidfile (the fleet's extra engines run beside it), while
/// that process is alive.
fn dockerd_pid() -> Option<String> {
    let pid = std::fs::read_to_string("/var/run/docker.pid").ok()?.trim().to_owned();
    let alive = Command::new("kill").args(["-0", &pid]).output().ok()?.status.success();
    (!pid.is_empty() && alive).then_some(pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn provisions_retry_through_a_docker_engine_outage_and_succeed_once_it_is_back() {
    let retries = vec![
        ("DFE__WORKER__MAX_ATTEMPTS".to_owned(), "10".to_owned()),
        ("DFE__WORKER__RETRY_BASE_MS".to_owned(), "1000".to_owned()),
        ("DFE__WORKER__RETRY_MAX_MS".to_owned(), "5000".to_owned()),
    ];
    let env =
        TestEnv::start_with(Options { workers: 2, worker_env: retries, ..Default::default() }).await.expect("env");
    let events = EventLog::subscribe_durable(&env.amqp_url, &format!("events-{}", env.id)).await.expect("subscribe");
    stop_dockerd().await;
    let instances: Vec<String> = (0..4).map(|i| env.instance_id(&format!("dk{i}"))).collect();
    let jobs: Vec<String> =
        env.submit_all("provision", &instances, |i| json!({"owner-id": 1, "instance-id": i})).await.expect("202");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let back = Instant::now();
    start_dockerd().await;
    wait_all(&env, &events, &jobs).await;
    eprintln!(
        "figures: docker outage of 20 s: {} provisions, all ended {:?} after the engine was started again",
        jobs.len(),
        back.elapsed()
    );
    for job in &jobs {
        let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("job");
        assert_eq!(record["state"], "succeeded", "{record}");
        assert!(record["attempts"].as_i64().unwrap_or(0) >= 2, "it was retried: {record}");
    }
    env.check_invariants(&events, &jobs, true).await.expect("invariants");
    let mut cleanup = Vec::new();
    for i in &instances {
        cleanup.push(env.submit("deprovision", json!({"instance-id": i})).await.expect("202"));
    }
    wait_all(&env, &events, &cleanup).await;
    env.check_invariants(&events, &cleanup, true).await.expect("invariants after deprovision");
}

#[tokio::test(flavor = "multi_thread")]
async fn provisions_fail_cleanly_when_the_docker_engine_stays_away_past_the_retry_budget() {
    let retries = vec![
        ("DFE__WORKER__MAX_ATTEMPTS".to_owned(), "3".to_owned()),
        ("DFE__WORKER__RETRY_BASE_MS".to_owned(), "500".to_owned()),
    ];
    let env =
        TestEnv::start_with(Options { workers: 1, worker_env: retries, ..Default::default() }).await.expect("env");
    let events = EventLog::subscribe_durable(&env.amqp_url, &format!("events-{}", env.id)).await.expect("subscribe");
    stop_dockerd().await;
    let instances: Vec<String> = (0..2).map(|i| env.instance_id(&format!("dkgone{i}"))).collect();
    let mut jobs = Vec::new();
    for i in &instances {
        jobs.push(env.submit("provision", json!({"owner-id": 1, "instance-id": i})).await.expect("202"));
    }
    let outcome = async {
        for job in &jobs {
            let done = events.wait_final(job, LONG).await.expect("final");
            assert_eq!(done["event"], "dfe.provision.failed", "{done}");
            let message = done["error"]["message"].as_str().unwrap_or_default();
            assert!(message.starts_with("gave up after 3 attempts"), "{message}");
        }
    };
    // Whatever happens, the engine comes back for the tests after this one.
    let result = tokio::time::timeout(Duration::from_secs(120), outcome).await;
    start_dockerd().await;
    result.expect("the provisions ended within their retry budget");
    env.check_invariants(&events, &jobs, true).await.expect("invariants");
}
