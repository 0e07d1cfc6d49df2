//! `postgres`: each instance gets its own role and database `dfe_<instance_id>` on the
//! provisioner's database server, with a password from the OS CSPRNG and `CONNECT` revoked
//! from `PUBLIC`, so tenants cannot reach each other's data. Deprovision ends open sessions
//! and drops both.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dfe_shared::secret::Secret;
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, NoTls};

use super::{BuildContext, DatabaseInfo, DatabaseProvisioner, Found, InstanceContext, Inventory, Part};
use crate::error::{Error, Result};
use crate::fleet::{DatabaseServer, Fleet};

/// Length of generated passwords (alphanumeric: ~190 bits).
const PASSWORD_LEN: usize = 32;

/// First key of the advisory locks this provisioner takes on database servers ("dfed").
const DB_LOCK_SPACE: i32 = 0x6466_6564;

/// How long a take-over waits for the sessions of an earlier run to end.
const TERMINATE_WAIT_MS: i64 = 5_000;

/// The PostgreSQL database provisioner, for every `engine = "postgres"` server.
pub struct Postgres {
    fleet: Arc<Fleet>,
}

/// Builds it (see the tables in [`super`]).
pub fn build(b: &BuildContext<'_>) -> Result<Arc<dyn DatabaseProvisioner>> {
    Ok(Arc::new(Postgres { fleet: b.fleet.clone() }))
}

/// The `application_name` of a job's sessions: `dfe-job-<hash of the job id>`, so that a
/// later run of the job can find and end what an earlier, dead run left running.
fn job_session_name(job_id: &str) -> String {
    format!("dfe-job-{}", &hex::encode(Sha256::digest(job_id.as_bytes()))[..16])
}

fn err(server: &str, context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let (server, context) = (server.to_owned(), context.into());
    move |source| Error::Database { server, context, source }
}

/// Whether a statement failed because what it creates exists already (made concurrently by
/// an earlier run of the job): that counts as found, not as a failure.
fn already_exists(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| matches!(c.code(), "42P04" | "42710" | "23505"))
}

impl Postgres {
    /// The admin connection settings of `server`, tagged with `session` as application name.
    fn admin(server: &DatabaseServer, session: &str, dbname: Option<&str>) -> tokio_postgres::Config {
        let c = &server.config;
        let mut admin = tokio_postgres::Config::new();
        admin
            .host(&c.host)
            .port(c.port)
            .user(&c.user)
            .password(c.password.expose())
            .dbname(dbname.unwrap_or(&c.admin_database))
            .application_name(session)
            .connect_timeout(Duration::from_secs(10));
        admin
    }

