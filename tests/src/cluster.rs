//! The clustered services of `deploy/cluster-rabbitmq.sh` and `deploy/registry-standby.sh`
//! (both started by `deploy/setup.sh`), as the cluster fault tests use them: a 3-node
//! RabbitMQ cluster on ports 5681-5683, and a PostgreSQL primary (5441) with a synchronous
//! streaming standby (5442). Every call goes through those scripts, which alone know the
//! nodes' cookie, names and files.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::repo_root;

/// The script of the RabbitMQ cluster.
pub const RABBIT_SCRIPT: &str = "deploy/cluster-rabbitmq.sh";
/// The script of the registry's primary and standby.
pub const STANDBY_SCRIPT: &str = "deploy/registry-standby.sh";
/// Nodes of the cluster.
pub const NODES: usize = 3;
/// Where the cluster's nodes keep their data: present once it was set up.
const RABBIT_DATA: &str = "/var/lib/dfe-cluster/rabbitmq";
/// Where the registry pair keeps its data: present once it was set up.
const STANDBY_DATA: &str = "/var/lib/dfe-cluster/postgresql";
/// Node `n`'s AMQP port is this plus `n` (1-based).
const AMQP_BASE_PORT: u16 = 5680;
/// The primary's and the standby's ports.
pub const PG_PRIMARY_PORT: u16 = 5441;
/// The standby's port.
pub const PG_STANDBY_PORT: u16 = 5442;

