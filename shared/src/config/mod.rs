//! Configuration: a TOML file (`--config FILE` or `DFE_CONFIG`), overridden by environment
//! variables `DFE__SECTION__KEY` (e.g. `DFE__AMQP__URL`). Every binary reads the same file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ids::OwnerId;
use crate::secret::Secret;
use crate::{Error, Result};

pub mod fleet;
pub mod snapshots;

pub use fleet::{ClusterConfig, HostConfig, PlacementPolicy};
pub use snapshots::{DestinationKind, Every, ScheduleConfig, SnapshotDestination, SnapshotsConfig};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    /// RabbitMQ.
    #[serde(default)]
    pub amqp: AmqpConfig,
    /// The registry database.
    pub registry: RegistryConfig,
    /// dfe-api.
    #[serde(default)]
    pub api: ApiConfig,
    /// dfe-worker.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// Provisioners (DFE's `config/provisioners.php`).
    pub provisioners: ProvisionersConfig,
    /// Docker clusters, by id.
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Database servers, by id.
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseServerConfig>,
    /// The snapshot store.
    #[serde(default)]
    pub snapshots: SnapshotsConfig,
    /// Names of what the sub-provisioners make.
    #[serde(default)]
    pub naming: NamingConfig,
    /// Log output.
    #[serde(default)]
    pub log: LogConfig,
    /// Traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Expiry of instances.
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    /// Instances per owner.
    #[serde(default)]
    pub quotas: QuotasConfig,
}

/// Expiry (DFE's `dfe:daily`): warnings before an instance's `expires-at`, and the job
/// submitted once it has passed. One worker at a time runs it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LifecycleConfig {
    /// Seconds between two runs of the schedule.
    #[serde(default = "default_lifecycle_interval")]
    pub interval_secs: u64,
    /// Days before `expires-at` at which `dfe.instance.expiring` goes out (each once; fractions
    /// of a day are allowed).
    #[serde(default = "default_warn_days")]
    pub warn_days: Vec<f64>,
    /// What is submitted once `expires-at` has passed: `deprovision` or `suspend`.
    #[serde(default = "default_on_expiry")]
    pub on_expiry: String,
}

fn default_lifecycle_interval() -> u64 {
    60
}

fn default_warn_days() -> Vec<f64> {
    vec![10.0, 3.0]
}

fn default_on_expiry() -> String {
    "deprovision".into()
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            interval_secs: default_lifecycle_interval(),
            warn_days: default_warn_days(),
            on_expiry: default_on_expiry(),
        }
    }
}

/// Instances per owner: a default for every owner and some owners of their own. An instance
/// counts from its claim until it is deprovisioned.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct QuotasConfig {
    /// The most instances an owner may have (default: no limit).
    #[serde(default)]
    pub max_instances: Option<u32>,
    /// Owners with a quota of their own, by owner id (as text).
    #[serde(default)]
    pub owners: BTreeMap<String, OwnerQuota>,
}

/// One owner's quota.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OwnerQuota {
    /// The most instances this owner may have.
    #[serde(default)]
    pub max_instances: Option<u32>,
}

impl QuotasConfig {
    /// The instance quota of `owner` (its own, else the default).
    pub fn max_instances(&self, owner: &str) -> Option<u32> {
        self.owners.get(owner).and_then(|o| o.max_instances).or(self.max_instances)
    }
}

/// RabbitMQ connection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AmqpConfig {
    /// Broker URL, or the URLs of the nodes of one RabbitMQ cluster, tried in turn on
    /// (re)connect (see [`crate::broker::Nodes`]).
    #[serde(default)]
    pub url: AmqpUrls,
}

/// `amqp.url`: one broker URL or the node URLs of a cluster. TOML takes a string or a list
/// of strings; a string may list several URLs separated by commas, which is how
/// `DFE__AMQP__URL` names a cluster. Holds passwords: it prints only redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrls(Vec<String>);

impl AmqpUrls {
    /// The URLs of `raw`: a comma-separated list, or one URL. A comma starts a new URL only
    /// where an `amqp://` or `amqps://` URL follows, so that a password holding a comma
    /// stays whole.
    pub fn parse(raw: &str) -> Result<AmqpUrls> {
        let mut urls: Vec<String> = Vec::new();
        for piece in raw.split(',') {
            let starts_url = {
                let p = piece.trim_start().to_ascii_lowercase();
                p.starts_with("amqp://") || p.starts_with("amqps://")
            };
            match urls.last_mut() {
                Some(last) if !starts_url => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => urls.push(piece.to_owned()),
            }
        }
        AmqpUrls::from_list(urls)
    }

