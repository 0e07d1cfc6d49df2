//! Read-only views: jobs, instances, provisioners.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Client;
use crate::problem::Problem;
use crate::AppState;

/// Query of list endpoints.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ListQuery {
    /// Only this instance's jobs.
    instance_id: Option<String>,
    /// Only this owner's snapshots.
    owner_id: Option<String>,
    /// Include deprovisioned instances.
    #[serde(default)]
    include_removed: bool,
    /// At most this many (default 100, at most 1000).
    limit: Option<i64>,
}

impl ListQuery {
    fn limit(&self) -> i64 {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

/// GET /api/v1/ops/jobs/{job-id}
pub async fn job(State(state): State<AppState>, _c: Client, Path(id): Path<String>) -> Result<Json<Value>, Problem> {
    let record = state.registry.job(&id).await?.ok_or_else(|| Problem::not_found(format!("no job {id}")))?;
    Ok(Json(json!(record)))
}

/// GET /api/v1/ops/jobs
pub async fn jobs(
    State(state): State<AppState>,
    _c: Client,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, Problem> {
    let records = state.registry.jobs(q.instance_id.as_deref(), q.limit()).await?;
    Ok(Json(json!({ "jobs": records })))
}

/// GET /api/v1/instances/{instance-id}
pub async fn instance(
    State(state): State<AppState>,
    _c: Client,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let record = state.registry.instance(&id).await?.ok_or_else(|| Problem::not_found(format!("no instance {id}")))?;
    Ok(Json(json!(record)))
}

/// GET /api/v1/instances
pub async fn instances(
    State(state): State<AppState>,
    _c: Client,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, Problem> {
    let records = state.registry.instances(q.include_removed, q.limit()).await?;
    Ok(Json(json!({ "instances": records })))
}

/// GET /api/v1/ops/provisioners
pub async fn provisioners(State(state): State<AppState>, _c: Client) -> Json<Value> {
    let cfg = &state.config.provisioners;
    let list: Vec<Value> = cfg
        .hosts
        .iter()
        .map(|(tag, host)| {
            json!({
                "guest-location": tag,
                "default": *tag == cfg.default,
                "provides": host.provides,
                "resource-uri": host.resource_uri,
                "cluster": host.cluster,
                "offerings": host.offerings,
            })
        })
        .collect();
    Json(json!({ "default": cfg.default, "provisioners": list }))
}

/// GET /api/v1/snapshots
pub async fn snapshots(
    State(state): State<AppState>,
    _c: Client,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, Problem> {
    let records = state.registry.snapshots(q.instance_id.as_deref(), q.owner_id.as_deref(), q.limit()).await?;
    Ok(Json(json!({ "snapshots": records })))
}

/// GET /api/v1/snapshots/{id}
pub async fn snapshot(
    State(state): State<AppState>,
    _c: Client,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let record = state.registry.snapshot(&id).await?.ok_or_else(|| Problem::not_found(format!("no snapshot {id}")))?;
    let mut body = json!(record);
    body["links"] = json!({ "download": format!("/api/v1/snapshots/{id}/download") });
    Ok(Json(body))
}

/// GET /api/v1/snapshots/{id}/download: streams the archive.
pub async fn download(
    State(state): State<AppState>,
    _c: Client,
    Path(id): Path<String>,
) -> Result<axum::response::Response, Problem> {
    use axum::http::header;
    use axum::response::IntoResponse;
    // The registry's path when it is recorded here, else the store (snapshots copied in).
    let (_, path) = state
        .config
        .snapshots
        .locate(&id)
        .ok_or_else(|| Problem::not_found(format!("snapshot {id} is not in the snapshot store")))?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| Problem::internal(&e))?;
    let len = file.metadata().await.map_err(|e| Problem::internal(&e))?.len();
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let name = dfe_shared::config::snapshot_file_name(&id);
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        body,
    )
        .into_response())
}
