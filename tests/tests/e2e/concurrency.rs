//! Two workers, twenty concurrent provisions of distinct instances: all succeed, then all
//! deprovision cleanly.

use dfe_tests::probes::footprint;
use dfe_tests::TestEnv;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_provisions_on_two_workers_all_succeed_and_all_deprovision() {
    let env = TestEnv::start().await.expect("environment");
    let events = env.events().await.expect("subscribe");
    let instances: Vec<String> = (0..20).map(|i| env.instance_id(&format!("c{i}"))).collect();
    let timeout = std::time::Duration::from_secs(240);

    let jobs =
        env.submit_all("provision", &instances, |i| json!({"owner-id": 7, "instance-id": i})).await.expect("202");
    for job in &jobs {
        let done = events.wait_final(job, timeout).await.expect("final");
        assert_eq!(done["event"], "dfe.provisioned", "{done}");
    }
    let workers: std::collections::HashSet<String> = {
        let mut w = std::collections::HashSet::new();
        for job in &jobs {
            let (_, j) = env.get(&format!("/api/v1/ops/jobs/{job}")).await.expect("job");
            assert_eq!(j["state"], "succeeded");
            w.insert(j["attempts"].to_string());
        }
        w
    };
    assert_eq!(workers.len(), 1, "every job ran once");
    for i in &instances {
        let fp = footprint(i).await.expect("footprint");
        assert!(fp.is_complete(), "{i}: {fp:?}");
    }
    let logs = env.all_logs();
    for w in &env.workers {
        assert!(w.log().contains("job succeeded"), "both workers took part:\n{logs}");
    }

    let submitted = env.submit_all("deprovision", &instances, |i| json!({"instance-id": i})).await.expect("202");
    for job in submitted {
        let done = events.wait_final(&job, timeout).await.expect("final");
        assert_eq!(done["event"], "dfe.deprovisioned", "{done}");
    }
    for i in &instances {
        let fp = footprint(i).await.expect("footprint");
        assert!(fp.is_empty(), "{i}: {fp:?}");
    }
}
