//! `docker-volume`: the instance's storage is a named local volume `dfe-<id>-storage`,
//! labelled like the container so the reconciler can find it by owner.

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::volume::{CreateVolumeOptions, RemoveVolumeOptions};

use super::docker::is_not_found;
use super::{InstanceContext, StorageInfo, StorageProvisioner};
use crate::error::{Error, Result};

/// The Docker volume storage provisioner.
pub struct DockerVolume;

/// The labels every resource of an instance carries.
pub fn labels(ctx: &InstanceContext) -> HashMap<String, String> {
    HashMap::from([
        ("dfe.managed".to_owned(), "true".to_owned()),
        ("dfe.instance-id".to_owned(), ctx.instance_id.to_string()),
        ("dfe.owner-id".to_owned(), ctx.owner_id.clone()),
        ("dfe.job-id".to_owned(), ctx.job_id.clone()),
    ])
}

#[async_trait]
impl StorageProvisioner for DockerVolume {
    async fn provision(&self, ctx: &InstanceContext) -> Result<StorageInfo> {
        let docker = ctx.docker("docker-volume")?.client().await?;
        let name = &ctx.names.volume;
        match docker.inspect_volume(name).await {
            Ok(existing) => {
                let owner = existing.labels.get("dfe.instance-id");
                if owner.map(String::as_str) != Some(ctx.instance_id.as_str()) {
                    return Err(Error::Conflict(format!(
                        "volume {name} exists and does not belong to instance {}",
                        ctx.instance_id
                    )));
                }
            }
            Err(e) if is_not_found(&e) => {
                // Creating a volume that exists is a no-op in Docker, so a race is harmless.
                let opts = CreateVolumeOptions {
                    name: name.clone(),
                    driver: "local".to_owned(),
                    labels: labels(ctx),
                    ..Default::default()
                };
                docker.create_volume(opts).await.map_err(Error::docker(format!("creating volume {name}")))?;
            }
            Err(e) => return Err(Error::docker(format!("inspecting volume {name}"))(e)),
        }
        Ok(StorageInfo { volume: Some(name.clone()) })
    }

    async fn deprovision(&self, ctx: &InstanceContext) -> Result<()> {
        let docker = ctx.docker("docker-volume")?.client().await?;
        let name = &ctx.names.volume;
        match docker.remove_volume(name, Some(RemoveVolumeOptions { force: true })).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::docker(format!("removing volume {name}"))(e)),
        }
    }
}
