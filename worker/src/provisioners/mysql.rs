//! `mysql`: each instance gets its own database and user `dfe_<instance_id>` on the
//! provisioner's MySQL 8 or MariaDB 10.11+ server (`engine = "mysql"`): `'user'@'%'` with
//! `ALL` on that database alone, a password from the OS CSPRNG, `DB_CONNECTION=mysql`.
//! Deprovision drops the user, ends its sessions and drops the database.
//!
//! - **Names.** Databases hold at most 64 characters and users 32 on both servers: longer
//!   names keep a prefix and get a hash of the instance id ([`super::db_name`]). What the
//!   provisioner makes beside them carries a `$`, which no instance's name can contain:
//!   the staging and previous databases of an import (`<db>$imp`, `<db>$pre`) and a job's
//!   own short-lived user (`<prefix>$j<hash of the job id>`).
//! - **Marking.** MySQL has no comments on databases or users, so every database and user
//!   the provisioner makes is recorded in a marker table, `dfe$meta`.`managed` (kind, name,
//!   deployment, instance id, job id) on the same server, *before* it is made: nothing of
//!   ours can exist unmarked, a marker whose object does not exist is ignored, and an object
//!   that exists without our marker (made by hand, or by another deployment) is never
//!   taken over, changed or dropped. The reconciler reads the markers of its deployment.
//! - **Take-over.** Every admin session of a job holds a user-level lock named after the
//!   job (`GET_LOCK('dfe-job:<hash>')`), so a later run finds an earlier run's session with
//!   `IS_USED_LOCK` and kills it; the dump and restore tools of a job log in as the job's
//!   own user, so their sessions are those of that user. Both work on MariaDB 10.11 without
//!   `performance_schema`. Runs on one database are serialized by a second lock named after
//!   the database, held by the admin session for the whole call.
//! - **Export** runs `mariadb-dump` (or `mysqldump`) with `--single-transaction --routines
//!   --triggers --no-create-db` as the job's read-only user and strips the `DEFINER` clauses
//!   from the stream, so the dump restores under another database and user name.
//! - **Import** restores into `<db>$imp` as the job's user (never with admin rights), then
//!   swaps it in: MySQL cannot rename a database, so the base tables of both databases move
//!   in ONE `RENAME TABLE` statement (the current ones to `<db>$pre`, the restored ones into
//!   place: atomic on both servers, so a reader sees the old tables or the new ones, never a
//!   mix), and views, triggers and routines, which cannot move between databases, are
//!   re-created from their definitions around it: the restored ones with the instance's
//!   user as definer, the previous ones as they were. `rollback_import` moves `<db>$pre`
//!   back the same way; `commit_import` drops it.
//! - **TLS** is used whenever the server offers it (like the clients' `ssl-mode=PREFERRED`:
//!   encrypted, the certificate not verified), rustls with the ring provider.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dfe_shared::ids::InstanceId;
use dfe_shared::secret::Secret;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use super::{db_name, BuildContext, DatabaseInfo, DatabaseProvisioner, Found, InstanceContext, Inventory, Part};
use crate::error::{Error, Result};
use crate::fleet::{DatabaseServer, Fleet};

/// Length of generated passwords (alphanumeric: ~190 bits).
const PASSWORD_LEN: usize = 32;
/// MySQL 8's and MariaDB's limit on database names.
const DATABASE_LIMIT: usize = 64;
/// MySQL 8's limit on user names (MariaDB takes 80; 32 fits both).
const USER_LIMIT: usize = 32;
/// The database of the marker table (a `$`: no instance's database can be called that).
const META_DB: &str = "dfe$meta";
/// Seconds a call waits for the lock of its database (another run working on it).
const DB_LOCK_WAIT_SECS: u32 = 30;
/// Seconds DDL waits for the tables' metadata locks before giving up.
const LOCK_WAIT_TIMEOUT_SECS: u32 = 30;
/// How long connecting to a server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections kept per server.
const POOL_MAX: usize = 16;

/// The MySQL/MariaDB database provisioner, for every `engine = "mysql"` server.
pub struct Mysql {
    /// The database servers.
    fleet: Arc<Fleet>,
    /// `naming.prefix`, for the names of databases and users.
    prefix: String,
    /// `naming.deployment`, written into and read from the markers.
    deployment: String,
    /// One pool per `engine = "mysql"` server, made on first use (so a worker starts while a
    /// server is down), with whether the server offered TLS.
    pools: BTreeMap<String, OnceCell<Pooled>>,
}

struct Pooled {
    pool: Pool,
    tls: bool,
}

/// Builds it (see the tables in [`super`]).
pub fn build(b: &BuildContext<'_>) -> Result<Arc<dyn DatabaseProvisioner>> {
    let pools = b.fleet.servers_of("mysql").map(|s| (s.id.clone(), OnceCell::new())).collect();
    Ok(Arc::new(Mysql {
        fleet: b.fleet.clone(),
        prefix: b.config.naming.prefix.clone(),
        deployment: b.config.naming.deployment.clone(),
        pools,
    }))
}

fn err(server: &str, context: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> Error {
    let (server, context) = (server.to_owned(), context.into());
    move |source| Error::MySql { server, context, source }
}

fn hash16(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))[..16].to_owned()
}

/// The names of what an instance's database is made of on a MySQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MyNames {
    /// The database, at most 64 characters.
    database: String,
    /// The user, at most 32.
    user: String,
    /// The database an import restores into.
    staging: String,
    /// Where an import keeps the database it replaced until it is committed.
    previous: String,
}

impl MyNames {
    fn new(prefix: &str, instance: &InstanceId) -> MyNames {
        let stem = grantable(prefix, instance, DATABASE_LIMIT - 4);
        MyNames {
            database: grantable(prefix, instance, DATABASE_LIMIT),
            user: db_name(prefix, instance, USER_LIMIT),
            staging: format!("{stem}$imp"),
            previous: format!("{stem}$pre"),
        }
    }
}

/// [`db_name`] short enough that it still fits `limit` once a `GRANT` escapes its `_`
/// (see [`grant_db`]): the servers check the escaped name's length, and an unescaped `_`
/// would be a wildcard matching other instances' databases.
fn grantable(prefix: &str, instance: &InstanceId, limit: usize) -> String {
    let fits = |n: &String| n.len() + n.matches('_').count() <= limit;
    (20..=limit).rev().map(|l| db_name(prefix, instance, l)).find(fits).unwrap_or_else(|| db_name(prefix, instance, 20))
}

/// The user a job's dump and restore tools log in as: its sessions are the job's.
fn job_user(prefix: &str, job_id: &str) -> String {
    let keep = prefix.len().min(USER_LIMIT - 18);
    format!("{}$j{}", &prefix[..keep], hash16(job_id))
}

/// The user-level lock every admin session of a job holds: an earlier run's session is
/// found by it.
fn job_lock(job_id: &str) -> String {
    format!("dfe-job:{}", hash16(job_id))
}

/// The user-level lock that serializes runs on one database (lock names end at 64 bytes).
fn db_lock(database: &str) -> String {
    format!("dfe-db:{}", hash16(database))
}

