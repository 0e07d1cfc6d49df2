//! dfe-worker: consumes jobs from `dfe.jobs.*` and carries them out.
//!
//! Module map:
//! - [`runner`]: the generic job machinery: consumption, acks, locks, retries, dead letters,
//!   the registry life cycle of a job. It knows nothing of provisioning.
//! - [`jobs`]: one file per job kind (provision, deprovision, import, export), free of AMQP.
//! - [`manager`]: provisioners by guest location, and plans from an instance's claim.
//! - [`fleet`]: the Docker hosts and database servers of the configuration, and how each is
//!   reached (socket, mutual TLS, SSH with checked host keys: [`ssh`]).
//! - [`provisioners`]: the storage, database and instance sub-provisioners, each with the
//!   inventory the reconciler compares against.
//! - [`snapshot`]: the snapshot archive format, written and verified by streaming, and
//!   its encryption to age recipients.
//! - [`schedules`]: the snapshot schedules, run by the worker holding their lease.
//! - [`lifecycle`]: the expiry schedule, run by the worker holding its lease.
//! - [`history`]: finished jobs deleted past `registry.keep-finished-days`, by the lease holder.
//! - [`submitted`]: publishing the jobs the schedules submit, at once.
//! - [`probe`]: the health of hosts and servers, probed by the workers together.
//! - [`reconcile`]: registry against hosts and servers: orphans, missing parts, stuck jobs.
//! - [`events`]: sub-events and final events on `dfe.events`, with the event outbox relay.
//! - [`metrics`], [`http`]: Prometheus metrics, served on `worker.metrics-listen`.
//! - [`timings`]: step durations of a run.
//! - [`fault`]: the test-only hook that holds a job after a step.
//! - [`error`]: the crate's error type.

pub mod error;
pub mod events;
pub mod fault;
pub mod fleet;
pub mod history;
pub mod http;
pub mod jobs;
pub mod lifecycle;
pub mod manager;
pub mod metrics;
pub mod probe;
pub mod provisioners;
pub mod reconcile;
pub mod runner;
pub mod schedules;
pub mod snapshot;
pub mod ssh;
pub mod submitted;
pub mod timings;

use std::sync::Arc;
use std::time::Duration;

use dfe_registry::{LockSession, Registry};
use dfe_shared::broker::BrokerHandle;
use dfe_shared::config::Config;
use tokio_util::sync::CancellationToken;

use runner::{Ended, Kinds, Runner};

/// Pause between reconnection attempts to the broker or the registry.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// Options of a worker run beyond the configuration file.
#[derive(Debug, Clone)]
pub struct Options {
    /// Unique name of this worker.
    pub worker_id: String,
    /// How long running jobs get to finish after shutdown is asked for.
    pub grace: Duration,
}

