//! Routes, one module per resource; [`crate::routes()`] lists them all, and the OpenAPI
//! document is generated from that list and the handlers' `#[utoipa::path]` attributes.

pub mod asyncapi;
pub mod fleet;
pub mod health;
pub mod lifecycle;
pub mod openapi;
pub mod ops;
pub mod read;
pub mod reconcile;
pub mod snapshots;
pub mod stream;
pub mod whoami;

use serde::Serialize;

/// `links` of an answer that names a resource to follow.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SelfLink {
    /// Its path.
    #[serde(rename = "self")]
    pub this: String,
}
