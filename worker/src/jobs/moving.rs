//! Move: a running instance to another Docker host (and, with `database-server`, its
//! database to another server), under the same instance id.
//!
//! The target is chosen first (the named host, or the cluster's policy among its other
//! active hosts) without taking its place. Then the old container is stopped (from here
//! the instance does not answer), its storage (and a moving database) exported into the
//! job's work directory, and the parts made on the target: the volume; the database, made
//! fresh on its new server and restored (or, staying where it is, left as it is, the new
//! container getting the connection the old one had); the container, which must answer;
//! then the storage, loaded through it. Then the record is switched to the target in one
//! registry transaction that checks the target's limits again, and only then are the old
//! parts removed.
//!
//! Any failure before the switch (the deadline included) removes what was made on the
//! target and starts the old container again: the instance is left where it was. A
//! redelivery after the switch finds `moved-by` in the record and only removes the old
//! parts (from `moved-from`). An abort leaves the record as it was (the switch is atomic);
//! a redelivery starts over, and the old container is started again on its failure.

use std::path::Path;
use std::time::Instant;

use async_trait::async_trait;
use dfe_registry::{Switch, Transition};
use dfe_shared::event::{names, Component};
use dfe_shared::job::{Job, JobKind, MoveJob};
use dfe_shared::placement;
use dfe_shared::records::InstanceRecord;
use serde_json::{json, Value};
use tracing::Instrument;

use super::{Env, Outcome};
use crate::error::{Error, Result};
use crate::events::{Events, JobMeta};
use crate::fault::hold_after;
use crate::manager::Plan;
use crate::provisioners::{DatabaseInfo, InstanceInfo, StorageInfo};
use crate::runner::JobSpec;
use crate::timings::step_span;

/// The move job kind.
pub struct Move;

#[async_trait]
impl JobSpec<Env> for Move {
    fn kind(&self) -> JobKind {
        JobKind::Move
    }

    fn aborted(&self) -> Transition {
        // The record switches atomically or not at all; the instance stays `provisioned`.
        Transition::None
    }

    async fn run(&self, env: &Env, job: &Job, meta: &JobMeta, events: &Events) -> Outcome {
        let Job::Move(m) = job else { return super::wrong_kind("move") };
        let record = match env.registry.claim(job, &meta.job_id, None, meta.instance.as_ref()).await {
            Ok(Ok(claimed)) => claimed.instance,
            Ok(Err(refusal)) => return Outcome::failed_with(refusal.code, refusal.message, Transition::None),
            Err(e) => return Outcome::failed(&e.into(), Transition::None),
        };
        if let Some(from) = moved_from(&record, &meta.job_id) {
            tracing::info!(job_id = %meta.job_id, "the record was switched by an earlier run: removing the old parts");
            return match env.manager.plan(&from, &meta.job_id, meta.attempt, None) {
                Ok(old) => finished(&old, &record, record.database_server != from.database_server, None).await,
                Err(e) => Outcome::failed(&e, Transition::None),
            };
        }
        let target = match target(env, m, &record).await {
            Ok(Ok(t)) => t,
            Ok(Err(refusal)) => return refusal,
            Err(e) => return Outcome::failed(&e, Transition::None),
        };
        let plans = env
            .manager
            .plan(&record, &meta.job_id, meta.attempt, None)
            .and_then(|old| Ok((old, env.manager.plan(&target.record, &meta.job_id, meta.attempt, None)?)));
        let (old, new) = match plans {
            Ok(p) => p,
            Err(e) => return Outcome::failed(&e, Transition::None),
        };
        let work = env.config.snapshots.work_dir().join(format!(".work-{}", meta.job_id));
        let outcome = relocate(env, &record, &target, &old, &new, &work, meta, events).await;
        let _ = tokio::fs::remove_dir_all(&work).await;
        outcome
    }
}

/// Where the move goes.
struct Target {
    /// The instance's record as it will be: the new host and cluster (and server).
    record: InstanceRecord,
    /// The placement plan narrowed to the chosen host, for the switch's check.
    plan: placement::Plan,
    /// Whether the database goes to another server.
    moves_database: bool,
}

/// The record of the instance before a switch that job `job_id` already made.
fn moved_from(record: &InstanceRecord, job_id: &str) -> Option<InstanceRecord> {
    let r = &record.resources;
    if r.get("moved-by").and_then(Value::as_str) != Some(job_id) {
        return None;
    }
    let from = r.get("moved-from")?;
    let text = |k: &str| from.get(k).and_then(Value::as_str).map(str::to_owned);
    Some(InstanceRecord {
        cluster_id: text("cluster-id"),
        host_id: text("host-id"),
        database_server: text("database-server"),
        ..record.clone()
    })
}

