//! Provision: claim the instance id (recording where it goes and what it is made of), then
//! the database and, at the same time, storage → instance; then their events, in that
//! order (storage, database). On any failure (or the
//! deadline) everything is removed in reverse order, so a failed provision leaves no
//! container, volume, database or role behind. An abort (a panic) leaves the instance
//! `failed`, for a deprovision or the reconciler to finish.

use std::time::Instant;

use async_trait::async_trait;
use dfe_registry::Transition;
use dfe_shared::event::{names, Component};
use dfe_shared::job::{Job, JobKind};
use dfe_shared::placement;
use dfe_shared::records::InstanceRecord;
use serde_json::{json, Value};
use tracing::Instrument;

use super::{Env, Outcome};
use crate::error::{Error, Result};
use crate::events::{Events, JobMeta};
use crate::fault::hold_after;
use crate::manager::Plan;
use crate::runner::JobSpec;
use crate::timings::step_span;

/// The provision job kind.
pub struct Provision;

#[async_trait]
impl JobSpec<Env> for Provision {
    fn kind(&self) -> JobKind {
        JobKind::Provision
    }

    fn aborted(&self) -> Transition {
        Transition::Failed
    }

    async fn run(&self, env: &Env, job: &Job, meta: &JobMeta, events: &Events) -> Outcome {
        let Job::Provision(p) = job else { return super::wrong_kind("provision") };
        let owner = p.owner_id.as_text();
        let placed = env.manager.plan_new(placement::Request {
            guest_location: p.guest_location.as_ref().map(|g| g.as_str()),
            cluster_id: p.cluster_id.as_ref().map(|c| c.as_str()),
            offerings: p.offerings.as_ref(),
            owner_id: Some(&owner),
        });
        let claimed = match claim(env, job, meta, &placed).await {
            Ok(c) => c,
            Err(failed) => return failed,
        };
        match create(env, &claimed, placed.as_ref().ok(), meta, events, true).await {
            Ok(created) => Outcome::succeeded(created.result, created.transition),
            Err(failed) => failed,
        }
    }
}

/// Claims the job's instance for a job that creates it: `Ok` with the instance as claimed,
/// or the failure to end the job with (a refusal, or the placement that could not be made).
pub(super) async fn claim(
    env: &Env,
    job: &Job,
    meta: &JobMeta,
    placed: &Result<placement::Plan>,
) -> Result<InstanceRecord, Outcome> {
    match env.registry.claim(job, &meta.job_id, placed.as_ref().ok(), meta.instance.as_ref()).await {
        Ok(Ok(claimed)) => Ok(claimed.instance),
        Ok(Err(refusal)) => Err(Outcome::failed_with(refusal.code, refusal.message, Transition::None)),
        Err(e) => Err(match placed {
            // The claim needed a placement this job cannot have (an unknown provisioner,
            // offering or cluster): that is the failure to report.
            Err(placement_error) => Outcome::failed(placement_error, Transition::None),
            Ok(_) => Outcome::failed(&e.into(), Transition::None),
        }),
    }
}

/// A made instance: the job result and the transition that records it.
pub(super) struct Created {
    pub result: Value,
    pub transition: Transition,
}

/// Makes the three parts of a claimed instance (`announce`: publish the provision
/// sub-events). When its host turns out to be unreachable before any part was made there,
/// the instance is placed again by `placement` (once) and made on the new host. On failure
/// everything is removed again and the failure is returned.
pub(super) async fn create(
    env: &Env,
    record: &InstanceRecord,
    placement: Option<&placement::Plan>,
    meta: &JobMeta,
    events: &Events,
    announce: bool,
) -> Result<Created, Outcome> {
    let mut record = record.clone();
    let mut placed_again = false;
    loop {
        let plan = match env.manager.plan(&record, &meta.job_id, meta.attempt, None) {
            Ok(plan) => plan,
            Err(e) => return Err(Outcome::failed(&e, Transition::Released)),
        };
        let deadline = env.deadline();
        let mut on_host = false;
        let error =
            match tokio::time::timeout(deadline, steps(&record, &plan, meta, events, announce, &mut on_host)).await {
                Ok(Ok(created)) => return Ok(created),
                Ok(Err(e)) => e,
                Err(_) => Error::Timeout(deadline.as_secs()),
            };
        let lost = matches!(&error, Error::Docker { source, .. } if crate::error::is_unreachable(source));
        if let (true, false, false, Some(plan_again), Some(host)) =
            (lost, on_host, placed_again, placement, record.host_id.clone())
        {
            match env.registry.replace(&record.instance_id, &meta.job_id, plan_again, &host).await {
                Ok(Ok(moved)) => {
                    tracing::warn!(
                        job_id = %meta.job_id, instance = %record.instance_id, from = %host, to = ?moved.host_id,
                        error = %error.chain(), "the host is unreachable and nothing was made there yet: placed again"
                    );
                    record = moved;
                    placed_again = true;
                    continue;
                }
                Ok(Err(refusal)) => {
                    tracing::warn!(job_id = %meta.job_id, reason = %refusal.message, "no other host can take the instance")
                }
                Err(e) => tracing::warn!(job_id = %meta.job_id, error = %e, "placing the instance again failed"),
            }
        }
        tracing::warn!(job_id = %meta.job_id, instance = %record.instance_id, error = %error.chain(), "provision failed; rolling back");
        return Err(match rollback(&plan).await {
            Ok(()) => Outcome::failed(&error, Transition::Released),
            Err(r) => {
                // What could not be removed stays visible: the instance is marked failed, and a
                // deprovision (or the reconciler) finishes the removal.
                let message = format!("{}; rollback incomplete: {}", error.chain(), r.chain());
                Outcome {
                    transient: error.is_transient(),
                    ..Outcome::failed_with(error.code(), message, Transition::Failed)
                }
            }
        });
    }
}

