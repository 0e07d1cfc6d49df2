//! The reconciler: compares the registry with what exists on the Docker hosts (by label)
//! and the database servers (by comment), all of this deployment only, and reports
//! - orphans: resources of an instance the registry does not hold (or holds as removed),
//! - missing parts of instances the registry says are provisioned,
//! - stuck jobs: running past their deadline, or retrying long past their retry time.
//!
//! With `fix`, orphans are removed and stuck jobs failed with a clear error (and their
//! failure event). Workers run it periodically; `dfe-worker --reconcile` runs it once.

use std::collections::{BTreeMap, HashMap};

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use dfe_shared::event::EventError;
use dfe_shared::registry::instances::InstanceChange;
use dfe_shared::registry::{InstanceState, JobState, Registry};
use serde::Serialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::events::{Events, JobMeta};
use crate::manager::Manager;
use crate::provisioners::postgres::Postgres;

/// Seconds past its deadline before a running job counts as stuck.
const RUNNING_GRACE_SECS: f64 = 60.0;
/// Seconds past its retry time before a retrying job counts as stuck (its retry was lost).
const RETRY_GRACE_SECS: f64 = 300.0;

/// A resource without a live registry row.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Orphan {
    /// `container`, `volume`, `database` or `role`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// The instance its label or comment names.
    pub instance_id: String,
    /// The cluster or database server it is on.
    pub location: String,
    /// Whether `fix` removed it.
    pub removed: bool,
}

/// A part missing from an instance the registry says is provisioned.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Missing {
    /// The instance.
    pub instance_id: String,
    /// `container`, `volume`, `database` or `role`.
    pub kind: &'static str,
}

/// A job past its deadline.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Stuck {
    /// The job.
    pub job_id: String,
    /// Its kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its state.
    pub state: String,
    /// Its instance.
    pub instance_id: String,
    /// Whether `fix` failed it.
    pub failed: bool,
}

/// What a reconciliation found (and fixed).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    /// Resources without a live registry row.
    pub orphans: Vec<Orphan>,
    /// Parts missing from provisioned instances.
    pub missing: Vec<Missing>,
    /// Jobs past their deadline.
    pub stuck: Vec<Stuck>,
    /// Hosts or servers that could not be inspected (nothing about them is concluded).
    pub unreachable: Vec<String>,
}

impl Report {
    /// Whether everything agreed.
    pub fn is_clean(&self) -> bool {
        self.orphans.is_empty() && self.missing.is_empty() && self.stuck.is_empty() && self.unreachable.is_empty()
    }
}

/// Something of this deployment found on a host or server, and how to remove it.
enum Found {
    Container { cluster: usize, name: String },
    Volume { cluster: usize, name: String },
    Pg { server: usize, object: crate::provisioners::postgres::ManagedObject },
}