    /// The URLs of a list, each trimmed; an empty list or an empty URL is refused.
    pub fn from_list(urls: Vec<String>) -> Result<AmqpUrls> {
        let urls: Vec<String> = urls.into_iter().map(|u| u.trim().to_owned()).collect();
        if urls.is_empty() || urls.iter().any(String::is_empty) {
            return Err(Error::Config(
                "amqp.url names no broker: give a URL, or a list of the cluster's node URLs".into(),
            ));
        }
        Ok(AmqpUrls(urls))
    }

    /// The URLs, in the order they are tried.
    pub fn urls(&self) -> &[String] {
        &self.0
    }

    /// How many nodes are named.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an empty list is refused when it is read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The URLs with their passwords replaced by `***`, comma-separated, for logs and errors.
    pub fn redacted(&self) -> String {
        self.0.iter().map(|u| crate::broker::redact_url(u)).collect::<Vec<_>>().join(",")
    }
}

impl Default for AmqpUrls {
    fn default() -> Self {
        AmqpUrls(vec![default_amqp_url()])
    }
}

impl std::fmt::Debug for AmqpUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AmqpUrls").field(&self.redacted()).finish()
    }
}

impl<'de> Deserialize<'de> for AmqpUrls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::One(s) => AmqpUrls::parse(&s),
            Raw::Many(v) => AmqpUrls::from_list(v),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

fn default_amqp_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}

/// Registry database.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RegistryConfig {
    /// PostgreSQL URL of the registry database.
    pub url: String,
    /// Connections in the pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Days a finished job (`succeeded`, `failed`) is kept after its end before the workers
    /// delete it with what hangs on it (default 30); 0 keeps every job for ever.
    #[serde(default = "default_keep_finished_days")]
    pub keep_finished_days: u32,
}

fn default_pool_size() -> usize {
    16
}

fn default_keep_finished_days() -> u32 {
    30
}

/// dfe-api.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApiConfig {
    /// Listen address; port 0 picks a free one (the bound address is logged).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Accepted API clients.
    #[serde(default)]
    pub clients: Vec<ApiClient>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { listen: default_listen(), clients: Vec::new() }
    }
}

/// An accepted API client: its id, the SHA-256 (hex) of its bearer token, and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApiClient {
    /// Client id, recorded with the jobs it submits (`requested-by`).
    pub id: String,
    /// Lowercase hex SHA-256 of the bearer token.
    pub token_sha256: String,
    /// What the token may do; all three scopes when absent.
    #[serde(default)]
    pub scopes: Option<Vec<Scope>>,
    /// The owners whose instances, jobs and snapshots the token may see and act for; every
    /// owner when absent.
    #[serde(default)]
    pub owners: Option<Vec<OwnerId>>,
    /// When the token stops being accepted (RFC 3339); never when absent.
    #[serde(default, deserialize_with = "rfc3339_option")]
    pub expires_at: Option<time::OffsetDateTime>,
}

impl ApiClient {
    /// A client with every scope, for every owner, that never expires.
    pub fn new(id: impl Into<String>, token_sha256: impl Into<String>) -> ApiClient {
        ApiClient { id: id.into(), token_sha256: token_sha256.into(), scopes: None, owners: None, expires_at: None }
    }
}

/// What a token may do (`[[api.clients]] scopes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Every `GET`.
    Read,
    /// Job submissions and cancelling a job.
    Ops,
    /// Hosts (cordon), reconciliation, expiries and quotas.
    Admin,
}

impl Scope {
    /// Every scope: what a client is given when its entry names none.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Ops, Scope::Admin];

    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Ops => "ops",
            Scope::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown scope {s:?} (known: read, ops, admin)"))
    }
}

/// Reads an optional RFC 3339 timestamp: a TOML string (`"2027-01-01T00:00:00Z"`), or a TOML
/// datetime, which the configuration loader hands over as its text.
fn rfc3339_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<time::OffsetDateTime>, D::Error> {
    use serde::de::Error;
    let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
    time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .map(Some)
        .map_err(|e| D::Error::custom(format!("expires-at must be an RFC 3339 time such as 2027-01-01T00:00:00Z: {e}")))
}

/// Log output (`[log]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LogConfig {
    /// `text` (the default) or `json`: one JSON object a line, the fields of the event and
    /// of its spans at the top level.
    #[serde(default)]
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// Traces (`[telemetry]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP (protobuf) collector, e.g. `http://127.0.0.1:4318` (spans go
    /// to `/v1/traces`, or to the URL as given when it has a path); no export when absent.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
}

