//! `POST /api/v1/ops/{provision,deprovision,import,export}`: validate, record, publish.
//!
//! The job is recorded (with its instance claim) before it is published, so once the
//! client has its 202 the job cannot be lost: if the broker is unreachable now, the outbox
//! relay publishes it when the broker is back.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dfe_registry::{Cancelled, SubmitOutcome, Submitter};
use dfe_shared::ids::{FieldError, OwnerId, Tag};
use dfe_shared::job::{
    DeprovisionJob, ExportJob, ImportJob, Job, JobKind, MoveJob, ProvisionJob, ResumeJob, SuspendJob,
};
use dfe_shared::placement::{self, Plan};
use dfe_shared::records::{JobRecord, JobState};
use serde::Serialize;

use crate::auth::{Admin, Client, Ops, ScopeName, Scoped};
use crate::extract::JobBody;
use crate::problem::{Problem, ProblemBody, CONTENT_TYPE as PROBLEM};
use crate::routes::openapi::text;
use crate::routes::SelfLink;
use crate::AppState;

/// How long the request waits for the broker before leaving the job to the outbox.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer to an accepted job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(example = json!({"job-id": "4b0f3c4e-8a43-4a8e-9d51-2f0c8d1f6a10", "status": "queued",
    "links": {"self": "/api/v1/ops/jobs/4b0f3c4e-8a43-4a8e-9d51-2f0c8d1f6a10"}}))]
pub struct Accepted {
    /// The job's id: the client's `job-id`, or a UUID assigned here.
    pub job_id: String,
    /// The job's state now: `queued` for a new job; for a resubmission (the same `job-id`
    /// or `Idempotency-Key`), the state the original has reached.
    pub status: JobState,
    /// Where to follow it.
    pub links: SelfLink,
}

/// The `Idempotency-Key` header of a job submission.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKey {
    /// The same key from the same client returns the job it first submitted (202, with that
    /// job's id and state) instead of submitting another; the key reused for a different
    /// request is a 409. 1 to 255 printable ASCII characters (`!` to `~`, no spaces);
    /// anything else is a 422 naming `Idempotency-Key`.
    #[param(
        rename = "Idempotency-Key",
        required = false,
        pattern = "^[!-~]{1,255}$",
        min_length = 1,
        max_length = 255
    )]
    pub key: String,
}

