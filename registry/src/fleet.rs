//! The fleet in the registry: the state of every Docker host and database server (what
//! the workers' probes see, and which hosts an operator cordoned), and placement: the
//! choice of a host and a server for a new instance, made inside the transaction that
//! claims it, with the cluster's hosts locked so concurrent claims never overshoot a limit.
//!
//! Limits and labels stay in the configuration (the caller's [`Plan`]); the registry holds
//! what changes: reachability, cordons, and what is placed where.

use deadpool_postgres::GenericClient;
use dfe_shared::placement::{choose_host, choose_server, HostView, Placement, Plan, ServerView};
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::pipeline::Step;
use crate::transitions::Refusal;
use crate::{Error, Registry, Result};

/// Consecutive failed probes after which a host or server is `unreachable`.
pub const UNREACHABLE_AFTER: i32 = 3;

/// A host as the registry sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// Its id.
    pub host_id: String,
    /// Its cluster.
    pub cluster_id: String,
    /// `pending` (never probed successfully), `active` or `unreachable`.
    pub reachability: String,
    /// Taken out of placement by an operator.
    pub cordoned: bool,
    /// Consecutive failed probes.
    pub failures: i32,
    /// The last failed probe's error.
    pub last_error: Option<String>,
    /// When it was last probed.
    pub last_probe_at: Option<OffsetDateTime>,
    /// When a probe last succeeded.
    pub last_seen_at: Option<OffsetDateTime>,
    /// Instances placed on it (not deprovisioned).
    pub instances: i64,
    /// Bytes of memory they reserve.
    pub memory_reserved: i64,
}

/// A database server as the registry sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// Its id.
    pub server_id: String,
    /// Its engine.
    pub engine: String,
    /// `pending`, `active` or `unreachable`.
    pub reachability: String,
    /// Consecutive failed probes.
    pub failures: i32,
    /// The last failed probe's error.
    pub last_error: Option<String>,
    /// When it was last probed.
    pub last_probe_at: Option<OffsetDateTime>,
    /// When a probe last succeeded.
    pub last_seen_at: Option<OffsetDateTime>,
    /// Instance databases on it (instances not deprovisioned).
    pub databases: i64,
}

/// What a probe result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeChange {
    /// Nothing to announce.
    None,
    /// It has just become unreachable (announced once per outage).
    Unreachable,
    /// It answers again after an outage.
    Recovered,
}

const HOST_COLUMNS: &str = "h.host_id, h.cluster_id, h.reachability, h.cordoned, h.failures, h.last_error, \
     h.last_probe_at, h.last_seen_at, \
     (SELECT count(*) FROM instances i WHERE i.host_id = h.host_id AND i.state <> 'deprovisioned') AS instances, \
     (SELECT coalesce(sum(i.memory_reserved), 0)::bigint FROM instances i \
       WHERE i.host_id = h.host_id AND i.state <> 'deprovisioned') AS memory_reserved";

const SERVER_COLUMNS: &str = "s.server_id, s.engine, s.reachability, s.failures, s.last_error, s.last_probe_at, \
     s.last_seen_at, \
     (SELECT count(*) FROM instances i WHERE i.database_server = s.server_id AND i.state <> 'deprovisioned') AS databases";

fn host_from_row(r: &Row) -> HostState {
    HostState {
        host_id: r.get("host_id"),
        cluster_id: r.get("cluster_id"),
        reachability: r.get("reachability"),
        cordoned: r.get("cordoned"),
        failures: r.get("failures"),
        last_error: r.get("last_error"),
        last_probe_at: r.get("last_probe_at"),
        last_seen_at: r.get("last_seen_at"),
        instances: r.get("instances"),
        memory_reserved: r.get("memory_reserved"),
    }
}

fn server_from_row(r: &Row) -> ServerState {
    ServerState {
        server_id: r.get("server_id"),
        engine: r.get("engine"),
        reachability: r.get("reachability"),
        failures: r.get("failures"),
        last_error: r.get("last_error"),
        last_probe_at: r.get("last_probe_at"),
        last_seen_at: r.get("last_seen_at"),
        databases: r.get("databases"),
    }
}

