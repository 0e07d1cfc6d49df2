//! Import: restore a snapshot into an instance, provisioning it first when it does not
//! exist. The archive is verified completely before anything is touched; the database is
//! restored beside the current one and swapped in; the storage is saved before it is
//! loaded. A failure puts both back (or, when the import created the instance, removes it),
//! so the target is left as it was before the import began.

use std::path::Path;

use dfe_shared::event::{names, Component};
use dfe_shared::ids::Tag;
use dfe_shared::job::{ImportJob, JobKind, ProvisionJob};
use dfe_shared::registry::instances::InstanceChange;
use dfe_shared::registry::{InstanceRecord, InstanceState};
use serde_json::json;

use super::provision::{self, Created};
use super::{Env, Outcome};
use crate::error::{Error, Result};
use crate::events::JobMeta;
use crate::fault::hold_after;
use crate::manager::Plan;
use crate::snapshot::{self, Verified};

pub(super) async fn run(env: &Env, job: &ImportJob, meta: &JobMeta) -> Outcome {
    let id = job.instance_id.as_str();
    let record = match env.registry.instance(id).await {
        Ok(r) => r,
        Err(e) => return Outcome::failed(&e.into(), InstanceChange::None),
    };
    // The API claims a new instance's id at submission; a refusal before the instance is
    // made must hand that claim back.
    let claimed_by_us =
        record.as_ref().is_some_and(|r| r.state == InstanceState::Provisioning && r.job_id == meta.job_id);
    let refused =
        |e: &Error| Outcome::failed(e, if claimed_by_us { InstanceChange::Released } else { InstanceChange::None });

    let Some((_, archive)) = env.config.snapshots.locate(job.snapshot.as_str()) else {
        return refused(&Error::SnapshotNotFound(job.snapshot.to_string()));
    };
    let work = archive.parent().unwrap_or(Path::new(".")).join(format!(".work-{}", meta.job_id));
    if let Err(e) = tokio::fs::create_dir_all(&work).await {
        return refused(&Error::io(format!("creating {}", work.display()))(e));
    }
    // The deadline is applied inside, around each part that changes something, so that a
    // timeout is undone like any other failure instead of abandoning a half-made import.
    let outcome = import(env, job, meta, record, &archive, &work, refused).await;
    let _ = tokio::fs::remove_dir_all(&work).await;
    outcome
}