/// dfe-worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WorkerConfig {
    /// Jobs one worker runs at once (its prefetch).
    #[serde(default = "default_concurrency")]
    pub concurrency: u16,
    /// Seconds a job may run before it is failed.
    #[serde(default = "default_job_timeout")]
    pub job_timeout_secs: u64,
    /// Seconds to wait for a container's `resource-uri` to answer.
    #[serde(default = "default_health_timeout")]
    pub health_timeout_secs: u64,
    /// Runs a job gets before a transient failure becomes its final failure.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds; doubled per attempt, with ±20% jitter.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Longest delay between two attempts, in milliseconds.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Seconds between two reconciliations by each worker (0: never).
    #[serde(default = "default_reconcile_interval")]
    pub reconcile_interval_secs: u64,
    /// Whether the periodic reconciliation removes orphans and fails stuck jobs (otherwise
    /// it only reports them in the log).
    #[serde(default)]
    pub reconcile_fix: bool,
    /// Deliveries of one message whose handling keeps failing before an outcome is recorded
    /// (the registry refuses it, its instance stays locked) before it is dead-lettered
    /// instead of requeued. Job queues also carry `x-delivery-limit` a little above it, the
    /// broker's own bound for a message that crashes every worker that takes it.
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u32,
    /// Attempts at publishing an event a subscriber's queue refused (the first included)
    /// before it is given up and kept in the registry as abandoned.
    #[serde(default = "default_event_attempts")]
    pub event_attempts: u32,
    /// Seconds between two probes of each Docker host and database server, by one of the
    /// workers (they share the results through the registry).
    #[serde(default = "default_probe_interval")]
    pub probe_interval_secs: u64,
    /// Address of the worker's Prometheus `/metrics` listener; port 0 picks a free one
    /// (the bound address is logged and printed), `""` or `"off"` turns it off.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: String,
}

fn default_metrics_listen() -> String {
    "127.0.0.1:0".into()
}

fn default_probe_interval() -> u64 {
    10
}

fn default_max_deliveries() -> u32 {
    10
}

fn default_event_attempts() -> u32 {
    6
}

fn default_reconcile_interval() -> u64 {
    300
}

fn default_max_attempts() -> u32 {
    5
}

fn default_retry_base_ms() -> u64 {
    2_000
}

fn default_retry_max_ms() -> u64 {
    60_000
}

fn default_concurrency() -> u16 {
    8
}

fn default_job_timeout() -> u64 {
    300
}

fn default_health_timeout() -> u64 {
    60
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: default_concurrency(),
            job_timeout_secs: default_job_timeout(),
            health_timeout_secs: default_health_timeout(),
            max_attempts: default_max_attempts(),
            retry_base_ms: default_retry_base_ms(),
            retry_max_ms: default_retry_max_ms(),
            reconcile_interval_secs: default_reconcile_interval(),
            reconcile_fix: false,
            max_deliveries: default_max_deliveries(),
            event_attempts: default_event_attempts(),
            probe_interval_secs: default_probe_interval(),
            metrics_listen: default_metrics_listen(),
        }
    }
}

/// Provisioners by tag (the `guest-location` of a job).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ProvisionersConfig {
    /// Tag used when a job names no guest location.
    pub default: String,
    /// Provisioner hosts by tag.
    pub hosts: BTreeMap<String, ProvisionerHost>,
}

/// One provisioner: which implementations make the three parts, and its offerings.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ProvisionerHost {
    /// Implementation names of the sub-provisioners.
    pub provides: Provides,
    /// DFE offerings, by id.
    #[serde(default)]
    pub offerings: BTreeMap<String, Offering>,
    /// Path on the instance where the console talks to it.
    #[serde(default = "default_resource_uri")]
    pub resource_uri: String,
    /// Docker cluster used when the job names none.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Days after its provision an instance expires (sets its `expires-at`; none when unset).
    #[serde(default)]
    pub ttl_days: Option<f64>,
    /// Database server(s) of the instances' databases: one id, or a list to place each
    /// instance's database on the one with the fewest databases.
    #[serde(default)]
    pub database: Option<OneOrMany>,
}

