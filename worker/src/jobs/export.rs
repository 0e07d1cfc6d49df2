//! Export: a portable snapshot of a running instance — `database.sql` (pg_dump, one
//! transaction), `storage.tar` (the volume's contents) and `snapshot.json` — written to its
//! destination (the default store, or `destination`: a directory or an S3-compatible
//! bucket) as `<snapshot-id>.snapshot.tar.gz`, encrypted to the destination's `encrypt-to`
//! recipients (then `….tar.gz.age`), and recorded in the registry once the archive is
//! complete there: an upload that fails leaves no row, and no object either (the multipart
//! upload is aborted), and the job is retried when the fault may pass. The instance keeps
//! running. The snapshot id derives from the job id, so a redelivered export rewrites the
//! same snapshot instead of making a second one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use dfe_registry::Transition;
use dfe_shared::event::{names, Component};
use dfe_shared::job::{ExportJob, Job, JobKind};
use dfe_shared::records::SnapshotRecord;
use serde_json::json;
use time::OffsetDateTime;
use tracing::Instrument;

use super::{Env, Outcome};
use crate::error::{Error, Result};
use crate::events::{Events, JobMeta};
use crate::fault::hold_after;
use crate::runner::JobSpec;
use crate::snapshot::{self, Manifest, FORMAT_VERSION};
use crate::timings::step_span;

/// Namespace of snapshot ids (UUID v5 of the export's job id).
const SNAPSHOT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6466_652e_736e_6170_7368_6f74_2d76_0001);

/// The export job kind. It changes nothing of the instance, so an abort leaves nothing to
/// repair (a half-written archive is a temporary file or an unfinished multipart upload,
/// never an archive under the snapshot's name).
pub struct Export;

#[async_trait]
impl JobSpec<Env> for Export {
    fn kind(&self) -> JobKind {
        JobKind::Export
    }

    fn aborted(&self) -> Transition {
        Transition::None
    }

    async fn run(&self, env: &Env, job: &Job, meta: &JobMeta, events: &Events) -> Outcome {
        let Job::Export(e) = job else { return super::wrong_kind("export") };
        let deadline = env.deadline();
        let work = work_dir(env, e, meta);
        let result = tokio::time::timeout(deadline, export(env, job, e, meta, events, &work)).await;
        if let Ok(work) = &work {
            let _ = tokio::fs::remove_dir_all(work).await;
        }
        match result {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome::failed(&e, Transition::None),
            Err(_) => Outcome::failed(&Error::Timeout(deadline.as_secs()), Transition::None),
        }
    }
}

/// The job's work directory (members are gathered there before they are archived).
fn work_dir(env: &Env, _job: &ExportJob, meta: &JobMeta) -> Result<PathBuf> {
    Ok(env.config.snapshots.work_dir().join(format!(".work-{}", meta.job_id)))
}

