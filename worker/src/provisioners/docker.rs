//! A Docker cluster: one engine reached over its socket or TCP, with the API version
//! negotiated on first use (Debian's engine speaks 1.41, older than bollard's default).

use bollard::{Docker, API_DEFAULT_VERSION};
use dfe_shared::config::ClusterConfig;
use tokio::sync::OnceCell;

use crate::error::{Error, Result};

/// Seconds a single Docker API call may take.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// A configured Docker engine.
pub struct DockerCluster {
    /// The cluster id from the configuration.
    pub id: String,
    /// Its settings.
    pub config: ClusterConfig,
    /// The negotiated client and the engine's name, made on first use so a worker starts
    /// even while the engine is down.
    client: OnceCell<(Docker, String)>,
}

impl DockerCluster {
    /// A cluster that connects on first use.
    pub fn new(id: &str, config: ClusterConfig) -> DockerCluster {
        DockerCluster { id: id.to_owned(), config, client: OnceCell::new() }
    }

    /// The client, connecting and negotiating the API version the first time.
    pub async fn client(&self) -> Result<&Docker> {
        let (docker, _) = self.client.get_or_try_init(|| self.connect()).await?;
        Ok(docker)
    }

    /// The engine's name (its host name), for the registry's `host`.
    pub async fn host_name(&self) -> Result<&str> {
        let (_, name) = self.client.get_or_try_init(|| self.connect()).await?;
        Ok(name)
    }

    async fn connect(&self) -> Result<(Docker, String)> {
        let host = &self.config.docker_host;
        let docker = if let Some(path) = host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            if self.config.tls_cert_path.is_some() {
                return Err(Error::Config(format!(
                    "cluster {}: TLS to Docker engines is not built in yet; use an SSH tunnel or a TLS-terminating proxy",
                    self.id
                )));
            }
            Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        } else {
            return Err(Error::Config(format!("cluster {}: docker-host {host:?} must start with unix:// or tcp://", self.id)));
        }
        .map_err(Error::docker(format!("connecting to {host}")))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(Error::docker(format!("negotiating the API version with {host}")))?;
        let info = docker.info().await.map_err(Error::docker(format!("reading engine info of {host}")))?;
        let name = info.name.unwrap_or_else(|| self.id.clone());
        tracing::info!(cluster = %self.id, engine = %name, version = ?docker.client_version(), "connected to Docker");
        Ok((docker, name))
    }
}

/// Whether a bollard error is the engine's 404.
pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// Whether a bollard error is the engine's 409 (conflict, e.g. removal already in progress).
pub fn is_conflict(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 409, .. })
}
