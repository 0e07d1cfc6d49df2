//! Export and import: portable snapshots that restore into a new or an existing instance,
//! verified before anything is touched.

use std::io::Read;
use std::path::{Path, PathBuf};

use dfe_tests::probes::{self, exec, footprint, instance_db};
use dfe_tests::TestEnv;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::JOB_TIMEOUT;

pub(crate) async fn provision(env: &TestEnv, events: &dfe_tests::EventLog, instance: &str) {
    let job = env.submit("provision", json!({"owner-id": 5, "instance-id": instance})).await.expect("202");
    let done = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.provisioned", "{done}");
}

pub(crate) async fn run_job(env: &TestEnv, events: &dfe_tests::EventLog, kind: &str, body: Value) -> (String, Value) {
    let job = env.submit(kind, body).await.expect("202");
    let done = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    (job, done)
}

/// Rows and files that make an instance recognisable.
pub(crate) async fn fill(instance: &str) {
    let db = instance_db(instance).await.expect("own role connects");
    db.batch_execute(
        "CREATE TABLE notes (id int PRIMARY KEY, body text);
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 250) g;
         CREATE VIEW long_notes AS SELECT * FROM notes WHERE length(body) > 7;",
    )
    .await
    .expect("rows");
    exec(
        &format!("dfe-{instance}"),
        "echo hello > /storage/hello.txt && mkdir -p /storage/docs && echo deep > /storage/docs/a.txt",
    )
    .expect("files");
}

pub(crate) async fn note_count(instance: &str) -> i64 {
    let db = instance_db(instance).await.expect("own role connects");
    db.query_one("SELECT count(*) FROM notes", &[]).await.expect("count").get(0)
}

