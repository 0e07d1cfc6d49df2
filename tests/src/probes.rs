//! Looking at the real services from the outside: Docker containers and volumes,
//! PostgreSQL roles and databases, MySQL/MariaDB databases and users, raw AMQP publishing
//! and consuming.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder, ListVolumesOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use tokio_postgres::NoTls;

use crate::{MYSQL_ADMIN_URL, PG_ADMIN_URL};

/// A Docker client with the API version negotiated.
pub async fn docker() -> Result<Docker> {
    let d = Docker::connect_with_unix("/var/run/docker.sock", 60, bollard::API_DEFAULT_VERSION)?;
    let d = d.negotiate_version().await?;
    d.ping().await?;
    Ok(d)
}

/// Whether an image is present.
pub async fn image_exists(image: &str) -> bool {
    match docker().await {
        Ok(d) => d.inspect_image(image).await.is_ok(),
        Err(_) => false,
    }
}

/// Runs one statement on the PostgreSQL at `url`.
pub async fn pg_exec(url: &str, sql: &str) -> Result<()> {
    let client = pg(url).await?;
    client.batch_execute(sql).await.with_context(|| format!("running {sql}"))?;
    Ok(())
}

/// A client of the PostgreSQL at `url`.
pub async fn pg(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) =
        tokio_postgres::connect(url, NoTls).await.with_context(|| "connecting to PostgreSQL".to_string())?;
    tokio::spawn(conn);
    Ok(client)
}

/// What of an instance exists on Docker and PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Footprint {
    /// Containers labelled with the instance id (any state).
    pub containers: usize,
    /// Running containers among them.
    pub running: usize,
    /// Volumes labelled with the instance id.
    pub volumes: usize,
    /// Databases named after it.
    pub databases: usize,
    /// Roles named after it.
    pub roles: usize,
}

impl Footprint {
    /// Nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == Footprint::default()
    }

    /// Exactly one of each, the container running.
    pub fn is_complete(&self) -> bool {
        *self == Footprint { containers: 1, running: 1, volumes: 1, databases: 1, roles: 1 }
    }
}

/// The database/role name of an instance under the default prefix.
pub fn db_name(instance_id: &str) -> String {
    format!("dfe_{}", instance_id.replace('-', "_"))
}

/// Counts what exists of `instance_id`: containers and volumes, PostgreSQL database and role.
pub async fn footprint(instance_id: &str) -> Result<Footprint> {
    let (containers, running, volumes) = docker_footprint(instance_id).await?;
    let name = db_name(instance_id);
    let pg = pg(PG_ADMIN_URL).await?;
    let databases: i64 = pg.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name]).await?.get(0);
    let roles: i64 = pg.query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&name]).await?.get(0);
    Ok(Footprint {
        containers,
        running,
        volumes,
        databases: usize::try_from(databases)?,
        roles: usize::try_from(roles)?,
    })
}

/// Containers (all, running) and volumes labelled with the instance id.
async fn docker_footprint(instance_id: &str) -> Result<(usize, usize, usize)> {
    let d = docker().await?;
    let label = format!("dfe.instance-id={instance_id}");
    let filters = HashMap::from([("label".to_owned(), vec![label.clone()])]);
    let containers =
        d.list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build())).await?;
    let running = containers.iter().filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING)).count();
    let volumes = d
        .list_volumes(Some(ListVolumesOptionsBuilder::default().filters(&filters).build()))
        .await?
        .volumes
        .unwrap_or_default()
        .len();
    Ok((containers.len(), running, volumes))
}

/// A name of the `mysql` provisioner under the default prefix: `dfe_<instance_id>`, at most
/// `limit` characters (64 for databases, 32 for users), shortened with a hash past it.
pub fn mysql_name(instance_id: &str, limit: usize) -> String {
    use sha2::{Digest, Sha256};
    let full = db_name(instance_id);
    if full.len() <= limit {
        return full;
    }
    let digest = hex::encode(Sha256::digest(instance_id.as_bytes()));
    format!("{}_{}", &full[..limit - 9], &digest[..8])
}

/// The database of an instance of the `mysql` provisioner: at most 64 characters once a
/// `GRANT` escapes its `_` (`\_`).
pub fn mysql_db(instance_id: &str) -> String {
    mysql_grantable(instance_id, 64)
}

