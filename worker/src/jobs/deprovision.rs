//! Deprovision: instance → database → storage, the reverse of provision; each removal of
//! something absent succeeds, so a redelivered deprovision finishes what an earlier run began.

use std::time::Instant;

use dfe_shared::event::{names, Component};
use dfe_shared::job::{DeprovisionJob, JobKind};
use dfe_shared::registry::instances::InstanceChange;
use dfe_shared::registry::InstanceState;
use serde_json::json;

use super::{Env, Outcome};
use crate::error::{Error, Result};
use crate::events::JobMeta;
use crate::fault::hold_after;
use crate::manager::Plan;

pub(super) async fn run(env: &Env, job: &DeprovisionJob, meta: &JobMeta) -> Outcome {
    let id = job.instance_id.as_str();
    let record = match env.registry.instance(id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Outcome::failed(&Error::NotFound(format!("instance {id} does not exist")), InstanceChange::None)
        }
        Err(e) => return Outcome::failed(&e.into(), InstanceChange::None),
    };
    match record.state {
        InstanceState::Provisioned | InstanceState::Failed => {}
        // A run of this same job that died half-way: go on.
        InstanceState::Deprovisioning if record.job_id == meta.job_id => {}
        InstanceState::Deprovisioned => {
            return Outcome::failed(
                &Error::NotFound(format!("instance {id} was already deprovisioned")),
                InstanceChange::None,
            )
        }
        state => {
            let e = Error::Conflict(format!("instance {id} is mid-operation ({state:?})"));
            return Outcome::failed_with("instance-busy", e.to_string(), InstanceChange::None);
        }
    }
    let plan = match env.manager.plan_existing(&record, &meta.job_id, job.cluster_id.as_ref().map(|c| c.as_str())) {
        Ok(plan) => plan,
        Err(e) => return Outcome::failed(&e, InstanceChange::None),
    };
    if let Err(e) = env.registry.begin_deprovision(id, &meta.job_id).await {
        return Outcome::failed(&e.into(), InstanceChange::None);
    }
    let deadline = env.deadline();
    let keep_database = job.keep_database.unwrap_or(false);
    match tokio::time::timeout(deadline, steps(env, &plan, meta, keep_database)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome::failed(&e, InstanceChange::Failed),
        Err(_) => Outcome::failed(&Error::Timeout(deadline.as_secs()), InstanceChange::Failed),
    }
}

async fn steps(env: &Env, plan: &Plan<'_>, meta: &JobMeta, keep_database: bool) -> Result<Outcome> {
    let p = plan.provisioner;
    let ctx = &plan.ctx;

    let t = Instant::now();
    p.instance.deprovision(ctx).await?;
    meta.timings.record("instance", t.elapsed());
    hold_after("instance").await;

    let t = Instant::now();
    if !keep_database {
        p.db.deprovision(ctx).await?;
    }
    meta.timings.record("database", t.elapsed());
    env.events
        .emit(
            meta,
            &names::component(Component::Database, JobKind::Deprovision),
            json!({ "database": ctx.names.database, "kept": keep_database }),
            None,
        )
        .await?;
    hold_after("database").await;

    let t = Instant::now();
    p.storage.deprovision(ctx).await?;
    meta.timings.record("storage", t.elapsed());
    env.events
        .emit(
            meta,
            &names::component(Component::Storage, JobKind::Deprovision),
            json!({ "volume": ctx.names.volume }),
            None,
        )
        .await?;
    hold_after("storage").await;

    let result = json!({
        "instance-id": ctx.instance_id,
        "container": ctx.names.container,
        "volume": ctx.names.volume,
        "database": ctx.names.database,
        "database-kept": keep_database,
    });
    Ok(Outcome::succeeded(result, InstanceChange::Deprovisioned))
}