impl Registry {
    /// Makes sure every configured host `(id, cluster)` and server `(id, engine)` has a
    /// row (new ones start `pending`); the api and every worker do it at start.
    pub async fn sync_fleet(&self, hosts: &[(String, String)], servers: &[(String, String)]) -> Result<()> {
        let client = self.client().await?;
        let (host_ids, clusters): (Vec<&str>, Vec<&str>) = hosts.iter().map(|(h, c)| (h.as_str(), c.as_str())).unzip();
        client
            .execute(
                "INSERT INTO hosts (host_id, cluster_id) SELECT * FROM unnest($1::text[], $2::text[])
                 ON CONFLICT (host_id) DO UPDATE SET cluster_id = EXCLUDED.cluster_id
                 WHERE hosts.cluster_id <> EXCLUDED.cluster_id",
                &[&host_ids, &clusters],
            )
            .await
            .map_err(Error::query("recording the configured hosts"))?;
        let (server_ids, engines): (Vec<&str>, Vec<&str>) =
            servers.iter().map(|(s, e)| (s.as_str(), e.as_str())).unzip();
        client
            .execute(
                "INSERT INTO database_servers (server_id, engine) SELECT * FROM unnest($1::text[], $2::text[])
                 ON CONFLICT (server_id) DO UPDATE SET engine = EXCLUDED.engine
                 WHERE database_servers.engine <> EXCLUDED.engine",
                &[&server_ids, &engines],
            )
            .await
            .map_err(Error::query("recording the configured database servers"))?;
        Ok(())
    }

    /// Every host, with what is placed on it.
    pub async fn hosts(&self) -> Result<Vec<HostState>> {
        let client = self.client().await?;
        let rows = client
            .query(&format!("SELECT {HOST_COLUMNS} FROM hosts h ORDER BY h.cluster_id, h.host_id"), &[])
            .await
            .map_err(Error::query("listing hosts"))?;
        Ok(rows.iter().map(host_from_row).collect())
    }

    /// Every database server, with its databases.
    pub async fn database_servers(&self) -> Result<Vec<ServerState>> {
        let client = self.client().await?;
        let rows = client
            .query(&format!("SELECT {SERVER_COLUMNS} FROM database_servers s ORDER BY s.server_id"), &[])
            .await
            .map_err(Error::query("listing database servers"))?;
        Ok(rows.iter().map(server_from_row).collect())
    }