fn mysql_grantable(instance_id: &str, limit: usize) -> String {
    (20..=limit)
        .rev()
        .map(|l| mysql_name(instance_id, l))
        .find(|n| n.len() + n.matches('_').count() <= limit)
        .unwrap_or_else(|| mysql_name(instance_id, 20))
}

/// The user of an instance of the `mysql` provisioner.
pub fn mysql_user(instance_id: &str) -> String {
    mysql_name(instance_id, 32)
}

/// The user a job's dump and restore tools log in as (`dfe$j<16 hex digits of the SHA-256
/// of the job id>`).
pub fn mysql_job_user(job_id: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("dfe$j{}", &hex::encode(Sha256::digest(job_id.as_bytes()))[..16])
}

/// A connection to the MySQL/MariaDB server at `url` (`mysql://user:password@host:port[/db]`).
pub async fn mysql(url: &str) -> Result<mysql_async::Conn> {
    let opts = mysql_async::Opts::from_url(url).context("a MySQL URL")?;
    mysql_async::Conn::new(opts).await.context("connecting to MySQL/MariaDB")
}

/// A connection as the admin of the local MariaDB.
pub async fn mysql_admin() -> Result<mysql_async::Conn> {
    mysql(MYSQL_ADMIN_URL).await
}

/// Counts what exists of an instance of the `mysql` provisioner: containers and volumes,
/// its MySQL database (`databases`) and user (`roles`).
pub async fn mysql_footprint(instance_id: &str) -> Result<Footprint> {
    use mysql_async::prelude::Queryable;
    let (containers, running, volumes) = docker_footprint(instance_id).await?;
    let mut my = mysql_admin().await?;
    let databases: Option<i64> = my
        .exec_first("SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", (mysql_db(instance_id),))
        .await?;
    let users: Option<i64> =
        my.exec_first("SELECT count(*) FROM mysql.user WHERE User = ?", (mysql_user(instance_id),)).await?;
    let _ = my.disconnect().await;
    Ok(Footprint {
        containers,
        running,
        volumes,
        databases: usize::try_from(databases.unwrap_or(0))?,
        roles: usize::try_from(users.unwrap_or(0))?,
    })
}

/// What the `mysql` provisioner left of an instance beside its database and user: staging
/// and previous databases of imports (`<db>$…`) and markers.
pub async fn mysql_leftovers(instance_id: &str) -> Result<Vec<String>> {
    use mysql_async::prelude::Queryable;
    let mut my = mysql_admin().await?;
    let stem = mysql_grantable(instance_id, 60);
    let mut out: Vec<String> = my
        .exec("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE ?", (format!("{stem}$%"),))
        .await?;
    let has_meta: Option<i64> =
        my.query_first("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'dfe$meta'").await?;
    if has_meta.is_some() {
        let markers: Vec<(String, String)> =
            my.exec("SELECT kind, name FROM `dfe$meta`.`managed` WHERE instance_id = ?", (instance_id,)).await?;
        out.extend(markers.into_iter().map(|(k, n)| format!("marker {k} {n}")));
    }
    let _ = my.disconnect().await;
    Ok(out)
}

/// A connection as an instance's own user, with the settings from its container's
/// environment (`DB_HOST`, `DB_PORT`, `DB_USERNAME`, `DB_PASSWORD`, `DB_DATABASE`): the
/// address the containers use (the docker0 bridge) is reachable from the host too.
pub async fn instance_mysql(instance_id: &str) -> Result<mysql_async::Conn> {
    let c = container(instance_id).await?;
    let env = |k: &str| container_env(&c, k).with_context(|| format!("no {k} in the container"));
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(env("DB_HOST")?)
        .tcp_port(env("DB_PORT")?.parse()?)
        .user(Some(env("DB_USERNAME")?))
        .pass(Some(env("DB_PASSWORD")?))
        .db_name(Some(env("DB_DATABASE")?))
        .prefer_socket(false);
    mysql_async::Conn::new(opts).await.context("connecting as the instance's own MySQL user")
}

/// The inspected container `dfe-<instance_id>`.
pub async fn container(instance_id: &str) -> Result<bollard::models::ContainerInspectResponse> {
    Ok(docker().await?.inspect_container(&format!("dfe-{instance_id}"), None::<InspectContainerOptions>).await?)
}

