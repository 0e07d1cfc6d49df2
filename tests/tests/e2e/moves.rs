//! `dfe move` on real engines: an instance moves from one Docker engine to another with its
//! files, and its database to another PostgreSQL server with its rows; nothing is left where
//! it was; it moves back (its database staying) through the CLI. A move whose target engine
//! goes down leaves the instance running where it was, with nothing on the target.

use std::time::Duration;

use dfe_tests::fleet::{self, Engine, SocketProxy, A, B, PG_FLEET_PORT};
use dfe_tests::{probes, Options, TestEnv};
use serde_json::{json, Value};

use crate::JOB_TIMEOUT;

async fn move_env(extra: String, worker_env: &[(&str, &str)]) -> TestEnv {
    fleet::preflight().await.expect("the fleet's engines (deploy/setup.sh)");
    let env = worker_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    TestEnv::start_with(Options { workers: 1, extra_config: extra, env, ..Default::default() })
        .await
        .expect("environment")
}

fn server_url(server: &str, database: &str) -> String {
    let port = if server == "fleet" { PG_FLEET_PORT } else { 5432 };
    format!("postgres://dfe:dfe@127.0.0.1:{port}/{database}")
}

async fn databases_named(server: &str, name: &str) -> i64 {
    let pg = probes::pg(&server_url(server, "postgres")).await.expect("server");
    let q = "SELECT (SELECT count(*) FROM pg_database WHERE datname = $1) + (SELECT count(*) FROM pg_roles WHERE rolname = $1)";
    pg.query_one(q, &[&name]).await.expect("count").get(0)
}

async fn record(env: &TestEnv, i: &str) -> Value {
    env.get(&format!("/api/v1/instances/{i}")).await.expect("instance").1
}

