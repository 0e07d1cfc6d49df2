//! Import: restore a snapshot into an instance, provisioning it first when it does not
//! exist. The archive is found through its registry row (its destination and key: a file
//! read in place, or an object streamed into the work directory and checked against the
//! recorded size and SHA-256), or, for one copied into a local store by hand, by its file
//! name. It is decrypted when encrypted (refused, `snapshot-key-missing`, when this
//! worker's identities do not open it) and verified completely before anything is
//! touched; the database is
//! restored beside the current one and swapped in; the storage is saved before it is
//! loaded. A failure puts both back (or, when the import created the instance, removes it),
//! so the target is left as it was before the import began. An abort leaves an instance the
//! import was creating `failed`; an existing one is left to the import's own undo.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use dfe_registry::{Admission, Transition};
use dfe_shared::event::{names, Component};
use dfe_shared::job::{ImportJob, Job, JobKind};
use dfe_shared::placement;
use dfe_shared::records::InstanceRecord;
use serde_json::json;
use tracing::Instrument;

use super::provision::{self, Created};
use super::{Env, Outcome};
use crate::error::{Error, Result};
use crate::events::{Events, JobMeta};
use crate::fault::hold_after;
use crate::manager::Plan;
use crate::runner::JobSpec;
use crate::snapshot::{self, Verified};
use crate::timings::step_span;

/// The import job kind.
pub struct Import;

#[async_trait]
impl JobSpec<Env> for Import {
    fn kind(&self) -> JobKind {
        JobKind::Import
    }

    fn aborted(&self) -> Transition {
        // Applies only to an instance this import claimed (the registry checks it owns it).
        Transition::Failed
    }

    async fn run(&self, env: &Env, job: &Job, meta: &JobMeta, events: &Events) -> Outcome {
        let Job::Import(i) = job else { return super::wrong_kind("import") };
        // The API claims a new instance's id at submission; a refusal before the instance is
        // made hands that claim back (Released changes nothing of an instance this job does
        // not own).
        let refused = |e: &Error| Outcome::failed(e, Transition::Released);
        let work = env.config.snapshots.work_dir().join(format!(".work-{}", meta.job_id));
        if let Err(e) = tokio::fs::create_dir_all(&work).await {
            return refused(&Error::io(format!("creating {}", work.display()))(e));
        }
        let archive = match fetch(env, i.snapshot.as_str(), &work).await {
            Ok(a) => a,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&work).await;
                return refused(&e);
            }
        };
        // The deadline is applied inside, around each part that changes something, so that a
        // timeout is undone like any other failure instead of abandoning a half-made import.
        let outcome = import(env, job, i, meta, events, &archive, &work).await;
        let _ = tokio::fs::remove_dir_all(&work).await;
        outcome
    }
}

async fn import(
    env: &Env,
    any: &Job,
    job: &ImportJob,
    meta: &JobMeta,
    events: &Events,
    archive: &Path,
    work: &Path,
) -> Outcome {
    let refused = |e: &Error| Outcome::failed(e, Transition::Released);
    let verified = {
        let (archive, work) = (archive.to_path_buf(), work.to_path_buf());
        let identities = env.identities.clone();
        match tokio::task::spawn_blocking(move || snapshot::unpack_verified(&archive, &work, &identities)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return refused(&e),
            Err(e) => return refused(&Error::Invalid(format!("verifying the snapshot: {e}"))),
        }
    };
    // A new instance is made as the snapshot's was: its provisioner (unless the job names
    // one) and its offering items where that provisioner still has them.
    let manifest = &verified.manifest;
    let owner = job.owner_id.as_text();
    let request = placement::Request {
        guest_location: job.guest_location.as_ref().map(|g| g.as_str()),
        cluster_id: job.cluster_id.as_ref().map(|c| c.as_str()),
        offerings: None,
        owner_id: Some(&owner),
    };
    let placed =
        placement::plan_import(&env.config, request, Some(&manifest.guest_location), Some(&manifest.offerings))
            .map_err(|e| Error::Invalid(e.to_string()));
    let (admission, record) =
        match env.registry.claim(any, &meta.job_id, placed.as_ref().ok(), meta.instance.as_ref()).await {
            Ok(Ok(claimed)) => (claimed.admission, claimed.instance),
            Ok(Err(refusal)) => return Outcome::failed_with(refusal.code, refusal.message, Transition::Released),
            Err(e) => {
                return match &placed {
                    Err(pe) => refused(pe),
                    Ok(_) => refused(&e.into()),
                }
            }
        };
    let must_create = matches!(admission, Admission::Create | Admission::Continue);
    let plan = match env.manager.plan(&record, &meta.job_id, meta.attempt, None) {
        Ok(p) => p,
        Err(e) => return refused(&e),
    };
    // A dump of one engine does not restore into another: refused before anything is made.
    let ours = plan.provisioner.db.engine();
    let theirs = verified.manifest.database_engine.as_deref().unwrap_or("postgres");
    if theirs != ours && theirs != "none" && ours != "none" {
        return refused(&Error::EngineMismatch { snapshot: theirs.to_owned(), target: ours.to_owned() });
    }

    let created = if must_create {
        match provision::create(env, &record, placed.as_ref().ok(), meta, events, false).await {
            Ok(created) => Some(created),
            Err(failed) => return failed,
        }
    } else {
        None
    };

    let backup = work.join("storage-before-import.tar");
    let deadline = env.deadline();
    let swapped = std::sync::atomic::AtomicBool::new(false);
    let restoring = restore(job, meta, events, &plan, &verified, &backup, &swapped);
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
    if let Err(e) = restored {
        tracing::warn!(job_id = %meta.job_id, error = %e.chain(), "import failed; the target is put back");
        return undo_created(&plan, created.is_some(), e).await;
    }

    let (mut result, transition) = match created {
        Some(Created { result, transition }) => (result, transition),
        None => (record_resources(&record), Transition::None),
    };
    if let Some(r) = result.as_object_mut() {
        r.insert("snapshot".into(), json!(job.snapshot));
        r.insert("created".into(), json!(must_create));
        r.insert("clean".into(), json!(job.clean.unwrap_or(false)));
        r.insert("source-instance-id".into(), json!(verified.manifest.instance_id));
    }
    Outcome::succeeded(result, transition)
}

