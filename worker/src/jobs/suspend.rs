//! Suspend: the instance's container stopped, its database role's logins refused (and its
//! sessions ended), nothing removed; `dfe.database.suspended`, then `dfe.suspended`.
//! Suspending a suspended instance finds everything done. An abort leaves the instance as
//! it is (running, or part-way suspended: a suspend or a resume run again finishes it).

use std::time::Instant;

use async_trait::async_trait;
use dfe_registry::Transition;
use dfe_shared::event::{names, Component};
use dfe_shared::job::{Job, JobKind};
use serde_json::json;

use super::{Env, Outcome};
use crate::error::Error;
use crate::events::{Events, JobMeta};
use crate::fault::hold_after;
use crate::runner::JobSpec;

/// The suspend job kind.
pub struct Suspend;

#[async_trait]
impl JobSpec<Env> for Suspend {
    fn kind(&self) -> JobKind {
        JobKind::Suspend
    }

    fn aborted(&self) -> Transition {
        Transition::None
    }

    async fn run(&self, env: &Env, job: &Job, meta: &JobMeta, events: &Events) -> Outcome {
        let Job::Suspend(s) = job else { return super::wrong_kind("suspend") };
        let record = match env.registry.claim(job, &meta.job_id, None, meta.instance.as_ref()).await {
            Ok(Ok(claimed)) => claimed.instance,
            Ok(Err(refusal)) => return Outcome::failed_with(refusal.code, refusal.message, Transition::None),
            Err(e) => return Outcome::failed(&e.into(), Transition::None),
        };
        let plan = match env.manager.plan(&record, &meta.job_id, meta.attempt, None) {
            Ok(plan) => plan,
            Err(e) => return Outcome::failed(&e, Transition::None),
        };
        let (p, ctx) = (plan.provisioner, &plan.ctx);
        let steps = async {
            // The instance first: nothing is served while the database still lets it in.
            let t = Instant::now();
            p.instance.suspend(ctx).await?;
            meta.timings.record("instance", t.elapsed());
            hold_after("instance").await;
            let t = Instant::now();
            p.db.suspend(ctx).await?;
            meta.timings.record("database", t.elapsed());
            let name = names::component(Component::Database, JobKind::Suspend);
            events.emit(meta, &name, json!({ "database": ctx.names.database }), None).await?;
            hold_after("database").await;
            Ok::<_, Error>(())
        };
        let deadline = env.deadline();
        match tokio::time::timeout(deadline, steps).await {
            Ok(Ok(())) => Outcome::succeeded(
                json!({
                    "instance-id": ctx.instance_id,
                    "container": ctx.names.container,
                    "database": ctx.names.database,
                    "host-id": record.host_id,
                    "reason": s.reason,
                }),
                Transition::Suspended,
            ),
            Ok(Err(e)) => Outcome::failed(&e, Transition::None),
            Err(_) => Outcome::failed(&Error::Timeout(deadline.as_secs()), Transition::None),
        }
    }
}
