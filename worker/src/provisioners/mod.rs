//! Sub-provisioners: one trait per part of an instance, one file per implementation. The
//! manager builds them by the names in `provisioners.hosts.<tag>.provides`; adding an
//! implementation is one file here and one line in the `build_*` functions below.
//!
//! Every step looks before it makes (shuttle's rule): provisioning twice yields one of each
//! resource, and removing what does not exist succeeds, so a redelivered job simply goes on.

pub mod docker;
pub mod docker_container;
pub mod docker_volume;
pub mod noop;
pub mod postgres;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use dfe_shared::ids::InstanceId;
use dfe_shared::secret::Secret;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use docker::DockerCluster;

/// Deterministic names of what an instance is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Container `dfe-<instance-id>`.
    pub container: String,
    /// Volume `dfe-<instance-id>-storage`.
    pub volume: String,
    /// Database and role `dfe_<instance_id>` (shortened with a hash suffix past 63 bytes).
    pub database: String,
}

impl Names {
    /// The names for `instance` under `prefix`.
    pub fn new(prefix: &str, instance: &InstanceId) -> Names {
        Names {
            container: format!("{prefix}-{instance}"),
            volume: format!("{prefix}-{instance}-storage"),
            database: pg_name(prefix, instance),
        }
    }
}

/// PostgreSQL truncates identifiers past 63 bytes, which could make two instances share a
/// database; long names keep a prefix and get a hash of the full id instead.
fn pg_name(prefix: &str, instance: &InstanceId) -> String {
    let full = format!("{prefix}_{}", instance.snake());
    if full.len() <= 63 {
        return full;
    }
    let digest = hex::encode(Sha256::digest(instance.as_str().as_bytes()));
    format!("{}_{}", &full[..54], &digest[..8])
}

/// What every sub-provisioner is told about the instance it works on.
#[derive(Clone)]
pub struct InstanceContext {
    /// The instance.
    pub instance_id: InstanceId,
    /// Its owner, as text (labels and env).
    pub owner_id: String,
    /// The job doing the work (a label).
    pub job_id: String,
    /// The deployment (a label), see `naming.deployment`.
    pub deployment: String,
    /// Names of its parts.
    pub names: Names,
    /// Attributes of the chosen offering items (`image`, `memory`, `cpus`, …).
    pub offering: BTreeMap<String, serde_json::Value>,
    /// Path on the instance where the console talks to it.
    pub resource_uri: String,
    /// The Docker cluster it lives on, when the provisioner uses Docker.
    pub docker: Option<Arc<DockerCluster>>,
}

impl InstanceContext {
    /// The Docker cluster, or a configuration error naming the implementation that needs it.
    pub fn docker(&self, who: &str) -> Result<&DockerCluster> {
        self.docker.as_deref().ok_or_else(|| {
            Error::Config(format!("{who} needs a Docker cluster: set [clusters.<id>] and the provisioner's cluster"))
        })
    }

    /// The storage mount path inside the container (offering `storage-path`, default `/storage`).
    pub fn storage_path(&self) -> String {
        self.offering.get("storage-path").and_then(|v| v.as_str()).unwrap_or("/storage").to_owned()
    }
}

/// What the storage step made.
#[derive(Debug, Clone, Default)]
pub struct StorageInfo {
    /// The volume name, when there is one.
    pub volume: Option<String>,
}

/// What the database step made. The password travels to the instance step and nowhere else.
#[derive(Debug, Clone)]
pub struct DatabaseInfo {
    /// `DB_CONNECTION`, e.g. `pgsql`.
    pub connection: String,
    /// Address instances reach the server at.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database name.
    pub database: String,
    /// Role name.
    pub username: String,
    /// Role password (fresh on every provision run).
    pub password: Secret,
    /// Which configured server holds it.
    pub server: String,
}

/// What the instance step made.
#[derive(Debug, Clone, Default)]
pub struct InstanceInfo {
    /// Container name.
    pub container: Option<String>,
    /// Container id.
    pub container_id: Option<String>,
    /// Docker host (engine name).
    pub host: Option<String>,
    /// Full URL of the resource-uri.
    pub resource_uri: Option<String>,
    /// How long the instance took to answer on its resource-uri (part of the step's time).
    pub health_wait: Option<std::time::Duration>,
}

/// Makes, removes, exports and imports an instance's storage.
#[async_trait]
pub trait StorageProvisioner: Send + Sync {
    /// Ensures the storage exists.
    async fn provision(&self, ctx: &InstanceContext) -> Result<StorageInfo>;
    /// Removes the storage; absent storage is success.
    async fn deprovision(&self, ctx: &InstanceContext) -> Result<()>;
    /// Writes the storage's contents to `dest` as a tar of relative paths; returns how many
    /// entries (links, devices) were left out.
    async fn export(&self, ctx: &InstanceContext, dest: &Path) -> Result<u64>;
    /// Loads `tar` into the storage (`clean`: empties it first). The current contents are
    /// saved to `backup` first and put back when loading fails, so a failed import leaves
    /// the storage as it was.
    async fn import(&self, ctx: &InstanceContext, tar: &Path, clean: bool, backup: &Path) -> Result<()>;
    /// Puts `backup` (written by [`StorageProvisioner::import`]) back, replacing the contents.
    async fn restore(&self, ctx: &InstanceContext, backup: &Path) -> Result<()>;
}

