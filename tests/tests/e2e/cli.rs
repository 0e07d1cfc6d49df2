//! The `dfe` command line, driven as an operator drives it against the running system: the
//! four operations with `--wait` through the API and straight over the queue, exit statuses,
//! tables and `--json`, the event tail, snapshots and their download, tokens, completions,
//! and errors that say what is wrong and how to fix it.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use dfe_tests::probes::{self, exec, footprint};
use dfe_tests::{random_hex, TestEnv};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};

use crate::JOB_TIMEOUT;

/// Runs `dfe args…` against `env`, asserting its exit status; returns stdout and stderr.
async fn dfe(env: &TestEnv, args: &[&str], status: i32) -> (String, String) {
    let (code, out, err) = env.cli(args).await.expect("dfe runs");
    transcript(args, code, &out, &err);
    assert_eq!(code, status, "`dfe {}` exited {code} (its transcript is above)", args.join(" "));
    (out, err)
}

/// [`dfe`] with environment variables set or removed on top of the environment's.
async fn dfe_with(env: &TestEnv, args: &[&str], vars: &[(&str, Option<&str>)], status: i32) -> (String, String) {
    let (code, out, err) = env.cli_with_env(args, vars).await.expect("dfe runs");
    transcript(args, code, &out, &err);
    assert_eq!(code, status, "`dfe {}` exited {code} (its transcript is above)", args.join(" "));
    (out, err)
}

/// Writes what a run printed to the test's captured output, which nextest shows when the
/// test fails: the whole session reads like a terminal's.
fn transcript(args: &[&str], code: i32, out: &str, err: &str) {
    eprintln!("$ dfe {}    # exit {code}\n{out}{err}", args.join(" "));
}

/// The job id of the line an operation prints first: `provision job <id> queued (instance …)`
/// or `provision job <id> published onto dfe.jobs (instance …)`.
fn submitted_job(out: &str, kind: &str) -> String {
    let first = out.lines().next().unwrap_or_default();
    let rest = first.strip_prefix(&format!("{kind} job ")).unwrap_or_else(|| panic!("not a submission: {first:?}"));
    rest.split_whitespace().next().expect("a job id").to_owned()
}

/// The progress lines of `--wait` as (mark, event name, summary).
fn steps(out: &str) -> Vec<(char, String, String)> {
    out.lines()
        .filter_map(|l| {
            let l = l.strip_prefix("  ")?;
            let mark = l.chars().next().filter(|c| matches!(c, '✓' | '✗'))?;
            let l = l[mark.len_utf8()..].trim_start();
            let (name, summary) = l.split_once("  ").unwrap_or((l, ""));
            Some((mark, name.to_owned(), summary.to_owned()))
        })
        .collect()
}

/// The event names of [`steps`], each with its mark. A polled state (`  · running …`) may
/// only come before the first event: once events flow, a late state line would repeat them.
fn step_names(out: &str) -> Vec<String> {
    let lines: Vec<&str> = out.lines().collect();
    let first_event = lines.iter().position(|l| l.starts_with("  ✓ ") || l.starts_with("  ✗ "));
    let last_state = lines.iter().rposition(|l| l.starts_with("  · "));
    if let (Some(event), Some(state)) = (first_event, last_state) {
        assert!(state < event, "a state line after the events:\n{out}");
    }
    steps(out).into_iter().map(|(mark, name, _)| format!("{mark} {name}")).collect()
}

/// The value of `key` in the report `--wait` prints after success (`  key  value`).
fn reported(out: &str, key: &str) -> String {
    out.lines()
        .filter_map(|l| l.strip_prefix("  ")?.strip_prefix(key)?.strip_prefix("  ").map(str::trim))
        .next()
        .unwrap_or_else(|| panic!("no {key} in the report:\n{out}"))
        .to_owned()
}

