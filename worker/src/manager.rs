//! The provisioning manager: builds the sub-provisioners of every configured provisioner
//! host (DFE's `config/provisioners.php`) once at start, and plans each job by its
//! guest location, cluster and offerings.

use std::collections::BTreeMap;
use std::sync::Arc;

use dfe_shared::config::{Config, ProvisionerHost};
use dfe_shared::ids::InstanceId;
use dfe_shared::job::ProvisionJob;
use dfe_shared::registry::InstanceRecord;

use crate::error::{Error, Result};
use crate::provisioners::docker::DockerCluster;
use crate::provisioners::{
    build_database, build_instance, build_storage, BuildContext, DatabaseProvisioner, InstanceContext,
    InstanceProvisioner, Names, StorageProvisioner,
};

/// One provisioner host with its built sub-provisioners.
pub struct Provisioner {
    /// Its tag (the guest location).
    pub tag: String,
    /// Its configuration.
    pub host: ProvisionerHost,
    /// Storage sub-provisioner.
    pub storage: Arc<dyn StorageProvisioner>,
    /// Database sub-provisioner.
    pub db: Arc<dyn DatabaseProvisioner>,
    /// Instance sub-provisioner.
    pub instance: Arc<dyn InstanceProvisioner>,
}

/// A job resolved against the configuration: who does the work and on what.
pub struct Plan<'a> {
    /// The provisioner.
    pub provisioner: &'a Provisioner,
    /// What the sub-provisioners are told.
    pub ctx: InstanceContext,
    /// The Docker cluster chosen, if any.
    pub cluster_id: Option<String>,
}

/// Resolves provisioners for jobs.
pub struct Manager {
    config: Arc<Config>,
    provisioners: BTreeMap<String, Provisioner>,
    clusters: BTreeMap<String, Arc<DockerCluster>>,
}

impl Manager {
    /// Builds every configured provisioner; an unknown implementation name is an error here,
    /// at start, not in the middle of a job.
    pub fn new(config: Arc<Config>) -> Result<Manager> {
        let clusters =
            config.clusters.iter().map(|(id, c)| (id.clone(), Arc::new(DockerCluster::new(id, c.clone())))).collect();
        let mut provisioners = BTreeMap::new();
        for (tag, host) in &config.provisioners.hosts {
            let database = match &host.database {
                Some(id) => Some(
                    config
                        .databases
                        .get_key_value(id)
                        .map(|(k, v)| (k.as_str(), v))
                        .ok_or_else(|| Error::Config(format!("provisioner {tag}: no [databases.{id}]")))?,
                ),
                None => None,
            };
            let b = BuildContext { database, health_timeout_secs: config.worker.health_timeout_secs };
            let built = (|| -> Result<Provisioner> {
                Ok(Provisioner {
                    tag: tag.clone(),
                    host: host.clone(),
                    storage: build_storage(&host.provides.storage, &b)?,
                    db: build_database(&host.provides.db, &b)?,
                    instance: build_instance(&host.provides.instance, &b)?,
                })
            })()
            .map_err(|e| Error::Config(format!("provisioners.hosts.{tag}: {e}")))?;
            provisioners.insert(tag.clone(), built);
        }
        Ok(Manager { config, provisioners, clusters })
    }

    fn provisioner(&self, guest_location: Option<&str>) -> Result<&Provisioner> {
        let tag = guest_location.unwrap_or(&self.config.provisioners.default);
        self.provisioners
            .get(tag)
            .ok_or_else(|| Error::Invalid(format!("guest-location {tag:?} names no configured provisioner")))
    }

    fn cluster(&self, requested: Option<&str>, p: &Provisioner) -> Result<Option<(String, Arc<DockerCluster>)>> {
        let id = match requested.or(p.host.cluster.as_deref()) {
            Some(id) => id.to_owned(),
            None if self.clusters.len() == 1 => self.clusters.keys().next().cloned().unwrap_or_default(),
            None => return Ok(None),
        };
        let cluster = self
            .clusters
            .get(&id)
            .ok_or_else(|| Error::Invalid(format!("cluster-id {id:?} names no configured cluster")))?;
        Ok(Some((id, cluster.clone())))
    }

    /// The configured Docker clusters.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<DockerCluster>> {
        self.clusters.values()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Plans a provision.
    pub fn plan_provision(&self, job: &ProvisionJob, job_id: &str) -> Result<Plan<'_>> {
        let provisioner = self.provisioner(job.guest_location.as_ref().map(|g| g.as_str()))?;
        let offering =
            provisioner.host.resolve_offerings(job.offerings.as_ref()).map_err(|e| Error::Invalid(e.to_string()))?;
        let cluster = self.cluster(job.cluster_id.as_ref().map(|c| c.as_str()), provisioner)?;
        Ok(self.plan(provisioner, &job.instance_id, job.owner_id.as_text(), job_id, offering, cluster))
    }

    /// Plans work on an instance the registry knows (deprovision, export).
    pub fn plan_existing(&self, record: &InstanceRecord, job_id: &str, cluster_id: Option<&str>) -> Result<Plan<'_>> {
        let instance_id = InstanceId::parse(&record.instance_id)
            .map_err(|e| Error::Invalid(format!("registry instance id {:?}: {e}", record.instance_id)))?;
        let guest = Some(record.guest_location.as_str()).filter(|g| !g.is_empty());
        let provisioner = self.provisioner(guest)?;
        let cluster = self.cluster(cluster_id.or(record.cluster_id.as_deref()), provisioner)?;
        let owner = match &record.owner_id {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let offering = provisioner.host.resolve_offerings(None).unwrap_or_default();
        Ok(self.plan(provisioner, &instance_id, owner, job_id, offering, cluster))
    }

    fn plan<'a>(
        &self,
        provisioner: &'a Provisioner,
        instance_id: &InstanceId,
        owner_id: String,
        job_id: &str,
        offering: BTreeMap<String, serde_json::Value>,
        cluster: Option<(String, Arc<DockerCluster>)>,
    ) -> Plan<'a> {
        let (cluster_id, docker) = match cluster {
            Some((id, c)) => (Some(id), Some(c)),
            None => (None, None),
        };
        Plan {
            provisioner,
            ctx: InstanceContext {
                instance_id: instance_id.clone(),
                owner_id,
                job_id: job_id.to_owned(),
                names: Names::new(&self.config.naming.prefix, instance_id),
                deployment: self.config.naming.deployment.clone(),
                offering,
                resource_uri: provisioner.host.resource_uri.clone(),
                docker,
            },
            cluster_id,
        }
    }
}
