//! `noop`: makes nothing and succeeds at once, for any part. A provisioner whose three parts
//! are `noop` measures the pipeline alone (benchmarks, tests).

use std::path::Path;

use async_trait::async_trait;
use dfe_shared::secret::Secret;

use super::{
    DatabaseInfo, DatabaseProvisioner, InstanceContext, InstanceInfo, InstanceProvisioner, StorageInfo,
    StorageProvisioner,
};
use crate::error::Result;

/// The no-op sub-provisioner.
pub struct Noop;

#[async_trait]
impl StorageProvisioner for Noop {
    async fn provision(&self, _ctx: &InstanceContext) -> Result<StorageInfo> {
        Ok(StorageInfo::default())
    }
    async fn deprovision(&self, _ctx: &InstanceContext) -> Result<()> {
        Ok(())
    }
    async fn export(&self, _ctx: &InstanceContext, dest: &Path) -> Result<u64> {
        crate::snapshot::write_empty_tar(dest)?;
        Ok(0)
    }
    async fn import(&self, _ctx: &InstanceContext, _tar: &Path, _clean: bool, _backup: &Path) -> Result<()> {
        Ok(())
    }
    async fn restore(&self, _ctx: &InstanceContext, _backup: &Path) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl DatabaseProvisioner for Noop {
    async fn provision(&self, ctx: &InstanceContext) -> Result<DatabaseInfo> {
        Ok(DatabaseInfo {
            connection: "none".into(),
            host: String::new(),
            port: 0,
            database: ctx.names.database.clone(),
            username: ctx.names.database.clone(),
            password: Secret::new(""),
            server: "noop".into(),
        })
    }
    async fn deprovision(&self, _ctx: &InstanceContext) -> Result<()> {
        Ok(())
    }
    async fn export(&self, _ctx: &InstanceContext, dest: &Path) -> Result<()> {
        std::fs::write(dest, b"-- noop database\n").map_err(crate::error::Error::io("writing an empty dump"))
    }
    async fn import(&self, _ctx: &InstanceContext, _sql: &Path) -> Result<()> {
        Ok(())
    }
    async fn commit_import(&self, _ctx: &InstanceContext) -> Result<()> {
        Ok(())
    }
    async fn rollback_import(&self, _ctx: &InstanceContext) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl InstanceProvisioner for Noop {
    async fn provision(&self, _ctx: &InstanceContext, _s: &StorageInfo, _d: &DatabaseInfo) -> Result<InstanceInfo> {
        Ok(InstanceInfo::default())
    }
    async fn deprovision(&self, _ctx: &InstanceContext) -> Result<()> {
        Ok(())
    }
}
