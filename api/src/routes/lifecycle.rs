//! Lifecycle and quotas: `PATCH /api/v1/instances/{instance-id}` (an instance's expiry),
//! `GET /api/v1/lifecycle` (what the expiry schedule will do and when: `dfe expire
//! --dry-run`) and `GET /api/v1/owners/{owner-id}` (an owner's instances against its quota).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use dfe_shared::ids::{FieldError, Tag};
use dfe_shared::lifecycle::{applies, steps, ExpiryAction, Step};
use dfe_shared::records::{InstanceRecord, InstanceState};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::auth::{Admin, Read, Scoped};
use crate::extract::{instance_path, JobBody, ListParams};
use crate::problem::{Problem, ProblemBody, CONTENT_TYPE as PROBLEM};
use crate::routes::openapi::text;
use crate::AppState;

/// The body of `PATCH /api/v1/instances/{instance-id}`.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Documents the body, which is read field by field to name what is wrong.
pub struct InstancePatch {
    /// When the instance expires (RFC 3339), or null for never. One in the past expires at
    /// the schedule's next run.
    #[schema(rename = "expires-at", value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
}

/// Reads the patch: an object with `expires-at` (RFC 3339 text or null) and nothing else.
fn parse_patch(body: &[u8]) -> Result<Option<OffsetDateTime>, Problem> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Problem::malformed(format!("the body is not JSON: {e}")))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(Problem::invalid_field(FieldError::new("body", "must be a JSON object")));
    };
    if let Some(unknown) = fields.keys().find(|k| k.as_str() != "expires-at") {
        return Err(Problem::invalid_field(FieldError::new(
            unknown.clone(),
            "unknown field (an instance's `expires-at` is all a PATCH changes)",
        )));
    }
    match fields.get("expires-at") {
        None => Err(Problem::invalid_field(FieldError::new("expires-at", "missing (RFC 3339 text, or null)"))),
        Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => OffsetDateTime::parse(s, &Rfc3339).map(Some).map_err(|e| {
            Problem::invalid_field(FieldError::new(
                "expires-at",
                format!("must be RFC 3339 (e.g. 2027-01-31T12:00:00Z): {e}"),
            ))
        }),
        Some(_) => Err(Problem::invalid_field(FieldError::new("expires-at", "must be RFC 3339 text or null"))),
    }
}

/// PATCH /api/v1/instances/{instance-id}
#[utoipa::path(
    patch,
    path = "/api/v1/instances/{instance-id}",
    operation_id = "patchInstance",
    tag = "lifecycle",
    summary = "Set or clear an instance's expiry",
    description = "Sets `expires-at` (RFC 3339) or clears it (null). The expiry schedule warns before it \
        (`dfe.instance.expiring` at each of `lifecycle.warn-days`) and submits a deprovision (or a suspend, with \
        `lifecycle.on-expiry = \"suspend\"`) once it has passed; an expiry in the past is acted on at the \
        schedule's next run. A new expiry starts its warnings afresh.",
    params(("instance-id" = String, Path, description = "The instance id")),
    request_body(content = InstancePatch, content_type = "application/json"),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The instance with its new expiry", body = InstanceRecord),
        (status = 400, description = text::MALFORMED_BODY, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_ADMIN, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such instance (also one of an owner the token may not see)",
            body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "The instance is deprovisioned", body = ProblemBody, content_type = PROBLEM),
        (status = 413, description = text::TOO_LARGE, body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = text::UNSUPPORTED_MEDIA_TYPE, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = "`expires-at` is missing or not RFC 3339 text or null, or another field is \
            given: `errors[].field` names it", body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn patch_instance(
    State(state): State<AppState>,
    client: Scoped<Admin>,
    Path(id): Path<String>,
    JobBody(body): JobBody,
) -> Result<Json<InstanceRecord>, Problem> {
    let id = instance_path(&id)?;
    let expires_at = parse_patch(&body)?;
    // An instance of an owner the token may not see does not exist for it: looked up
    // before anything changes, and answered like a missing one.
    if client.owners().is_some() {
        let owner = state.registry.instance(id.as_str()).await?.map(|i| i.owner_id.as_text());
        if !owner.as_deref().is_some_and(|o| client.sees(Some(o))) {
            return Err(Problem::not_found(format!("no instance {id}")));
        }
    }
    match state.registry.set_expiry(id.as_str(), expires_at).await? {
        Some(record) => {
            tracing::info!(instance = %id, client = %client.id, expires_at = ?expires_at, "expiry set");
            Ok(Json(record))
        }
        None => match state.registry.instance(id.as_str()).await? {
            Some(_) => Err(Problem::conflict(format!("instance {id} is deprovisioned: it has nothing to expire"))),
            None => Err(Problem::not_found(format!("no instance {id}"))),
        },
    }
}

/// One instance in the expiry schedule.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ScheduledExpiry {
    /// The instance.
    pub instance_id: String,
    /// Its owner.
    #[schema(value_type = Object)]
    pub owner_id: serde_json::Value,
    /// Its state now.
    pub state: InstanceState,
    /// Its expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// What the schedule still does for it, soonest first (empty when its state is one the
    /// schedule leaves alone, such as an already suspended instance under `on-expiry =
    /// "suspend"`, or one a job is changing now).
    pub steps: Vec<Step>,
}

/// `GET /api/v1/lifecycle`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct LifecyclePreview {
    /// When this preview was made.
    #[serde(with = "time::serde::rfc3339")]
    pub now: OffsetDateTime,
    /// `lifecycle.interval-secs`: how often the schedule runs.
    pub interval_secs: u64,
    /// `lifecycle.warn-days`.
    pub warn_days: Vec<f64>,
    /// `lifecycle.on-expiry`.
    pub on_expiry: ExpiryAction,
    /// The worker running the schedule now (null: none is; a worker takes it within seconds
    /// of starting).
    pub lease_holder: Option<String>,
    /// Every instance with an expiry, soonest first.
    pub expiries: Vec<ScheduledExpiry>,
}

