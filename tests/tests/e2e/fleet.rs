//! The fleet, on real engines and servers: placement by capacity (spread, binpack, limits
//! under concurrency, cordons), hosts reached over mutual TLS and SSH (and refused when
//! their credentials are wrong), two database servers, and a take-over that goes on where
//! the instance was placed. The engines are `deploy/setup-fleet.sh`'s (see `dfe_tests::fleet`).

use std::collections::BTreeMap;
use std::time::Duration;

use dfe_tests::fleet::{self, Engine, A, B, MAIN, SSH_ADDRESS, SSH_DIR, TLS_ADDRESS, TLS_DIR};
use dfe_tests::{probes, Options, TestEnv};
use serde_json::{json, Value};

use crate::JOB_TIMEOUT;

/// A test environment with `extra` configuration, after checking the extra engines are up.
async fn fleet_env(extra: String, workers: usize, env: &[(&str, &str)]) -> TestEnv {
    fleet::preflight().await.expect("the fleet's engines (deploy/setup.sh)");
    let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    TestEnv::start_with(Options { workers, extra_config: extra, env, ..Default::default() }).await.expect("environment")
}

/// The host each instance was placed on, counted.
async fn hosts_of(env: &TestEnv, instances: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in instances {
        let (_, record) = env.get(&format!("/api/v1/instances/{i}")).await.expect("instance");
        let host = record["host-id"].as_str().unwrap_or("none").to_owned();
        *counts.entry(host).or_default() += 1;
    }
    counts
}

