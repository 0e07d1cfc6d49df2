//! Where a new instance goes and what it is made of, decided once, when its job claims it
//! (and recorded with the claim, so a redelivered job goes on exactly where it started).
//!
//! [`plan`] reads what the configuration decides: the provisioner of the guest location, the
//! item chosen for each offering, the cluster with its hosts and their limits, the candidate
//! database servers. The claim (in the registry, inside the transaction that claims the
//! instance, with the cluster's hosts locked) then picks a host with [`choose_host`] and a
//! server with [`choose_server`] from what is placed there now, so concurrent claims never
//! overshoot a limit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::fleet::parse_bytes;
use crate::config::{Config, OneOrMany, PlacementPolicy, ProvisionerHost};
use crate::ids::FieldError;

/// The decisions recorded when a job claims a new instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Placement {
    /// The provisioner tag (the job's guest location, or the default).
    pub guest_location: String,
    /// The Docker cluster.
    pub cluster_id: Option<String>,
    /// The Docker host in that cluster.
    pub host_id: Option<String>,
    /// The database server.
    pub database_server: Option<String>,
    /// The item chosen for each offering (the job's choice, else the suggested one).
    pub offerings: BTreeMap<String, String>,
    /// Bytes of memory the instance reserves on its host (its offering's `memory`).
    pub memory: i64,
}

/// What a new instance's job asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// `guest-location`.
    pub guest_location: Option<&'a str>,
    /// `cluster-id`.
    pub cluster_id: Option<&'a str>,
    /// `offerings`.
    pub offerings: Option<&'a BTreeMap<String, String>>,
    /// `owner-id`, as text (for the owner's quota).
    pub owner_id: Option<&'a str>,
}

/// A host the plan may place on, with its configured limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    /// Its id.
    pub host_id: String,
    /// `max-instances`.
    pub max_instances: Option<u32>,
    /// `memory-budget` in bytes.
    pub memory_budget: Option<i64>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// The Docker side of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    /// The cluster.
    pub cluster_id: String,
    /// How it chooses.
    pub policy: PlacementPolicy,
    /// Its hosts.
    pub hosts: Vec<HostLimits>,
    /// Labels the chosen offering item requires (`host-labels`).
    pub required_labels: BTreeMap<String, String>,
}

/// A database server the plan may place on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Its id.
    pub server_id: String,
    /// `max-databases`.
    pub max_databases: Option<u32>,
}

/// What the configuration decides about a new instance; the claim decides the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The provisioner tag.
    pub guest_location: String,
    /// The item chosen for each offering.
    pub offerings: BTreeMap<String, String>,
    /// The cluster to place on, when the provisioner runs instances on Docker.
    pub cluster: Option<ClusterPlan>,
    /// The database servers to choose from, when the provisioner makes databases.
    pub servers: Vec<ServerLimits>,
    /// Bytes of memory the instance reserves.
    pub memory: i64,
    /// The owner (as text) and the most instances it may have, when it has a quota.
    pub quota: Option<(String, u32)>,
    /// Days until the instance expires (the provisioner's `ttl-days`).
    pub ttl_days: Option<f64>,
}

/// The provisioner of `guest_location` (the default when `None`), or an error naming the
/// field.
pub fn provisioner<'c>(
    config: &'c Config,
    guest_location: Option<&str>,
) -> Result<(&'c str, &'c ProvisionerHost), FieldError> {
    config.provisioner(guest_location).ok_or_else(|| {
        let known: Vec<&str> = config.provisioners.hosts.keys().map(String::as_str).collect();
        FieldError::new("guest-location", format!("names no configured provisioner (known: {})", known.join(", ")))
    })
}

/// Whether a provisioner puts anything on a Docker host (its instance or storage is one of
/// the `docker-*` implementations).
pub fn needs_host(host: &ProvisionerHost) -> bool {
    host.provides.instance.starts_with("docker-") || host.provides.storage.starts_with("docker-")
}