/// The three steps, in two chains that run at once: the database (role and database on
/// its server), and the storage followed by the instance (which mounts the volume and is
/// handed the database's connection, known before the database exists). The instance's
/// first answer may come before its database is made; the job ends only when both chains
/// have. The sub-events go out in their fixed order once both are done. `on_host` turns
/// true once something exists on the instance's host.
async fn steps(
    record: &InstanceRecord,
    plan: &Plan<'_>,
    meta: &JobMeta,
    events: &Events,
    announce: bool,
    on_host: &mut bool,
) -> Result<Created> {
    let p = plan.provisioner;
    let ctx = &plan.ctx;
    let placement = json!({ "cluster-id": record.cluster_id, "host-id": record.host_id, "database-server": record.database_server });
    let db = p.db.connection(ctx)?;

    // The host's chain hands back what it made of the storage even when its instance step
    // fails, so that the failure still announces it.
    let host_chain = async {
        let t = Instant::now();
        let storage = match p.storage.provision(ctx).instrument(step_span("storage")).await {
            Ok(s) => s,
            Err(e) => return (None, Err(e)),
        };
        meta.timings.record("storage", t.elapsed());
        hold_after("storage").await;
        let t = Instant::now();
        let instance = p.instance.provision(ctx, &storage, &db).instrument(step_span("instance")).await;
        meta.timings.record("instance", t.elapsed());
        if let Some(health) = instance.as_ref().ok().and_then(|i| i.health_wait) {
            meta.timings.record("health", health);
        }
        if instance.is_ok() {
            hold_after("instance").await;
        }
        (Some(storage), instance)
    };
    let database_chain = async {
        let t = Instant::now();
        p.db.provision(ctx, &db).instrument(step_span("database")).await?;
        meta.timings.record("database", t.elapsed());
        hold_after("database").await;
        Ok::<_, Error>(())
    };
    let ((storage, instance), database) = tokio::join!(host_chain, database_chain);
    *on_host = storage.as_ref().is_some_and(|s| s.volume.is_some());

    // What was made is announced, in the fixed order, before the outcome.
    let db_result = json!({
        "database": db.database, "database-role": db.username, "database-host": db.host,
        "database-port": db.port, "database-server": db.server,
    });
    if announce {
        if let Some(storage) = &storage {
            let name = names::component(Component::Storage, JobKind::Provision);
            events.emit_step(meta, &name, json!({ "volume": storage.volume })).await?;
        }
        // The database is announced only after the storage, as the steps used to run.
        if database.is_ok() && storage.is_some() {
            let name = names::component(Component::Database, JobKind::Provision);
            events.emit_step(meta, &name, db_result.clone()).await?;
        }
    }
    // The host's error first: an unreachable host is what decides a placement again.
    let instance = instance?;
    database?;
    let storage = storage.unwrap_or_default();

    let result = with(
        &placement,
        with(
            &db_result,
            json!({
                "instance-id": ctx.instance_id,
                "guest-location": p.tag,
                "host": instance.host,
                "container": instance.container,
                "container-id": instance.container_id,
                "volume": storage.volume,
                "resource-uri": instance.resource_uri,
                // The choice of each offering recorded at the claim, so an export can
                // recreate the instance with the same ones.
                "offerings": record.offerings,
            }),
        ),
    );
    let transition = Transition::Provisioned { resource_uri: instance.resource_uri.clone(), resources: result.clone() };
    Ok(Created { result, transition })
}

/// `extra` with the members of `base` it does not have.
fn with(base: &Value, mut extra: Value) -> Value {
    if let (Some(e), Some(b)) = (extra.as_object_mut(), base.as_object()) {
        for (k, v) in b {
            e.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    extra
}

/// Removes all three parts by their deterministic names, in reverse order. The claim makes
/// them this job's, and a redelivered job cannot know which an earlier run made, so all are
/// removed; removing an absent part is a success.
pub(super) async fn rollback(plan: &Plan<'_>) -> Result<()> {
    remove_all(plan).instrument(step_span("rollback")).await
}

async fn remove_all(plan: &Plan<'_>) -> Result<()> {
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
