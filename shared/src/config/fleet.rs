//! The fleet's schema: clusters of Docker hosts and how each is reached, their limits and
//! labels, and the placement policy. The single-engine form of a cluster
//! (`[clusters.<id>] docker-host = …`) is a cluster of one host whose id is the cluster's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How a cluster chooses among the hosts that can take an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementPolicy {
    /// Fewest instances first: spreads tenants (and the damage of a lost host).
    #[default]
    Spread,
    /// Most instances first, among those under their limits: fills hosts one by one.
    Binpack,
}

/// A Docker cluster: its hosts and how it places instances on them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterConfig {
    /// `spread` (default) or `binpack`.
    #[serde(default)]
    pub placement: PlacementPolicy,
    /// Its hosts, by id (unique across clusters). Empty: the single-engine form, one host
    /// with the cluster's id made of the keys below.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostConfig>,
    /// The single-engine form: the cluster's one host.
    #[serde(flatten)]
    pub single: HostConfig,
    /// No longer read: TLS is configured with `tls-ca`, `tls-cert` and `tls-key`.
    #[serde(default)]
    pub tls_cert_path: Option<PathBuf>,
}

/// A Docker host: how it is reached and what it may hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HostConfig {
    /// `unix:///var/run/docker.sock`, `tcp://H:2376` (mutual TLS; plain TCP only on
    /// loopback) or `ssh://user@H[:port]`. Default: the local socket.
    #[serde(default)]
    pub docker_host: Option<String>,
    /// CA certificate (PEM) the engine's certificate must be signed by (`tcp://`).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to the engine.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// known_hosts file the engine's SSH host key must be in (`ssh://`): never accepted blindly.
    #[serde(default)]
    pub ssh_known_hosts: Option<PathBuf>,
    /// Private key for `ssh://` (default: the worker user's ssh agent and keys).
    #[serde(default)]
    pub ssh_key: Option<PathBuf>,
    /// Where its instances' ports are published (default 127.0.0.1).
    #[serde(default)]
    pub publish_address: Option<String>,
    /// At most this many instances (default: no limit).
    #[serde(default)]
    pub max_instances: Option<u32>,
    /// The sum of its instances' offering `memory` may not pass this ("512m", "16g").
    #[serde(default)]
    pub memory_budget: Option<String>,
    /// Labels an offering item's `host-labels` may require.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Docker network instances join (default: the engine's default bridge).
    #[serde(default)]
    pub network: Option<String>,
    /// Check the resource-uri at `http://<container-name>:<port>` over `network` instead of
    /// at the published address: for workers that run in a container on that network.
    #[serde(default)]
    pub health_via_network: bool,
}

/// The engine's socket when a host names none.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

impl HostConfig {
    /// `docker-host`, or the local socket.
    pub fn docker_host(&self) -> &str {
        self.docker_host.as_deref().unwrap_or(DEFAULT_DOCKER_HOST)
    }

    /// `publish-address`, or 127.0.0.1.
    pub fn publish_address(&self) -> &str {
        self.publish_address.as_deref().unwrap_or("127.0.0.1")
    }

    /// `memory-budget` in bytes, if set (an unreadable one is refused by the configuration check).
    pub fn memory_budget_bytes(&self) -> Option<i64> {
        self.memory_budget.as_deref().and_then(parse_bytes)
    }