    async fn connect_to(server: &DatabaseServer, session: &str, dbname: Option<&str>) -> Result<Client> {
        let (client, connection) = Self::admin(server, session, dbname)
            .connect(NoTls)
            .await
            .map_err(err(&server.id, "connecting as the admin role"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
        Ok(client)
    }

    /// An admin connection to the instance's server for its job, holding the server-side
    /// lock of the instance's database for as long as it lives: two runs of one job (a dead
    /// worker's statements and the next run's) never change the same role and database at
    /// once (concurrent DDL on one object fails with "tuple concurrently updated"). On a
    /// later run of the job, the sessions of earlier runs are ended first, which also frees
    /// a lock a dead run's session still holds.
    async fn connect(&self, ctx: &InstanceContext) -> Result<Client> {
        let server = ctx.database("postgres")?;
        let session = job_session_name(&ctx.job_id);
        let client = Self::connect_to(server, &session, None).await?;
        if ctx.attempt > 1 {
            let ended = client
                .query(
                    "SELECT pg_terminate_backend(pid, $2) FROM pg_stat_activity
                     WHERE application_name = $1 AND pid <> pg_backend_pid()",
                    &[&session, &TERMINATE_WAIT_MS],
                )
                .await
                .map_err(err(&server.id, "ending the sessions of an earlier run of the job"))?;
            if !ended.is_empty() {
                tracing::warn!(job_id = %ctx.job_id, sessions = ended.len(), "ended database sessions an earlier run of this job left");
            }
        }
        client
            .execute("SELECT pg_advisory_lock($1, hashtext($2))", &[&DB_LOCK_SPACE, &ctx.names.database])
            .await
            .map_err(err(&server.id, format!("locking {}", ctx.names.database)))?;
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
impl Inventory for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn parts(&self) -> &'static [&'static str] {
        &["database", "role"]
    }

    async fn inventory(&self, deployment: &str) -> Found {
        let mut found = Found::default();
        for server in self.fleet.servers_of("postgres") {
            match managed_objects(server, deployment).await {
                Ok(parts) => found.parts.extend(parts),
                Err(e) => found.unreachable.push(e.chain()),
            }
        }
        found
    }

    async fn remove_part(&self, part: &Part) -> Result<()> {
        let server = self
            .fleet
            .server(&part.location)
            .ok_or_else(|| Error::Config(format!("no database server {}", part.location)))?;
        let q = ident(&part.name)?;
        let client = Self::connect_to(server, "dfe-reconciler", None).await?;
        // Identifiers cannot be bound in DDL: the name was checked by `ident` and is quoted.
        let sql = if part.kind == "database" {
            format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)")
        } else {
            format!("DROP ROLE IF EXISTS {q}")
        };
        client.batch_execute(&sql).await.map_err(err(&server.id, format!("dropping {} {}", part.kind, part.name)))
    }
}

/// The databases and roles of `server` marked (by [`comment_mark`]) as `deployment`'s.
async fn managed_objects(server: &DatabaseServer, deployment: &str) -> Result<Vec<Part>> {
    let client = Postgres::connect_to(server, "dfe-reconciler", None).await?;
    let rows = client
        .query(
            "SELECT 'database', datname::text, shobj_description(oid, 'pg_database') FROM pg_database
             UNION ALL
             SELECT 'role', rolname::text, shobj_description(oid, 'pg_authid') FROM pg_roles",
            &[],
        )
        .await
        .map_err(err(&server.id, "listing databases and roles"))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let kind: &str = r.get(0);
            let comment: Option<String> = r.get(2);
            let comment = comment?;
            let (dep, instance) = parse_mark(&comment)?;
            (dep == deployment).then(|| Part {
                kind: if kind == "database" { "database" } else { "role" },
                name: r.get(1),
                instance_id: instance.to_owned(),
                location: server.id.clone(),
            })
        })
        .collect())
}

#[async_trait]
impl DatabaseProvisioner for Postgres {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    async fn probe(&self, server: &DatabaseServer) -> Result<()> {
        let client = Self::connect_to(server, "dfe-probe", None).await?;
        client.simple_query("SELECT 1").await.map_err(err(&server.id, "probing"))?;
        Ok(())
    }

    fn connection(&self, ctx: &InstanceContext) -> Result<DatabaseInfo> {
        let server = ctx.database("postgres")?;
        let c = &server.config;
        Ok(DatabaseInfo {
            connection: "pgsql".into(),
            host: c.instance_host.clone().unwrap_or_else(|| c.host.clone()),
            port: c.port,
            database: ctx.names.database.clone(),
            username: ctx.names.database.clone(),
            password: Secret::generate(PASSWORD_LEN),
            server: server.id.clone(),
        })
    }

    async fn provision(&self, ctx: &InstanceContext, info: &DatabaseInfo) -> Result<()> {
        let server = ctx.database("postgres")?;
        let e = |what: String| err(&server.id, what);
        let name = &ctx.names.database;
        // Identifiers cannot be bound as parameters in DDL: `ident` checks the name is a
        // plain lowercase identifier and quotes it; the password goes as a SCRAM verifier
        // literal, quoted by `literal`.
        let q = ident(name)?;
        let password = &info.password;
        // The server receives a SCRAM verifier, not the password: even with DDL logging on,
        // the password never reaches the server's logs.
        let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
        let client = self.connect(ctx).await?;

        let role_exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[name])
            .await
            .map_err(e("looking up the role".into()))?
            .is_some();
        let role_options = format!("WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}", literal(&verifier));
        if !role_exists {
            match client.batch_execute(&format!("CREATE ROLE {q} {role_options}")).await {
                Ok(()) => {}
                // Made meanwhile by an earlier run of this job: found, and given the new password below.
                Err(x) if already_exists(&x) => {
                    client
                        .batch_execute(&format!("ALTER ROLE {q} {role_options}"))
                        .await
                        .map_err(e(format!("updating role {name}")))?;
                }
                Err(x) => return Err(e(format!("creating role {name}"))(x)),
            }
        } else {
            client
                .batch_execute(&format!("ALTER ROLE {q} {role_options}"))
                .await
                .map_err(e(format!("updating role {name}")))?;
        }
        // Lets an admin without SUPERUSER create a database owned by the role (PostgreSQL 15
        // requires membership); harmless for a superuser.
        client
            .batch_execute(&format!("GRANT {q} TO CURRENT_USER"))
            .await
            .map_err(e(format!("granting role {name} to the admin")))?;