/// The rows of a table as header → cell, cut at the header's column offsets: a misaligned
/// column garbles its cells and fails the test.
fn table(out: &str) -> Vec<HashMap<String, String>> {
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_else(|| panic!("no table:\n{out}"));
    let mut columns: Vec<(usize, &str)> = Vec::new();
    let mut prev = ' ';
    for (i, c) in header.char_indices() {
        if c != ' ' && prev == ' ' {
            let name = header[i..].split(' ').next().unwrap_or_default();
            columns.push((i, name));
        }
        prev = c;
    }
    lines
        .map(|row| {
            columns
                .iter()
                .enumerate()
                .map(|(n, (start, name))| {
                    let end = columns.get(n + 1).map_or(row.len(), |(next, _)| (*next).min(row.len()));
                    let cell = row.get((*start).min(row.len())..end).unwrap_or_else(|| panic!("{row:?} is cut"));
                    if *start > 0 && *start < row.len() {
                        assert_eq!(&row[start - 1..*start], " ", "column {name} is aligned in {row:?}");
                    }
                    ((*name).to_owned(), cell.trim().to_owned())
                })
                .collect()
        })
        .collect()
}

/// The `key  value` lines of a detail view.
fn details(out: &str) -> HashMap<String, String> {
    out.lines().filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_owned(), v.trim().to_owned()))).collect()
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

/// `dfe events …` running in the background.
struct Tail {
    child: Child,
    stderr: Lines<BufReader<ChildStderr>>,
}