/// Waits until each of `ids` has been probed and found active (a placement refuses a
/// pending host), or fails naming the ones that are not.
async fn wait_active(env: &TestEnv, ids: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, hosts) = env.get("/api/v1/hosts").await.expect("hosts");
        let waiting: Vec<String> = hosts["hosts"]
            .as_array()
            .expect("list")
            .iter()
            .filter(|h| ids.contains(&h["host-id"].as_str().unwrap_or_default()) && h["state"] != "active")
            .map(|h| format!("{}: {}", h["host-id"], h["state"]))
            .collect();
        let listed = hosts["hosts"]
            .as_array()
            .map_or(0, |l| l.iter().filter(|h| ids.contains(&h["host-id"].as_str().unwrap_or_default())).count());
        if waiting.is_empty() && listed == ids.len() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "hosts not active after 30 s: {waiting:?} ({hosts})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn engine_of(host: &str, map: &[(&str, Engine)]) -> Engine {
    map.iter().find(|(h, _)| *h == host).map(|(_, e)| *e).unwrap_or_else(|| panic!("unknown host {host}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_provisions_spread_ten_and_ten_and_a_cordoned_host_takes_none() {
    let extra = [
        "\n[clusters.pair]\nplacement = \"spread\"\n".to_owned(),
        fleet::host("pair", "pa", A, ""),
        fleet::host("pair", "pb", B, ""),
        fleet::host("pair", "pc", MAIN, ""),
        fleet::provisioner("pair", "pair", &["local"], false),
    ]
    .concat();
    let env = fleet_env(extra, 2, &[]).await;
    let (status, cordoned) = env.post("/api/v1/hosts/pc/cordon", &json!({})).await.expect("cordon");
    assert_eq!((status, &cordoned["state"]), (200, &json!("cordoned")), "{cordoned}");
    let instances: Vec<String> = (0..20).map(|i| env.instance_id(&format!("sp{i}"))).collect();
    let jobs = env
        .submit_all("provision", &instances, |i| json!({"owner-id": 1, "instance-id": i, "guest-location": "pair"}))
        .await
        .expect("20 accepted");
    for job in &jobs {
        let record = env.wait_job(job, JOB_TIMEOUT).await.expect("ends");
        assert_eq!(record["state"], "succeeded", "{record}");
    }
    assert_eq!(hosts_of(&env, &instances).await, BTreeMap::from([("pa".into(), 10), ("pb".into(), 10)]));
    let map = [("pa", A), ("pb", B), ("pc", MAIN)];
    for i in &instances {
        let (_, record) = env.get(&format!("/api/v1/instances/{i}")).await.expect("instance");
        let host = record["host-id"].as_str().expect("host-id");
        for (h, engine) in map {
            let expected = if h == host { (1, 1) } else { (0, 0) };
            assert_eq!(engine.parts_of(i).await.expect("parts"), expected, "{i} on {h} (placed on {host})");
        }
        let uri = record["resource-uri"].as_str().expect("resource-uri");
        let engine = engine_of(host, &map);
        assert!(uri.contains(engine.publish), "{uri} is published on {host}'s bridge");
        let answer = reqwest::get(uri).await.expect("the resource-uri answers");
        assert!(answer.status().is_success(), "{uri}: {}", answer.status());
    }
    let (_, hosts) = env.get("/api/v1/hosts").await.expect("hosts");
    let by_id: BTreeMap<String, Value> = hosts["hosts"]
        .as_array()
        .expect("list")
        .iter()
        .map(|h| (h["host-id"].as_str().unwrap_or_default().to_owned(), h.clone()))
        .collect();
    assert_eq!(by_id["pa"]["instances"], 10, "{hosts}");
    assert_eq!(by_id["pa"]["memory-reserved"], 10 * (64 << 20), "{hosts}");
    assert_eq!(by_id["pc"]["instances"], 0, "{hosts}");
    let jobs = env.submit_all("deprovision", &instances, |i| json!({"instance-id": i})).await.expect("deprovisions");
    for job in &jobs {
        assert_eq!(env.wait_job(job, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded");
    }
    for i in &instances {
        for (h, engine) in map {
            assert_eq!(engine.parts_of(i).await.expect("parts"), (0, 0), "{i} left on {h}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn binpack_fills_a_host_to_its_limit_before_the_next() {
    let extra = [
        "\n[clusters.packed]\nplacement = \"binpack\"\n".to_owned(),
        fleet::host("packed", "qa", A, "max-instances = 12"),
        fleet::host("packed", "qb", B, "max-instances = 12"),
        fleet::provisioner("packed", "packed", &[], true),
    ]
    .concat();
    let env = fleet_env(extra, 2, &[]).await;
    let instances: Vec<String> = (0..20).map(|i| env.instance_id(&format!("bp{i}"))).collect();
    let jobs = env
        .submit_all("provision", &instances, |i| json!({"owner-id": 1, "instance-id": i, "guest-location": "packed"}))
        .await
        .expect("20 accepted");
    for job in &jobs {
        assert_eq!(env.wait_job(job, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded");
    }
    let counts = hosts_of(&env, &instances).await;
    let mut sizes: Vec<usize> = counts.values().copied().collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [8, 12], "binpack fills one host to its limit: {counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_concurrent_provisions_against_a_capacity_of_twenty_five_place_exactly_twenty_five() {
    let extra = [
        "\n[clusters.tight]\n".to_owned(),
        fleet::host("tight", "ta", A, "max-instances = 12"),
        fleet::host("tight", "tb", B, "max-instances = 13"),
        fleet::provisioner("tight", "tight", &[], true),
    ]
    .concat();
    let env = fleet_env(extra, 2, &[]).await;
    let instances: Vec<String> = (0..30).map(|i| env.instance_id(&format!("cap{i}"))).collect();
    let bodies: Vec<Value> =
        instances.iter().map(|i| json!({"owner-id": 1, "instance-id": i, "guest-location": "tight"})).collect();
    let answers = futures::future::join_all(bodies.iter().map(|b| env.post("/api/v1/ops/provision", b))).await;
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (i, answer) in instances.iter().zip(answers) {
        let (status, body) = answer.expect("answer");
        match status {
            202 => accepted.push((i.clone(), body["job-id"].as_str().expect("job-id").to_owned())),
            409 => {
                assert_eq!(body["type"], "urn:dfe:problem:no-capacity", "{body}");
                let detail = body["detail"].as_str().unwrap_or_default();
                assert!(
                    detail.contains("ta: at max-instances (12 of 12)")
                        && detail.contains("tb: at max-instances (13 of 13)"),
                    "names each host and why: {detail}"
                );
                refused.push(i.clone());
            }
            other => panic!("{i}: {other} {body}"),
        }
    }
    assert_eq!((accepted.len(), refused.len()), (25, 5), "exactly the capacity is placed");
    for (_, job) in &accepted {
        assert_eq!(env.wait_job(job, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded");
    }
    assert_eq!(
        hosts_of(&env, &accepted.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>()).await,
        BTreeMap::from([("ta".into(), 12), ("tb".into(), 13)])
    );
    for i in &refused {
        let (status, _) = env.get(&format!("/api/v1/instances/{i}")).await.expect("instance");
        assert_eq!(status, 404, "a refused provision leaves no claim");
        for engine in [A, B] {
            assert_eq!(engine.parts_of(i).await.expect("parts"), (0, 0), "and nothing half-made");
        }
    }
    // Over the queue the same limit ends the job at once with `no-capacity`.
    let events = env.events().await.expect("subscribe");
    let late = env.instance_id("cap-late");
    let body = json!({"job-id": "cap-late", "owner-id": 1, "instance-id": late, "guest-location": "tight"});
    env.publish_raw("provision", body.to_string().as_bytes(), Default::default()).await.expect("publish");
    let failed = events.wait_final("cap-late", JOB_TIMEOUT).await.expect("final");
    assert_eq!(
        (failed["event"].clone(), failed["error"]["code"].clone()),
        (json!("dfe.provision.failed"), json!("no-capacity")),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_over_mutual_tls_and_ssh_provision_export_import_and_deprovision() {
    let tls = format!(
        "tls-ca = \"{TLS_DIR}/ca.pem\"\ntls-cert = \"{TLS_DIR}/client-cert.pem\"\ntls-key = \"{TLS_DIR}/client-key.pem\""
    );
    let ssh = format!("ssh-known-hosts = \"{SSH_DIR}/known_hosts\"\nssh-key = \"{SSH_DIR}/id_ed25519\"");
    let extra = [
        "\n[clusters.remote]\n".to_owned(),
        format!(
            "\n[clusters.remote.hosts.tls-a]\ndocker-host = \"{TLS_ADDRESS}\"\npublish-address = \"{}\"\n{tls}\n",
            A.publish
        ),
        format!(
            "\n[clusters.remote.hosts.ssh-b]\ndocker-host = \"{SSH_ADDRESS}\"\npublish-address = \"{}\"\n{ssh}\n",
            B.publish
        ),
        fleet::provisioner("remote", "remote", &["local"], false),
    ]
    .concat();
    let env = fleet_env(extra, 1, &[]).await;
    let events = env.events().await.expect("subscribe");
    let (_, hosts) = env.get("/api/v1/hosts").await.expect("hosts");
    for h in hosts["hosts"].as_array().expect("list").iter().filter(|h| h["cluster-id"] == "remote") {
        assert_eq!(h["state"], "active", "reached and probed: {h}");
    }
    let map = [("tls-a", A), ("ssh-b", B)];
    let mut instances = Vec::new();
    for n in 0..2 {
        let i = env.instance_id(&format!("rm{n}"));
        let job = env
            .submit("provision", json!({"owner-id": 1, "instance-id": i, "guest-location": "remote"}))
            .await
            .expect("202");
        let done = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
        assert_eq!(done["event"], "dfe.provisioned", "{done}");
        instances.push(i);
    }
    assert_eq!(
        hosts_of(&env, &instances).await,
        BTreeMap::from([("ssh-b".into(), 1), ("tls-a".into(), 1)]),
        "one on each"
    );
    for (n, i) in instances.clone().iter().enumerate() {
        let (_, record) = env.get(&format!("/api/v1/instances/{i}")).await.expect("instance");
        let engine = engine_of(record["host-id"].as_str().expect("host"), &map);
        assert_eq!(engine.parts_of(i).await.expect("parts"), (1, 1), "{record}");
        engine.exec(&format!("dfe-{i}"), &format!("echo from-{i} > /storage/where.txt")).expect("write");
        // Export reads the storage through the same remote engine.
        let job = env.submit("export", json!({"instance-id": i})).await.expect("202");
        let exported = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
        assert_eq!(exported["event"], "dfe.exported", "{exported}");
        let snapshot = exported["result"]["snapshot-id"].as_str().expect("snapshot").to_owned();
        let copy = env.instance_id(&format!("rm{n}-copy"));
        let job = env
            .submit(
                "import",
                json!({"owner-id": 1, "instance-id": copy, "snapshot": snapshot, "guest-location": "remote"}),
            )
            .await
            .expect("202");
        let imported = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
        assert_eq!(imported["event"], "dfe.imported", "{imported}");
        let (_, copied) = env.get(&format!("/api/v1/instances/{copy}")).await.expect("copy");
        let copy_engine = engine_of(copied["host-id"].as_str().expect("host"), &map);
        assert_eq!(
            copy_engine.exec(&format!("dfe-{copy}"), "cat /storage/where.txt").expect("read"),
            format!("from-{i}\n")
        );
        instances.push(copy);
    }
    for i in &instances {
        let job = env.submit("deprovision", json!({"instance-id": i})).await.expect("202");
        assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
        for (h, engine) in map {
            assert_eq!(engine.parts_of(i).await.expect("parts"), (0, 0), "{i} left on {h}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_a_refused_client_certificate_and_an_unknown_host_key_are_refused_clearly() {
    let tls = |ca: &str, cert: &str, key: &str| {
        format!("tls-ca = \"{TLS_DIR}/{ca}\"\ntls-cert = \"{TLS_DIR}/{cert}\"\ntls-key = \"{TLS_DIR}/{key}\"")
    };
    let extra = [
        "\n[clusters.bad]\n".to_owned(),
        format!("\n[clusters.bad.hosts.bad-ca]\ndocker-host = \"{TLS_ADDRESS}\"\n{}\n", tls("other-ca.pem", "client-cert.pem", "client-key.pem")),
        format!("\n[clusters.bad.hosts.bad-cert]\ndocker-host = \"{TLS_ADDRESS}\"\n{}\n", tls("ca.pem", "other-client-cert.pem", "other-client-key.pem")),
        format!(
            "\n[clusters.bad.hosts.bad-key]\ndocker-host = \"{SSH_ADDRESS}\"\nssh-known-hosts = \"{SSH_DIR}/known_hosts.wrong\"\nssh-key = \"{SSH_DIR}/id_ed25519\"\n"
        ),
        fleet::provisioner("bad", "bad", &[], true),
    ]
    .concat();
    let env = fleet_env(extra, 1, &[("DFE__WORKER__PROBE_INTERVAL_SECS", "1")]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let hosts = loop {
        let (_, hosts) = env.get("/api/v1/hosts").await.expect("hosts");
        let bad: Vec<Value> =
            hosts["hosts"].as_array().expect("list").iter().filter(|h| h["cluster-id"] == "bad").cloned().collect();
        if bad.iter().all(|h| h["state"] == "unreachable") {
            break bad;
        }
        assert!(tokio::time::Instant::now() < deadline, "not all refused: {bad:#?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for h in &hosts {
        let error = h["last-error"].as_str().unwrap_or_default().to_ascii_lowercase();
        let why = match h["host-id"].as_str().unwrap_or_default() {
            "bad-key" => {
                error.contains("host key") || error.contains("known_hosts") || error.contains("verification failed")
            }
            _ => error.contains("certificate") || error.contains("tls") || error.contains("handshake"),
        };
        assert!(why, "a clear reason: {h}");
    }
    let i = env.instance_id("nowhere");
    let (status, problem) = env
        .post("/api/v1/ops/provision", &json!({"owner-id": 1, "instance-id": i, "guest-location": "bad"}))
        .await
        .expect("post");
    assert_eq!((status, &problem["type"]), (409, &json!("urn:dfe:problem:no-capacity")), "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        ["bad-ca: unreachable", "bad-cert: unreachable", "bad-key: unreachable"].iter().all(|r| detail.contains(r)),
        "{detail}"
    );
    // No retry storm: one connection attempt per host per probe interval.
    let attempts = env.all_logs().matches("a probe of a Docker host failed").count();
    assert!(attempts < 3 * 40, "{attempts} failed probes in about ten seconds");
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_spread_over_two_database_servers_and_a_snapshot_moves_between_them() {
    let extra = [
        fleet::fleet_database(),
        fleet::provisioner("twodb", "local", &["local", "fleet"], false),
        fleet::provisioner("onlylocal", "local", &["local"], false),
    ]
    .concat();
    let env = fleet_env(extra, 2, &[]).await;
    let events = env.events().await.expect("subscribe");
    let instances: Vec<String> = (0..4).map(|i| env.instance_id(&format!("db{i}"))).collect();
    let jobs = env
        .submit_all("provision", &instances, |i| json!({"owner-id": 1, "instance-id": i, "guest-location": "twodb"}))
        .await
        .expect("accepted");
    for job in &jobs {
        assert_eq!(env.wait_job(job, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded");
    }
    let mut by_server: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in &instances {
        let (_, record) = env.get(&format!("/api/v1/instances/{i}")).await.expect("instance");
        let server = record["database-server"].as_str().expect("database-server").to_owned();
        let port = if server == "fleet" { fleet::PG_FLEET_PORT } else { 5432 };
        let pg = probes::pg(&format!("postgres://dfe:dfe@127.0.0.1:{port}/postgres")).await.expect("pg");
        let n: i64 = pg
            .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&probes::db_name(i)])
            .await
            .expect("q")
            .get(0);
        assert_eq!(n, 1, "{i}'s database lives on {server}, as its record says");
        let container = probes::container(i).await.expect("container");
        assert_eq!(probes::container_env(&container, "DB_PORT").as_deref(), Some(port.to_string().as_str()));
        by_server.entry(server).or_default().push(i.clone());
    }
    assert_eq!(by_server.values().map(Vec::len).collect::<Vec<_>>(), [2, 2], "fewest databases first: {by_server:?}");
    // A snapshot of an instance on `fleet` restores onto `local`, rows intact.
    let source = by_server["fleet"][0].clone();
    let db = probes::pg(&format!("postgres://dfe:dfe@127.0.0.1:{}/{}", fleet::PG_FLEET_PORT, probes::db_name(&source)))
        .await
        .expect("db");
    db.batch_execute("CREATE TABLE moved (n int); INSERT INTO moved SELECT generate_series(1, 500)")
        .await
        .expect("rows");
    let job = env.submit("export", json!({"instance-id": source})).await.expect("202");
    let snapshot = events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["result"]["snapshot-id"]
        .as_str()
        .expect("id")
        .to_owned();
    let target = env.instance_id("db-moved");
    let job = env
        .submit(
            "import",
            json!({"owner-id": 1, "instance-id": target, "snapshot": snapshot, "guest-location": "onlylocal"}),
        )
        .await
        .expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.imported");
    let (_, record) = env.get(&format!("/api/v1/instances/{target}")).await.expect("instance");
    assert_eq!(record["database-server"], "local", "{record}");
    let moved =
        probes::pg(&format!("postgres://dfe:dfe@127.0.0.1:5432/{}", probes::db_name(&target))).await.expect("db");
    let n: i64 = moved.query_one("SELECT count(*) FROM moved", &[]).await.expect("count").get(0);
    assert_eq!(n, 500);
    for i in instances.iter().chain([&target]) {
        let job = env.submit("deprovision", json!({"instance-id": i})).await.expect("202");
        assert_eq!(env.wait_job(&job, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_right_after_placement_leaves_the_job_to_go_on_on_the_same_host() {
    let extra = [
        "\n[clusters.pair]\n".to_owned(),
        fleet::host("pair", "ka", A, ""),
        fleet::host("pair", "kb", B, ""),
        fleet::provisioner("pair", "pair", &["local"], false),
    ]
    .concat();
    let mut env = fleet_env(extra, 0, &[]).await;
    let events = env.events().await.expect("subscribe");
    env.start_worker_with(&[("DFE_TEST_HOLD_AFTER".to_owned(), "storage".to_owned())]).expect("doomed");
    env.workers[0].wait_for_line("consuming dfe.jobs", Duration::from_secs(30)).await.expect("ready");
    // Placed only once both hosts are probed: a pending host takes nothing.
    wait_active(&env, &["ka", "kb"]).await;
    let i = env.instance_id("placed-once");
    let job =
        env.submit("provision", json!({"owner-id": 1, "instance-id": i, "guest-location": "pair"})).await.expect("202");
    env.workers[0].wait_for_line("holding the job", JOB_TIMEOUT).await.expect("held");
    let (_, before) = env.get(&format!("/api/v1/instances/{i}")).await.expect("instance");
    let host = before["host-id"].as_str().expect("placed").to_owned();
    env.workers[0].kill();
    env.start_worker_with(&[]).expect("rescuer");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
    let (_, after) = env.get(&format!("/api/v1/instances/{i}")).await.expect("instance");
    assert_eq!(after["host-id"], json!(host), "it went on where it was placed");
    let map = [("ka", A), ("kb", B)];
    for (h, engine) in map {
        let expected = if h == host { (1, 1) } else { (0, 0) };
        assert_eq!(engine.parts_of(&i).await.expect("parts"), expected, "nothing made twice or on two hosts ({h})");
    }
    let job = env.submit("deprovision", json!({"instance-id": i})).await.expect("202");
    assert_eq!(env.wait_job(&job, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded");
}
