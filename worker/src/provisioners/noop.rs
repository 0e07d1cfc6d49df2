//! `noop`: makes nothing and succeeds at once, for any part. A provisioner whose three parts
//! are `noop` measures the pipeline alone (benchmarks, tests).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use dfe_shared::secret::Secret;

use super::{
    BuildContext, DatabaseInfo, DatabaseProvisioner, Found, InstanceContext, InstanceInfo, InstanceProvisioner,
    Inventory, Part, StorageInfo, StorageProvisioner,
};
use crate::error::Result;

/// The no-op sub-provisioner.
pub struct Noop;

/// `noop` as the storage part.
pub fn build_storage(_: &BuildContext<'_>) -> Result<Arc<dyn StorageProvisioner>> {
    Ok(Arc::new(Noop))
}

/// `noop` as the database part.
pub fn build_database(_: &BuildContext<'_>) -> Result<Arc<dyn DatabaseProvisioner>> {
    Ok(Arc::new(Noop))
}

/// `noop` as the instance part.
pub fn build_instance(_: &BuildContext<'_>) -> Result<Arc<dyn InstanceProvisioner>> {
    Ok(Arc::new(Noop))
}

/// It makes nothing, so it has nothing to find or remove.
#[async_trait]
impl Inventory for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }
    fn parts(&self) -> &'static [&'static str] {
        &[]
    }
    async fn inventory(&self, _deployment: &str) -> Found {
        Found::default()
    }
    async fn remove_part(&self, _part: &Part) -> Result<()> {
        Ok(())
    }
}

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
    fn engine(&self) -> &'static str {
        "none"
    }
    async fn probe(&self, _server: &crate::fleet::DatabaseServer) -> Result<()> {
        Ok(())
    }
    fn connection(&self, ctx: &InstanceContext) -> Result<DatabaseInfo> {
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
    async fn provision(&self, _ctx: &InstanceContext, _info: &DatabaseInfo) -> Result<()> {
        Ok(())
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
    async fn suspend(&self, _ctx: &InstanceContext) -> Result<()> {
        Ok(())
    }
    async fn resume(&self, _ctx: &InstanceContext) -> Result<()> {
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
    async fn suspend(&self, _ctx: &InstanceContext) -> Result<()> {
        Ok(())
    }
    async fn resume(&self, _ctx: &InstanceContext) -> Result<InstanceInfo> {
        Ok(InstanceInfo::default())
    }
    async fn connection(&self, _ctx: &InstanceContext) -> Result<Option<DatabaseInfo>> {
        Ok(None)
    }
}
