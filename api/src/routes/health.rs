//! Liveness, readiness and metrics (no token needed).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::AppState;

/// GET /healthz: the process answers.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// GET /readyz: the broker and the registry answer.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (broker, registry) = tokio::join!(state.broker.is_ready(), state.registry.is_ready());
    let status = if broker && registry { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (status, Json(json!({ "broker": word(broker), "registry": word(registry) })))
}

/// GET /metrics: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
