//! `docker-container`: the instance is a container `dfe-<id>` running the offering's image,
//! with its database settings in the environment, its volume mounted at the storage path,
//! resource limits from the offering and its port published on the cluster's (loopback by
//! default) address. It counts as provisioned only once its resource-uri answers over HTTP.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, RemoveContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder,
};

use super::docker::{is_conflict, is_not_found};
use super::docker_volume::labels;
use super::{
    BuildContext, DatabaseInfo, Found, InstanceContext, InstanceInfo, InstanceProvisioner, Inventory, Part, StorageInfo,
};
use crate::error::{Error, Result};
use crate::fleet::DockerHost;
use crate::fleet::Fleet;
use dfe_shared::secret::Secret;

/// Default pids limit: enough for an application, not enough for a fork bomb.
const DEFAULT_PIDS: i64 = 512;
/// Default container port of the application.
const DEFAULT_PORT: u64 = 80;

/// The Docker container instance provisioner.
pub struct DockerContainer {
    health_timeout: Duration,
    http: reqwest::Client,
    fleet: std::sync::Arc<Fleet>,
}

/// Builds it (see the tables in [`super`]): it waits up to `worker.health-timeout-secs`
/// for the resource-uri.
pub fn build(b: &BuildContext<'_>) -> Result<std::sync::Arc<dyn InstanceProvisioner>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
        .map_err(|e| Error::Config(format!("building the HTTP client for health checks: {e}")))?;
    Ok(std::sync::Arc::new(DockerContainer {
        health_timeout: Duration::from_secs(b.config.worker.health_timeout_secs),
        http,
        fleet: b.fleet.clone(),
    }))
}

#[async_trait]
impl Inventory for DockerContainer {
    fn name(&self) -> &'static str {
        "docker-container"
    }

    fn parts(&self) -> &'static [&'static str] {
        &["container"]
    }

    async fn inventory(&self, deployment: &str) -> Found {
        super::docker::labelled(self.fleet.hosts(), deployment, "container").await
    }

    async fn remove_part(&self, part: &Part) -> Result<()> {
        let host = self
            .fleet
            .host(&part.location)
            .ok_or_else(|| Error::Config(format!("no Docker host {}", part.location)))?;
        remove(host, &part.name).await
    }
}

/// Whether the container `name` on the engine carries `instance`'s label (`Ok(None)`: there
/// is no such container).
async fn owned_by(docker: &bollard::Docker, name: &str, instance: &str) -> Result<Option<bool>> {
    match docker.inspect_container(name, None::<InspectContainerOptions>).await {
        Ok(existing) => {
            let owner = existing.config.as_ref().and_then(|c| c.labels.as_ref()).and_then(|l| l.get("dfe.instance-id"));
            Ok(Some(owner.map(String::as_str) == Some(instance)))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(Error::docker(format!("inspecting container {name}"))(e)),
    }
}

/// Resource limits and the container port, read from the offering's attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Bytes of memory, if limited.
    pub memory: Option<i64>,
    /// CPUs in billionths, if limited.
    pub nano_cpus: Option<i64>,
    /// Process limit.
    pub pids: i64,
    /// The application's port inside the container.
    pub port: u64,
}

impl Limits {
    /// Reads `memory` (bytes or `512m`/`1g`), `cpus` (e.g. `0.5`), `pids` and `port`.
    pub fn from_offering(o: &std::collections::BTreeMap<String, serde_json::Value>) -> Result<Limits> {
        let memory = match o.get("memory") {
            None => None,
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::String(s)) => Some(
                parse_bytes(s)
                    .ok_or_else(|| Error::Config(format!("offering memory {s:?} is not a size like 256m or 1g")))?,
            ),
            Some(other) => return Err(Error::Config(format!("offering memory {other} is not a size"))),
        };
        let nano_cpus = match o.get("cpus") {
            None => None,
            Some(v) => {
                let cpus = v
                    .as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|c| *c > 0.0)
                    .ok_or_else(|| Error::Config(format!("offering cpus {v} is not a positive number")))?;
                Some((cpus * 1e9) as i64)
            }
        };
        let pids = o.get("pids").and_then(|v| v.as_i64()).unwrap_or(DEFAULT_PIDS);
        let port = o.get("port").and_then(|v| v.as_u64()).unwrap_or(DEFAULT_PORT);
        Ok(Limits { memory, nano_cpus, pids, port })
    }
}