    /// Why this host's address is refused, if it is: plain TCP off loopback gives root on
    /// the host to anyone who can reach the port, and Docker 27 refuses it as well.
    pub fn check(&self, id: &str) -> Result<(), String> {
        let host = self.docker_host();
        let tls = [&self.tls_ca, &self.tls_cert, &self.tls_key];
        let tls_set = tls.iter().filter(|t| t.is_some()).count();
        if tls_set != 0 && tls_set != 3 {
            return Err(format!("host {id}: tls-ca, tls-cert and tls-key go together (mutual TLS): set all three"));
        }
        if let Some(rest) = host.strip_prefix("tcp://").or_else(|| host.strip_prefix("http://")) {
            let name = rest.rsplit_once(':').map_or(rest, |(h, _)| h).trim_matches(|c| c == '[' || c == ']');
            let loopback = matches!(name, "localhost" | "::1") || name.starts_with("127.");
            if tls_set == 0 && !loopback {
                return Err(format!(
                    "host {id}: docker-host {host} is plain TCP off loopback, which gives root on that host to \
                     anyone who can reach the port (and Docker 27 refuses it): set tls-ca, tls-cert and tls-key \
                     (mutual TLS, port 2376), or use ssh://"
                ));
            }
        } else if host.starts_with("ssh://") {
            if self.ssh_known_hosts.is_none() {
                return Err(format!(
                    "host {id}: docker-host {host} needs ssh-known-hosts: the engine's host key is checked against \
                     it, never accepted blindly"
                ));
            }
        } else if !host.starts_with("unix://") {
            return Err(format!("host {id}: docker-host {host:?} must start with unix://, tcp:// or ssh://"));
        }
        if let Some(m) = &self.memory_budget {
            if parse_bytes(m).is_none() {
                return Err(format!("host {id}: memory-budget = {m:?} is not a size like 512m or 16g"));
            }
        }
        Ok(())
    }
}

impl ClusterConfig {
    /// The cluster's hosts: its `hosts`, or in the single-engine form one host with the
    /// cluster's id.
    pub fn host_configs(&self, cluster_id: &str) -> Vec<(String, HostConfig)> {
        if self.hosts.is_empty() {
            vec![(cluster_id.to_owned(), self.single.clone())]
        } else {
            self.hosts.iter().map(|(id, h)| (id.clone(), h.clone())).collect()
        }
    }
}

/// Pairs of ids: `(host id, cluster id)` or `(server id, engine)`.
pub type IdPairs = Vec<(String, String)>;

impl super::Config {
    /// Every configured host `(host id, cluster id)` and database server `(id, engine)`:
    /// what the registry records for the probes and the placements.
    pub fn fleet_ids(&self) -> (IdPairs, IdPairs) {
        let hosts = self
            .clusters
            .iter()
            .flat_map(|(cluster, c)| c.host_configs(cluster).into_iter().map(move |(id, _)| (id, cluster.clone())))
            .collect();
        let servers = self.databases.iter().map(|(id, d)| (id.clone(), d.engine.clone())).collect();
        (hosts, servers)
    }
}

/// A size in bytes from a number or `512m`/`16g`/`1024k` (binary units).
pub fn parse_bytes(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1i64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    digits.trim().parse::<i64>().ok().filter(|n| *n >= 0)?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(docker_host: &str) -> HostConfig {
        HostConfig { docker_host: Some(docker_host.into()), ..Default::default() }
    }

    #[test]
    fn plain_tcp_is_refused_off_loopback_and_ssh_needs_known_hosts() {
        assert!(host("unix:///var/run/docker.sock").check("a").is_ok());
        assert!(host("tcp://127.0.0.1:2375").check("a").is_ok());
        let e = host("tcp://10.0.0.5:2375").check("a").expect_err("plain TCP off loopback");
        assert!(e.contains("plain TCP off loopback") && e.contains("tls-ca"), "{e}");
        let tls = HostConfig {
            tls_ca: Some("ca.pem".into()),
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            ..host("tcp://10.0.0.5:2376")
        };
        assert!(tls.check("a").is_ok());
        let half = HostConfig { tls_ca: Some("ca.pem".into()), ..host("tcp://10.0.0.5:2376") };
        assert!(half.check("a").expect_err("half TLS").contains("go together"));
        assert!(host("ssh://u@h").check("a").expect_err("no known hosts").contains("ssh-known-hosts"));
        assert!(host("ftp://h").check("a").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("512MB"), Some(512 << 20));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1"), None);
    }
}