/// Chooses the target: the named host (of the named cluster, or the instance's own), or the
/// cluster's choice among its hosts other than the current one. `Ok(Err)`: the job's
/// refusal (nowhere to go).
async fn target(env: &Env, m: &MoveJob, record: &InstanceRecord) -> Result<Result<Target, Outcome>> {
    let id = &record.instance_id;
    let offerings = Some(&record.offerings).filter(|o| !o.is_empty());
    let cluster_id = m.cluster_id.as_ref().map(|c| c.as_str()).or(record.cluster_id.as_deref());
    let request =
        placement::Request { guest_location: Some(&record.guest_location), cluster_id, offerings, owner_id: None };
    let mut plan = placement::plan(&env.config, request).map_err(|e| Error::Invalid(e.to_string()))?;
    let servers: Vec<String> = std::mem::take(&mut plan.servers).into_iter().map(|s| s.server_id).collect();
    let Some(cluster) = plan.cluster.as_mut() else {
        return Err(Error::Invalid(format!("instance {id} lives on no Docker host: there is nothing to move")));
    };
    if let Some(host) = &m.host_id {
        if Some(host.as_str()) == record.host_id.as_deref() {
            return Err(Error::Invalid(format!("instance {id} is on host {host} already")));
        }
        cluster.hosts.retain(|h| h.host_id == host.as_str());
        if cluster.hosts.is_empty() {
            return Err(Error::Invalid(format!("host-id {host} is not a host of cluster {}", cluster.cluster_id)));
        }
    }
    let database_server = match &m.database_server {
        None => record.database_server.clone(),
        Some(s) if servers.iter().any(|k| k == s.as_str()) => Some(s.as_str().to_owned()),
        Some(s) => {
            return Err(Error::Invalid(format!(
                "database-server {s} is not one of provisioner {}'s servers ({})",
                record.guest_location,
                servers.join(", ")
            )))
        }
    };
    let placed = match env.registry.move_target(&plan, record.host_id.as_deref()).await? {
        Ok(p) => p,
        Err(refusal) => return Ok(Err(Outcome::failed_with(refusal.code, refusal.message, Transition::None))),
    };
    if let (Some(cluster), Some(host)) = (plan.cluster.as_mut(), &placed.host_id) {
        cluster.hosts.retain(|h| &h.host_id == host);
    }
    let moves_database = database_server != record.database_server;
    let record =
        InstanceRecord { cluster_id: placed.cluster_id, host_id: placed.host_id, database_server, ..record.clone() };
    Ok(Ok(Target { record, plan, moves_database }))
}

/// What a move has made or changed so far, for its undo.
#[derive(Default)]
struct Progress {
    /// The old container was stopped.
    stopped: bool,
    /// A request that makes something went to the target: its removal is attempted.
    touched: bool,
    /// Something surely exists on the target (a step there succeeded): a removal that
    /// fails leaves it behind, and the failure says so.
    made: bool,
}

/// What the target's parts came to.
struct Made {
    storage: StorageInfo,
    database: DatabaseInfo,
    instance: InstanceInfo,
    /// From stopping the old container to the new one answering.
    unavailable: std::time::Duration,
}

#[allow(clippy::too_many_arguments)]
async fn relocate(
    env: &Env,
    record: &InstanceRecord,
    target: &Target,
    old: &Plan<'_>,
    new: &Plan<'_>,
    work: &Path,
    meta: &JobMeta,
    events: &Events,
) -> Outcome {
    let mut progress = Progress::default();
    let deadline = env.deadline();
    let copied =
        tokio::time::timeout(deadline, copy(old, new, target.moves_database, work, meta, events, &mut progress))
            .await
            .unwrap_or(Err(Error::Timeout(deadline.as_secs())));
    let made = match copied {
        Ok(made) => made,
        Err(e) => return undone(env, old, new, target.moves_database, &progress, e).await,
    };
    let resources = resources(record, &target.record, &made, &meta.job_id);
    let switch = Switch {
        instance_id: &record.instance_id,
        job_id: &meta.job_id,
        from_host: record.host_id.as_deref(),
        plan: &target.plan,
        database_server: target.record.database_server.as_deref(),
        resource_uri: made.instance.resource_uri.as_deref(),
        resources: &resources,
    };
    match env.registry.switch_host(&switch).await {
        Ok(Ok(_)) => {}
        Ok(Err(refusal)) => {
            let e = Error::Conflict(format!("{} ({})", refusal.message, refusal.code));
            return undone(env, old, new, target.moves_database, &progress, e).await;
        }
        Err(e) => {
            // A commit whose answer was lost may have switched after all: the record says.
            let switched = env.registry.instance(&record.instance_id).await.ok().flatten();
            if switched.is_none_or(|r| moved_from(&r, &meta.job_id).is_none()) {
                return undone(env, old, new, target.moves_database, &progress, e.into()).await;
            }
        }
    }
    meta.timings.record("unavailable", made.unavailable);
    hold_after("switch").await;
    finished(old, &target.record, target.moves_database, Some((&made, resources))).await
}