/// Checks that `name` is one of the names this provisioner makes (lowercase letters,
/// digits, `_` and `$`, within `limit`) and quotes it with backticks. Identifiers cannot be
/// bound as parameters in DDL, hence the check and the quoting.
fn ident(name: &str, limit: usize) -> Result<String> {
    let plain = !name.is_empty()
        && name.len() <= limit
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$');
    if !plain {
        return Err(Error::Invalid(format!("{name:?} is not a safe MySQL identifier")));
    }
    Ok(format!("`{name}`"))
}

/// `ident` for a database in a `GRANT … ON db.*`, where `_` and `%` are wildcards: escaped,
/// so the grant covers that database alone (`dfe_a_b` would match `dfeXaYb` too).
fn grant_db(name: &str) -> Result<String> {
    ident(name, DATABASE_LIMIT)?;
    Ok(format!("`{}`.*", name.replace('_', "\\_")))
}

/// The account `'user'@'%'`, after checking the user name like [`ident`].
fn account(user: &str) -> Result<String> {
    ident(user, USER_LIMIT)?;
    Ok(format!("'{user}'@'%'"))
}

/// Quotes any name read from the server's catalog (a tenant's table, view, trigger or
/// routine name may hold any character): backticks, embedded ones doubled.
fn quote_any(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The `mysql_native_password` hash of a password (`*` + hex of SHA1(SHA1(password))): the
/// server gets the hash, never the password, so it appears in no server log; and it is
/// taken by MySQL 8 and MariaDB alike (`IDENTIFIED WITH mysql_native_password AS '…'`).
fn native_hash(password: &Secret) -> String {
    use sha1::{Digest as _, Sha1};
    let once = Sha1::digest(password.expose().as_bytes());
    format!("*{}", hex::encode_upper(Sha1::digest(once)))
}

/// Where a `DEFINER=user@host` clause is in `s`, from `DEFINER` to the end of the host.
fn definer_span(s: &str, from: usize) -> Option<(usize, usize)> {
    let upper = s.to_ascii_uppercase();
    let start = from + upper.get(from..)?.find("DEFINER")?;
    let mut i = start + "DEFINER".len();
    let b = s.as_bytes();
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    if b.get(i) != Some(&b'=') {
        return definer_span(s, start + 1);
    }
    i += 1;
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    // CURRENT_USER or CURRENT_USER().
    if upper.get(i..)?.starts_with("CURRENT_USER") {
        let mut end = i + "CURRENT_USER".len();
        if s[end..].starts_with("()") {
            end += 2;
        }
        return Some((start, end));
    }
    let end_of = |mut i: usize| -> Option<usize> {
        match b.get(i)? {
            q @ (b'`' | b'\'' | b'"') => {
                i += 1;
                loop {
                    if b.get(i)? == q {
                        if b.get(i + 1) == Some(q) {
                            i += 2;
                            continue;
                        }
                        return Some(i + 1);
                    }
                    i += 1;
                }
            }
            _ => {
                while b.get(i).is_some_and(|c| !matches!(c, b'@' | b' ' | b'*' | b'\t')) {
                    i += 1;
                }
                Some(i)
            }
        }
    };
    let user_end = end_of(i)?;
    if b.get(user_end) != Some(&b'@') {
        return Some((start, user_end));
    }
    Some((start, end_of(user_end + 1)?))
}

/// A line of a dump without its `DEFINER=…` clauses (views, triggers, routines), so that
/// what it creates belongs to whoever restores it. Data lines are left alone.
fn strip_definers(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if line.starts_with(b"INSERT INTO") || !line.windows(8).any(|w| w.eq_ignore_ascii_case(b"DEFINER=")) {
        return line.into();
    }
    let Ok(text) = std::str::from_utf8(line) else { return line.into() };
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some((start, end)) = definer_span(text, at) {
        out.push_str(&text[at..start]);
        at = end;
    }
    out.push_str(&text[at..]);
    out.into_bytes().into()
}

/// A `CREATE … DEFINER=x …` statement with `definer` instead (one added when it has none).
fn with_definer(create: &str, definer: &str) -> String {
    match definer_span(create, 0) {
        Some((start, end)) => format!("{}DEFINER={definer}{}", &create[..start], &create[end..]),
        None => match create.get(..7) {
            Some(head) if head.eq_ignore_ascii_case("CREATE ") => format!("CREATE DEFINER={definer} {}", &create[7..]),
            _ => create.to_owned(),
        },
    }
}

/// A view, trigger or routine: how to drop it and how to make it again.
#[derive(Debug, Clone)]
struct CodeObject {
    /// `VIEW`, `TRIGGER`, `PROCEDURE`, `FUNCTION`.
    kind: &'static str,
    name: String,
    /// The `sql_mode` it was made under (routines and triggers).
    sql_mode: Option<String>,
    /// Its `CREATE` statement, with unqualified names (read with its database current).
    create: String,
}

/// Everything of a database that a `RENAME TABLE` cannot move.
#[derive(Debug, Clone, Default)]
struct Code {
    routines: Vec<CodeObject>,
    views: Vec<CodeObject>,
    triggers: Vec<CodeObject>,
}

impl Code {
    fn all(&self) -> impl Iterator<Item = &CodeObject> {
        self.triggers.iter().chain(&self.views).chain(&self.routines)
    }
}

impl Mysql {
    fn server<'a>(&self, ctx: &'a InstanceContext) -> Result<&'a DatabaseServer> {
        let server = ctx.database("mysql")?;
        if server.config.engine != "mysql" {
            return Err(Error::Config(format!(
                "database server {} has engine {:?}; the mysql provisioner needs engine = \"mysql\"",
                server.id, server.config.engine
            )));
        }
        Ok(server)
    }

    fn names(&self, ctx: &InstanceContext) -> MyNames {
        MyNames::new(&self.prefix, &ctx.instance_id)
    }

    /// The pool of `server`, made on first use: TLS when the server offers it.
    async fn pooled(&self, server: &DatabaseServer) -> Result<&Pooled> {
        let cell = self.pools.get(&server.id).ok_or_else(|| {
            Error::Config(format!("database server {} is not an engine = \"mysql\" server", server.id))
        })?;
        cell.get_or_try_init(|| async {
            let c = &server.config;
            let constraints = PoolConstraints::new(0, POOL_MAX).unwrap_or_default();
            let plain = OptsBuilder::default()
                .ip_or_hostname(c.host.clone())
                .tcp_port(c.port)
                .user(Some(c.user.clone()))
                .pass(Some(c.password.expose().to_owned()))
                .prefer_socket(false)
                .tcp_keepalive(Some(Duration::from_secs(30)))
                .pool_opts(
                    PoolOpts::default()
                        .with_constraints(constraints)
                        .with_inactive_connection_ttl(Duration::from_secs(60))
                        .with_ttl_check_interval(Duration::from_secs(30)),
                );
            // PREFERRED: encrypt when offered; the certificate is not verified (servers
            // make self-signed ones, MySQL 8 at its first start).
            let ssl =
                SslOpts::default().with_danger_accept_invalid_certs(true).with_danger_skip_domain_validation(true);
            let tls = plain.clone().ssl_opts(ssl);
            let probe = tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(tls.clone())).await.map_err(|_| {
                err(&server.id, "connecting as the admin user")(mysql_async::Error::Io(mysql_async::IoError::Io(
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 10 s"),
                )))
            })?;
            let (pool, tls) = match probe {
                Ok(conn) => {
                    let _ = conn.disconnect().await;
                    (Pool::new(tls), true)
                }
                Err(mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer)) => {
                    (Pool::new(plain), false)
                }
                Err(e) => return Err(err(&server.id, "connecting as the admin user")(e)),
            };
            tracing::info!(server = %server.id, tls, "connected to MySQL server");
            Ok(Pooled { pool, tls })
        })
        .await
    }

    async fn conn(&self, server: &DatabaseServer) -> Result<Conn> {
        let pooled = self.pooled(server).await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, pooled.pool.get_conn()).await {
            Ok(r) => r.map_err(err(&server.id, "connecting as the admin user")),
            Err(_) => Err(err(&server.id, "connecting as the admin user")(mysql_async::Error::Io(
                mysql_async::IoError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 10 s")),
            ))),
        }
    }

    /// An admin session of the instance's job on its server, holding the job's lock and
    /// the lock of the instance's database until [`finish`]: two runs of one job (a dead
    /// worker's statements and the next run's) never change the same database at once. On
    /// a later run of the job, the sessions an earlier run left (its admin session, found
    /// by the job's lock, and its tools', by the job's user) are killed first.
    async fn session(&self, ctx: &InstanceContext, server: &DatabaseServer) -> Result<Conn> {
        let e = |what: &str| err(&server.id, what.to_owned());
        let names = self.names(ctx);
        let mut conn = self.conn(server).await?;
        // A constant: nothing from outside goes into the statement.
        conn.query_drop(format!("SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT_SECS}"))
            .await
            .map_err(e("setting lock_wait_timeout"))?;
        let tag = job_lock(&ctx.job_id);
        let got: Option<Option<i64>> =
            conn.exec_first("SELECT GET_LOCK(?, 0)", (&tag,)).await.map_err(e("taking the job's lock"))?;
        if got.flatten() != Some(1) {
            if ctx.attempt > 1 {
                let holder: Option<Option<u64>> =
                    conn.exec_first("SELECT IS_USED_LOCK(?)", (&tag,)).await.map_err(e("looking up the job's lock"))?;
                if let Some(id) = holder.flatten() {
                    kill(&mut conn, &server.id, id).await?;
                    tracing::warn!(job_id = %ctx.job_id, "killed the database session an earlier run of this job left");
                }
            }
            let got: Option<Option<i64>> =
                conn.exec_first("SELECT GET_LOCK(?, 10)", (&tag,)).await.map_err(e("taking the job's lock"))?;
            if got.flatten() != Some(1) {
                return Err(Error::LockBusy(format!("another session of job {} holds its lock", ctx.job_id)));
            }
        }
        if ctx.attempt > 1 {
            let ended = kill_sessions(&mut conn, &server.id, "USER", &job_user(&self.prefix, &ctx.job_id)).await?;
            if ended > 0 {
                tracing::warn!(job_id = %ctx.job_id, sessions = ended, "killed tool sessions an earlier run of this job left");
            }
        }
        let got: Option<Option<i64>> = conn
            .exec_first("SELECT GET_LOCK(?, ?)", (db_lock(&names.database), DB_LOCK_WAIT_SECS))
            .await
            .map_err(e("locking the database"))?;
        if got.flatten() != Some(1) {
            return Err(Error::LockBusy(format!(
                "database {} on {} is locked by another job's session",
                names.database, server.id
            )));
        }
        Ok(conn)
    }

    /// The marker table, made when missing.
    async fn ensure_meta(conn: &mut Conn, server: &str) -> Result<()> {
        // Identifiers are constants here; the statements take no input.
        conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS `{META_DB}` CHARACTER SET utf8mb4"))
            .await
            .map_err(err(server, "creating the marker database"))?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS `{META_DB}`.`managed` (
                kind VARCHAR(16) NOT NULL,
                name VARCHAR(64) NOT NULL,
                deployment VARCHAR(255) NOT NULL,
                instance_id VARCHAR(63) NOT NULL,
                job_id VARCHAR(255) NOT NULL DEFAULT '',
                marked_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
                PRIMARY KEY (kind, name)
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        ))
        .await
        .map_err(err(server, "creating the marker table"))
    }

    /// Marks `name` as this instance's before it is made. Refused when it exists without
    /// our marker, or is marked for another instance or deployment: never taken over.
    async fn claim(&self, conn: &mut Conn, server: &str, ctx: &InstanceContext, kind: &str, name: &str) -> Result<()> {
        let e = |what: &str| err(server, format!("{what} {kind} {name}"));
        // In the statements on the marker table the database is the constant META_DB
        // (identifiers cannot be bound); every value is bound.
        for _ in 0..2 {
            let marked: Option<(String, String)> = conn
                .exec_first(
                    format!("SELECT deployment, instance_id FROM `{META_DB}`.`managed` WHERE kind = ? AND name = ?"),
                    (kind, name),
                )
                .await
                .map_err(e("looking up the marker of"))?;
            match marked {
                Some((d, i)) if d == self.deployment && i == ctx.instance_id.as_str() => return Ok(()),
                Some((d, i)) => {
                    return Err(Error::Conflict(format!(
                        "{kind} {name} on database server {server} belongs to instance {i} of deployment {d}"
                    )))
                }
                None if exists(conn, server, kind, name).await? => {
                    return Err(Error::Conflict(format!(
                        "{kind} {name} exists on database server {server} and was not made by this provisioner; \
                         it is left alone (remove it, or use another instance id)"
                    )))
                }
                None => {
                    conn.exec_drop(
                        format!(
                            "INSERT IGNORE INTO `{META_DB}`.`managed` (kind, name, deployment, instance_id, job_id)
                             VALUES (?, ?, ?, ?, ?)"
                        ),
                        (kind, name, &self.deployment, ctx.instance_id.as_str(), &ctx.job_id),
                    )
                    .await
                    .map_err(e("marking"))?;
                }
            }
        }
        Err(Error::Conflict(format!("{kind} {name}: its marker changed while it was written")))
    }

    /// The job's user, with a fresh password: made (marked first) or updated.
    async fn make_job_user(&self, conn: &mut Conn, server: &str, ctx: &InstanceContext) -> Result<(String, Secret)> {
        let user = job_user(&self.prefix, &ctx.job_id);
        let acct = account(&user)?;
        self.claim(conn, server, ctx, "user", &user).await?;
        let password = Secret::generate(PASSWORD_LEN);
        let hash = native_hash(&password);
        // The account is checked by `account`; the hash is `*` and hex digits.
        for stmt in [
            format!("CREATE USER IF NOT EXISTS {acct} IDENTIFIED WITH mysql_native_password AS '{hash}'"),
            format!("ALTER USER {acct} IDENTIFIED WITH mysql_native_password AS '{hash}'"),
        ] {
            conn.query_drop(stmt).await.map_err(err(server, format!("making the job's user {user}")))?;
        }
        Ok((user, password))
    }

    /// Drops the job's user (ending its sessions) and its marker.
    async fn drop_job_user(&self, conn: &mut Conn, server: &str, ctx: &InstanceContext) -> Result<()> {
        let user = job_user(&self.prefix, &ctx.job_id);
        self.drop_user(conn, server, &user).await
    }

    async fn drop_user(&self, conn: &mut Conn, server: &str, user: &str) -> Result<()> {
        let acct = account(user)?;
        // The account is checked by `account`.
        conn.query_drop(format!("DROP USER IF EXISTS {acct}"))
            .await
            .map_err(err(server, format!("dropping user {user}")))?;
        kill_sessions(conn, server, "USER", user).await?;
        self.unmark(conn, server, "user", user).await
    }

    async fn drop_database(&self, conn: &mut Conn, server: &str, database: &str) -> Result<()> {
        let q = ident(database, DATABASE_LIMIT)?;
        kill_sessions(conn, server, "DB", database).await?;
        // The name is checked and quoted by `ident`.
        conn.query_drop(format!("DROP DATABASE IF EXISTS {q}"))
            .await
            .map_err(err(server, format!("dropping database {database}")))?;
        self.unmark(conn, server, "database", database).await
    }

    async fn unmark(&self, conn: &mut Conn, server: &str, kind: &str, name: &str) -> Result<()> {
        conn.exec_drop(
            format!("DELETE FROM `{META_DB}`.`managed` WHERE kind = ? AND name = ? AND deployment = ?"),
            (kind, name, &self.deployment),
        )
        .await
        .map_err(err(server, format!("removing the marker of {kind} {name}")))
    }

    /// A client tool (`mariadb-dump`/`mysqldump`, `mariadb`/`mysql`) logged in as `user`,
    /// with the password in a private option file (never on the command line or in the
    /// environment), and TLS when the server offers it.
    async fn tool(
        &self,
        server: &DatabaseServer,
        names: [&'static str; 2],
        user: &str,
        password: &Secret,
        work: &Path,
    ) -> Result<(&'static str, tokio::process::Command, tempfile::NamedTempFile)> {
        let tls = self.pooled(server).await?.tls;
        let mut options = tempfile::Builder::new()
            .prefix(".mysql-client-")
            .suffix(".cnf")
            .tempfile_in(work)
            .map_err(Error::io("creating the client option file"))?;
        // The password is alphanumeric (Secret::generate): nothing to escape.
        std::io::Write::write_all(&mut options, format!("[client]\npassword={}\n", password.expose()).as_bytes())
            .map_err(Error::io("writing the client option file"))?;
        let tool = names.into_iter().find(|n| which(n)).unwrap_or(names[0]);
        let mut cmd = tokio::process::Command::new(tool);
        // --defaults-extra-file must come first.
        cmd.arg(format!("--defaults-extra-file={}", options.path().display()))
            .arg("--protocol=TCP")
            .arg(format!("--host={}", server.config.host))
            .arg(format!("--port={}", server.config.port))
            .arg(format!("--user={user}"))
            .arg("--default-character-set=utf8mb4");
        if tls {
            cmd.arg("--ssl");
        }
        cmd.kill_on_drop(true);
        Ok((tool, cmd, options))
    }

    /// Dumps `database` to `dest` as the job's user, without `DEFINER` clauses.
    async fn dump(
        &self,
        server: &DatabaseServer,
        user: &str,
        password: &Secret,
        database: &str,
        dest: &Path,
    ) -> Result<()> {
        let work = dest.parent().unwrap_or(Path::new("."));
        let (tool, mut cmd, _options) = self.tool(server, ["mariadb-dump", "mysqldump"], user, password, work).await?;
        // One consistent snapshot (--single-transaction), routines and triggers, no CREATE
        // DATABASE or USE (one database named, without --databases), so it restores into
        // any database; --no-tablespaces needs no PROCESS privilege; binary data as hex.
        cmd.args([
            "--single-transaction",
            "--routines",
            "--triggers",
            "--no-create-db",
            "--no-tablespaces",
            "--hex-blob",
            "--skip-comments",
            database,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| missing_tool(tool, e))?;
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(Error::Tool { tool, message: "no output pipes".into() });
        };
        let errors = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        let file = tokio::fs::File::create(dest).await.map_err(Error::io(format!("creating {}", dest.display())))?;
        let mut out = tokio::io::BufWriter::new(file);
        let mut input = tokio::io::BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = input.read_until(b'\n', &mut line).await.map_err(Error::io("reading the dump"))?;
            if n == 0 {
                break;
            }
            out.write_all(&strip_definers(&line)).await.map_err(Error::io("writing the dump"))?;
        }
        out.flush().await.map_err(Error::io("writing the dump"))?;
        out.into_inner().sync_all().await.map_err(Error::io("writing the dump"))?;
        let status = child.wait().await.map_err(|e| missing_tool(tool, e))?;
        let stderr = errors.await.unwrap_or_default();
        tool_result(tool, status, &stderr)
    }

    /// Restores `sql` into `database` as the job's user; the tool stops at the first error.
    async fn restore(
        &self,
        server: &DatabaseServer,
        user: &str,
        password: &Secret,
        database: &str,
        sql: &Path,
    ) -> Result<()> {
        let work = sql.parent().unwrap_or(Path::new("."));
        let (tool, mut cmd, _options) = self.tool(server, ["mariadb", "mysql"], user, password, work).await?;
        let input = std::fs::File::open(sql).map_err(Error::io(format!("opening {}", sql.display())))?;
        cmd.arg(format!("--database={database}"))
            .args(["--batch", "--silent", "--binary-mode", "--connect-timeout=10"])
            .stdin(input)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let out = cmd.output().await.map_err(|e| missing_tool(tool, e))?;
        tool_result(tool, out.status, &String::from_utf8_lossy(&out.stderr))
    }
}

