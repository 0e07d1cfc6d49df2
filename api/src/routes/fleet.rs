//! The fleet: `GET /api/v1/hosts[/{host-id}]`, `POST /api/v1/hosts/{host-id}/cordon|uncordon`
//! and `GET /api/v1/database-servers`. Limits and labels come from the configuration, state
//! and usage from the registry (what the workers' probes saw, what is placed where).

use axum::extract::{Path, State};
use axum::Json;
use dfe_registry::fleet::{HostState, ServerState};
use dfe_registry::After;
use dfe_shared::config::{Config, HostConfig};
use dfe_shared::records::{DatabaseServerRecord, HostRecord};
use serde::Serialize;

use crate::auth::{Admin, Read, Scoped};
use crate::extract::{cursor, ListParams};
use crate::problem::{Problem, ProblemBody, CONTENT_TYPE as PROBLEM};
use crate::routes::openapi::text;
use crate::AppState;

/// `{"hosts": [...]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostList {
    /// The configured Docker hosts, by id.
    pub hosts: Vec<HostRecord>,
    /// The `cursor` of the next page; null on the last.
    #[serde(rename = "next-cursor")]
    pub next_cursor: Option<String>,
}

/// `{"database-servers": [...]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatabaseServerList {
    /// The configured database servers, by id.
    #[serde(rename = "database-servers")]
    pub database_servers: Vec<DatabaseServerRecord>,
    /// The `cursor` of the next page; null on the last.
    #[serde(rename = "next-cursor")]
    pub next_cursor: Option<String>,
}

/// The configured hosts, by id, with their cluster.
fn configured(config: &Config) -> Vec<(String, String, HostConfig)> {
    config
        .clusters
        .iter()
        .flat_map(|(cluster, c)| c.host_configs(cluster).into_iter().map(move |(id, h)| (id, cluster.clone(), h)))
        .collect()
}

/// A configured host with what the registry knows of it (nothing yet: pending).
fn record(host_id: String, cluster_id: String, h: &HostConfig, state: Option<&HostState>) -> HostRecord {
    let reachability = state.map_or_else(|| "pending".to_owned(), |s| s.reachability.clone());
    let cordoned = state.is_some_and(|s| s.cordoned);
    HostRecord {
        state: if cordoned { "cordoned".to_owned() } else { reachability.clone() },
        cordoned,
        reachability,
        instances: state.map_or(0, |s| s.instances),
        max_instances: h.max_instances,
        memory_reserved: state.map_or(0, |s| s.memory_reserved),
        memory_budget: h.memory_budget_bytes(),
        last_seen_at: state.and_then(|s| s.last_seen_at),
        last_probe_at: state.and_then(|s| s.last_probe_at),
        last_error: state.and_then(|s| s.last_error.clone()),
        labels: h.labels.clone(),
        docker_host: dfe_shared::broker::redact_url(h.docker_host()),
        host_id,
        cluster_id,
    }
}

async fn host_records(state: &AppState) -> Result<Vec<HostRecord>, Problem> {
    let known = state.registry.hosts().await?;
    Ok(configured(&state.config)
        .into_iter()
        .map(|(id, cluster, h)| {
            let s = known.iter().find(|s| s.host_id == id);
            record(id, cluster, &h, s)
        })
        .collect())
}

/// GET /api/v1/hosts
#[utoipa::path(
    get,
    path = "/api/v1/hosts",
    operation_id = "listHosts",
    tag = "fleet",
    summary = "The Docker hosts",
    description = "Every configured Docker host with its state (`pending` until its first probe succeeds, \
        `active`, `cordoned`, `unreachable` after 3 failed probes in a row), what is placed on it against its \
        limits, and its last probe.",
    params(crate::routes::read::PageQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The hosts", body = HostList),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 400, description = text::REPEATED_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = text::INVALID_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn hosts(State(state): State<AppState>, _c: Scoped<Read>, q: ListParams) -> Result<Json<HostList>, Problem> {
    q.only(&[])?;
    let (hosts, next_cursor) = page_of(host_records(&state).await?, &q, |h| &h.host_id)?;
    Ok(Json(HostList { hosts, next_cursor }))
}

/// A page of a list the configuration makes (hosts, database servers), in the order of
/// their ids: `limit` rows after the cursor's id, and the cursor of the next page (one of the
/// lists' own kind, with no time in it).
fn page_of<T>(
    mut rows: Vec<T>,
    q: &ListParams,
    id: impl Fn(&T) -> &String,
) -> Result<(Vec<T>, Option<String>), Problem> {
    let page = q.page()?;
    rows.sort_by(|a, b| id(a).cmp(id(b)));
    if let Some(after) = &page.after {
        rows.retain(|r| id(r) > &after.id);
    }
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let next = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        rows.last().map(|r| cursor::encode(&After { created_at: time::OffsetDateTime::UNIX_EPOCH, id: id(r).clone() }))
    });
    Ok((rows, next.flatten()))
}