/// Stops the old container, exports what moves, and makes the parts on the target.
async fn copy(
    old: &Plan<'_>,
    new: &Plan<'_>,
    moves_database: bool,
    work: &Path,
    meta: &JobMeta,
    events: &Events,
    progress: &mut Progress,
) -> Result<Made> {
    let (from, to) = (old.provisioner, new.provisioner);
    tokio::fs::create_dir_all(work).await.map_err(Error::io(format!("creating {}", work.display())))?;
    // Read before the stop: a database that stays is handed to the new container as is.
    let kept = if moves_database { None } else { from.instance.connection(&old.ctx).await? };
    from.instance.suspend(&old.ctx).instrument(step_span("stop")).await?;
    progress.stopped = true;
    let stopped = Instant::now();

    // Everything is read from the old parts first, while nothing exists on the target.
    let t = Instant::now();
    let tar = work.join("storage.tar");
    from.storage.export(&old.ctx, &tar).instrument(step_span("storage")).await?;
    let sql = work.join("database.sql");
    if moves_database {
        from.db.export(&old.ctx, &sql).instrument(step_span("database")).await?;
    }
    progress.touched = true;
    let storage = to.storage.provision(&new.ctx).instrument(step_span("storage")).await?;
    progress.made = true;
    meta.timings.record("storage", t.elapsed());

    let t = Instant::now();
    // `kept` is the database that stays; otherwise one is made on the target's server and,
    // when it moves, restored (of an instance that keeps no connection, noop, nothing is).
    let database = match kept {
        Some(info) => info,
        None => {
            let info = to.db.connection(&new.ctx)?;
            to.db.provision(&new.ctx, &info).instrument(step_span("database")).await?;
            if moves_database {
                to.db.import(&new.ctx, &sql).instrument(step_span("database")).await?;
                if let Err(e) = to.db.commit_import(&new.ctx).await {
                    tracing::warn!(error = %e.chain(), "dropping the fresh database's pre-import copy failed");
                }
            }
            info
        }
    };
    meta.timings.record("database", t.elapsed());
    let result = json!({
        "database": database.database, "database-server": database.server, "moved": moves_database,
    });
    events.emit_step(meta, &names::component(Component::Database, JobKind::Move), result).await?;
    hold_after("database").await;

    // The storage is loaded through the new container (which mounts the volume), once it
    // runs; nothing points at it before the switch, so it answers nobody half-loaded.
    let t = Instant::now();
    let instance = to.instance.provision(&new.ctx, &storage, &database).instrument(step_span("instance")).await?;
    meta.timings.record("instance", t.elapsed());
    if let Some(health) = instance.health_wait {
        meta.timings.record("health", health);
    }
    hold_after("instance").await;
    let t = Instant::now();
    to.storage.import(&new.ctx, &tar, true, &work.join("storage-before.tar")).instrument(step_span("storage")).await?;
    meta.timings.record("storage", t.elapsed());
    let result = json!({
        "volume": storage.volume, "from-host-id": old.ctx.docker.as_ref().map(|h| h.id.clone()),
        "host-id": new.ctx.docker.as_ref().map(|h| h.id.clone()),
    });
    events.emit_step(meta, &names::component(Component::Storage, JobKind::Move), result).await?;
    hold_after("storage").await;
    Ok(Made { storage, database, instance, unavailable: stopped.elapsed() })
}