/// Starts `dfe events args…` and waits until it says its subscription is in place: from then
/// on it misses no event.
async fn tail(env: &TestEnv, args: &[&str]) -> Tail {
    let mut cmd = env.cli_command(args).expect("dfe");
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("dfe events starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), stderr.next_line())
        .await
        .expect("dfe events subscribes in time")
        .expect("stderr is readable")
        .expect("dfe events says it listens");
    assert_eq!(first, "listening on dfe.events for \"dfe.#\"", "its first line");
    Tail { child, stderr }
}

impl Tail {
    /// Waits for it to end by itself (after `--count` events); exit status, stdout lines,
    /// the rest of stderr.
    async fn finish(mut self) -> (i32, Vec<String>, String) {
        let out = tokio::time::timeout(JOB_TIMEOUT, self.child.wait_with_output())
            .await
            .expect("dfe events ends after its count")
            .expect("dfe events is reaped");
        let mut err = String::new();
        while let Ok(Some(line)) = self.stderr.next_line().await {
            err.push_str(&line);
            err.push('\n');
        }
        let lines = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        (out.status.code().unwrap_or(-1), lines, err)
    }
}

/// A loopback port with nothing listening on it: bound, then freed.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_and_deprovision_with_wait_over_the_api_show_their_steps_and_the_registry_in_tables_and_json() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("cli-api");
    let db = probes::db_name(&instance);

    let json_tail = tail(&env, &["events", "--count", "3", "--json"]).await;
    let (out, _) = dfe(&env, &["provision", "--wait", "42", &instance], 0).await;
    let job = submitted_job(&out, "provision");
    assert!(out.starts_with(&format!("provision job {job} queued (instance {instance})\n")), "{out}");
    assert_eq!(step_names(&out), ["✓ dfe.storage.provisioned", "✓ dfe.database.provisioned", "✓ dfe.provisioned"]);
    let progress = steps(&out);
    assert_eq!(progress[0].2, format!("volume=dfe-{instance}-storage"), "what the storage step made");
    assert!(progress[1].2.starts_with(&format!("database={db} ")), "{}", progress[1].2);
    assert!(progress[1].2.contains(&format!(" database-role={db}")), "{}", progress[1].2);
    assert!(out.contains(&format!("provision job {job} succeeded\n")), "{out}");
    assert_eq!(reported(&out, "instance-id"), instance);
    assert_eq!(reported(&out, "container"), format!("dfe-{instance}"));
    let resource_uri = reported(&out, "resource-uri");
    assert!(resource_uri.starts_with("http://127.0.0.1:"), "{resource_uri}");
    assert!(!out.to_lowercase().contains("password"), "{out}");
    let answer = reqwest::get(&resource_uri).await.expect("resource-uri answers").text().await.expect("body");
    assert!(answer.contains(&instance), "{answer}");
    assert!(footprint(&instance).await.expect("footprint").is_complete());

    // The tail printed each event of the job as its raw body, one per line.
    let (code, lines, err) = json_tail.finish().await;
    assert_eq!(code, 0, "{err}");
    events.wait_final(&job, JOB_TIMEOUT).await.expect("final event");
    let tailed: Vec<Value> = lines.iter().map(|l| json(l)).collect();
    assert_eq!(tailed, events.of_job(&job), "the same bodies as a plain subscriber received");

    // jobs: the table, the JSON, one job in detail.
    let (out, _) = dfe(&env, &["jobs"], 0).await;
    let rows = table(&out);
    assert!(out.starts_with("JOB-ID "), "{out}");
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(
        [&rows[0]["JOB-ID"], &rows[0]["TYPE"], &rows[0]["STATE"], &rows[0]["ATTEMPTS"], &rows[0]["INSTANCE-ID"]],
        [&job, "provision", "succeeded", "1", &instance]
    );
    assert!(rows[0]["CREATED-AT"].starts_with("20"), "{out}");
    let (out, _) = dfe(&env, &["jobs", "--json"], 0).await;
    let listed = json(&out);
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(
        (&listed["jobs"][0]["job-id"], &listed["jobs"][0]["state"]),
        (&Value::from(job.as_str()), &"succeeded".into())
    );
    let (out, _) = dfe(&env, &["jobs", &job], 0).await;
    let one = details(&out);
    assert!(out.starts_with("job-id "), "the id first: {out}");
    assert_eq!(one["state"], "succeeded", "{out}");
    assert_eq!(one["type"], "provision");
    assert_eq!(one["request.instance-id"], instance);
    assert_eq!(one["result.resource-uri"], resource_uri);
    let (out, _) = dfe(&env, &["jobs", &job, "--json"], 0).await;
    assert_eq!(json(&out)["result"]["container"], format!("dfe-{instance}"));

    // instances: the table, the JSON, one in detail.
    let (out, _) = dfe(&env, &["instances"], 0).await;
    let rows = table(&out);
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(
        [&rows[0]["INSTANCE-ID"], &rows[0]["OWNER-ID"], &rows[0]["STATE"], &rows[0]["GUEST-LOCATION"]],
        [&instance, "42", "provisioned", "docker"]
    );
    assert_eq!(rows[0]["RESOURCE-URI"], resource_uri);
    let (out, _) = dfe(&env, &["instances", "--json"], 0).await;
    assert_eq!(json(&out)["instances"][0]["instance-id"], instance.as_str());
    let (out, _) = dfe(&env, &["instances", &instance], 0).await;
    let one = details(&out);
    assert_eq!((one["state"].as_str(), one["owner-id"].as_str()), ("provisioned", "42"), "{out}");
    let (out, _) = dfe(&env, &["instances", &instance, "--json"], 0).await;
    assert_eq!(json(&out)["resource-uri"], resource_uri.as_str());

    // Deprovisioning, with the plain tail running this time.
    let line_tail = tail(&env, &["events", "--count", "3"]).await;
    let (out, _) = dfe(&env, &["deprovision", "--wait", &instance], 0).await;
    let job2 = submitted_job(&out, "deprovision");
    assert_eq!(
        step_names(&out),
        ["✓ dfe.database.deprovisioned", "✓ dfe.storage.deprovisioned", "✓ dfe.deprovisioned"]
    );
    assert!(out.contains(&format!("deprovision job {job2} succeeded\n")), "{out}");
    assert!(footprint(&instance).await.expect("footprint").is_empty(), "nothing is left");
    let (code, lines, err) = line_tail.finish().await;
    assert_eq!(code, 0, "{err}");
    let names = ["dfe.database.deprovisioned", "dfe.storage.deprovisioned", "dfe.deprovisioned"];
    assert_eq!(lines.len(), names.len(), "{lines:#?}");
    for (line, name) in lines.iter().zip(names) {
        let fields: Vec<&str> = line.split("  ").map(str::trim).filter(|f| !f.is_empty()).collect();
        let at = fields[0];
        assert!(at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T', "UTC time first: {line}");
        assert_eq!(fields[1..4], [name, &format!("job={job2}"), &format!("instance={instance}")], "{line}");
    }
    assert!(lines[0].ends_with(&format!("instance={instance}  database={db} kept=false")), "{}", lines[0]);

    // A deprovisioned instance leaves the default list but not the registry.
    let (out, err) = dfe(&env, &["instances"], 0).await;
    assert_eq!((out.as_str(), err.as_str()), ("", "no instances\n"));
    let (out, _) = dfe(&env, &["instances", "--include-removed"], 0).await;
    let rows = table(&out);
    assert_eq!((rows.len(), rows[0]["STATE"].as_str()), (1, "deprovisioned"), "{out}");
    let (out, _) = dfe(&env, &["jobs", "--instance-id", &instance], 0).await;
    let rows = table(&out);
    let listed: Vec<(&str, &str)> = rows.iter().map(|r| (r["JOB-ID"].as_str(), r["TYPE"].as_str())).collect();
    assert_eq!(listed, [(job2.as_str(), "deprovision"), (job.as_str(), "provision")], "newest first: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_and_deprovision_with_wait_straight_over_the_queue() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("cli-queue");
    let job = format!("cli-queue-{}", random_hex(8));

    let (out, _) =
        dfe(&env, &["--via", "queue", "provision", "--wait", "--job-id", &job, "acme.co", &instance], 0).await;
    assert!(out.starts_with(&format!("provision job {job} published onto dfe.jobs (instance {instance})\n")), "{out}");
    assert_eq!(step_names(&out), ["✓ dfe.storage.provisioned", "✓ dfe.database.provisioned", "✓ dfe.provisioned"]);
    assert!(out.contains(&format!("provision job {job} succeeded\n")), "{out}");
    assert_eq!(reported(&out, "container"), format!("dfe-{instance}"));
    assert!(footprint(&instance).await.expect("footprint").is_complete());
    // Recorded like any job, as having come over the queue.
    let (out, _) = dfe(&env, &["jobs", &job, "--json"], 0).await;
    let record = json(&out);
    assert_eq!((&record["source"], &record["state"]), (&"queue".into(), &"succeeded".into()), "{record}");
    assert_eq!(record["request"]["owner-id"], "acme.co");
    let (out, _) = dfe(&env, &["instances"], 0).await;
    assert_eq!(table(&out)[0]["OWNER-ID"], "acme.co");

    // The global option may follow the subcommand; the CLI picks the job id.
    let (out, _) = dfe(&env, &["deprovision", "--wait", &instance, "--via", "queue"], 0).await;
    let job2 = submitted_job(&out, "deprovision");
    assert!(uuid::Uuid::parse_str(&job2).is_ok(), "a generated UUID: {job2}");
    assert_eq!(
        step_names(&out),
        ["✓ dfe.database.deprovisioned", "✓ dfe.storage.deprovisioned", "✓ dfe.deprovisioned"]
    );
    assert_eq!(events.wait_final(&job2, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
    assert!(footprint(&instance).await.expect("footprint").is_empty());

    // The queue has no idempotency keys, and the CLI says so instead of ignoring the key.
    let (_, err) = dfe(&env, &["--via", "queue", "deprovision", "--idempotency-key", "k", &instance], 2).await;
    assert!(err.contains("--idempotency-key needs --via api"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_exits_1_with_its_reason_and_rejected_input_exits_2_naming_the_fix() {
    let env = TestEnv::start().await.expect("environment");
    for via in ["api", "queue"] {
        let instance = env.instance_id(&format!("cli-fail-{via}"));
        let args = ["--via", via, "provision", "--wait", "--offering", "image=missing", "1", &instance];
        let (out, err) = dfe(&env, &args, 1).await;
        let job = submitted_job(&out, "provision");
        assert_eq!(
            step_names(&out),
            ["✓ dfe.storage.provisioned", "✓ dfe.database.provisioned", "✗ dfe.provision.failed"],
            "{via}: {out}"
        );
        assert!(!out.contains("succeeded"), "{via}: {out}");
        assert!(err.starts_with(&format!("error: provision job {job} failed\n")), "{via}: {err}");
        assert!(err.contains("error.code     image-not-found"), "{via}: {err}");
        assert!(err.contains("dfe/does-not-exist"), "the message names the image: {err}");
        assert!(footprint(&instance).await.expect("footprint").is_empty(), "{via}: the rollback left nothing");
        let (out, _) = dfe(&env, &["jobs", &job], 0).await;
        let record = details(&out);
        assert_eq!((record["state"].as_str(), record["error.code"].as_str()), ("failed", "image-not-found"));
    }

    // Input refused before or by the API: exit 2, the field or the missing thing named, with
    // where to look it up.
    let ghost = env.instance_id("cli-ghost");
    let (_, err) = dfe(&env, &["provision", "1", "Not_An_Id"], 2).await;
    assert!(err.starts_with("error: instance-id: "), "{err}");
    let (_, err) = dfe(&env, &["provision", "--offering", "image", "1", &ghost], 2).await;
    assert!(err.contains("expected OFFERING=VALUE"), "{err}");
    let (_, err) = dfe(&env, &["deprovision", "--wait", &ghost], 2).await;
    assert!(err.contains(&format!("instance {ghost} does not exist")), "{err}");
    assert!(err.contains("`dfe instances` lists the instances"), "{err}");
    let (_, err) = dfe(&env, &["import", "--wait", "1", &ghost, "no-such-snapshot"], 2).await;
    assert!(err.contains("snapshot no-such-snapshot is not in the snapshot store"), "{err}");
    assert!(err.contains("`dfe snapshots` lists the snapshots"), "{err}");
    let (_, err) = dfe(&env, &["jobs", "no-such-job"], 2).await;
    assert!(err.contains("no job \"no-such-job\" is known to the API") && err.contains("`dfe jobs` lists them"));
    let (_, err) = dfe(&env, &["instances", &ghost], 2).await;
    assert!(err.contains(&format!("no instance \"{ghost}\" is known")), "{err}");
    let (_, err) = dfe(&env, &["snapshots", "no-such-snapshot"], 2).await;
    assert!(err.contains("no snapshot \"no-such-snapshot\" is known") && err.contains("`dfe snapshots` lists them"));
    let dir = env.dir.join("downloads-none");
    std::fs::create_dir_all(&dir).expect("dir");
    let (_, err) = dfe(&env, &["snapshots", "download", "no-such-snapshot", "-o", &dir.display().to_string()], 2).await;
    assert!(err.contains("no snapshot \"no-such-snapshot\""), "{err}");
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0, "a failed download leaves no file");

    // Only the two failed provisions were recorded.
    let (out, _) = dfe(&env, &["jobs", "--json"], 0).await;
    assert_eq!(json(&out)["jobs"].as_array().map(Vec::len), Some(2), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_that_times_out_exits_1_naming_the_jobs_state_and_the_job_goes_on() {
    // No worker running: the jobs stay queued. (One ran first and probed the Docker host: a
    // host never probed successfully is `pending` and takes no instance.)
    let mut env =
        TestEnv::start_with(dfe_tests::Options { workers: 1, ..Default::default() }).await.expect("environment");
    env.workers[0].kill();
    let events = env.events().await.expect("subscribe");
    let instance = env.instance_id("cli-slow");

    let started = tokio::time::Instant::now();
    let (out, err) = dfe(&env, &["provision", "--wait", "--timeout", "2", "7", &instance], 1).await;
    assert!(started.elapsed() < Duration::from_secs(20), "--timeout 2 ends the wait early");
    let job = submitted_job(&out, "provision");
    assert!(
        err.contains(&format!(
            "gave up waiting for the provision job {job} after 2 s (last known state: queued, not yet taken by a \
             worker — is a dfe-worker running?)"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("`dfe jobs {job}` shows how it ends")), "{err}");
    let ghost = env.instance_id("cli-ghost");
    let (out, err) = dfe(&env, &["--via", "queue", "export", "--wait", "--timeout", "2", &ghost], 1).await;
    let job2 = submitted_job(&out, "export");
    assert!(err.contains("not yet taken by a worker — is a dfe-worker running?"), "{err}");
    assert!(!err.contains("404"), "a job waiting in the queue is not an API failure: {err}");

    // A worker arrives and carries out both.
    env.start_worker().expect("a worker");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
    assert_eq!(events.wait_final(&job2, JOB_TIMEOUT).await.expect("final")["event"], "dfe.export.failed");
    env.wait_job(&job, JOB_TIMEOUT).await.expect("recorded");
    let (out, _) = dfe(&env, &["jobs", &job], 0).await;
    assert_eq!(details(&out)["state"], "succeeded", "{out}");
    dfe(&env, &["deprovision", "--wait", &instance], 0).await;
    assert!(footprint(&instance).await.expect("footprint").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn export_and_import_with_wait_over_both_transports_and_snapshots_list_show_and_download() {
    let env = TestEnv::start().await.expect("environment");
    let a = env.instance_id("cli-src");
    let b = env.instance_id("cli-copy");
    dfe(&env, &["provision", "--wait", "5", &a], 0).await;
    exec(&format!("dfe-{a}"), "echo hello > /storage/hello.txt").expect("a file in A's storage");

    // Export through the API, then over the queue.
    let (out, _) = dfe(&env, &["export", "--wait", &a], 0).await;
    let job = submitted_job(&out, "export");
    assert_eq!(step_names(&out), ["✓ dfe.database.exported", "✓ dfe.storage.exported", "✓ dfe.exported"]);
    assert!(out.contains(&format!("export job {job} succeeded\n")), "{out}");
    let first = reported(&out, "snapshot-id");
    assert!(!out.contains("\n  snapshot  "), "the snapshot id is reported once: {out}");
    let archive = std::fs::read(env.snapshots_dir().join(format!("{first}.snapshot.tar.gz"))).expect("in the store");
    let digest = hex::encode(Sha256::digest(&archive));
    assert_eq!(reported(&out, "sha256"), digest);
    assert_eq!(reported(&out, "size"), archive.len().to_string());
    let (out, _) = dfe(&env, &["--via", "queue", "export", "--wait", &a], 0).await;
    assert_eq!(step_names(&out), ["✓ dfe.database.exported", "✓ dfe.storage.exported", "✓ dfe.exported"]);
    let second = reported(&out, "snapshot-id");
    assert_ne!(first, second);

    // The list, newest first, as a table and as JSON, filtered by instance and by owner.
    let (out, _) = dfe(&env, &["snapshots"], 0).await;
    let rows = table(&out);
    let ids: Vec<&str> = rows.iter().map(|r| r["SNAPSHOT-ID"].as_str()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "{out}");
    assert_eq!([&rows[1]["INSTANCE-ID"], &rows[1]["OWNER-ID"], &rows[1]["DESTINATION"]], [&a, "5", "default"]);
    assert!(rows[1]["SIZE"].ends_with("KiB") || rows[1]["SIZE"].ends_with(" B"), "a size for people: {out}");
    let (out, _) = dfe(&env, &["snapshots", "--instance-id", &a, "--json"], 0).await;
    let listed = json(&out);
    assert_eq!(listed["snapshots"].as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(listed["snapshots"][1]["sha256"], digest.as_str());
    assert_eq!(listed["snapshots"][1]["size"], archive.len());
    let (out, _) = dfe(&env, &["snapshots", "--owner-id", "5", "--limit", "1", "--json"], 0).await;
    assert_eq!(json(&out)["snapshots"][0]["snapshot-id"], second.as_str(), "{out}");
    assert_eq!(json(&out)["snapshots"].as_array().map(Vec::len), Some(1));
    let (out, err) = dfe(&env, &["snapshots", "--owner-id", "6"], 0).await;
    assert_eq!((out.as_str(), err.as_str()), ("", "no snapshots\n"));
    let (out, _) = dfe(&env, &["snapshots", "--instance-id", &b, "--json"], 0).await;
    assert_eq!(json(&out)["snapshots"], serde_json::json!([]));

    // One snapshot, in detail and as JSON.
    let (out, _) = dfe(&env, &["snapshots", &first], 0).await;
    let one = details(&out);
    assert!(out.starts_with("snapshot-id "), "{out}");
    assert_eq!([&one["snapshot-id"], &one["instance-id"], &one["sha256"], &one["job-id"]], [&first, &a, &digest, &job]);
    assert_eq!(one["manifest.instance-id"], a);
    let (out, _) = dfe(&env, &["snapshots", &first, "--json"], 0).await;
    assert_eq!(json(&out)["manifest"]["snapshot-id"], first.as_str());

    // Downloads: into a directory, then refusing to overwrite, then forced, then to stdout.
    let dir = env.dir.join("downloads");
    std::fs::create_dir_all(&dir).expect("dir");
    let dir_arg = dir.display().to_string();
    let (out, _) = dfe(&env, &["snapshots", "download", &first, "-o", &dir_arg], 0).await;
    let saved = dir.join(format!("{first}.snapshot.tar.gz"));
    assert!(out.contains(&format!("saved snapshot {first} to {}", saved.display())), "{out}");
    assert!(out.contains(&format!("sha256 {digest}, SHA-256 verified")), "{out}");
    assert_eq!(std::fs::read(&saved).expect("saved"), archive, "the same bytes as the store holds");
    let (_, err) = dfe(&env, &["snapshots", "download", &first, "-o", &dir_arg], 2).await;
    assert!(err.contains("exists — pass --force"), "{err}");
    dfe(&env, &["snapshots", "download", &first, "-o", &saved.display().to_string(), "--force"], 0).await;
    assert_eq!(std::fs::read(&saved).expect("saved"), archive);
    let raw = env.cli_command(&["snapshots", "download", &first, "-o", "-"]).expect("dfe").output().await.expect("run");
    assert!(raw.status.success(), "{}", String::from_utf8_lossy(&raw.stderr));
    assert_eq!(raw.stdout, archive, "-o - streams the archive itself");

    // Import through the API into a new instance, then over the queue, cleaning, into the same.
    let (out, _) = dfe(&env, &["import", "--wait", "6", &b, &first], 0).await;
    let job = submitted_job(&out, "import");
    assert_eq!(step_names(&out), ["✓ dfe.database.imported", "✓ dfe.storage.imported", "✓ dfe.imported"]);
    assert!(out.contains(&format!("import job {job} succeeded\n")), "{out}");
    assert_eq!((reported(&out, "created"), reported(&out, "snapshot")), ("true".to_owned(), first.clone()));
    assert_eq!(exec(&format!("dfe-{b}"), "cat /storage/hello.txt").expect("restored"), "hello\n");
    exec(&format!("dfe-{b}"), "echo extra > /storage/extra.txt").expect("a file added since");
    let (out, _) = dfe(&env, &["--via", "queue", "import", "--wait", "--clean", "6", &b, &second], 0).await;
    assert_eq!(step_names(&out), ["✓ dfe.database.imported", "✓ dfe.storage.imported", "✓ dfe.imported"]);
    assert_eq!(reported(&out, "created"), "false");
    let listing = exec(&format!("dfe-{b}"), "ls -A /storage").expect("ls");
    assert!(listing.contains("hello.txt") && !listing.contains("extra.txt"), "{listing}");

    // An archive that no longer matches its record is refused, and nothing is saved.
    let store = env.snapshots_dir().join(format!("{second}.snapshot.tar.gz"));
    let mut bytes = std::fs::read(&store).expect("store");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&store, &bytes).expect("tamper");
    let (_, err) = dfe(&env, &["snapshots", "download", &second, "-o", &dir_arg], 1).await;
    assert!(err.contains(&format!("the download of snapshot {second} is incomplete or corrupt: its SHA-256 is")));
    assert!(
        err.contains(
            "nothing was saved — try again, and if it fails the same way, the archive in the snapshot store is damaged"
        ),
        "{err}"
    );
    let left: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into())
        .collect();
    assert_eq!(left, [format!("{first}.snapshot.tar.gz")], "neither the archive nor a .part file is left");

    for i in [&a, &b] {
        dfe(&env, &["deprovision", "--wait", i], 0).await;
        assert!(footprint(i).await.expect("footprint").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_api_or_broker_and_a_refused_or_missing_token_are_named_with_the_fix() {
    let env = TestEnv::start_with(dfe_tests::Options { workers: 0, ..Default::default() }).await.expect("environment");
    let instance = env.instance_id("cli-err");

    let url = format!("http://127.0.0.1:{}", closed_port());
    let unreachable = format!(
        "error: cannot reach the API at {url}: connection refused — is dfe-api running? set --api-url or DFE_API_URL\n"
    );
    let (_, err) = dfe_with(&env, &["jobs"], &[("DFE_API_URL", Some(&url))], 1).await;
    assert_eq!(err, unreachable);
    let (out, err) = dfe_with(&env, &["provision", "--wait", "1", &instance], &[("DFE_API_URL", Some(&url))], 1).await;
    assert_eq!((out.as_str(), err), ("", unreachable.clone()), "nothing was submitted");
    let (_, err) = dfe(&env, &["--api-url", &format!("{url}/"), "instances", &instance], 1).await;
    assert_eq!(err, unreachable, "--api-url wins over DFE_API_URL");

    let (_, err) = dfe_with(&env, &["instances"], &[("DFE_TOKEN", Some("not-the-token"))], 1).await;
    let refused =
        format!("the API at {} refused the token (401 Unauthorized: the bearer token is not accepted)", env.api_url);
    assert!(err.contains(&refused), "the API's reason is shown: {err}");
    assert!(err.contains("set DFE_TOKEN or --token-file") && err.contains("`dfe token` mints one"), "{err}");
    assert!(!err.contains("not-the-token"), "the token is never shown: {err}");
    let vars = [("DFE_TOKEN", Some("not-the-token"))];
    let (out, err) = dfe_with(&env, &["provision", "--wait", "1", &instance], &vars, 1).await;
    assert!(out.is_empty() && err.contains("refused the token"), "{out}{err}");
    let (_, err) = dfe_with(&env, &["snapshots"], &[("DFE_TOKEN", None)], 1).await;
    assert!(err.starts_with("error: no API token — set DFE_TOKEN or --token-file FILE"), "{err}");

    // The right token from a file works.
    let token_file = env.dir.join("token");
    std::fs::write(&token_file, format!("{}\n", env.token)).expect("token file");
    let file_arg = token_file.display().to_string();
    let (out, err) = dfe_with(&env, &["--token-file", &file_arg, "jobs"], &[("DFE_TOKEN", None)], 0).await;
    assert_eq!((out.as_str(), err.as_str()), ("", "no jobs\n"), "refused requests recorded no job");

    // The broker: unreachable, and the password in its URL never shown.
    let port = closed_port();
    let amqp = format!("amqp://guest:s3cret@127.0.0.1:{port}/%2f");
    let (_, err) = dfe_with(&env, &["events", "--count", "1"], &[("DFE__AMQP__URL", Some(&amqp))], 1).await;
    assert!(err.starts_with(&format!("error: cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:{port}/%2f: ")));
    assert!(err.contains("is RabbitMQ running? set --amqp-url, amqp.url in the configuration, or DFE__AMQP__URL"));
    assert!(!err.contains("s3cret"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minted_token_prints_its_digest_line_and_is_accepted_once_configured() {
    let mut env =
        TestEnv::start_with(dfe_tests::Options { workers: 0, ..Default::default() }).await.expect("environment");
    let (out, err) = dfe(&env, &["token", "--client-id", "ops-laptop"], 0).await;
    let lines: Vec<&str> = out.lines().collect();
    let token = lines[0];
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()), "256 bits in hex: {out}");
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    assert_eq!(
        lines[1..],
        ["", "[[api.clients]]", "id = \"ops-laptop\"", &format!("token-sha256 = \"{digest}\"")],
        "{out}"
    );
    assert!(err.contains("shown only now") && !err.contains(token), "{err}");
    let (again, _) = dfe(&env, &["token"], 0).await;
    assert_ne!(again.lines().next(), Some(token), "a fresh token each time");

    // --digest prints the entry of an existing token.
    let (out, _) =
        dfe_with(&env, &["token", "--digest", "--client-id", "ops-laptop"], &[("DFE_TOKEN", Some(token))], 0).await;
    assert_eq!(out, lines[2..].join("\n") + "\n");

    // Not accepted yet; accepted once its entry is in dfe-api's configuration.
    dfe_with(&env, &["jobs"], &[("DFE_TOKEN", Some(token))], 1).await;
    let mut config = std::fs::read_to_string(&env.config_path).expect("config");
    config.push('\n');
    config.push_str(&lines[2..].join("\n"));
    config.push('\n');
    std::fs::write(&env.config_path, config).expect("config");
    env.api = None;
    env.start_api().await.expect("dfe-api restarts");
    let (out, err) = dfe_with(&env, &["jobs"], &[("DFE_TOKEN", Some(token))], 0).await;
    assert_eq!((out.as_str(), err.as_str()), ("", "no jobs\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bash_completion_completes_subcommands_and_options() {
    let dfe = dfe_tests::bin("dfe").expect("dfe is built");
    // What bash offers for `line` (the cursor at its end), as when Tab is pressed.
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let script = format!(
            "source <(\"$DFE\" completions bash) && COMP_WORDS=({}) && COMP_CWORD={} && COMP_LINE='{line}' \
             && COMP_POINT={} && _dfe dfe '{}' '{}' && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
            words.len() - 1,
            line.len(),
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out =
            std::process::Command::new("bash").args(["-c", &script]).env("DFE", &dfe).output().expect("bash runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect::<Vec<String>>()
    };
    assert_eq!(complete("dfe snap"), ["snapshots"]);
    assert!(complete("dfe snapshots ").contains(&"download".to_owned()));
    assert!(complete("dfe provision --off").contains(&"--offering".to_owned()));
    for shell in ["zsh", "fish"] {
        let out = std::process::Command::new(&dfe).args(["completions", shell]).output().expect("dfe runs");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("snapshots"), "{shell}");
    }
}