async fn answers(record: &Value) {
    let uri = record["resource-uri"].as_str().expect("resource-uri");
    let answer = reqwest::get(uri).await.unwrap_or_else(|e| panic!("{uri} answers: {e}"));
    assert!(answer.status().is_success(), "{uri}: {}", answer.status());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_moves_to_another_engine_and_server_with_its_files_and_rows_and_back_through_the_cli() {
    let extra = [
        fleet::fleet_database(),
        "\n[clusters.mv]\n".to_owned(),
        fleet::host("mv", "mva", A, ""),
        fleet::host("mv", "mvb", B, ""),
        fleet::provisioner("mv", "mv", &["local", "fleet"], false),
    ]
    .concat();
    let env = move_env(extra, &[]).await;
    let events = env.events().await.expect("subscribe");
    let i = env.instance_id("mover");
    let job =
        env.submit("provision", json!({"owner-id": 1, "instance-id": i, "guest-location": "mv"})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
    let before = record(&env, &i).await;
    let (from_host, from_server) = (
        before["host-id"].as_str().expect("host").to_owned(),
        before["database-server"].as_str().expect("server").to_owned(),
    );
    let engine = |h: &str| -> Engine {
        if h == "mva" {
            A
        } else {
            B
        }
    };
    let (to_host, to_server) =
        (if from_host == "mva" { "mvb" } else { "mva" }, if from_server == "local" { "fleet" } else { "local" });
    let db = probes::db_name(&i);
    engine(&from_host).exec(&format!("dfe-{i}"), "echo kept > /storage/kept.txt").expect("write a file");
    let pg = probes::pg(&server_url(&from_server, &db)).await.expect("its database");
    pg.batch_execute("CREATE TABLE rows (n int); INSERT INTO rows SELECT generate_series(1, 500)").await.expect("rows");
    drop(pg);

    let job = env
        .submit("move", json!({"instance-id": i, "host-id": to_host, "database-server": to_server}))
        .await
        .expect("202");
    let moved = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(moved["event"], "dfe.moved", "{moved}");
    let names = events.names_of_job(&job);
    assert!(
        names.contains(&"dfe.storage.moved".to_owned()) && names.contains(&"dfe.database.moved".to_owned()),
        "{names:?}"
    );
    let unavailable = moved["result"]["unavailable-ms"].as_u64().expect("unavailable-ms");
    println!("move to another engine and server: unavailable for {unavailable} ms");
    assert_eq!(moved["result"]["left-behind"], json!([]), "{moved}");

    let after = record(&env, &i).await;
    assert_eq!((after["host-id"].as_str(), after["database-server"].as_str()), (Some(to_host), Some(to_server)));
    assert_eq!(after["state"], "provisioned");
    assert!(after["resource-uri"].as_str().unwrap_or_default().contains(engine(to_host).publish), "{after}");
    answers(&after).await;
    assert_eq!(engine(to_host).exec(&format!("dfe-{i}"), "cat /storage/kept.txt").expect("read"), "kept\n");
    let pg = probes::pg(&server_url(to_server, &db)).await.expect("the moved database");
    let n: i64 = pg.query_one("SELECT count(*) FROM rows", &[]).await.expect("count").get(0);
    assert_eq!(n, 500, "rows intact on {to_server}");
    drop(pg);
    assert_eq!(engine(&from_host).parts_of(&i).await.expect("parts"), (0, 0), "nothing left on {from_host}");
    assert_eq!(databases_named(&from_server, &db).await, 0, "no database or role left on {from_server}");
    let (_, hosts) = env.get("/api/v1/hosts").await.expect("hosts");
    let count = |h: &str| {
        hosts["hosts"].as_array().expect("list").iter().find(|x| x["host-id"] == h).expect("host")["instances"].clone()
    };
    assert_eq!((count(&from_host), count(to_host)), (json!(0), json!(1)), "{hosts}");

    // Back through the CLI, the database staying on its server (the new container is handed
    // the connection the old one had).
    let (code, out, err) = env.cli(&["move", "--host", &from_host, "--wait", &i]).await.expect("dfe move");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("dfe.moved"), "{out}");
    let back = record(&env, &i).await;
    assert_eq!(
        (back["host-id"].as_str(), back["database-server"].as_str()),
        (Some(from_host.as_str()), Some(to_server))
    );
    answers(&back).await;
    assert_eq!(engine(&from_host).exec(&format!("dfe-{i}"), "cat /storage/kept.txt").expect("read"), "kept\n");
    let container = engine(&from_host).exec(&format!("dfe-{i}"), "echo $DB_PORT").expect("env");
    let port = if to_server == "fleet" { PG_FLEET_PORT } else { 5432 };
    assert_eq!(container.trim(), port.to_string(), "the container still points at its database's server");
    assert_eq!(engine(to_host).parts_of(&i).await.expect("parts"), (0, 0), "nothing left on {to_host}");
    assert_eq!(databases_named(to_server, &db).await, 2, "the database and its role stayed on {to_server}");

    // A move onto the host it is on, or to an unknown host, is refused clearly.
    let (status, problem) =
        env.post("/api/v1/ops/move", &json!({"instance-id": i, "host-id": "nowhere"})).await.expect("post");
    assert_eq!(status, 422, "{problem}");
    assert!(problem["detail"].as_str().unwrap_or_default().contains("host-id"), "{problem}");
    let job = env.submit("move", json!({"instance-id": i, "host-id": from_host})).await.expect("202");
    let refused = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(refused["event"], "dfe.move.failed", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap_or_default().contains("already"), "{refused}");

    let job = env.submit("deprovision", json!({"instance-id": i})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
    for e in [A, B] {
        assert_eq!(e.parts_of(&i).await.expect("parts"), (0, 0));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_move_whose_target_engine_goes_down_leaves_the_instance_running_where_it_was() {
    let proxy = SocketProxy::start(B, format!("/tmp/dfe-move-proxy-{}.sock", std::process::id())).expect("proxy");
    let extra = [
        "\n[clusters.mf]\n".to_owned(),
        fleet::host("mf", "mfa", A, ""),
        format!("\n[clusters.mf.hosts.mfb]\ndocker-host = \"{}\"\npublish-address = \"{}\"\n", proxy.url(), B.publish),
        fleet::provisioner("mf", "mf", &["local"], false),
    ]
    .concat();
    let env = move_env(extra, &[("DFE__WORKER__MAX_ATTEMPTS", "1")]).await;
    let events = env.events().await.expect("subscribe");
    // Both hosts are active once probed; the instance goes on mfa (cordoning mfb meanwhile).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, hosts) = env.get("/api/v1/hosts").await.expect("hosts");
        let active = hosts["hosts"]
            .as_array()
            .expect("list")
            .iter()
            .filter(|h| h["cluster-id"] == "mf" && h["state"] == "active")
            .count();
        if active == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "hosts not active: {hosts}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    env.post("/api/v1/hosts/mfb/cordon", &json!({})).await.expect("cordon");
    let i = env.instance_id("stays");
    let job =
        env.submit("provision", json!({"owner-id": 1, "instance-id": i, "guest-location": "mf"})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
    env.post("/api/v1/hosts/mfb/uncordon", &json!({})).await.expect("uncordon");
    let before = record(&env, &i).await;
    assert_eq!(before["host-id"], "mfa", "{before}");
    A.exec(&format!("dfe-{i}"), "echo still-here > /storage/mark.txt").expect("write");

    // The target's engine goes away; its probes have not noticed yet, so the move goes on
    // until it reaches the target, after the old container was stopped and exported.
    proxy.stop();
    let job = env.submit("move", json!({"instance-id": i, "host-id": "mfb"})).await.expect("202");
    let failed = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(failed["event"], "dfe.move.failed", "{failed}");
    assert_eq!(failed["error"]["code"], "host-unreachable", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("running where it was"), "{message}");

    let after = record(&env, &i).await;
    assert_eq!((after["host-id"].as_str(), after["state"].as_str()), (Some("mfa"), Some("provisioned")), "{after}");
    answers(&after).await;
    assert_eq!(A.exec(&format!("dfe-{i}"), "cat /storage/mark.txt").expect("read"), "still-here\n");
    assert_eq!(B.parts_of(&i).await.expect("parts"), (0, 0), "nothing on the target's engine");

    let job = env.submit("deprovision", json!({"instance-id": i})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
    assert_eq!(A.parts_of(&i).await.expect("parts"), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_before_and_after_the_switch_leaves_the_move_to_another_that_finishes_it() {
    fleet::preflight().await.expect("the fleet's engines (deploy/setup.sh)");
    let extra = [
        fleet::fleet_database(),
        "\n[clusters.mk]\n".to_owned(),
        fleet::host("mk", "mka", A, ""),
        fleet::host("mk", "mkb", B, ""),
        fleet::provisioner("mk", "mk", &["local", "fleet"], false),
    ]
    .concat();
    let mut env = TestEnv::start_with(Options { workers: 1, extra_config: extra, ..Default::default() })
        .await
        .expect("environment");
    let events = env.events().await.expect("subscribe");
    let mut placed = Vec::new();
    for step in ["database", "switch"] {
        let i = env.instance_id(&format!("mk-{step}"));
        let body = json!({"owner-id": 1, "instance-id": i, "guest-location": "mk"});
        let job = env.submit("provision", body).await.expect("202");
        assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
        placed.push((step, i));
    }
    // Only the doomed worker and then the rescuer run the moves.
    env.workers[0].kill();
    for (step, i) in &placed {
        let before = record(&env, i).await;
        let from = before["host-id"].as_str().expect("host").to_owned();
        let server = before["database-server"].as_str().expect("server").to_owned();
        let (engine_from, to, engine_to) = if from == "mka" { (A, "mkb", B) } else { (B, "mka", A) };
        let to_server = if server == "local" { "fleet" } else { "local" };
        engine_from.exec(&format!("dfe-{i}"), "echo survived > /storage/s.txt").expect("write");
        let body = json!({"instance-id": i, "host-id": to, "database-server": to_server});
        let (job, done) = crate::crash::kill_after(&mut env, &events, step, "move", body).await;
        assert_eq!(done["event"], "dfe.moved", "killed after {step}: {done}");
        let after = record(&env, i).await;
        assert_eq!((after["host-id"].as_str(), after["database-server"].as_str()), (Some(to), Some(to_server)));
        answers(&after).await;
        assert_eq!(engine_to.exec(&format!("dfe-{i}"), "cat /storage/s.txt").expect("read"), "survived\n", "{step}");
        assert_eq!(engine_from.parts_of(i).await.expect("parts"), (0, 0), "after {step}: nothing left on {from}");
        assert_eq!(databases_named(&server, &probes::db_name(i)).await, 0, "after {step}: nothing left on {server}");
        let finals = events.names_of_job(&job).into_iter().filter(|n| n == "dfe.moved").count();
        assert_eq!(finals, 1, "one final event after {step}");
    }
    env.start_worker_with(&[]).expect("worker");
    for (_, i) in &placed {
        let job = env.submit("deprovision", json!({"instance-id": i})).await.expect("202");
        assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
    }
}
