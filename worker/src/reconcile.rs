//! The reconciler: compares the registry with what every configured sub-provisioner finds
//! of this deployment on its hosts and servers ([`crate::provisioners::Inventory`]), and
//! reports
//! - orphans: parts of an instance the registry does not hold (or holds as removed),
//! - missing parts of instances the registry says are provisioned,
//! - stuck jobs: running past their deadline, or retrying long past their retry time,
//! - abandoned instances: left mid-operation by a job that has ended.
//!
//! With `fix`, orphans are removed, stuck jobs failed with a clear error (and their failure
//! event, with the kind's abort transition), and abandoned instances marked `failed` so a
//! deprovision can finish them. Workers run it periodically and on request (through the
//! registry, from `POST /api/v1/reconcile`), and write their reports to the registry.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dfe_registry::{Ending, Registry};
use dfe_shared::broker::BrokerHandle;
use dfe_shared::event::EventError;
use dfe_shared::records::{Abandoned, InstanceState, JobState, Missing, Orphan, ReconcileReport, Stuck};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::events::{Events, JobMeta};
use crate::jobs::Env;
use crate::manager::Manager;
use crate::metrics::Metrics;
use crate::runner::Kinds;

/// Seconds past its deadline before a running job counts as stuck.
const RUNNING_GRACE_SECS: f64 = 60.0;
/// Seconds past its retry time before a retrying job counts as stuck (its retry was lost).
const RETRY_GRACE_SECS: f64 = 300.0;
/// How often a worker looks for reconciliations asked for through the API.
const REQUEST_POLL: Duration = Duration::from_secs(1);

/// Runs one reconciliation.
pub async fn reconcile(
    manager: &Manager,
    registry: &Registry,
    kinds: &Kinds<Env>,
    events: Option<&Events>,
    fix: bool,
) -> Result<ReconcileReport> {
    let deployment = manager.config().naming.deployment.clone();
    let mut report = ReconcileReport::default();
    let inventories = manager.implementations().inventories();

    // First what exists, then the registry: a provision that starts in between has claimed
    // its instance before making anything, so what it makes is never taken for an orphan.
    let mut found = Vec::new();
    // What an implementation could not see cannot be called missing.
    let mut blind: BTreeSet<&'static str> = BTreeSet::new();
    for inventory in &inventories {
        let f = inventory.inventory(&deployment).await;
        if !f.unreachable.is_empty() {
            blind.insert(inventory.name());
        }
        report.unreachable.extend(f.unreachable);
        found.extend(f.parts.into_iter().map(|p| (inventory.clone(), p)));
    }
    report.unreachable.sort();
    report.unreachable.dedup();

    let records = registry.live_instances().await?;
    let live: HashMap<&str, InstanceState> = records.iter().map(|r| (r.instance_id.as_str(), r.state)).collect();
    let mut seen: BTreeSet<(String, &'static str)> = BTreeSet::new();
    for (inventory, part) in found {
        seen.insert((part.instance_id.clone(), part.kind));
        if live.contains_key(part.instance_id.as_str()) {
            continue;
        }
        let removed = fix
            && match inventory.remove_part(&part).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(part = ?part, error = %e.chain(), "removing an orphan failed");
                    false
                }
            };
        report.orphans.push(Orphan {
            kind: part.kind.to_owned(),
            name: part.name,
            instance_id: part.instance_id,
            location: part.location,
            removed,
        });
    }

    // Parts of provisioned instances, of the implementations their provisioner uses.
    for record in &records {
        if !matches!(record.state, InstanceState::Provisioned | InstanceState::Suspended) {
            continue;
        }
        let Ok(p) = manager.provisioner(&record.guest_location) else { continue };
        let parts: [&dyn crate::provisioners::Inventory; 3] = [p.instance.as_ref(), p.storage.as_ref(), p.db.as_ref()];
        for inventory in parts {
            if blind.contains(inventory.name()) {
                continue;
            }
            for kind in inventory.parts() {
                if !seen.contains(&(record.instance_id.clone(), *kind)) {
                    report.missing.push(Missing { instance_id: record.instance_id.clone(), kind: (*kind).to_owned() });
                }
            }
        }
    }

    for job in registry.stuck_jobs(RUNNING_GRACE_SECS, RETRY_GRACE_SECS).await? {
        let mut failed = false;
        if fix {
            let error = EventError {
                code: "stuck".into(),
                message: format!(
                    "the job was {} past its deadline with no worker finishing it; failed by the reconciler",
                    job.state.as_str()
                ),
            };
            // What an abort of this kind leaves behind (an unknown kind changes nothing).
            let transition = kinds.get(job.kind).map(|k| k.aborted()).unwrap_or(dfe_registry::Transition::None);
            let ending = Ending { state: JobState::Failed, result: &json!({}), error: Some(&error), transition };
            failed = registry.complete(&job.job_id, &job.instance_id, &ending).await?;
            if let (true, Some(events)) = (failed, events) {
                let meta = JobMeta::new(job.job_id.clone(), job.kind, job.instance_id.clone(), job.request.clone());
                events.emit(&meta, &dfe_shared::event::names::failed(job.kind), json!({}), Some(error)).await?;
            }
        }
        report.stuck.push(Stuck {
            job_id: job.job_id,
            kind: job.kind,
            state: job.state,
            instance_id: job.instance_id,
            failed,
        });
    }

    for instance in registry.abandoned_instances().await? {
        let failed = fix && registry.fail_abandoned(&instance.instance_id, &instance.job_id).await?;
        report.abandoned.push(Abandoned {
            instance_id: instance.instance_id,
            state: instance.state,
            job_id: instance.job_id,
            failed,
        });
    }
    Ok(report)
}

