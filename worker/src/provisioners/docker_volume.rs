//! `docker-volume`: the instance's storage is a named local volume `dfe-<id>-storage`,
//! labelled like the container so the reconciler can find it by owner.

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ExecConfig, VolumeCreateRequest};
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, RemoveVolumeOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::docker::is_not_found;
use super::{BuildContext, Found, InstanceContext, Inventory, Part, StorageInfo, StorageProvisioner};
use crate::error::{Error, Result};
use crate::fleet::Fleet;

/// The Docker volume storage provisioner.
pub struct DockerVolume {
    fleet: std::sync::Arc<Fleet>,
}

/// Builds it (see the tables in [`super`]).
pub fn build(b: &BuildContext<'_>) -> Result<std::sync::Arc<dyn StorageProvisioner>> {
    Ok(std::sync::Arc::new(DockerVolume { fleet: b.fleet.clone() }))
}

#[async_trait]
impl Inventory for DockerVolume {
    fn name(&self) -> &'static str {
        "docker-volume"
    }

    fn parts(&self) -> &'static [&'static str] {
        &["volume"]
    }

    async fn inventory(&self, deployment: &str) -> Found {
        super::docker::labelled(self.fleet.hosts(), deployment, "volume").await
    }

    async fn remove_part(&self, part: &Part) -> Result<()> {
        let host = self
            .fleet
            .host(&part.location)
            .ok_or_else(|| Error::Config(format!("no Docker host {}", part.location)))?;
        let docker = host.client().await?;
        match docker.remove_volume(&part.name, Some(RemoveVolumeOptionsBuilder::default().force(true).build())).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::docker(format!("removing volume {}", part.name))(e)),
        }
    }
}

/// The labels every resource of an instance carries.
pub fn labels(ctx: &InstanceContext) -> HashMap<String, String> {
    HashMap::from([
        ("dfe.managed".to_owned(), "true".to_owned()),
        ("dfe.instance-id".to_owned(), ctx.instance_id.to_string()),
        ("dfe.owner-id".to_owned(), ctx.owner_id.clone()),
        ("dfe.job-id".to_owned(), ctx.job_id.clone()),
        ("dfe.deployment".to_owned(), ctx.deployment.clone()),
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
                let opts = VolumeCreateRequest {
                    name: Some(name.clone()),
                    driver: Some("local".to_owned()),
                    labels: Some(labels(ctx)),
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
        match docker.remove_volume(name, Some(RemoveVolumeOptionsBuilder::default().force(true).build())).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::docker(format!("removing volume {name}"))(e)),
        }
    }

    async fn export(&self, ctx: &InstanceContext, dest: &Path) -> Result<u64> {
        let docker = ctx.docker("docker-volume")?.client().await?;
        // The volume is read through the instance's container, which mounts it: Docker's
        // archive endpoint streams a directory of a container (running or not) as a tar.
        let container = &ctx.names.container;
        let path = ctx.storage_path();
        let raw = dest.with_extension("download");
        let mut file = tokio::fs::File::create(&raw).await.map_err(Error::io(format!("creating {}", raw.display())))?;
        let opts = DownloadFromContainerOptionsBuilder::default().path(&path).build();
        let mut stream = docker.download_from_container(container, Some(opts));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Error::docker(format!("reading {path} of container {container}")))?;
            file.write_all(&chunk).await.map_err(Error::io(format!("writing {}", raw.display())))?;
        }
        file.flush().await.map_err(Error::io(format!("writing {}", raw.display())))?;
        drop(file);
        let (raw_c, dest_c) = (raw.clone(), dest.to_path_buf());
        let skipped =
            tokio::task::spawn_blocking(move || crate::snapshot::repack_relative(&raw_c, &dest_c)).await.map_err(
                |e| Error::Io { context: "repacking the storage".into(), source: std::io::Error::other(e) },
            )??;
        let _ = tokio::fs::remove_file(&raw).await;
        if skipped > 0 {
            tracing::warn!(container, skipped, "links and special files were left out of the storage export");
        }
        Ok(skipped)
    }

    async fn import(&self, ctx: &InstanceContext, tar: &Path, clean: bool, backup: &Path) -> Result<()> {
        // The backup appears under its name only once complete: a caller that finds it may
        // put it back, never a half-written one.
        let dir = backup.parent().unwrap_or(Path::new("."));
        let partial = tempfile::Builder::new()
            .prefix(".storage-backup-")
            .tempfile_in(dir)
            .map_err(Error::io(format!("creating a temporary backup in {}", dir.display())))?
            .into_temp_path();
        self.export(ctx, &partial).await?;
        partial
            .persist(backup)
            .map_err(|e| Error::io(format!("moving the backup to {}", backup.display()))(e.error))?;
        match load(ctx, tar, clean).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(r) = load(ctx, backup, true).await {
                    tracing::error!(error = %r.chain(), "restoring the storage after a failed import failed");
                }
                Err(e)
            }
        }
    }

    async fn restore(&self, ctx: &InstanceContext, backup: &Path) -> Result<()> {
        load(ctx, backup, true).await
    }
}

/// Loads a tar of relative paths into the storage path of the instance's container.
async fn load(ctx: &InstanceContext, tar: &Path, clean: bool) -> Result<()> {
    let docker = ctx.docker("docker-volume")?.client().await?;
    let container = &ctx.names.container;
    let path = ctx.storage_path();
    if clean {
        empty(docker, container, &path).await?;
    }
    let file = tokio::fs::File::open(tar).await.map_err(Error::io(format!("opening {}", tar.display())))?;
    // A read error ends the stream early; Docker then refuses the truncated tar.
    let body = tokio_util::io::ReaderStream::new(file).filter_map(|chunk| async move { chunk.ok() });
    let opts = UploadToContainerOptionsBuilder::default().path(&path).build();
    docker
        .upload_to_container(container, Some(opts), bollard::body_stream(body))
        .await
        .map_err(Error::docker(format!("writing into {path} of container {container}")))
}

/// Empties a directory of a container (not the directory itself) with the image's shell.
async fn empty(docker: &bollard::Docker, container: &str, path: &str) -> Result<()> {
    // The three globs match every entry, dot-files included, but not `.` and `..`; a glob
    // that matches nothing stays literal and `rm -f` ignores it. The path is an argument,
    // not part of the script, so it is never parsed by the shell.
    let script = r#"cd -- "$1" && rm -rf -- ./..?* ./.[!.]* ./*"#;
    let cmd = vec!["sh".to_owned(), "-c".into(), script.into(), "sh".into(), path.to_owned()];
    let exec = docker
        .create_exec(
            container,
            ExecConfig { cmd: Some(cmd), attach_stdout: Some(true), attach_stderr: Some(true), ..Default::default() },
        )
        .await
        .map_err(Error::docker(format!("preparing to empty {path} of container {container}")))?;
    let mut said = String::new();
    let started = docker
        .start_exec(&exec.id, None::<StartExecOptions>)
        .await
        .map_err(Error::docker(format!("emptying {path} of container {container}")))?;
    if let StartExecResults::Attached { mut output, .. } = started {
        while let Some(Ok(out)) = output.next().await {
            if said.len() < 300 {
                said.push_str(&out.to_string());
            }
        }
    }
    let done = docker.inspect_exec(&exec.id).await.map_err(Error::docker("reading an exec's status"))?;
    match done.exit_code {
        Some(0) => Ok(()),
        code => {
            Err(Error::Tool { tool: "find", message: format!("exit code {code:?} emptying {path}: {}", said.trim()) })
        }
    }
}