/// One id or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One id.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The ids, in order.
    pub fn ids(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

fn default_resource_uri() -> String {
    "/api/v2/system".into()
}

/// Implementation names of the three sub-provisioners.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Provides {
    /// e.g. `docker-container` or `noop`.
    pub instance: String,
    /// e.g. `docker-volume` or `noop`.
    pub storage: String,
    /// e.g. `postgres` or `noop`.
    pub db: String,
}

/// A DFE offering: a choice the client makes (e.g. the image version), with its items.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Offering {
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Display description.
    #[serde(default)]
    pub description: String,
    /// Item chosen when the job does not choose.
    #[serde(default)]
    pub suggested: Option<String>,
    /// Items by value; each holds attributes such as `image`, `memory`, `cpus`.
    #[serde(default)]
    pub items: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

/// A database server holding instance databases.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DatabaseServerConfig {
    /// Its engine: `postgres` (the default) or `mysql`.
    #[serde(default = "default_engine")]
    pub engine: String,
    /// Address the worker connects to.
    pub host: String,
    /// Port.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// At most this many instance databases (default: no limit).
    #[serde(default)]
    pub max_databases: Option<u32>,
    /// Address instances (containers) use to reach it; `host` when absent.
    #[serde(default)]
    pub instance_host: Option<String>,
    /// Admin role (needs CREATEROLE and CREATEDB).
    pub user: String,
    /// Admin password.
    pub password: Secret,
    /// Database the admin connects to.
    #[serde(default = "default_admin_db")]
    pub admin_database: String,
}

fn default_engine() -> String {
    "postgres".into()
}

fn default_pg_port() -> u16 {
    5432
}

fn default_admin_db() -> String {
    "postgres".into()
}

/// Names of what the sub-provisioners make.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NamingConfig {
    /// Prefix of containers, volumes (`dfe-…`), databases and roles (`dfe_…`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Name of this deployment, labelled on everything it makes (`dfe.deployment`): the
    /// reconciler only ever considers resources of its own deployment, so several
    /// deployments can share Docker hosts and database servers.
    #[serde(default = "default_prefix")]
    pub deployment: String,
}

fn default_prefix() -> String {
    "dfe".into()
}

impl Default for NamingConfig {
    fn default() -> Self {
        NamingConfig { prefix: default_prefix(), deployment: default_prefix() }
    }
}

