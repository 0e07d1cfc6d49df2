//! Routes, one module per resource.

pub mod health;
pub mod ops;
pub mod read;
