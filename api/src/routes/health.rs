//! Liveness, readiness and metrics (no token needed).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;

use crate::problem::{Problem, ProblemBody, CONTENT_TYPE as PROBLEM};
use crate::AppState;

/// `GET /healthz`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /readyz` when ready.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// The broker: `ok`.
    #[schema(example = "ok")]
    pub broker: String,
    /// The registry: `ok`.
    #[schema(example = "ok")]
    pub registry: String,
}

/// GET /healthz: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    summary = "Liveness",
    responses((status = 200, description = "The process answers", body = Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".to_owned() })
}

/// GET /readyz: the broker and the registry answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    summary = "Readiness: the broker and the registry answer",
    responses(
        (status = 200, description = "Ready: both answer", body = Readiness),
        (status = 503, description = "The broker or the registry does not answer (`detail` says which)",
            body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, Problem> {
    let (broker, registry) = tokio::join!(state.broker.is_ready(), state.registry.is_ready());
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    if !(broker && registry) {
        return Err(Problem::not_ready(format!("not ready: broker {}, registry {}", word(broker), word(registry))));
    }
    Ok(Json(Readiness { broker: word(broker).to_owned(), registry: word(registry).to_owned() }))
}

/// GET /metrics: Prometheus text.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    summary = "Prometheus metrics",
    description = "The API's counters and histograms (`dfe_api_…`) in the OpenMetrics text format.",
    responses(
        (status = 200, description = "OpenMetrics text exposition", body = String,
            content_type = crate::metrics::CONTENT_TYPE),
    ),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.render())
}