fn parse_bytes(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1i64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.trim().parse::<i64>().ok()?.checked_mul(mult)
}

async fn remove(cluster: &DockerHost, name: &str) -> Result<()> {
    let docker = cluster.client().await?;
    let opts = RemoveContainerOptionsBuilder::default().force(true).v(false).build();
    match docker.remove_container(name, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // 409: a removal is already in progress; wait for it to finish.
        Err(e) if is_conflict(&e) => {
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                match docker.inspect_container(name, None::<InspectContainerOptions>).await {
                    Err(e) if is_not_found(&e) => return Ok(()),
                    _ => continue,
                }
            }
            Err(Error::docker(format!("removing container {name}"))(e))
        }
        Err(e) => Err(Error::docker(format!("removing container {name}"))(e)),
    }
}

#[async_trait]
impl InstanceProvisioner for DockerContainer {
    async fn provision(&self, ctx: &InstanceContext, storage: &StorageInfo, db: &DatabaseInfo) -> Result<InstanceInfo> {
        let cluster = ctx.docker("docker-container")?;
        let docker = cluster.client().await?;
        let name = &ctx.names.container;
        let image = ctx
            .offering
            .get("image")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::Config("the chosen offering has no `image` attribute".into()))?
            .to_owned();
        let limits = Limits::from_offering(&ctx.offering)?;

