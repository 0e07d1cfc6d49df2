//! Snapshots elsewhere than the default store: S3-compatible buckets (the moto server of
//! `deploy/setup.sh`, or a private one a test stops), archives encrypted to age
//! recipients, schedules that export on their own under a lease and prune beyond their
//! retention, and the removal of snapshots through the API and the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::Duration;

use dfe_tests::probes::{self, exec, instance_db};
use dfe_tests::s3::{self, S3Server};
use dfe_tests::{Options, TestEnv};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::snapshots::{fill, note_count, provision, run_job};
use crate::JOB_TIMEOUT;

/// Options with `extra` TOML and the secret of each named S3 destination in its `DFE__…`
/// variable (never in the file).
fn options(workers: usize, extra: String, s3_destinations: &[&str]) -> Options {
    Options {
        workers,
        extra_config: extra,
        env: s3_destinations.iter().map(|d| s3::secret_env(d)).collect(),
        ..Default::default()
    }
}

async fn download(env: &TestEnv, snapshot: &str) -> (u16, Vec<u8>, String) {
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/snapshots/{snapshot}/download", env.api_url))
        .bearer_auth(&env.token)
        .send()
        .await
        .expect("download");
    let status = r.status().as_u16();
    let disposition = r.headers().get("content-disposition").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    (status, r.bytes().await.expect("body").to_vec(), disposition)
}