/// Runs one of the scripts; its stdout, or an error with its output.
fn script(name: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(repo_root().join(name))
        .args(args)
        .output()
        .with_context(|| format!("running {name} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{name} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a script off the async runtime (its CLI calls take seconds).
async fn script_async(name: &'static str, args: Vec<String>) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        script(name, &args)
    })
    .await?
}

/// The 3-node RabbitMQ cluster.
#[derive(Debug, Clone, Copy)]
pub struct RabbitCluster;

impl RabbitCluster {
    /// Fails, naming the setup commands, unless every node takes AMQP connections. A cluster
    /// that was set up but left broken (a test killed before it could put a node back) is
    /// restored first.
    pub async fn preflight() -> Result<RabbitCluster> {
        if Self::down_node().await.is_some() && std::path::Path::new(RABBIT_DATA).exists() {
            tokio::task::spawn_blocking(|| RabbitCluster.restore_blocking()).await??;
        }
        if let Some((n, port)) = Self::down_node().await {
            bail!(
                "node {n} of the RabbitMQ cluster is not reachable on 127.0.0.1:{port}: run `{RABBIT_SCRIPT} start` \
                 (or `{}`) first",
                crate::SETUP
            );
        }
        Ok(RabbitCluster)
    }

    /// The first node (and its port) that takes no AMQP connection.
    async fn down_node() -> Option<(usize, u16)> {
        for n in 1..=NODES {
            let port = AMQP_BASE_PORT + n as u16;
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                return Some((n, port));
            }
        }
        None
    }

    /// Node `n`'s URL of `vhost`.
    pub fn url(&self, n: usize, vhost: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", AMQP_BASE_PORT + n as u16)
    }

    /// Every node's URL of `vhost`, in order.
    pub fn urls(&self, vhost: &str) -> Vec<String> {
        (1..=NODES).map(|n| self.url(n, vhost)).collect()
    }

    /// `rabbitmqctl ARGS` against node `n`.
    pub fn ctl(&self, n: usize, args: &[&str]) -> Result<String> {
        let mut all = vec!["ctl".to_owned(), n.to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        script(RABBIT_SCRIPT, &all.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The vhost `vhost`, with all rights for guest, made through node `n`.
    pub fn add_vhost(&self, n: usize, vhost: &str) -> Result<()> {
        self.ctl(n, &["-q", "add_vhost", vhost])?;
        self.ctl(n, &["-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"])?;
        Ok(())
    }

    /// Removes `vhost` through any node that answers (for cleanup).
    pub fn delete_vhost(&self, vhost: &str) {
        for n in 1..=NODES {
            if self.ctl(n, &["-q", "delete_vhost", vhost]).is_ok() {
                return;
            }
        }
    }

    /// `kill -9` of node `n`'s Erlang VM.
    pub async fn kill(&self, n: usize) -> Result<()> {
        script_async(RABBIT_SCRIPT, vec!["kill".into(), n.to_string()]).await.map(drop)
    }

    /// Starts whatever node is down (a killed node rejoins with its data).
    pub async fn start(&self) -> Result<()> {
        script_async(RABBIT_SCRIPT, vec!["start".into()]).await.map(drop)
    }

    /// Heals every partition and starts every node that is down, blocking: what a test that
    /// disturbed the cluster runs when it ends, however it ends, so that the next one finds
    /// the cluster whole.
    pub fn restore_blocking(&self) -> Result<()> {
        script(RABBIT_SCRIPT, &["heal"])?;
        script(RABBIT_SCRIPT, &["start"]).map(drop)
    }

    /// Cuts node `n` off from the others (its distribution traffic is dropped).
    pub async fn partition(&self, n: usize) -> Result<()> {
        script_async(RABBIT_SCRIPT, vec!["partition".into(), n.to_string()]).await.map(drop)
    }

    /// Removes every partition.
    pub async fn heal(&self) -> Result<()> {
        script_async(RABBIT_SCRIPT, vec!["heal".into()]).await.map(drop)
    }

    /// The node (1-based) each connection of `vhost` is on, by its client-given name
    /// (`connection_name`: the worker id and its purpose, `dfe-api`, …), asked of node `n`.
    pub async fn connections(&self, n: usize, vhost: &str) -> Result<Vec<(String, usize)>> {
        let me = *self;
        let vhost = vhost.to_owned();
        let out = tokio::task::spawn_blocking(move || {
            me.ctl(n, &["-q", "list_connections", "vhost", "port", "client_properties", "--formatter", "json"])
        })
        .await??;
        let rows: Vec<Value> = serde_json::from_str(out.trim()).with_context(|| format!("list_connections: {out}"))?;
        let mut found = Vec::new();
        for row in rows.iter().filter(|r| r["vhost"] == vhost.as_str()) {
            // The server port the client connected to names the node.
            let port = row["port"].as_u64().unwrap_or_default();
            let Some(index) = (1..=NODES).find(|i| port == u64::from(AMQP_BASE_PORT) + *i as u64) else { continue };
            let name = connection_name(&row["client_properties"]).unwrap_or_default();
            found.push((name, index));
        }
        Ok(found)
    }

    /// The queues of `vhost` whose online members are not all `NODES` nodes, with what
    /// they have, asked of node `n` (empty: every queue has its replica on every node).
    pub async fn queues_missing_replicas(&self, n: usize, vhost: &str) -> Result<Vec<String>> {
        let me = *self;
        let vhost = vhost.to_owned();
        let out = tokio::task::spawn_blocking(move || {
            me.ctl(n, &["-q", "list_queues", "-p", &vhost, "name", "type", "members", "online", "--formatter", "json"])
        })
        .await??;
        let rows: Vec<Value> = serde_json::from_str(out.trim()).with_context(|| format!("list_queues: {out}"))?;
        Ok(rows
            .into_iter()
            .filter(|q| q["type"] == "quorum")
            .filter(|q| q["online"].as_array().map_or(0, Vec::len) != NODES)
            .map(|q| format!("{} (members {}, online {})", q["name"], q["members"], q["online"]))
            .collect())
    }

    /// Waits until every quorum queue of `vhost` has all its replicas online again.
    pub async fn await_replicas(&self, vhost: &str, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let missing = self.queues_missing_replicas(1, vhost).await;
            match missing {
                Ok(m) if m.is_empty() => return Ok(()),
                _ if tokio::time::Instant::now() > deadline => {
                    bail!("queues without a replica on every node after {timeout:?}: {missing:?}")
                }
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }
}

/// `connection_name` out of `client_properties` as the JSON formatter writes them: a list of
/// `[key, type, value]` triples (or an object, depending on the version).
fn connection_name(props: &Value) -> Option<String> {
    if let Some(v) = props.get("connection_name").and_then(Value::as_str) {
        return Some(v.to_owned());
    }
    props.as_array()?.iter().find_map(|p| {
        let p = p.as_array()?;
        (p.first()?.as_str()? == "connection_name").then(|| p.last()?.as_str().map(str::to_owned))?
    })
}

/// The PostgreSQL primary and its synchronous standby.
#[derive(Debug, Clone, Copy)]
pub struct StandbyPair;

impl StandbyPair {
    /// Fails, naming the setup commands, unless the primary takes writes and the standby
    /// streams from it. A pair that was set up but left failed over (a test killed before
    /// it could reset it) is reset first.
    pub async fn preflight() -> Result<StandbyPair> {
        let healthy = |s: &Result<String>| {
            s.as_ref()
                .is_ok_and(|s| s.contains("primary (read-write) on port 5441") && s.contains("dfe_standby streaming"))
        };
        let mut status = script_async(STANDBY_SCRIPT, vec!["status".into()]).await;
        if !healthy(&status) && std::path::Path::new(STANDBY_DATA).exists() {
            tokio::task::spawn_blocking(|| StandbyPair.reset_blocking()).await??;
            status = script_async(STANDBY_SCRIPT, vec!["status".into()]).await;
        }
        match status {
            ok if healthy(&ok) => Ok(StandbyPair),
            other => bail!(
                "the registry's primary (127.0.0.1:{PG_PRIMARY_PORT}) and streaming standby \
                 (127.0.0.1:{PG_STANDBY_PORT}) are not up: run `{STANDBY_SCRIPT} start` (or `{}`) first \
                 (after a failover: `{STANDBY_SCRIPT} reset`); status: {other:?}",
                crate::SETUP
            ),
        }
    }

    /// The URL of database `db` listing both servers, `target_session_attrs=read-write`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://dfe:dfe@127.0.0.1:{PG_PRIMARY_PORT},127.0.0.1:{PG_STANDBY_PORT}/{db}\
             ?target_session_attrs=read-write&connect_timeout=5"
        )
    }

    /// Stops the primary (`immediate`: as a crash) and promotes the standby.
    pub async fn failover(&self) -> Result<()> {
        script_async(STANDBY_SCRIPT, vec!["failover".into(), "immediate".into()]).await.map(drop)
    }

    /// A fresh pair again (after a failover), for the tests after this one. The reset pair
    /// holds what the old primary held: the test databases that were dropped on the
    /// promoted standby are back, and are dropped again (only the cluster tests, one at a
    /// time, use the pair).
    pub fn reset_blocking(&self) -> Result<()> {
        script(STANDBY_SCRIPT, &["reset"])?;
        let admin = self.url("postgres");
        let listed = Command::new("psql")
            .args([admin.as_str(), "-qAtc", "SELECT datname FROM pg_database WHERE datname LIKE 'dfe\\_test\\_%'"])
            .output()
            .context("listing the test databases left on the pair")?;
        for db in String::from_utf8_lossy(&listed.stdout).lines().filter(|l| !l.is_empty()) {
            let drop_db = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
            let _ = Command::new("psql").args([admin.as_str(), "-qAtc", &drop_db]).output();
        }
        Ok(())
    }
}