        let port_key = format!("{}/tcp", limits.port);
        let storage_path = ctx.storage_path();
        let env = vec![
            format!("DFE_INSTANCE_ID={}", ctx.instance_id),
            format!("DFE_OWNER_ID={}", ctx.owner_id),
            format!("DFE_STORAGE_PATH={storage_path}"),
            format!("DB_CONNECTION={}", db.connection),
            format!("DB_HOST={}", db.host),
            format!("DB_PORT={}", db.port),
            format!("DB_DATABASE={}", db.database),
            format!("DB_USERNAME={}", db.username),
            format!("DB_PASSWORD={}", db.password.expose()),
        ];
        let mounts = storage.volume.as_ref().map(|v| {
            vec![Mount {
                target: Some(storage_path.clone()),
                source: Some(v.clone()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            }]
        });
        let host_config = HostConfig {
            memory: limits.memory,
            nano_cpus: limits.nano_cpus,
            pids_limit: Some(limits.pids),
            port_bindings: Some(HashMap::from([(
                port_key.clone(),
                Some(vec![PortBinding {
                    host_ip: Some(cluster.config.publish_address().to_owned()),
                    host_port: Some(String::new()),
                }]),
            )])),
            mounts,
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            // Joins the cluster's network (by name) instead of the engine's default bridge.
            network_mode: cluster.config.network.clone(),
            ..Default::default()
        };
        let config = ContainerCreateBody {
            image: Some(image.clone()),
            env: Some(env),
            labels: Some(labels(ctx)),
            exposed_ports: Some(vec![port_key.clone()]),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = || Some(CreateContainerOptionsBuilder::default().name(name).build());
        // Made without looking first (one round trip less on every provision): the engine's
        // answers say what a look would have. 404 is the image missing; 409 the name taken.
        let failed = |e: bollard::errors::Error| match is_not_found(&e) {
            true => Error::ImageNotFound { image: image.clone() },
            false => Error::docker(format!("creating container {name}"))(e),
        };
        let created = match docker.create_container(options(), config.clone()).await {
            Ok(created) => created,
            // 409: a container of this name exists. One left by an earlier run of this job
            // (or a dead worker's request the engine finished after all) is replaced: the
            // database step has just issued a fresh password, which only a new container
            // can carry. Anyone else's is not touched.
            Err(e) if is_conflict(&e) => {
                match owned_by(docker, name, ctx.instance_id.as_str()).await? {
                    Some(true) => {
                        tracing::info!(container = %name, "replacing the container an earlier run left");
                        remove(cluster, name).await?;
                    }
                    Some(false) => {
                        return Err(Error::Conflict(format!(
                            "container {name} exists and does not belong to instance {}",
                            ctx.instance_id
                        )))
                    }
                    // Removed meanwhile.
                    None => {}
                }
                docker.create_container(options(), config).await.map_err(failed)?
            }
            Err(e) => return Err(failed(e)),
        };
        docker
            .start_container(name, None::<StartContainerOptions>)
            .await
            .map_err(Error::docker(format!("starting container {name}")))?;

        let (url, health_wait) = self.answering(ctx, cluster, &limits).await?;
        Ok(InstanceInfo {
            container: Some(name.clone()),
            container_id: Some(created.id),
            host: Some(cluster.id.clone()),
            resource_uri: Some(url),
            health_wait: Some(health_wait),
        })
    }

    async fn deprovision(&self, ctx: &InstanceContext) -> Result<()> {
        remove(ctx.docker("docker-container")?, &ctx.names.container).await
    }

    async fn suspend(&self, ctx: &InstanceContext) -> Result<()> {
        let cluster = ctx.docker("docker-container")?;
        let docker = cluster.client().await?;
        let name = &ctx.names.container;
        // Stopped, not paused: a stopped container holds no memory or CPU, and with the
        // `unless-stopped` policy it stays stopped across an engine restart.
        match docker.stop_container(name, Some(StopContainerOptionsBuilder::default().t(10).build())).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) if is_not_found(&e) => Err(Error::Conflict(format!("container {name} does not exist"))),
            Err(e) => Err(Error::docker(format!("stopping container {name}"))(e)),
        }
    }

    async fn resume(&self, ctx: &InstanceContext) -> Result<InstanceInfo> {
        let cluster = ctx.docker("docker-container")?;
        let docker = cluster.client().await?;
        let name = &ctx.names.container;
        let limits = Limits::from_offering(&ctx.offering)?;
        match docker.start_container(name, None::<StartContainerOptions>).await {
            Ok(()) => {}
            // 304: already running.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => {}
            Err(e) if is_not_found(&e) => return Err(Error::Conflict(format!("container {name} does not exist"))),
            Err(e) => return Err(Error::docker(format!("starting container {name}"))(e)),
        }
        // The engine may give the port another host port on a new start: read it again.
        let (url, health_wait) = self.answering(ctx, cluster, &limits).await?;
        Ok(InstanceInfo {
            container: Some(name.clone()),
            container_id: None,
            host: Some(cluster.id.clone()),
            resource_uri: Some(url),
            health_wait: Some(health_wait),
        })
    }

    async fn connection(&self, ctx: &InstanceContext) -> Result<Option<DatabaseInfo>> {
        let cluster = ctx.docker("docker-container")?;
        let docker = cluster.client().await?;
        let name = &ctx.names.container;
        let inspected = match docker.inspect_container(name, None::<InspectContainerOptions>).await {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => return Err(Error::Conflict(format!("container {name} does not exist"))),
            Err(e) => return Err(Error::docker(format!("inspecting container {name}"))(e)),
        };
        let env: HashMap<&str, &str> = inspected
            .config
            .as_ref()
            .and_then(|c| c.env.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let get = |k: &str| env.get(k).map(|v| (*v).to_owned());
        let (Some(connection), Some(host), Some(port), Some(database), Some(username), Some(password)) = (
            get("DB_CONNECTION"),
            get("DB_HOST"),
            get("DB_PORT").and_then(|p| p.parse().ok()),
            get("DB_DATABASE"),
            get("DB_USERNAME"),
            get("DB_PASSWORD"),
        ) else {
            return Ok(None);
        };
        let server = ctx.database.as_ref().map(|s| s.id.clone()).unwrap_or_default();
        let password = Secret::new(password);
        Ok(Some(DatabaseInfo { connection, host, port, database, username, password, server }))
    }
}

