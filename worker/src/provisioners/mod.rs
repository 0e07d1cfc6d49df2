//! Sub-provisioners: one trait per part of an instance, one file per implementation.
//!
//! Each implementation owns the whole life of what it makes: making it, removing it, and
//! the inventory the reconciler compares against the registry ([`Inventory`]). The manager
//! builds each implementation named in `provisioners.hosts.<tag>.provides` once, from the
//! tables below; the reconciler, snapshots and metrics iterate what was built. Adding an
//! implementation is one file here and one line in a table.
//!
//! Every step looks before it makes (shuttle's rule), and making what already exists counts
//! as found: provisioning twice yields one of each resource, and removing what does not
//! exist succeeds, so a redelivered job simply goes on.

pub mod docker;
pub mod docker_container;
pub mod docker_volume;
pub mod mysql;
pub mod noop;
pub mod postgres;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use dfe_shared::config::Config;
use dfe_shared::ids::InstanceId;
use dfe_shared::secret::Secret;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fleet::{DatabaseServer, DockerHost, Fleet};

/// The storage implementations, by name: the one line to add for a new one.
const STORAGE: &[(&str, BuildStorage)] = &[("docker-volume", docker_volume::build), ("noop", noop::build_storage)];
/// The database implementations, by name.
const DATABASE: &[(&str, BuildDatabase)] =
    &[("postgres", postgres::build), ("mysql", mysql::build), ("noop", noop::build_database)];
/// The instance implementations, by name.
const INSTANCE: &[(&str, BuildInstance)] =
    &[("docker-container", docker_container::build), ("noop", noop::build_instance)];

type BuildStorage = fn(&BuildContext<'_>) -> Result<Arc<dyn StorageProvisioner>>;
type BuildDatabase = fn(&BuildContext<'_>) -> Result<Arc<dyn DatabaseProvisioner>>;
type BuildInstance = fn(&BuildContext<'_>) -> Result<Arc<dyn InstanceProvisioner>>;

/// What implementations are built from.
pub struct BuildContext<'a> {
    /// The whole configuration.
    pub config: &'a Config,
    /// The Docker hosts and database servers.
    pub fleet: &'a Arc<Fleet>,
}

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
            database: db_name(prefix, instance, 63),
        }
    }
}

/// `<prefix>_<instance_id>`, at most `limit` bytes: database servers truncate (PostgreSQL,
/// past 63 bytes) or refuse long identifiers, which could make two instances share a
/// database; long names keep a prefix and get a hash of the full id instead.
pub fn db_name(prefix: &str, instance: &InstanceId, limit: usize) -> String {
    let full = format!("{prefix}_{}", instance.snake());
    if full.len() <= limit {
        return full;
    }
    let digest = hex::encode(Sha256::digest(instance.as_str().as_bytes()));
    format!("{}_{}", &full[..limit - 9], &digest[..8])
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
    /// Which run of the job this is (1 for the first): a later run may find what an earlier,
    /// dead one left running, and ends it first.
    pub attempt: u32,
    /// The deployment (a label), see `naming.deployment`.
    pub deployment: String,
    /// Names of its parts.
    pub names: Names,
    /// Attributes of the chosen offering items (`image`, `memory`, `cpus`, …).
    pub offering: BTreeMap<String, serde_json::Value>,
    /// Path on the instance where the console talks to it.
    pub resource_uri: String,
    /// The Docker host it lives on, when the provisioner uses Docker.
    pub docker: Option<Arc<DockerHost>>,
    /// The database server of its database, when the provisioner makes one.
    pub database: Option<Arc<DatabaseServer>>,
}

impl InstanceContext {
    /// The Docker host, or a configuration error naming the implementation that needs it.
    pub fn docker(&self, who: &str) -> Result<&DockerHost> {
        self.docker.as_deref().ok_or_else(|| {
            Error::Config(format!("{who} needs a Docker host: set [clusters.<id>] and the provisioner's cluster"))
        })
    }

    /// The database server, or a configuration error naming the implementation that needs it.
    pub fn database(&self, who: &str) -> Result<&DatabaseServer> {
        self.database.as_deref().ok_or_else(|| {
            Error::Config(format!("{who} needs a database server: set the provisioner's `database = \"<server id>\"`"))
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
    /// Docker host id.
    pub host: Option<String>,
    /// Full URL of the resource-uri.
    pub resource_uri: Option<String>,
    /// How long the instance took to answer on its resource-uri (part of the step's time).
    pub health_wait: Option<std::time::Duration>,
}

/// Something of this deployment an implementation found on a host or server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// `container`, `volume`, `database`, `role`, …: one of the implementation's
    /// [`Inventory::parts`].
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// The instance its label or comment names.
    pub instance_id: String,
    /// The host or server it is on.
    pub location: String,
}

/// What an implementation found: the parts, and the hosts or servers it could not see
/// (nothing about those is concluded).
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The parts of this deployment.
    pub parts: Vec<Part>,
    /// Hosts or servers that could not be inspected, with why.
    pub unreachable: Vec<String>,
}

/// What the reconciler asks of every implementation.
#[async_trait]
pub trait Inventory: Send + Sync {
    /// The implementation's name in `provides` (`docker-volume`, `postgres`, …).
    fn name(&self) -> &'static str;
    /// The kinds of part it makes for every instance (none for `noop`).
    fn parts(&self) -> &'static [&'static str];
    /// Everything of `deployment` on every host or server it knows.
    async fn inventory(&self, deployment: &str) -> Found;
    /// Removes a part found by [`Inventory::inventory`] (an orphan).
    async fn remove_part(&self, part: &Part) -> Result<()>;
}

