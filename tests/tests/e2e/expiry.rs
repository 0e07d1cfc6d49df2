//! Lifecycle and quotas end to end: expiries set with PATCH and acted on by the workers'
//! schedule (warnings once each, the job at expiry, the dry run agreeing), a takeover of the
//! schedule when its worker is killed, and owner quotas under concurrent provisions.
//!
//! The clock is real: expiries are set seconds ahead, with `lifecycle.interval-secs = 1`
//! and `warn-days` given as fractions of a day (seconds).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dfe_tests::{EventLog, Options, TestEnv};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::JOB_TIMEOUT;

/// `n` seconds as days, written so that TOML reads back the same float.
fn days(secs: f64) -> f64 {
    secs / 86_400.0
}

fn lifecycle_config(warn_secs: &[f64], on_expiry: &str) -> String {
    let warn: Vec<String> = warn_secs.iter().map(|s| format!("{}", days(*s))).collect();
    format!("\n[lifecycle]\ninterval-secs = 1\nwarn-days = [{}]\non-expiry = \"{on_expiry}\"\n", warn.join(", "))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("formats")
}

async fn provision(env: &TestEnv, events: &EventLog, instance: &str, guest: &str) {
    let job = env
        .submit("provision", json!({"owner-id": "exp", "instance-id": instance, "guest-location": guest}))
        .await
        .expect("202");
    let done = events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
    assert_eq!(done["event"], "dfe.provisioned", "{done}");
}

async fn set_expiry(env: &TestEnv, instance: &str, at: OffsetDateTime) -> Value {
    let (status, record) =
        env.patch(&format!("/api/v1/instances/{instance}"), &json!({"expires-at": rfc3339(at)})).await.expect("patch");
    assert_eq!(status, 200, "{record}");
    record
}

/// A warning day as whole seconds: the days went through TOML and JSON, so compare them
/// at the resolution the test sets them with.
fn secs(days: &Value) -> String {
    format!("{}s", (days.as_f64().expect("days is a number") * 86_400.0).round())
}

/// The warnings of an instance seen so far: warning day → distinct event ids.
fn warnings(events: &EventLog, instance: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in events.all() {
        if e["event"] == "dfe.instance.expiring" && e["instance-id"] == instance {
            out.entry(secs(&e["result"]["days"])).or_default().insert(e["event-id"].to_string());
        }
    }
    out
}

/// The steps the dry run lists for an instance, as (step, days or action).
fn planned(preview: &Value, instance: &str) -> Vec<(String, String)> {
    let entry = preview["expiries"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["instance-id"] == instance))
        .unwrap_or_else(|| panic!("{instance} in the dry run: {preview}"));
    entry["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            let what = if s["step"] == "warning" { secs(&s["days"]) } else { s["action"].to_string() };
            (s["step"].as_str().unwrap_or_default().to_owned(), what)
        })
        .collect()
}

