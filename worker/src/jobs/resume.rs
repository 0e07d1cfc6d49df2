//! Resume: the database role's logins allowed again, then the container started; the job
//! ends only once the instance's `resource-uri` answers (`dfe.database.resumed`, then
//! `dfe.resumed`, with the address, which may have changed). Resuming a running instance
//! finds everything done. An abort leaves the instance suspended (or part-way resumed: a
//! resume run again finishes it).

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

/// The resume job kind.
pub struct Resume;

#[async_trait]
impl JobSpec<Env> for Resume {
    fn kind(&self) -> JobKind {
        JobKind::Resume
    }

    fn aborted(&self) -> Transition {
        Transition::None
    }

    async fn run(&self, env: &Env, job: &Job, meta: &JobMeta, events: &Events) -> Outcome {
        if !matches!(job, Job::Resume(_)) {
            return super::wrong_kind("resume");
        }
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
            let t = Instant::now();
            p.db.resume(ctx).await?;
            meta.timings.record("database", t.elapsed());
            let name = names::component(Component::Database, JobKind::Resume);
            events.emit(meta, &name, json!({ "database": ctx.names.database }), None).await?;
            hold_after("database").await;
            let t = Instant::now();
            let instance = p.instance.resume(ctx).await?;
            meta.timings.record("instance", t.elapsed());
            if let Some(health) = instance.health_wait {
                meta.timings.record("health", health);
            }
            hold_after("instance").await;
            Ok::<_, Error>(instance)
        };
        let deadline = env.deadline();
        match tokio::time::timeout(deadline, steps).await {
            Ok(Ok(instance)) => {
                let resource_uri = instance.resource_uri.or(record.resource_uri.clone());
                Outcome::succeeded(
                    json!({
                        "instance-id": ctx.instance_id,
                        "container": ctx.names.container,
                        "database": ctx.names.database,
                        "host-id": record.host_id,
                        "resource-uri": resource_uri,
                    }),
                    Transition::Resumed { resource_uri },
                )
            }
            Ok(Err(e)) => Outcome::failed(&e, Transition::None),
            Err(_) => Outcome::failed(&Error::Timeout(deadline.as_secs()), Transition::None),
        }
    }
}
