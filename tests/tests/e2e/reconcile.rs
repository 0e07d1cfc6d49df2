//! The reconciler compares the registry with the Docker host and the database server: it
//! reports orphans and stuck jobs, and with --fix removes the one and fails the other.

use dfe_tests::probes::{self, footprint};
use dfe_tests::TestEnv;
use serde_json::{json, Value};

use crate::JOB_TIMEOUT;

#[tokio::test(flavor = "multi_thread")]
async fn the_reconciler_finds_orphans_and_stuck_jobs_and_fixes_them() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let kept = env.instance_id("kept");
    let lost = env.instance_id("lost");
    for i in [&kept, &lost] {
        let job = env.submit("provision", json!({"owner-id": 1, "instance-id": i})).await.expect("202");
        assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.provisioned");
    }
    // The registry loses `lost` (its resources become orphans), and a job is left running
    // long past its deadline, as by a worker that vanished without a redelivery.
    let registry = probes::pg(env.registry()).await.expect("registry");
    registry.execute("DELETE FROM instances WHERE instance_id = $1", &[&lost]).await.expect("delete");
    registry
        .execute(
            "INSERT INTO jobs (job_id, kind, state, attempts, instance_id, request, source, requested_by, deadline_at)
             VALUES ('stuck-job', 'export', 'running', 1, $1, $2, 'api', 'tests', now() - interval '1 hour')",
            &[&kept, &json!({"job-id": "stuck-job", "instance-id": kept})],
        )
        .await
        .expect("insert");

    let (code, out) = env.worker_once(&["--reconcile"]).await.expect("reconcile");
    assert_eq!(code, 3, "differences exit 3: {out}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    let orphans: Vec<(String, String)> = report["orphans"]
        .as_array()
        .expect("orphans")
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_owned(),
                o["instance-id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for kind in ["container", "volume", "database", "role"] {
        assert!(orphans.contains(&(kind.to_owned(), lost.clone())), "{kind} of {lost} is an orphan: {report}");
    }
    assert!(orphans.iter().all(|(_, i)| *i == lost), "only the lost instance is orphaned: {report}");
    assert_eq!(report["stuck"][0]["job-id"], "stuck-job", "{report}");
    assert_eq!(report["missing"], json!([]), "{report}");
    assert!(footprint(&lost).await.expect("fp").is_complete(), "a report changes nothing");

    let (code, out) = env.worker_once(&["--reconcile", "--fix"]).await.expect("fix");
    assert_eq!(code, 3, "{out}");
    let fixed: Value = serde_json::from_str(&out).expect("JSON report");
    assert!(fixed["orphans"].as_array().expect("orphans").iter().all(|o| o["removed"] == true), "{fixed}");
    assert!(footprint(&lost).await.expect("fp").is_empty(), "orphans removed");
    assert!(footprint(&kept).await.expect("fp").is_complete(), "the registered instance is untouched");
    let (_, job) = env.get("/api/v1/ops/jobs/stuck-job").await.expect("job");
    assert_eq!((job["state"].clone(), job["error"]["code"].clone()), (json!("failed"), json!("stuck")), "{job}");
    let failed = events.wait_final("stuck-job", JOB_TIMEOUT).await.expect("failure event");
    assert_eq!(failed["event"], "dfe.export.failed");

    let (_, out) = env.worker_once(&["--reconcile"]).await.expect("again");
    let again: Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(
        (&again["orphans"], &again["stuck"], &again["missing"]),
        (&json!([]), &json!([]), &json!([])),
        "{again}"
    );
    // The test configuration's deliberately refusing server is the only thing it cannot see.
    let unreachable = again["unreachable"].as_array().expect("list");
    assert!(unreachable.iter().all(|u| u.as_str().unwrap_or_default().contains("refusing")), "{again}");
    // The same on demand through the CLI, which asks the workers through the API: it needs
    // no configuration, only the API and a token.
    let (code, out, err) = env.cli(&["reconcile", "--json"]).await.expect("dfe");
    let answer: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(answer["state"], "done", "{answer}");
    assert!(
        answer["worker"].as_str().is_some_and(|w| w.contains(&env.id)),
        "a worker of this environment ran it: {answer}"
    );
    let report = &answer["report"];
    assert_eq!(code, 3, "the refusing server keeps it from saying all agree: {report}");
    assert_eq!((&report["orphans"], &report["stuck"]), (&json!([]), &json!([])), "{report}");
    let (status, last) = env.get("/api/v1/reconcile").await.expect("last");
    assert_eq!((status, &last["id"]), (200, &answer["id"]), "GET /api/v1/reconcile answers the last one: {last}");

    let job = env.submit("deprovision", json!({"instance-id": kept})).await.expect("202");
    assert_eq!(events.wait_final(&job, JOB_TIMEOUT).await.expect("final")["event"], "dfe.deprovisioned");
}