impl DockerContainer {
    /// Waits for a started container's resource-uri to answer; its URL and how long it took.
    async fn answering(
        &self,
        ctx: &InstanceContext,
        cluster: &DockerHost,
        limits: &Limits,
    ) -> Result<(String, Duration)> {
        let name = &ctx.names.container;
        let port_key = format!("{}/tcp", limits.port);
        let host_port = published_port(cluster, name, &port_key).await?;
        let url = format!("http://{}:{host_port}{}", cluster.config.publish_address(), ctx.resource_uri);
        // A worker that runs in a container cannot reach the host's loopback: with
        // `health-via-network` it checks the instance by name over the cluster's network.
        let check_url = match (&cluster.config.network, cluster.config.health_via_network) {
            (Some(_), true) => format!("http://{name}:{}{}", limits.port, ctx.resource_uri),
            _ => url.clone(),
        };
        let health = std::time::Instant::now();
        self.wait_healthy(cluster, name, &check_url).await?;
        Ok((url, health.elapsed()))
    }
}

/// The host port Docker chose for `port_key`.
async fn published_port(cluster: &DockerHost, name: &str, port_key: &str) -> Result<String> {
    let docker = cluster.client().await?;
    for _ in 0..20 {
        let info = docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(Error::docker(format!("inspecting container {name}")))?;
        let port = info
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(port_key).cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port.filter(|p| !p.is_empty())));
        if let Some(port) = port {
            return Ok(port);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Unhealthy(format!("container {name} has no published port for {port_key}")))
}

impl DockerContainer {
    /// Polls `url` until it answers 2xx, failing early when the container stops.
    async fn wait_healthy(&self, cluster: &DockerHost, name: &str, url: &str) -> Result<()> {
        let docker = cluster.client().await?;
        let deadline = tokio::time::Instant::now() + self.health_timeout;
        let mut last: String;
        // Short first pauses: a small instance answers within tens of milliseconds of its
        // start, and this wait is part of every provision's latency.
        let mut delay = Duration::from_millis(10);
        for round in 0u32.. {
            match self.http.get(url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("{url} answered {}", r.status()),
                Err(e) => last = format!("{url}: {e}"),
            }
            if round % 5 == 4 {
                let info = docker
                    .inspect_container(name, None::<InspectContainerOptions>)
                    .await
                    .map_err(Error::docker(format!("inspecting container {name}")))?;
                if let Some(state) = info.state.filter(|s| s.running == Some(false)) {
                    return Err(Error::Unhealthy(format!(
                        "container {name} stopped ({}, exit code {})",
                        state.status.map(|s| s.to_string()).unwrap_or_default(),
                        state.exit_code.unwrap_or_default()
                    )));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unhealthy(format!("{last} (waited {:?})", self.health_timeout)));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_are_read_from_the_offering() {
        let o = [("memory", json!("256m")), ("cpus", json!(0.5)), ("pids", json!(100)), ("port", json!(8080))]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let l = Limits::from_offering(&o).expect("valid");
        assert_eq!(l, Limits { memory: Some(256 << 20), nano_cpus: Some(500_000_000), pids: 100, port: 8080 });
        let none = Limits::from_offering(&Default::default()).expect("defaults");
        assert_eq!(none, Limits { memory: None, nano_cpus: None, pids: DEFAULT_PIDS, port: DEFAULT_PORT });
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("512MB"), Some(512 << 20));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("lots"), None);
    }
}
