//! A worker killed with SIGKILL right after any step of a job: another worker completes
//! the job, with exactly one of each resource and one final event.

use std::time::Duration;

use dfe_tests::probes::{exec, footprint};
use dfe_tests::{EventLog, Options, TestEnv};
use serde_json::{json, Value};

use crate::JOB_TIMEOUT;

/// Runs `body` as job `kind` on a worker that stops dead after `step`, SIGKILLs it there,
/// starts a healthy worker, and returns the final event.
pub(crate) async fn kill_after(
    env: &mut TestEnv,
    events: &EventLog,
    step: &str,
    kind: &str,
    body: Value,
) -> (String, Value) {
    let hold = [("DFE_TEST_HOLD_AFTER".to_owned(), step.to_owned())];
    env.start_worker_with(&hold).expect("doomed worker");
    let doomed = env.workers.len() - 1;
    env.workers[doomed].wait_for_line("consuming dfe.jobs", Duration::from_secs(30)).await.expect("ready");
    let job_id = env.submit(kind, body).await.expect("202");
    env.workers[doomed].wait_for_line("holding the job", JOB_TIMEOUT).await.expect("reached the step");
    env.workers[doomed].kill();
    env.start_worker_with(&[]).expect("rescuer");
    let done = events.wait_final(&job_id, JOB_TIMEOUT).await.expect("final");
    let (_, job) = env.get(&format!("/api/v1/ops/jobs/{job_id}")).await.expect("job");
    assert_eq!(job["attempts"], 2, "{kind} after {step}: the rescuer ran it again: {job}");
    // The rescuer is now the only worker; stop it so the next round starts clean.
    let rescuer = env.workers.len() - 1;
    env.workers[rescuer].kill();
    (job_id, done)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_after_any_step_of_any_job_leaves_the_job_to_another_worker() {
    let mut env = TestEnv::start_with(Options { workers: 0, ..Default::default() }).await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let mut jobs = Vec::new();

    // Provision, killed after each of its steps.
    let mut instances = Vec::new();
    for step in ["storage", "database", "instance"] {
        let instance = env.instance_id(&format!("kp-{step}"));
        let (job, done) =
            kill_after(&mut env, &events, step, "provision", json!({"owner-id": 1, "instance-id": instance})).await;
        assert_eq!(done["event"], "dfe.provisioned", "after {step}: {done}");
        assert_eq!(
            events.names_of_job(&job),
            ["dfe.storage.provisioned", "dfe.database.provisioned", "dfe.provisioned"],
            "after {step}"
        );
        let fp = footprint(&instance).await.expect("fp");
        assert!(fp.is_complete(), "after {step}: exactly one of each: {fp:?}");
        jobs.push(job);
        instances.push(instance);
    }

    // Export and import, killed after each of their steps.
    exec(&format!("dfe-{}", instances[0]), "echo kept > /storage/kept.txt").expect("file");
    let mut snapshot = String::new();
    for step in ["database", "storage"] {
        let (job, done) = kill_after(&mut env, &events, step, "export", json!({"instance-id": instances[0]})).await;
        assert_eq!(done["event"], "dfe.exported", "after {step}: {done}");
        snapshot = done["result"]["snapshot-id"].as_str().expect("id").to_owned();
        jobs.push(job);
    }
    for step in ["database", "storage"] {
        let target = env.instance_id(&format!("ki-{step}"));
        let body = json!({"owner-id": 1, "instance-id": target, "snapshot": snapshot});
        let (job, done) = kill_after(&mut env, &events, step, "import", body).await;
        assert_eq!(done["event"], "dfe.imported", "after {step}: {done}");
        assert_eq!(exec(&format!("dfe-{target}"), "cat /storage/kept.txt").expect("file"), "kept\n");
        assert!(footprint(&target).await.expect("fp").is_complete());
        jobs.push(job);
        instances.push(target);
    }

    // Deprovision, killed after each of its steps.
    for (step, instance) in ["instance", "database", "storage"].into_iter().zip(instances.clone()) {
        let (job, done) = kill_after(&mut env, &events, step, "deprovision", json!({"instance-id": instance})).await;
        assert_eq!(done["event"], "dfe.deprovisioned", "after {step}: {done}");
        assert!(footprint(&instance).await.expect("fp").is_empty(), "after {step}");
        jobs.push(job);
    }
    env.start_worker_with(&[]).expect("worker");
    for instance in &instances[3..] {
        let job = env.submit("deprovision", json!({"instance-id": instance})).await.expect("202");
        events.wait_final(&job, JOB_TIMEOUT).await.expect("final");
        jobs.push(job);
    }
    env.check_invariants(&events, &jobs, true).await.expect("invariants");
}
