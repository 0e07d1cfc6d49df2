//! The `mysql` database provisioner against the real MariaDB of `deploy/setup.sh`: an
//! instance of the `mysql` provisioner gets its own database and user, the container is told
//! `DB_CONNECTION=mysql`, and everything the PostgreSQL path promises holds here too —
//! rollback, redelivery, export and import with a swap, refusal of the other engine's
//! snapshots, no password anywhere, names at the length limits, a reconciler that touches
//! only this deployment's orphans.

use std::time::Duration;

use dfe_tests::probes::{
    self, container_env, exec, footprint, instance_mysql, mysql_admin, mysql_db, mysql_footprint, mysql_job_user,
    mysql_leftovers, mysql_user,
};
use dfe_tests::{random_hex, EventLog, Options, TestEnv};
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

use crate::JOB_TIMEOUT;

/// The test configuration's extra: an image offering that does not exist, for `mysql`.
const MISSING_IMAGE: &str = r#"
[provisioners.hosts.mysql.offerings.image.items.missing]
image = "dfe/does-not-exist:latest"
"#;

fn with_missing_image() -> Options {
    Options { extra_config: MISSING_IMAGE.to_owned(), ..Default::default() }
}

async fn run_job(env: &TestEnv, events: &EventLog, kind: &str, body: Value) -> (String, Value) {
    let job = env.submit(kind, body).await.expect("202");
    let done = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    (job, done)
}

async fn provision(env: &TestEnv, events: &EventLog, instance: &str) -> (String, Value) {
    let (job, done) =
        run_job(env, events, "provision", json!({"owner-id": 9, "instance-id": instance, "guest-location": "mysql"}))
            .await;
    assert_eq!(done["event"], "dfe.provisioned", "{done}");
    (job, done)
}

async fn deprovision(env: &TestEnv, events: &EventLog, instance: &str) {
    let (_, done) = run_job(env, events, "deprovision", json!({"instance-id": instance})).await;
    assert_eq!(done["event"], "dfe.deprovisioned", "{done}");
    let fp = mysql_footprint(instance).await.expect("footprint");
    assert!(fp.is_empty(), "nothing of {instance} is left: {fp:?}");
    assert_eq!(mysql_leftovers(instance).await.expect("leftovers"), Vec::<String>::new(), "{instance}");
}

async fn notes(instance: &str) -> i64 {
    let mut db = instance_mysql(instance).await.expect("own user connects");
    let n: Option<i64> = db.query_first("SELECT count(*) FROM notes").await.expect("count");
    n.expect("a count")
}

