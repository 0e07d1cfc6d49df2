//! Test support for the end-to-end tests: everything that starts services or processes
//! lives here, so the tests read as the operator's story.
//!
//! Each [`TestEnv`] gets its own RabbitMQ vhost and its own registry database, so leftovers
//! of earlier runs (durable queues with messages, old rows) never reach it; instance ids are
//! unique per test; and on drop it removes what it made. The real RabbitMQ, PostgreSQL and
//! Docker of `deploy/setup.sh` are required: when one is missing, [`TestEnv::start`] fails
//! with a message naming that command. Nothing here is a mock.

pub mod asyncapi;
pub mod cluster;
pub mod console;
pub mod events;
pub mod fleet;
pub mod otlp;
pub mod probes;
pub mod procs;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use events::EventLog;
pub use procs::Proc;

/// The command that installs and starts the services.
pub const SETUP: &str = "deploy/setup.sh";

/// Admin URL of the local PostgreSQL (see deploy/config/dfe.toml).
pub const PG_ADMIN_URL: &str = "postgres://dfe:dfe@127.0.0.1:5432/postgres";

/// Admin URL of the local MariaDB (`[databases.mariadb]` of deploy/config/dfe.toml).
pub const MYSQL_ADMIN_URL: &str = "mysql://dfe:dfe@127.0.0.1:3306";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A fresh age key pair: the identity file written at `path` (as `age-keygen` writes it)
/// and the recipient (`age1…`) to encrypt to.
pub fn age_identity(path: &Path) -> Result<String> {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("# public key: {recipient}\n{}\n", identity.to_string().expose_secret()))?;
    Ok(recipient)
}

/// A short random hex string.
pub fn random_hex(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n).map(|_| format!("{:x}", rng.gen_range(0..16u8))).collect()
}

/// Options of a test environment.
#[derive(Debug, Clone)]
pub struct Options {
    /// Workers started at once.
    pub workers: usize,
    /// Extra environment for the workers (e.g. the fault hook).
    pub worker_env: Vec<(String, String)>,
    /// TOML appended to the configuration (extra provisioners, database servers).
    pub extra_config: String,
    /// Extra environment for the api and the workers alike (`DFE__…` overrides of keys the
    /// shipped configuration sets, which appended TOML cannot redefine).
    pub env: Vec<(String, String)>,
    /// Where the environment's vhost lives.
    pub broker: Broker,
    /// Where the environment's registry database lives.
    pub registry: RegistryServer,
}

/// The broker of an environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Broker {
    /// The main RabbitMQ of `deploy/setup.sh` (127.0.0.1:5672).
    #[default]
    Main,
    /// The 3-node cluster of `deploy/cluster-rabbitmq.sh`: the api and the workers get every
    /// node's URL (node 1 first), the test's own clients a node of their choosing.
    Cluster,
}

/// The registry server of an environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RegistryServer {
    /// The main PostgreSQL of `deploy/setup.sh` (127.0.0.1:5432).
    #[default]
    Main,
    /// The primary and standby of `deploy/registry-standby.sh`, both listed in the registry
    /// URL with `target_session_attrs=read-write`.
    Standby,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 2,
            worker_env: Vec::new(),
            extra_config: String::new(),
            env: Vec::new(),
            broker: Broker::Main,
            registry: RegistryServer::Main,
        }
    }
}

/// One isolated system under test: vhost, registry database, api, workers.
pub struct TestEnv {
    /// Unique id of this environment (vhost and database suffix).
    pub id: String,
    /// Broker URL of its vhost (on a cluster: node 1's), for the test's own clients.
    pub amqp_url: String,
    /// What the api and the workers get as `amqp.url`: every node's URL of the vhost.
    pub amqp_urls: Vec<String>,
    /// The name of its vhost.
    pub vhost: String,
    /// Which broker and registry server it uses.
    pub broker: Broker,
    /// Which registry server it uses.
    pub registry_server: RegistryServer,
    /// Registry URL of its database.
    pub registry_url: String,
    /// The configuration file the processes use.
    pub config_path: PathBuf,
    /// Directory of its logs and config.
    pub dir: PathBuf,
    /// Base URL of its api.
    pub api_url: String,
    /// Bearer token accepted by its api.
    pub token: String,
    /// The api process.
    pub api: Option<Proc>,
    /// Worker processes.
    pub workers: Vec<Proc>,
    /// Every HTTP answer body received through [`TestEnv::get`]/[`TestEnv::post`].
    pub answers: std::sync::Mutex<Vec<String>>,
    database: String,
    worker_env: Vec<(String, String)>,
    extra_env: Vec<(String, String)>,
    instances: std::sync::Mutex<Vec<String>>,
    http: reqwest::Client,
    next_worker: usize,
}

