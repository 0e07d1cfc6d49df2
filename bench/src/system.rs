//! An isolated system under test: its own RabbitMQ vhost and registry database, one
//! dfe-api and N dfe-workers from the release build, torn down (vhost, database, processes)
//! when dropped. The same isolation as the end-to-end tests, so leftovers of other runs
//! (queued messages, old rows) never reach the figures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Admin URL of the local PostgreSQL (deploy/config/dfe.toml).
pub const PG_ADMIN_URL: &str = "postgres://dfe:dfe@127.0.0.1:5432/postgres";

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Workers to start.
    pub workers: usize,
    /// `worker.concurrency` (None: the configuration's).
    pub worker_concurrency: Option<u16>,
    /// `RUST_LOG` of the services.
    pub log: String,
    /// Directory of the binaries.
    pub bin_dir: PathBuf,
    /// The configuration file to start from.
    pub config: PathBuf,
}

/// A running, isolated system.
pub struct System {
    /// Unique id (vhost and database suffix).
    pub id: String,
    /// Broker URL of its vhost.
    pub amqp_url: String,
    /// Base URL of its api.
    pub api_url: String,
    /// Bearer token its api accepts.
    pub token: String,
    /// Where logs and the configuration are.
    pub dir: PathBuf,
    /// The api process.
    pub api: Child,
    /// Worker processes.
    pub workers: Vec<Child>,
    vhost: String,
    database: String,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A random hex string.
pub fn random_hex(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n).map(|_| format!("{:x}", rng.gen_range(0..16u8))).collect()
}

