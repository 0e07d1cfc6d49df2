//! `GET /api/v1/whoami`: what the request's token may do, so that a client (the console) can
//! offer exactly that. It is only a description: every operation checks the token itself.

use axum::Json;
use serde::Serialize;
use time::OffsetDateTime;

use crate::auth::{Read, Scoped};
use crate::problem::{ProblemBody, CONTENT_TYPE as PROBLEM};
use crate::routes::openapi::text;

/// `GET /api/v1/whoami`
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(example = json!({"client-id": "console-ops", "scopes": ["read", "ops"], "owners": ["7", "acme"],
    "expires-at": "2027-01-01T00:00:00Z"}))]
pub struct WhoAmI {
    /// The client's id in `[[api.clients]]` (what its jobs record as `requested-by`).
    pub client_id: String,
    /// Its scopes: `read` (every GET), `ops` (job submissions and cancel), `admin` (hosts,
    /// reconciliation, expiries and quotas).
    pub scopes: Vec<String>,
    /// The owners it may see and act for, as text; null: every owner.
    #[schema(required)]
    pub owners: Option<Vec<String>>,
    /// When the token stops being accepted; null: never.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime, required)]
    pub expires_at: Option<OffsetDateTime>,
}

/// GET /api/v1/whoami
#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    operation_id = "whoami",
    tag = "access",
    summary = "What this token may do",
    description = "The client the bearer token belongs to, its scopes, the owners it is limited to and its \
        expiry. Never the token or its digest.",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The token's client and rights", body = WhoAmI),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn whoami(client: Scoped<Read>) -> Json<WhoAmI> {
    Json(WhoAmI {
        client_id: client.id.clone(),
        scopes: client.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        owners: client.owners().map(<[String]>::to_vec),
        expires_at: client.expires_at,
    })
}