async fn jobs_of(env: &TestEnv, instance: &str, kind: &str) -> Vec<Value> {
    let (status, list) = env.get(&format!("/api/v1/ops/jobs?instance-id={instance}&type={kind}")).await.expect("jobs");
    assert_eq!(status, 200, "{list}");
    list["jobs"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expiry_sends_each_warning_once_then_deprovisions_as_the_dry_run_said() {
    let options =
        Options { workers: 1, extra_config: lifecycle_config(&[16.0, 8.0], "deprovision"), ..Default::default() };
    let env = TestEnv::start_with(options).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let i = env.instance_id("exp");
    provision(&env, &events, &i, "docker").await;

    // Bad expiries name the field; an unknown instance is a 404.
    let (status, p) =
        env.patch(&format!("/api/v1/instances/{i}"), &json!({"expires-at": "soon"})).await.expect("patch");
    assert_eq!((status, &p["errors"][0]["field"]), (422, &json!("expires-at")), "{p}");
    let (status, _) = env.patch("/api/v1/instances/no-such-one", &json!({"expires-at": null})).await.expect("patch");
    assert_eq!(status, 404);

    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(24);
    let record = set_expiry(&env, &i, expires_at).await;
    assert_eq!(
        record["expires-at"],
        rfc3339(expires_at.replace_nanosecond(expires_at.microsecond() * 1000).expect("us"))
    );

    // The dry run (REST and CLI) lists both warnings and the deprovision, none due yet.
    let (status, preview) = env.get("/api/v1/lifecycle").await.expect("preview");
    assert_eq!(status, 200, "{preview}");
    let (d16, d8) = ("16s".to_owned(), "8s".to_owned());
    let expected = vec![
        ("warning".to_owned(), d16.clone()),
        ("warning".to_owned(), d8.clone()),
        ("expiry".to_owned(), "\"deprovision\"".to_owned()),
    ];
    assert_eq!(planned(&preview, &i), expected, "{preview}");
    let (code, out, err) = env.cli(&["expire", "--dry-run"]).await.expect("dfe expire");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&i)).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[2].contains("deprovision"), "{out}");
    assert!(err.contains("every 1 s"), "{err}");

    // Each warning once, in order, then the deprovision, asked for by `lifecycle`.
    let first = events
        .wait_for("the first warning", Duration::from_secs(30), |e| {
            e["event"] == "dfe.instance.expiring" && e["instance-id"] == i
        })
        .await
        .expect("warning");
    assert_eq!(secs(&first["result"]["days"]), d16, "{first}");
    assert_eq!(first["owner-id"], "exp");
    let done = events
        .wait_for("the deprovision at expiry", Duration::from_secs(30) + JOB_TIMEOUT, |e| {
            e["event"] == "dfe.deprovisioned" && e["instance-id"] == i
        })
        .await
        .expect("deprovisioned");
    assert!(OffsetDateTime::now_utc() >= expires_at, "not before its expiry");
    let job_id = done["job-id"].as_str().expect("job id");
    assert!(job_id.starts_with("expire-"), "{job_id}");
    let (_, job) = env.get(&format!("/api/v1/ops/jobs/{job_id}")).await.expect("job");
    assert_eq!((&job["requested-by"], &job["type"]), (&json!("lifecycle"), &json!("deprovision")), "{job}");
    let (code, out, _) = env.cli(&["jobs", job_id]).await.expect("dfe jobs");
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("requested-by") && l.ends_with("lifecycle")), "{out}");

    // A few more runs of the schedule change nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = warnings(&events, &i);
    assert_eq!(sent.keys().cloned().collect::<Vec<_>>(), {
        let mut k = vec![d16, d8];
        k.sort();
        k
    });
    assert!(sent.values().all(|ids| ids.len() == 1), "each warning once: {sent:?}");
    assert_eq!(jobs_of(&env, &i, "deprovision").await.len(), 1);
    let (_, preview) = env.get("/api/v1/lifecycle").await.expect("preview");
    assert!(preview["expiries"].as_array().expect("list").iter().all(|e| e["instance-id"] != i), "{preview}");
    assert!(probes_empty(&i).await);
}

