//! The provisioning manager: builds the fleet and every configured sub-provisioner once at
//! start, and plans each job from what its instance's claim recorded (provisioner, offering
//! items, Docker host, database server), so a job always works where its instance lives.

use std::collections::BTreeMap;
use std::sync::Arc;

use dfe_shared::config::{Config, ProvisionerHost};
use dfe_shared::ids::InstanceId;
use dfe_shared::placement;
use dfe_shared::records::InstanceRecord;

use crate::error::{Error, Result};
use crate::fleet::Fleet;
use crate::provisioners::{
    BuildContext, DatabaseProvisioner, Implementations, InstanceContext, InstanceProvisioner, Names, StorageProvisioner,
};

/// One provisioner host with its sub-provisioners.
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
}

/// Resolves provisioners for jobs.
pub struct Manager {
    config: Arc<Config>,
    fleet: Arc<Fleet>,
    implementations: Implementations,
    provisioners: BTreeMap<String, Provisioner>,
}

impl Manager {
    /// Builds the fleet and every configured provisioner; an unknown implementation name is
    /// an error here, at start, not in the middle of a job.
    pub fn new(config: Arc<Config>) -> Result<Manager> {
        let fleet = Arc::new(Fleet::new(&config));
        let implementations = Implementations::build(&BuildContext { config: &config, fleet: &fleet })?;
        let mut provisioners = BTreeMap::new();
        for (tag, host) in &config.provisioners.hosts {
            let p = &host.provides;
            let missing = || Error::Config(format!("provisioners.hosts.{tag}: an implementation was not built"));
            provisioners.insert(
                tag.clone(),
                Provisioner {
                    tag: tag.clone(),
                    host: host.clone(),
                    storage: implementations.storage.get(p.storage.as_str()).cloned().ok_or_else(missing)?,
                    db: implementations.database.get(p.db.as_str()).cloned().ok_or_else(missing)?,
                    instance: implementations.instance.get(p.instance.as_str()).cloned().ok_or_else(missing)?,
                },
            );
        }
        Ok(Manager { config, fleet, implementations, provisioners })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The fleet.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// Every built implementation (for the reconciler).
    pub fn implementations(&self) -> &Implementations {
        &self.implementations
    }

    /// The provisioner of a guest location (the default when empty).
    pub fn provisioner(&self, guest_location: &str) -> Result<&Provisioner> {
        let tag = Some(guest_location).filter(|g| !g.is_empty()).unwrap_or(&self.config.provisioners.default);
        self.provisioners
            .get(tag)
            .ok_or_else(|| Error::Invalid(format!("guest-location {tag:?} names no configured provisioner")))
    }

    /// What the configuration decides of a new instance (the claim places it by the plan).
    pub fn plan_new(&self, request: placement::Request<'_>) -> Result<placement::Plan> {
        placement::plan(&self.config, request).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Plans work on an instance from what its claim recorded. `cluster_id` overrides the
    /// recorded cluster (a deprovision may name one).
    pub fn plan(
        &self,
        record: &InstanceRecord,
        job_id: &str,
        attempt: u32,
        cluster_id: Option<&str>,
    ) -> Result<Plan<'_>> {
        let instance_id = InstanceId::parse(&record.instance_id)
            .map_err(|e| Error::Invalid(format!("registry instance id {:?}: {e}", record.instance_id)))?;
        let provisioner = self.provisioner(&record.guest_location)?;
        // The items chosen when the instance was claimed; an instance recorded before
        // choices were kept gets the suggested ones.
        let items = if record.offerings.is_empty() {
            placement::chosen_items(&provisioner.host, None).unwrap_or_default()
        } else {
            record.offerings.clone()
        };
        let offering = placement::attributes(&provisioner.host, &items);
        let host_id = cluster_id.or(record.host_id.as_deref()).or(record.cluster_id.as_deref());
        let docker = match host_id {
            Some(id) => Some(
                self.fleet
                    .host(id)
                    .cloned()
                    .ok_or_else(|| Error::Invalid(format!("Docker host {id:?} is not configured")))?,
            ),
            None => None,
        };
        // Instances claimed before servers were recorded live on the provisioner's first one.
        let first_server = provisioner.host.database.as_ref().and_then(|d| d.ids().first().map(|s| (*s).to_owned()));
        let server_id = record.database_server.clone().or(first_server);
        let server_id = server_id.as_deref();
        let database = match server_id {
            Some(id) => Some(
                self.fleet
                    .server(id)
                    .cloned()
                    .ok_or_else(|| Error::Invalid(format!("database server {id:?} is not configured")))?,
            ),
            None => None,
        };
        Ok(Plan {
            provisioner,
            ctx: InstanceContext {
                owner_id: record.owner_id.as_text(),
                job_id: job_id.to_owned(),
                attempt,
                names: Names::new(&self.config.naming.prefix, &instance_id),
                instance_id,
                deployment: self.config.naming.deployment.clone(),
                offering,
                resource_uri: provisioner.host.resource_uri.clone(),
                docker,
                database,
            },
        })
    }
}
