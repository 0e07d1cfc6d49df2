//! dfe-worker: consumes jobs from `dfe.jobs.*` and carries them out.
//!
//! Module map:
//! - [`consumer`]: AMQP consumption, acks, locks, the job life cycle in the registry.
//! - [`deadletter`]: invalid messages to `dfe.jobs.dead` with their reason.
//! - [`jobs`]: one body per job kind (provision, deprovision, …), free of AMQP.
//! - [`manager`]: provisioners by guest location, built from the configuration.
//! - [`provisioners`]: the storage, database and instance sub-provisioners.
//! - [`snapshot`]: the snapshot archive format, written and verified by streaming.
//! - [`reconcile`]: registry against Docker hosts and database servers: orphans, stuck jobs.
//! - [`events`]: sub-events and final events on `dfe.events`.
//! - [`metrics`]: Prometheus counters and step histograms, served on `worker.metrics-listen`.
//! - [`fault`]: the test-only hook that holds a job after a step.
//! - [`error`]: the crate's error type.

pub mod consumer;
pub mod deadletter;
pub mod error;
pub mod events;
pub mod fault;
pub mod jobs;
pub mod manager;
pub mod metrics;
pub mod provisioners;
pub mod reconcile;
pub mod snapshot;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dfe_shared::broker::BrokerHandle;
use dfe_shared::config::Config;
use dfe_shared::registry::{LockPool, Registry};
use tokio::sync::watch;

use consumer::{Consumer, Ended};

/// Pause between reconnection attempts to the broker or the registry.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// Options of a worker run beyond the configuration file.
#[derive(Debug, Clone)]
pub struct Options {
    /// Unique name of this worker.
    pub worker_id: String,
    /// Seconds running jobs get to finish after shutdown is asked for.
    pub grace: Duration,
}

/// Runs a worker until `shutdown` completes, then lets running jobs finish (up to the grace
/// period) and returns. Broker and registry outages are ridden out by reconnecting.
pub async fn run(
    config: Config,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let manager = Arc::new(manager::Manager::new(config.clone())?);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let registry = loop {
        match Registry::connect(&config.registry.url, config.registry.pool_size).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "registry not reachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    _ = stop_rx.changed() => return Ok(()),
                }
            }
        }
    };
    let concurrency = config.worker.concurrency.max(1);
    let locks = LockPool::new(&config.registry.url, usize::from(concurrency) * 4 + 2)?;

    // The outbox relay runs here too, so accepted jobs get published even when no api runs.
    let relay_broker = BrokerHandle::new(&config.amqp.url, &format!("{} outbox", options.worker_id));
    tokio::spawn(dfe_shared::outbox::relay(registry.clone(), relay_broker, options.worker_id.clone(), stop_rx.clone()));

    let metrics = Arc::new(metrics::Metrics::default());
    if let Some(listener) = metrics_listener(&config.worker.metrics_listen).await? {
        tokio::spawn(metrics::serve(listener, metrics.clone()));
    }

    let consumer = Arc::new(Consumer {
        worker_id: options.worker_id.clone(),
        amqp_url: config.amqp.url.clone(),
        concurrency,
        grace: options.grace,
        registry: registry.clone(),
        locks,
        manager,
        config: config.clone(),
        metrics,
    });

    if config.worker.reconcile_interval_secs > 0 {
        let (manager, registry, stop) = (consumer.manager.clone(), consumer.registry.clone(), stop_rx.clone());
        let broker = BrokerHandle::new(&config.amqp.url, &format!("{} reconciler", options.worker_id));
        tokio::spawn(periodic_reconcile(manager, registry, broker, config.worker.clone(), stop));
    }

    loop {
        match consumer.session(&mut stop_rx).await {
            Ok(Ended::Shutdown) => break,
            Ok(Ended::ConnectionLost) => tracing::warn!("broker connection lost; reconnecting"),
            Err(e) => tracing::warn!(error = %e.chain(), "broker session failed; reconnecting"),
        }
        if *stop_rx.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
            _ = stop_rx.changed() => break,
        }
    }
    tracing::info!(worker = %options.worker_id, "worker stopped");
    Ok(())
}

/// Binds the metrics listener (None: turned off) and announces its address: in the log,
/// and as a plain stdout line for scripts, like dfe-api's.
async fn metrics_listener(listen: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let listen = listen.trim();
    if listen.is_empty() || listen.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding worker.metrics-listen = {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "dfe-worker metrics listening");
    println!("dfe-worker metrics on http://{addr}");
    Ok(Some(listener))
}

/// Reconciles every `reconcile-interval-secs`, logging what it finds (and fixing it with
/// `reconcile-fix`), until shutdown.
async fn periodic_reconcile(
    manager: Arc<manager::Manager>,
    registry: Registry,
    broker: BrokerHandle,
    cfg: dfe_shared::config::WorkerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs(cfg.reconcile_interval_secs);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let events = match broker.publisher().await {
            Ok(p) => Some(events::Events::new(p)),
            Err(_) => None,
        };
        match reconcile::reconcile(&manager, &registry, events.as_ref(), cfg.reconcile_fix).await {
            Ok(report) if report.is_clean() => tracing::debug!("reconciliation: registry and resources agree"),
            Ok(report) => tracing::warn!(
                orphans = report.orphans.len(),
                missing = report.missing.len(),
                stuck = report.stuck.len(),
                unreachable = ?report.unreachable,
                fixed = cfg.reconcile_fix,
                "reconciliation found differences: {}",
                serde_json::to_string(&report).unwrap_or_default()
            ),
            Err(e) => tracing::warn!(error = %e.chain(), "reconciliation failed"),
        }
    }
}

/// Runs one reconciliation (`dfe-worker --reconcile`): the report as JSON.
pub async fn reconcile_once(config: Config, fix: bool) -> anyhow::Result<reconcile::Report> {
    let config = Arc::new(config);
    let manager = manager::Manager::new(config.clone())?;
    let registry = Registry::connect(&config.registry.url, 2).await?;
    let broker = BrokerHandle::new(&config.amqp.url, "dfe reconcile");
    let events = if fix { broker.publisher().await.ok().map(events::Events::new) } else { None };
    Ok(reconcile::reconcile(&manager, &registry, events.as_ref(), fix).await?)
}

pub use dfe_shared::telemetry::shutdown_signal;