/// `POST /api/v1/ops/provision`
#[utoipa::path(
    post,
    path = "/api/v1/ops/provision",
    tag = "ops",
    summary = "Provision an instance",
    description = "Records the job, with its claim on `instance-id` and where the instance goes \
        (provisioner, cluster, offerings), then publishes it to the workers. Once answered 202 \
        the job is never lost: if the broker is away, it is published when the broker is back.",
    params(IdempotencyKey),
    request_body(content = ProvisionJob, content_type = "application/json", description = text::JOB_BODY),
    security(("bearer" = ["ops"])),
    responses(
        (status = 202, description = text::ACCEPTED, body = Accepted,
            headers(("Location" = String, description = "The job's path (`links.self`)"))),
        (status = 400, description = text::MALFORMED_BODY, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_OPS, body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "The instance exists (`urn:dfe:problem:instance-exists`) or is mid-operation \
            (`…:instance-busy`), or the `job-id` or `Idempotency-Key` names another request (`…:conflict`)",
            body = ProblemBody, content_type = PROBLEM),
        (status = 413, description = text::TOO_LARGE, body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = text::UNSUPPORTED_MEDIA_TYPE, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = text::INVALID_JOB, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::NOT_RECORDED, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn provision(
    state: State<AppState>,
    client: Scoped<Ops>,
    headers: HeaderMap,
    body: JobBody,
) -> Result<Response, Problem> {
    submit(state, client, headers, body, JobKind::Provision).await
}

/// `POST /api/v1/ops/deprovision`
#[utoipa::path(
    post,
    path = "/api/v1/ops/deprovision",
    tag = "ops",
    summary = "Deprovision an instance",
    description = "Records the job, with its claim on `instance-id`, then publishes it to the workers.",
    params(IdempotencyKey),
    request_body(content = DeprovisionJob, content_type = "application/json", description = text::JOB_BODY),
    security(("bearer" = ["ops"])),
    responses(
        (status = 202, description = text::ACCEPTED, body = Accepted,
            headers(("Location" = String, description = "The job's path (`links.self`)"))),
        (status = 400, description = text::MALFORMED_BODY, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_OPS, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such instance, or it is deprovisioned (`urn:dfe:problem:instance-not-found`)",
            body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = text::BUSY, body = ProblemBody, content_type = PROBLEM),
        (status = 413, description = text::TOO_LARGE, body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = text::UNSUPPORTED_MEDIA_TYPE, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = text::INVALID_JOB, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::NOT_RECORDED, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn deprovision(
    state: State<AppState>,
    client: Scoped<Ops>,
    headers: HeaderMap,
    body: JobBody,
) -> Result<Response, Problem> {
    submit(state, client, headers, body, JobKind::Deprovision).await
}

/// `POST /api/v1/ops/import`
#[utoipa::path(
    post,
    path = "/api/v1/ops/import",
    tag = "ops",
    summary = "Import a snapshot into an instance",
    description = "Records the job, with its claim on `instance-id` (an instance that does not exist is made \
        as the snapshot's was, unless the job names a `guest-location`), then publishes it to the workers.",
    params(IdempotencyKey),
    request_body(content = ImportJob, content_type = "application/json", description = text::JOB_BODY),
    security(("bearer" = ["ops"])),
    responses(
        (status = 202, description = text::ACCEPTED, body = Accepted,
            headers(("Location" = String, description = "The job's path (`links.self`)"))),
        (status = 400, description = text::MALFORMED_BODY, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_OPS, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "The snapshot is not in the snapshot store (`urn:dfe:problem:not-found`)",
            body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = text::BUSY, body = ProblemBody, content_type = PROBLEM),
        (status = 413, description = text::TOO_LARGE, body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = text::UNSUPPORTED_MEDIA_TYPE, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = text::INVALID_JOB, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::NOT_RECORDED, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn import(
    state: State<AppState>,
    client: Scoped<Ops>,
    headers: HeaderMap,
    body: JobBody,
) -> Result<Response, Problem> {
    submit(state, client, headers, body, JobKind::Import).await
}

/// `POST /api/v1/ops/export`
#[utoipa::path(
    post,
    path = "/api/v1/ops/export",
    tag = "ops",
    summary = "Export a snapshot of an instance",
    description = "Records the job, with its claim on `instance-id`, then publishes it to the workers; the \
        snapshot is written to the default store or the named `destination`.",
    params(IdempotencyKey),
    request_body(content = ExportJob, content_type = "application/json", description = text::JOB_BODY),
    security(("bearer" = ["ops"])),
    responses(
        (status = 202, description = text::ACCEPTED, body = Accepted,
            headers(("Location" = String, description = "The job's path (`links.self`)"))),
        (status = 400, description = text::MALFORMED_BODY, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_OPS, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such instance, or it is deprovisioned (`urn:dfe:problem:instance-not-found`)",
            body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = text::BUSY, body = ProblemBody, content_type = PROBLEM),
        (status = 413, description = text::TOO_LARGE, body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = text::UNSUPPORTED_MEDIA_TYPE, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = text::INVALID_JOB, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::NOT_RECORDED, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn export(
    state: State<AppState>,
    client: Scoped<Ops>,
    headers: HeaderMap,
    body: JobBody,
) -> Result<Response, Problem> {
    submit(state, client, headers, body, JobKind::Export).await
}

/// `POST /api/v1/ops/suspend`
#[utoipa::path(
    post,
    path = "/api/v1/ops/suspend",
    tag = "ops",
    summary = "Suspend an instance",
    description = "Records the job, with its claim on `instance-id`, then publishes it to the workers: the \
        instance's container is stopped and its database's logins refused; nothing is removed. Suspending a \
        suspended instance succeeds and changes nothing.",
    params(IdempotencyKey),
    request_body(content = SuspendJob, content_type = "application/json", description = text::JOB_BODY),
    security(("bearer" = ["ops"])),
    responses(
        (status = 202, description = text::ACCEPTED, body = Accepted,
            headers(("Location" = String, description = "The job's path (`links.self`)"))),
        (status = 400, description = text::MALFORMED_BODY, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_OPS, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such instance, or it is deprovisioned (`urn:dfe:problem:instance-not-found`)",
            body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = text::BUSY, body = ProblemBody, content_type = PROBLEM),
        (status = 413, description = text::TOO_LARGE, body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = text::UNSUPPORTED_MEDIA_TYPE, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = text::INVALID_JOB, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::NOT_RECORDED, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn suspend(
    state: State<AppState>,
    client: Scoped<Ops>,
    headers: HeaderMap,
    body: JobBody,
) -> Result<Response, Problem> {
    submit(state, client, headers, body, JobKind::Suspend).await
}

/// `POST /api/v1/ops/resume`
#[utoipa::path(
    post,
    path = "/api/v1/ops/resume",
    tag = "ops",
    summary = "Resume a suspended instance",
    description = "Records the job, then publishes it to the workers: the database's logins are allowed again \
        and the container started; the job succeeds once the `resource-uri` answers. Resuming a running \
        instance succeeds and changes nothing.",
    params(IdempotencyKey),
    request_body(content = ResumeJob, content_type = "application/json", description = text::JOB_BODY),
    security(("bearer" = ["ops"])),
    responses(
        (status = 202, description = text::ACCEPTED, body = Accepted,
            headers(("Location" = String, description = "The job's path (`links.self`)"))),
        (status = 400, description = text::MALFORMED_BODY, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_OPS, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such instance, or it is deprovisioned (`urn:dfe:problem:instance-not-found`)",
            body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = text::BUSY, body = ProblemBody, content_type = PROBLEM),
        (status = 413, description = text::TOO_LARGE, body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = text::UNSUPPORTED_MEDIA_TYPE, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = text::INVALID_JOB, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::NOT_RECORDED, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn resume(
    state: State<AppState>,
    client: Scoped<Ops>,
    headers: HeaderMap,
    body: JobBody,
) -> Result<Response, Problem> {
    submit(state, client, headers, body, JobKind::Resume).await
}

/// `POST /api/v1/ops/move`
#[utoipa::path(
    post,
    path = "/api/v1/ops/move",
    tag = "ops",
    summary = "Move a running instance to another Docker host",
    description = "Records the job, then publishes it to the workers: the instance's container is stopped, its \
        storage (and, with `database-server`, its database) copied to the target, a new container started \
        there and the record switched; then the old parts are removed. The instance does not answer from \
        the stop until the new container answers (`result.unavailable-ms`). A failure before the switch \
        leaves it running where it was, with nothing left on the target. Without `host-id` the cluster's \
        placement chooses among its other active hosts. Needs the `admin` scope: it decides where tenants run.",
    params(IdempotencyKey),
    request_body(content = MoveJob, content_type = "application/json", description = text::JOB_BODY),
    security(("bearer" = ["admin"])),
    responses(
        (status = 202, description = text::ACCEPTED, body = Accepted,
            headers(("Location" = String, description = "The job's path (`links.self`)"))),
        (status = 400, description = text::MALFORMED_BODY, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_ADMIN, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such instance, or it is deprovisioned (`urn:dfe:problem:instance-not-found`)",
            body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = text::BUSY, body = ProblemBody, content_type = PROBLEM),
        (status = 413, description = text::TOO_LARGE, body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = text::UNSUPPORTED_MEDIA_TYPE, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = text::INVALID_JOB, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::NOT_RECORDED, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn move_instance(
    state: State<AppState>,
    client: Scoped<Admin>,
    headers: HeaderMap,
    body: JobBody,
) -> Result<Response, Problem> {
    submit(state, client, headers, body, JobKind::Move).await
}

async fn submit<S: ScopeName>(
    State(state): State<AppState>,
    client: Scoped<S>,
    headers: HeaderMap,
    JobBody(body): JobBody,
    kind: JobKind,
) -> Result<Response, Problem> {
    let idempotency_key = idempotency_key(&headers)?;
    let mut job = Job::parse(kind, &body)?;
    if let Some(owner) = job.owner_id().map(OwnerId::as_text).filter(|o| !client.sees(Some(o))) {
        return Err(Problem::forbidden(format!("this token may not submit jobs for owner {owner}")));
    }
    let placement = plan(&state, &client, &job).await?;
    if job.job_id().is_none() {
        let id = uuid::Uuid::new_v4().to_string();
        job.set_job_id(Tag::parse(&id).map_err(|e| Problem::invalid_field(FieldError::new("job-id", e)))?);
    }
    // The request's trace goes on in the worker: recorded with the job (for the outbox and
    // retries) and sent in the message's `traceparent` header.
    let traceparent = dfe_shared::telemetry::traceparent(&tracing::Span::current());
    let by = Submitter {
        source: "api",
        requested_by: &client.id,
        idempotency_key: idempotency_key.as_deref(),
        fingerprint: None,
        traceparent: traceparent.as_deref(),
        owners: client.owners(),
    };
    let recording = std::time::Instant::now();
    let outcome = state.registry.submit(&job, &by, placement.as_ref()).await.map_err(|e| {
        if e.is_transient() {
            Problem::unavailable("the job could not be recorded; nothing was accepted, retry later", &e)
        } else {
            Problem::from(e)
        }
    })?;
    let record = match outcome {
        SubmitOutcome::Created(record) => {
            if die_before_publish() {
                // Test hook: the crash the outbox exists for, between recording and publishing.
                tracing::warn!(job_id = %record.job_id, "DFE_TEST_API_DIE_BEFORE_PUBLISH: aborting (test hook)");
                std::process::abort();
            }
            state.metrics.submitted(kind);
            let recorded = recording.elapsed();
            let publishing = std::time::Instant::now();
            publish(&state, &job, &record.job_id, traceparent.as_deref()).await;
            state.metrics.submit_timings(recorded, publishing.elapsed());
            tracing::debug!(job_id = %record.job_id, %kind, instance_id = %job.instance_id(), "job accepted");
            record
        }
        SubmitOutcome::Existing(record) => record,
        SubmitOutcome::Conflict(why) => return Err(Problem::conflict(why)),
        SubmitOutcome::Refused(refusal) => return Err(Problem::refused(&refusal)),
    };
    let link = format!("/api/v1/ops/jobs/{}", record.job_id);
    let body = Accepted { job_id: record.job_id, status: record.state, links: SelfLink { this: link.clone() } };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&link) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// Publishes a recorded job; a failure is logged and left to the outbox relay.
async fn publish(state: &AppState, job: &Job, job_id: &str, traceparent: Option<&str>) {
    let body = match serde_json::to_vec(&job.to_value()) {
        Ok(b) => b,
        Err(e) => return tracing::error!(error = %e, job_id, "cannot serialize a job; the outbox will retry"),
    };
    let attempt = async {
        let publisher = state.broker.publisher().await?;
        publisher.publish_job(job.kind(), job_id, &body, "dfe-api", traceparent).await?;
        // Recorded in a batch by a background task (see `mark_published` in lib.rs).
        let _ = state.published.send(job_id.to_owned());
        Ok::<_, dfe_shared::Error>(())
    };
    match tokio::time::timeout(PUBLISH_TIMEOUT, attempt).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            state.metrics.publish_failed();
            state.broker.reset().await;
            tracing::warn!(job_id, error = %e, "job recorded but not published; the outbox will publish it");
        }
        Err(_) => {
            state.metrics.publish_failed();
            state.broker.reset().await;
            tracing::warn!(job_id, "job recorded but publishing timed out; the outbox will publish it");
        }
    }
}

/// `POST /api/v1/ops/jobs/{job-id}/cancel`
#[utoipa::path(
    post,
    path = "/api/v1/ops/jobs/{job-id}/cancel",
    operation_id = "cancelJob",
    tag = "ops",
    summary = "Cancel a job that has not started",
    description = "A `queued` or `retrying` job ends `failed` with `error.code` `cancelled`, in one \
        transaction with handing back its claim on the instance (a new instance's claim is released; an \
        instance a deprovision moved goes back to the state it came from; one a retrying job may have \
        changed is left `failed`, for a deprovision to finish), and its one failure event \
        (`dfe.<op>.failed`) is published. Its message is dropped when a worker takes it. A job that runs or \
        has ended is a 409 and stays as it is.",
    params(("job-id" = Tag, Path, description = "The job id")),
    security(("bearer" = ["ops"])),
    responses(
        (status = 200, description = "The job, cancelled", body = JobRecord),
        (status = 400, description = text::UNDECODABLE_PATH, body = ProblemBody, content_type = PROBLEM),
        (status = 401, description = text::UNAUTHORIZED, body = ProblemBody, content_type = PROBLEM),
        (status = 403, description = text::FORBIDDEN_OPS, body = ProblemBody, content_type = PROBLEM),
        (status = 404, description = "No such job", body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "The job runs or has ended (`urn:dfe:problem:conflict`; the detail names its \
            state)", body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = text::REGISTRY_AWAY, body = ProblemBody, content_type = PROBLEM),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    client: Scoped<Ops>,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, Problem> {
    let id = crate::extract::job_path(&id)?;
    match state.registry.cancel(id.as_str(), &client.id, client.owners()).await? {
        Cancelled::NotFound => Err(Problem::not_found(format!("no job {id}"))),
        Cancelled::TooLate(now) => {
            Err(Problem::conflict(format!("job {id} is {now}: only a queued or retrying job can be cancelled")))
        }
        Cancelled::Done(done) => {
            let (job, event) = *done;
            tracing::info!(job_id = %id, by = %client.id, "job cancelled");
            announce(&state, &event).await;
            Ok(Json(job))
        }
    }
}

/// Publishes a cancelled job's failure event, then takes it out of the event outbox; if the
/// broker does not take it now, the workers' event relay publishes it from there.
async fn announce(state: &AppState, event: &dfe_shared::event::Event) {
    let attempt = async {
        let publisher = state.broker.publisher().await?;
        publisher.publish_event(event, "dfe-api").await?;
        Ok::<_, dfe_shared::Error>(())
    };
    match tokio::time::timeout(PUBLISH_TIMEOUT, attempt).await {
        Ok(Ok(())) => {
            if let Err(e) = state.registry.events_delivered(&[event.event_id]).await {
                tracing::warn!(error = %e, event = %event.event, "published, but still in the event outbox: it may be published again");
            }
        }
        Ok(Err(e)) => {
            state.broker.reset().await;
            tracing::warn!(error = %e, event = %event.event, "not published now; the event relay publishes it");
        }
        Err(_) => {
            state.broker.reset().await;
            tracing::warn!(event = %event.event, "publishing timed out; the event relay publishes it");
        }
    }
}

/// The `Idempotency-Key` header, checked as [`IdempotencyKey`] documents it.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v.to_str().unwrap_or_default().trim();
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::invalid_field(FieldError::new(
            "Idempotency-Key",
            "must be 1 to 255 printable ASCII characters",
        )));
    }
    Ok(Some(key.to_owned()))
}

/// What the configuration and the registry can tell now rather than as a failure event
/// later, and, for a job that creates its instance, where it goes (recorded with the claim).
async fn plan(state: &AppState, client: &Client, job: &Job) -> Result<Option<Plan>, Problem> {
    let cfg = &state.config;
    match job {
        Job::Provision(p) => placement::plan(
            cfg,
            placement::Request {
                guest_location: p.guest_location.as_ref().map(|g| g.as_str()),
                cluster_id: p.cluster_id.as_ref().map(|c| c.as_str()),
                offerings: p.offerings.as_ref(),
                owner_id: Some(&p.owner_id.as_text()),
            },
        )
        .map(Some)
        .map_err(Problem::invalid_field),
        Job::Import(i) => {
            let id = i.snapshot.as_str();
            let record = crate::routes::read::visible_snapshot(state, client, id).await?;
            // A client limited to owners imports only what the registry records as theirs.
            let unrecorded_ok = client.owners().is_none() && cfg.snapshots.locate(id).is_some();
            if record.is_none() && !unrecorded_ok {
                return Err(Problem::not_found(format!("snapshot {id} is not in the snapshot store")));
            }
            // A new instance is made as the snapshot's was; the manifest is read from the
            // snapshot's record (an archive only on disk gets the defaults).
            let manifest = record.map(|r| r.manifest);
            let from_manifest = |key: &str| manifest.as_ref().and_then(|m| m.get(key)).cloned();
            let snapshot_guest = from_manifest("guest-location").and_then(|g| g.as_str().map(str::to_owned));
            let snapshot_items: Option<BTreeMap<String, String>> =
                from_manifest("offerings").and_then(|o| serde_json::from_value(o).ok());
            let owner = i.owner_id.as_text();
            let request = placement::Request {
                guest_location: i.guest_location.as_ref().map(|g| g.as_str()),
                cluster_id: i.cluster_id.as_ref().map(|c| c.as_str()),
                offerings: None,
                owner_id: Some(&owner),
            };
            placement::plan_import(cfg, request, snapshot_guest.as_deref(), snapshot_items.as_ref())
                .map(Some)
                .map_err(Problem::invalid_field)
        }
        Job::Deprovision(d) => {
            if d.cluster_id.as_ref().is_some_and(|c| !cfg.clusters.contains_key(c.as_str())) {
                return Err(Problem::invalid_field(FieldError::new("cluster-id", "names no configured cluster")));
            }
            Ok(None)
        }
        Job::Export(e) => {
            if let Some(d) = &e.destination {
                if !cfg.snapshots.has_destination(d.as_str()) {
                    return Err(Problem::invalid_field(FieldError::new(
                        "destination",
                        "names no configured snapshot destination ([snapshots.destinations.<name>])",
                    )));
                }
            }
            Ok(None)
        }
        Job::Move(m) => {
            check_move(cfg, m)?;
            Ok(None)
        }
        Job::Suspend(_) | Job::Resume(_) => Ok(None),
    }
}

/// A move's names are checked against the configuration at the door; whether the instance
/// may go there (its provisioner, the host's state and room) is the worker's to decide.
fn check_move(cfg: &dfe_shared::config::Config, m: &MoveJob) -> Result<(), Problem> {
    let unknown = |field: &str, what: &str| Problem::invalid_field(FieldError::new(field, what.to_owned()));
    if let Some(c) = &m.cluster_id {
        if !cfg.clusters.contains_key(c.as_str()) {
            return Err(unknown("cluster-id", "names no configured cluster"));
        }
    }
    if let Some(h) = &m.host_id {
        let cluster = cfg
            .clusters
            .iter()
            .find(|(id, c)| c.host_configs(id).iter().any(|(host, _)| host == h.as_str()))
            .map(|(id, _)| id.as_str());
        match (cluster, &m.cluster_id) {
            (None, _) => return Err(unknown("host-id", "names no configured Docker host")),
            (Some(found), Some(c)) if found != c.as_str() => {
                return Err(unknown("host-id", "is not a host of the named cluster-id"))
            }
            _ => {}
        }
    }
    if let Some(s) = &m.database_server {
        if !cfg.databases.contains_key(s.as_str()) {
            return Err(unknown("database-server", "names no configured database server"));
        }
    }
    Ok(())
}

/// Test hook `DFE_TEST_API_DIE_BEFORE_PUBLISH`, read once (this is on every submission's path).
fn die_before_publish() -> bool {
    static HOOK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HOOK.get_or_init(|| std::env::var_os("DFE_TEST_API_DIE_BEFORE_PUBLISH").is_some())
}