/// Runs a command, failing with its output.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails with the setup command named when a service is not there.
pub async fn preflight() -> Result<()> {
    let root = repo_root();
    if tokio::net::TcpStream::connect("127.0.0.1:5672").await.is_err() {
        bail!("RabbitMQ is not reachable on 127.0.0.1:5672: run `{SETUP}` (from {}) first", root.display());
    }
    if tokio::net::TcpStream::connect("127.0.0.1:5432").await.is_err() {
        bail!("PostgreSQL is not reachable on 127.0.0.1:5432: run `{SETUP}` first");
    }
    if tokio::net::TcpStream::connect("127.0.0.1:3306").await.is_err() {
        bail!("MariaDB is not reachable on 127.0.0.1:3306: run `{SETUP}` first");
    }
    if !Path::new("/var/run/docker.sock").exists() || probes::docker().await.is_err() {
        bail!("the Docker engine is not reachable on /var/run/docker.sock: run `{SETUP}` first");
    }
    if !probes::image_exists("dfe/test-instance:latest").await {
        bail!("the test image dfe/test-instance:latest is missing: run `{SETUP}` first");
    }
    Ok(())
}

/// Where the workspace's binaries are (next to the test executable's `deps/`).
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("test executable has no parent")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --workspace --bins`; `deploy/test.sh` does it)",
            path.display()
        );
    }
    Ok(path)
}

impl TestEnv {
    /// Starts an environment with two workers.
    pub async fn start() -> Result<TestEnv> {
        TestEnv::start_with(Options::default()).await
    }

    /// Starts an environment.
    pub async fn start_with(options: Options) -> Result<TestEnv> {
        preflight().await?;
        let id = random_hex(10);
        let vhost = format!("dfe-test-{id}");
        let (amqp_url, amqp_urls) = match options.broker {
            Broker::Main => {
                run(Command::new("rabbitmqctl").args(["-q", "add_vhost", &vhost]))?;
                let rights = ["-q", "set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"];
                run(Command::new("rabbitmqctl").args(rights))?;
                let url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
                (url.clone(), vec![url])
            }
            Broker::Cluster => {
                let cluster = cluster::RabbitCluster::preflight().await?;
                let v = vhost.clone();
                tokio::task::spawn_blocking(move || cluster.add_vhost(1, &v)).await??;
                (cluster.url(1, &vhost), cluster.urls(&vhost))
            }
        };
        let database = format!("dfe_test_{id}");
        let registry_url = match options.registry {
            RegistryServer::Main => {
                probes::pg_exec(PG_ADMIN_URL, &format!("CREATE DATABASE \"{database}\"")).await?;
                format!("postgres://dfe:dfe@127.0.0.1:5432/{database}")
            }
            RegistryServer::Standby => {
                let pair = cluster::StandbyPair::preflight().await?;
                probes::pg_exec(&pair.url("postgres"), &format!("CREATE DATABASE \"{database}\"")).await?;
                pair.url(&database)
            }
        };

        let dir = std::env::temp_dir().join("dfe-tests").join(&id);
        std::fs::create_dir_all(dir.join("snapshots"))?;
        let token = format!("test-token-{}", random_hex(32));
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        let shipped = std::fs::read_to_string(repo_root().join("deploy/config/dfe.toml"))?;
        let config = format!("{shipped}\n{}\n{}", test_config(&digest), options.extra_config);
        let config_path = dir.join("dfe.toml");
        std::fs::write(&config_path, config)?;

        let mut env = TestEnv {
            amqp_url,
            amqp_urls,
            broker: options.broker,
            registry_server: options.registry,
            registry_url,
            config_path,
            dir,
            api_url: String::new(),
            token,
            api: None,
            workers: Vec::new(),
            answers: Default::default(),
            vhost,
            database,
            worker_env: options.worker_env.clone(),
            extra_env: options.env.clone(),
            instances: Default::default(),
            http: reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build()?,
            next_worker: 0,
            id,
        };
        env.start_api().await?;
        for _ in 0..options.workers {
            env.start_worker()?;
        }
        env.wait_ready().await?;
        Ok(env)
    }

    fn service_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            // A cluster as a comma-separated list, as an operator would set it.
            ("DFE__AMQP__URL".into(), self.amqp_urls.join(",")),
            ("DFE__REGISTRY__URL".into(), self.registry_url.clone()),
            ("DFE__API__LISTEN".into(), "127.0.0.1:0".into()),
            ("DFE__SNAPSHOTS__PATH".into(), self.snapshots_dir().display().to_string()),
            // Its own deployment: a reconciler here never touches another test's instances.
            ("DFE__NAMING__DEPLOYMENT".into(), format!("test-{}", self.id)),
            ("RUST_LOG".into(), "info,dfe_worker=debug,dfe_api=debug,dfe_shared=debug".into()),
        ];
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// Starts (or restarts) the api and waits for its address.
    pub async fn start_api(&mut self) -> Result<()> {
        self.start_api_with(&[]).await
    }

    /// Starts (or restarts) the api with extra environment variables.
    pub async fn start_api_with(&mut self, extra: &[(String, String)]) -> Result<()> {
        if let Some(mut old) = self.api.take() {
            old.kill();
        }
        let mut cmd = Command::new(bin("dfe-api")?);
        cmd.arg("--config").arg(&self.config_path).envs(self.service_env()).envs(extra.iter().cloned());
        let proc = Proc::spawn("api", cmd, &self.dir)?;
        let line = proc.wait_for_line("dfe-api listening on ", Duration::from_secs(30)).await?;
        self.api_url = line.split("listening on ").nth(1).unwrap_or_default().trim().to_owned();
        self.api = Some(proc);
        Ok(())
    }

    /// Starts one more worker with the environment's worker options.
    pub fn start_worker(&mut self) -> Result<&Proc> {
        let env = self.worker_env.clone();
        self.start_worker_with(&env)
    }

    /// Starts one more worker with extra environment variables.
    pub fn start_worker_with(&mut self, extra: &[(String, String)]) -> Result<&Proc> {
        self.next_worker += 1;
        let name = format!("worker{}", self.next_worker);
        let mut cmd = Command::new(bin("dfe-worker")?);
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(["--worker-id", &format!("{name}-{}", self.id)])
            .envs(self.service_env())
            .envs(extra.iter().cloned());
        self.workers.push(Proc::spawn(&name, cmd, &self.dir)?);
        self.workers.last().context("just pushed")
    }

    async fn wait_ready(&self) -> Result<()> {
        for w in &self.workers {
            w.wait_for_line("consuming dfe.jobs", Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// A fresh, unique instance id (cleaned up on drop).
    pub fn instance_id(&self, stem: &str) -> String {
        let id = format!("t{}-{stem}", random_hex(8));
        self.instances.lock().map(|mut v| v.push(id.clone())).ok();
        id
    }

    /// Records an instance id made by other means so drop cleans it up.
    pub fn track(&self, instance_id: &str) {
        self.instances.lock().map(|mut v| v.push(instance_id.to_owned())).ok();
    }

    /// An event log of this environment's `dfe.events` (bound before it returns).
    pub async fn events(&self) -> Result<EventLog> {
        EventLog::subscribe(&self.amqp_url, "dfe.#").await
    }

    /// POSTs JSON to the api with the token; returns status and body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        self.post_raw(path, body.to_string().as_bytes(), Some(&self.token), &[]).await
    }

    /// POSTs raw bytes with an optional token and extra headers.
    pub async fn post_raw(
        &self,
        path: &str,
        body: &[u8],
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value)> {
        let mut req = self.http.post(format!("{}{path}", self.api_url)).body(body.to_vec());
        // JSON unless the caller declares another type (one Content-Type header, not two).
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req = req.header("content-type", "application/json");
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.answer(req).await
    }

    /// PATCHes JSON to the api with the token; returns status and body.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        self.request_as("PATCH", Some(&self.token), path, Some(body)).await
    }

    /// Any method with another token (or none) and an optional JSON body. An answer that is
    /// an event stream is not read (it would not end): its body is null.
    pub async fn request_as(
        &self,
        method: &str,
        token: Option<&str>,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())?;
        let mut req = self.http.request(method, format!("{}{path}", self.api_url));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let streamed = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if streamed {
            return Ok((resp.status().as_u16(), Value::Null));
        }
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        self.answers.lock().map(|mut a| a.push(text.clone())).ok();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// GETs from the api with the token.
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.answer(self.http.get(format!("{}{path}", self.api_url)).bearer_auth(&self.token)).await
    }

    /// GETs from the api with another token (or none).
    pub async fn get_as(&self, token: Option<&str>, path: &str) -> Result<(u16, Value)> {
        let mut req = self.http.get(format!("{}{path}", self.api_url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.answer(req).await
    }

    /// POSTs JSON to the api with another token (or none).
    pub async fn post_as(&self, token: Option<&str>, path: &str, body: &Value) -> Result<(u16, Value)> {
        self.post_raw(path, body.to_string().as_bytes(), token, &[]).await
    }

    async fn answer(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value)> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        self.answers.lock().map(|mut a| a.push(text.clone())).ok();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    /// Submits a job over REST and returns its job id (asserting 202).
    pub async fn submit(&self, kind: &str, body: Value) -> Result<String> {
        let (status, answer) = self.post(&format!("/api/v1/ops/{kind}"), &body).await?;
        if status != 202 {
            bail!("POST {kind} answered {status}: {answer}");
        }
        answer["job-id"].as_str().map(str::to_owned).context("202 without job-id")
    }

    /// Submits one job of `kind` per instance, all at once; returns the job ids (asserting
    /// every 202). `body` makes the job of an instance id.
    pub async fn submit_all(
        &self,
        kind: &str,
        instances: &[String],
        body: impl Fn(&str) -> Value,
    ) -> Result<Vec<String>> {
        futures::future::join_all(instances.iter().map(|i| self.submit(kind, body(i)))).await.into_iter().collect()
    }

    /// Waits until the job reads a terminal state; returns the job.
    pub async fn wait_job(&self, job_id: &str, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, job) = self.get(&format!("/api/v1/ops/jobs/{job_id}")).await?;
            if status == 200 && matches!(job["state"].as_str(), Some("succeeded" | "failed")) {
                return Ok(job);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("job {job_id} did not end within {timeout:?}: {job}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Publishes a raw message onto `dfe.jobs` with a plain AMQP client, as any publisher would.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], props: lapin::BasicProperties) -> Result<()> {
        probes::publish(&self.amqp_url, "dfe.jobs", routing_key, body, props).await
    }

    /// Every log line written so far by the api and the workers.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for p in self.api.iter().chain(self.workers.iter()) {
            out.push_str(&p.log());
        }
        out
    }

    /// Runs `dfe-worker` once with this environment's configuration and extra arguments
    /// (e.g. `--reconcile`); returns exit code and stdout.
    pub async fn worker_once(&self, args: &[&str]) -> Result<(i32, String)> {
        let out = tokio::process::Command::new(bin("dfe-worker")?)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .envs(self.service_env())
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// This environment's snapshot store.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// Runs the real `dfe` binary against this environment; returns exit code, stdout, stderr.
    pub async fn cli(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let out = tokio::process::Command::new(bin("dfe")?)
            .args(args)
            .env_remove("DFE_CONFIG")
            .env("DFE_API_URL", &self.api_url)
            .env("DFE_TOKEN", &self.token)
            .env("DFE__AMQP__URL", &self.amqp_url)
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The real `dfe` binary as a command set up like [`TestEnv::cli`], for running it in the
    /// background or reading its raw output; killed when dropped.
    pub fn cli_command(&self, args: &[&str]) -> Result<tokio::process::Command> {
        let mut cmd = tokio::process::Command::new(bin("dfe")?);
        cmd.args(args)
            .env_remove("DFE_CONFIG")
            .env("DFE_API_URL", &self.api_url)
            .env("DFE_TOKEN", &self.token)
            .env("DFE__AMQP__URL", &self.amqp_url)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Runs `dfe` like [`TestEnv::cli`], with environment variables set (`Some`) or removed
    /// (`None`) on top of the environment's own.
    pub async fn cli_with_env(&self, args: &[&str], env: &[(&str, Option<&str>)]) -> Result<(i32, String, String)> {
        let mut cmd = self.cli_command(args)?;
        for (key, value) in env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        let out = cmd.output().await?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The admin URL of the registry database.
    pub fn registry(&self) -> &str {
        &self.registry_url
    }
}

/// An `[[api.clients]]` entry admitting `token` as client `id`, with `rights` (TOML lines
/// such as `scopes = ["read"]`), for [`Options::extra_config`].
pub fn client_config(id: &str, token: &str, rights: &str) -> String {
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    format!("\n[[api.clients]]\nid = \"{id}\"\ntoken-sha256 = \"{digest}\"\n{rights}\n")
}

fn test_config(token_digest: &str) -> String {
    format!(
        r#"
# --- added by the test support ---
[[api.clients]]
id = "tests"
token-sha256 = "{token_digest}"

# An item whose image does not exist on the host: provisioning fails at the instance step.
[provisioners.hosts.docker.offerings.image.items.missing]
image = "dfe/does-not-exist:latest"

# A database server that refuses the admin's credentials.
[databases.refusing]
host = "127.0.0.1"
port = 5432
user = "dfe"
password = "not-the-password"

[provisioners.hosts.broken-db]
resource-uri = "/api/v2/system"
cluster = "local"
database = "refusing"

[provisioners.hosts.broken-db.provides]
instance = "docker-container"
storage = "docker-volume"
db = "postgres"

[provisioners.hosts.broken-db.offerings.image]
suggested = "test"

[provisioners.hosts.broken-db.offerings.image.items.test]
image = "dfe/test-instance:latest"
"#
    )
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for p in self.workers.iter_mut().chain(self.api.iter_mut()) {
            p.kill();
        }
        if failed {
            eprintln!("--- logs of environment {} (in {}) ---", self.id, self.dir.display());
            for p in self.api.iter().chain(self.workers.iter()) {
                let log = p.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- {} (last {} lines) ---", p.name, tail.len());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        let instances = self.instances.lock().map(|v| v.clone()).unwrap_or_default();
        for id in instances {
            probes::remove_instance_blocking(&id);
            // Fleet tests place instances on the extra engines too (nothing there is a no-op).
            for engine in [fleet::A, fleet::B] {
                engine.remove_instance_blocking(&id);
            }
            let name = probes::db_name(&id);
            let fleet_pg = format!("postgres://dfe:dfe@127.0.0.1:{}/postgres", fleet::PG_FLEET_PORT);
            for stmt in
                [format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"), format!("DROP ROLE IF EXISTS \"{name}\"")]
            {
                let _ = Command::new("psql").args([fleet_pg.as_str(), "-qAtc", &stmt]).output();
            }
        }
        match self.broker {
            Broker::Main => {
                let _ = Command::new("rabbitmqctl").args(["-q", "delete_vhost", &self.vhost]).output();
            }
            Broker::Cluster => cluster::RabbitCluster.delete_vhost(&self.vhost),
        }
        let admin = match self.registry_server {
            RegistryServer::Main => PG_ADMIN_URL.to_owned(),
            RegistryServer::Standby => cluster::StandbyPair.url("postgres"),
        };
        let drop_db = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database);
        let _ = Command::new("psql").args([admin.as_str(), "-qAtc", &drop_db]).output();
    }
}

impl TestEnv {
    /// The invariants every fault test ends with: each job reached a terminal state; each
    /// has exactly one success-or-failure event once duplicates (same `event-id`) are
    /// dropped; and for each instance id made through this environment (`real`: with the
    /// real provisioners) a registry row that says provisioned has exactly its container,
    /// volume, database and role, and no other row leaves anything behind.
    pub async fn check_invariants(&self, events: &EventLog, job_ids: &[String], real: bool) -> Result<()> {
        for job in job_ids {
            let (status, record) = self.get(&format!("/api/v1/ops/jobs/{job}")).await?;
            if status != 200 || !matches!(record["state"].as_str(), Some("succeeded" | "failed")) {
                bail!("job {job} did not end: {status} {record}");
            }
            let finals: std::collections::HashSet<String> = events
                .of_job(job)
                .iter()
                .filter(|e| events::is_final(e["event"].as_str().unwrap_or_default()))
                .map(|e| e["event-id"].to_string())
                .collect();
            if finals.len() != 1 {
                bail!("job {job} has {} distinct final events", finals.len());
            }
        }
        if !real {
            return Ok(());
        }
        let instances = self.instances.lock().map(|v| v.clone()).unwrap_or_default();
        for id in instances {
            let (status, row) = self.get(&format!("/api/v1/instances/{id}")).await?;
            let fp = probes::footprint(&id).await?;
            let provisioned = status == 200 && row["state"] == "provisioned";
            if provisioned && !fp.is_complete() {
                bail!("instance {id} is provisioned in the registry but has {fp:?}");
            }
            if !provisioned && !fp.is_empty() {
                bail!("instance {id} has {fp:?} but its registry row is {status} {row}");
            }
        }
        Ok(())
    }
}
