//! `GET`/`POST /api/v1/reconcile`: the workers' reconciliation of the registry against the
//! Docker hosts and database servers. The API holds no credentials for those: a POST
//! records a request in the registry, a worker takes it and writes its report back, and the
//! API answers that report (or, if no worker finished it in time, 202 with a link to follow).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dfe_shared::ids::FieldError;
use dfe_shared::records::Reconciliation;
use serde::{Deserialize, Serialize};

use crate::auth::{Admin, Scoped};
use crate::extract::JobBody;
use crate::problem::{Problem, ProblemBody, CONTENT_TYPE as PROBLEM};
use crate::routes::openapi::text;
use crate::routes::SelfLink;
use crate::AppState;

/// How long a POST waits for a worker to finish the reconciliation before answering 202.
const WAIT: Duration = Duration::from_secs(25);
/// How often it looks.
const POLL: Duration = Duration::from_millis(200);

/// The body of `POST /api/v1/reconcile` (an empty body is `{"fix": false}`).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ReconcileRequest {
    /// Remove orphans and fail stuck jobs (default: only report).
    #[serde(default)]
    pub fix: bool,
}

/// The answer to a reconciliation no worker finished in time: it goes on, to be followed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReconcileAccepted {
    /// The reconciliation's id.
    pub id: uuid::Uuid,
    /// Always `requested` (the reconciliation itself tells how far it is).
    #[schema(example = "requested")]
    pub state: String,
    /// Where to follow it.
    pub links: SelfLink,
}

/// GET /api/v1/reconcile: the last reconciliation that finished.
#[utoipa::path(
    get,
    path = "/api/v1/reconcile",
    operation_id = "lastReconciliation",
    tag = "reconcile",
    summary = "The last finished reconciliation",
    description = "The report of the last reconciliation that ended `done`: asked for with \
        `POST /api/v1/reconcile`, or run by a worker on its own schedule.",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The last reconciliation that ended `done`", body = Reconciliation),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_ADMIN, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No reconciliation has finished yet", body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn last(State(state): State<AppState>, _c: Scoped<Admin>) -> Result<Response, Problem> {
    let last = state.registry.last_reconciliation().await?;
    let last =
        last.ok_or_else(|| Problem::not_found("no reconciliation has finished yet; POST /api/v1/reconcile runs one"))?;
    Ok(Json(last).into_response())
}

/// GET /api/v1/reconcile/{id}
#[utoipa::path(
    get,
    path = "/api/v1/reconcile/{id}",
    operation_id = "getReconciliation",
    tag = "reconcile",
    summary = "A reconciliation",
    params(("id" = uuid::Uuid, Path, description = "The reconciliation's id (`links.self` of a 202)")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The reconciliation, in whatever state it is", body = Reconciliation),
        (status = 400, description = text::UNDECODABLE_PATH, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_ADMIN, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such reconciliation (also for an id that is not a UUID)",
            body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn one(
    State(state): State<AppState>,
    _c: Scoped<Admin>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = uuid::Uuid::parse_str(&id).map_err(|_| Problem::not_found("no such reconciliation"))?;
    let r = state.registry.reconciliation(id).await?.ok_or_else(|| Problem::not_found("no such reconciliation"))?;
    Ok(Json(r).into_response())
}

/// POST /api/v1/reconcile `{"fix": bool}`
#[utoipa::path(
    post,
    path = "/api/v1/reconcile",
    operation_id = "runReconciliation",
    tag = "reconcile",
    summary = "Run a reconciliation now",
    description = "Records a request that a worker takes: it compares the registry with the Docker hosts and \
        database servers (the API holds no credentials for those) and, with `fix`, removes orphans and fails \
        stuck jobs. The answer is its report once a worker has finished it (about 25 seconds at most), else \
        202 with the reconciliation to follow.",
    request_body(content = ReconcileRequest, content_type = "application/json",
        description = "`{\"fix\": true|false}`; an empty body is `{\"fix\": false}`. As for a job body: \
            `application/json` (or `application/*+json`, or no Content-Type), at most 64 KiB."),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "A worker finished it (`state` `done` or `failed`)", body = Reconciliation),
        (status = 202, description = "No worker finished it in time; it goes on", body = ReconcileAccepted,
            headers(("Location" = String, description = "`links.self`"))),
        (status = 400, description = "The body is not JSON", body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_ADMIN, body = ProblemBody, content_type = PROBLEM),
        (status = 413, description = text::TOO_LARGE, body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = text::UNSUPPORTED_MEDIA_TYPE, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = "The body is not `{\"fix\": true|false}` (`errors[].field` is `body`)",
            body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn run(
    State(state): State<AppState>,
    client: Scoped<Admin>,
    JobBody(body): JobBody,
) -> Result<Response, Problem> {
    let request: ReconcileRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReconcileRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            if e.is_data() {
                Problem::invalid_field(FieldError::new("body", format!("{e} (the body is {{\"fix\": true|false}})")))
            } else {
                Problem::malformed(format!("the body is not valid JSON: {e}"))
            }
        })?
    };
    let asked = state.registry.request_reconciliation(request.fix, &client.id).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        if let Some(r) = state.registry.reconciliation(asked.id).await? {
            if r.state == "done" || r.state == "failed" {
                return Ok(Json(r).into_response());
            }
        }
    }
    let link = format!("/api/v1/reconcile/{}", asked.id);
    let body =
        ReconcileAccepted { id: asked.id, state: "requested".to_owned(), links: SelfLink { this: link.clone() } };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&link) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}
