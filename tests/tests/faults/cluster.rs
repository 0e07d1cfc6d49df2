//! A clustered broker and registry (issue 14): the node the workers use killed, a node cut
//! off from the others, the registry's primary lost and its standby promoted. Every job
//! accepted ends, once, and its final event reaches a subscriber on another node; the api
//! and the workers are never restarted. These use the 3-node cluster of
//! `deploy/cluster-rabbitmq.sh` and the primary/standby pair of `deploy/registry-standby.sh`,
//! never the main broker or PostgreSQL, which other tests share.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dfe_tests::cluster::{RabbitCluster, StandbyPair};
use dfe_tests::events::is_final;
use dfe_tests::{Broker, EventLog, Options, RegistryServer, TestEnv};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::services::{submit_noop, wait_all, LONG};

/// Workers on every node of the cluster (node 1 first), each step of a job `step_ms` longer,
/// so that many jobs are in flight when a node goes.
fn on_cluster(step_ms: u64) -> Options {
    Options {
        workers: 2,
        broker: Broker::Cluster,
        worker_env: vec![("DFE_TEST_STEP_DELAY_MS".into(), step_ms.to_string())],
        ..Default::default()
    }
}

/// The process ids of the api and the workers, to show that none was restarted.
fn pids(env: &TestEnv) -> Vec<u32> {
    env.workers.iter().map(|w| w.pid()).chain(env.api.iter().map(|a| a.pid())).collect()
}

/// The nodes the api's and the workers' connections are on, asked of node `ask`: the
/// test's own subscriber (`dfe-tests …`) left out.
async fn service_nodes(cluster: &RabbitCluster, ask: usize, env: &TestEnv) -> Vec<(String, usize)> {
    let all = cluster.connections(ask, &env.vhost).await.expect("list_connections");
    all.into_iter().filter(|(name, _)| !name.starts_with("dfe-tests")).collect()
}