        let db_exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[name])
            .await
            .map_err(e("looking up the database".into()))?
            .is_some();
        if !db_exists {
            match client.batch_execute(&format!("CREATE DATABASE {q} OWNER {q}")).await {
                Ok(()) => {}
                Err(x) if already_exists(&x) => {
                    tracing::warn!(database = %name, "the database appeared while it was being created; using it");
                }
                Err(x) => return Err(e(format!("creating database {name}"))(x)),
            }
        }
        // Databases and roles cannot carry labels; a comment marks them as this deployment's,
        // so the reconciler finds them and never mistakes anything else for an orphan.
        let mark = literal(&comment_mark(&ctx.deployment, ctx.instance_id.as_str()));
        client
            .batch_execute(&format!("COMMENT ON ROLE {q} IS {mark}; COMMENT ON DATABASE {q} IS {mark}"))
            .await
            .map_err(e(format!("marking {name} as managed")))?;
        client
            .batch_execute(&format!("REVOKE ALL ON DATABASE {q} FROM PUBLIC; GRANT ALL ON DATABASE {q} TO {q}"))
            .await
            .map_err(e(format!("revoking CONNECT on {name} from PUBLIC")))?;
        Ok(())
    }

    async fn deprovision(&self, ctx: &InstanceContext) -> Result<()> {
        let server = ctx.database("postgres")?;
        let e = |what: String| err(&server.id, what);
        let name = &ctx.names.database;
        let q = ident(name)?;
        let client = self.connect(ctx).await?;
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE (datname = $1 OR usename = $1) AND pid <> pg_backend_pid()",
                &[name],
            )
            .await
            .map_err(e(format!("ending sessions of {name}")))?;
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)"))
            .await
            .map_err(e(format!("dropping database {name}")))?;
        client.batch_execute(&format!("DROP ROLE IF EXISTS {q}")).await.map_err(e(format!("dropping role {name}")))?;
        Ok(())
    }

    async fn export(&self, ctx: &InstanceContext, dest: &Path) -> Result<()> {
        let server = ctx.database("postgres")?;
        let name = &ctx.names.database;
        ident(name)?;
        // pg_dump takes the whole dump in one repeatable-read transaction (consistent), and
        // without owners and grants it restores under any role and database name.
        let mut cmd = tokio::process::Command::new("pg_dump");
        cmd.args(["--format=plain", "--no-owner", "--no-privileges", "--no-password", "--file"])
            .arg(dest)
            .args(["--dbname", &conninfo(server, &server.config.user, name, &job_session_name(&ctx.job_id))]);
        run_tool("pg_dump", cmd, &server.config.password).await
    }

    async fn import(&self, ctx: &InstanceContext, sql: &Path) -> Result<()> {
        let server = ctx.database("postgres")?;
        let names = ImportNames::new(&ctx.names.database)?;
        let client = self.connect(ctx).await?;
        let result = restore_into_staging(server, &ctx.job_id, &client, &names, sql).await;
        // The temporary role goes whatever happened.
        let _ = client.batch_execute(&format!("DROP ROLE IF EXISTS {}", names.q_tmp)).await;
        if let Err(e) = result {
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", names.q_staging)).await;
            return Err(e);
        }
        swap_in(server, &client, &names).await?;
        let mark = literal(&comment_mark(&ctx.deployment, ctx.instance_id.as_str()));
        client
            .batch_execute(&format!("COMMENT ON DATABASE {} IS {mark}", names.q_main))
            .await
            .map_err(err(&server.id, format!("marking {} as managed", names.main)))
    }

    async fn commit_import(&self, ctx: &InstanceContext) -> Result<()> {
        let server = ctx.database("postgres")?;
        let names = ImportNames::new(&ctx.names.database)?;
        let client = self.connect(ctx).await?;
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", names.q_previous))
            .await
            .map_err(err(&server.id, format!("dropping {}", names.previous)))
    }

    async fn suspend(&self, ctx: &InstanceContext) -> Result<()> {
        let server = ctx.database("postgres")?;
        let name = &ctx.names.database;
        // Identifiers cannot be bound in DDL: `ident` checked and quoted the name.
        let q = ident(name)?;
        let client = self.connect(ctx).await?;
        client
            .batch_execute(&format!("ALTER ROLE {q} NOLOGIN"))
            .await
            .map_err(err(&server.id, format!("refusing logins of {name}")))?;
        // Sessions opened before are ended too: a suspended tenant reaches no data.
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
                &[name],
            )
            .await
            .map_err(err(&server.id, format!("ending sessions of {name}")))?;
        Ok(())
    }

    async fn resume(&self, ctx: &InstanceContext) -> Result<()> {
        let server = ctx.database("postgres")?;
        let name = &ctx.names.database;
        let q = ident(name)?;
        let client = self.connect(ctx).await?;
        client
            .batch_execute(&format!("ALTER ROLE {q} LOGIN"))
            .await
            .map_err(err(&server.id, format!("allowing logins of {name}")))
    }

    async fn rollback_import(&self, ctx: &InstanceContext) -> Result<()> {
        let server = ctx.database("postgres")?;
        let e = |what: String| err(&server.id, what);
        let names = ImportNames::new(&ctx.names.database)?;
        let client = self.connect(ctx).await?;
        let kept = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&names.previous])
            .await
            .map_err(e("looking up the previous database".into()))?
            .is_some();
        if !kept {
            return Ok(());
        }
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", names.q_main))
            .await
            .map_err(e(format!("dropping the imported {}", names.main)))?;
        client
            .batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", names.q_previous, names.q_main))
            .await
            .map_err(e(format!("putting {} back", names.main)))
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

