//! Routes, one module per resource.

pub mod health;
pub mod openapi;
pub mod ops;
pub mod read;