/// What the reconciliation tasks of a worker share.
#[derive(Clone)]
pub struct Reconciler {
    /// This worker's id.
    pub worker_id: String,
    /// The manager.
    pub manager: Arc<Manager>,
    /// The registry.
    pub registry: Registry,
    /// The job kinds (for their abort transitions).
    pub kinds: Arc<Kinds<Env>>,
    /// Where failure events of stuck jobs go.
    pub broker: BrokerHandle,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Reconciler {
    async fn events(&self) -> Option<Events> {
        match self.broker.publisher().await {
            Ok(p) => Some(Events::new(p, self.registry.clone(), self.metrics.clone())),
            Err(_) => None,
        }
    }

    /// Runs one reconciliation with this worker's clients.
    pub async fn run_once(&self, fix: bool) -> Result<ReconcileReport> {
        let events = if fix { self.events().await } else { None };
        reconcile(&self.manager, &self.registry, &self.kinds, events.as_ref(), fix).await
    }

    /// Reconciles every `interval`, logging what it finds (fixing it with `fix`) and
    /// recording the report, until `shutdown`.
    pub async fn periodic(self, interval: Duration, fix: bool, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
            match self.run_once(fix).await {
                Ok(report) => {
                    if report.is_clean() {
                        tracing::debug!("reconciliation: registry and resources agree");
                    } else {
                        tracing::warn!(
                            orphans = report.orphans.len(),
                            missing = report.missing.len(),
                            stuck = report.stuck.len(),
                            abandoned = report.abandoned.len(),
                            unreachable = ?report.unreachable,
                            fixed = fix,
                            "reconciliation found differences: {}",
                            serde_json::to_string(&report).unwrap_or_default()
                        );
                    }
                    if let Err(e) = self.registry.record_reconciliation(&self.worker_id, fix, &report).await {
                        tracing::warn!(error = %e, "could not record the reconciliation report");
                    }
                }
                Err(e) => tracing::warn!(error = %e.chain(), "reconciliation failed"),
            }
        }
    }

    /// Takes reconciliations asked for through the API, runs them and writes their
    /// reports back, until `shutdown`.
    pub async fn on_request(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REQUEST_POLL) => {}
                _ = shutdown.cancelled() => return,
            }
            let asked = match self.registry.take_reconciliation(&self.worker_id).await {
                Ok(Some(asked)) => asked,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "could not look for requested reconciliations");
                    continue;
                }
            };
            tracing::info!(id = %asked.id, fix = asked.fix, requested_by = %asked.requested_by, "running a requested reconciliation");
            let outcome = self.run_once(asked.fix).await;
            let finished = match &outcome {
                Ok(report) => self.registry.finish_reconciliation(asked.id, Ok(report)).await,
                Err(e) => self.registry.finish_reconciliation(asked.id, Err(&e.chain())).await,
            };
            if let Err(e) = finished {
                tracing::warn!(error = %e, "could not record a requested reconciliation's report");
            }
        }
    }
}
