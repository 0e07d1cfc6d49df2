//! `postgres`: each instance gets its own role and database `dfe_<instance_id>` on the
//! provisioner's database server, with a password from the OS CSPRNG and `CONNECT` revoked
//! from `PUBLIC`, so tenants cannot reach each other's data. Deprovision ends open sessions
//! and drops both.

use std::time::Duration;

use async_trait::async_trait;
use dfe_shared::config::DatabaseServerConfig;
use dfe_shared::secret::Secret;
use tokio_postgres::{Client, NoTls};

use super::{DatabaseInfo, DatabaseProvisioner, InstanceContext};
use crate::error::{Error, Result};

/// Length of generated passwords (alphanumeric: ~190 bits).
const PASSWORD_LEN: usize = 32;

/// The PostgreSQL database provisioner for one server.
pub struct Postgres {
    id: String,
    server: DatabaseServerConfig,
    admin: tokio_postgres::Config,
}

impl Postgres {
    /// A provisioner for server `id`.
    pub fn new(id: &str, server: &DatabaseServerConfig) -> Result<Postgres> {
        let mut admin = tokio_postgres::Config::new();
        admin
            .host(&server.host)
            .port(server.port)
            .user(&server.user)
            .password(server.password.expose())
            .dbname(&server.admin_database)
            .application_name("dfe-worker")
            .connect_timeout(Duration::from_secs(10));
        Ok(Postgres { id: id.to_owned(), server: server.clone(), admin })
    }

    fn err(&self, context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let (server, context) = (self.id.clone(), context.into());
        move |source| Error::Database { server, context, source }
    }

    async fn connect(&self) -> Result<Client> {
        let (client, connection) = self.admin.connect(NoTls).await.map_err(self.err("connecting as the admin role"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
        Ok(client)
    }
}

/// Quotes a PostgreSQL identifier after checking it is a plain lowercase name. Identifiers
/// cannot be bound as parameters in DDL, hence the check and the quoting.
fn ident(name: &str) -> Result<String> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !plain {
        return Err(Error::Invalid(format!("{name:?} is not a safe PostgreSQL identifier")));
    }
    Ok(format!("\"{name}\""))
}

/// Quotes a string literal (doubling single quotes), for DDL that cannot take parameters.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[async_trait]
impl DatabaseProvisioner for Postgres {
    async fn provision(&self, ctx: &InstanceContext) -> Result<DatabaseInfo> {
        let name = &ctx.names.database;
        let q = ident(name)?;
        let password = Secret::generate(PASSWORD_LEN);
        // The server receives a SCRAM verifier, not the password: even with DDL logging on,
        // the password never reaches the server's logs.
        let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
        let client = self.connect().await?;

        let role_exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[name])
            .await
            .map_err(self.err("looking up the role"))?
            .is_some();
        let role_sql = if role_exists { "ALTER ROLE" } else { "CREATE ROLE" };
        client
            .batch_execute(&format!(
                "{role_sql} {q} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}",
                literal(&verifier)
            ))
            .await
            .map_err(self.err(format!("{} role {name}", if role_exists { "updating" } else { "creating" })))?;
        // Lets an admin without SUPERUSER create a database owned by the role (PostgreSQL 15
        // requires membership); harmless for a superuser.
        client
            .batch_execute(&format!("GRANT {q} TO CURRENT_USER"))
            .await
            .map_err(self.err(format!("granting role {name} to the admin")))?;

        let db_exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[name])
            .await
            .map_err(self.err("looking up the database"))?
            .is_some();
        if !db_exists {
            client
                .batch_execute(&format!("CREATE DATABASE {q} OWNER {q}"))
                .await
                .map_err(self.err(format!("creating database {name}")))?;
        }
        client
            .batch_execute(&format!("REVOKE ALL ON DATABASE {q} FROM PUBLIC; GRANT ALL ON DATABASE {q} TO {q}"))
            .await
            .map_err(self.err(format!("revoking CONNECT on {name} from PUBLIC")))?;

        Ok(DatabaseInfo {
            connection: "pgsql".into(),
            host: self.server.instance_host.clone().unwrap_or_else(|| self.server.host.clone()),
            port: self.server.port,
            database: name.clone(),
            username: name.clone(),
            password,
            server: self.id.clone(),
        })
    }

    async fn deprovision(&self, ctx: &InstanceContext) -> Result<()> {
        let name = &ctx.names.database;
        let q = ident(name)?;
        let client = self.connect().await?;
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE (datname = $1 OR usename = $1) AND pid <> pg_backend_pid()",
                &[name],
            )
            .await
            .map_err(self.err(format!("ending sessions of {name}")))?;
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)"))
            .await
            .map_err(self.err(format!("dropping database {name}")))?;
        client
            .batch_execute(&format!("DROP ROLE IF EXISTS {q}"))
            .await
            .map_err(self.err(format!("dropping role {name}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_are_quoted() {
        assert_eq!(ident("dfe_acme_1").expect("plain"), "\"dfe_acme_1\"");
        for bad in ["", "Dfe", "a;drop", "a\"b", "1abc", "a b"] {
            assert!(ident(bad).is_err(), "{bad:?}");
        }
        assert_eq!(literal("it's"), "'it''s'");
    }
}
