//! Provision: claim the instance id, then storage → database → instance, each followed by
//! its event. On any failure (or the deadline) everything is removed in reverse order, so a
//! failed provision leaves no container, volume, database or role behind.

use std::time::Instant;

use dfe_shared::event::{names, Component};
use dfe_shared::job::{JobKind, ProvisionJob};
use dfe_shared::registry::instances::InstanceChange;
use serde_json::{json, Value};

use super::{Env, Outcome};
use crate::error::{Error, Result};
use crate::events::JobMeta;
use crate::fault::hold_after;
use crate::manager::Plan;

pub(super) async fn run(env: &Env, job: &ProvisionJob, meta: &JobMeta) -> Outcome {
    match env.registry.claim_instance(&job.into(), &meta.job_id).await {
        Ok(true) => {}
        Ok(false) => {
            let e = Error::Conflict(format!("instance {} already exists", job.instance_id));
            return Outcome::failed_with("instance-exists", e.to_string(), InstanceChange::None);
        }
        Err(e) => return Outcome::failed(&e.into(), InstanceChange::None),
    }
    match create(env, job, meta, true).await {
        Ok(created) => Outcome::succeeded(created.result, created.change),
        Err(failed) => failed,
    }
}

/// A made instance: the job result and the registry change that records it.
pub(super) struct Created {
    pub result: Value,
    pub change: InstanceChange,
}

/// Makes the three parts of a claimed instance (`announce`: publish the provision
/// sub-events). On failure everything is removed again and the failure is returned.
pub(super) async fn create(env: &Env, job: &ProvisionJob, meta: &JobMeta, announce: bool) -> Result<Created, Outcome> {
    let plan = match env.manager.plan_provision(job, &meta.job_id) {
        Ok(plan) => plan,
        Err(e) => return Err(Outcome::failed(&e, InstanceChange::Released)),
    };
    let deadline = env.deadline();
    let error = match tokio::time::timeout(deadline, steps(env, job, &plan, meta, announce)).await {
        Ok(Ok(created)) => return Ok(created),
        Ok(Err(e)) => e,
        Err(_) => Error::Timeout(deadline.as_secs()),
    };
    tracing::warn!(job_id = %meta.job_id, instance = %job.instance_id, error = %error.chain(), "provision failed; rolling back");
    Err(match rollback(&plan).await {
        Ok(()) => Outcome::failed(&error, InstanceChange::Released),
        Err(r) => {
            // What could not be removed stays visible: the instance is marked failed, and a
            // deprovision (or the reconciler) finishes the removal.
            let message = format!("{}; rollback incomplete: {}", error.chain(), r.chain());
            Outcome {
                transient: error.is_transient(),
                ..Outcome::failed_with(error.code(), message, InstanceChange::Failed)
            }
        }
    })
}

async fn steps(env: &Env, job: &ProvisionJob, plan: &Plan<'_>, meta: &JobMeta, announce: bool) -> Result<Created> {
    let p = plan.provisioner;
    let ctx = &plan.ctx;

    let t = Instant::now();
    let storage = p.storage.provision(ctx).await?;
    meta.timings.record("storage", t.elapsed());
    if announce {
        let name = names::component(Component::Storage, JobKind::Provision);
        env.events.emit_step(meta, &name, json!({ "volume": storage.volume })).await?;
    }
    hold_after("storage").await;

    let t = Instant::now();
    let db = p.db.provision(ctx).await?;
    meta.timings.record("database", t.elapsed());
    let db_result = json!({
        "database": db.database, "database-role": db.username, "database-host": db.host,
        "database-port": db.port, "database-server": db.server,
    });
    if announce {
        let name = names::component(Component::Database, JobKind::Provision);
        env.events.emit_step(meta, &name, db_result.clone()).await?;
    }
    hold_after("database").await;

    let t = Instant::now();
    let instance = p.instance.provision(ctx, &storage, &db).await?;
    meta.timings.record("instance", t.elapsed());
    if let Some(health) = instance.health_wait {
        meta.timings.record("health", health);
    }
    hold_after("instance").await;

    let mut result = json!({
        "instance-id": ctx.instance_id,
        "guest-location": p.tag,
        "cluster-id": plan.cluster_id,
        "host": instance.host,
        "container": instance.container,
        "container-id": instance.container_id,
        "volume": storage.volume,
        "resource-uri": instance.resource_uri,
        // The effective choice of each offering (the job's, else the suggested item), so an
        // export can recreate the instance with the same ones.
        "offerings": chosen_offerings(&p.host, job),
    });
    if let (Some(r), Some(d)) = (result.as_object_mut(), db_result.as_object()) {
        r.extend(d.clone());
    }
    let change = InstanceChange::Provisioned {
        guest_location: p.tag.clone(),
        cluster_id: plan.cluster_id.clone(),
        host: instance.host.clone(),
        resource_uri: instance.resource_uri.clone(),
        resources: result.clone(),
    };
    Ok(Created { result, change })
}

/// Removes all three parts by their deterministic names, in reverse order. The claim makes
/// them this job's, and a redelivered job cannot know which an earlier run made, so all are
/// removed; removing an absent part is a success.
pub(super) async fn rollback(plan: &Plan<'_>) -> Result<()> {
    let p = plan.provisioner;
    let ctx = &plan.ctx;
    let mut first_error = None;
    if let Err(e) = p.instance.deprovision(ctx).await {
        first_error.get_or_insert(e);
    }
    if let Err(e) = p.db.deprovision(ctx).await {
        first_error.get_or_insert(e);
    }
    if let Err(e) = p.storage.deprovision(ctx).await {
        first_error.get_or_insert(e);
    }
    first_error.map_or(Ok(()), Err)
}

/// The item chosen for each offering of `host`: the job's choice, else the suggested one.
fn chosen_offerings(
    host: &dfe_shared::config::ProvisionerHost,
    job: &ProvisionJob,
) -> std::collections::BTreeMap<String, String> {
    host.offerings
        .iter()
        .filter_map(|(id, offering)| {
            let pick = job.offerings.as_ref().and_then(|o| o.get(id)).or(offering.suggested.as_ref())?;
            Some((id.clone(), pick.clone()))
        })
        .collect()
}
