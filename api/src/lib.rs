//! dfe-api: the thin REST front of the provisioner. It validates, records and publishes;
//! the workers do the work.
//!
//! Module map:
//! - [`routes`]: `ops` (job submission), `read` (jobs, instances, snapshots, provisioners), `health`.
//! - [`auth`]: bearer tokens checked against the configured SHA-256 digests.
//! - [`problem`]: RFC 9457 problem+json errors, the one place errors reach clients.
//! - [`metrics`]: counters for `/metrics`.

pub mod auth;
pub mod metrics;
pub mod problem;
pub mod routes;

use std::future::Future;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use dfe_shared::broker::BrokerHandle;
use dfe_shared::config::Config;
use dfe_shared::job::JobKind;
use dfe_shared::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use problem::Problem;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The registry.
    pub registry: Registry,
    /// The broker, reconnected on demand.
    pub broker: BrokerHandle,
    /// The configuration.
    pub config: Arc<Config>,
    /// Accepted clients.
    pub clients: Arc<Vec<auth::ClientKey>>,
    /// Counters.
    pub metrics: Arc<metrics::Metrics>,
    /// Ids of jobs just published, marked in the registry in batches.
    pub published: tokio::sync::mpsc::UnboundedSender<String>,
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/ops/provision", routes::ops::route(JobKind::Provision))
        .route("/api/v1/ops/deprovision", routes::ops::route(JobKind::Deprovision))
        .route("/api/v1/ops/import", routes::ops::route(JobKind::Import))
        .route("/api/v1/ops/export", routes::ops::route(JobKind::Export))
        .route("/api/v1/ops/jobs", get(routes::read::jobs))
        .route("/api/v1/ops/jobs/{job_id}", get(routes::read::job))
        .route("/api/v1/ops/provisioners", get(routes::read::provisioners))
        .route("/api/v1/instances", get(routes::read::instances))
        .route("/api/v1/instances/{instance_id}", get(routes::read::instance))
        .route("/api/v1/snapshots", get(routes::read::snapshots))
        .route("/api/v1/snapshots/{snapshot_id}", get(routes::read::snapshot))
        .route("/api/v1/snapshots/{snapshot_id}/download", get(routes::read::download))
        .route("/api/v1/openapi.json", get(routes::openapi::openapi))
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::health::metrics))
        .fallback(|| async { Problem::not_found("no such endpoint") })
        // A bug in a handler answers 500 problem+json instead of dropping the connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(problem::from_panic))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` completes; in-flight requests finish first.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let clients = auth::client_keys(&config.api.clients)?;
    if clients.is_empty() {
        tracing::warn!("no [[api.clients]] configured: every request needing a token will be refused");
    }
    let registry = Registry::connect(&config.registry.url, config.registry.pool_size).await?;
    let broker = BrokerHandle::new(&config.amqp.url, "dfe-api");
    if let Err(e) = broker.publisher().await {
        tracing::warn!(error = %e, "broker not reachable at start; jobs are recorded and published once it is back");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(dfe_shared::outbox::relay(registry.clone(), broker.clone(), "dfe-api".into(), stop_rx));
    let (published, marks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(mark_published(registry.clone(), marks));
    let state = AppState {
        registry,
        broker,
        config: Arc::new(config),
        clients: Arc::new(clients),
        metrics: Arc::default(),
        published,
    };
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await?;
    let _ = stop_tx.send(true);
    tracing::info!("dfe-api stopped");
    Ok(())
}

pub use dfe_shared::telemetry::shutdown_signal;

/// Records `published_at` of published jobs in batches (one statement for all that arrived
/// meanwhile) instead of one commit per request. Losing a batch (the api dies, the registry
/// is briefly away) only means the outbox relay publishes those jobs once more after a few
/// seconds, which is harmless: workers run each job id once, and a worker starting a job
/// sets `published_at` too.
async fn mark_published(registry: Registry, mut ids: tokio::sync::mpsc::UnboundedReceiver<String>) {
    let mut batch = Vec::new();
    while ids.recv_many(&mut batch, 1000).await > 0 {
        if let Err(e) = registry.mark_published_many(&batch).await {
            tracing::warn!(error = %e, jobs = batch.len(), "could not mark jobs published; the outbox may publish them again");
        }
        batch.clear();
    }
}