impl System {
    /// Creates the vhost and database and starts the api and the workers.
    pub async fn start(spec: &Spec) -> Result<System> {
        for (what, addr) in [("RabbitMQ", "127.0.0.1:5672"), ("PostgreSQL", "127.0.0.1:5432")] {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                bail!("{what} is not reachable on {addr}: run `deploy/setup.sh` first");
            }
        }
        let id = random_hex(8);
        let vhost = format!("dfe-bench-{id}");
        run(Command::new("rabbitmqctl").args(["-q", "add_vhost", &vhost]))?;
        run(Command::new("rabbitmqctl").args(["-q", "set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]))?;
        let database = format!("dfe_bench_{id}");
        run(Command::new("psql").args([PG_ADMIN_URL, "-qAtc", &format!("CREATE DATABASE \"{database}\"")]))?;

        let dir = std::env::temp_dir().join("dfe-bench").join(&id);
        std::fs::create_dir_all(dir.join("snapshots"))?;
        let token = format!("bench-{}", random_hex(32));
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        let shipped =
            std::fs::read_to_string(&spec.config).with_context(|| format!("reading {}", spec.config.display()))?;
        let config = format!("{shipped}\n[[api.clients]]\nid = \"bench\"\ntoken-sha256 = \"{digest}\"\n");
        let config_path = dir.join("dfe.toml");
        std::fs::write(&config_path, config)?;

        let amqp_url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
        let mut env = vec![
            ("DFE__AMQP__URL".to_owned(), amqp_url.clone()),
            ("DFE__REGISTRY__URL".into(), format!("postgres://dfe:dfe@127.0.0.1:5432/{database}")),
            ("DFE__API__LISTEN".into(), "127.0.0.1:0".into()),
            ("DFE__SNAPSHOTS__PATH".into(), dir.join("snapshots").display().to_string()),
            ("DFE__NAMING__DEPLOYMENT".into(), format!("bench-{id}")),
            ("RUST_LOG".into(), spec.log.clone()),
        ];
        if let Some(c) = spec.worker_concurrency {
            env.push(("DFE__WORKER__CONCURRENCY".into(), c.to_string()));
        }
        let spawn = |name: &str, bin: &str, extra: &[&str]| -> Result<Child> {
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            Command::new(spec.bin_dir.join(bin))
                .arg("--config")
                .arg(&config_path)
                .args(extra)
                .envs(env.iter().cloned())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| {
                    format!("starting {bin} from {} (cargo build --release first)", spec.bin_dir.display())
                })
        };
        let api = spawn("api", "dfe-api", &[])?;
        let mut system = System {
            id: id.clone(),
            amqp_url,
            api_url: String::new(),
            token,
            dir: dir.clone(),
            api,
            workers: Vec::new(),
            vhost,
            database,
        };
        let line = wait_for_line(&dir.join("api.log"), "dfe-api listening on ", Duration::from_secs(30)).await?;
        system.api_url = line.split("listening on ").nth(1).unwrap_or_default().trim().to_owned();
        for i in 0..spec.workers {
            let name = format!("worker{}", i + 1);
            let worker_id = format!("bench-{id}-{name}");
            system.workers.push(spawn(&name, "dfe-worker", &["--worker-id", &worker_id])?);
        }
        system.wait_consumers(spec.workers).await?;
        Ok(system)
    }

    /// Waits until every worker consumes `dfe.jobs.provision`.
    async fn wait_consumers(&self, n: usize) -> Result<()> {
        let conn = dfe_shared::broker::connect(&self.amqp_url, "dfe-bench probe").await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ch = conn.create_channel().await?;
            let opts = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
            if let Ok(q) = ch.queue_declare("dfe.jobs.provision".into(), opts, Default::default()).await {
                if q.consumer_count() as usize >= n {
                    let _ = conn.close(200, "ready".into()).await;
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the workers did not start consuming within 60 s; see the logs in {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The registry's size now: rows of `jobs` and `instances`, and bytes (tables with their
    /// indexes and TOAST) of all its tables, of `jobs` and of `instances`.
    pub fn registry_size(&self) -> Result<RegistrySize> {
        let url = format!("postgres://dfe:dfe@127.0.0.1:5432/{}", self.database);
        let sql = "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM instances),
                          (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c
                             JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = 'public' AND c.relkind = 'r'),
                          pg_total_relation_size('jobs'), pg_total_relation_size('instances')";
        let out = run(Command::new("psql").args([url.as_str(), "-qAt", "-F", " ", "-c", sql]))?;
        let f: Vec<u64> = out.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        let [jobs, instances, all, jobs_bytes, instances_bytes] = f[..] else {
            bail!("unexpected answer from the registry size query: {out:?}");
        };
        Ok(RegistrySize { jobs, instances, all, jobs_bytes, instances_bytes })
    }

    /// The workers' lock sessions so far, summed: requests of runs and the round trips they
    /// took (`dfe_worker_lock_session_{requests,batches}_total` of each worker's metrics).
    /// None when a worker's metrics cannot be read.
    pub async fn lock_sessions(&self) -> Option<(u64, u64)> {
        let mut sum = (0, 0);
        for i in 0..self.workers.len() {
            let log = std::fs::read_to_string(self.dir.join(format!("worker{}.log", i + 1))).ok()?;
            let url = log.lines().find_map(|l| l.split("dfe-worker metrics on ").nth(1))?.trim().to_owned();
            let text = reqwest::get(format!("{url}/metrics")).await.ok()?.text().await.ok()?;
            let counter =
                |name: &str| text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<u64>().ok()));
            sum.0 += counter("dfe_worker_lock_session_requests_total ")?;
            sum.1 += counter("dfe_worker_lock_session_batches_total ")?;
        }
        Some(sum)
    }

    /// Process ids: the api first, then the workers.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut v = vec![("dfe-api".to_owned(), self.api.id())];
        v.extend(self.workers.iter().enumerate().map(|(i, w)| (format!("dfe-worker {}", i + 1), w.id())));
        v
    }
}

/// The registry's size at one moment ([`System::registry_size`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct RegistrySize {
    /// Rows in `jobs`.
    pub jobs: u64,
    /// Rows in `instances`.
    pub instances: u64,
    /// Bytes of all tables, with their indexes and TOAST.
    pub all: u64,
    /// Bytes of `jobs`, with its indexes and TOAST.
    pub jobs_bytes: u64,
    /// Bytes of `instances`, with its indexes and TOAST.
    pub instances_bytes: u64,
}

/// Peak resident memory (VmHWM) of a process, in KiB.
pub fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system, in clock ticks of 1/100 s) of a process.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// CPU ticks of every process whose command name is `comm` (e.g. `postgres`, `beam.smp`).
pub fn cpu_ticks_of(comm: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim() == comm).unwrap_or(false))
        .map(cpu_ticks)
        .sum()
}

async fn wait_for_line(path: &Path, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(needle)) {
            return Ok(l.to_owned());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{} has no line with {needle:?} after {timeout:?}:\n{text}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for p in self.workers.iter_mut().chain(std::iter::once(&mut self.api)) {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = Command::new("rabbitmqctl").args(["-q", "delete_vhost", &self.vhost]).output();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database);
        let _ = Command::new("psql").args([PG_ADMIN_URL, "-qAtc", &sql]).output();
    }
}

/// Removes an instance's container, volume, database and role by their default names
/// (cleanup after a run with the real provisioners).
pub fn remove_instance(instance_id: &str) {
    let _ = Command::new("docker").args(["rm", "-f", &format!("dfe-{instance_id}")]).output();
    let _ = Command::new("docker").args(["volume", "rm", "-f", &format!("dfe-{instance_id}-storage")]).output();
    let name = format!("dfe_{}", instance_id.replace('-', "_"));
    for sql in [format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"), format!("DROP ROLE IF EXISTS \"{name}\"")] {
        let _ = Command::new("psql").args([PG_ADMIN_URL, "-qAtc", &sql]).output();
    }
}