/// Objects in `public` not owned by the instance's own role.
async fn foreign_objects(instance: &str) -> i64 {
    let name = probes::db_name(instance);
    let pg = probes::pg(&format!("postgres://dfe:dfe@127.0.0.1:5432/{name}")).await.expect("admin");
    pg.query_one(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND pg_get_userbyid(relowner) <> $1",
        &[&name],
    )
    .await
    .expect("owners")
    .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exported_instance_imports_as_a_new_instance_and_again_with_clean() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let a = env.instance_id("src");
    let b = env.instance_id("copy");
    provision(&env, &events, &a).await;
    fill(&a).await;
    let a_container = probes::container(&a).await.expect("a").id;

    let (job, done) = run_job(&env, &events, "export", json!({"instance-id": a})).await;
    assert_eq!(done["event"], "dfe.exported", "{done}");
    assert_eq!(events.names_of_job(&job), ["dfe.database.exported", "dfe.storage.exported", "dfe.exported"]);
    let snapshot = done["result"]["snapshot-id"].as_str().expect("snapshot id").to_owned();
    let archive = env.snapshots_dir().join(format!("{snapshot}.snapshot.tar.gz"));
    let bytes = std::fs::read(&archive).expect("archive in the store");
    assert_eq!(done["result"]["size"], bytes.len());
    assert_eq!(done["result"]["sha256"], hex::encode(Sha256::digest(&bytes)));

    // The registry lists it, and the download streams the same bytes.
    let (_, list) = env.get(&format!("/api/v1/snapshots?instance-id={a}")).await.expect("list");
    assert_eq!(list["snapshots"][0]["snapshot-id"], snapshot.as_str(), "{list}");
    let (_, by_owner) = env.get("/api/v1/snapshots?owner-id=5").await.expect("list");
    assert_eq!(by_owner["snapshots"].as_array().map(Vec::len), Some(1), "{by_owner}");
    let (status, one) = env.get(&format!("/api/v1/snapshots/{snapshot}")).await.expect("one");
    assert_eq!(status, 200);
    assert_eq!(one["manifest"]["format-version"], 1);
    assert_eq!(one["manifest"]["instance-id"], a.as_str());
    assert_eq!(one["manifest"]["offerings"], json!({"image": "test"}), "the effective offering choice travels along");
    let downloaded = reqwest::Client::new()
        .get(format!("{}/api/v1/snapshots/{snapshot}/download", env.api_url))
        .bearer_auth(&env.token)
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("body");
    assert_eq!(downloaded.as_ref(), bytes.as_slice());

    let (job, done) =
        run_job(&env, &events, "import", json!({"owner-id": 6, "instance-id": b, "snapshot": snapshot})).await;
    assert_eq!(done["event"], "dfe.imported", "{done}");
    assert_eq!(events.names_of_job(&job), ["dfe.database.imported", "dfe.storage.imported", "dfe.imported"]);
    assert_eq!(done["result"]["created"], true);
    assert_eq!(note_count(&b).await, 250, "B's table holds A's rows");
    assert_eq!(foreign_objects(&b).await, 0, "every object in B is owned by B's role");
    assert_eq!(
        exec(&format!("dfe-{b}"), "cat /storage/hello.txt /storage/docs/a.txt").expect("files"),
        "hello\ndeep\n"
    );
    assert!(footprint(&b).await.expect("fp").is_complete());
    let (_, inst) = env.get(&format!("/api/v1/instances/{b}")).await.expect("b");
    assert_eq!((inst["state"].clone(), inst["owner-id"].clone()), (json!("provisioned"), json!(6)));

    // A is untouched.
    assert_eq!(probes::container(&a).await.expect("a").id, a_container);
    assert_eq!(note_count(&a).await, 250);
    assert_eq!(exec(&format!("dfe-{a}"), "cat /storage/hello.txt").expect("a files"), "hello\n");

    // Files added to B since are gone after a clean import; the snapshot's are back.
    exec(&format!("dfe-{b}"), "echo extra > /storage/extra.txt && rm /storage/hello.txt").expect("change b");
    instance_db(&b).await.expect("db").batch_execute("DELETE FROM notes WHERE id > 10").await.expect("delete");
    let (_, done) =
        run_job(&env, &events, "import", json!({"owner-id": 6, "instance-id": b, "snapshot": snapshot, "clean": true}))
            .await;
    assert_eq!(done["event"], "dfe.imported", "{done}");
    assert_eq!(done["result"]["created"], false);
    let listing = exec(&format!("dfe-{b}"), "ls -A /storage").expect("ls");
    assert!(!listing.contains("extra.txt"), "clean removed files added since: {listing}");
    assert!(listing.contains("hello.txt"), "{listing}");
    assert_eq!(note_count(&b).await, 250);
    assert_eq!(foreign_objects(&b).await, 0);

    for i in [&a, &b] {
        let (_, done) = run_job(&env, &events, "deprovision", json!({"instance-id": i})).await;
        assert_eq!(done["event"], "dfe.deprovisioned");
        assert!(footprint(i).await.expect("fp").is_empty());
    }
}

/// Rewrites `src` into `dest`, letting `edit` change the members (name, type, bytes).
fn rewrite(
    src: &Path,
    dest: &Path,
    edit: impl Fn(&mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>, &str, Vec<u8>),
) {
    let file = std::fs::File::open(src).expect("open");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let out = flate2::write::GzEncoder::new(std::fs::File::create(dest).expect("create"), flate2::Compression::fast());
    let mut builder = tar::Builder::new(out);
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read");
        edit(&mut builder, &name, data);
    }
    builder.into_inner().expect("finish").finish().expect("gz");
}

fn append(builder: &mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut h, name, data).expect("append");
}

