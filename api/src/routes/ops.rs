//! `POST /api/v1/ops/{provision,deprovision,import,export}`: validate, record, publish.
//!
//! The job is recorded (with its instance claim) before it is published, so once the
//! client has its 202 the job cannot be lost: if the broker is unreachable now, the outbox
//! relay publishes it when the broker is back.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use dfe_shared::ids::{FieldError, Tag};
use dfe_shared::job::{Job, JobKind};
use dfe_shared::registry::jobs::Submitter;
use dfe_shared::registry::SubmitOutcome;
use serde_json::json;

use crate::auth::Client;
use crate::problem::Problem;
use crate::AppState;

/// How long the request waits for the broker before leaving the job to the outbox.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The handler of `POST /api/v1/ops/<kind>`: one for each job kind.
pub fn route(kind: JobKind) -> axum::routing::MethodRouter<AppState> {
    axum::routing::post(move |state: State<AppState>, client: Client, headers: HeaderMap, body: Bytes| {
        submit(state, client, headers, body, kind)
    })
}

async fn submit(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    body: Bytes,
    kind: JobKind,
) -> Result<Response, Problem> {
    let idempotency_key = idempotency_key(&headers)?;
    // The body is read as JSON whatever its Content-Type says (curl -d sends a form type);
    // a body that is not JSON gets a 400 that mentions the declared type.
    let mut job = Job::parse(kind, &body).map_err(|e| match (e, headers.get(header::CONTENT_TYPE)) {
        (dfe_shared::Error::Json(j), Some(ct)) if !ct.to_str().unwrap_or_default().contains("json") => {
            Problem::malformed(format!("the body is not valid JSON ({j}); send it as application/json"))
        }
        (e, _) => Problem::from(e),
    })?;
    check_against_config(&state, &job)?;
    if let Job::Import(i) = &job {
        let id = i.snapshot.as_str();
        let known = state.registry.snapshot(id).await?.is_some() || state.config.snapshots.locate(id).is_some();
        if !known {
            return Err(Problem::not_found(format!("snapshot {id} is not in the snapshot store")));
        }
    }
    if job.job_id().is_none() {
        let id = uuid::Uuid::new_v4().to_string();
        job.set_job_id(Tag::parse(&id).map_err(|e| Problem::invalid_field(FieldError::new("job-id", e)))?);
    }
    let by = Submitter {
        source: "api",
        client_id: Some(&client.id),
        idempotency_key: idempotency_key.as_deref(),
        fingerprint: None,
    };
    let recording = std::time::Instant::now();
    let outcome =
        state.registry.submit(&job, &by).await.map_err(|e| {
            Problem::unavailable("the job could not be recorded; nothing was accepted, retry later", &e)
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
            publish(&state, &job, &record.job_id).await;
            state.metrics.submit_timings(recorded, publishing.elapsed());
            record
        }
        SubmitOutcome::Existing(record) => record,
        SubmitOutcome::Conflict(why) => return Err(Problem::conflict(why)),
        SubmitOutcome::NotFound(why) => return Err(Problem::not_found(why)),
    };
    let link = format!("/api/v1/ops/jobs/{}", record.job_id);
    let body = json!({
        "job-id": record.job_id,
        "status": record.state,
        "links": { "self": link },
    });
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&link) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// Publishes a recorded job; a failure is logged and left to the outbox relay.
async fn publish(state: &AppState, job: &Job, job_id: &str) {
    let body = match serde_json::to_vec(&job.to_value()) {
        Ok(b) => b,
        Err(e) => return tracing::error!(error = %e, job_id, "cannot serialize a job; the outbox will retry"),
    };
    let attempt = async {
        let publisher = state.broker.publisher().await?;
        publisher.publish_job(job.kind(), job_id, &body, "dfe-api").await?;
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

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
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

/// What the configuration can tell now rather than as a failure event later.
fn check_against_config(state: &AppState, job: &Job) -> Result<(), Problem> {
    let cfg = &state.config;
    let (guest, cluster, offerings) = match job {
        Job::Provision(p) => (p.guest_location.as_ref(), p.cluster_id.as_ref(), Some(p.offerings.as_ref())),
        Job::Import(i) => (i.guest_location.as_ref(), i.cluster_id.as_ref(), None),
        Job::Deprovision(d) => (None, d.cluster_id.as_ref(), None),
        Job::Export(_) => (None, None, None),
    };
    let host = match cfg.provisioner(guest.map(|g| g.as_str())) {
        Some((_, host)) => host,
        None => {
            let known: Vec<&str> = cfg.provisioners.hosts.keys().map(String::as_str).collect();
            return Err(Problem::invalid_field(FieldError::new(
                "guest-location",
                format!("names no configured provisioner (known: {})", known.join(", ")),
            )));
        }
    };
    if let Some(c) = cluster {
        if !cfg.clusters.contains_key(c.as_str()) {
            return Err(Problem::invalid_field(FieldError::new("cluster-id", "names no configured cluster")));
        }
    }
    if let Some(chosen) = offerings {
        host.resolve_offerings(chosen).map_err(Problem::invalid_field)?;
    }
    if let Job::Export(e) = job {
        if let Some(d) = &e.destination {
            if cfg.snapshots.dir(Some(d.as_str())).is_none() {
                return Err(Problem::invalid_field(FieldError::new(
                    "destination",
                    "names no configured snapshot destination ([snapshots.destinations.<name>])",
                )));
            }
        }
    }
    Ok(())
}

/// Test hook `DFE_TEST_API_DIE_BEFORE_PUBLISH`, read once (this is on every submission's path).
fn die_before_publish() -> bool {
    static HOOK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HOOK.get_or_init(|| std::env::var_os("DFE_TEST_API_DIE_BEFORE_PUBLISH").is_some())
}