/// GET /api/v1/lifecycle
#[utoipa::path(
    get,
    path = "/api/v1/lifecycle",
    operation_id = "previewLifecycle",
    tag = "lifecycle",
    summary = "What the expiry schedule will do (dry run)",
    description = "Every instance with an `expires-at`, with the warnings and the job still to come and when, \
        computed exactly as the schedule does; `due` steps happen at its next run. Nothing is changed \
        (`dfe expire --dry-run`).",
    params(("owner-id" = Option<String>, Query, description = "Only this owner's instances")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The schedule", body = LifecyclePreview),
        (status = 400, description = text::REPEATED_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "`owner-id` names an owner the token may not see", body = ProblemBody,
            content_type = PROBLEM),
        (status = 422, description = text::INVALID_PARAMETER, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn preview(
    State(state): State<AppState>,
    client: Scoped<Read>,
    q: ListParams,
) -> Result<Json<LifecyclePreview>, Problem> {
    q.only(&["owner-id"])?;
    let owner = q.owner_id("owner-id")?;
    if let Some(o) = owner.as_ref().filter(|o| !client.sees(Some(o))) {
        return Err(Problem::not_found(format!("no owner {o} is known to this token")));
    }
    let config = &state.config.lifecycle;
    let action = ExpiryAction::from_config(&config.on_expiry);
    let now = OffsetDateTime::now_utc();
    let expiries = state
        .registry
        .expiry_schedule()
        .await?
        .into_iter()
        .filter(|(i, _)| client.sees(Some(&i.owner_id.as_text())))
        .filter(|(i, _)| owner.as_ref().is_none_or(|o| &i.owner_id.as_text() == o))
        .filter_map(|(i, sent)| {
            let expires_at = i.expires_at?;
            let steps = if applies(i.state, action) {
                steps(expires_at, now, &config.warn_days, &sent, action)
            } else {
                Vec::new()
            };
            Some(ScheduledExpiry {
                owner_id: serde_json::to_value(&i.owner_id).unwrap_or_default(),
                instance_id: i.instance_id,
                state: i.state,
                expires_at,
                steps,
            })
        })
        .collect();
    Ok(Json(LifecyclePreview {
        now,
        interval_secs: config.interval_secs,
        warn_days: config.warn_days.clone(),
        on_expiry: action,
        lease_holder: state.registry.lease_holder("lifecycle").await?.map(|l| l.holder),
        expiries,
    }))
}

/// `GET /api/v1/owners/{owner-id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct OwnerUsage {
    /// The owner.
    pub owner_id: String,
    /// Its instances by state (deprovisioned ones left out).
    pub instances: BTreeMap<String, i64>,
    /// How many count against its quota: every instance from its claim until it is
    /// deprovisioned.
    pub used: i64,
    /// Its quota (its own, else `[quotas] max-instances`); null: no limit.
    pub max_instances: Option<u32>,
    /// How many more it may have now; null: no limit.
    pub available: Option<i64>,
}

/// GET /api/v1/owners/{owner-id}
#[utoipa::path(
    get,
    path = "/api/v1/owners/{owner-id}",
    operation_id = "getOwner",
    tag = "lifecycle",
    summary = "An owner's instances against its quota",
    description = "An owner nobody provisioned for has no instances: an empty answer, not a 404.",
    params(("owner-id" = String, Path, description = "The owner id (as text; digits for a numeric id)")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The owner's usage", body = OwnerUsage),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_READ, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "Not an owner id, or one the token may not see", body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn owner(
    State(state): State<AppState>,
    client: Scoped<Read>,
    Path(owner): Path<String>,
) -> Result<Json<OwnerUsage>, Problem> {
    // An owner id is 1-64 of [A-Za-z0-9._-] (digits for a numeric one): the rule of a tag.
    let owner = Tag::parse(&owner)
        .map_err(|_| Problem::not_found("no such owner (an owner id is 1-64 of [A-Za-z0-9._-])"))?
        .to_string();
    if !client.sees(Some(&owner)) {
        return Err(Problem::not_found(format!("no owner {owner} is known to this token")));
    }
    let instances = state.registry.owner_instances(&owner).await?;
    let used: i64 = instances.values().sum();
    let max_instances = state.config.quotas.max_instances(&owner);
    Ok(Json(OwnerUsage {
        available: max_instances.map(|m| (i64::from(m) - used).max(0)),
        owner_id: owner,
        instances,
        used,
        max_instances,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_names_what_is_wrong() {
        let t = parse_patch(br#"{"expires-at": "2027-01-31T12:00:00Z"}"#).expect("valid");
        assert_eq!(t.map(|t| t.unix_timestamp()), Some(1_801_396_800));
        assert_eq!(parse_patch(br#"{"expires-at": null}"#).expect("valid"), None);
        for (body, field) in [
            (&br#"{"expires-at": "tomorrow"}"#[..], "expires-at"),
            (br#"{"expires-at": 5}"#, "expires-at"),
            (br#"{}"#, "expires-at"),
            (br#"{"expires-at": null, "state": "x"}"#, "state"),
            (br#"[1]"#, "body"),
        ] {
            let p = parse_patch(body).expect_err("refused");
            assert_eq!(p.body().errors[0].field, field, "{}", String::from_utf8_lossy(body));
        }
        assert!(parse_patch(b"{").is_err());
    }
}