/// Plans a new instance. Errors name the field of the job at fault.
pub fn plan(config: &Config, request: Request<'_>) -> Result<Plan, FieldError> {
    let (tag, host) = provisioner(config, request.guest_location)?;
    let offerings = chosen_items(host, request.offerings)?;
    let attrs = attributes(host, &offerings);
    let cluster = if needs_host(host) {
        let cluster_id = match request.cluster_id.or(host.cluster.as_deref()) {
            Some(c) if config.clusters.contains_key(c) => c.to_owned(),
            Some(_) => return Err(FieldError::new("cluster-id", "names no configured cluster")),
            // One cluster configured: it is the one.
            None if config.clusters.len() == 1 => config.clusters.keys().next().cloned().unwrap_or_default(),
            None => {
                return Err(FieldError::new(
                    "cluster-id",
                    format!("is needed: provisioner {tag} names no cluster and several are configured"),
                ))
            }
        };
        let c = &config.clusters[&cluster_id];
        let hosts = c
            .host_configs(&cluster_id)
            .into_iter()
            .map(|(host_id, h)| HostLimits {
                memory_budget: h.memory_budget_bytes(),
                max_instances: h.max_instances,
                labels: h.labels,
                host_id,
            })
            .collect();
        let required_labels = match attrs.get("host-labels") {
            Some(serde_json::Value::Object(m)) => {
                m.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect()
            }
            _ => BTreeMap::new(),
        };
        Some(ClusterPlan { cluster_id, policy: c.placement, hosts, required_labels })
    } else {
        None
    };
    let servers = if host.provides.db == "noop" {
        Vec::new()
    } else {
        host.database
            .as_ref()
            .map(OneOrMany::ids)
            .unwrap_or_default()
            .into_iter()
            .map(|id| ServerLimits {
                server_id: id.to_owned(),
                max_databases: config.databases.get(id).and_then(|d| d.max_databases),
            })
            .collect()
    };
    let memory = match attrs.get("memory") {
        Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(serde_json::Value::String(s)) => parse_bytes(s).unwrap_or(0),
        _ => 0,
    };
    let quota = request.owner_id.and_then(|o| config.quotas.max_instances(o).map(|max| (o.to_owned(), max)));
    Ok(Plan { guest_location: tag.to_owned(), offerings, cluster, servers, memory, quota, ttl_days: host.ttl_days })
}

/// Plans the new instance an import creates: as the snapshot's was made (its provisioner,
/// unless the job names a guest location, and its offering items where that provisioner
/// still offers them), on the job's cluster or the provisioner's.
pub fn plan_import(
    config: &Config,
    request: Request<'_>,
    snapshot_guest: Option<&str>,
    snapshot_items: Option<&BTreeMap<String, String>>,
) -> Result<Plan, FieldError> {
    let (guest_location, cluster_id, owner_id) = (request.guest_location, request.cluster_id, request.owner_id);
    let snapshot_guest = snapshot_guest.filter(|g| config.provisioners.hosts.contains_key(*g));
    let guest = guest_location.or(snapshot_guest);
    let (_, host) = provisioner(config, guest)?;
    let items = snapshot_items.and_then(|items| {
        // Only the offerings this provisioner has, and only items it still offers.
        let known: BTreeMap<String, String> = items
            .iter()
            .filter(|(k, _)| host.offerings.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        chosen_items(host, Some(&known)).ok().map(|_| known)
    });
    plan(config, Request { guest_location: guest, cluster_id, offerings: items.as_ref(), owner_id })
}

/// A host as the claim sees it: configured limits, state, and what is placed on it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    /// Limits and labels.
    pub limits: HostLimits,
    /// `pending`, `active` or `unreachable` (from the probes).
    pub reachability: String,
    /// Taken out of placement by an operator.
    pub cordoned: bool,
    /// Instances placed on it (not deprovisioned).
    pub instances: i64,
    /// Bytes of memory they reserve.
    pub memory_reserved: i64,
}

/// Picks a host for an instance reserving `memory` bytes: active, not cordoned, under its
/// limits, carrying the required labels; by the policy (spread: fewest instances first;
/// binpack: most first), ties by id. `Err` holds why each host was refused.
pub fn choose_host(plan: &ClusterPlan, hosts: &[HostView], memory: i64) -> Result<String, Vec<String>> {
    let mut fits = Vec::new();
    let mut refused = Vec::new();
    for h in hosts {
        let id = &h.limits.host_id;
        let why = if h.cordoned {
            Some("cordoned".to_owned())
        } else if h.reachability == "pending" {
            Some("pending (not probed successfully yet)".to_owned())
        } else if h.reachability != "active" {
            Some(h.reachability.clone())
        } else if let Some(max) = h.limits.max_instances.filter(|m| h.instances >= i64::from(*m)) {
            Some(format!("at max-instances ({} of {max})", h.instances))
        } else if let Some(budget) = h.limits.memory_budget.filter(|b| h.memory_reserved + memory > *b) {
            Some(format!("memory-budget ({} + {memory} bytes > {budget})", h.memory_reserved))
        } else {
            plan.required_labels
                .iter()
                .find(|(k, v)| h.limits.labels.get(*k) != Some(*v))
                .map(|(k, v)| format!("lacks label {k}={v}"))
        };
        match why {
            Some(why) => refused.push(format!("{id}: {why}")),
            None => fits.push(h),
        }
    }
    let best = match plan.policy {
        PlacementPolicy::Spread => {
            fits.iter().min_by(|a, b| a.instances.cmp(&b.instances).then(a.limits.host_id.cmp(&b.limits.host_id)))
        }
        PlacementPolicy::Binpack => {
            fits.iter().min_by(|a, b| b.instances.cmp(&a.instances).then(a.limits.host_id.cmp(&b.limits.host_id)))
        }
    };
    match best {
        Some(h) => Ok(h.limits.host_id.clone()),
        None if hosts.is_empty() => Err(vec![format!("cluster {} has no hosts", plan.cluster_id)]),
        None => Err(refused),
    }
}