async fn probes_empty(instance: &str) -> bool {
    dfe_tests::probes::footprint(instance).await.expect("footprint").is_empty()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_schedule_worker_is_replaced_and_nothing_is_expired_twice() {
    let options = Options { workers: 2, extra_config: lifecycle_config(&[3.0], "suspend"), ..Default::default() };
    let mut env = TestEnv::start_with(options).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let (a, b) = (env.instance_id("exp-a"), env.instance_id("exp-b"));
    for i in [&a, &b] {
        provision(&env, &events, i, "noop").await;
    }
    let now = OffsetDateTime::now_utc();
    set_expiry(&env, &a, now + time::Duration::seconds(5)).await;
    set_expiry(&env, &b, now + time::Duration::seconds(16)).await;
    let (_, preview) = env.get("/api/v1/lifecycle").await.expect("preview");
    let holder = preview["lease-holder"].as_str().expect("a worker holds the schedule").to_owned();

    // A is suspended by the first holder, which is then killed.
    events
        .wait_for("A suspended", Duration::from_secs(30), |e| e["event"] == "dfe.suspended" && e["instance-id"] == a)
        .await
        .expect("A suspended");
    let index = env.workers.iter().position(|w| holder.starts_with(&format!("{}-", w.name))).expect("the holder");
    env.workers[index].kill();

    // The other worker takes the schedule over within seconds and does B, once.
    events
        .wait_for("B suspended", Duration::from_secs(45), |e| e["event"] == "dfe.suspended" && e["instance-id"] == b)
        .await
        .expect("B suspended by the new holder");
    let (_, preview) = env.get("/api/v1/lifecycle").await.expect("preview");
    let new_holder = preview["lease-holder"].as_str().expect("a holder").to_owned();
    assert_ne!(new_holder, holder);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in [&a, &b] {
        let jobs = jobs_of(&env, i, "suspend").await;
        assert_eq!(jobs.len(), 1, "one suspend of {i}: {jobs:?}");
        assert_eq!(jobs[0]["requested-by"], "lifecycle");
        let suspended: BTreeSet<String> = events
            .all()
            .iter()
            .filter(|e| e["event"] == "dfe.suspended" && e["instance-id"] == i.as_str())
            .map(|e| e["event-id"].to_string())
            .collect();
        assert_eq!(suspended.len(), 1, "{i} suspended once");
        let sent = warnings(&events, i);
        assert_eq!(sent.len(), 1, "one warning day for {i}: {sent:?}");
        assert!(sent.values().all(|ids| ids.len() == 1), "sent once: {sent:?}");
        let (_, record) = env.get(&format!("/api/v1/instances/{i}")).await.expect("instance");
        assert_eq!(record["state"], "suspended");
    }
    // A suspended instance is not suspended again: its schedule is empty.
    assert_eq!(planned(&preview, &a), Vec::<(String, String)>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_provisions_for_an_owner_with_a_quota_of_five_make_exactly_five() {
    let extra = "\n[quotas.owners.quota-owner]\nmax-instances = 5\n".to_owned();
    let env = TestEnv::start_with(Options { extra_config: extra, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let ids: Vec<String> = (0..20).map(|n| env.instance_id(&format!("q{n}"))).collect();
    let bodies: Vec<Value> =
        ids.iter().map(|i| json!({"owner-id": "quota-owner", "instance-id": i, "guest-location": "noop"})).collect();
    let answers = futures::future::join_all(bodies.iter().map(|b| env.post("/api/v1/ops/provision", b))).await;
    let mut accepted = Vec::new();
    for (i, answer) in ids.iter().zip(answers) {
        let (status, body) = answer.expect("answer");
        match status {
            202 => accepted.push((i.clone(), body["job-id"].as_str().expect("job id").to_owned())),
            409 => {
                assert_eq!(body["type"], "urn:dfe:problem:quota-exceeded", "{body}");
                assert!(body["detail"].as_str().unwrap_or_default().contains("quota-owner"), "{body}");
            }
            other => panic!("{i}: {other} {body}"),
        }
    }
    assert_eq!(accepted.len(), 5, "exactly the quota");
    for (_, job) in &accepted {
        assert_eq!(events.wait_final(job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
    }
    let (status, usage) = env.get("/api/v1/owners/quota-owner").await.expect("owner");
    assert_eq!(status, 200, "{usage}");
    assert_eq!((&usage["used"], &usage["max-instances"], &usage["available"]), (&json!(5), &json!(5), &json!(0)));
    assert_eq!(usage["instances"]["provisioned"], 5, "{usage}");
    let (code, out, _) = env.cli(&["owner", "quota-owner"]).await.expect("dfe owner");
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("available") && l.ends_with('0')), "{out}");

    // Over the queue, the sixth fails with the same code.
    let extra = env.instance_id("q-queue");
    let body = json!({"job-id": format!("quota-{extra}"), "owner-id": "quota-owner", "instance-id": extra, "guest-location": "noop"});
    env.publish_raw("provision", body.to_string().as_bytes(), lapin::BasicProperties::default())
        .await
        .expect("publish");
    let failed = events.wait_final(&format!("quota-{extra}"), JOB_TIMEOUT).await.expect("final");
    assert_eq!(
        (&failed["event"], &failed["error"]["code"]),
        (&json!("dfe.provision.failed"), &json!("quota-exceeded"))
    );

    // One deprovisioned frees one place.
    let (gone, _) = &accepted[0];
    let job = env.submit("deprovision", json!({"instance-id": gone})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
    let job = env
        .submit("provision", json!({"owner-id": "quota-owner", "instance-id": extra, "guest-location": "noop"}))
        .await
        .expect("a place is free again");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
    let (_, usage) = env.get("/api/v1/owners/quota-owner").await.expect("owner");
    assert_eq!(usage["used"], 5);
    // Another owner is not limited by this one's quota.
    let (_, other) = env.get("/api/v1/owners/someone-else").await.expect("owner");
    assert_eq!((&other["used"], &other["max-instances"]), (&json!(0), &Value::Null), "{other}");
}