/// The failure of a move before its switch: what it made on the target is removed and the
/// old container started again (its new address recorded).
async fn undone(
    env: &Env,
    old: &Plan<'_>,
    new: &Plan<'_>,
    moves_database: bool,
    progress: &Progress,
    e: Error,
) -> Outcome {
    tracing::warn!(instance = %old.ctx.instance_id, error = %e.chain(), "move failed; putting the instance back");
    let mut left = Vec::new();
    if progress.touched {
        let to = new.provisioner;
        let mut removals = vec![("container", to.instance.deprovision(&new.ctx).await)];
        if moves_database {
            removals.push(("database", to.db.deprovision(&new.ctx).await));
        }
        removals.push(("volume", to.storage.deprovision(&new.ctx).await));
        for (part, removed) in removals {
            match removed {
                Ok(()) => {}
                Err(r) if progress.made => left.push(format!("{part} on the target: {}", r.chain())),
                // Nothing was made there (the target refused the first request).
                Err(r) => {
                    tracing::debug!(part, error = %r.chain(), "removing from the target failed; nothing was made")
                }
            }
        }
    }
    if progress.stopped {
        match old.provisioner.instance.resume(&old.ctx).await {
            Ok(info) => {
                if let Some(uri) = &info.resource_uri {
                    if let Err(r) = env.registry.set_address(old.ctx.instance_id.as_str(), uri).await {
                        left.push(format!("recording the old container's address {uri}: {r}"));
                    }
                }
            }
            Err(r) => left.push(format!("starting the old container again: {}", r.chain())),
        }
    }
    let message = if left.is_empty() {
        format!("{}; the instance is running where it was", e.chain())
    } else {
        format!("{}; putting it back was incomplete: {}", e.chain(), left.join("; "))
    };
    Outcome {
        transient: e.is_transient() && left.is_empty(),
        ..Outcome::failed_with(e.code(), message, Transition::None)
    }
}

/// After the switch: the old parts are removed (the database only when it moved), and the
/// move succeeds. A part that could not be removed is named in the result, not a failure:
/// the instance runs on its new host.
async fn finished(old: &Plan<'_>, now: &InstanceRecord, moves_database: bool, made: Option<(&Made, Value)>) -> Outcome {
    let from = old.provisioner;
    let mut left = Vec::new();
    if let Err(e) = from.instance.deprovision(&old.ctx).instrument(step_span("cleanup")).await {
        left.push(format!("container {}: {}", old.ctx.names.container, e.chain()));
    }
    if let Err(e) = from.storage.deprovision(&old.ctx).instrument(step_span("cleanup")).await {
        left.push(format!("volume {}: {}", old.ctx.names.volume, e.chain()));
    }
    if moves_database {
        if let Err(e) = from.db.deprovision(&old.ctx).instrument(step_span("cleanup")).await {
            left.push(format!("database {}: {}", old.ctx.names.database, e.chain()));
        }
    }
    if !left.is_empty() {
        tracing::warn!(instance = %now.instance_id, left = ?left, "the move succeeded but old parts were left behind");
    }
    let unavailable = made.as_ref().map(|(m, _)| m.unavailable.as_millis() as u64);
    let mut result = match made {
        Some((_, resources)) => resources,
        None => now.resources.clone(),
    };
    if let Some(r) = result.as_object_mut() {
        r.remove("moved-by");
        r.insert("left-behind".into(), json!(left));
        r.insert("unavailable-ms".into(), json!(unavailable));
    }
    Outcome::succeeded(result, Transition::None)
}

/// The record's `resources` after the move, with where it came from (for a redelivery).
fn resources(before: &InstanceRecord, after: &InstanceRecord, made: &Made, job_id: &str) -> Value {
    json!({
        "instance-id": after.instance_id,
        "guest-location": after.guest_location,
        "cluster-id": after.cluster_id,
        "host-id": after.host_id,
        "host": made.instance.host,
        "container": made.instance.container,
        "container-id": made.instance.container_id,
        "volume": made.storage.volume,
        "resource-uri": made.instance.resource_uri,
        "database": made.database.database,
        "database-role": made.database.username,
        "database-host": made.database.host,
        "database-port": made.database.port,
        "database-server": after.database_server,
        "offerings": after.offerings,
        "moved-from": {
            "cluster-id": before.cluster_id,
            "host-id": before.host_id,
            "database-server": before.database_server,
        },
        "moved-by": job_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_job_that_switched_a_record_finds_where_it_came_from() {
        let record: InstanceRecord = serde_json::from_value(json!({
            "instance-id": "acme", "owner-id": 1, "state": "provisioned", "guest-location": "docker",
            "cluster-id": "pair", "host-id": "b", "database-server": "fleet", "job-id": "p1",
            "created-at": "2026-12-01T00:00:00Z", "updated-at": "2026-12-01T00:00:00Z",
            "resources": {"moved-by": "m1", "moved-from": {"cluster-id": "pair", "host-id": "a", "database-server": "local"}},
        }))
        .expect("record");
        let from = moved_from(&record, "m1").expect("switched by m1");
        assert_eq!(
            (from.host_id.as_deref(), from.database_server.as_deref(), from.cluster_id.as_deref()),
            (Some("a"), Some("local"), Some("pair"))
        );
        assert!(moved_from(&record, "m2").is_none(), "another move starts afresh");
    }
}