/// A libpq connection string for the tools (the password goes through PGPASSWORD).
fn conninfo(server: &DatabaseServer, user: &str, dbname: &str, session: &str) -> String {
    format!(
        "host={} port={} user={user} dbname={dbname} application_name={session}",
        server.config.host, server.config.port
    )
}

async fn run_tool(tool: &'static str, mut cmd: tokio::process::Command, password: &Secret) -> Result<()> {
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
async fn restore_into_staging(
    server: &DatabaseServer,
    job_id: &str,
    client: &Client,
    n: &ImportNames,
    sql: &Path,
) -> Result<()> {
    let e = |what: &'static str| err(&server.id, what);
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
        client.batch_execute(&stmt).await.map_err(e("creating the staging database"))?;
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
        .map_err(e("creating the temporary restore role"))?;

    let prelude = tempfile::Builder::new()
        .prefix(".restore-prelude-")
        .suffix(".sql")
        .tempfile_in(sql.parent().unwrap_or(Path::new(".")))
        .map_err(Error::io("creating the restore prelude"))?;
    std::fs::write(prelude.path(), format!("SET ROLE {main};\n")).map_err(Error::io("writing the restore prelude"))?;
    let staging = suffixed(&n.main, "_imp");
    let session = job_session_name(job_id);
    let mut cmd = tokio::process::Command::new("psql");
    cmd.args(["--no-psqlrc", "--quiet", "--no-password", "--single-transaction", "-v", "ON_ERROR_STOP=1"])
        .args(["--dbname", &conninfo(server, &n.tmp, &staging, &session)])
        .arg("--file")
        .arg(prelude.path())
        .arg("--file")
        .arg(sql)
        .stdout(std::process::Stdio::null());
    run_tool("psql", cmd, &password).await?;
    drop(prelude);

    // Anything the dump made after leaving the role (RESET ROLE) goes to the instance's role.
    let staging_client = Postgres::connect_to(server, &session, Some(&staging)).await?;
    staging_client
        .batch_execute(&format!("REASSIGN OWNED BY {tmp} TO {main}; DROP OWNED BY {tmp}", tmp = n.q_tmp))
        .await
        .map_err(e("handing the restored objects to the instance's role"))?;
    Ok(())
}

/// Moves the instance's database aside and the staging one into its place.
async fn swap_in(server: &DatabaseServer, client: &Client, n: &ImportNames) -> Result<()> {
    let e = |what: &'static str| err(&server.id, what);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", n.q_previous))
        .await
        .map_err(e("dropping an old previous database"))?;
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&n.main],
        )
        .await
        .map_err(e("ending sessions before the swap"))?;
    client
        .batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", n.q_main, n.q_previous))
        .await
        .map_err(e("moving the current database aside"))?;
    if let Err(x) = client.batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", n.q_staging, n.q_main)).await {
        let _ = client.batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", n.q_previous, n.q_main)).await;
        return Err(e("moving the restored database into place")(x));
    }
    Ok(())
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

    #[test]
    fn a_jobs_sessions_carry_a_name_of_their_own() {
        let a = job_session_name("job-1");
        assert_eq!(a, job_session_name("job-1"));
        assert_ne!(a, job_session_name("job-2"));
        assert!(a.len() < 64, "application_name is truncated at 63 bytes");
    }
}