/// The archive of snapshot `id` as a local file: where its registry row says it is (a
/// local destination's file, read in place, or an object downloaded into `work`), else a
/// file of that name in a local store (copied in by hand).
async fn fetch(env: &Env, id: &str, work: &Path) -> Result<PathBuf> {
    let Some(record) = env.registry.snapshot(id).await? else {
        return env
            .config
            .snapshots
            .locate(id)
            .map(|(_, path)| path)
            .ok_or_else(|| Error::SnapshotNotFound(id.to_owned()));
    };
    let store = env.stores.get(Some(&record.destination)).ok_or_else(|| {
        Error::SnapshotNotFound(format!("{id} (its destination {:?} is no longer configured)", record.destination))
    })?;
    if let Some(dir) = store.local_dir() {
        let path = dir.join(&record.key);
        return if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            Ok(path)
        } else {
            Err(Error::SnapshotNotFound(format!("{id} (its archive {} is gone)", path.display())))
        };
    }
    let target = work.join(dfe_shared::snapshot_store::archive_name(id, record.encrypted));
    let download = store.open(&record.key).await.map_err(|e| match e {
        dfe_shared::Error::StoreNotFound { .. } => {
            Error::SnapshotNotFound(format!("{id} (destination {} holds no {})", store.name(), record.key))
        }
        e => e.into(),
    })?;
    let (size, sha256) = download_to(store.name(), download.stream, &target).await?;
    let expected = u64::try_from(record.size).unwrap_or_default();
    if size != expected || sha256 != record.sha256 {
        return Err(Error::SnapshotInvalid(format!(
            "the archive in destination {} is {size} bytes sha256 {sha256}; the registry recorded {expected} bytes sha256 {}",
            store.name(),
            record.sha256
        )));
    }
    Ok(target)
}

/// Writes a stream to `target` chunk by chunk, hashing on the way; its size and SHA-256.
async fn download_to(
    destination: &str,
    mut stream: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
    target: &Path,
) -> Result<(u64, String)> {
    use futures::StreamExt;
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let context = || format!("downloading into {}", target.display());
    let mut file = tokio::fs::File::create(target).await.map_err(Error::io(context()))?;
    let (mut size, mut hasher) = (0u64, sha2::Sha256::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Error::Shared(dfe_shared::Error::Store {
                context: format!("{destination}: reading the archive"),
                // A read cut off part-way (the server went away) may pass.
                transient: true,
                source: Box::new(e),
            })
        })?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(Error::io(context()))?;
    }
    file.flush().await.map_err(Error::io(context()))?;
    Ok((size, hex::encode(hasher.finalize())))
}

fn record_resources(record: &InstanceRecord) -> serde_json::Value {
    record.resources.clone()
}

/// The failure of an import after its target was settled: a new instance it made is
/// removed again (and its claim handed back); an existing one was put back by the restore.
async fn undo_created(plan: &Plan<'_>, created: bool, e: Error) -> Outcome {
    if !created {
        return Outcome::failed(&e, Transition::None);
    }
    match provision::rollback(plan).await {
        Ok(()) => Outcome::failed(&e, Transition::Released),
        Err(r) => Outcome::failed_with(
            e.code(),
            format!("{}; removing the new instance failed: {}", e.chain(), r.chain()),
            Transition::Failed,
        ),
    }
}

/// Database, then storage; each undone when a later step fails.
async fn restore(
    job: &ImportJob,
    meta: &JobMeta,
    events: &Events,
    plan: &Plan<'_>,
    v: &Verified,
    backup: &Path,
    swapped: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    let (p, ctx) = (plan.provisioner, &plan.ctx);
    p.db.import(ctx, &v.database).instrument(step_span("database")).await?;
    swapped.store(true, std::sync::atomic::Ordering::SeqCst);
    let storage = async {
        let result = json!({ "database": ctx.names.database, "snapshot": job.snapshot });
        events.emit(meta, &names::component(Component::Database, JobKind::Import), result, None).await?;
        hold_after("database").await;
        p.storage.import(ctx, &v.storage, job.clean.unwrap_or(false), backup).instrument(step_span("storage")).await
    };
    if let Err(e) = storage.await {
        if let Err(r) = p.db.rollback_import(ctx).await {
            tracing::error!(error = %r.chain(), "putting the database back failed");
        }
        return Err(e);
    }
    let result = json!({ "volume": ctx.names.volume, "snapshot": job.snapshot, "clean": job.clean.unwrap_or(false) });
    if let Err(e) = events.emit(meta, &names::component(Component::Storage, JobKind::Import), result, None).await {
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
