//! Removing snapshots: one by id (`DELETE /api/v1/snapshots/{id}`), or what the schedules'
//! retention no longer keeps (`POST /api/v1/snapshots/prune`, with a dry run). The archive
//! and the registry row go together, archive first, so no row ever names an archive that
//! is gone. Both take the `admin` scope.

use axum::extract::{Path, State};
use axum::Json;
use dfe_shared::ids::{FieldError, OwnerId, Tag};
use dfe_shared::records::{PruneReport, SnapshotRecord};
use serde::Deserialize;

use crate::auth::{Admin, Scoped};
use crate::extract::{snapshot_path, JobBody};
use crate::problem::{Problem, ProblemBody, CONTENT_TYPE as PROBLEM};
use crate::routes::openapi::text;
use crate::AppState;

/// The body of `POST /api/v1/snapshots/prune` (an empty body is `{"dry-run": false}`).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PruneRequest {
    /// Only list what would be removed.
    #[serde(default)]
    pub dry_run: bool,
}

/// A destination's failure as an answer: 503 when it may pass (the server does not
/// answer), else 500 (its cause is logged).
pub fn store_problem(e: &dfe_shared::Error) -> Problem {
    if e.is_transient() {
        Problem::unavailable("the snapshot's destination does not answer; retry later", e)
    } else {
        Problem::internal(e)
    }
}

fn removal_problem(e: dfe_registry::Error) -> Problem {
    match e {
        dfe_registry::Error::Store(e) => store_problem(&e),
        e => e.into(),
    }
}

/// DELETE /api/v1/snapshots/{snapshot-id}
#[utoipa::path(
    delete,
    path = "/api/v1/snapshots/{snapshot-id}",
    operation_id = "deleteSnapshot",
    tag = "registry",
    summary = "Delete a snapshot (admin)",
    description = "Removes the archive from its destination, then the registry row; a destination that \
        refuses leaves both.",
    params(("snapshot-id" = Tag, Path, description = "The snapshot id")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Deleted: the snapshot as it was", body = SnapshotRecord),
        (status = 400, description = text::UNDECODABLE_PATH, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_ADMIN, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such snapshot in the registry (also one of an owner the token may not see)", body = ProblemBody, content_type = PROBLEM),
        (status = 500, description = "The destination refused the removal (see the dfe-api log); nothing was removed",
            body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = "The registry, or the snapshot's destination, does not answer; nothing was \
            removed, retry later", body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    client: Scoped<Admin>,
    Path(id): Path<String>,
) -> Result<Json<SnapshotRecord>, Problem> {
    let id = snapshot_path(&id)?;
    // Another owner's snapshot does not exist for a token limited to owners.
    if client.owners().is_some() {
        let record = state.registry.snapshot(id.as_str()).await?;
        if !record.is_some_and(|r| client.sees(r.owner_id.as_ref().map(OwnerId::as_text).as_deref())) {
            return Err(Problem::not_found(format!("no snapshot {id}")));
        }
    }
    let removed = state.registry.remove_snapshot(&state.stores, id.as_str()).await.map_err(removal_problem)?;
    let removed = removed.ok_or_else(|| Problem::not_found(format!("no snapshot {id}")))?;
    tracing::info!(snapshot = %id, client = %client.id, destination = %removed.destination, key = %removed.key,
        "snapshot deleted");
    Ok(Json(removed))
}

/// POST /api/v1/snapshots/prune `{"dry-run": bool}`
#[utoipa::path(
    post,
    path = "/api/v1/snapshots/prune",
    operation_id = "pruneSnapshots",
    tag = "registry",
    summary = "Prune the schedules' snapshots beyond their retention (admin)",
    description = "Each schedule keeps, of each instance, its `keep-last` newest snapshots and those younger than \
        `keep-days`; the rest of its snapshots go, archive and row, except an instance's newest snapshot, which \
        stays whatever the rules say. Snapshots a client exported are not considered. With `dry-run`, nothing \
        is removed: the answer lists what would be. The workers running the schedules prune the same way after \
        each slot. A token limited to owners may not prune (it acts on every owner's snapshots).",
    request_body(content = PruneRequest, content_type = "application/json",
        description = "`{\"dry-run\": true|false}`; an empty body is `{\"dry-run\": false}`. As for a job body: \
            `application/json` (or `application/*+json`, or no Content-Type), at most 64 KiB."),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "What was removed (or, with `dry-run`, would be), oldest first; a snapshot \
            whose removal failed says why and stays", body = PruneReport),
        (status = 400, description = "The body is not JSON", body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = "The token lacks the `admin` scope (the detail names it), or is limited to \
            owners", body = ProblemBody, content_type = PROBLEM),
        (status = 413, description = text::TOO_LARGE, body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = text::UNSUPPORTED_MEDIA_TYPE, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = "The body is not `{\"dry-run\": true|false}` (`errors[].field` is `body`)",
            body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn prune(
    State(state): State<AppState>,
    client: Scoped<Admin>,
    JobBody(body): JobBody,
) -> Result<Json<PruneReport>, Problem> {
    if client.owners().is_some() {
        return Err(Problem::forbidden("pruning acts on every owner's snapshots: a token limited to owners may not"));
    }
    let request: PruneRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PruneRequest::default()
    } else {
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| Problem::malformed(format!("the body is not valid JSON: {e}")))?;
        // An object, read as one: serde would also take a struct from an array.
        if !value.is_object() {
            return Err(Problem::invalid_field(FieldError::new("body", "must be {\"dry-run\": true|false}")));
        }
        serde_json::from_value(value).map_err(|e| {
            Problem::invalid_field(FieldError::new("body", format!("{e} (the body is {{\"dry-run\": true|false}})")))
        })?
    };
    let report = state.registry.prune(&state.stores, &state.config.snapshots.schedules, request.dry_run).await?;
    tracing::info!(client = %client.id, dry_run = request.dry_run, snapshots = report.snapshots.len(), "snapshots pruned");
    Ok(Json(report))
}