/// A database server as the claim sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    /// Limits.
    pub limits: ServerLimits,
    /// `pending`, `active` or `unreachable`.
    pub reachability: String,
    /// Instance databases on it now.
    pub databases: i64,
}

/// Picks a database server: reachable (not `unreachable`: a server not probed yet may
/// take one, as the single-server setups of before did), under `max-databases`, fewest
/// databases first, ties in the configured order. `Err` holds why each was refused.
pub fn choose_server(servers: &[ServerView]) -> Result<String, Vec<String>> {
    let mut refused = Vec::new();
    let mut best: Option<&ServerView> = None;
    for s in servers {
        let id = &s.limits.server_id;
        if s.reachability == "unreachable" {
            refused.push(format!("{id}: unreachable"));
        } else if let Some(max) = s.limits.max_databases.filter(|m| s.databases >= i64::from(*m)) {
            refused.push(format!("{id}: at max-databases ({} of {max})", s.databases));
        } else if best.is_none_or(|b| s.databases < b.databases) {
            best = Some(s);
        }
    }
    best.map(|s| s.limits.server_id.clone()).ok_or(refused)
}

/// The item chosen for each offering of `host`: the job's choice, else the suggested one.
/// A choice of an unknown offering or item is an error naming it (`offerings.<id>`).
pub fn chosen_items(
    host: &ProvisionerHost,
    chosen: Option<&BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, FieldError> {
    if let Some(chosen) = chosen {
        if let Some(unknown) = chosen.keys().find(|k| !host.offerings.contains_key(*k)) {
            let known: Vec<&str> = host.offerings.keys().map(String::as_str).collect();
            return Err(FieldError::new(
                format!("offerings.{unknown}"),
                format!("is not an offering of this provisioner (offerings: {})", known.join(", ")),
            ));
        }
    }
    let mut items = BTreeMap::new();
    for (id, offering) in &host.offerings {
        let Some(pick) = chosen.and_then(|c| c.get(id)).or(offering.suggested.as_ref()) else { continue };
        if !offering.items.contains_key(pick) {
            let known: Vec<&str> = offering.items.keys().map(String::as_str).collect();
            return Err(FieldError::new(
                format!("offerings.{id}"),
                format!("{pick:?} is not one of: {}", known.join(", ")),
            ));
        }
        items.insert(id.clone(), pick.clone());
    }
    Ok(items)
}

/// The attributes (`image`, `memory`, `storage-path`, …) of the chosen items, merged.
/// Items that are no longer configured are left out (the instance keeps what it was made
/// with; only a new provision needs them).
pub fn attributes(host: &ProvisionerHost, items: &BTreeMap<String, String>) -> BTreeMap<String, serde_json::Value> {
    let mut attributes = BTreeMap::new();
    for (id, pick) in items {
        if let Some(item) = host.offerings.get(id).and_then(|o| o.items.get(pick)) {
            attributes.extend(item.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    attributes
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn shipped() -> Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/dfe.toml");
        Config::load_from(&path, Some(Default::default())).expect("shipped config loads")
    }

    #[test]
    fn offerings_resolve_to_the_chosen_or_suggested_items() {
        let cfg = shipped();
        let host = &cfg.provisioners.hosts["docker"];
        let items = chosen_items(host, None).expect("suggested");
        assert_eq!(items["image"], "test");
        assert_eq!(attributes(host, &items)["image"], "dfe/test-instance:latest");
        let chosen = BTreeMap::from([("image".to_owned(), "nope".to_owned())]);
        assert_eq!(chosen_items(host, Some(&chosen)).expect_err("unknown item").field, "offerings.image");
        let chosen = BTreeMap::from([("colour".to_owned(), "red".to_owned())]);
        assert_eq!(chosen_items(host, Some(&chosen)).expect_err("unknown offering").field, "offerings.colour");
    }

    #[test]
    fn a_new_instance_is_planned_on_its_provisioners_cluster_and_servers() {
        let cfg = shipped();
        let p = plan(&cfg, Request::default()).expect("default");
        assert_eq!(p.guest_location, "docker");
        let cluster = p.cluster.expect("a Docker provisioner needs a host");
        assert_eq!((cluster.cluster_id.as_str(), cluster.hosts[0].host_id.as_str()), ("local", "local"));
        assert_eq!(p.servers, vec![ServerLimits { server_id: "local".into(), max_databases: None }]);
        assert_eq!(p.memory, 64 << 20, "the offering's memory is reserved");
        let noop = plan(&cfg, Request { guest_location: Some("noop"), ..Default::default() }).expect("noop");
        assert!(noop.cluster.is_none() && noop.servers.is_empty(), "noop needs neither host nor server");
        let bad = plan(&cfg, Request { cluster_id: Some("mars"), ..Default::default() });
        assert_eq!(bad.expect_err("unknown cluster").field, "cluster-id");
        let bad = plan(&cfg, Request { guest_location: Some("mars"), ..Default::default() });
        assert_eq!(bad.expect_err("unknown provisioner").field, "guest-location");
    }

    fn view(id: &str, instances: i64, max: Option<u32>) -> HostView {
        HostView {
            limits: HostLimits { host_id: id.into(), max_instances: max, memory_budget: None, labels: BTreeMap::new() },
            reachability: "active".into(),
            cordoned: false,
            instances,
            memory_reserved: 0,
        }
    }

    fn cluster(policy: PlacementPolicy) -> ClusterPlan {
        ClusterPlan { cluster_id: "c".into(), policy, hosts: Vec::new(), required_labels: BTreeMap::new() }
    }

    #[test]
    fn spread_takes_the_emptiest_host_and_binpack_the_fullest_that_fits() {
        let hosts = [view("a", 3, Some(12)), view("b", 1, Some(12))];
        assert_eq!(choose_host(&cluster(PlacementPolicy::Spread), &hosts, 0), Ok("b".into()));
        assert_eq!(choose_host(&cluster(PlacementPolicy::Binpack), &hosts, 0), Ok("a".into()));
        let full = [view("a", 12, Some(12)), view("b", 1, Some(12))];
        assert_eq!(choose_host(&cluster(PlacementPolicy::Binpack), &full, 0), Ok("b".into()));
        let ties = [view("b", 2, None), view("a", 2, None)];
        assert_eq!(choose_host(&cluster(PlacementPolicy::Spread), &ties, 0), Ok("a".into()), "ties by id");
    }

    #[test]
    fn nothing_fits_names_each_host_and_why() {
        let mut cordoned = view("a", 0, None);
        cordoned.cordoned = true;
        let mut down = view("b", 0, None);
        down.reachability = "unreachable".into();
        let full = view("c", 5, Some(5));
        let mut tight = view("d", 1, None);
        tight.limits.memory_budget = Some(100);
        tight.memory_reserved = 80;
        let mut labelled = view("e", 0, None);
        labelled.limits.labels.insert("zone".into(), "b".into());
        let mut plan = cluster(PlacementPolicy::Spread);
        plan.required_labels.insert("zone".into(), "a".into());
        let reasons = choose_host(&plan, &[cordoned, down, full, tight, labelled], 50).expect_err("nothing fits");
        assert_eq!(
            reasons,
            [
                "a: cordoned",
                "b: unreachable",
                "c: at max-instances (5 of 5)",
                "d: memory-budget (80 + 50 bytes > 100)",
                "e: lacks label zone=a"
            ]
        );
    }

    #[test]
    fn servers_are_chosen_fewest_databases_first_under_their_limits() {
        let s = |id: &str, n: i64, max: Option<u32>, r: &str| ServerView {
            limits: ServerLimits { server_id: id.into(), max_databases: max },
            reachability: r.into(),
            databases: n,
        };
        assert_eq!(choose_server(&[s("a", 3, None, "active"), s("b", 2, None, "active")]), Ok("b".into()));
        assert_eq!(choose_server(&[s("a", 2, None, "active"), s("b", 2, None, "active")]), Ok("a".into()));
        assert_eq!(choose_server(&[s("a", 1, Some(1), "active"), s("b", 9, None, "pending")]), Ok("b".into()));
        assert_eq!(
            choose_server(&[s("a", 1, Some(1), "active"), s("b", 0, None, "unreachable")]),
            Err(vec!["a: at max-databases (1 of 1)".into(), "b: unreachable".into()])
        );
    }
}