/// Runs one reconciliation.
pub async fn reconcile(manager: &Manager, registry: &Registry, events: Option<&Events>, fix: bool) -> Result<Report> {
    let deployment = manager.config().naming.deployment.clone();
    let mut report = Report::default();
    let clusters: Vec<_> = manager.clusters().cloned().collect();
    let mut servers = Vec::new();
    for (id, server) in &manager.config().databases {
        servers.push(Postgres::new(id, server)?);
    }

    // First what exists, then the registry: a provision that starts in between has claimed
    // its instance before making anything, so what it makes is never taken for an orphan.
    let mut found: Vec<(String, &'static str, Found)> = Vec::new();
    // What could not be seen cannot be called missing.
    let (mut docker_blind, mut pg_blind) = (false, false);
    for (i, cluster) in clusters.iter().enumerate() {
        let docker = match cluster.client().await {
            Ok(d) => d,
            Err(e) => {
                docker_blind = true;
                report.unreachable.push(format!("cluster {}: {}", cluster.id, e.chain()));
                continue;
            }
        };
        let filters = HashMap::from([(
            "label".to_owned(),
            vec!["dfe.managed=true".to_owned(), format!("dfe.deployment={deployment}")],
        )]);
        let containers = docker
            .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
            .await
            .map_err(Error::docker("listing containers"))?;
        for c in containers {
            let labels = c.labels.unwrap_or_default();
            let Some(instance) = labels.get("dfe.instance-id").cloned() else { continue };
            let name =
                c.names.unwrap_or_default().first().map(|n| n.trim_start_matches('/').to_owned()).unwrap_or_default();
            found.push((instance, "container", Found::Container { cluster: i, name }));
        }
        let volumes = docker
            .list_volumes(Some(ListVolumesOptionsBuilder::default().filters(&filters).build()))
            .await
            .map_err(Error::docker("listing volumes"))?
            .volumes
            .unwrap_or_default();
        for v in volumes {
            let Some(instance) = v.labels.get("dfe.instance-id").cloned() else { continue };
            found.push((instance, "volume", Found::Volume { cluster: i, name: v.name }));
        }
    }
    for (i, pg) in servers.iter().enumerate() {
        match pg.managed_objects(&deployment).await {
            Ok(objects) => {
                for o in objects {
                    found.push((o.instance_id.clone(), o.kind, Found::Pg { server: i, object: o }));
                }
            }
            Err(e) => {
                pg_blind = true;
                report.unreachable.push(e.chain());
            }
        }
    }

    let records = registry.instances(false, i64::MAX).await?;
    let live: HashMap<&str, InstanceState> = records.iter().map(|r| (r.instance_id.as_str(), r.state)).collect();
    let mut seen: BTreeMap<(String, &'static str), ()> = BTreeMap::new();
    for (instance, kind, what) in found {
        seen.insert((instance.clone(), kind), ());
        if live.contains_key(instance.as_str()) {
            continue;
        }
        let (name, location, removed) = match what {
            Found::Container { cluster, name } => {
                let c = &clusters[cluster];
                let removed = fix
                    && match c.client().await {
                        Ok(d) => d
                            .remove_container(&name, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
                            .await
                            .is_ok(),
                        Err(_) => false,
                    };
                (name, c.id.clone(), removed)
            }
            Found::Volume { cluster, name } => {
                let c = &clusters[cluster];
                let removed = fix
                    && match c.client().await {
                        Ok(d) => d
                            .remove_volume(&name, Some(RemoveVolumeOptionsBuilder::default().force(true).build()))
                            .await
                            .is_ok(),
                        Err(_) => false,
                    };
                (name, c.id.clone(), removed)
            }
            Found::Pg { server, object } => {
                let pg = &servers[server];
                let removed = fix && pg.drop_object(&object).await.is_ok();
                (object.name, pg.id().to_owned(), removed)
            }
        };
        report.orphans.push(Orphan { kind, name, instance_id: instance, location, removed });
    }

    // Parts of provisioned instances, where the provisioner makes them.
    for record in &records {
        if record.state != InstanceState::Provisioned {
            continue;
        }
        let provides =
            manager.config().provisioner(Some(record.guest_location.as_str())).map(|(_, h)| h.provides.clone());
        let Some(provides) = provides else { continue };
        let docker = !docker_blind;
        let pg = provides.db == "postgres" && !pg_blind;
        let expected: Vec<&'static str> = [
            (docker && provides.instance == "docker-container").then_some("container"),
            (docker && provides.storage == "docker-volume").then_some("volume"),
            pg.then_some("database"),
            pg.then_some("role"),
        ]
        .into_iter()
        .flatten()
        .collect();
        for kind in expected {
            if !seen.contains_key(&(record.instance_id.clone(), kind)) {
                report.missing.push(Missing { instance_id: record.instance_id.clone(), kind });
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
            let change = match job.kind {
                dfe_shared::job::JobKind::Export => InstanceChange::None,
                _ => InstanceChange::Failed,
            };
            let error_json = serde_json::to_value(&error).unwrap_or_default();
            failed = registry
                .complete_job(
                    &job.job_id,
                    &job.instance_id,
                    JobState::Failed,
                    Some(&json!({})),
                    Some(&error_json),
                    change,
                )
                .await?;
            if let (true, Some(events)) = (failed, events) {
                let meta = JobMeta {
                    job_id: job.job_id.clone(),
                    kind: job.kind,
                    instance_id: job.instance_id.clone(),
                    owner_id: job.request.get("owner-id").cloned(),
                    request: job.request.clone(),
                    timings: Default::default(),
                    pending: Default::default(),
                };
                let name = dfe_shared::event::names::failed(job.kind);
                events.emit(&meta, &name, json!({}), Some(error)).await?;
            }
        }
        report.stuck.push(Stuck {
            job_id: job.job_id,
            kind: job.kind.to_string(),
            state: job.state.as_str().to_owned(),
            instance_id: job.instance_id,
            failed,
        });
    }
    Ok(report)
}