/// Makes, removes, exports and imports an instance's storage.
#[async_trait]
pub trait StorageProvisioner: Inventory {
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
pub trait DatabaseProvisioner: Inventory {
    /// The engine, as recorded in a snapshot's manifest (`postgres`, `mysql`, `none`): the
    /// `engine` of the database servers it works on.
    fn engine(&self) -> &'static str;
    /// Whether `server` answers now (a connection and a trivial statement): the fleet's
    /// health probe of a server of this engine.
    async fn probe(&self, server: &DatabaseServer) -> Result<()>;
    /// What an instance of `ctx` is given to reach its database, with a fresh password,
    /// without a word to the server: the container can then be made while the database is.
    fn connection(&self, ctx: &InstanceContext) -> Result<DatabaseInfo>;
    /// Ensures the role and database exist, the role with `info`'s password (from
    /// [`DatabaseProvisioner::connection`]).
    async fn provision(&self, ctx: &InstanceContext, info: &DatabaseInfo) -> Result<()>;
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
    /// Refuses the role's logins (ending its sessions) without removing anything.
    async fn suspend(&self, ctx: &InstanceContext) -> Result<()>;
    /// Allows the role's logins again.
    async fn resume(&self, ctx: &InstanceContext) -> Result<()>;
}

/// Makes and removes the instance itself.
#[async_trait]
pub trait InstanceProvisioner: Inventory {
    /// Ensures the instance runs with the given storage and database, and answers.
    async fn provision(&self, ctx: &InstanceContext, storage: &StorageInfo, db: &DatabaseInfo) -> Result<InstanceInfo>;
    /// Removes the instance; an absent one is success.
    async fn deprovision(&self, ctx: &InstanceContext) -> Result<()>;
    /// Stops the instance without removing anything (stopped already is success).
    async fn suspend(&self, ctx: &InstanceContext) -> Result<()>;
    /// Starts a stopped instance again and waits until it answers; what it answers at.
    async fn resume(&self, ctx: &InstanceContext) -> Result<InstanceInfo>;
    /// The database connection the instance runs with, read back from it (`None`: it keeps
    /// none). A move that leaves the database where it is gives the new container the same
    /// one: provisioning the database again would issue a new password, and the old
    /// container, started again when the move fails, would no longer log in.
    async fn connection(&self, ctx: &InstanceContext) -> Result<Option<DatabaseInfo>>;
}

/// Every implementation named by the configuration, built once.
#[derive(Default)]
pub struct Implementations {
    /// Storage implementations by name.
    pub storage: BTreeMap<&'static str, Arc<dyn StorageProvisioner>>,
    /// Database implementations by name.
    pub database: BTreeMap<&'static str, Arc<dyn DatabaseProvisioner>>,
    /// Instance implementations by name.
    pub instance: BTreeMap<&'static str, Arc<dyn InstanceProvisioner>>,
}

fn pick<B: Copy>(table: &[(&'static str, B)], part: &str, name: &str) -> Result<(&'static str, B)> {
    table.iter().find(|(n, _)| *n == name).copied().ok_or_else(|| {
        let known: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
        Error::Config(format!("provides.{part} = {name:?} is not a known implementation (known: {})", known.join(", ")))
    })
}

impl Implementations {
    /// Builds each implementation a provisioner names; an unknown name is an error here,
    /// at start, not in the middle of a job.
    pub fn build(b: &BuildContext<'_>) -> Result<Implementations> {
        let mut all = Implementations::default();
        for (tag, host) in &b.config.provisioners.hosts {
            let context = |e: Error| Error::Config(format!("provisioners.hosts.{tag}: {e}"));
            let (name, build) = pick(STORAGE, "storage", &host.provides.storage).map_err(context)?;
            if !all.storage.contains_key(name) {
                all.storage.insert(name, build(b).map_err(context)?);
            }
            let (name, build) = pick(DATABASE, "db", &host.provides.db).map_err(context)?;
            if !all.database.contains_key(name) {
                all.database.insert(name, build(b).map_err(context)?);
            }
            let (name, build) = pick(INSTANCE, "instance", &host.provides.instance).map_err(context)?;
            if !all.instance.contains_key(name) {
                all.instance.insert(name, build(b).map_err(context)?);
            }
        }
        Ok(all)
    }

    /// Every implementation, for the reconciler: each once, whatever it makes.
    pub fn inventories(&self) -> Vec<Arc<dyn Inventory>> {
        let mut out: Vec<Arc<dyn Inventory>> = Vec::new();
        out.extend(self.instance.values().map(|i| i.clone() as Arc<dyn Inventory>));
        out.extend(self.storage.values().map(|i| i.clone() as Arc<dyn Inventory>));
        out.extend(self.database.values().map(|i| i.clone() as Arc<dyn Inventory>));
        out
    }
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
        assert_eq!(db_name("dfe", &a, 32).len(), 32);
    }
}
