//! Read-only views: jobs, instances, snapshots, provisioners.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;

use dfe_registry::{InstanceFilter, JobFilter, Paged, SnapshotFilter};
use dfe_shared::ids::{InstanceId, OwnerId, Tag};
use dfe_shared::job::JobKind;
use dfe_shared::records::{InstanceRecord, InstanceState, JobRecord, JobState, SnapshotRecord};

use crate::auth::{Client, Read, Scoped};
use crate::extract::{cursor, instance_path, job_path, snapshot_path, ListParams};
use crate::problem::{Problem, ProblemBody, CONTENT_TYPE as PROBLEM};
use crate::routes::openapi::text;
use crate::AppState;

/// The query parameters `GET /api/v1/ops/jobs` knows (besides `limit` and `cursor`).
pub const JOBS_FILTERS: &[&str] = &["instance-id", "owner-id", "state", "type"];
/// The query parameters `GET /api/v1/instances` knows (besides `limit` and `cursor`).
pub const INSTANCES_FILTERS: &[&str] = &["owner-id", "state", "host-id", "include-removed"];
/// The query parameters `GET /api/v1/snapshots` knows (besides `limit` and `cursor`).
pub const SNAPSHOTS_FILTERS: &[&str] = &["instance-id", "owner-id"];

/// `limit` and `cursor` of a list, as its query documents them.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// How many at most, 1 to 1000.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<i64>,
    /// Where the page starts: the `next-cursor` of the page before, unchanged (opaque).
    /// Following the cursors visits every row that was there at the start exactly once,
    /// even while rows are added; anything else is a 422 naming `cursor`.
    #[param(min_length = 1, max_length = 400, pattern = "^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
}

/// The `next-cursor` of a page.
fn next_cursor<T>(page: &Paged<T>) -> Option<String> {
    page.next.as_ref().map(cursor::encode)
}

/// An `owner-id` filter, which must name an owner the client sees: another is a 404, as its
/// instances do not exist for this client (answered without looking: nothing leaks).
fn owner_filter(client: &Client, q: &ListParams) -> Result<Option<String>, Problem> {
    let owner = q.owner_id("owner-id")?;
    match owner {
        Some(o) if !client.sees(Some(&o)) => Err(Problem::not_found(format!("no owner {o} is known to this token"))),
        other => Ok(other),
    }
}

/// The query of `GET /api/v1/ops/jobs` (read by [`ListParams`], described here).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// Only the jobs of this instance.
    #[param(rename = "instance-id")]
    pub instance_id: Option<InstanceId>,
    /// Only the jobs naming this owner (digits are a numeric owner id).
    #[param(rename = "owner-id")]
    pub owner_id: Option<OwnerId>,
    /// Only the jobs in this state.
    pub state: Option<JobState>,
    /// Only the jobs of this kind.
    #[param(rename = "type")]
    pub kind: Option<JobKind>,
}

/// The query of `GET /api/v1/instances`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstancesQuery {
    /// Only this owner's instances (digits are a numeric owner id).
    #[param(rename = "owner-id")]
    pub owner_id: Option<OwnerId>,
    /// Only the instances in this state (`deprovisioned` ones too, when asked for).
    pub state: Option<InstanceState>,
    /// Only the instances placed on this Docker host.
    #[param(rename = "host-id", min_length = 1, max_length = 255)]
    pub host_id: Option<String>,
    /// Also list deprovisioned instances when no `state` is asked for (`true`/`false`; `1`/`0`
    /// and an empty value are accepted too).
    #[param(rename = "include-removed", default = false)]
    pub include_removed: Option<bool>,
}

/// The query of `GET /api/v1/snapshots`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotsQuery {
    /// Only the snapshots of this instance.
    #[param(rename = "instance-id")]
    pub instance_id: Option<InstanceId>,
    /// Only the snapshots of this owner (digits are a numeric owner id).
    #[param(rename = "owner-id")]
    pub owner_id: Option<OwnerId>,
}