/// Whether `name` is an executable on `PATH`.
fn which(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

fn missing_tool(tool: &'static str, e: std::io::Error) -> Error {
    Error::Tool { tool, message: format!("cannot run it ({e}); install the MariaDB client tools (mariadb-client)") }
}

fn tool_result(tool: &'static str, status: std::process::ExitStatus, stderr: &str) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let message: String = stderr.lines().take(5).collect::<Vec<_>>().join("; ");
    Err(Error::Tool { tool, message: format!("{status} — {message}") })
}

/// Releases the session's locks and hands it back to the pool; a session whose locks
/// cannot be released is closed instead (which releases them).
async fn finish<T>(mut conn: Conn, result: Result<T>) -> Result<T> {
    if conn.query_drop("DO RELEASE_ALL_LOCKS()").await.is_err() {
        let _ = conn.disconnect().await;
    }
    result
}

/// Whether a database or user of that name exists.
async fn exists(conn: &mut Conn, server: &str, kind: &str, name: &str) -> Result<bool> {
    let sql = if kind == "database" {
        "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?"
    } else {
        "SELECT 1 FROM mysql.user WHERE User = ? AND Host = '%'"
    };
    let found: Option<i64> =
        conn.exec_first(sql, (name,)).await.map_err(err(server, format!("looking up {kind} {name}")))?;
    Ok(found.is_some())
}

/// Kills a session; one that ended meanwhile is fine.
async fn kill(conn: &mut Conn, server: &str, id: u64) -> Result<()> {
    // KILL takes no parameters; the id is a number.
    match conn.query_drop(format!("KILL CONNECTION {id}")).await {
        Ok(()) => Ok(()),
        // ER_NO_SUCH_THREAD
        Err(mysql_async::Error::Server(e)) if e.code == 1094 => Ok(()),
        Err(e) => Err(err(server, format!("killing session {id}"))(e)),
    }
}

/// Kills every other session whose `column` (`USER` or `DB`) is `value`; how many.
async fn kill_sessions(conn: &mut Conn, server: &str, column: &'static str, value: &str) -> Result<usize> {
    // `column` is one of two constants.
    let ids: Vec<u64> = conn
        .exec(
            format!("SELECT ID FROM information_schema.PROCESSLIST WHERE {column} = ? AND ID <> CONNECTION_ID()"),
            (value,),
        )
        .await
        .map_err(err(server, format!("listing the sessions of {value}")))?;
    for id in &ids {
        kill(conn, server, *id).await?;
    }
    Ok(ids.len())
}

/// The base tables (and sequences) of a database, which `RENAME TABLE` moves.
async fn tables(conn: &mut Conn, server: &str, database: &str) -> Result<Vec<String>> {
    conn.exec(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE <> 'VIEW'",
        (database,),
    )
    .await
    .map_err(err(server, format!("listing the tables of {database}")))
}

/// Reads the views, triggers and routines of `database` (with it as the current database,
/// so their statements name its objects unqualified and can be run in another one).
async fn capture(conn: &mut Conn, server: &str, database: &str) -> Result<Code> {
    let e = |what: &str| err(server, format!("reading the {what} of {database}"));
    let q = ident(database, DATABASE_LIMIT)?;
    // The name is checked and quoted by `ident`.
    conn.query_drop(format!("USE {q}")).await.map_err(e("definitions"))?;
    let mut code = Code::default();
    let routines: Vec<(String, String)> = conn
        .exec(
            "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? ORDER BY ROUTINE_NAME",
            (database,),
        )
        .await
        .map_err(e("routines"))?;
    for (name, kind) in routines {
        let kind = if kind == "FUNCTION" { "FUNCTION" } else { "PROCEDURE" };
        // Names from the catalog are quoted by `quote_any`; `kind` is a constant.
        let row: Option<mysql_async::Row> =
            conn.query_first(format!("SHOW CREATE {kind} {}", quote_any(&name))).await.map_err(e("routines"))?;
        let (sql_mode, create) = row.map(|r| (r.get(1), r.get::<Option<String>, _>(2).flatten())).unwrap_or_default();
        let create = create
            .ok_or_else(|| Error::Invalid(format!("the definition of {kind} {name} in {database} cannot be read")))?;
        code.routines.push(CodeObject { kind, name, sql_mode, create });
    }
    let views: Vec<String> = conn
        .exec("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME", (database,))
        .await
        .map_err(e("views"))?;
    for name in views {
        let row: Option<mysql_async::Row> =
            conn.query_first(format!("SHOW CREATE VIEW {}", quote_any(&name))).await.map_err(e("views"))?;
        let create: String = row.and_then(|r| r.get(1)).unwrap_or_default();
        // MariaDB does not always leave out the view's own database in its columns (seen
        // with pooled sessions): names of it are made unqualified, so the view can be made
        // in another database. `database` is one of our names, with a `$` or unique enough
        // that no tenant's text carries it.
        let create = create.replace(&format!("{q}."), "");
        code.views.push(CodeObject { kind: "VIEW", name, sql_mode: None, create });
    }
    let triggers: Vec<String> = conn
        .exec(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?
             ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER",
            (database,),
        )
        .await
        .map_err(e("triggers"))?;
    for name in triggers {
        let row: Option<mysql_async::Row> =
            conn.query_first(format!("SHOW CREATE TRIGGER {}", quote_any(&name))).await.map_err(e("triggers"))?;
        let (sql_mode, create) = row.map(|r| (r.get(1), r.get::<String, _>(2).unwrap_or_default())).unwrap_or_default();
        code.triggers.push(CodeObject { kind: "TRIGGER", name, sql_mode, create });
    }
    Ok(code)
}

/// Drops the views, triggers and routines `code` lists from `database`.
async fn drop_code(conn: &mut Conn, server: &str, database: &str, code: &Code) -> Result<()> {
    let q = ident(database, DATABASE_LIMIT)?;
    for o in code.all() {
        // `kind` is a constant, the database checked by `ident`, the name quoted by `quote_any`.
        conn.query_drop(format!("DROP {} IF EXISTS {q}.{}", o.kind, quote_any(&o.name)))
            .await
            .map_err(err(server, format!("dropping {} {} of {database}", o.kind, o.name)))?;
    }
    Ok(())
}

/// Makes `code` in `database`: routines, then views (each as soon as what it reads
/// exists), then triggers in their order; with `definer` as their definer, or their own.
async fn recreate(conn: &mut Conn, server: &str, database: &str, code: &Code, definer: Option<&str>) -> Result<()> {
    let e = |o: &CodeObject| err(server, format!("making {} {} in {database}", o.kind, o.name));
    let q = ident(database, DATABASE_LIMIT)?;
    conn.query_drop(format!("USE {q}")).await.map_err(err(server, format!("using {database}")))?;
    let mode: Option<String> =
        conn.query_first("SELECT @@SESSION.sql_mode").await.map_err(err(server, "reading sql_mode"))?;
    let statement = |o: &CodeObject| match definer {
        Some(d) => with_definer(&o.create, d),
        None => o.create.clone(),
    };
    for o in &code.routines {
        if let Some(m) = &o.sql_mode {
            conn.exec_drop("SET SESSION sql_mode = ?", (m,)).await.map_err(e(o))?;
        }
        // A definition read from the server (SHOW CREATE) is run as it was read.
        conn.query_drop(statement(o)).await.map_err(e(o))?;
    }
    let mut pending: Vec<&CodeObject> = code.views.iter().collect();
    while !pending.is_empty() {
        let mut failed = Vec::new();
        let mut last = None;
        for o in &pending {
            if let Err(x) = conn.query_drop(statement(o)).await {
                failed.push(*o);
                last = Some(x);
            }
        }
        if failed.len() == pending.len() {
            let x = last.unwrap_or(mysql_async::Error::Other("no view could be made".into()));
            return Err(e(failed[0])(x));
        }
        pending = failed;
    }
    for o in &code.triggers {
        if let Some(m) = &o.sql_mode {
            conn.exec_drop("SET SESSION sql_mode = ?", (m,)).await.map_err(e(o))?;
        }
        conn.query_drop(statement(o)).await.map_err(e(o))?;
    }
    if let Some(m) = mode {
        conn.exec_drop("SET SESSION sql_mode = ?", (m,)).await.map_err(err(server, "restoring sql_mode"))?;
    }
    Ok(())
}

/// Moves the contents of `incoming` into `target`, and (with `aside`) the contents of
/// `target` into `aside` first, in one `RENAME TABLE`: see the module's documentation.
/// Views, triggers and routines are dropped before and re-made after, the incoming ones
/// with `definer`. On an error before the tables move, everything is put back.
async fn move_contents(
    conn: &mut Conn,
    server: &str,
    target: &str,
    incoming: &str,
    aside: Option<&str>,
    definer: Option<&str>,
) -> Result<()> {
    let (qt, qi) = (ident(target, DATABASE_LIMIT)?, ident(incoming, DATABASE_LIMIT)?);
    let old = match aside {
        Some(_) => capture(conn, server, target).await?,
        None => Code::default(),
    };
    let new = capture(conn, server, incoming).await?;
    let old_tables = match aside {
        Some(_) => tables(conn, server, target).await?,
        None => Vec::new(),
    };
    let new_tables = tables(conn, server, incoming).await?;
    drop_code(conn, server, target, &old).await?;
    drop_code(conn, server, incoming, &new).await?;
    let mut moves = Vec::new();
    if let Some(aside) = aside {
        let qa = ident(aside, DATABASE_LIMIT)?;
        moves.extend(old_tables.iter().map(|t| format!("{qt}.{0} TO {qa}.{0}", quote_any(t))));
    }
    moves.extend(new_tables.iter().map(|t| format!("{qi}.{0} TO {qt}.{0}", quote_any(t))));
    if !moves.is_empty() {
        // Databases are checked by `ident`, table names from the catalog quoted by
        // `quote_any`. One statement: both servers apply it whole or not at all.
        if let Err(x) = conn.query_drop(format!("RENAME TABLE {}", moves.join(", "))).await {
            let _ = recreate(conn, server, target, &old, None).await;
            let _ = recreate(conn, server, incoming, &new, None).await;
            return Err(err(server, format!("moving the tables of {incoming} into {target}"))(x));
        }
    }
    if let Some(aside) = aside {
        recreate(conn, server, aside, &old, None).await?;
    }
    recreate(conn, server, target, &new, definer).await
}

#[async_trait]
impl Inventory for Mysql {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn parts(&self) -> &'static [&'static str] {
        &["database", "user"]
    }

    async fn inventory(&self, deployment: &str) -> Found {
        let mut found = Found::default();
        for server in self.fleet.servers_of("mysql") {
            match self.managed_objects(server, deployment).await {
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
        let mut conn = self.conn(server).await?;
        let result = async {
            // Only what the markers say is this deployment's (META_DB is a constant; values bound).
            let marked: Option<String> = conn
                .exec_first(
                    format!("SELECT deployment FROM `{META_DB}`.`managed` WHERE kind = ? AND name = ?"),
                    (part.kind, &part.name),
                )
                .await
                .map_err(err(&server.id, format!("looking up the marker of {}", part.name)))?;
            if marked.as_deref() != Some(self.deployment.as_str()) {
                return Err(Error::Conflict(format!("{} {} is not marked as this deployment's", part.kind, part.name)));
            }
            match part.kind {
                "database" => self.drop_database(&mut conn, &server.id, &part.name).await,
                _ => self.drop_user(&mut conn, &server.id, &part.name).await,
            }
        }
        .await;
        finish(conn, result).await
    }
}

impl Mysql {
    /// The databases and users of `server` that exist and are marked as `deployment`'s.
    async fn managed_objects(&self, server: &DatabaseServer, deployment: &str) -> Result<Vec<Part>> {
        let mut conn = self.conn(server).await?;
        let result = async {
            let e = |what: &str| err(&server.id, what.to_owned());
            let has_meta: Option<i64> = conn
                .exec_first("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", (META_DB,))
                .await
                .map_err(e("looking for the marker database"))?;
            if has_meta.is_none() {
                return Ok(Vec::new());
            }
            // META_DB is a constant; the value is bound.
            let marked: Vec<(String, String, String)> = conn
                .exec(
                    format!("SELECT kind, name, instance_id FROM `{META_DB}`.`managed` WHERE deployment = ?"),
                    (deployment,),
                )
                .await
                .map_err(e("reading the markers"))?;
            let databases: Vec<String> = conn
                .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
                .await
                .map_err(e("listing databases"))?;
            let users: Vec<String> =
                conn.query("SELECT User FROM mysql.user WHERE Host = '%'").await.map_err(e("listing users"))?;
            Ok(marked
                .into_iter()
                .filter_map(|(kind, name, instance_id)| {
                    let (kind, present) = match kind.as_str() {
                        "database" => ("database", databases.contains(&name)),
                        "user" => ("user", users.contains(&name)),
                        _ => return None,
                    };
                    present.then(|| Part { kind, name, instance_id, location: server.id.clone() })
                })
                .collect())
        }
        .await;
        finish(conn, result).await
    }

    async fn provision_in(
        &self,
        conn: &mut Conn,
        server: &DatabaseServer,
        ctx: &InstanceContext,
        password: &Secret,
    ) -> Result<()> {
        let e = |what: String| err(&server.id, what);
        let n = self.names(ctx);
        let (qdb, acct, grant) = (ident(&n.database, DATABASE_LIMIT)?, account(&n.user)?, grant_db(&n.database)?);
        Self::ensure_meta(conn, &server.id).await?;
        self.claim(conn, &server.id, ctx, "database", &n.database).await?;
        self.claim(conn, &server.id, ctx, "user", &n.user).await?;
        // Identifiers cannot be bound in DDL: the names are checked and quoted by `ident`,
        // `account` and `grant_db`; the password goes as its hash (hex digits).
        if !exists(conn, &server.id, "database", &n.database).await? {
            // IF NOT EXISTS: made meanwhile by an earlier run of this job counts as found.
            conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS {qdb} CHARACTER SET utf8mb4"))
                .await
                .map_err(e(format!("creating database {}", n.database)))?;
        }
        let hash = native_hash(password);
        if !exists(conn, &server.id, "user", &n.user).await? {
            conn.query_drop(format!(
                "CREATE USER IF NOT EXISTS {acct} IDENTIFIED WITH mysql_native_password AS '{hash}'"
            ))
            .await
            .map_err(e(format!("creating user {}", n.user)))?;
        }
        // Fresh on every run, also for a user an earlier run made.
        conn.query_drop(format!("ALTER USER {acct} IDENTIFIED WITH mysql_native_password AS '{hash}'"))
            .await
            .map_err(e(format!("setting the password of {}", n.user)))?;
        conn.query_drop(format!("GRANT ALL PRIVILEGES ON {grant} TO {acct}"))
            .await
            .map_err(e(format!("granting {} its database", n.user)))?;
        Ok(())
    }

    async fn deprovision_in(&self, conn: &mut Conn, server: &DatabaseServer, ctx: &InstanceContext) -> Result<()> {
        let has_meta = exists(conn, &server.id, "database", META_DB).await?;
        if !has_meta {
            return Ok(());
        }
        // META_DB is a constant; the values are bound.
        // Everything marked as this instance's: its database and user, and what an
        // interrupted import or export left (staging and previous databases, job users).
        let marked: Vec<(String, String)> = conn
            .exec(
                format!("SELECT kind, name FROM `{META_DB}`.`managed` WHERE deployment = ? AND instance_id = ?"),
                (&self.deployment, ctx.instance_id.as_str()),
            )
            .await
            .map_err(err(&server.id, "reading the markers"))?;
        // Users first: once dropped, nothing logs in again while the databases go.
        for (_, user) in marked.iter().filter(|(k, _)| k == "user") {
            self.drop_user(conn, &server.id, user).await?;
        }
        for (_, database) in marked.iter().filter(|(k, _)| k == "database") {
            self.drop_database(conn, &server.id, database).await?;
        }
        Ok(())
    }

    async fn import_in(
        &self,
        conn: &mut Conn,
        server: &DatabaseServer,
        ctx: &InstanceContext,
        sql: &Path,
    ) -> Result<()> {
        let e = |what: String| err(&server.id, what);
        let n = self.names(ctx);
        let (qs, qp) = (ident(&n.staging, DATABASE_LIMIT)?, ident(&n.previous, DATABASE_LIMIT)?);
        Self::ensure_meta(conn, &server.id).await?;
        if !exists(conn, &server.id, "database", &n.database).await? {
            return Err(Error::Invalid(format!("database {} does not exist on {}", n.database, server.id)));
        }
        let (job_user, password) = self.make_job_user(conn, &server.id, ctx).await?;
        self.claim(conn, &server.id, ctx, "database", &n.staging).await?;
        // The names are checked and quoted by `ident`, `grant_db` and `account`.
        for stmt in [
            format!("DROP DATABASE IF EXISTS {qs}"),
            format!("CREATE DATABASE {qs} CHARACTER SET utf8mb4"),
            format!("GRANT ALL PRIVILEGES ON {} TO {}", grant_db(&n.staging)?, account(&job_user)?),
        ] {
            conn.query_drop(stmt).await.map_err(e(format!("preparing the staging database {}", n.staging)))?;
        }
        // The dump runs as the job's user, with rights on the staging database alone.
        if let Err(x) = self.restore(server, &job_user, &password, &n.staging, sql).await {
            let _ = self.drop_database(conn, &server.id, &n.staging).await;
            let _ = self.drop_job_user(conn, &server.id, ctx).await;
            return Err(x);
        }
        self.drop_job_user(conn, &server.id, ctx).await?;

        // The swap: the instance's sessions end (their metadata locks would hold the
        // RENAME), the current contents go to `$pre`, the restored ones into place.
        kill_sessions(conn, &server.id, "USER", &n.user).await?;
        kill_sessions(conn, &server.id, "DB", &n.database).await?;
        self.drop_database(conn, &server.id, &n.previous).await?;
        self.claim(conn, &server.id, ctx, "database", &n.previous).await?;
        // The name is checked and quoted by `ident`.
        conn.query_drop(format!("CREATE DATABASE {qp} CHARACTER SET utf8mb4"))
            .await
            .map_err(e(format!("creating {}", n.previous)))?;
        let definer = account(&n.user)?;
        let moved = move_contents(conn, &server.id, &n.database, &n.staging, Some(&n.previous), Some(&definer)).await;
        if let Err(x) = moved {
            // Whatever moved goes back: the previous contents into place.
            if let Err(r) = self.put_back(conn, server, &n).await {
                tracing::error!(error = %r.chain(), "putting the database back after a failed swap failed");
            }
            let _ = self.drop_database(conn, &server.id, &n.staging).await;
            return Err(x);
        }
        self.drop_database(conn, &server.id, &n.staging).await
    }

    /// Replaces the instance's database with the one an import kept aside (`$pre`).
    async fn put_back(&self, conn: &mut Conn, server: &DatabaseServer, n: &MyNames) -> Result<()> {
        if !exists(conn, &server.id, "database", &n.previous).await? {
            return Ok(());
        }
        let q = ident(&n.database, DATABASE_LIMIT)?;
        kill_sessions(conn, &server.id, "USER", &n.user).await?;
        kill_sessions(conn, &server.id, "DB", &n.database).await?;
        // The database's grants live apart from it (mysql.db) and survive its re-creation.
        // The name is checked and quoted by `ident`.
        for stmt in [format!("DROP DATABASE IF EXISTS {q}"), format!("CREATE DATABASE {q} CHARACTER SET utf8mb4")] {
            conn.query_drop(stmt).await.map_err(err(&server.id, format!("emptying {}", n.database)))?;
        }
        move_contents(conn, &server.id, &n.database, &n.previous, None, None).await?;
        self.drop_database(conn, &server.id, &n.previous).await
    }
}

#[async_trait]
impl DatabaseProvisioner for Mysql {
    fn engine(&self) -> &'static str {
        "mysql"
    }

    async fn probe(&self, server: &DatabaseServer) -> Result<()> {
        let mut conn = self.conn(server).await?;
        let result = conn.query_drop("SELECT 1").await.map_err(err(&server.id, "probing"));
        finish(conn, result).await
    }

    async fn suspend(&self, ctx: &InstanceContext) -> Result<()> {
        let server = self.server(ctx)?;
        let n = self.names(ctx);
        let mut conn = self.conn(server).await?;
        let result = async {
            // `account` checked and quoted the user: identifiers cannot be bound in DDL.
            conn.query_drop(format!("ALTER USER {} ACCOUNT LOCK", account(&n.user)?))
                .await
                .map_err(err(&server.id, format!("locking the account {}", n.user)))?;
            // Sessions opened before are ended too: a suspended tenant reaches no data.
            kill_sessions(&mut conn, &server.id, "USER", &n.user).await.map(|_| ())
        }
        .await;
        finish(conn, result).await
    }

    async fn resume(&self, ctx: &InstanceContext) -> Result<()> {
        let server = self.server(ctx)?;
        let n = self.names(ctx);
        let mut conn = self.conn(server).await?;
        let result = async {
            conn.query_drop(format!("ALTER USER {} ACCOUNT UNLOCK", account(&n.user)?))
                .await
                .map_err(err(&server.id, format!("unlocking the account {}", n.user)))
        }
        .await;
        finish(conn, result).await
    }

    fn connection(&self, ctx: &InstanceContext) -> Result<DatabaseInfo> {
        let server = self.server(ctx)?;
        let n = self.names(ctx);
        let c = &server.config;
        Ok(DatabaseInfo {
            connection: "mysql".into(),
            host: c.instance_host.clone().unwrap_or_else(|| c.host.clone()),
            port: c.port,
            database: n.database,
            username: n.user,
            password: Secret::generate(PASSWORD_LEN),
            server: server.id.clone(),
        })
    }

    async fn provision(&self, ctx: &InstanceContext, info: &DatabaseInfo) -> Result<()> {
        let server = self.server(ctx)?;
        let mut conn = self.session(ctx, server).await?;
        let result = self.provision_in(&mut conn, server, ctx, &info.password).await;
        finish(conn, result).await
    }

    async fn deprovision(&self, ctx: &InstanceContext) -> Result<()> {
        let server = self.server(ctx)?;
        let mut conn = self.session(ctx, server).await?;
        let result = self.deprovision_in(&mut conn, server, ctx).await;
        finish(conn, result).await
    }

    async fn export(&self, ctx: &InstanceContext, dest: &Path) -> Result<()> {
        let server = self.server(ctx)?;
        let n = self.names(ctx);
        let mut conn = self.session(ctx, server).await?;
        let result = async {
            Self::ensure_meta(&mut conn, &server.id).await?;
            let (user, password) = self.make_job_user(&mut conn, &server.id, ctx).await?;
            // The account and the database are checked and quoted by `account` and `grant_db`.
            // Read-only rights on the instance's database, and on the routines' definitions
            // (MariaDB keeps them in mysql.proc, MySQL 8 behind SHOW_ROUTINE): each server
            // refuses the other's grant, which is fine.
            let acct = account(&user)?;
            conn.query_drop(format!(
                "GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT ON {} TO {acct}",
                grant_db(&n.database)?
            ))
            .await
            .map_err(err(&server.id, "granting the job's user its reads"))?;
            for grant in
                [format!("GRANT SELECT ON mysql.proc TO {acct}"), format!("GRANT SHOW_ROUTINE ON *.* TO {acct}")]
            {
                let _ = conn.query_drop(grant).await;
            }
            let dumped = self.dump(server, &user, &password, &n.database, dest).await;
            let dropped = self.drop_job_user(&mut conn, &server.id, ctx).await;
            dumped.and(dropped)
        }
        .await;
        finish(conn, result).await
    }

    async fn import(&self, ctx: &InstanceContext, sql: &Path) -> Result<()> {
        let server = self.server(ctx)?;
        let mut conn = self.session(ctx, server).await?;
        let result = self.import_in(&mut conn, server, ctx, sql).await;
        finish(conn, result).await
    }

    async fn commit_import(&self, ctx: &InstanceContext) -> Result<()> {
        let server = self.server(ctx)?;
        let n = self.names(ctx);
        let mut conn = self.session(ctx, server).await?;
        let result = self.drop_database(&mut conn, &server.id, &n.previous).await;
        finish(conn, result).await
    }

    async fn rollback_import(&self, ctx: &InstanceContext) -> Result<()> {
        let server = self.server(ctx)?;
        let n = self.names(ctx);
        let mut conn = self.session(ctx, server).await?;
        let result = self.put_back(&mut conn, server, &n).await;
        finish(conn, result).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_both_servers_and_never_collide() {
        let n = MyNames::new("dfe", &InstanceId::parse("acme-prod").expect("valid"));
        assert_eq!((n.database.as_str(), n.user.as_str()), ("dfe_acme_prod", "dfe_acme_prod"));
        assert_eq!((n.staging.as_str(), n.previous.as_str()), ("dfe_acme_prod$imp", "dfe_acme_prod$pre"));
        let a = MyNames::new("dfe", &InstanceId::parse(&format!("a{}", "b".repeat(62))).expect("valid"));
        let b = MyNames::new("dfe", &InstanceId::parse(&format!("a{}c", "b".repeat(61))).expect("valid"));
        for n in [&a, &b] {
            assert!(n.database.len() <= 64 && n.staging.len() <= 64 && n.previous.len() <= 64, "{n:?}");
            for name in [&n.database, &n.staging, &n.previous] {
                assert!(grant_db(name).expect("grantable").len() - 4 <= 64, "{name} fits once escaped");
            }
            assert_eq!(n.user.len(), 32, "{n:?}");
            for name in [&n.database, &n.staging, &n.previous] {
                ident(name, DATABASE_LIMIT).expect("a safe identifier");
            }
            account(&n.user).expect("a safe user");
        }
        assert_ne!(a.database, b.database);
        assert_ne!(a.user, b.user);
        assert_ne!(a.staging, b.staging);
        // An instance called `<x>-imp` is not `<x>`'s staging database.
        let imp = MyNames::new("dfe", &InstanceId::parse("acme-prod-imp").expect("valid"));
        assert_ne!(imp.database, n.staging);
        let j = job_user("dfe", "job-1");
        assert!(j.len() <= 32 && j.starts_with("dfe$j"), "{j}");
        account(&j).expect("a safe user");
        assert!(job_user(&"p".repeat(40), "job-1").len() <= 32);
        let dashes = MyNames::new("dfe", &InstanceId::parse(&format!("a{}", "-b".repeat(31))).expect("valid"));
        assert!(grant_db(&dashes.database).expect("grantable").len() - 4 <= 64, "{dashes:?}");
        assert!(db_lock(&a.database).len() <= 64 && job_lock("job-1").len() <= 64);
    }

    #[test]
    fn only_plain_identifiers_are_quoted_and_grants_escape_wildcards() {
        assert_eq!(ident("dfe_acme$imp", 64).expect("plain"), "`dfe_acme$imp`");
        for bad in ["", "Dfe", "a;drop", "a`b", "1abc", "a b", "a'b", "a\\b"] {
            assert!(ident(bad, 64).is_err(), "{bad:?}");
        }
        assert!(ident(&"a".repeat(33), USER_LIMIT).is_err());
        assert_eq!(grant_db("dfe_a_b").expect("plain"), "`dfe\\_a\\_b`.*");
        assert_eq!(account("dfe_a").expect("plain"), "'dfe_a'@'%'");
        assert_eq!(quote_any("we`ird"), "`we``ird`");
    }

    #[test]
    fn the_password_reaches_the_server_as_its_native_hash() {
        // The documented example: PASSWORD('password') in MySQL 5.7 / MariaDB.
        assert_eq!(native_hash(&Secret::new("password")), "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19");
    }

    #[test]
    fn definers_are_stripped_from_dumps_and_replaced_in_definitions() {
        let view = b"/*!50013 DEFINER=`dfe_a`@`%` SQL SECURITY DEFINER */\n";
        assert_eq!(&*strip_definers(view), b"/*!50013  SQL SECURITY DEFINER */\n");
        let trigger = b"/*!50003 CREATE*/ /*!50017 DEFINER=`u``x`@`localhost`*/ /*!50003 TRIGGER `t` BEFORE INSERT ON `n` FOR EACH ROW SET NEW.a = 1 */;;\n";
        assert_eq!(
            &*strip_definers(trigger),
            b"/*!50003 CREATE*/ /*!50017 */ /*!50003 TRIGGER `t` BEFORE INSERT ON `n` FOR EACH ROW SET NEW.a = 1 */;;\n"
        );
        let routine = b"CREATE DEFINER='root'@'127.0.0.1' PROCEDURE `p`()\n";
        assert_eq!(&*strip_definers(routine), b"CREATE  PROCEDURE `p`()\n");
        let data = b"INSERT INTO `t` VALUES (1,'DEFINER=`x`@`y`');\n";
        assert_eq!(&*strip_definers(data), &data[..], "data is never changed");

        let create = "CREATE ALGORITHM=UNDEFINED DEFINER=`dfe$j1`@`%` SQL SECURITY DEFINER VIEW `v` AS select 1";
        assert_eq!(
            with_definer(create, "'dfe_a'@'%'"),
            "CREATE ALGORITHM=UNDEFINED DEFINER='dfe_a'@'%' SQL SECURITY DEFINER VIEW `v` AS select 1"
        );
        assert_eq!(
            with_definer("CREATE TRIGGER t BEFORE INSERT ON n", "'u'@'%'"),
            "CREATE DEFINER='u'@'%' TRIGGER t BEFORE INSERT ON n"
        );
        assert_eq!(
            with_definer("CREATE DEFINER=CURRENT_USER() PROCEDURE p() SELECT 1", "'u'@'%'"),
            "CREATE DEFINER='u'@'%' PROCEDURE p() SELECT 1"
        );
    }

    #[test]
    fn a_jobs_locks_and_user_are_its_own() {
        assert_eq!(job_lock("job-1"), job_lock("job-1"));
        assert_ne!(job_lock("job-1"), job_lock("job-2"));
        assert_ne!(job_user("dfe", "job-1"), job_user("dfe", "job-2"));
        assert_ne!(db_lock("dfe_a"), db_lock("dfe_b"));
    }
}
