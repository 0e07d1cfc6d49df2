//! What the Docker sub-provisioners share: reading the engine's errors, and finding what a
//! deployment made on its hosts by their labels. The hosts themselves, and how each is
//! reached, are the fleet's ([`crate::fleet::DockerHost`]).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fleet::DockerHost;

/// Whether a bollard error is the engine's 404.
pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// Whether a bollard error is the engine's 409 (conflict, e.g. removal already in progress).
pub fn is_conflict(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 409, .. })
}

/// The label filter of everything `deployment` made.
fn deployment_filter(deployment: &str) -> std::collections::HashMap<String, Vec<String>> {
    std::collections::HashMap::from([(
        "label".to_owned(),
        vec!["dfe.managed=true".to_owned(), format!("dfe.deployment={deployment}")],
    )])
}

/// Containers or volumes `deployment` made on each of `hosts`, by their labels.
pub async fn labelled<'a>(
    hosts: impl Iterator<Item = &'a Arc<DockerHost>>,
    deployment: &str,
    kind: &'static str,
) -> super::Found {
    use bollard::query_parameters::{ListContainersOptionsBuilder, ListVolumesOptionsBuilder};
    let filters = deployment_filter(deployment);
    let mut found = super::Found::default();
    for host in hosts {
        let listed: Result<Vec<(String, String)>> = async {
            let docker = host.client().await?;
            if kind == "container" {
                let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
                let containers =
                    docker.list_containers(Some(opts)).await.map_err(Error::docker("listing containers"))?;
                Ok(containers
                    .into_iter()
                    .filter_map(|c| {
                        let instance = c.labels.as_ref()?.get("dfe.instance-id")?.clone();
                        let name = c.names.as_ref()?.first()?.trim_start_matches('/').to_owned();
                        Some((instance, name))
                    })
                    .collect())
            } else {
                let opts = ListVolumesOptionsBuilder::default().filters(&filters).build();
                let volumes = docker.list_volumes(Some(opts)).await.map_err(Error::docker("listing volumes"))?;
                Ok(volumes
                    .volumes
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|v| Some((v.labels.get("dfe.instance-id")?.clone(), v.name)))
                    .collect())
            }
        }
        .await;
        match listed {
            Ok(items) => found.parts.extend(items.into_iter().map(|(instance_id, name)| super::Part {
                kind,
                name,
                instance_id,
                location: host.id.clone(),
            })),
            Err(e) => found.unreachable.push(format!("host {}: {}", host.id, e.chain())),
        }
    }
    found
}
