//! dfe-api: the thin REST front of the provisioner. It validates, records and publishes;
//! the workers do the work.
//!
//! Module map:
//! - [`routes`]: `ops` (job submission and cancel), `read` (jobs, instances, snapshots,
//!   provisioners), `snapshots` (removal and retention), `fleet`, `lifecycle` (expiries,
//!   quotas), `stream` (events as SSE), `whoami`, `reconcile`, `health`, `openapi` (the
//!   document generated from the list in [`routes()`]) and `asyncapi` (the broker's
//!   document, from the same types).
//! - [`auth`]: bearer tokens checked against the configured SHA-256 digests, their expiry,
//!   scopes (the [`auth::Scoped`] extractor) and the owners they may see.
//! - [`extract`]: job bodies, list queries (with their cursors) and path ids, read and checked
//!   as the contract says.
//! - [`problem`]: RFC 9457 problem+json errors, the one place errors reach clients.
//! - [`metrics`]: counters for `/metrics`.
//! - [`console`]: the operator console at `/console`, its assets and its views.

pub mod auth;
pub mod console;
pub mod extract;
pub mod metrics;
pub mod problem;
pub mod routes;

use std::sync::Arc;

use axum::extract::FromRef;
use axum::Router;
use dfe_registry::Registry;
use dfe_shared::broker::BrokerHandle;
use dfe_shared::config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// The snapshot destinations (downloads stream from them, removals delete from them:
    /// the api needs the credentials of the S3 destinations too).
    pub stores: dfe_shared::store::Stores,
    /// Accepted clients.
    pub clients: auth::Clients,
    /// Counters.
    pub metrics: Arc<metrics::Metrics>,
    /// Ids of jobs just published, marked in the registry in batches.
    pub published: tokio::sync::mpsc::UnboundedSender<String>,
    /// The broker connection of the event streams.
    pub streams: routes::stream::Streams,
}

impl FromRef<AppState> for auth::Clients {
    fn from_ref(state: &AppState) -> auth::Clients {
        state.clients.clone()
    }
}

/// Every route the API serves, each with its documentation: the one list both the router and
/// the OpenAPI document ([`routes::openapi::document`]) are made from. A route added with
/// anything but `.routes(routes!(…))` would be served undocumented.
pub fn routes() -> OpenApiRouter<AppState> {
    use routes::{asyncapi, fleet, health, lifecycle, openapi, ops, read, reconcile, snapshots, stream, whoami};
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(ops::provision))
        .routes(routes!(ops::deprovision))
        .routes(routes!(ops::import))
        .routes(routes!(ops::export))
        .routes(routes!(ops::suspend))
        .routes(routes!(ops::resume))
        .routes(routes!(ops::move_instance))
        .routes(routes!(read::jobs))
        .routes(routes!(read::job))
        .routes(routes!(ops::cancel))
        .routes(routes!(read::provisioners))
        .routes(routes!(read::instances))
        .routes(routes!(read::instance, lifecycle::patch_instance))
        .routes(routes!(lifecycle::preview))
        .routes(routes!(lifecycle::owner))
        .routes(routes!(read::snapshots))
        .routes(routes!(read::snapshot, snapshots::delete))
        .routes(routes!(read::download))
        .routes(routes!(snapshots::prune))
        .routes(routes!(reconcile::last, reconcile::run))
        .routes(routes!(reconcile::one))
        .routes(routes!(fleet::hosts))
        .routes(routes!(fleet::host))
        .routes(routes!(fleet::cordon))
        .routes(routes!(fleet::uncordon))
        .routes(routes!(fleet::database_servers))
        .routes(routes!(whoami::whoami))
        .routes(routes!(stream::stream))
        .routes(routes!(crate::console::page))
        .routes(routes!(openapi::openapi))
        .routes(routes!(asyncapi::asyncapi))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
}

/// The router: [`routes()`], the console's parts, and a problem+json answer for everything
/// else.
pub fn router(state: AppState) -> Router {
    answering_problems(routes().split_for_parts().0.merge(console::router())).with_state(state)
}

/// What the router adds to the routes: every answer that is not one of theirs, or that
/// fails, is problem+json too.
fn answering_problems<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes
        .fallback(|| async { Problem::not_found("no such endpoint") })
        // Answers the router makes itself (405, a path it cannot decode) become problems too.
        .layer(axum::middleware::map_response(problem::problemize))
        // A bug in a handler answers 500 problem+json instead of dropping the connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(problem::from_panic))
        .layer(axum::middleware::from_fn(traced))
}

/// Runs a request in a span of its own: the root of a trace, or the continuation of the
/// caller's (a W3C `traceparent` header). Its lines carry its `trace_id`, and a job it
/// submits carries the trace on to the workers.
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = tracing::field::Empty,
        otel.name = %format!("{} {}", request.method(), request.uri().path()),
    );
    let incoming = request.headers().get("traceparent").and_then(|v| v.to_str().ok());
    dfe_shared::telemetry::continue_trace(&span, incoming);
    if let Some(id) = dfe_shared::telemetry::trace_id(&span) {
        span.record("trace_id", id.as_str());
    }
    next.run(request).instrument(span).await
}

/// Serves on `listener` until `shutdown` is cancelled; in-flight requests finish first.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let clients = auth::client_keys(&config.api.clients)?;
    if clients.is_empty() {
        tracing::warn!("no [[api.clients]] configured: every request needing a token will be refused");
    }
    let stores = dfe_shared::store::Stores::from_config(&config.snapshots)?;
    let registry = Registry::connect(&config.registry.url, config.registry.pool_size).await?;
    // The hosts' rows are what a placement locks: they exist before the first submission.
    let (hosts, servers) = config.fleet_ids();
    registry.sync_fleet(&hosts, &servers).await?;
    let broker = BrokerHandle::new(&config.amqp.url, "dfe-api");
    if let Err(e) = broker.publisher().await {
        tracing::warn!(error = %e, "broker not reachable at start; jobs are recorded and published once it is back");
    }
    tokio::spawn(dfe_registry::outbox::relay(registry.clone(), broker.clone(), "dfe-api".into(), shutdown.clone()));
    let (published, marks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(mark_published(registry.clone(), marks));
    let streams = routes::stream::Streams::new(&config.amqp.url, shutdown.clone());
    let state = AppState {
        registry,
        broker,
        config: Arc::new(config),
        stores,
        clients: Arc::new(clients),
        metrics: Arc::default(),
        published,
        streams,
    };
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown.clone().cancelled_owned()).await?;
    shutdown.cancel();
    tracing::info!("dfe-api stopped");
    Ok(())
}

pub use dfe_shared::telemetry::shutdown_token;

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