/// The members of a plain `.tar.gz` archive, by name.
fn members(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut out = BTreeMap::new();
    for entry in tar.entries().expect("a tar.gz") {
        let mut entry = entry.expect("an entry");
        let name = entry.path().expect("a path").display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read");
        out.insert(name, data);
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_exported_to_s3_downloads_through_the_api_and_imports_with_rows_and_files_intact() {
    let bucket = s3::bucket(s3::ENDPOINT, "export").await.expect("a bucket (deploy/setup.sh starts the S3 server)");
    let extra = s3::destination("offsite", s3::ENDPOINT, &bucket, "backups/dfe", None);
    let env = TestEnv::start_with(options(2, extra, &["offsite"])).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let (a, b) = (env.instance_id("s3-src"), env.instance_id("s3-copy"));
    provision(&env, &events, &a).await;
    fill(&a).await;

    let (job, done) = run_job(&env, &events, "export", json!({"instance-id": a, "destination": "offsite"})).await;
    assert_eq!(done["event"], "dfe.exported", "{done}");
    assert_eq!(events.names_of_job(&job), ["dfe.database.exported", "dfe.storage.exported", "dfe.exported"]);
    let snapshot = done["result"]["snapshot-id"].as_str().expect("snapshot id").to_owned();
    let key = format!("backups/dfe/{snapshot}.snapshot.tar.gz");
    assert_eq!(done["result"]["key"], key.as_str(), "{done}");

    // The object is in the bucket under <prefix>/<id>.snapshot.tar.gz, and nothing else is.
    let objects = s3::objects(s3::ENDPOINT, &bucket).await.expect("list");
    assert_eq!(objects.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), [key.as_str()]);
    let stored = s3::object(s3::ENDPOINT, &bucket, &key).await.expect("object");
    assert_eq!(done["result"]["size"], stored.len());
    assert_eq!(done["result"]["sha256"], hex::encode(Sha256::digest(&stored)));
    assert!(!env.snapshots_dir().join(format!("{snapshot}.snapshot.tar.gz")).exists(), "not in the local store");

    // The registry records where it is; the API streams it from the bucket.
    let (_, one) = env.get(&format!("/api/v1/snapshots/{snapshot}")).await.expect("one");
    assert_eq!((one["destination"].clone(), one["key"].clone()), (json!("offsite"), json!(key)), "{one}");
    assert_eq!(one["encrypted"], false);
    let (status, downloaded, disposition) = download(&env, &snapshot).await;
    assert_eq!(status, 200);
    assert_eq!(downloaded, stored, "the download is the object");
    assert!(disposition.contains(&format!("{snapshot}.snapshot.tar.gz")), "{disposition}");
    let m = members(&downloaded);
    assert_eq!(m.keys().collect::<Vec<_>>(), ["database.sql", "snapshot.json", "storage.tar"]);

    // The CLI downloads it too, checked against the recorded SHA-256.
    let out = env.dir.join(format!("{snapshot}.cli.tar.gz"));
    let (code, _, err) =
        env.cli(&["snapshots", "download", &snapshot, "-o", out.to_str().expect("utf-8")]).await.expect("dfe");
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&out).expect("downloaded"), stored);

    // An import reads it from the bucket: rows and files are there.
    let (job, done) =
        run_job(&env, &events, "import", json!({"owner-id": 6, "instance-id": b, "snapshot": snapshot})).await;
    assert_eq!(done["event"], "dfe.imported", "{done}");
    assert_eq!(events.names_of_job(&job), ["dfe.database.imported", "dfe.storage.imported", "dfe.imported"]);
    assert_eq!(note_count(&b).await, 250, "B holds A's rows");
    assert_eq!(
        exec(&format!("dfe-{b}"), "cat /storage/hello.txt /storage/docs/a.txt").expect("files"),
        "hello\ndeep\n"
    );

    // The secret access key was handed over in a DFE__ variable and never shows.
    let logs = env.all_logs();
    assert!(!logs.contains(s3::SECRET_ACCESS_KEY), "the secret access key is in a log");
    for answer in env.answers.lock().expect("answers").iter() {
        assert!(!answer.contains(s3::SECRET_ACCESS_KEY), "the secret access key is in an answer");
    }

    for i in [&a, &b] {
        let (_, done) = run_job(&env, &events, "deprovision", json!({"instance-id": i})).await;
        assert_eq!(done["event"], "dfe.deprovisioned");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_off_by_the_s3_server_leaves_no_row_and_the_export_retries_until_it_is_stored() {
    // A server of its own: stopping the shared one would disturb the other tests.
    let mut server = S3Server::start().await.expect("a private moto server (deploy/setup.sh installs moto)");
    let bucket = "dfe-test-flaky";
    s3::create_bucket(&server.endpoint, bucket).await.expect("bucket");
    let extra = s3::destination("flaky", &server.endpoint, bucket, "dfe", None);
    let mut opts = options(1, extra, &["flaky"]);
    opts.worker_env = vec![
        ("DFE__WORKER__RETRY_BASE_MS".into(), "1000".into()),
        ("DFE__WORKER__RETRY_MAX_MS".into(), "4000".into()),
        ("DFE__WORKER__MAX_ATTEMPTS".into(), "8".into()),
    ];
    let env = TestEnv::start_with(opts).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let a = env.instance_id("flaky");
    provision(&env, &events, &a).await;
    fill(&a).await;
    // Enough incompressible storage that the upload is still under way when the server dies.
    exec(&format!("dfe-{a}"), "dd if=/dev/urandom of=/storage/blob bs=1M count=96 2>/dev/null").expect("blob");

    let job = env.submit("export", json!({"instance-id": a, "destination": "flaky"})).await.expect("202");
    events
        .wait_for("the storage exported", JOB_TIMEOUT, |e| {
            e["job-id"] == job.as_str() && e["event"] == "dfe.storage.exported"
        })
        .await
        .expect("storage exported");
    // The archive is being written into the multipart upload now: the server dies.
    server.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("job");
        if record["state"] == "retrying" {
            assert_ne!(record["error"]["code"], "", "{record}");
            break;
        }
        assert!(record["state"] != "succeeded", "the upload finished before the server died: {record}");
        assert!(tokio::time::Instant::now() < deadline, "the export did not fail over to a retry: {record}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No row names an archive that is not there.
    let (_, list) = env.get(&format!("/api/v1/snapshots?instance-id={a}")).await.expect("list");
    assert_eq!(list["snapshots"], json!([]), "{list}");

    // The server comes back (empty: moto keeps objects in memory) and the export goes through.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await.expect("restart");
    s3::create_bucket(&server.endpoint, bucket).await.expect("bucket again");
    let done = events.wait_final(&job, Duration::from_secs(120)).await.expect("final");
    assert_eq!(done["event"], "dfe.exported", "{done}");
    let (_, record) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("job");
    assert!(record["attempts"].as_i64().unwrap_or_default() >= 2, "it was retried: {record}");
    let snapshot = done["result"]["snapshot-id"].as_str().expect("id").to_owned();
    let key = format!("dfe/{snapshot}.snapshot.tar.gz");
    let objects = s3::objects(&server.endpoint, bucket).await.expect("list");
    assert_eq!(objects.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), [key.as_str()], "one complete object");
    let (_, one) = env.get(&format!("/api/v1/snapshots/{snapshot}")).await.expect("one");
    assert_eq!(one["key"], key.as_str());
    assert_eq!(json!(objects[0].1), one["size"], "the row's size is the object's");
    let (status, downloaded, _) = download(&env, &snapshot).await;
    assert_eq!(status, 200);
    assert_eq!(hex::encode(Sha256::digest(&downloaded)), one["sha256"].as_str().expect("sha"));

    let (_, done) = run_job(&env, &events, "deprovision", json!({"instance-id": a})).await;
    assert_eq!(done["event"], "dfe.deprovisioned");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_snapshot_holds_no_plaintext_imports_with_the_key_and_is_refused_without_it_before_anything_is_touched(
) {
    let keys = std::env::temp_dir().join("dfe-tests").join(format!("keys-{}", dfe_tests::random_hex(8)));
    let (ours, theirs) = (keys.join("ours.txt"), keys.join("theirs.txt"));
    let recipient = dfe_tests::age_identity(&ours).expect("our key");
    dfe_tests::age_identity(&theirs).expect("another key");
    let vault = keys.join("vault");
    std::fs::create_dir_all(&vault).expect("vault");
    let extra =
        format!("\n[snapshots.destinations.vault]\npath = \"{}\"\nencrypt-to = [\"{recipient}\"]\n", vault.display());
    let mut opts = options(1, extra, &[]);
    opts.worker_env = vec![("DFE__SNAPSHOTS__IDENTITY_FILE".into(), theirs.display().to_string())];
    let mut env = TestEnv::start_with(opts).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let (a, c) = (env.instance_id("secret"), env.instance_id("never"));
    provision(&env, &events, &a).await;
    fill(&a).await;
    let marker = format!("plaintext-marker-{}", dfe_tests::random_hex(16));
    instance_db(&a)
        .await
        .expect("db")
        .execute("INSERT INTO notes VALUES (999, $1)", &[&marker])
        .await
        .expect("marker row");

    let (_, done) = run_job(&env, &events, "export", json!({"instance-id": a, "destination": "vault"})).await;
    assert_eq!(done["event"], "dfe.exported", "{done}");
    assert_eq!(done["result"]["encrypted"], true, "{done}");
    let snapshot = done["result"]["snapshot-id"].as_str().expect("id").to_owned();
    let path = vault.join(format!("{snapshot}.snapshot.tar.gz.age"));
    let raw = std::fs::read(&path).expect("the encrypted archive on disk");
    assert!(raw.starts_with(b"age-encryption.org/v1\n"), "an age file");
    assert!(!contains(&raw, &marker), "the raw archive holds the marker in clear");
    assert!(!contains(&raw, "CREATE TABLE"), "the raw archive holds the dump in clear");
    assert!(!contains(&raw, "snapshot.json"), "the raw archive shows its member names");
    // Decrypted with the key, the marker is in the dump: it was there to be found.
    let identity: age::x25519::Identity = std::fs::read_to_string(&ours)
        .expect("key")
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("a secret key line")
        .parse()
        .expect("an identity");
    let plain = age::decrypt(&identity, &raw).expect("our key decrypts it");
    assert!(contains(&members(&plain)["database.sql"], &marker), "the dump holds the marker");
    // The download is the stored (encrypted) archive, named so.
    let (status, downloaded, disposition) = download(&env, &snapshot).await;
    assert_eq!((status, downloaded == raw), (200, true));
    assert!(disposition.contains(".snapshot.tar.gz.age"), "{disposition}");

    // The target changes after the export, so that a restore would show.
    exec(&format!("dfe-{a}"), "echo after > /storage/after.txt").expect("change");
    instance_db(&a).await.expect("db").batch_execute("INSERT INTO notes VALUES (1000, 'after')").await.expect("row");
    let container = probes::container(&a).await.expect("a").id;

    // A worker holding another key refuses it before anything is touched.
    let (job, done) =
        run_job(&env, &events, "import", json!({"owner-id": 5, "instance-id": a, "snapshot": snapshot})).await;
    assert_eq!(done["event"], "dfe.import.failed", "{done}");
    assert_eq!(done["error"]["code"], "snapshot-key-missing", "{done}");
    assert!(done["error"]["message"].as_str().unwrap_or_default().contains("does not hold"), "{done}");
    assert_eq!(events.names_of_job(&job), ["dfe.import.failed"], "nothing was started");
    assert_eq!(note_count(&a).await, 252, "the database is unchanged");
    assert!(exec(&format!("dfe-{a}"), "ls /storage").expect("ls").contains("after.txt"), "storage unchanged");
    assert_eq!(probes::container(&a).await.expect("a").id, container);
    let (_, done) =
        run_job(&env, &events, "import", json!({"owner-id": 5, "instance-id": c, "snapshot": snapshot})).await;
    assert_eq!(done["error"]["code"], "snapshot-key-missing", "{done}");
    assert!(probes::footprint(&c).await.expect("fp").is_empty(), "no instance was made");
    let (status, _) = env.get(&format!("/api/v1/instances/{c}")).await.expect("get");
    assert_eq!(status, 404, "the claim was handed back");

    // A worker holding our key restores it: the rows, the marker and the files are back.
    env.workers[0].kill();
    env.start_worker_with(&[("DFE__SNAPSHOTS__IDENTITY_FILE".into(), ours.display().to_string())])
        .expect("a worker with our key");
    env.workers.last().expect("worker").wait_for_line("consuming dfe.jobs", Duration::from_secs(60)).await.expect("up");
    let (_, done) =
        run_job(&env, &events, "import", json!({"owner-id": 5, "instance-id": c, "snapshot": snapshot})).await;
    assert_eq!(done["event"], "dfe.imported", "{done}");
    assert_eq!(note_count(&c).await, 251);
    let db = instance_db(&c).await.expect("db");
    let back: String = db.query_one("SELECT body FROM notes WHERE id = 999", &[]).await.expect("marker").get(0);
    assert_eq!(back, marker);
    assert_eq!(exec(&format!("dfe-{c}"), "cat /storage/hello.txt").expect("files"), "hello\n");

    for i in [&a, &c] {
        let (_, done) = run_job(&env, &events, "deprovision", json!({"instance-id": i})).await;
        assert_eq!(done["event"], "dfe.deprovisioned");
    }
    let _ = std::fs::remove_dir_all(&keys);
}

/// The scheduled snapshots of `schedule` in the registry: (snapshot id, job id, key).
async fn scheduled(env: &TestEnv, schedule: &str) -> Vec<(String, String, String)> {
    let pg = probes::pg(env.registry()).await.expect("registry");
    pg.query("SELECT snapshot_id, job_id, key FROM snapshots WHERE schedule = $1 ORDER BY created_at", &[&schedule])
        .await
        .expect("snapshots")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_every_few_seconds_exports_to_an_encrypted_bucket_and_prunes_beyond_keep_last() {
    let bucket = s3::bucket(s3::ENDPOINT, "schedule").await.expect("a bucket (deploy/setup.sh starts the S3 server)");
    let keys = std::env::temp_dir().join("dfe-tests").join(format!("keys-{}", dfe_tests::random_hex(8)));
    let recipient = dfe_tests::age_identity(&keys.join("ours.txt")).expect("key");
    let mut extra = s3::destination("nightly", s3::ENDPOINT, &bucket, "sched", Some(&recipient));
    extra.push_str(
        "\n[snapshots.schedules.often]\nevery = \"3s\"\ndestination = \"nightly\"\nkeep-last = 2\nowner-ids = [5]\n",
    );
    let mut env = TestEnv::start_with(options(2, extra, &["nightly"])).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let a = env.instance_id("sched");
    let other = env.instance_id("unselected");
    provision(&env, &events, &a).await;
    let job = env.submit("provision", json!({"owner-id": 6, "instance-id": other})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");

    // At least four slots exported; the registry keeps the newest two, and so does the bucket.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let succeeded = loop {
        let (_, jobs) = env.get(&format!("/api/v1/ops/jobs?instance-id={a}&type=export")).await.expect("jobs");
        let jobs = jobs["jobs"].as_array().cloned().unwrap_or_default();
        let done: Vec<Value> = jobs.into_iter().filter(|j| j["state"] == "succeeded").collect();
        if done.len() >= 4 {
            break done;
        }
        assert!(tokio::time::Instant::now() < deadline, "fewer than 4 scheduled exports in 90 s: {done:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for j in &succeeded {
        assert_eq!(
            (j["requested-by"].as_str(), j["source"].as_str()),
            (Some("schedule:often"), Some("schedule")),
            "{j}"
        );
    }
    let (_, unselected) = env.get(&format!("/api/v1/ops/jobs?instance-id={other}&type=export")).await.expect("jobs");
    assert_eq!(unselected["jobs"], json!([]), "owner 6 is not selected");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let kept = loop {
        let kept = scheduled(&env, "often").await;
        let objects: Vec<String> =
            s3::objects(s3::ENDPOINT, &bucket).await.expect("list").into_iter().map(|o| o.0).collect();
        let keys: Vec<String> = kept.iter().map(|k| k.2.clone()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        if kept.len() == 2 && objects == sorted {
            break kept;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not settle on 2: rows {keys:?}, objects {objects:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for (id, _, key) in &kept {
        assert_eq!(key, &format!("sched/{id}.snapshot.tar.gz.age"), "encrypted objects end in .age");
    }

    // With the workers stopped, an operator's stricter retention: the dry run shows all but
    // the newest, the prune removes them (objects and rows), and a delete takes the last one.
    for w in &mut env.workers {
        w.kill();
    }
    // (An export may have ended between the look above and the kill: then there are three.)
    let kept = scheduled(&env, "often").await;
    let (older, newest) = kept.split_at(kept.len() - 1);
    let newest = newest[0].clone();
    let in_bucket = |objects: &[(String, u64)], key: &str| objects.iter().any(|o| o.0 == key);
    let objects = s3::objects(s3::ENDPOINT, &bucket).await.expect("list");
    assert!(kept.iter().all(|k| in_bucket(&objects, &k.2)), "every row's object is there: {kept:?} {objects:?}");
    env.start_api_with(&[("DFE__SNAPSHOTS__SCHEDULES__OFTEN__KEEP_LAST".into(), "1".into())]).await.expect("api");
    let (code, out, err) = env.cli(&["snapshots", "prune", "--dry-run"]).await.expect("dfe");
    assert_eq!(code, 0, "{out}{err}");
    assert!(older.iter().all(|k| out.contains(&k.0)) && !out.contains(&newest.0), "all but the newest:\n{out}");
    assert!(out.contains("would be removed") && err.contains("dry run"), "{out}{err}");
    assert_eq!(scheduled(&env, "often").await.len(), kept.len(), "a dry run removes nothing");
    let (code, out, err) = env.cli(&["snapshots", "prune", "--json"]).await.expect("dfe");
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect("JSON");
    let removed: Vec<&str> = report["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .filter(|p| p["removed"] == true)
        .filter_map(|p| p["snapshot-id"].as_str())
        .collect();
    assert_eq!(removed, older.iter().map(|k| k.0.as_str()).collect::<Vec<_>>(), "{report}");
    assert_eq!(scheduled(&env, "often").await, std::slice::from_ref(&newest));
    let objects = s3::objects(s3::ENDPOINT, &bucket).await.expect("list");
    assert!(older.iter().all(|k| !in_bucket(&objects, &k.2)), "pruned objects are gone: {objects:?}");
    assert!(in_bucket(&objects, &newest.2), "the newest stays: {objects:?}");

    let (code, out, err) = env.cli(&["snapshots", "delete", &newest.0]).await.expect("dfe");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("deleted snapshot"), "{out}");
    assert!(!in_bucket(&s3::objects(s3::ENDPOINT, &bucket).await.expect("list"), &newest.2), "its object is gone");
    let (status, _) = env.get(&format!("/api/v1/snapshots/{}", newest.0)).await.expect("get");
    assert_eq!(status, 404);
    let (code, _, err) = env.cli(&["snapshots", "delete", &newest.0]).await.expect("dfe");
    assert_eq!(code, 2, "an unknown snapshot is refused input: {err}");

    let _ = std::fs::remove_dir_all(&keys);
}

/// Who holds the schedules' lease, if anyone.
async fn lease_holder(env: &TestEnv) -> Option<String> {
    let pg = probes::pg(env.registry()).await.ok()?;
    let row = pg
        .query_opt("SELECT holder FROM leases WHERE name = 'snapshot-schedules' AND expires_at > now()", &[])
        .await
        .ok()??;
    Some(row.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_worker_running_the_schedules_is_killed_another_takes_over_and_no_slot_is_exported_twice() {
    let extra = "\n[snapshots.schedules.tick]\nevery = \"2s\"\n".to_owned();
    let mut opts = options(2, extra, &[]);
    opts.env.push(("DFE__SNAPSHOTS__LEASE_SECS".into(), "6".into()));
    let mut env = TestEnv::start_with(opts).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let a = env.instance_id("takeover");
    provision(&env, &events, &a).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let holder = loop {
        if let Some(h) = lease_holder(&env).await {
            if scheduled(&env, "tick").await.len() >= 2 {
                break h;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no worker ran the schedule");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let index = env.workers.iter().position(|w| holder.starts_with(&format!("{}-", w.name))).expect("the holder");
    env.workers[index].kill();
    let killed = tokio::time::Instant::now();
    let survivor = loop {
        if let Some(h) = lease_holder(&env).await {
            if h != holder {
                break h;
            }
        }
        assert!(killed.elapsed() < Duration::from_secs(15), "no worker took the schedules over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(10), "the take-over took {took:?} (lease 6 s)");
    let before = scheduled(&env, "tick").await.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while scheduled(&env, "tick").await.len() < before + 3 {
        assert!(tokio::time::Instant::now() < deadline, "the new holder {survivor} exports nothing");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Every slot has one job and at most one snapshot; every scheduled job is a slot's.
    let pg = probes::pg(env.registry()).await.expect("registry");
    let slots: Vec<(i64, String)> = pg
        .query("SELECT slot, job_id FROM schedule_slots WHERE schedule = 'tick' AND submitted_at IS NOT NULL", &[])
        .await
        .expect("slots")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let distinct: BTreeSet<i64> = slots.iter().map(|s| s.0).collect();
    assert_eq!(distinct.len(), slots.len(), "a slot has one job: {slots:?}");
    let jobs: Vec<String> = pg
        .query("SELECT job_id FROM jobs WHERE requested_by = 'schedule:tick'", &[])
        .await
        .expect("jobs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let slot_jobs: BTreeSet<&String> = slots.iter().map(|s| &s.1).collect();
    assert_eq!(jobs.len(), slot_jobs.len(), "as many scheduled jobs as slots submitted");
    assert!(jobs.iter().all(|j| slot_jobs.contains(j)), "every scheduled job is a slot's");
    let per_job: Vec<(String, i64)> = pg
        .query("SELECT job_id, count(*) FROM snapshots WHERE schedule = 'tick' GROUP BY job_id", &[])
        .await
        .expect("snapshots")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(per_job.iter().all(|(_, n)| *n == 1), "one snapshot per slot's job: {per_job:?}");
    // The slots that passed while nobody held the lease were announced overdue, once each.
    let overdue: Vec<Value> = events.all().into_iter().filter(|e| e["event"] == "dfe.snapshot.overdue").collect();
    assert!(!overdue.is_empty(), "a slot passed without a snapshot while the lease lapsed");
    let ids: BTreeSet<String> = overdue.iter().map(|e| e["event-id"].to_string()).collect();
    assert_eq!(ids.len(), overdue.len(), "each overdue slot is announced once: {overdue:?}");
    for e in &overdue {
        assert_eq!((e["instance-id"].as_str(), e["result"]["schedule"].as_str()), (Some(a.as_str()), Some("tick")));
        assert_eq!(e["error"]["code"], "not-submitted", "{e}");
        let slot = e["result"]["slot"].as_i64().expect("slot");
        assert!(!distinct.contains(&slot), "an overdue slot has no export: {e}");
    }
}