/// Makes, removes, exports and imports an instance's database and role.
#[async_trait]
pub trait DatabaseProvisioner: Send + Sync {
    /// Ensures the role and database exist, with a fresh password.
    async fn provision(&self, ctx: &InstanceContext) -> Result<DatabaseInfo>;
    /// Ends open sessions, drops the database and the role; absent ones are success.
    async fn deprovision(&self, ctx: &InstanceContext) -> Result<()>;
    /// Dumps the database, consistently (one transaction), to `dest` as plain SQL that
    /// restores under another role and database name.
    async fn export(&self, ctx: &InstanceContext, dest: &Path) -> Result<()>;
    /// Restores `sql` into a fresh database owned by the instance's role and swaps it in;
    /// the previous database is kept until [`DatabaseProvisioner::commit_import`] or put
    /// back by [`DatabaseProvisioner::rollback_import`]. On error nothing has changed.
    async fn import(&self, ctx: &InstanceContext, sql: &Path) -> Result<()>;
    /// Drops the database kept by the last import.
    async fn commit_import(&self, ctx: &InstanceContext) -> Result<()>;
    /// Puts the database kept by the last import back.
    async fn rollback_import(&self, ctx: &InstanceContext) -> Result<()>;
}

/// Makes and removes the instance itself.
#[async_trait]
pub trait InstanceProvisioner: Send + Sync {
    /// Ensures the instance runs with the given storage and database, and answers.
    async fn provision(&self, ctx: &InstanceContext, storage: &StorageInfo, db: &DatabaseInfo) -> Result<InstanceInfo>;
    /// Removes the instance; an absent one is success.
    async fn deprovision(&self, ctx: &InstanceContext) -> Result<()>;
}

/// Settings the implementations are built from.
pub struct BuildContext<'a> {
    /// The database server of the provisioner, if it names one.
    pub database: Option<(&'a str, &'a dfe_shared::config::DatabaseServerConfig)>,
    /// Seconds to wait for the resource-uri.
    pub health_timeout_secs: u64,
}

/// The storage implementation called `name`.
pub fn build_storage(name: &str, _b: &BuildContext<'_>) -> Result<Arc<dyn StorageProvisioner>> {
    Ok(match name {
        "docker-volume" => Arc::new(docker_volume::DockerVolume),
        "noop" => Arc::new(noop::Noop),
        other => return Err(unknown("storage", other, &["docker-volume", "noop"])),
    })
}

/// The database implementation called `name`.
pub fn build_database(name: &str, b: &BuildContext<'_>) -> Result<Arc<dyn DatabaseProvisioner>> {
    Ok(match name {
        "postgres" => {
            let (id, server) = b
                .database
                .ok_or_else(|| Error::Config("the postgres provisioner needs `database = \"<server id>\"`".into()))?;
            Arc::new(postgres::Postgres::new(id, server)?)
        }
        "noop" => Arc::new(noop::Noop),
        other => return Err(unknown("db", other, &["postgres", "noop"])),
    })
}

/// The instance implementation called `name`.
pub fn build_instance(name: &str, b: &BuildContext<'_>) -> Result<Arc<dyn InstanceProvisioner>> {
    Ok(match name {
        "docker-container" => Arc::new(docker_container::DockerContainer::new(b.health_timeout_secs)),
        "noop" => Arc::new(noop::Noop),
        other => return Err(unknown("instance", other, &["docker-container", "noop"])),
    })
}

fn unknown(part: &str, name: &str, known: &[&str]) -> Error {
    Error::Config(format!("provides.{part} = {name:?} is not a known implementation (known: {})", known.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_fit_postgres() {
        let id = InstanceId::parse("acme-prod").expect("valid");
        let n = Names::new("dfe", &id);
        assert_eq!(n.container, "dfe-acme-prod");
        assert_eq!(n.volume, "dfe-acme-prod-storage");
        assert_eq!(n.database, "dfe_acme_prod");
        let a = InstanceId::parse(&format!("a{}", "b".repeat(62))).expect("valid");
        let b = InstanceId::parse(&format!("a{}c", "b".repeat(61))).expect("valid");
        let (na, nb) = (Names::new("dfe", &a).database, Names::new("dfe", &b).database);
        assert!(na.len() <= 63 && nb.len() <= 63);
        assert_ne!(na, nb, "long ids must not collide after truncation");
    }
}
