//! `postgres`: each instance gets its own role and database `dfe_<instance_id>` on the
//! provisioner's database server, with a password from the OS CSPRNG and `CONNECT` revoked
//! from `PUBLIC`, so tenants cannot reach each other's data. Deprovision ends open sessions
//! and drops both.

use std::path::Path;
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

/// The comment that marks a database or role as an instance's: `dfe:<deployment>:<instance-id>`.
pub fn comment_mark(deployment: &str, instance_id: &str) -> String {
    format!("dfe:{deployment}:{instance_id}")
}

/// Reads a [`comment_mark`] back: (deployment, instance id).
pub fn parse_mark(comment: &str) -> Option<(&str, &str)> {
    let rest = comment.strip_prefix("dfe:")?;
    rest.rsplit_once(':')
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
        // Databases and roles cannot carry labels; a comment marks them as this deployment's,
        // so the reconciler finds them and never mistakes anything else for an orphan.
        let mark = literal(&comment_mark(&ctx.deployment, ctx.instance_id.as_str()));
        client
            .batch_execute(&format!("COMMENT ON ROLE {q} IS {mark}; COMMENT ON DATABASE {q} IS {mark}"))
            .await
            .map_err(self.err(format!("marking {name} as managed")))?;
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

    async fn export(&self, ctx: &InstanceContext, dest: &Path) -> Result<()> {
        let name = &ctx.names.database;
        ident(name)?;
        // pg_dump takes the whole dump in one repeatable-read transaction (consistent), and
        // without owners and grants it restores under any role and database name.
        let mut cmd = tokio::process::Command::new("pg_dump");
        cmd.args(["--format=plain", "--no-owner", "--no-privileges", "--no-password", "--file"])
            .arg(dest)
            .args(["--dbname", &self.conninfo(&self.server.user, name)]);
        self.run_tool("pg_dump", cmd, &self.server.password).await
    }

    async fn import(&self, ctx: &InstanceContext, sql: &Path) -> Result<()> {
        let names = ImportNames::new(&ctx.names.database)?;
        let client = self.connect().await?;
        let result = self.restore_into_staging(&client, &names, sql).await;
        // The temporary role goes whatever happened.
        let _ = client.batch_execute(&format!("DROP ROLE IF EXISTS {}", names.q_tmp)).await;
        if let Err(e) = result {
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", names.q_staging)).await;
            return Err(e);
        }
        self.swap_in(&client, &names).await?;
        let mark = literal(&comment_mark(&ctx.deployment, ctx.instance_id.as_str()));
        client
            .batch_execute(&format!("COMMENT ON DATABASE {} IS {mark}", names.q_main))
            .await
            .map_err(self.err(format!("marking {} as managed", names.main)))
    }

    async fn commit_import(&self, ctx: &InstanceContext) -> Result<()> {
        let names = ImportNames::new(&ctx.names.database)?;
        let client = self.connect().await?;
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", names.q_previous))
            .await
            .map_err(self.err(format!("dropping {}", names.previous)))
    }

    async fn rollback_import(&self, ctx: &InstanceContext) -> Result<()> {
        let names = ImportNames::new(&ctx.names.database)?;
        let client = self.connect().await?;
        let kept = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&names.previous])
            .await
            .map_err(self.err("looking up the previous database"))?
            .is_some();
        if !kept {
            return Ok(());
        }
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", names.q_main))
            .await
            .map_err(self.err(format!("dropping the imported {}", names.main)))?;
        client
            .batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", names.q_previous, names.q_main))
            .await
            .map_err(self.err(format!("putting {} back", names.main)))
    }
}

/// The databases and the temporary role of an import, derived from the instance's database.
struct ImportNames {
    main: String,
    previous: String,
    q_main: String,
    q_staging: String,
    q_previous: String,
    tmp: String,
    q_tmp: String,
}

impl ImportNames {
    fn new(main: &str) -> Result<ImportNames> {
        let staging = suffixed(main, "_imp");
        let previous = suffixed(main, "_pre");
        let tmp = suffixed(main, "_tmp");
        Ok(ImportNames {
            q_main: ident(main)?,
            q_staging: ident(&staging)?,
            q_previous: ident(&previous)?,
            q_tmp: ident(&tmp)?,
            main: main.to_owned(),
            previous,
            tmp,
        })
    }
}

/// `name` + `suffix`, shortening `name` so the result fits PostgreSQL's 63 bytes.
fn suffixed(name: &str, suffix: &str) -> String {
    let keep = name.len().min(63 - suffix.len());
    format!("{}{suffix}", &name[..keep])
}

impl Postgres {
    /// A libpq connection string for the tools (the password goes through PGPASSWORD).
    fn conninfo(&self, user: &str, dbname: &str) -> String {
        format!(
            "host={} port={} user={user} dbname={dbname} application_name=dfe-worker",
            self.server.host, self.server.port
        )
    }

    async fn run_tool(&self, tool: &'static str, mut cmd: tokio::process::Command, password: &Secret) -> Result<()> {
        cmd.env("PGPASSWORD", password.expose()).env("PGCONNECT_TIMEOUT", "10").stdin(std::process::Stdio::null());
        let out = cmd.output().await.map_err(|e| Error::Tool {
            tool,
            message: format!("cannot run it ({e}); install the PostgreSQL client tools (postgresql-client)"),
        })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message: String = stderr.lines().take(5).collect::<Vec<_>>().join("; ");
        Err(Error::Tool { tool, message: format!("{} — {message}", out.status) })
    }