fn bad_snapshots(store: &Path, good: &str) -> Vec<(String, &'static str)> {
    let src = store.join(format!("{good}.snapshot.tar.gz"));
    let path = |id: &str| -> PathBuf { store.join(format!("{id}.snapshot.tar.gz")) };

    rewrite(&src, &path("tampered-sql"), |b, name, mut data| {
        if name == "database.sql" {
            let i = data.len() / 2;
            data[i] ^= 0x01;
        }
        append(b, name, &data);
    });
    rewrite(&src, &path("escaping-member"), |b, name, data| {
        append(b, name, &data);
        if name == "snapshot.json" {
            // The tar crate refuses to write `..`, as it should; set the raw name instead.
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..11].copy_from_slice(b"../../etc/x");
            h.set_size(3);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, &b"bad"[..]).expect("append");
        }
    });
    rewrite(&src, &path("symlink-member"), |b, name, data| {
        if name == "storage.tar" {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o777);
            h.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut h, "storage.tar", "/etc/passwd").expect("link");
        } else {
            append(b, name, &data);
        }
    });
    vec![
        ("tampered-sql".into(), "checksum mismatch for database.sql"),
        ("escaping-member".into(), "contains '..'"),
        ("symlink-member".into(), "symbolic link"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_and_unsafe_snapshots_are_refused_and_the_target_is_unchanged() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let a = env.instance_id("good");
    provision(&env, &events, &a).await;
    fill(&a).await;
    let (_, done) = run_job(&env, &events, "export", json!({"instance-id": a})).await;
    let good = done["result"]["snapshot-id"].as_str().expect("id").to_owned();
    // The target: A itself, changed after the export, so a restore would show.
    exec(&format!("dfe-{a}"), "echo after > /storage/after.txt").expect("change");
    instance_db(&a).await.expect("db").batch_execute("INSERT INTO notes VALUES (1000, 'after')").await.expect("row");
    let container = probes::container(&a).await.expect("a").id;

    for (id, reason) in bad_snapshots(&env.snapshots_dir(), &good) {
        let (job, done) =
            run_job(&env, &events, "import", json!({"owner-id": 5, "instance-id": a, "snapshot": id})).await;
        assert_eq!(done["event"], "dfe.import.failed", "{id}: {done}");
        assert_eq!(done["error"]["code"], "snapshot-invalid", "{id}: {done}");
        let message = done["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{id}: {message:?} should say {reason:?}");
        assert_eq!(events.names_of_job(&job), ["dfe.import.failed"], "{id}: nothing was started");
        assert_eq!(note_count(&a).await, 251, "{id}: the database is unchanged");
        assert!(exec(&format!("dfe-{a}"), "ls /storage").expect("ls").contains("after.txt"), "{id}: storage unchanged");
        assert_eq!(probes::container(&a).await.expect("a").id, container);
    }
    // Nor is a new instance made from a bad snapshot.
    let c = env.instance_id("never");
    let (_, done) =
        run_job(&env, &events, "import", json!({"owner-id": 5, "instance-id": c, "snapshot": "tampered-sql"})).await;
    assert_eq!(done["event"], "dfe.import.failed");
    assert!(footprint(&c).await.expect("fp").is_empty());
    let (status, _) = env.get(&format!("/api/v1/instances/{c}")).await.expect("get");
    assert_eq!(status, 404, "the claim was handed back");

    // An unknown snapshot: 404 over REST, a failure event over the queue.
    let (status, p) = env
        .post("/api/v1/ops/import", &json!({"owner-id": 5, "instance-id": c, "snapshot": "no-such-snapshot"}))
        .await
        .expect("post");
    assert_eq!(status, 404, "{p}");
    let body = json!({"job-id": "import-unknown", "owner-id": 5, "instance-id": c, "snapshot": "no-such-snapshot"})
        .to_string();
    env.publish_raw("import", body.as_bytes(), Default::default()).await.expect("publish");
    let done = events.wait_final("import-unknown", JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.import.failed", "{done}");
    assert_eq!(done["error"]["code"], "snapshot-not-found", "{done}");
    let (status, _) = env.get(&format!("/api/v1/instances/{c}")).await.expect("get");
    assert_eq!(status, 404);

    let (_, done) = run_job(&env, &events, "deprovision", json!({"instance-id": a})).await;
    assert_eq!(done["event"], "dfe.deprovisioned");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_exports_and_imports_with_wait_and_exits_non_zero_on_failure() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let a = env.instance_id("cli");
    let b = env.instance_id("cli-copy");
    provision(&env, &events, &a).await;
    fill(&a).await;

    let (code, out, err) = env.cli(&["export", "--wait", &a]).await.expect("dfe export");
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("dfe.exported"), "{out}");
    let (_, list) = env.get(&format!("/api/v1/snapshots?instance-id={a}")).await.expect("list");
    let snapshot = list["snapshots"][0]["snapshot-id"].as_str().expect("snapshot").to_owned();
    assert!(out.contains(&snapshot), "the snapshot id is printed: {out}");

    let (code, out, err) = env.cli(&["import", "--wait", "5", &b, &snapshot]).await.expect("dfe import");
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("dfe.imported"), "{out}");
    assert_eq!(note_count(&b).await, 250);

    // Failures: an unknown snapshot is refused by the API (404), and over the queue the
    // job fails; both exit non-zero with the reason.
    let (code, _, err) =
        env.cli(&["import", "--wait", "5", &env.instance_id("x"), "no-such-snapshot"]).await.expect("dfe");
    assert_ne!(code, 0);
    assert!(err.contains("no-such-snapshot"), "{err}");
    let (code, out, err) = env
        .cli(&["--via", "queue", "import", "--wait", "5", &env.instance_id("y"), "no-such-snapshot"])
        .await
        .expect("dfe");
    assert_ne!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(format!("{out}{err}").contains("snapshot-not-found"), "stdout:\n{out}\nstderr:\n{err}");

    for i in [&a, &b] {
        let (code, out, err) = env.cli(&["deprovision", "--wait", i]).await.expect("dfe deprovision");
        assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
        assert!(footprint(i).await.expect("fp").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_that_runs_past_its_deadline_puts_the_target_back() {
    let mut env =
        TestEnv::start_with(dfe_tests::Options { workers: 1, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let a = env.instance_id("deadline");
    provision(&env, &events, &a).await;
    fill(&a).await;
    let (_, done) = run_job(&env, &events, "export", json!({"instance-id": a})).await;
    let snapshot = done["result"]["snapshot-id"].as_str().expect("id").to_owned();
    exec(&format!("dfe-{a}"), "echo after > /storage/after.txt").expect("change");
    instance_db(&a).await.expect("db").batch_execute("INSERT INTO notes VALUES (1000, 'after')").await.expect("row");

    // A worker whose steps are slower than its deadline, and with a single attempt.
    env.workers[0].kill();
    let slow = [
        ("DFE_TEST_STEP_DELAY_MS".to_owned(), "4000".to_owned()),
        ("DFE__WORKER__JOB_TIMEOUT_SECS".to_owned(), "2".to_owned()),
        ("DFE__WORKER__MAX_ATTEMPTS".to_owned(), "1".to_owned()),
    ];
    env.start_worker_with(&slow).expect("slow worker");
    let (job, done) =
        run_job(&env, &events, "import", json!({"owner-id": 5, "instance-id": a, "snapshot": snapshot})).await;
    assert_eq!(done["event"], "dfe.import.failed", "{done}");
    assert_eq!(done["error"]["code"], "timeout", "{done}");
    assert!(events.names_of_job(&job).contains(&"dfe.database.imported".to_owned()), "it timed out after the swap");
    // The database swap and the storage were put back.
    assert_eq!(note_count(&a).await, 251, "the database is the one from before the import");
    assert!(exec(&format!("dfe-{a}"), "ls /storage").expect("ls").contains("after.txt"), "storage unchanged");
    let pg = probes::pg(dfe_tests::PG_ADMIN_URL).await.expect("pg");
    let leftovers: i64 = pg
        .query_one("SELECT count(*) FROM pg_database WHERE datname LIKE $1", &[&format!("{}\\_%", probes::db_name(&a))])
        .await
        .expect("count")
        .get(0);
    assert_eq!(leftovers, 0, "no staging or previous database is left");
}
