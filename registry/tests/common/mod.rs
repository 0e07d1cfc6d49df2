//! A registry of its own for each integration test: a scratch database on the PostgreSQL of
//! `deploy/setup.sh`, migrated, with a plain connection beside it for setting up rows.

// Each test binary includes this module and uses a part of it.
#![allow(dead_code)]

use dfe_registry::Registry;
use dfe_shared::job::{Job, JobKind};

/// The administrative connection that creates and drops the scratch databases.
pub const ADMIN: &str = "postgres://dfe:dfe@127.0.0.1:5432/postgres";

/// A scratch registry.
pub struct Scratch {
    /// The registry on it (migrated).
    pub registry: Registry,
    /// Its URL.
    pub url: String,
    /// A plain connection to it.
    pub db: tokio_postgres::Client,
}

/// A plain connection to `url`; a missing server names the setup command.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL on 127.0.0.1:5432 ({e}): run `deploy/setup.sh` first"));
    tokio::spawn(conn);
    client
}

/// Creates (again) the scratch database `name` and connects a registry to it.
pub async fn scratch(name: &str) -> Scratch {
    let admin = connect(ADMIN).await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.expect("drop");
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create");
    let url = format!("postgres://dfe:dfe@127.0.0.1:5432/{name}");
    let registry = Registry::connect(&url, 2).await.expect("registry");
    let db = connect(&url).await;
    Scratch { registry, url, db }
}

/// Drops the scratch database `name`.
pub async fn drop_scratch(name: &str) {
    let admin = connect(ADMIN).await;
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}

/// A job of `kind` from its JSON body, which must be valid.
pub fn job(kind: JobKind, body: serde_json::Value) -> Job {
    Job::from_value(kind, body).expect("a valid job")
}