/// Reads any view of the configuration (the services' whole [`Config`], or the part a
/// client needs): the TOML file at `path`, when given, overridden by the `DFE__SECTION__KEY`
/// variables of `env` (the process environment when `None`). The one loader of every binary.
pub fn load_layers<T: serde::de::DeserializeOwned>(
    path: Option<&Path>,
    env: Option<HashMap<String, String>>,
) -> Result<T> {
    let mut builder = config::Config::builder();
    if let Some(path) = path {
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    let environment = config::Environment::with_prefix("DFE")
        .prefix_separator("__")
        .separator("__")
        // DFE__WORKER__MAX_ATTEMPTS sets worker.max-attempts: env names cannot hold '-'.
        .convert_case(config::Case::Kebab)
        .try_parsing(true)
        .source(env);
    Ok(builder.add_source(environment).build()?.try_deserialize()?)
}

impl Config {
    /// Loads `path` (or `DFE_CONFIG` when `path` is `None`), then the `DFE__…` variables,
    /// and checks that the references between sections resolve.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os("DFE_CONFIG")
                .map(PathBuf::from)
                .ok_or_else(|| Error::Config("no configuration: pass --config FILE or set DFE_CONFIG".into()))?,
        };
        Config::load_from(&path, None)
    }

    /// Loads `path` overridden by `env` (the process environment when `None`).
    pub fn load_from(path: &Path, env: Option<HashMap<String, String>>) -> Result<Config> {
        if !path.exists() {
            return Err(Error::Config(format!("configuration file {} does not exist", path.display())));
        }
        let cfg: Config = load_layers(Some(path), env)?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks references: the default provisioner exists, clusters and database servers
    /// named by provisioners exist, prefixes are valid identifiers.
    pub fn check(&self) -> Result<()> {
        if !self.provisioners.hosts.contains_key(&self.provisioners.default) {
            return Err(Error::Config(format!(
                "provisioners.default = {:?} names no provisioners.hosts entry",
                self.provisioners.default
            )));
        }
        for (tag, host) in &self.provisioners.hosts {
            if let Some(c) = &host.cluster {
                if !self.clusters.contains_key(c) {
                    return Err(Error::Config(format!(
                        "provisioners.hosts.{tag}.cluster = {c:?} names no [clusters.{c}]"
                    )));
                }
            }
            for d in host.database.iter().flat_map(OneOrMany::ids) {
                if !self.databases.contains_key(d) {
                    return Err(Error::Config(format!(
                        "provisioners.hosts.{tag}.database names {d:?}, which is no [databases.{d}]"
                    )));
                }
            }
            for (id, offering) in &host.offerings {
                if let Some(s) = &offering.suggested {
                    if !offering.items.contains_key(s) {
                        return Err(Error::Config(format!(
                            "provisioners.hosts.{tag}.offerings.{id}.suggested = {s:?} names no item"
                        )));
                    }
                }
            }
        }
        if !matches!(self.lifecycle.on_expiry.as_str(), "deprovision" | "suspend") {
            return Err(Error::Config(format!(
                "lifecycle.on-expiry = {:?} must be \"deprovision\" or \"suspend\"",
                self.lifecycle.on_expiry
            )));
        }
        let mut seen = std::collections::BTreeMap::new();
        for (cluster_id, cluster) in &self.clusters {
            if cluster.tls_cert_path.is_some() {
                return Err(Error::Config(format!(
                    "clusters.{cluster_id}.tls-cert-path is no longer read: set tls-ca, tls-cert and tls-key"
                )));
            }
            if !cluster.hosts.is_empty() && cluster.single.docker_host.is_some() {
                return Err(Error::Config(format!(
                    "clusters.{cluster_id} has both docker-host and [clusters.{cluster_id}.hosts.<id>]: use one form"
                )));
            }
            for (host_id, host) in cluster.host_configs(cluster_id) {
                host.check(&host_id).map_err(Error::Config)?;
                if let Some(other) = seen.insert(host_id.clone(), cluster_id.clone()) {
                    return Err(Error::Config(format!(
                        "host id {host_id:?} is used in clusters {other} and {cluster_id}: host ids are unique across clusters"
                    )));
                }
            }
        }
        self.snapshots.check().map_err(Error::Config)?;
        let p = &self.naming.prefix;
        if p.is_empty() || p.len() > 16 || !p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(Error::Config(format!("naming.prefix = {p:?} must be 1-16 of [a-z0-9]")));
        }
        Ok(())
    }

    /// The provisioner host for a guest location (the default when `None`).
    pub fn provisioner(&self, guest_location: Option<&str>) -> Option<(&str, &ProvisionerHost)> {
        let tag = guest_location.unwrap_or(&self.provisioners.default);
        self.provisioners.hosts.get_key_value(tag).map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/dfe.toml")
    }

    #[test]
    fn the_fleet_example_loads_with_its_clusters_hosts_and_servers() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/fleet.toml");
        let cfg = Config::load_from(&path, Some(Default::default())).expect("fleet.toml loads");
        let remote = &cfg.clusters["remote"];
        let hosts: Vec<String> = remote.host_configs("remote").into_iter().map(|(id, _)| id).collect();
        assert_eq!(hosts, ["ssh-b", "tls-a"]);
        assert_eq!(remote.hosts["tls-a"].memory_budget_bytes(), Some(2 << 30));
        assert_eq!(remote.hosts["ssh-b"].labels["zone"], "b");
        let dbs = cfg.provisioners.hosts["docker"].database.as_ref().expect("database").ids();
        assert_eq!(dbs, ["local", "fleet"]);
        // The single-engine form still reads as a cluster of one host with the cluster's id.
        let shipped = Config::load_from(&shipped(), Some(Default::default())).expect("dfe.toml");
        let single = shipped.clusters["local"].host_configs("local");
        assert_eq!(single.len(), 1);
        assert_eq!((single[0].0.as_str(), single[0].1.docker_host()), ("local", "unix:///var/run/docker.sock"));
    }

    #[test]
    fn plain_tcp_off_loopback_and_host_ids_used_twice_are_refused() {
        let dir = std::env::temp_dir().join(format!("dfe-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let write = |name: &str, extra: &str| {
            let base = std::fs::read_to_string(shipped()).expect("shipped");
            let path = dir.join(name);
            std::fs::write(&path, format!("{base}\n{extra}")).expect("write");
            path
        };
        let tcp = write("tcp.toml", "[clusters.far]\ndocker-host = \"tcp://10.1.2.3:2375\"\n");
        let e = Config::load_from(&tcp, Some(Default::default())).expect_err("plain TCP off loopback");
        assert!(e.to_string().contains("plain TCP off loopback"), "{e}");
        let twice = write("twice.toml", "[clusters.x.hosts.local]\ndocker-host = \"unix:///var/run/docker.sock\"\n");
        let e = Config::load_from(&twice, Some(Default::default())).expect_err("a host id in two clusters");
        assert!(e.to_string().contains("unique across clusters"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_shipped_configuration_loads_and_environment_variables_override_it() {
        let cfg = Config::load_from(&shipped(), Some(Default::default())).expect("shipped config loads");
        assert_eq!(cfg.provisioners.default, "docker");
        assert_eq!(cfg.provisioners.hosts["docker"].provides.instance, "docker-container");
        assert_eq!(cfg.provisioners.hosts["noop"].provides.db, "noop");
        assert!(!cfg.api.clients.is_empty());
        let env = [
            ("DFE__AMQP__URL", "amqp://u:p@10.0.0.1:5672/x"),
            ("DFE__WORKER__MAX_ATTEMPTS", "9"),
            ("DFE__API__LISTEN", "127.0.0.1:0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let cfg = Config::load_from(&shipped(), Some(env)).expect("overridden");
        assert_eq!(cfg.amqp.url.urls(), ["amqp://u:p@10.0.0.1:5672/x"]);
        assert_eq!(cfg.worker.max_attempts, 9);
        assert_eq!(cfg.api.listen, "127.0.0.1:0");
    }

    #[test]
    fn the_cluster_forms_documented_in_the_shipped_file_load_as_they_are_written() {
        let shipped_text = std::fs::read_to_string(shipped()).expect("shipped");
        // The commented examples: the amqp list (three lines from `url = [`) and the registry URL.
        let lines: Vec<&str> = shipped_text.lines().collect();
        let start = lines.iter().position(|l| l.starts_with("#   url = [")).expect("the documented amqp list");
        let amqp: Vec<&str> = lines[start..start + 3].iter().map(|l| l.trim_start_matches('#').trim()).collect();
        let registry = lines
            .iter()
            .find(|l| l.starts_with("#   url = \"postgres://"))
            .map(|l| l.trim_start_matches('#').trim())
            .expect("the documented registry URL");
        let edited = shipped_text
            .replace("url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n", &format!("{}\n", amqp.join("\n")))
            .replace("url = \"postgres://dfe:dfe@127.0.0.1:5432/dfe\"\n", &format!("{registry}\n"));
        let path = std::env::temp_dir().join(format!("dfe-config-cluster-{}.toml", std::process::id()));
        std::fs::write(&path, edited).expect("write");
        let cfg = Config::load_from(&path, Some(Default::default()));
        let _ = std::fs::remove_file(&path);
        let cfg = cfg.expect("the documented forms load");
        assert_eq!(cfg.amqp.url.len(), 3);
        assert_eq!(cfg.amqp.url.urls()[2], "amqp://guest:guest@127.0.0.1:5683/%2f");
        assert!(cfg.registry.url.contains("@127.0.0.1:5441,127.0.0.1:5442/dfe?target_session_attrs=read-write"));
    }

    #[test]
    fn amqp_url_names_one_node_or_a_cluster_as_a_list_or_a_comma_separated_string() {
        let dir = std::env::temp_dir().join(format!("dfe-config-amqp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let base = std::fs::read_to_string(shipped()).expect("shipped");
        let list = "[amqp]\nurl = [\"amqp://a:1@h1:5681/v\", \"amqp://a:1@h2:5682/v\"]\n";
        let path = dir.join("list.toml");
        std::fs::write(&path, base.replace("[amqp]\n", "[amqp-old]\n") + list).expect("write");
        let cfg = Config::load_from(&path, Some(Default::default())).expect("a list loads");
        assert_eq!(cfg.amqp.url.urls(), ["amqp://a:1@h1:5681/v", "amqp://a:1@h2:5682/v"]);
        // The environment names a cluster as a comma-separated list; a comma inside a
        // password does not split a URL.
        let env = [("DFE__AMQP__URL", "amqp://u:p@n1:5681/%2f, amqp://u:p,q@n2:5682/%2f,amqps://n3/%2f")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let cfg = Config::load_from(&path, Some(env)).expect("env overrides the list");
        assert_eq!(cfg.amqp.url.urls(), ["amqp://u:p@n1:5681/%2f", "amqp://u:p,q@n2:5682/%2f", "amqps://n3/%2f"]);
        assert!(!format!("{:?}", cfg.amqp.url).contains(":p@"), "passwords never print");
        assert!(AmqpUrls::parse(" ").is_err());
        assert!(AmqpUrls::from_list(Vec::new()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
