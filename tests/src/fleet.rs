//! The extra engines and servers of `deploy/setup-fleet.sh` (run by `deploy/setup.sh`), as
//! the fleet tests use them: two more Docker engines (`a`, also behind mutual TLS, and `b`,
//! also over SSH) with their own bridges, and a second PostgreSQL cluster on port 5433.

use std::collections::HashMap;

use anyhow::{bail, Result};
use bollard::query_parameters::{ListContainersOptionsBuilder, ListVolumesOptionsBuilder};
use bollard::Docker;

use crate::SETUP;

/// An extra engine: its socket, its bridge address, its TLS or SSH address.
#[derive(Debug, Clone, Copy)]
pub struct Engine {
    /// `unix:///run/dfe-docker-<n>.sock`.
    pub socket: &'static str,
    /// Where its instances' ports are published.
    pub publish: &'static str,
}

/// Engine `a`.
pub const A: Engine = Engine { socket: "unix:///run/dfe-docker-a.sock", publish: "172.31.1.1" };
/// Engine `b`.
pub const B: Engine = Engine { socket: "unix:///run/dfe-docker-b.sock", publish: "172.31.2.1" };
/// The main engine.
pub const MAIN: Engine = Engine { socket: "unix:///var/run/docker.sock", publish: "127.0.0.1" };

/// Engine `a` over mutual TLS.
pub const TLS_ADDRESS: &str = "tcp://127.0.0.1:23761";
/// Its certificates.
pub const TLS_DIR: &str = "/etc/dfe/fleet/tls";
/// Engine `b` over SSH.
pub const SSH_ADDRESS: &str = "ssh://dfe-docker@127.0.0.1:2222";
/// Its key and known hosts.
pub const SSH_DIR: &str = "/etc/dfe/fleet/ssh";
/// The second PostgreSQL cluster's port.
pub const PG_FLEET_PORT: u16 = 5433;

impl Engine {
    /// A client of this engine.
    pub async fn docker(&self) -> Result<Docker> {
        let path = self.socket.trim_start_matches("unix://");
        let d = Docker::connect_with_unix(path, 60, bollard::API_DEFAULT_VERSION)?;
        let d = d.negotiate_version().await?;
        d.ping().await?;
        Ok(d)
    }

    /// Containers and volumes labelled with `instance_id` on this engine.
    pub async fn parts_of(&self, instance_id: &str) -> Result<(usize, usize)> {
        let d = self.docker().await?;
        let filters = HashMap::from([("label".to_owned(), vec![format!("dfe.instance-id={instance_id}")])]);
        let containers = d
            .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
            .await?;
        let volumes = d
            .list_volumes(Some(ListVolumesOptionsBuilder::default().filters(&filters).build()))
            .await?
            .volumes
            .unwrap_or_default();
        Ok((containers.len(), volumes.len()))
    }
}

/// Fails, naming the setup command, when the extra engines or the second cluster are not up.
pub async fn preflight() -> Result<()> {
    for e in [A, B] {
        if e.docker().await.is_err() {
            bail!("the extra Docker engine at {} is not reachable: run `{SETUP}` first", e.socket);
        }
    }
    if tokio::net::TcpStream::connect(("127.0.0.1", PG_FLEET_PORT)).await.is_err() {
        bail!("the second PostgreSQL cluster is not reachable on 127.0.0.1:{PG_FLEET_PORT}: run `{SETUP}` first");
    }
    for f in ["ca.pem", "client-cert.pem", "client-key.pem"] {
        if !std::path::Path::new(TLS_DIR).join(f).is_file() {
            bail!("{TLS_DIR}/{f} is missing: run `{SETUP}` first");
        }
    }
    Ok(())
}

/// TOML of one host (`[clusters.<cluster>.hosts.<id>]`) on `engine` over its socket.
pub fn host(cluster: &str, id: &str, engine: Engine, extra: &str) -> String {
    format!(
        "\n[clusters.{cluster}.hosts.{id}]\ndocker-host = \"{}\"\npublish-address = \"{}\"\n{extra}\n",
        engine.socket, engine.publish
    )
}

/// TOML of a provisioner `tag` on `cluster` with databases on `servers`; `light` makes
/// only a volume per instance (no container, no database), for placement counts.
pub fn provisioner(tag: &str, cluster: &str, servers: &[&str], light: bool) -> String {
    let (instance, db) = if light { ("noop", "noop") } else { ("docker-container", "postgres") };
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"
[provisioners.hosts.{tag}]
resource-uri = "/api/v2/system"
cluster = "{cluster}"
database = [{servers}]
[provisioners.hosts.{tag}.provides]
instance = "{instance}"
storage = "docker-volume"
db = "{db}"
[provisioners.hosts.{tag}.offerings.image]
suggested = "test"
[provisioners.hosts.{tag}.offerings.image.items.test]
image = "dfe/test-instance:latest"
memory = "64m"
cpus = 0.5
pids = 64
port = 80
storage-path = "/storage"
"#,
        servers = servers.join(", ")
    )
}

/// TOML of the second PostgreSQL cluster as database server `fleet`.
pub fn fleet_database() -> String {
    format!(
        "\n[databases.fleet]\nengine = \"postgres\"\nhost = \"127.0.0.1\"\nport = {PG_FLEET_PORT}\ninstance-host = \"172.17.0.1\"\nuser = \"dfe\"\npassword = \"dfe\"\n"
    )
}

impl Engine {
    /// Runs a shell script in the container `name` of this engine; its stdout.
    pub fn exec(&self, name: &str, script: &str) -> Result<String> {
        let out = std::process::Command::new("docker")
            .args(["-H", self.socket, "exec", name, "sh", "-c", script])
            .output()?;
        if !out.status.success() {
            bail!("docker -H {} exec {name}: {}", self.socket, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Removes whatever exists of an instance on this engine (cleanup after a test).
    pub fn remove_instance_blocking(&self, instance_id: &str) {
        let _ = std::process::Command::new("docker")
            .args(["-H", self.socket, "rm", "-f", &format!("dfe-{instance_id}")])
            .output();
        let _ = std::process::Command::new("docker")
            .args(["-H", self.socket, "volume", "rm", "-f", &format!("dfe-{instance_id}-storage")])
            .output();
    }
}

/// A Unix socket that forwards to an engine's socket until it is stopped: a Docker host that
/// one test can take down (its engine "stopped", from the workers' side: connections refused
/// and open ones cut) without stopping the engine other tests share.
pub struct SocketProxy {
    path: std::path::PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
}

impl SocketProxy {
    /// Starts forwarding `path` to `engine`'s socket.
    pub fn start(engine: Engine, path: impl Into<std::path::PathBuf>) -> Result<SocketProxy> {
        let path = path.into();
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        let target = std::path::PathBuf::from(engine.socket.trim_start_matches("unix://"));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut accepting = stopped.clone();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = accepting.changed() => return,
                };
                let Ok((mut inbound, _)) = conn else { continue };
                let (target, mut cut) = (target.clone(), stopped.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::UnixStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(SocketProxy { path, stop })
    }

    /// `unix://<path>`, for a host's `docker-host`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Refuses new connections and cuts the open ones.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