    /// Restores the dump into a fresh staging database as a temporary login role that is a
    /// member of the instance's role, so the dump runs without the admin's privileges and
    /// everything it creates ends up owned by the instance's role.
    async fn restore_into_staging(&self, client: &Client, n: &ImportNames, sql: &Path) -> Result<()> {
        let main = &n.q_main;
        // CREATE and DROP DATABASE cannot share a multi-statement query (an implicit transaction).
        for stmt in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", n.q_staging),
            format!("DROP ROLE IF EXISTS {}", n.q_tmp),
            format!("CREATE DATABASE {} OWNER {main}", n.q_staging),
            format!(
                "REVOKE ALL ON DATABASE {staging} FROM PUBLIC; GRANT ALL ON DATABASE {staging} TO {main}",
                staging = n.q_staging
            ),
        ] {
            client.batch_execute(&stmt).await.map_err(self.err("creating the staging database"))?;
        }
        let password = Secret::generate(PASSWORD_LEN);
        let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
        client
            .batch_execute(&format!(
                "CREATE ROLE {tmp} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}; GRANT {main} TO {tmp}",
                literal(&verifier),
                tmp = n.q_tmp
            ))
            .await
            .map_err(self.err("creating the temporary restore role"))?;

        let prelude = sql.with_extension("prelude.sql");
        tokio::fs::write(
            &prelude,
            format!(
                "SET ROLE {main};
"
            ),
        )
        .await
        .map_err(Error::io("writing the restore prelude"))?;
        let staging = suffixed(&n.main, "_imp");
        let mut cmd = tokio::process::Command::new("psql");
        cmd.args(["--no-psqlrc", "--quiet", "--no-password", "--single-transaction", "-v", "ON_ERROR_STOP=1"])
            .args(["--dbname", &self.conninfo(&n.tmp, &staging)])
            .arg("--file")
            .arg(&prelude)
            .arg("--file")
            .arg(sql)
            .stdout(std::process::Stdio::null());
        let restored = self.run_tool("psql", cmd, &password).await;
        let _ = tokio::fs::remove_file(&prelude).await;
        restored?;

        // Anything the dump made after leaving the role (RESET ROLE) goes to the instance's role.
        let mut cfg = self.admin.clone();
        cfg.dbname(&staging);
        let (staging_client, conn) =
            cfg.connect(NoTls).await.map_err(self.err("connecting to the staging database"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        staging_client
            .batch_execute(&format!("REASSIGN OWNED BY {tmp} TO {main}; DROP OWNED BY {tmp}", tmp = n.q_tmp))
            .await
            .map_err(self.err("handing the restored objects to the instance's role"))?;
        Ok(())
    }

    /// Moves the instance's database aside and the staging one into its place.
    async fn swap_in(&self, client: &Client, n: &ImportNames) -> Result<()> {
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", n.q_previous))
            .await
            .map_err(self.err("dropping an old previous database"))?;
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&n.main],
            )
            .await
            .map_err(self.err("ending sessions before the swap"))?;
        client
            .batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", n.q_main, n.q_previous))
            .await
            .map_err(self.err("moving the current database aside"))?;
        if let Err(e) = client.batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", n.q_staging, n.q_main)).await {
            let _ = client.batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", n.q_previous, n.q_main)).await;
            return Err(self.err("moving the restored database into place")(e));
        }
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

/// What a database server holds of one deployment, found by [`comment_mark`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedObject {
    /// `database` or `role`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// The instance it belongs to.
    pub instance_id: String,
}

impl Postgres {
    /// The server's id in the configuration.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The databases and roles marked as `deployment`'s.
    pub async fn managed_objects(&self, deployment: &str) -> Result<Vec<ManagedObject>> {
        let client = self.connect().await?;
        let rows = client
            .query(
                "SELECT 'database', datname::text, shobj_description(oid, 'pg_database') FROM pg_database
                 UNION ALL
                 SELECT 'role', rolname::text, shobj_description(oid, 'pg_authid') FROM pg_roles",
                &[],
            )
            .await
            .map_err(self.err("listing databases and roles"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let kind: &str = r.get(0);
                let comment: Option<String> = r.get(2);
                let comment = comment?;
                let (dep, instance) = parse_mark(&comment)?;
                (dep == deployment).then(|| ManagedObject {
                    kind: if kind == "database" { "database" } else { "role" },
                    name: r.get(1),
                    instance_id: instance.to_owned(),
                })
            })
            .collect())
    }

    /// Drops a managed database (ending its sessions) or role.
    pub async fn drop_object(&self, object: &ManagedObject) -> Result<()> {
        let q = ident(&object.name)?;
        let client = self.connect().await?;
        let sql = if object.kind == "database" {
            format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)")
        } else {
            format!("DROP ROLE IF EXISTS {q}")
        };
        client.batch_execute(&sql).await.map_err(self.err(format!("dropping {} {}", object.kind, object.name)))
    }
}