/// Runs a worker until `shutdown` is cancelled, then lets running jobs finish (up to the
/// grace period) and returns. Broker and registry outages are ridden out by reconnecting.
pub async fn run(config: Config, options: Options, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let manager = Arc::new(manager::Manager::new(config.clone())?);
    // The snapshot destinations and keys are checked before any job is taken: a recipient
    // or an identity file that cannot be read is a configuration error, not a failed job.
    let stores = dfe_shared::store::Stores::from_config(&config.snapshots)?;
    for store in stores.all() {
        snapshot::recipients(store.recipients())
            .map_err(|e| anyhow::anyhow!("snapshots.destinations.{}: {e}", store.name()))?;
    }
    let identities = Arc::new(snapshot::identities(config.snapshots.identity_file.as_deref())?);
    let registry = loop {
        match Registry::connect(&config.registry.url, config.registry.pool_size).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "registry not reachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    };
    let concurrency = config.worker.concurrency.max(1);
    let locks = LockSession::new(&config.registry.url)?;
    let metrics = Arc::new(metrics::Metrics::with_lock_session(locks.clone()));
    // Background tasks stop with a child token once the runner has drained, so that the
    // jobs still finishing in the grace period can have their events relayed.
    let background = CancellationToken::new();

    // The outbox relay runs here too, so accepted jobs get published even when no api runs.
    let relay_broker = BrokerHandle::new(&config.amqp.url, &format!("{} outbox", options.worker_id));
    tokio::spawn(dfe_registry::outbox::relay(
        registry.clone(),
        relay_broker,
        options.worker_id.clone(),
        background.clone(),
    ));
    let event_broker = BrokerHandle::new(&config.amqp.url, &format!("{} events", options.worker_id));
    tokio::spawn(events::relay(
        registry.clone(),
        event_broker,
        metrics.clone(),
        config.worker.event_attempts,
        background.clone(),
    ));
    if let Some(listener) = metrics_listener(&config.worker.metrics_listen).await? {
        tokio::spawn(http::serve(listener, metrics.clone(), background.clone()));
    }

    // The fleet is recorded and probed once before any job is taken, so that the hosts a
    // placement needs are known to be active (a pending host takes no instance).
    let prober = probe::Prober {
        worker_id: options.worker_id.clone(),
        manager: manager.clone(),
        registry: registry.clone(),
        broker: BrokerHandle::new(&config.amqp.url, &format!("{} probes", options.worker_id)),
        metrics: metrics.clone(),
        interval: Duration::from_secs(config.worker.probe_interval_secs.max(1)),
    };
    if let Err(e) = prober.sync().await {
        tracing::warn!(error = %e, "could not record the fleet in the registry; the probes try again");
    }
    match tokio::time::timeout(Duration::from_secs(15), prober.round()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the first probe round failed; the probes try again"),
        Err(_) => tracing::warn!("the first probe round did not finish within 15 s; the probes go on"),
    }
    tokio::spawn(prober.run(background.clone()));
    tokio::spawn(
        lifecycle::Lifecycle {
            worker_id: options.worker_id.clone(),
            registry: registry.clone(),
            broker: BrokerHandle::new(&config.amqp.url, &format!("{} lifecycle", options.worker_id)),
            metrics: metrics.clone(),
            config: config.lifecycle.clone(),
        }
        .run(background.clone()),
    );
    tokio::spawn(
        history::Retention {
            worker_id: options.worker_id.clone(),
            registry: registry.clone(),
            keep_days: config.registry.keep_finished_days,
        }
        .run(background.clone()),
    );

    let context = jobs::Env {
        registry: registry.clone(),
        manager: manager.clone(),
        config: config.clone(),
        stores: stores.clone(),
        identities: identities.clone(),
    };
    let reconciler = reconcile::Reconciler {
        worker_id: options.worker_id.clone(),
        manager: manager.clone(),
        registry: registry.clone(),
        kinds: Arc::new(Kinds::new(jobs::kinds())),
        broker: BrokerHandle::new(&config.amqp.url, &format!("{} reconciler", options.worker_id)),
        metrics: metrics.clone(),
    };
    tokio::spawn(reconciler.clone().on_request(background.clone()));
    if config.worker.reconcile_interval_secs > 0 {
        let interval = Duration::from_secs(config.worker.reconcile_interval_secs);
        tokio::spawn(reconciler.periodic(interval, config.worker.reconcile_fix, background.clone()));
    }

    tokio::spawn(
        schedules::Scheduler {
            worker_id: options.worker_id.clone(),
            registry: registry.clone(),
            config: config.clone(),
            stores: stores.clone(),
            broker: BrokerHandle::new(&config.amqp.url, &format!("{} schedules", options.worker_id)),
            metrics: metrics.clone(),
        }
        .run(background.clone()),
    );

    let runner = Arc::new(Runner {
        worker_id: options.worker_id.clone(),
        nodes: dfe_shared::broker::Nodes::new(&config.amqp.url),
        concurrency,
        grace: options.grace,
        deadline: Duration::from_secs(config.worker.job_timeout_secs),
        retry: runner::retry::RetryPolicy::from_config(&config.worker),
        registry,
        locks,
        kinds: Kinds::new(jobs::kinds()),
        context,
        metrics,
    });
    loop {
        let began = std::time::Instant::now();
        let at_once = match runner.session(&shutdown).await {
            Ok(Ended::Shutdown) => break,
            Ok(Ended::ConnectionLost) => {
                tracing::warn!("broker connection lost; reconnecting");
                // Another node of a cluster is another machine: go on to it at once. Only
                // after a session that lasted, so that a node which takes connections and
                // drops them right away cannot make a busy loop of it.
                runner.nodes.len() > 1 && began.elapsed() > RECONNECT_PAUSE
            }
            Err(e) => {
                tracing::warn!(error = %e.chain(), "broker session failed; reconnecting");
                false
            }
        };
        if shutdown.is_cancelled() {
            break;
        }
        if !at_once {
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
    background.cancel();
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

/// Runs one reconciliation here (`dfe-worker --reconcile`), with this worker's clients.
pub async fn reconcile_once(config: Config, fix: bool) -> anyhow::Result<dfe_shared::records::ReconcileReport> {
    let config = Arc::new(config);
    let metrics = Arc::new(metrics::Metrics::default());
    let reconciler = reconcile::Reconciler {
        worker_id: "dfe-worker --reconcile".into(),
        manager: Arc::new(manager::Manager::new(config.clone())?),
        registry: Registry::connect(&config.registry.url, 2).await?,
        kinds: Arc::new(Kinds::new(jobs::kinds())),
        broker: BrokerHandle::new(&config.amqp.url, "dfe-worker --reconcile"),
        metrics,
    };
    Ok(reconciler.run_once(fix).await?)
}

pub use dfe_shared::telemetry::shutdown_token;
