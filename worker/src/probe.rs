//! Health of the fleet. Every `worker.probe-interval-secs`, the workers probe every Docker
//! host (`GET /_ping`) and database server (a connection and `SELECT 1`), sharing the work
//! through the registry: each probe is taken by one worker per interval, and its result
//! recorded there for every worker and the api to place by. A host or server is
//! `unreachable` after [`dfe_registry::fleet::UNREACHABLE_AFTER`] failed probes in a row
//! and `active` again after one good one; `dfe.host.unreachable` and `dfe.host.recovered`
//! go out once per outage. When a host is back, the deprovisions that failed on it because
//! it was away are submitted again.

use std::sync::Arc;
use std::time::Duration;

use dfe_registry::fleet::ProbeChange;
use dfe_registry::{Registry, Submitter};
use dfe_shared::broker::BrokerHandle;
use dfe_shared::event::{names, Event, EventError};
use dfe_shared::ids::{InstanceId, Tag};
use dfe_shared::job::{DeprovisionJob, Job};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::events::{Events, SERVICE};
use crate::manager::Manager;
use crate::metrics::Metrics;

/// How long one probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the probes of one worker share.
#[derive(Clone)]
pub struct Prober {
    /// This worker's id.
    pub worker_id: String,
    /// The hosts, servers and the implementations that probe the servers.
    pub manager: Arc<Manager>,
    /// Where results are shared.
    pub registry: Registry,
    /// Where host events go.
    pub broker: BrokerHandle,
    /// The per-host gauges.
    pub metrics: Arc<Metrics>,
    /// How often each is probed.
    pub interval: Duration,
}

impl Prober {
    /// Records every configured host and server in the registry (new ones `pending`).
    pub async fn sync(&self) -> dfe_registry::Result<()> {
        let (hosts, servers) = self.manager.config().fleet_ids();
        self.registry.sync_fleet(&hosts, &servers).await
    }

    /// One round: the probes that are due, run at once, their results recorded and
    /// announced. Then the gauges are brought up to date.
    pub async fn round(&self) -> dfe_registry::Result<()> {
        let (hosts, servers) = self.registry.due_probes(&self.worker_id, self.interval.as_secs_f64()).await?;
        let fleet = self.manager.fleet();
        let host_probes = hosts.iter().filter_map(|id| fleet.host(id).cloned()).map(|host| async move {
            let outcome = host.probe(PROBE_TIMEOUT).await.map_err(|e| e.chain());
            (host, outcome)
        });
        let implementations = &self.manager.implementations().database;
        // A server is probed by the implementation of its engine; one no provisioner uses
        // is not probed at all (it stays `pending` and takes nothing).
        let server_probes = servers
            .iter()
            .filter_map(|id| fleet.server(id).cloned())
            .filter_map(|server| implementations.get(server.config.engine.as_str()).cloned().map(|db| (server, db)))
            .map(|(server, db)| async move {
                let outcome = tokio::time::timeout(PROBE_TIMEOUT, db.probe(&server))
                    .await
                    .map_err(|_| format!("no answer within {PROBE_TIMEOUT:?}"))
                    .and_then(|r| r.map_err(|e| e.chain()));
                (server, outcome)
            });
        let (host_results, server_results) =
            futures::future::join(futures::future::join_all(host_probes), futures::future::join_all(server_probes))
                .await;
        for (host, outcome) in host_results {
            let change =
                self.registry.record_host_probe(&host.id, outcome.as_ref().map(|_| ()).map_err(String::as_str)).await?;
            match change {
                ProbeChange::Unreachable => {
                    let error = outcome.err().unwrap_or_default();
                    tracing::error!(host = %host.id, cluster = %host.cluster_id, error = %error, "Docker host unreachable");
                    self.announce(names::HOST_UNREACHABLE, &host.id, &host.cluster_id, Some(error)).await;
                }
                ProbeChange::Recovered => {
                    tracing::warn!(host = %host.id, cluster = %host.cluster_id, "Docker host recovered");
                    self.announce(names::HOST_RECOVERED, &host.id, &host.cluster_id, None).await;
                    self.resubmit_stranded(&host.id).await;
                }
                ProbeChange::None => {
                    if let Err(e) = &outcome {
                        tracing::debug!(host = %host.id, error = %e, "a probe of a Docker host failed");
                    }
                }
            }
        }
        for (server, outcome) in server_results {
            let change = self
                .registry
                .record_server_probe(&server.id, outcome.as_ref().map(|_| ()).map_err(String::as_str))
                .await?;
            match change {
                ProbeChange::Unreachable => {
                    tracing::error!(server = %server.id, error = ?outcome.err(), "database server unreachable")
                }
                ProbeChange::Recovered => tracing::warn!(server = %server.id, "database server recovered"),
                ProbeChange::None => {}
            }
        }
        for h in self.registry.hosts().await? {
            self.metrics.host(&h.host_id, h.instances, h.memory_reserved, h.reachability == "active");
        }
        Ok(())
    }

    /// Probes until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.round().await {
                tracing::debug!(error = %e, "a probe round failed; the next one tries again");
            }
            // A little sooner than the interval, so a due probe is never a whole interval late.
            let pause = (self.interval / 2).max(Duration::from_millis(500));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn announce(&self, name: &str, host_id: &str, cluster_id: &str, error: Option<String>) {
        let publisher = match self.broker.publisher().await {
            Ok(p) => p,
            Err(e) => {
                return tracing::warn!(error = %e, event = name, "cannot announce a host event: the broker is away")
            }
        };
        // The transition is seen by one probe only (the registry's row lock), so it is one event.
        let event = Event {
            event_id: uuid::Uuid::new_v4(),
            event: name.to_owned(),
            occurred_at: OffsetDateTime::now_utc(),
            job_id: None,
            service: SERVICE.to_owned(),
            instance_id: None,
            owner_id: None,
            request: serde_json::json!({}),
            result: serde_json::json!({ "host-id": host_id, "cluster-id": cluster_id }),
            error: error.map(|message| EventError { code: "host-unreachable".into(), message }),
            trace_id: None,
        };
        let events = Events::new(publisher, self.registry.clone(), self.metrics.clone());
        if let Err(e) = events.publish(&event).await {
            tracing::warn!(error = %e, event = name, "could not announce a host event");
        }
    }

    /// Submits again the deprovisions that failed because `host_id` was away.
    async fn resubmit_stranded(&self, host_id: &str) {
        let stranded = match self.registry.stranded_deprovisions(host_id).await {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "cannot list the deprovisions to finish"),
        };
        for instance in stranded {
            let Ok(instance_id) = InstanceId::parse(&instance) else { continue };
            let job_id = uuid::Uuid::new_v4().to_string();
            let job = Job::Deprovision(DeprovisionJob {
                job_id: Tag::parse(&job_id).ok(),
                instance_id,
                cluster_id: None,
                keep_database: None,
            });
            let by = Submitter { source: "reconciler", requested_by: "reconciler", ..Default::default() };
            // Recorded unpublished: the outbox relay publishes it within seconds.
            match self.registry.submit(&job, &by, None).await {
                Ok(_) => tracing::info!(
                    instance,
                    job_id,
                    host = host_id,
                    "host back: its failed deprovision is submitted again"
                ),
                Err(e) => tracing::warn!(instance, error = %e, "could not submit a deprovision again"),
            }
        }
    }
}