/// An environment variable of a container.
pub fn container_env(c: &bollard::models::ContainerInspectResponse, key: &str) -> Option<String> {
    c.config.as_ref()?.env.as_ref()?.iter().find_map(|e| e.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

/// Publishes one message with confirms.
pub async fn publish(
    url: &str,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: lapin::BasicProperties,
) -> Result<()> {
    let conn = dfe_shared::broker::connect(url, "dfe-tests publisher").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    dfe_shared::topology::declare(&conn, 1).await?;
    ch.basic_publish(exchange.into(), routing_key.into(), BasicPublishOptions::default(), body, props).await?.await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// Takes up to `n` messages from `queue` (waiting up to `timeout` for them), acking them.
pub async fn drain(url: &str, queue: &str, n: usize, timeout: Duration) -> Result<Vec<lapin::message::Delivery>> {
    let conn = dfe_shared::broker::connect(url, "dfe-tests drain").await?;
    let ch = conn.create_channel().await?;
    let mut consumer =
        ch.basic_consume(queue.into(), "drain".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.acker.ack(BasicAckOptions::default()).await?;
                out.push(d);
            }
            _ => break,
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}

/// Removes whatever exists of an instance (best effort, for cleanup after a test).
pub fn remove_instance_blocking(instance_id: &str) {
    use std::process::Command;
    let _ = Command::new("docker").args(["rm", "-f", &format!("dfe-{instance_id}")]).output();
    let _ = Command::new("docker").args(["volume", "rm", "-f", &format!("dfe-{instance_id}-storage")]).output();
    let name = db_name(instance_id);
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE); DROP ROLE IF EXISTS \"{name}\";");
    for stmt in sql.split_inclusive(';') {
        let _ = Command::new("psql").args([PG_ADMIN_URL, "-qAtc", stmt]).output();
    }
    // And of the `mysql` provisioner (nothing happens where the instance had none).
    let (db, user, stem) = (mysql_db(instance_id), mysql_user(instance_id), mysql_grantable(instance_id, 60));
    let sql = format!(
        "DROP DATABASE IF EXISTS `{db}`; DROP DATABASE IF EXISTS `{stem}$imp`; DROP DATABASE IF EXISTS `{stem}$pre`; \
         DROP USER IF EXISTS '{user}'@'%'; DELETE FROM `dfe$meta`.`managed` WHERE instance_id = '{instance_id}';"
    );
    let _ = Command::new("mariadb")
        .args(["--protocol=TCP", "-h127.0.0.1", "-P3306", "-udfe", "--connect-timeout=5", "-e", &sql])
        .env("MYSQL_PWD", "dfe")
        .output();
}

/// Runs a shell script inside a container (`docker exec`); returns its stdout.
pub fn exec(container: &str, script: &str) -> Result<String> {
    let out = std::process::Command::new("docker").args(["exec", container, "sh", "-c", script]).output()?;
    if !out.status.success() {
        anyhow::bail!("docker exec {container} {script:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A client connected as the instance's own role, with the password from its container.
pub async fn instance_db(instance_id: &str) -> Result<tokio_postgres::Client> {
    let c = container(instance_id).await?;
    let password = container_env(&c, "DB_PASSWORD").context("no DB_PASSWORD")?;
    let name = db_name(instance_id);
    pg(&format!("postgres://{name}:{password}@127.0.0.1:5432/{name}")).await
}

/// A broken subscriber: a queue bound to `dfe.events` (all events) that holds at most one
/// message and refuses every further publication (`x-overflow: reject-publish`), as a
/// subscriber that stopped consuming would. Kept while the returned connection lives.
pub async fn broken_subscriber(url: &str, queue: &str) -> Result<lapin::Connection> {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    use lapin::types::AMQPValue;
    let conn = dfe_shared::broker::connect(url, "dfe-tests broken subscriber").await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    ch.queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args).await?;
    ch.queue_bind(
        queue.into(),
        "dfe.events".into(),
        "dfe.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(conn)
}

/// How many messages wait in `queue`.
pub async fn queue_depth(url: &str, queue: &str) -> Result<u32> {
    use lapin::options::QueueDeclareOptions;
    let conn = dfe_shared::broker::connect(url, "dfe-tests depth").await?;
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(q.message_count())
}

/// A string header of a delivery (`x-dfe-error`, …).
pub fn header(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The `application_name` a worker gives the database sessions of job `job_id`
/// (`dfe-job-<first 16 hex digits of the SHA-256 of the id>`).
pub fn job_session_name(job_id: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("dfe-job-{}", &hex::encode(Sha256::digest(job_id.as_bytes()))[..16])
}