/// Waits until `events` holds the final events of at least `n` jobs.
async fn until_finals(events: &EventLog, n: usize) {
    let deadline = Instant::now() + LONG;
    while finals(events).len() < n {
        assert!(Instant::now() < deadline, "fewer than {n} jobs ended within {LONG:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The jobs whose final event `events` holds.
fn finals(events: &EventLog) -> BTreeSet<String> {
    events
        .all()
        .iter()
        .filter(|e| is_final(e["event"].as_str().unwrap_or_default()))
        .filter_map(|e| e["job-id"].as_str().map(str::to_owned))
        .collect()
}

/// Waits for the first final event of a job that ended after `since` (by its
/// `occurred-at`, the worker's clock: the same machine); how long after `since` it came.
async fn first_final_after(events: &EventLog, since: OffsetDateTime, t0: Instant) -> Duration {
    loop {
        let later = events.all().iter().any(|e| {
            is_final(e["event"].as_str().unwrap_or_default())
                && e["occurred-at"].as_str().and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()) > Some(since)
        });
        if later {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < LONG, "no job ended within {LONG:?} of the node's death");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_kill_9_of_the_node_the_workers_use_loses_no_job_and_no_event() {
    let cluster = RabbitCluster;
    // Declared first, so dropped last: after the environment's own cleanup.
    let _restore = RestoreCluster(cluster);
    let env = TestEnv::start_with(on_cluster(100)).await.expect("environment on the cluster");
    // The subscriber is on node 3, which stays up: what it sees is what the cluster kept.
    let events = EventLog::subscribe_durable(&cluster.url(3, &env.vhost), &format!("events-{}", env.id))
        .await
        .expect("subscribe on node 3");
    let before = service_nodes(&cluster, 3, &env).await;
    assert!(
        before.len() >= 3 && before.iter().all(|(_, node)| *node == 1),
        "the api and the workers connect to node 1, the first of amqp.url: {before:?}"
    );
    let pids_before = pids(&env);

    let real: Vec<String> = (0..10).map(|i| env.instance_id(&format!("kill{i}"))).collect();
    let provision = |i: &str| json!({"owner-id": 1, "instance-id": i});
    let ((mut jobs, refused), real_jobs) =
        tokio::join!(submit_noop(&env, "kill", 300), env.submit_all("provision", &real, provision));
    assert_eq!(refused, 0);
    jobs.extend(real_jobs.expect("the real provisions are accepted"));
    until_finals(&events, 40).await;
    let (in_flight, accepted) = (jobs.len() - finals(&events).len(), jobs.len());

    let died_at = OffsetDateTime::now_utc();
    let t0 = Instant::now();
    cluster.kill(1).await.expect("kill -9 of node 1");
    // The api goes on to the next node at its next publication.
    let (after, refused) = submit_noop(&env, "after", 20).await;
    assert_eq!(refused, 0, "jobs are accepted while the api reconnects");
    jobs.extend(after);
    let first_again = first_final_after(&events, died_at, t0).await;
    // The api connects again on its next publication (the jobs above it could not publish
    // are the outbox's): these go through a node that is left.
    let (later, refused) = submit_noop(&env, "later", 10).await;
    assert_eq!(refused, 0, "jobs are accepted after the node's death");
    jobs.extend(later);
    // The node comes back, with its data, while the other jobs run; its replicas catch up.
    let vhost = env.vhost.clone();
    let rejoin = tokio::spawn(async move {
        let t1 = Instant::now();
        cluster.start().await?;
        cluster.await_replicas(&vhost, Duration::from_secs(90)).await?;
        anyhow::Ok(t1.elapsed())
    });
    wait_all(&env, &events, &jobs).await;
    let all_done = t0.elapsed();
    env.check_invariants(&events, &jobs, true).await.expect("every job ended once; the instances are whole");
    assert_eq!(pids(&env), pids_before, "neither the api nor a worker was restarted");
    let after_kill = service_nodes(&cluster, 2, &env).await;
    let names: BTreeSet<&str> = after_kill.iter().map(|(n, _)| n.as_str()).collect();
    let sessions = [format!("worker1-{}", env.id), format!("worker2-{}", env.id), "dfe-api".to_owned()];
    assert!(
        after_kill.iter().all(|(_, node)| *node != 1) && sessions.iter().all(|s| names.contains(s.as_str())),
        "the api and the workers' consumers reconnected to the nodes left: {after_kill:?}"
    );
    let rejoined =
        rejoin.await.expect("rejoin task").expect("node 1 restarts, rejoins, and every queue has its 3 replicas");
    eprintln!(
        "figures: kill -9 of node 1 with {in_flight} of {accepted} jobs in flight (and {} more submitted after): \
         first job completed again {first_again:?} after the node's death, all ended {all_done:?} after it, 0 lost, \
         0 doubled; node 1 rejoined with every replica online {rejoined:?} after its restart began",
        jobs.len() - accepted
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_a_node_cut_off_stops_serving_and_nothing_is_lost_or_doubled_when_it_heals() {
    let cluster = RabbitCluster;
    // Declared first, so dropped last: after the environment's own cleanup.
    let _restore = RestoreCluster(cluster);
    let env = TestEnv::start_with(on_cluster(100)).await.expect("environment on the cluster");
    let events = EventLog::subscribe_durable(&cluster.url(3, &env.vhost), &format!("events-{}", env.id))
        .await
        .expect("subscribe on node 3");
    let pids_before = pids(&env);
    let (mut jobs, refused) = submit_noop(&env, "cut", 200).await;
    assert_eq!(refused, 0);
    until_finals(&events, 30).await;

    // Node 1, where the api and the workers are, loses the other two.
    let t0 = Instant::now();
    cluster.partition(1).await.expect("cut node 1 off");
    let healed = async {
        // The minority stops accepting: pause_minority closes its clients' connections and
        // its listener, so they go on to the majority.
        let deadline = Instant::now() + Duration::from_secs(45);
        while tokio::net::TcpStream::connect("127.0.0.1:5681").await.is_ok() {
            assert!(Instant::now() < deadline, "node 1 still accepts connections 45 s after it was cut off");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let stopped = t0.elapsed();
        // Jobs go on being accepted and run on the majority meanwhile.
        let (more, refused) = submit_noop(&env, "cut-more", 30).await;
        assert_eq!(refused, 0);
        tokio::time::sleep(Duration::from_secs(5)).await;
        cluster.heal().await.expect("heal");
        (stopped, more)
    }
    .await;
    let (stopped, more) = healed;
    jobs.extend(more);
    let t1 = Instant::now();
    let all_done = wait_all(&env, &events, &jobs).await;
    env.check_invariants(&events, &jobs, false).await.expect("every job ended once");
    assert_eq!(pids(&env), pids_before, "neither the api nor a worker was restarted");
    cluster.await_replicas(&env.vhost, Duration::from_secs(90)).await.expect("node 1 is back with its replicas");
    let back = t1.elapsed();
    let mut reran = 0;
    for job in &jobs {
        let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("job");
        reran += usize::from(record["attempts"].as_i64().unwrap_or(0) > 1);
    }
    eprintln!(
        "figures: partition of node 1: it stopped serving {stopped:?} after it was cut off; {} jobs, all ended \
         {all_done:?} after the heal, {reran} ran a second time (none ended twice); every replica online {back:?} \
         after the heal",
        jobs.len()
    );
}

/// Heals the cluster and restarts a killed node when the test ends, however it ends.
struct RestoreCluster(RabbitCluster);

impl Drop for RestoreCluster {
    fn drop(&mut self) {
        if let Err(e) = self.0.restore_blocking() {
            eprintln!("could not restore the RabbitMQ cluster: {e:#}");
        }
    }
}

/// Puts the registry's pair back (a fresh primary and standby) when the test ends, however
/// it ends, so that the next run finds it as `deploy/setup.sh` leaves it.
struct ResetPair(StandbyPair);

impl Drop for ResetPair {
    fn drop(&mut self) {
        if let Err(e) = self.0.reset_blocking() {
            eprintln!("could not reset the registry's primary and standby: {e:#}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_registry_failover_to_the_promoted_standby_with_100_jobs_in_flight_ends_every_job_once() {
    let pair = StandbyPair::preflight().await.expect("the registry's primary and standby");
    let _reset = ResetPair(pair);
    let options = Options {
        workers: 2,
        registry: RegistryServer::Standby,
        worker_env: vec![("DFE_TEST_STEP_DELAY_MS".into(), "200".into())],
        ..Default::default()
    };
    let env = TestEnv::start_with(options).await.expect("environment on the primary/standby pair");
    let events = EventLog::subscribe_durable(&env.amqp_url, &format!("events-{}", env.id)).await.expect("subscribe");
    let pids_before = pids(&env);
    let (jobs, refused) = submit_noop(&env, "failover", 100).await;
    assert_eq!(refused, 0);
    until_finals(&events, 15).await;
    let in_flight = jobs.len() - finals(&events).len();

    let t0 = Instant::now();
    pair.failover().await.expect("primary stopped (immediate), standby promoted");
    let promoted = t0.elapsed();
    wait_all(&env, &events, &jobs).await;
    let all_done = t0.elapsed();
    env.check_invariants(&events, &jobs, false).await.expect("every job ended once");
    assert_eq!(pids(&env), pids_before, "neither the api nor a worker was restarted");
    // What the registry says now is the promoted standby's: every accepted job is there,
    // ended, and none ended twice (one outcome each, one final event each).
    let registry = dfe_tests::probes::pg(env.registry()).await.expect("the new primary");
    let port: i32 = registry.query_one("SELECT inet_server_port()", &[]).await.expect("port").get(0);
    assert_eq!(port, i32::from(dfe_tests::cluster::PG_STANDBY_PORT), "the registry is the promoted standby now");
    let open: i64 = registry
        .query_one("SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed')", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(open, 0);
    let mut reran = 0;
    for job in &jobs {
        let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("job");
        assert_eq!(record["state"], "succeeded", "{record}");
        reran += usize::from(record["attempts"].as_i64().unwrap_or(0) > 1);
    }
    eprintln!(
        "figures: registry failover with {in_flight} of {} jobs in flight: standby promoted {promoted:?} after the \
         primary stopped, all ended {all_done:?} after it, {reran} ran a second time, 0 lost, 0 doubled",
        jobs.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_noop_pipeline_jobs_per_second_on_one_node_and_on_the_3_node_cluster() {
    const JOBS: usize = 300;
    let mut rates = Vec::new();
    for (label, broker) in [("one node", Broker::Main), ("the 3-node cluster", Broker::Cluster)] {
        let env = TestEnv::start_with(Options { workers: 2, broker, ..Default::default() }).await.expect("environment");
        let events =
            EventLog::subscribe_durable(&env.amqp_url, &format!("events-{}", env.id)).await.expect("subscribe");
        // Connections made, queues declared, statements prepared: not part of the figure.
        let (warm, refused) = submit_noop(&env, "warm", 20).await;
        assert_eq!(refused, 0);
        until_finals(&events, warm.len()).await;
        let t0 = Instant::now();
        let (jobs, refused) = submit_noop(&env, "rate", JOBS).await;
        assert_eq!(refused, 0);
        until_finals(&events, warm.len() + JOBS).await;
        let took = t0.elapsed();
        env.check_invariants(&events, &jobs, false).await.expect("every job ended once");
        rates.push(format!("{label}: {JOBS} jobs in {took:.2?} = {:.0} jobs/s", JOBS as f64 / took.as_secs_f64()));
    }
    eprintln!("figures: noop pipeline (REST, 2 workers, concurrency as shipped), {}", rates.join("; "));
}
