//! Against the real PostgreSQL of `deploy/setup.sh`, in a database of its own: probe
//! results move a host between `pending`, `active` and `unreachable`, and each transition is
//! reported exactly once.

use dfe_registry::fleet::ProbeChange;

mod common;

use common::{drop_scratch, scratch};

#[tokio::test]
async fn three_failed_probes_make_a_host_unreachable_once_and_one_good_one_active_again() {
    let name = format!("dfe_registry_probes_{}", std::process::id());
    let registry = scratch(&name).await.registry;
    registry.sync_fleet(&[("h1".into(), "c1".into())], &[]).await.expect("sync");
    assert_eq!(registry.hosts().await.expect("hosts")[0].reachability, "pending");
    assert_eq!(registry.record_host_probe("h1", Ok(())).await.expect("probe"), ProbeChange::None);
    assert_eq!(registry.hosts().await.expect("hosts")[0].reachability, "active");
    let mut changes = Vec::new();
    for _ in 0..5 {
        changes.push(registry.record_host_probe("h1", Err("connection refused")).await.expect("probe"));
    }
    assert_eq!(
        changes,
        [ProbeChange::None, ProbeChange::None, ProbeChange::Unreachable, ProbeChange::None, ProbeChange::None]
    );
    let h = &registry.hosts().await.expect("hosts")[0];
    assert_eq!(
        (h.reachability.as_str(), h.failures, h.last_error.as_deref()),
        ("unreachable", 5, Some("connection refused"))
    );
    assert_eq!(registry.record_host_probe("h1", Ok(())).await.expect("probe"), ProbeChange::Recovered);
    assert_eq!(registry.record_host_probe("h1", Ok(())).await.expect("probe"), ProbeChange::None);
    let h = &registry.hosts().await.expect("hosts")[0];
    assert_eq!((h.reachability.as_str(), h.failures, h.last_error.as_deref()), ("active", 0, None));
    // A host that never answered goes from pending to unreachable, announced once too.
    registry.sync_fleet(&[("h2".into(), "c1".into())], &[]).await.expect("sync");
    let mut changes = Vec::new();
    for _ in 0..4 {
        changes.push(registry.record_host_probe("h2", Err("no route")).await.expect("probe"));
    }
    assert_eq!(changes.iter().filter(|c| **c == ProbeChange::Unreachable).count(), 1, "{changes:?}");
    // Probes taken by one worker per interval: a second worker finds nothing due.
    registry.sync_fleet(&[("h3".into(), "c1".into())], &[]).await.expect("sync");
    let (first, _) = registry.due_probes("w1", 60.0).await.expect("due");
    let (second, _) = registry.due_probes("w2", 60.0).await.expect("due");
    assert!(first.contains(&"h3".to_owned()) && second.is_empty(), "{first:?} / {second:?}");
    drop(registry);
    drop_scratch(&name).await;
}