/// `GET /api/v1/ops/jobs`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobRecord>,
    /// The `cursor` of the next page; null on the last.
    #[serde(rename = "next-cursor")]
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/instances`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceList {
    /// Newest first.
    pub instances: Vec<InstanceRecord>,
    /// The `cursor` of the next page; null on the last.
    #[serde(rename = "next-cursor")]
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/snapshots`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SnapshotList {
    /// Newest first.
    pub snapshots: Vec<SnapshotRecord>,
    /// The `cursor` of the next page; null on the last.
    #[serde(rename = "next-cursor")]
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/snapshots/{snapshot-id}`: the record and where to download the archive.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    /// The record.
    #[serde(flatten)]
    pub record: SnapshotRecord,
    /// Where to download it.
    pub links: DownloadLink,
}

/// `links` of a snapshot.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DownloadLink {
    /// The path of its archive.
    pub download: String,
}

/// `GET /api/v1/ops/provisioners`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProvisionerList {
    /// The `guest-location` of a job that names none.
    pub default: String,
    /// Every configured provisioner, by `guest-location`.
    pub provisioners: Vec<Provisioner>,
}

/// A configured provisioner (`[provisioners.hosts.<guest-location>]`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Provisioner {
    /// Its tag: the `guest-location` a job names.
    pub guest_location: String,
    /// Whether it is the default.
    pub default: bool,
    /// The implementations that make an instance's container, storage and database.
    pub provides: Provides,
    /// Where the console talks to an instance.
    pub resource_uri: String,
    /// The Docker cluster its instances go to when a job names none.
    pub cluster: Option<String>,
    /// What a provision job may choose (`offerings`), by offering id.
    pub offerings: BTreeMap<String, Offering>,
}

/// The sub-provisioners of a provisioner, by implementation name.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Provides {
    /// e.g. `docker-container` or `noop`.
    pub instance: String,
    /// e.g. `docker-volume` or `noop`.
    pub storage: String,
    /// e.g. `postgres` or `noop`.
    pub db: String,
}

/// A choice a provision job makes (e.g. the image version), with its items.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Offering {
    /// Display name.
    pub name: String,
    /// Display description.
    pub description: String,
    /// The item chosen when the job does not choose.
    pub suggested: Option<String>,
    /// Items by value; each holds attributes such as `image`, `memory`, `cpus`.
    pub items: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

/// The body of `GET /api/v1/snapshots/{snapshot-id}/download` (streamed from the store).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary, content_media_type = "application/gzip")]
pub struct SnapshotArchive(pub Vec<u8>);

/// GET /api/v1/ops/jobs/{job-id}
#[utoipa::path(
    get,
    path = "/api/v1/ops/jobs/{job-id}",
    operation_id = "getJob",
    tag = "ops",
    summary = "A job",
    params(("job-id" = Tag, Path, description = "The job id")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The job", body = JobRecord),
        (status = 400, description = text::UNDECODABLE_PATH, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such job", body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn job(
    State(state): State<AppState>,
    client: Scoped<Read>,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, Problem> {
    let id = job_path(&id)?;
    let no_job = || Problem::not_found(format!("no job {id}"));
    let record = state.registry.job(id.as_str()).await?.ok_or_else(no_job)?;
    if client.owners().is_some() && !client.sees(state.registry.job_owner(id.as_str()).await?.as_deref()) {
        return Err(no_job());
    }
    Ok(Json(record))
}

/// GET /api/v1/ops/jobs
#[utoipa::path(
    get,
    path = "/api/v1/ops/jobs",
    operation_id = "listJobs",
    tag = "ops",
    summary = "List jobs, newest first",
    params(JobsQuery, PageQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The jobs", body = JobList),
        (status = 400, description = text::REPEATED_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = text::UNSEEN_OWNER, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = text::INVALID_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn jobs(
    State(state): State<AppState>,
    client: Scoped<Read>,
    q: ListParams,
) -> Result<Json<JobList>, Problem> {
    q.only(JOBS_FILTERS)?;
    let instance = q.instance_id("instance-id")?;
    let owner = owner_filter(&client, &q)?;
    let filter = JobFilter {
        instance_id: instance.as_ref().map(|i| i.as_str()),
        owner_id: owner.as_deref(),
        state: q.parsed::<JobState>("state")?,
        kind: q.parsed::<JobKind>("type")?,
        owners: client.owners(),
    };
    let page = state.registry.jobs(&filter, &q.page()?).await?;
    Ok(Json(JobList { next_cursor: next_cursor(&page), jobs: page.items }))
}

/// GET /api/v1/instances/{instance-id}
#[utoipa::path(
    get,
    path = "/api/v1/instances/{instance-id}",
    operation_id = "getInstance",
    tag = "registry",
    summary = "An instance",
    params(("instance-id" = InstanceId, Path, description = "The instance id")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The instance (also a deprovisioned one)", body = InstanceRecord),
        (status = 400, description = text::UNDECODABLE_PATH, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such instance", body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn instance(
    State(state): State<AppState>,
    client: Scoped<Read>,
    Path(id): Path<String>,
) -> Result<Json<InstanceRecord>, Problem> {
    let id = instance_path(&id)?;
    let record = state.registry.instance(id.as_str()).await?;
    let record = record
        .filter(|r| client.sees(Some(&r.owner_id.as_text())))
        .ok_or_else(|| Problem::not_found(format!("no instance {id}")))?;
    Ok(Json(record))
}

/// GET /api/v1/instances
#[utoipa::path(
    get,
    path = "/api/v1/instances",
    operation_id = "listInstances",
    tag = "registry",
    summary = "List instances, newest first",
    params(InstancesQuery, PageQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The instances", body = InstanceList),
        (status = 400, description = text::REPEATED_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = text::UNSEEN_OWNER, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = text::INVALID_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn instances(
    State(state): State<AppState>,
    client: Scoped<Read>,
    q: ListParams,
) -> Result<Json<InstanceList>, Problem> {
    q.only(INSTANCES_FILTERS)?;
    let owner = owner_filter(&client, &q)?;
    let host = match q.get("host-id") {
        Some(h) if h.is_empty() || h.len() > 255 => {
            return Err(Problem::invalid_field(dfe_shared::ids::FieldError::new(
                "host-id",
                "must be a host id of 1 to 255 characters",
            )))
        }
        h => h,
    };
    let filter = InstanceFilter {
        state: q.parsed::<InstanceState>("state")?,
        include_removed: q.flag("include-removed")?,
        owner_id: owner.as_deref(),
        host_id: host,
        owners: client.owners(),
    };
    let page = state.registry.instances(&filter, &q.page()?).await?;
    Ok(Json(InstanceList { next_cursor: next_cursor(&page), instances: page.items }))
}

/// GET /api/v1/ops/provisioners
#[utoipa::path(
    get,
    path = "/api/v1/ops/provisioners",
    operation_id = "listProvisioners",
    tag = "ops",
    summary = "Configured provisioners and their offerings",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The provisioners", body = ProvisionerList),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn provisioners(State(state): State<AppState>, _c: Scoped<Read>) -> Json<ProvisionerList> {
    let cfg = &state.config.provisioners;
    let provisioners = cfg
        .hosts
        .iter()
        .map(|(tag, host)| Provisioner {
            guest_location: tag.clone(),
            default: *tag == cfg.default,
            provides: Provides {
                instance: host.provides.instance.clone(),
                storage: host.provides.storage.clone(),
                db: host.provides.db.clone(),
            },
            resource_uri: host.resource_uri.clone(),
            cluster: host.cluster.clone(),
            offerings: host
                .offerings
                .iter()
                .map(|(id, o)| {
                    let offering = Offering {
                        name: o.name.clone(),
                        description: o.description.clone(),
                        suggested: o.suggested.clone(),
                        items: o.items.clone(),
                    };
                    (id.clone(), offering)
                })
                .collect(),
        })
        .collect();
    Json(ProvisionerList { default: cfg.default.clone(), provisioners })
}

/// GET /api/v1/snapshots
#[utoipa::path(
    get,
    path = "/api/v1/snapshots",
    operation_id = "listSnapshots",
    tag = "registry",
    summary = "List snapshots, newest first",
    params(SnapshotsQuery, PageQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The snapshots", body = SnapshotList),
        (status = 400, description = text::REPEATED_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = text::UNSEEN_OWNER, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = text::INVALID_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn snapshots(
    State(state): State<AppState>,
    client: Scoped<Read>,
    q: ListParams,
) -> Result<Json<SnapshotList>, Problem> {
    q.only(SNAPSHOTS_FILTERS)?;
    let instance = q.instance_id("instance-id")?;
    let owner = owner_filter(&client, &q)?;
    let filter = SnapshotFilter {
        instance_id: instance.as_ref().map(|i| i.as_str()),
        owner_id: owner.as_deref(),
        owners: client.owners(),
    };
    let page = state.registry.snapshots(&filter, &q.page()?).await?;
    Ok(Json(SnapshotList { next_cursor: next_cursor(&page), snapshots: page.items }))
}

/// The snapshot `id` if it exists for `client` (one of an owner it does not see does not).
pub(crate) async fn visible_snapshot(
    state: &AppState,
    client: &Client,
    id: &str,
) -> Result<Option<SnapshotRecord>, Problem> {
    let record = state.registry.snapshot(id).await?;
    Ok(record.filter(|r| client.sees(r.owner_id.as_ref().map(OwnerId::as_text).as_deref())))
}

/// GET /api/v1/snapshots/{snapshot-id}
#[utoipa::path(
    get,
    path = "/api/v1/snapshots/{snapshot-id}",
    operation_id = "getSnapshot",
    tag = "registry",
    summary = "A snapshot",
    params(("snapshot-id" = Tag, Path, description = "The snapshot id")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The snapshot, with the link to its archive", body = Snapshot),
        (status = 400, description = text::UNDECODABLE_PATH, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such snapshot in the registry", body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn snapshot(
    State(state): State<AppState>,
    client: Scoped<Read>,
    Path(id): Path<String>,
) -> Result<Json<Snapshot>, Problem> {
    let id = snapshot_path(&id)?;
    let record = visible_snapshot(&state, &client, id.as_str())
        .await?
        .ok_or_else(|| Problem::not_found(format!("no snapshot {id}")))?;
    let links = DownloadLink { download: format!("/api/v1/snapshots/{id}/download") };
    Ok(Json(Snapshot { record, links }))
}

/// GET /api/v1/snapshots/{snapshot-id}/download: streams the archive.
#[utoipa::path(
    get,
    path = "/api/v1/snapshots/{snapshot-id}/download",
    operation_id = "downloadSnapshot",
    tag = "registry",
    summary = "Download a snapshot archive (streamed)",
    description = "The archive as the export wrote it, streamed from wherever it lives: the snapshot store, a \
        local destination or an S3-compatible bucket (the API needs the destination's credentials too). An \
        encrypted snapshot downloads as it is stored (`….snapshot.tar.gz.age`, `application/octet-stream`): \
        decrypt it with `age -d -i <identity>`. A snapshot copied into a local store by hand, that the \
        registry does not know, downloads too (for a token that sees every owner).",
    params(("snapshot-id" = Tag, Path, description = "The snapshot id")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The `.snapshot.tar.gz` (or `.snapshot.tar.gz.age`), as an attachment",
            content_type = "application/gzip", body = inline(SnapshotArchive),
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"<file name>\"`"))),
        (status = 400, description = text::UNDECODABLE_PATH, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "The snapshot is not in the snapshot store", body = ProblemBody,
            content_type = PROBLEM),
        (status = 500, description = "The archive is in the store but cannot be read (see the dfe-api log)",
            body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = "The registry, or the snapshot's destination, does not answer; retry later",
            body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn download(
    State(state): State<AppState>,
    client: Scoped<Read>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, Problem> {
    use axum::http::header;
    use axum::response::IntoResponse;
    use futures::StreamExt;
    let id = snapshot_path(&id)?;
    let id = id.as_str();
    let missing = || Problem::not_found(format!("snapshot {id} is not in the snapshot store"));
    // Where the registry says it is, else a local store (snapshots copied in by hand).
    let record = state.registry.snapshot(id).await?;
    // A client limited to owners downloads only what the registry records as theirs.
    let theirs = |r: &SnapshotRecord| client.sees(r.owner_id.as_ref().map(OwnerId::as_text).as_deref());
    if client.owners().is_some() && !record.as_ref().is_some_and(theirs) {
        return Err(missing());
    }
    let (name, download) = match record {
        Some(record) => {
            let store = state.stores.get(Some(&record.destination)).ok_or_else(missing)?;
            let download = store.open(&record.key).await.map_err(|e| match e {
                dfe_shared::Error::StoreNotFound { .. } => missing(),
                e => crate::routes::snapshots::store_problem(&e),
            })?;
            (dfe_shared::snapshot_store::archive_name(id, record.encrypted), download)
        }
        None => {
            let (_, path) = state.config.snapshots.locate(id).ok_or_else(missing)?;
            let file = tokio::fs::File::open(&path).await.map_err(|e| Problem::internal(&e))?;
            let size = file.metadata().await.map_err(|e| Problem::internal(&e))?.len();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (name, dfe_shared::store::Download { size, stream: tokio_util::io::ReaderStream::new(file).boxed() })
        }
    };
    let content_type = if name.ends_with(dfe_shared::snapshot_store::ENCRYPTED_SUFFIX) {
        "application/octet-stream"
    } else {
        "application/gzip"
    };
    let body = axum::body::Body::from_stream(download.stream);
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_LENGTH, download.size.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        body,
    )
        .into_response())
}