    /// Cordons (no new instances) or uncordons a host. False when there is no such host.
    pub async fn set_cordoned(&self, host_id: &str, cordoned: bool) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute("UPDATE hosts SET cordoned = $2 WHERE host_id = $1", &[&host_id, &cordoned])
            .await
            .map_err(Error::query("cordoning a host"))?;
        Ok(n > 0)
    }

    /// Takes the probes that are due for `worker`: every host and server whose last probe is
    /// `interval_secs` old, so the whole fleet of workers probes each once per interval.
    pub async fn due_probes(&self, worker: &str, interval_secs: f64) -> Result<(Vec<String>, Vec<String>)> {
        let client = self.client().await?;
        let hosts = client
            .query(
                "UPDATE hosts SET probe_due_at = now() + make_interval(secs => $2), probed_by = $1
                 WHERE host_id IN (SELECT host_id FROM hosts WHERE probe_due_at <= now() FOR UPDATE SKIP LOCKED)
                 RETURNING host_id",
                &[&worker, &interval_secs],
            )
            .await
            .map_err(Error::query("taking due host probes"))?;
        let servers = client
            .query(
                "UPDATE database_servers SET probe_due_at = now() + make_interval(secs => $2), probed_by = $1
                 WHERE server_id IN (SELECT server_id FROM database_servers WHERE probe_due_at <= now()
                                      FOR UPDATE SKIP LOCKED)
                 RETURNING server_id",
                &[&worker, &interval_secs],
            )
            .await
            .map_err(Error::query("taking due server probes"))?;
        Ok((hosts.iter().map(|r| r.get(0)).collect(), servers.iter().map(|r| r.get(0)).collect()))
    }

    /// Records a probe of host `id` (`Err`: its error) and says what changed.
    pub async fn record_host_probe(&self, id: &str, outcome: std::result::Result<(), &str>) -> Result<ProbeChange> {
        self.record_probe("hosts", "host_id", id, outcome).await
    }

    /// Records a probe of database server `id` and says what changed.
    pub async fn record_server_probe(&self, id: &str, outcome: std::result::Result<(), &str>) -> Result<ProbeChange> {
        self.record_probe("database_servers", "server_id", id, outcome).await
    }

    async fn record_probe(
        &self,
        table: &'static str,
        key: &'static str,
        id: &str,
        outcome: std::result::Result<(), &str>,
    ) -> Result<ProbeChange> {
        let mut client = self.client().await?;
        let (ok, error) = match outcome {
            Ok(()) => (true, None),
            Err(e) => (false, Some(e)),
        };
        // The previous state is read under the row lock, in the transaction that writes the
        // new one, so a transition is seen (and announced) by exactly one probe. (One
        // statement cannot do it: a subquery locking the row it updates sees no row.)
        // `table` and `key` are constants of this module, never input.
        let tx = client.transaction().await.map_err(Error::query("starting a probe record"))?;
        let before = tx
            .query_opt(&format!("SELECT reachability FROM {table} WHERE {key} = $1 FOR UPDATE"), &[&id])
            .await
            .map_err(Error::query("reading a probe's target"))?;
        let Some(before) = before else { return Ok(ProbeChange::None) };
        let before: String = before.get(0);
        let sql = format!(
            "UPDATE {table} SET
                 failures = CASE WHEN $2 THEN 0 ELSE failures + 1 END,
                 reachability = CASE WHEN $2 THEN 'active'
                                     WHEN failures + 1 >= $4 THEN 'unreachable'
                                     ELSE reachability END,
                 last_error = CASE WHEN $2 THEN NULL ELSE $3 END,
                 last_probe_at = now(),
                 last_seen_at = CASE WHEN $2 THEN now() ELSE last_seen_at END
             WHERE {key} = $1
             RETURNING $5::text, reachability"
        );
        let row = tx
            .query_opt(&sql, &[&id, &ok, &error, &UNREACHABLE_AFTER, &before])
            .await
            .map_err(Error::query("recording a probe"))?;
        tx.commit().await.map_err(Error::query("committing a probe record"))?;
        let Some(row) = row else { return Ok(ProbeChange::None) };
        let (before, after): (Option<String>, String) = (row.get(0), row.get(1));
        Ok(match (before.as_deref(), after.as_str()) {
            (Some("unreachable"), "active") => ProbeChange::Recovered,
            (Some(b), "unreachable") if b != "unreachable" => ProbeChange::Unreachable,
            _ => ProbeChange::None,
        })
    }

    /// Instances on `host_id` whose deprovision failed because the host was unreachable:
    /// what is resubmitted once it is back.
    pub async fn stranded_deprovisions(&self, host_id: &str) -> Result<Vec<String>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT i.instance_id FROM instances i JOIN jobs j ON j.job_id = i.job_id
                 WHERE i.host_id = $1 AND i.state = 'failed' AND j.kind = 'deprovision'
                   AND j.state = 'failed' AND j.error->>'code' = 'host-unreachable'
                 ORDER BY i.instance_id",
                &[&host_id],
            )
            .await
            .map_err(Error::query("listing stranded deprovisions"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// Decides the placement of a new instance inside the claiming transaction: the cluster's
/// hosts (and the candidate servers) are locked in a stable order, what is placed on them
/// is counted after the lock (so a concurrent claim's instance is seen), and the plan's
/// policy picks. `exclude` are hosts not to use (a re-placement away from a lost host).
/// The locks and the reads go out together, in one round trip.
pub(crate) async fn place_in(
    tx: &impl GenericClient,
    plan: &Plan,
    exclude: &[String],
) -> Result<std::result::Result<Placement, Refusal>> {
    let host_ids: Vec<&str> = plan.cluster.iter().flat_map(|c| c.hosts.iter().map(|h| h.host_id.as_str())).collect();
    let server_ids: Vec<&str> = plan.servers.iter().map(|s| s.server_id.as_str()).collect();
    // Lock first, then read in a second statement: in READ COMMITTED a statement that
    // waited for a lock still reads with the snapshot it started with. Hosts before
    // servers, in id order, as every claim does, so claims never deadlock.
    let hosts = match plan.cluster {
        None => None,
        Some(_) => Some((
            crate::stmt(tx, "SELECT host_id FROM hosts WHERE host_id = ANY($1) ORDER BY host_id FOR UPDATE").await?,
            crate::stmt(tx, &format!("SELECT {HOST_COLUMNS} FROM hosts h WHERE h.host_id = ANY($1)")).await?,
        )),
    };
    let servers = match plan.servers.is_empty() {
        true => None,
        false => Some((
            crate::stmt(
                tx,
                "SELECT server_id FROM database_servers WHERE server_id = ANY($1) ORDER BY server_id FOR UPDATE",
            )
            .await?,
            crate::stmt(tx, &format!("SELECT {SERVER_COLUMNS} FROM database_servers s WHERE s.server_id = ANY($1)"))
                .await?,
        )),
    };
    let (host_params, server_params): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
        ([&host_ids], [&server_ids]);
    let mut steps = Vec::with_capacity(4);
    if let Some((lock, read)) = &hosts {
        steps.push(Step::new(lock, &host_params, "locking the cluster's hosts"));
        steps.push(Step::new(read, &host_params, "reading the cluster's hosts"));
    }
    if let Some((lock, read)) = &servers {
        steps.push(Step::new(lock, &server_params, "locking the database servers"));
        steps.push(Step::new(read, &server_params, "reading the database servers"));
    }
    let mut answers = crate::pipeline::run(tx, &steps).await?.into_iter();
    let (cluster_id, host_id) = match &plan.cluster {
        None => (None, None),
        Some(cluster) => {
            let rows = answers.nth(1).unwrap_or_default();
            let states: Vec<HostState> = rows.iter().map(host_from_row).collect();
            let views: Vec<HostView> = cluster
                .hosts
                .iter()
                .map(|limits| {
                    let state = states.iter().find(|s| s.host_id == limits.host_id);
                    let excluded = exclude.contains(&limits.host_id);
                    HostView {
                        limits: limits.clone(),
                        reachability: match (excluded, state) {
                            (true, _) => "unreachable (left)".to_owned(),
                            (false, Some(s)) => s.reachability.clone(),
                            (false, None) => "pending".to_owned(),
                        },
                        cordoned: state.is_some_and(|s| s.cordoned),
                        instances: state.map_or(0, |s| s.instances),
                        memory_reserved: state.map_or(0, |s| s.memory_reserved),
                    }
                })
                .collect();
            match choose_host(cluster, &views, plan.memory) {
                Ok(host) => (Some(cluster.cluster_id.clone()), Some(host)),
                Err(reasons) => {
                    return Ok(Err(Refusal::no_capacity(format!(
                        "no host of cluster {} can take the instance: {}",
                        cluster.cluster_id,
                        reasons.join("; ")
                    ))))
                }
            }
        }
    };
    let database_server = if plan.servers.is_empty() {
        None
    } else {
        let rows = answers.nth(1).unwrap_or_default();
        let states: Vec<ServerState> = rows.iter().map(server_from_row).collect();
        let views: Vec<ServerView> = plan
            .servers
            .iter()
            .map(|limits| {
                let state = states.iter().find(|s| s.server_id == limits.server_id);
                ServerView {
                    limits: limits.clone(),
                    reachability: state.map_or_else(|| "pending".to_owned(), |s| s.reachability.clone()),
                    databases: state.map_or(0, |s| s.databases),
                }
            })
            .collect();
        match choose_server(&views) {
            Ok(server) => Some(server),
            Err(reasons) => {
                return Ok(Err(Refusal::no_capacity(format!(
                    "no database server can take the instance's database: {}",
                    reasons.join("; ")
                ))))
            }
        }
    };
    Ok(Ok(Placement {
        guest_location: plan.guest_location.clone(),
        cluster_id,
        host_id,
        database_server,
        offerings: plan.offerings.clone(),
        memory: plan.memory,
    }))
}
