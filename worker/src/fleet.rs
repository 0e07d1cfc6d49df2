//! The fleet: the Docker hosts of every cluster and the database servers, as configured,
//! each with the client it is reached through. A cluster in the single-engine form
//! (`[clusters.<id>] docker-host = …`) is one host whose id is the cluster's. A Docker
//! host is one engine reached over its socket or TCP, with the API version negotiated on
//! first use (Debian's engine speaks 1.41, older than bollard's default).

use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::Duration;

use bollard::{Docker, API_DEFAULT_VERSION};
use dfe_shared::config::{Config, DatabaseServerConfig, HostConfig};
use tokio::sync::OnceCell;

use crate::error::{Error, Result};

/// Seconds a single Docker API call may take.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// A configured Docker engine.
pub struct DockerHost {
    /// The host id (unique across clusters).
    pub id: String,
    /// The cluster it belongs to.
    pub cluster_id: String,
    /// Its settings.
    pub config: HostConfig,
    /// The negotiated client and the engine's name, made on first use so a worker starts
    /// even while the engine is down.
    client: OnceCell<(Docker, String)>,
}

impl DockerHost {
    /// A host that connects on first use.
    pub fn new(id: &str, cluster_id: &str, config: HostConfig) -> DockerHost {
        DockerHost { id: id.to_owned(), cluster_id: cluster_id.to_owned(), config, client: OnceCell::new() }
    }

    /// The client, connecting and negotiating the API version the first time.
    pub async fn client(&self) -> Result<&Docker> {
        let (docker, _) = self.client.get_or_try_init(|| self.connect()).await?;
        Ok(docker)
    }

    /// The engine's name (its host name, from `docker info`).
    pub async fn engine_name(&self) -> Result<&str> {
        let (_, name) = self.client.get_or_try_init(|| self.connect()).await?;
        Ok(name)
    }

    /// Whether the engine answers now (`GET /_ping`), bounded by `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Result<()> {
        let ping = async {
            let docker = self.client().await?;
            docker.ping().await.map_err(Error::docker(format!("pinging the engine of host {}", self.id)))?;
            Ok(())
        };
        tokio::time::timeout(timeout, ping).await.map_err(|_| Error::Timeout(timeout.as_secs()))?
    }

    async fn connect(&self) -> Result<(Docker, String)> {
        let host = self.config.docker_host();
        let c = &self.config;
        let docker = if let Some(path) = host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        } else if host.starts_with("ssh://") {
            let target = crate::ssh::SshTarget {
                // openssh reads user and port out of the ssh:// form itself.
                destination: host.to_owned(),
                known_hosts: c
                    .ssh_known_hosts
                    .clone()
                    .ok_or_else(|| Error::Config(format!("host {}: ssh:// needs ssh-known-hosts", self.id)))?,
                key: c.ssh_key.clone(),
            };
            crate::ssh::docker(target, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        } else if let (Some(ca), Some(cert), Some(key)) = (&c.tls_ca, &c.tls_cert, &c.tls_key) {
            for (what, path) in [("tls-ca", ca), ("tls-cert", cert), ("tls-key", key)] {
                if !path.is_file() {
                    return Err(Error::Config(format!(
                        "host {}: {what} {} is not a readable file",
                        self.id,
                        path.display()
                    )));
                }
            }
            Docker::connect_with_ssl(host, key, cert, ca, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        } else {
            // Plain TCP, which the configuration check allows on loopback only.
            c.check(&self.id).map_err(Error::Config)?;
            Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        }
        .map_err(Error::docker(format!("connecting to {host}")))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(Error::docker(format!("negotiating the API version with {host}")))?;
        let info = docker.info().await.map_err(Error::docker(format!("reading engine info of {host}")))?;
        let name = info.name.unwrap_or_else(|| self.id.clone());
        tracing::info!(host = %self.id, engine = %name, version = ?docker.client_version(), "connected to Docker");
        Ok((docker, name))
    }
}

/// A configured database server.
pub struct DatabaseServer {
    /// Its id (`[databases.<id>]`).
    pub id: String,
    /// Its settings.
    pub config: DatabaseServerConfig,
}

/// Every Docker host and database server of the configuration.
#[derive(Default)]
pub struct Fleet {
    hosts: BTreeMap<String, Arc<DockerHost>>,
    servers: BTreeMap<String, Arc<DatabaseServer>>,
}

impl Fleet {
    /// The fleet of `config`; clients connect on first use, so a worker starts while an
    /// engine or a server is down.
    pub fn new(config: &Config) -> Fleet {
        let hosts = config
            .clusters
            .iter()
            .flat_map(|(cluster_id, c)| {
                c.host_configs(cluster_id)
                    .into_iter()
                    .map(move |(id, h)| (id.clone(), Arc::new(DockerHost::new(&id, cluster_id, h))))
            })
            .collect();
        let servers = config
            .databases
            .iter()
            .map(|(id, c)| (id.clone(), Arc::new(DatabaseServer { id: id.clone(), config: c.clone() })))
            .collect();
        Fleet { hosts, servers }
    }

    /// The Docker host `id`.
    pub fn host(&self, id: &str) -> Option<&Arc<DockerHost>> {
        self.hosts.get(id)
    }

    /// Every Docker host.
    pub fn hosts(&self) -> impl Iterator<Item = &Arc<DockerHost>> {
        self.hosts.values()
    }

    /// The database server `id`.
    pub fn server(&self, id: &str) -> Option<&Arc<DatabaseServer>> {
        self.servers.get(id)
    }

    /// Every database server.
    pub fn servers(&self) -> impl Iterator<Item = &Arc<DatabaseServer>> {
        self.servers.values()
    }

    /// Every database server of an engine (`postgres`, `mysql`).
    pub fn servers_of<'a>(&'a self, engine: &'a str) -> impl Iterator<Item = &'a Arc<DatabaseServer>> + 'a {
        self.servers.values().filter(move |s| s.config.engine == engine)
    }
}