/// Rows, a view, a trigger and a procedure made as the instance's own user, and files.
async fn fill(instance: &str) {
    let mut db = instance_mysql(instance).await.expect("own user connects");
    for stmt in [
        "CREATE TABLE notes (id INT PRIMARY KEY, body VARCHAR(64), shout VARCHAR(64))",
        "CREATE TRIGGER notes_shout BEFORE INSERT ON notes FOR EACH ROW SET NEW.shout = UPPER(NEW.body)",
        "INSERT INTO notes (id, body) SELECT seq, CONCAT('note ', seq) FROM seq_1_to_250",
        "CREATE VIEW long_notes AS SELECT id, body FROM notes WHERE id > 100",
        "CREATE PROCEDURE count_notes(OUT n INT) SELECT count(*) INTO n FROM notes",
    ] {
        db.query_drop(stmt).await.unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    exec(
        &format!("dfe-{instance}"),
        "echo hello > /storage/hello.txt && mkdir -p /storage/docs && echo deep > /storage/docs/a.txt",
    )
    .expect("files");
}

/// The view, trigger and procedure work for the instance's own user (over `rows` notes, all
/// but 100 of them past id 100), and belong to it.
async fn assert_code_objects(instance: &str, rows: i64) {
    let mut db = instance_mysql(instance).await.expect("own user connects");
    let long: Option<i64> = db.query_first("SELECT count(*) FROM long_notes").await.expect("the view works");
    assert_eq!(long, Some(rows - 100));
    db.query_drop("INSERT INTO notes (id, body) VALUES (9999, 'quiet')").await.expect("insert");
    let shout: Option<String> = db.query_first("SELECT shout FROM notes WHERE id = 9999").await.expect("select");
    assert_eq!(shout.as_deref(), Some("QUIET"), "the trigger fires");
    db.query_drop("DELETE FROM notes WHERE id = 9999").await.expect("delete");
    db.query_drop("CALL count_notes(@n)").await.expect("the procedure runs");
    let n: Option<i64> = db.query_first("SELECT @n").await.expect("out");
    assert_eq!(n, Some(rows));
    let definer = format!("{}@%", mysql_user(instance));
    let mut admin = mysql_admin().await.expect("admin");
    let definers: Vec<String> = admin
        .exec(
            "SELECT DEFINER FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ?
             UNION ALL SELECT DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?
             UNION ALL SELECT DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ?",
            (mysql_db(instance), mysql_db(instance), mysql_db(instance)),
        )
        .await
        .expect("definers");
    assert_eq!(definers, [definer.clone(), definer.clone(), definer], "every object is the instance user's");
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_provisioning_gives_the_container_its_own_database_and_deprovisioning_leaves_nothing() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("my");
    let (job, done) = provision(&env, &events, &instance).await;
    assert_eq!(events.names_of_job(&job), ["dfe.storage.provisioned", "dfe.database.provisioned", "dfe.provisioned"]);

    // The container is told it has a MySQL database, and says so on its resource-uri.
    let c = probes::container(&instance).await.expect("container");
    let env_of = |k: &str| container_env(&c, k).unwrap_or_default();
    assert_eq!(env_of("DB_CONNECTION"), "mysql");
    assert_eq!((env_of("DB_HOST").as_str(), env_of("DB_PORT").as_str()), ("172.17.0.1", "3306"));
    assert_eq!(env_of("DB_DATABASE"), mysql_db(&instance));
    assert_eq!(env_of("DB_USERNAME"), mysql_user(&instance));
    assert!(env_of("DB_PASSWORD").len() >= 24, "a long generated password");
    let uri = done["result"]["resource-uri"].as_str().expect("resource-uri").to_owned();
    let body: Value = reqwest::get(&uri).await.expect("answers").json().await.expect("json");
    assert_eq!(body["db-connection"], "mysql", "{body}");
    assert_eq!(body["db-database"], mysql_db(&instance).as_str(), "{body}");
    assert!(mysql_footprint(&instance).await.expect("fp").is_complete());

    // From the container's network the server answers (its handshake: protocol 10).
    let greeting = exec(
        &format!("dfe-{instance}"),
        "nc -w 3 \"$DB_HOST\" \"$DB_PORT\" </dev/null | head -c 5 | od -An -tx1 | tr -d ' \\n'",
    )
    .expect("nc");
    assert_eq!(greeting.get(8..10), Some("0a"), "the container reaches MariaDB: {greeting}");

    // The instance's own credentials work, on its database alone.
    let mut db = instance_mysql(&instance).await.expect("own user connects");
    db.query_drop("CREATE TABLE t (x INT); INSERT INTO t VALUES (1)").await.expect("the user can use its database");
    let mut seen: Vec<String> = db.query("SHOW DATABASES").await.expect("show");
    seen.sort();
    assert_eq!(seen, [mysql_db(&instance), "information_schema".to_owned()], "it sees its own database only");
    let grants: Vec<String> = db.query("SHOW GRANTS").await.expect("grants");
    assert_eq!(grants.len(), 2, "{grants:?}");
    assert!(grants[0].starts_with("GRANT USAGE ON *.* TO"), "nothing server-wide: {grants:?}");
    let escaped = mysql_db(&instance).replace('_', "\\_");
    assert_eq!(
        grants[1],
        format!("GRANT ALL PRIVILEGES ON `{escaped}`.* TO `{}`@`%`", mysql_user(&instance)),
        "ALL on that database alone, its `_` escaped so it matches no other"
    );
    drop(db);

    // Provisioned in the registry, on the MariaDB server.
    let (_, inst) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance");
    assert_eq!((inst["state"].clone(), inst["database-server"].clone()), (json!("provisioned"), json!("mariadb")));

    let (job, done) = run_job(&env, &events, "deprovision", json!({"instance-id": instance})).await;
    assert_eq!(done["event"], "dfe.deprovisioned", "{done}");
    assert_eq!(
        events.names_of_job(&job),
        ["dfe.database.deprovisioned", "dfe.storage.deprovisioned", "dfe.deprovisioned"]
    );
    let fp = mysql_footprint(&instance).await.expect("fp");
    assert!(fp.is_empty(), "nothing left: {fp:?}");
    assert_eq!(mysql_leftovers(&instance).await.expect("leftovers"), Vec::<String>::new(), "no markers left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mysql_provision_whose_instance_step_fails_leaves_no_database_or_user() {
    let env = TestEnv::start_with(with_missing_image()).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("my-noimage");
    let body =
        json!({"owner-id": 1, "instance-id": instance, "guest-location": "mysql", "offerings": {"image": "missing"}});
    let (job, failed) = run_job(&env, &events, "provision", body).await;
    assert_eq!(failed["event"], "dfe.provision.failed", "{failed}");
    assert_eq!(failed["error"]["code"], "image-not-found", "{failed}");
    assert_eq!(
        events.names_of_job(&job),
        ["dfe.storage.provisioned", "dfe.database.provisioned", "dfe.provision.failed"]
    );
    let fp = mysql_footprint(&instance).await.expect("fp");
    assert!(fp.is_empty(), "the database and the user were removed again: {fp:?}");
    assert_eq!(mysql_leftovers(&instance).await.expect("leftovers"), Vec::<String>::new());
    let (status, _) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance");
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_after_the_mysql_database_step_leaves_the_provision_to_another_worker() {
    let mut env = TestEnv::start_with(Options { workers: 0, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("my-kill");
    let hold = [("DFE_TEST_HOLD_AFTER".to_owned(), "database".to_owned())];
    env.start_worker_with(&hold).expect("doomed worker");
    env.workers[0].wait_for_line("consuming dfe.jobs", Duration::from_secs(30)).await.expect("ready");
    let job = env
        .submit("provision", json!({"owner-id": 1, "instance-id": instance, "guest-location": "mysql"}))
        .await
        .expect("202");
    env.workers[0].wait_for_line("holding the job", JOB_TIMEOUT).await.expect("reached the step");
    // The database and user exist, and the worker dies there.
    let fp = mysql_footprint(&instance).await.expect("fp");
    assert_eq!((fp.databases, fp.roles), (1, 1), "{fp:?}");
    env.workers[0].kill();
    env.start_worker_with(&[]).expect("rescuer");
    let done = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.provisioned", "{done}");
    let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("job");
    assert_eq!(record["attempts"], 2, "the rescuer ran it again: {record}");
    let fp = mysql_footprint(&instance).await.expect("fp");
    assert!(fp.is_complete(), "exactly one database and one user: {fp:?}");
    // The rescuer's run set a new password: the container got the one that works.
    let mut db = instance_mysql(&instance).await.expect("the container's credentials work");
    db.query_drop("CREATE TABLE t (x INT)").await.expect("its database");
    drop(db);
    deprovision(&env, &events, &instance).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mysql_instance_exports_and_imports_with_its_rows_files_views_triggers_and_routines() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let a = env.instance_id("my-src");
    let b = env.instance_id("my-copy");
    provision(&env, &events, &a).await;
    fill(&a).await;

    let (job, done) = run_job(&env, &events, "export", json!({"instance-id": a})).await;
    assert_eq!(done["event"], "dfe.exported", "{done}");
    assert_eq!(events.names_of_job(&job), ["dfe.database.exported", "dfe.storage.exported", "dfe.exported"]);
    let snapshot = done["result"]["snapshot-id"].as_str().expect("snapshot id").to_owned();
    let (_, one) = env.get(&format!("/api/v1/snapshots/{snapshot}")).await.expect("snapshot");
    assert_eq!(one["manifest"]["database-engine"], "mysql", "{one}");
    let mut admin = mysql_admin().await.expect("admin");
    let job_users: Option<i64> = admin
        .exec_first("SELECT count(*) FROM mysql.user WHERE User = ?", (mysql_job_user(&job),))
        .await
        .expect("users");
    assert_eq!(job_users, Some(0), "the export's own user is gone");

    // Into a new instance: its own names, every object its own user's.
    let body = json!({"owner-id": 9, "instance-id": b, "snapshot": snapshot});
    let (job, done) = run_job(&env, &events, "import", body).await;
    assert_eq!(done["event"], "dfe.imported", "{done}");
    assert_eq!(events.names_of_job(&job), ["dfe.database.imported", "dfe.storage.imported", "dfe.imported"]);
    assert_eq!(done["result"]["created"], true);
    let (_, inst) = env.get(&format!("/api/v1/instances/{b}")).await.expect("b");
    assert_eq!(inst["guest-location"], "mysql", "made as the snapshot's instance was: {inst}");
    assert_eq!(notes(&b).await, 250, "B holds A's rows");
    assert_code_objects(&b, 250).await;
    assert_eq!(
        exec(&format!("dfe-{b}"), "cat /storage/hello.txt /storage/docs/a.txt").expect("files"),
        "hello\ndeep\n"
    );
    assert!(mysql_footprint(&b).await.expect("fp").is_complete());
    let left = mysql_leftovers(&b).await.expect("leftovers");
    assert_eq!(left.len(), 2, "only B's database and user are marked, no staging or previous database: {left:?}");

    // Again into the existing B, with clean: the swap puts the snapshot's contents in place
    // of B's current ones, and the previous ones are dropped once the import is done.
    instance_mysql(&b).await.expect("db").query_drop("DELETE FROM notes WHERE id > 10").await.expect("delete");
    exec(&format!("dfe-{b}"), "echo extra > /storage/extra.txt").expect("change b");
    let body = json!({"owner-id": 9, "instance-id": b, "snapshot": snapshot, "clean": true});
    let (_, done) = run_job(&env, &events, "import", body).await;
    assert_eq!(done["event"], "dfe.imported", "{done}");
    assert_eq!(done["result"]["created"], false);
    assert_eq!(notes(&b).await, 250);
    assert_code_objects(&b, 250).await;
    assert!(!exec(&format!("dfe-{b}"), "ls -A /storage").expect("ls").contains("extra.txt"));
    assert_eq!(mysql_leftovers(&b).await.expect("leftovers").len(), 2, "no $imp or $pre database is left");

    // A is untouched.
    assert_eq!(notes(&a).await, 250);
    assert_code_objects(&a, 250).await;
    for i in [&a, &b] {
        deprovision(&env, &events, i).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_of_one_engine_is_refused_by_a_mysql_or_postgres_instance_of_the_other() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let my = env.instance_id("my-eng");
    let pg = env.instance_id("pg-eng");
    provision(&env, &events, &my).await;
    fill(&my).await;
    let (_, done) = run_job(&env, &events, "provision", json!({"owner-id": 9, "instance-id": pg})).await;
    assert_eq!(done["event"], "dfe.provisioned", "{done}");
    probes::instance_db(&pg)
        .await
        .expect("pg")
        .batch_execute("CREATE TABLE notes (id int); INSERT INTO notes VALUES (1)")
        .await
        .expect("pg rows");
    let snapshot_of = |done: &Value| done["result"]["snapshot-id"].as_str().expect("id").to_owned();
    let (_, done) = run_job(&env, &events, "export", json!({"instance-id": my})).await;
    let my_snapshot = snapshot_of(&done);
    let (_, done) = run_job(&env, &events, "export", json!({"instance-id": pg})).await;
    let pg_snapshot = snapshot_of(&done);
    let my_container = probes::container(&my).await.expect("my").id;
    let pg_container = probes::container(&pg).await.expect("pg").id;

    for (target, snapshot, theirs) in [(&my, &pg_snapshot, "postgres"), (&pg, &my_snapshot, "mysql")] {
        let body = json!({"owner-id": 9, "instance-id": target, "snapshot": snapshot});
        let (job, done) = run_job(&env, &events, "import", body).await;
        assert_eq!(done["event"], "dfe.import.failed", "{done}");
        assert_eq!(done["error"]["code"], "engine-mismatch", "{done}");
        let message = done["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("holds a {theirs} database")), "{message}");
        assert_eq!(events.names_of_job(&job), ["dfe.import.failed"], "nothing was started");
    }
    // Both targets are as they were.
    assert_eq!(notes(&my).await, 250);
    assert_eq!(probes::container(&my).await.expect("my").id, my_container);
    assert_eq!(probes::container(&pg).await.expect("pg").id, pg_container);
    let rows: i64 = probes::instance_db(&pg)
        .await
        .expect("pg")
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .expect("n")
        .get(0);
    assert_eq!(rows, 1);
    assert!(mysql_footprint(&my).await.expect("fp").is_complete());
    assert!(footprint(&pg).await.expect("fp").is_complete());
    // Nor is a new instance of the other engine made from it.
    let fresh = env.instance_id("pg-new");
    let body = json!({"owner-id": 9, "instance-id": fresh, "snapshot": my_snapshot, "guest-location": "docker"});
    let (_, done) = run_job(&env, &events, "import", body).await;
    assert_eq!(done["error"]["code"], "engine-mismatch", "{done}");
    assert!(footprint(&fresh).await.expect("fp").is_empty());
    let (status, _) = env.get(&format!("/api/v1/instances/{fresh}")).await.expect("get");
    assert_eq!(status, 404, "the claim was handed back");

    deprovision(&env, &events, &my).await;
    let (_, done) = run_job(&env, &events, "deprovision", json!({"instance-id": pg})).await;
    assert_eq!(done["event"], "dfe.deprovisioned", "{done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mysql_instances_password_appears_in_no_log_event_or_api_answer() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("my-secret");
    let (job, _) = provision(&env, &events, &instance).await;
    let c = probes::container(&instance).await.expect("container");
    let password = container_env(&c, "DB_PASSWORD").expect("password");
    assert!(password.len() >= 24);
    fill(&instance).await;
    let (_, done) = run_job(&env, &events, "export", json!({"instance-id": instance})).await;
    assert_eq!(done["event"], "dfe.exported", "{done}");
    for path in [
        format!("/api/v1/ops/jobs/{job}"),
        "/api/v1/ops/jobs".to_owned(),
        format!("/api/v1/instances/{instance}"),
        "/api/v1/instances".to_owned(),
        "/api/v1/ops/provisioners".to_owned(),
        "/metrics".to_owned(),
    ] {
        let (status, _) = env.get(&path).await.expect("get");
        assert_eq!(status, 200, "{path}");
    }
    deprovision(&env, &events, &instance).await;

    let answers = env.answers.lock().expect("answers").join("\n");
    let bodies: String = events.all().iter().map(|e| e.to_string()).collect();
    let logs = env.all_logs();
    assert!(!answers.is_empty() && !bodies.is_empty() && logs.contains("job succeeded"), "something was captured");
    assert!(logs.contains("connected to MySQL server"), "the worker used the server");
    assert!(!answers.contains(&password), "the password leaked into an API answer");
    assert!(!bodies.contains(&password), "the password leaked into an event");
    assert!(!logs.contains(&password), "the password leaked into a log line");
    assert!(!logs.contains("mysql://dfe:dfe@"), "a credentialed URL was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_names_of_63_character_instance_ids_fit_the_limits_work_and_do_not_collide() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    // Two ids of 63 characters that share their first 62.
    let stem = format!("t{}-{}", random_hex(8), "long".repeat(13));
    let ids = [format!("{stem}a"), format!("{stem}b")];
    for id in &ids {
        assert_eq!(id.len(), 63);
        env.track(id);
        provision(&env, &events, id).await;
    }
    let mut seen = Vec::new();
    for id in &ids {
        let c = probes::container(id).await.expect("container");
        let (database, user) =
            (container_env(&c, "DB_DATABASE").expect("db"), container_env(&c, "DB_USERNAME").expect("user"));
        assert!(database.len() <= 64 && user.len() <= 32, "{database} {user}");
        assert!(database.len() + database.matches('_').count() <= 64, "fits once a GRANT escapes its `_`");
        assert_eq!((database.clone(), user.clone()), (mysql_db(id), mysql_user(id)));
        seen.push((database, user));
        let mut db = instance_mysql(id).await.expect("the shortened names work");
        db.query_drop(format!("CREATE TABLE t (id VARCHAR(63)); INSERT INTO t VALUES ('{id}')")).await.expect("use");
        assert!(mysql_footprint(id).await.expect("fp").is_complete());
    }
    assert_ne!(seen[0].0, seen[1].0, "the databases do not collide");
    assert_ne!(seen[0].1, seen[1].1, "the users do not collide");
    for id in &ids {
        let mut db = instance_mysql(id).await.expect("own");
        let owner: Option<String> = db.query_first("SELECT id FROM t").await.expect("row");
        assert_eq!(owner.as_deref(), Some(id.as_str()), "each sees its own rows");
    }
    for id in &ids {
        deprovision(&env, &events, id).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reconciler_removes_this_deployments_mysql_orphans_and_leaves_other_users_alone() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let kept = env.instance_id("my-kept");
    let lost = env.instance_id("my-lost");
    for i in [&kept, &lost] {
        provision(&env, &events, i).await;
    }
    // On the same server: a user another deployment made (and marked), and one nobody marked.
    let tag = random_hex(8);
    let (theirs, unmarked) = (format!("dfe_t{tag}_theirs"), format!("dfe_t{tag}_unmarked"));
    let mut admin = mysql_admin().await.expect("admin");
    for u in [&theirs, &unmarked] {
        admin.query_drop(format!("CREATE USER '{u}'@'%' IDENTIFIED BY 'x{tag}'")).await.expect("user");
        admin.query_drop(format!("CREATE DATABASE `{u}`")).await.expect("database");
    }
    for kind in ["user", "database"] {
        admin
            .exec_drop(
                "INSERT INTO `dfe$meta`.`managed` (kind, name, deployment, instance_id) VALUES (?, ?, 'someone-else', ?)",
                (kind, &theirs, format!("t{tag}-theirs")),
            )
            .await
            .expect("their marker");
    }
    let registry = probes::pg(env.registry()).await.expect("registry");
    registry.execute("DELETE FROM instances WHERE instance_id = $1", &[&lost]).await.expect("delete");

    let orphans_of = |report: &Value| -> Vec<(String, String, String)> {
        report["orphans"]
            .as_array()
            .expect("orphans")
            .iter()
            .map(|o| {
                let s = |k: &str| o[k].as_str().unwrap_or_default().to_owned();
                (s("kind"), s("name"), s("instance-id"))
            })
            .collect()
    };
    let (code, out) = env.worker_once(&["--reconcile"]).await.expect("reconcile");
    assert_eq!(code, 3, "differences exit 3: {out}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    let orphans = orphans_of(&report);
    assert!(orphans.contains(&("database".into(), mysql_db(&lost), lost.clone())), "{report}");
    assert!(orphans.contains(&("user".into(), mysql_user(&lost), lost.clone())), "{report}");
    assert!(orphans.iter().all(|(_, _, i)| *i == lost), "only the lost instance: {report}");
    assert_eq!(report["missing"], json!([]), "{report}");

    let (code, out) = env.worker_once(&["--reconcile", "--fix"]).await.expect("fix");
    assert_eq!(code, 3, "{out}");
    let fixed: Value = serde_json::from_str(&out).expect("JSON report");
    assert!(fixed["orphans"].as_array().expect("orphans").iter().all(|o| o["removed"] == true), "{fixed}");
    assert!(mysql_footprint(&lost).await.expect("fp").databases == 0, "the orphan's database is gone");
    assert!(mysql_footprint(&lost).await.expect("fp").roles == 0, "the orphan's user is gone");
    assert!(mysql_footprint(&kept).await.expect("fp").is_complete(), "the registered instance is untouched");
    for u in [&theirs, &unmarked] {
        let users: Option<i64> =
            admin.exec_first("SELECT count(*) FROM mysql.user WHERE User = ?", (u,)).await.expect("count");
        let dbs: Option<i64> = admin
            .exec_first("SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", (u,))
            .await
            .expect("count");
        assert_eq!((users, dbs), (Some(1), Some(1)), "{u} is not this deployment's and stays");
    }
    let (_, out) = env.worker_once(&["--reconcile"]).await.expect("again");
    let again: Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(again["orphans"], json!([]), "{again}");

    for u in [&theirs, &unmarked] {
        admin.query_drop(format!("DROP USER '{u}'@'%'")).await.expect("drop");
        admin.query_drop(format!("DROP DATABASE `{u}`")).await.expect("drop");
    }
    admin.exec_drop("DELETE FROM `dfe$meta`.`managed` WHERE name = ?", (&theirs,)).await.expect("unmark");
    deprovision(&env, &events, &kept).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mysql_session_an_earlier_run_of_the_job_left_is_killed_by_the_next_run() {
    let fast = vec![
        ("DFE__WORKER__MAX_ATTEMPTS".to_owned(), "4".to_owned()),
        ("DFE__WORKER__RETRY_BASE_MS".to_owned(), "200".to_owned()),
        ("DFE__WORKER__RETRY_MAX_MS".to_owned(), "1000".to_owned()),
    ];
    let env =
        TestEnv::start_with(Options { workers: 1, worker_env: fast, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("my-takeover");
    // What a dead worker's run of the job would leave: an admin session holding the job's
    // lock and the lock of the instance's database.
    let job_id = format!("takeover-{}", random_hex(8));
    let hash = |s: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(s.as_bytes()))[..16].to_owned()
    };
    let mut stale = mysql_admin().await.expect("admin");
    let held: Option<(i64, i64)> = stale
        .exec_first(
            "SELECT GET_LOCK(?, 0), GET_LOCK(?, 0)",
            (format!("dfe-job:{}", hash(&job_id)), format!("dfe-db:{}", hash(&mysql_db(&instance)))),
        )
        .await
        .expect("locks");
    assert_eq!(held, Some((1, 1)));

    let body = json!({"job-id": job_id, "owner-id": 1, "instance-id": instance, "guest-location": "mysql"});
    let (_, done) = run_job(&env, &events, "provision", body).await;
    assert_eq!(done["event"], "dfe.provisioned", "{done}");
    let (_, job) = env.get(&format!("/api/v1/ops/jobs/{job_id}")).await.expect("job");
    assert!(job["attempts"].as_i64().unwrap_or(0) >= 2, "the first run found the job's lock taken: {job}");
    assert!(stale.query_drop("SELECT 1").await.is_err(), "the stale session was killed");
    assert!(env.all_logs().contains("killed the database session an earlier run of this job left"));
    assert!(mysql_footprint(&instance).await.expect("fp").is_complete());
    deprovision(&env, &events, &instance).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mysql_import_that_runs_past_its_deadline_puts_the_database_back() {
    let mut env = TestEnv::start_with(Options { workers: 1, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let a = env.instance_id("my-deadline");
    provision(&env, &events, &a).await;
    fill(&a).await;
    let (_, done) = run_job(&env, &events, "export", json!({"instance-id": a})).await;
    let snapshot = done["result"]["snapshot-id"].as_str().expect("id").to_owned();
    instance_mysql(&a)
        .await
        .expect("db")
        .query_drop("INSERT INTO notes (id, body) VALUES (1000, 'after')")
        .await
        .expect("row");

    // A worker whose steps are slower than its deadline, with a single attempt: the import
    // times out after the swap, and the swap is undone.
    env.workers[0].kill();
    let slow = [
        ("DFE_TEST_STEP_DELAY_MS".to_owned(), "4000".to_owned()),
        ("DFE__WORKER__JOB_TIMEOUT_SECS".to_owned(), "2".to_owned()),
        ("DFE__WORKER__MAX_ATTEMPTS".to_owned(), "1".to_owned()),
    ];
    env.start_worker_with(&slow).expect("slow worker");
    let (job, done) =
        run_job(&env, &events, "import", json!({"owner-id": 9, "instance-id": a, "snapshot": snapshot})).await;
    assert_eq!(done["event"], "dfe.import.failed", "{done}");
    assert_eq!(done["error"]["code"], "timeout", "{done}");
    assert!(events.names_of_job(&job).contains(&"dfe.database.imported".to_owned()), "it timed out after the swap");
    assert_eq!(notes(&a).await, 251, "the database is the one from before the import");
    assert_code_objects(&a, 251).await;
    assert_eq!(mysql_leftovers(&a).await.expect("leftovers").len(), 2, "no $imp or $pre database is left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_mysql_instance_is_locked_out_with_its_sessions_ended_and_resumes_with_its_rows() {
    let env = TestEnv::start_with(Options { workers: 1, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let i = env.instance_id("my-susp");
    provision(&env, &events, &i).await;
    fill(&i).await;
    // A session of the tenant's open before the suspension is ended by it.
    let mut open = instance_mysql(&i).await.expect("own user connects");

    let (job, done) = run_job(&env, &events, "suspend", json!({"instance-id": i})).await;
    assert_eq!(done["event"], "dfe.suspended", "{done}");
    assert_eq!(events.names_of_job(&job), ["dfe.database.suspended", "dfe.suspended"]);
    let refused = instance_mysql(&i).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(refused.contains("locked"), "the account is locked: {refused}");
    assert!(open.query_drop("SELECT 1").await.is_err(), "the open session was ended");
    let fp = mysql_footprint(&i).await.expect("footprint");
    assert!(!fp.is_empty(), "nothing removed: {fp:?}");

    let (_, done) = run_job(&env, &events, "resume", json!({"instance-id": i})).await;
    assert_eq!(done["event"], "dfe.resumed", "{done}");
    assert_eq!(notes(&i).await, 250, "the rows are back for the tenant");
    deprovision(&env, &events, &i).await;
}