async fn import(
    env: &Env,
    job: &ImportJob,
    meta: &JobMeta,
    record: Option<InstanceRecord>,
    archive: &Path,
    work: &Path,
    refused: impl Fn(&Error) -> Outcome,
) -> Outcome {
    let id = job.instance_id.as_str();
    let verified = {
        let (archive, work) = (archive.to_path_buf(), work.to_path_buf());
        match tokio::task::spawn_blocking(move || snapshot::unpack_verified(&archive, &work)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return refused(&e),
            Err(e) => return refused(&Error::Invalid(format!("verifying the snapshot: {e}"))),
        }
    };
    let must_create = match record.as_ref().map(|r| r.state) {
        None | Some(InstanceState::Deprovisioned) => match env.registry.claim_instance(&job.into(), &meta.job_id).await
        {
            Ok(true) => true,
            Ok(false) => {
                return Outcome::failed_with(
                    "conflict",
                    format!("instance {id} was claimed by another job"),
                    InstanceChange::None,
                )
            }
            Err(e) => return Outcome::failed(&e.into(), InstanceChange::None),
        },
        Some(InstanceState::Provisioning) if record.as_ref().is_some_and(|r| r.job_id == meta.job_id) => true,
        Some(InstanceState::Provisioned) => false,
        Some(state) => {
            let e = Error::Conflict(format!(
                "instance {id} is {state:?}; only a provisioned instance can be imported into"
            ));
            return Outcome::failed_with("instance-busy", e.to_string(), InstanceChange::None);
        }
    };

    // Target of a new instance: what the job says, else what the snapshot recorded.
    let new_instance = ProvisionJob {
        job_id: Tag::parse(&meta.job_id).ok(),
        owner_id: job.owner_id.clone(),
        instance_id: job.instance_id.clone(),
        guest_location: job.guest_location.clone().or_else(|| {
            let g = &verified.manifest.guest_location;
            env.config.provisioners.hosts.contains_key(g).then(|| Tag::parse(g).ok()).flatten()
        }),
        cluster_id: job.cluster_id.clone(),
        owner_type: job.owner_type.clone(),
        offerings: Some(verified.manifest.offerings.clone()).filter(|o| !o.is_empty()),
        packages: None,
    };
    let created = if must_create {
        match provision::create(env, &new_instance, meta, false).await {
            Ok(created) => Some(created),
            Err(failed) => return failed,
        }
    } else {
        None
    };
    let plan = match (&created, &record) {
        (Some(_), _) => env.manager.plan_provision(&new_instance, &meta.job_id),
        (None, Some(r)) => env.manager.plan_existing(r, &meta.job_id, None),
        (None, None) => Err(Error::NotFound(format!("instance {id} does not exist"))),
    };
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            return Outcome::failed(&e, if created.is_some() { InstanceChange::Released } else { InstanceChange::None })
        }
    };

    let backup = work.join("storage-before-import.tar");
    let deadline = env.deadline();
    let swapped = std::sync::atomic::AtomicBool::new(false);
    let restoring = restore(env, job, meta, &plan, &verified, &backup, &swapped);
    let restored = match tokio::time::timeout(deadline, restoring).await {
        Ok(r) => r,
        Err(_) => {
            // Abandoned mid-way: put back whatever the restore had swapped or loaded.
            let (p, ctx) = (plan.provisioner, &plan.ctx);
            // Only a swap this run made is undone (a `_pre` database may be older).
            if swapped.load(std::sync::atomic::Ordering::SeqCst) {
                if let Err(r) = p.db.rollback_import(ctx).await {
                    tracing::error!(error = %r.chain(), "putting the database back after a timeout failed");
                }
            }
            if tokio::fs::try_exists(&backup).await.unwrap_or(false) {
                if let Err(r) = p.storage.restore(ctx, &backup).await {
                    tracing::error!(error = %r.chain(), "putting the storage back after a timeout failed");
                }
            }
            Err(Error::Timeout(deadline.as_secs()))
        }
    };
    match restored {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(job_id = %meta.job_id, error = %e.chain(), "import failed; the target is put back");
            if created.is_some() {
                return match provision::rollback(&plan).await {
                    Ok(()) => Outcome::failed(&e, InstanceChange::Released),
                    Err(r) => Outcome::failed_with(
                        e.code(),
                        format!("{}; removing the new instance failed: {}", e.chain(), r.chain()),
                        InstanceChange::Failed,
                    ),
                };
            }
            return Outcome::failed(&e, InstanceChange::None);
        }
    }

    let (mut result, change) = match created {
        Some(Created { result, change }) => (result, change),
        None => (record.as_ref().map(|r| r.resources.clone()).unwrap_or_default(), InstanceChange::None),
    };
    if let Some(r) = result.as_object_mut() {
        r.insert("snapshot".into(), json!(job.snapshot));
        r.insert("created".into(), json!(must_create));
        r.insert("clean".into(), json!(job.clean.unwrap_or(false)));
        r.insert("source-instance-id".into(), json!(verified.manifest.instance_id));
    }
    Outcome::succeeded(result, change)
}

/// Database, then storage; each undone when a later step fails.
async fn restore(
    env: &Env,
    job: &ImportJob,
    meta: &JobMeta,
    plan: &Plan<'_>,
    v: &Verified,
    backup: &Path,
    swapped: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    let (p, ctx) = (plan.provisioner, &plan.ctx);
    p.db.import(ctx, &v.database).await?;
    swapped.store(true, std::sync::atomic::Ordering::SeqCst);
    let storage = async {
        let result = json!({ "database": ctx.names.database, "snapshot": job.snapshot });
        env.events.emit(meta, &names::component(Component::Database, JobKind::Import), result, None).await?;
        hold_after("database").await;
        p.storage.import(ctx, &v.storage, job.clean.unwrap_or(false), backup).await
    };
    if let Err(e) = storage.await {
        if let Err(r) = p.db.rollback_import(ctx).await {
            tracing::error!(error = %r.chain(), "putting the database back failed");
        }
        return Err(e);
    }
    let result = json!({ "volume": ctx.names.volume, "snapshot": job.snapshot, "clean": job.clean.unwrap_or(false) });
    if let Err(e) = env.events.emit(meta, &names::component(Component::Storage, JobKind::Import), result, None).await {
        if let Err(r) = p.storage.restore(ctx, backup).await {
            tracing::error!(error = %r.chain(), "putting the storage back failed");
        }
        if let Err(r) = p.db.rollback_import(ctx).await {
            tracing::error!(error = %r.chain(), "putting the database back failed");
        }
        return Err(e);
    }
    hold_after("storage").await;
    // The previous database is dropped only now that nothing can fail any more.
    if let Err(e) = p.db.commit_import(ctx).await {
        tracing::warn!(error = %e.chain(), "dropping the pre-import database failed; it stays as <name>_pre");
    }
    Ok(())
}