async fn export(
    env: &Env,
    any: &Job,
    job: &ExportJob,
    meta: &JobMeta,
    events: &Events,
    work: &Result<PathBuf>,
) -> Result<Outcome> {
    let id = job.instance_id.as_str();
    let record = match env.registry.claim(any, &meta.job_id, None, meta.instance.as_ref()).await? {
        Ok(claimed) => claimed.instance,
        Err(refusal) => return Ok(Outcome::failed_with(refusal.code, refusal.message, Transition::None)),
    };
    let destination = job.destination.as_ref().map(|d| d.as_str());
    let store = env.stores.get(destination).cloned().ok_or_else(|| {
        Error::Invalid(format!(
            "destination {:?} names no [snapshots.destinations.<name>]",
            destination.unwrap_or_default()
        ))
    })?;
    let recipients = snapshot::recipients(store.recipients())?;
    let work = work.as_ref().map_err(|e| Error::Invalid(e.to_string()))?;
    tokio::fs::create_dir_all(work).await.map_err(Error::io(format!("creating {}", work.display())))?;
    let plan = env.manager.plan(&record, &meta.job_id, meta.attempt, None)?;
    let (p, ctx) = (plan.provisioner, &plan.ctx);
    let snapshot_id = uuid::Uuid::new_v5(&SNAPSHOT_NAMESPACE, meta.job_id.as_bytes()).to_string();

    let database = work.join(snapshot::DATABASE);
    p.db.export(ctx, &database).instrument(step_span("database")).await?;
    let db_member = hashed(&database).await?;
    let result = json!({ "database": ctx.names.database, "size": db_member.size, "sha256": db_member.sha256 });
    events.emit(meta, &names::component(Component::Database, JobKind::Export), result, None).await?;
    hold_after("database").await;

    let storage = work.join(snapshot::STORAGE);
    let skipped = p.storage.export(ctx, &storage).instrument(step_span("storage")).await?;
    let st_member = hashed(&storage).await?;
    let result = json!({
        "volume": ctx.names.volume, "size": st_member.size, "sha256": st_member.sha256, "skipped-entries": skipped,
    });
    events.emit(meta, &names::component(Component::Storage, JobKind::Export), result, None).await?;
    hold_after("storage").await;

    // The items the instance was made with, as its claim recorded them.
    let offerings: BTreeMap<String, String> = record.offerings.clone();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        snapshot_id: snapshot_id.clone(),
        instance_id: id.to_owned(),
        owner_id: serde_json::to_value(&record.owner_id).unwrap_or_default(),
        owner_type: record.owner_type.as_ref().map(|o| serde_json::to_value(o).unwrap_or_default()),
        database_engine: Some(p.db.engine().to_owned()),
        guest_location: record.guest_location.clone(),
        cluster_id: record.cluster_id.clone(),
        offerings,
        created_at: OffsetDateTime::now_utc(),
        members: BTreeMap::from([
            (snapshot::DATABASE.to_owned(), db_member),
            (snapshot::STORAGE.to_owned(), st_member),
        ]),
    };
    let encrypted = !recipients.is_empty();
    let key = store.key(&snapshot_id, encrypted);
    let member = upload(&store, &key, &manifest, database, storage, recipients).await?;
    hold_after("upload").await;
    env.registry
        .record_snapshot(&SnapshotRecord {
            snapshot_id: snapshot_id.clone(),
            instance_id: id.to_owned(),
            owner_id: Some(record.owner_id.clone()),
            job_id: meta.job_id.clone(),
            destination: store.name().to_owned(),
            key: key.clone(),
            encrypted,
            // The registry fills it in from the job (`requested-by: schedule:<name>`).
            schedule: None,
            size: i64::try_from(member.size).unwrap_or(i64::MAX),
            sha256: member.sha256.clone(),
            manifest: serde_json::to_value(&manifest).unwrap_or_default(),
            created_at: manifest.created_at,
            path: store.location(&key),
        })
        .await?;
    let result = json!({
        "instance-id": id,
        "snapshot-id": snapshot_id,
        "snapshot": snapshot_id,
        "destination": store.name(),
        "key": key,
        "encrypted": encrypted,
        "size": member.size,
        "sha256": member.sha256,
    });
    Ok(Outcome::succeeded(result, Transition::None))
}

/// Writes the archive into `store` under `key`: built on a blocking thread, streamed through
/// the destination's sink while it is written (a temporary file renamed into place, or the
/// parts of a multipart upload). The archive exists under `key` only when this succeeds.
async fn upload(
    store: &std::sync::Arc<dfe_shared::store::Store>,
    key: &str,
    manifest: &Manifest,
    database: PathBuf,
    storage: PathBuf,
    recipients: Vec<age::x25519::Recipient>,
) -> Result<snapshot::Member> {
    let (sink, task) = store.upload(key).await?;
    let manifest = manifest.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let (sink, member) = snapshot::write_archive(sink, &manifest, &database, &storage, &recipients)?;
        sink.end().map_err(Error::io("handing over the end of the archive"))?;
        Ok::<_, Error>(member)
    });
    let (written, uploaded) = tokio::join!(writer, task.wait());
    let written = written
        .map_err(|e| Error::Io { context: "writing the archive".into(), source: std::io::Error::other(e) })
        .and_then(|w| w);
    match (written, uploaded) {
        (Ok(member), Ok(size)) if size == member.size => Ok(member),
        (Ok(member), Ok(size)) => {
            Err(Error::Invalid(format!("the destination took {size} bytes of an archive of {} bytes", member.size)))
        }
        // The writer stopped because the upload did: the upload's error is the cause.
        (Err(w), Err(u)) if w.is_broken_pipe() => Err(u.into()),
        (Err(w), _) => Err(w),
        (Ok(_), Err(u)) => Err(u.into()),
    }
}

async fn hashed(path: &Path) -> Result<snapshot::Member> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || snapshot::hash_file(&path))
        .await
        .map_err(|e| Error::Io { context: "hashing a member".into(), source: std::io::Error::other(e) })?
}
