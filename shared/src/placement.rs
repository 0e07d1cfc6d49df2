//! Where a new instance goes and what it is made of, decided once, when its job claims it
//! (and recorded with the claim, so a redelivered job goes on exactly where it started): the
//! provisioner of its guest location, the item chosen for each offering, the Docker cluster
//! and host, and the database server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ProvisionerHost};
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

/// Decides the placement of a new instance. Errors name the field of the job at fault.
pub fn place(config: &Config, request: Request<'_>) -> Result<Placement, FieldError> {
    let (tag, host) = provisioner(config, request.guest_location)?;
    let offerings = chosen_items(host, request.offerings)?;
    let cluster_id = match request.cluster_id.or(host.cluster.as_deref()) {
        Some(c) if config.clusters.contains_key(c) => Some(c.to_owned()),
        Some(_) => return Err(FieldError::new("cluster-id", "names no configured cluster")),
        // One cluster configured: it is the one, whatever the provisioner says.
        None if config.clusters.len() == 1 => config.clusters.keys().next().cloned(),
        None => None,
    };
    Ok(Placement {
        guest_location: tag.to_owned(),
        // A cluster is one engine: its single host carries the cluster's id.
        host_id: cluster_id.clone(),
        cluster_id,
        database_server: host.database.clone(),
        offerings,
    })
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
    fn a_new_instance_is_placed_on_its_provisioners_cluster_and_server() {
        let cfg = shipped();
        let p = place(&cfg, Request::default()).expect("default");
        assert_eq!(p.guest_location, "docker");
        assert_eq!((p.cluster_id.as_deref(), p.host_id.as_deref()), (Some("local"), Some("local")));
        assert_eq!(p.database_server.as_deref(), Some("local"));
        let bad = place(&cfg, Request { cluster_id: Some("mars"), ..Default::default() });
        assert_eq!(bad.expect_err("unknown cluster").field, "cluster-id");
        let bad = place(&cfg, Request { guest_location: Some("mars"), ..Default::default() });
        assert_eq!(bad.expect_err("unknown provisioner").field, "guest-location");
    }
}
