//! Deprovision: instance → database → storage, the reverse of provision; each removal of
//! something absent succeeds, so a redelivered deprovision finishes what an earlier run
//! began. A failure or an abort leaves the instance `failed`; deprovisioning it again
//! finishes the removal.

use std::time::Instant;

use async_trait::async_trait;
use dfe_registry::Transition;
use dfe_shared::event::{names, Component};
use dfe_shared::job::{Job, JobKind};
use serde_json::json;
use tracing::Instrument;

use super::{Env, Outcome};
use crate::error::Result;
use crate::events::{Events, JobMeta};
use crate::fault::hold_after;
use crate::manager::Plan;
use crate::runner::JobSpec;
use crate::timings::step_span;

/// The deprovision job kind.
pub struct Deprovision;

#[async_trait]
impl JobSpec<Env> for Deprovision {
    fn kind(&self) -> JobKind {
        JobKind::Deprovision
    }

    fn aborted(&self) -> Transition {
        Transition::Failed
    }

    async fn run(&self, env: &Env, job: &Job, meta: &JobMeta, events: &Events) -> Outcome {
        let Job::Deprovision(d) = job else { return super::wrong_kind("deprovision") };
        let record = match env.registry.claim(job, &meta.job_id, None, meta.instance.as_ref()).await {
            Ok(Ok(claimed)) => claimed.instance,
            Ok(Err(refusal)) => return Outcome::failed_with(refusal.code, refusal.message, Transition::None),
            Err(e) => return Outcome::failed(&e.into(), Transition::None),
        };
        let cluster = d.cluster_id.as_ref().map(|c| c.as_str());
        let plan = match env.manager.plan(&record, &meta.job_id, meta.attempt, cluster) {
            Ok(plan) => plan,
            Err(e) => return Outcome::failed(&e, Transition::Failed),
        };
        let deadline = env.deadline();
        let keep_database = d.keep_database.unwrap_or(false);
        match tokio::time::timeout(deadline, steps(&plan, meta, events, keep_database)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome::failed(&e, Transition::Failed),
            Err(_) => Outcome::failed(&crate::error::Error::Timeout(deadline.as_secs()), Transition::Failed),
        }
    }
}

async fn steps(plan: &Plan<'_>, meta: &JobMeta, events: &Events, keep_database: bool) -> Result<Outcome> {
    let p = plan.provisioner;
    let ctx = &plan.ctx;

    let t = Instant::now();
    p.instance.deprovision(ctx).instrument(step_span("instance")).await?;
    meta.timings.record("instance", t.elapsed());
    hold_after("instance").await;

    let t = Instant::now();
    if !keep_database {
        p.db.deprovision(ctx).instrument(step_span("database")).await?;
    }
    meta.timings.record("database", t.elapsed());
    let name = names::component(Component::Database, JobKind::Deprovision);
    events.emit(meta, &name, json!({ "database": ctx.names.database, "kept": keep_database }), None).await?;
    hold_after("database").await;

    let t = Instant::now();
    p.storage.deprovision(ctx).instrument(step_span("storage")).await?;
    meta.timings.record("storage", t.elapsed());
    let name = names::component(Component::Storage, JobKind::Deprovision);
    events.emit(meta, &name, json!({ "volume": ctx.names.volume }), None).await?;
    hold_after("storage").await;

    let result = json!({
        "instance-id": ctx.instance_id,
        "container": ctx.names.container,
        "volume": ctx.names.volume,
        "database": ctx.names.database,
        "database-kept": keep_database,
        "host-id": ctx.docker.as_ref().map(|h| h.id.clone()),
        "database-server": ctx.database.as_ref().map(|s| s.id.clone()),
    });
    Ok(Outcome::succeeded(result, Transition::Deprovisioned))
}