/// GET /api/v1/hosts/{host-id}
#[utoipa::path(
    get,
    path = "/api/v1/hosts/{host-id}",
    operation_id = "getHost",
    tag = "fleet",
    summary = "A Docker host",
    params(("host-id" = String, Path, description = "The host id")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The host", body = HostRecord),
        (status = 400, description = text::UNDECODABLE_PATH, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such host", body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn host(
    State(state): State<AppState>,
    _c: Scoped<Read>,
    Path(id): Path<String>,
) -> Result<Json<HostRecord>, Problem> {
    let found = host_records(&state).await?.into_iter().find(|h| h.host_id == id);
    found.map(Json).ok_or_else(|| Problem::not_found("no such host (`GET /api/v1/hosts` lists them)"))
}

async fn set_cordon(state: &AppState, id: &str, cordoned: bool) -> Result<Json<HostRecord>, Problem> {
    if !configured(&state.config).iter().any(|(h, _, _)| h == id) {
        return Err(Problem::not_found("no such host (`GET /api/v1/hosts` lists them)"));
    }
    if !state.registry.set_cordoned(id, cordoned).await? {
        // Configured but not yet recorded by a worker: record it now, then cordon.
        let cluster =
            configured(&state.config).into_iter().find(|(h, _, _)| h == id).map(|(_, c, _)| c).unwrap_or_default();
        state.registry.sync_fleet(&[(id.to_owned(), cluster)], &[]).await?;
        state.registry.set_cordoned(id, cordoned).await?;
    }
    tracing::info!(host = id, cordoned, "host cordon changed");
    let found = host_records(state).await?.into_iter().find(|h| h.host_id == id);
    found.map(Json).ok_or_else(|| Problem::not_found("no such host"))
}

/// POST /api/v1/hosts/{host-id}/cordon
#[utoipa::path(
    post,
    path = "/api/v1/hosts/{host-id}/cordon",
    operation_id = "cordonHost",
    tag = "fleet",
    summary = "Cordon a host",
    description = "A cordoned host takes no new instances; the ones on it stay and are served as before.",
    params(("host-id" = String, Path, description = "The host id")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The host, cordoned", body = HostRecord),
        (status = 400, description = text::UNDECODABLE_PATH, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_ADMIN, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such host", body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn cordon(
    State(state): State<AppState>,
    _c: Scoped<Admin>,
    Path(id): Path<String>,
) -> Result<Json<HostRecord>, Problem> {
    set_cordon(&state, &id, true).await
}

/// POST /api/v1/hosts/{host-id}/uncordon
#[utoipa::path(
    post,
    path = "/api/v1/hosts/{host-id}/uncordon",
    operation_id = "uncordonHost",
    tag = "fleet",
    summary = "Uncordon a host",
    description = "The host takes new instances again (once it is active).",
    params(("host-id" = String, Path, description = "The host id")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The host, not cordoned", body = HostRecord),
        (status = 400, description = text::UNDECODABLE_PATH, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_ADMIN, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such host", body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn uncordon(
    State(state): State<AppState>,
    _c: Scoped<Admin>,
    Path(id): Path<String>,
) -> Result<Json<HostRecord>, Problem> {
    set_cordon(&state, &id, false).await
}

fn server_record(id: &str, config: &Config, state: Option<&ServerState>) -> DatabaseServerRecord {
    let c = config.databases.get(id);
    DatabaseServerRecord {
        server_id: id.to_owned(),
        engine: c.map_or_else(|| "postgres".to_owned(), |c| c.engine.clone()),
        state: state.map_or_else(|| "pending".to_owned(), |s| s.reachability.clone()),
        databases: state.map_or(0, |s| s.databases),
        max_databases: c.and_then(|c| c.max_databases),
        last_seen_at: state.and_then(|s| s.last_seen_at),
        last_error: state.and_then(|s| s.last_error.clone()),
    }
}

/// GET /api/v1/database-servers
#[utoipa::path(
    get,
    path = "/api/v1/database-servers",
    operation_id = "listDatabaseServers",
    tag = "fleet",
    summary = "The database servers",
    description = "Every configured database server with its engine, state (from the probes), and its \
        instance databases against `max-databases`.",
    params(crate::routes::read::PageQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The database servers", body = DatabaseServerList),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 400, description = text::REPEATED_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = text::INVALID_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn database_servers(
    State(state): State<AppState>,
    _c: Scoped<Read>,
    q: ListParams,
) -> Result<Json<DatabaseServerList>, Problem> {
    q.only(&[])?;
    let known = state.registry.database_servers().await?;
    let all = state
        .config
        .databases
        .keys()
        .map(|id| server_record(id, &state.config, known.iter().find(|s| &s.server_id == id)))
        .collect();
    let (database_servers, next_cursor) = page_of(all, &q, |s| &s.server_id)?;
    Ok(Json(DatabaseServerList { database_servers, next_cursor }))
}
