//! dfe-bench: how fast the provisioner turns requests into instances, how it scales with
//! workers, and what it costs in memory, side by side with what an operator would do instead.
//!
//! Module map:
//! - [`system`]: an isolated system (own vhost and registry database, api + N workers).
//! - [`load`]: N provisions with C in flight, via REST or the queue, timed to their final events.
//! - [`raw`]: the raw RabbitMQ reference (confirmed persistent publish into a quorum queue,
//!   consume with acks) for the `noop` pipeline.
//! - [`probe`]: list endpoints, `dfe instances` and a reconciliation pass on the registry a run left.
//! - [`stats`]: the percentiles (nearest rank) and their formatting, in milliseconds.
//!
//! The reference of the real provisioners is `bench/baseline.sh` (docker CLI and psql by hand).

pub mod load;
pub mod probe;
pub mod raw;
pub mod stats;
pub mod system;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use load::Via;
use stats::{pcts, quantile, sorted, sorted_ms};

/// Benchmarks the DFE provisioner against raw RabbitMQ (`noop`) or a hand-written
/// baseline script (real provisioners). Starts its own dfe-api and dfe-workers from the
/// release build in a fresh RabbitMQ vhost and registry database.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about)]
pub struct Args {
    /// Jobs (provisions) to submit.
    #[arg(short = 'n', long, default_value_t = 2000)]
    pub jobs: usize,
    /// Submissions in flight at once (HTTP requests or unconfirmed publishes).
    #[arg(short = 'c', long, default_value_t = 64)]
    pub concurrency: usize,
    /// dfe-worker processes to start; several values (`-w 1,2,4`) give the scaling curve.
    #[arg(short = 'w', long, value_delimiter = ',', default_values_t = [2usize])]
    pub workers: Vec<usize>,
    /// `worker.concurrency` of each worker (default: the configuration's).
    #[arg(long)]
    pub worker_concurrency: Option<u16>,
    /// Through the REST API or straight onto `dfe.jobs`.
    #[arg(long, value_enum, default_value_t = Via::Api)]
    pub via: Via,
    /// Guest location: `noop` (the pipeline alone) or `docker` (volume, database, container).
    #[arg(long, default_value = "noop")]
    pub provisioner: String,
    /// Skip the reference run (raw RabbitMQ loop for noop, bench/baseline.sh otherwise).
    #[arg(long)]
    pub no_reference: bool,
    /// Seconds to wait for all final events.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// `RUST_LOG` of the started services.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Directory with dfe-api and dfe-worker.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Configuration to start from (its `noop` and `docker` provisioners are used).
    #[arg(long, default_value = "deploy/config/dfe.toml")]
    pub config: PathBuf,
    /// Closed loop: submit each job only after the previous one's final event (the latency
    /// of a single provision, without queueing).
    #[arg(long)]
    pub sequential: bool,
    /// Unmeasured jobs submitted first (connections, pools, statement caches warm up).
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Instances provisioned (and kept) before the measured run, with the same provisioner,
    /// at least 8 at a time: the measured jobs then run beside that many (cost growth).
    #[arg(long, default_value_t = 0)]
    pub fill: usize,
    /// After the measured run, time the list endpoints, `dfe instances` and a
    /// reconciliation pass on what the registry then holds.
    #[arg(long)]
    pub probe: bool,
    /// Open loop: submit at this many jobs per second (the latency at a given load; the
    /// default submits as fast as the `-c` submissions in flight allow).
    #[arg(long)]
    pub rate: Option<f64>,
}

/// One measured configuration.
struct Row {
    workers: usize,
    jobs_per_s: f64,
    latency_ms: Vec<f64>,
    failed: usize,
    steps: BTreeMap<String, Vec<f64>>,
    memory: Vec<(String, u64)>,
    /// CPU seconds during the measured run: api, workers (sum), RabbitMQ, PostgreSQL; elapsed.
    cpu: [f64; 5],
    submit_per_s: f64,
    /// The registry's size when empty (just migrated) and after the run.
    registry: (system::RegistrySize, system::RegistrySize),
    /// The workers' lock sessions during the measured run: requests of runs, round trips.
    lock_session: Option<(u64, u64)>,
}

/// Runs every requested configuration, then the reference, and prints the figures.
pub async fn run(args: Args) -> Result<()> {
    let real = args.provisioner != "noop";
    println!(
        "dfe-bench: {} provisions, {} in flight, via {:?}, provisioner {}, workers {:?}, machine: {} cores, {}",
        args.jobs,
        args.concurrency,
        args.via,
        args.provisioner,
        args.workers,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model()
    );
    let mut rows = Vec::new();
    for &workers in &args.workers {
        rows.push(measure(&args, workers).await?);
    }
    println!();
    for r in &rows {
        print_row(&args, r);
    }
    if args.no_reference {
        return Ok(());
    }
    println!();
    if real {
        reference_baseline(&args, &rows)?;
    } else {
        reference_raw(&args, &rows).await?;
    }
    Ok(())
}

async fn measure(args: &Args, workers: usize) -> Result<Row> {
    let spec = system::Spec {
        workers,
        worker_concurrency: args.worker_concurrency,
        log: args.log.clone(),
        bin_dir: args.bin_dir.clone(),
        config: args.config.clone(),
    };
    let sys = system::System::start(&spec).await?;
    eprintln!("[{workers} worker(s)] system {} up (logs in {})", sys.id, sys.dir.display());
    let timeout = Duration::from_secs(args.timeout_secs);
    let real = args.provisioner != "noop";
    let prefix = format!("b{}", sys.id);
    let mut made = Vec::new();
    let empty = sys.registry_size().context("reading the empty registry's size")?;
    if args.warmup > 0 && !real {
        let warm = format!("{prefix}w");
        let load = load::Load { prefix: &warm, n: args.warmup, ..load(args, &prefix, timeout) };
        load::run(&sys, load).await.context("warm-up")?;
    }
    if args.fill > 0 {
        let fill = format!("{prefix}f");
        let t = std::time::Instant::now();
        let load = load::Load {
            prefix: &fill,
            n: args.fill,
            concurrency: args.concurrency.max(8),
            sequential: false,
            rate: None,
            ..load(args, &prefix, timeout)
        };
        let filled = load::run(&sys, load).await.context("fill");
        made.extend((0..args.fill).map(|i| format!("{fill}-{i}")));
        let filled = filled?;
        let failed = filled.jobs.iter().filter(|j| !j.succeeded).count();
        eprintln!(
            "[{workers} worker(s)] filled with {} instances ({failed} failed) in {:.1} s",
            args.fill,
            t.elapsed().as_secs_f64()
        );
    }
    made.extend((0..args.jobs).map(|i| format!("{prefix}-{i}")));
    let cpu = || {
        let pids = sys.pids();
        [
            system::cpu_ticks(pids[0].1),
            pids[1..].iter().map(|(_, p)| system::cpu_ticks(*p)).sum(),
            system::cpu_ticks_of("beam.smp"),
            system::cpu_ticks_of("postgres"),
        ]
    };
    let before = cpu();
    let sessions_before = sys.lock_sessions().await;
    let result = load::run(&sys, load(args, &prefix, timeout)).await;
    let after = cpu();
    let lock_session = match (sessions_before, sys.lock_sessions().await) {
        (Some(b), Some(a)) => Some((a.0.saturating_sub(b.0), a.1.saturating_sub(b.1))),
        _ => None,
    };
    let memory = sys.pids().into_iter().map(|(name, pid)| (name, system::peak_kib(pid).unwrap_or(0))).collect();
    let size = sys.registry_size().context("reading the registry's size")?;
    if args.probe {
        println!(
            "\n== reads at {} jobs and {} instances in the registry ({workers} worker(s)) ==",
            size.jobs, size.instances
        );
        if let Err(e) = probe::run(&sys, &args.bin_dir).await {
            eprintln!("probe failed: {e:#}");
        }
    }
    drop(sys);
    if real {
        for id in &made {
            system::remove_instance(id);
        }
    }
    let result = result?;
    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for j in &result.jobs {
        for (k, v) in &j.steps {
            steps.entry(k.clone()).or_default().push(*v);
        }
    }
    let n = result.jobs.len() as f64;
    Ok(Row {
        workers,
        jobs_per_s: n / result.elapsed.as_secs_f64(),
        latency_ms: sorted_ms(result.jobs.iter().map(|j| j.latency)),
        failed: result.jobs.iter().filter(|j| !j.succeeded).count(),
        steps: steps.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
        memory,
        cpu: [
            after[0].saturating_sub(before[0]) as f64 / 100.0,
            after[1].saturating_sub(before[1]) as f64 / 100.0,
            after[2].saturating_sub(before[2]) as f64 / 100.0,
            after[3].saturating_sub(before[3]) as f64 / 100.0,
            result.elapsed.as_secs_f64(),
        ],
        submit_per_s: n / result.submit_elapsed.as_secs_f64(),
        registry: (empty, size),
        lock_session,
    })
}

fn load<'a>(args: &'a Args, prefix: &'a str, timeout: Duration) -> load::Load<'a> {
    load::Load {
        via: args.via,
        guest: &args.provisioner,
        prefix,
        n: args.jobs,
        concurrency: args.concurrency,
        sequential: args.sequential,
        rate: args.rate,
        timeout,
    }
}

fn print_row(args: &Args, r: &Row) {
    println!("== {} worker(s) ==", r.workers);
    println!(
        "throughput      {:>8.1} jobs/s  ({} jobs, {} failed; submissions accepted at {:.1}/s)",
        r.jobs_per_s,
        r.latency_ms.len(),
        r.failed,
        r.submit_per_s
    );
    println!("submit→final    {}", pcts(&r.latency_ms));
    for step in ["queue", "storage", "database", "instance", "health", "total"] {
        if let Some(v) = r.steps.get(step) {
            println!("step {step:<10} {}  (from events' result.timings)", pcts(v));
        }
    }
    let mem: Vec<String> = r.memory.iter().map(|(n, k)| format!("{n} {:.1} MB", *k as f64 / 1024.0)).collect();
    println!("peak memory     {}", mem.join(", "));
    let [api, workers, rabbit, pg, secs] = r.cpu;
    println!(
        "cpu seconds     api {api:.1}, workers {workers:.1}, rabbitmq {rabbit:.1}, postgresql {pg:.1} \
         (in {secs:.1} s on {} cores; ms of cpu per job: {:.2})",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        (api + workers + rabbit + pg) * 1e3 / r.latency_ms.len().max(1) as f64
    );
    if let Some((requests, batches)) = r.lock_session {
        println!(
            "lock sessions   {requests} requests of runs in {batches} round trips ({:.1} per statement)",
            requests as f64 / batches.max(1) as f64
        );
    }
    let (empty, after) = r.registry;
    let jobs = after.jobs.max(1) as f64;
    println!(
        "registry size   {:.0} bytes per job ({} jobs, {} instances: all tables {:.1} MB over the empty schema's {:.1} MB; \
         jobs {:.0} B per job, instances {:.0} B per instance, with indexes)",
        after.all.saturating_sub(empty.all) as f64 / jobs,
        after.jobs,
        after.instances,
        after.all.saturating_sub(empty.all) as f64 / 1e6,
        empty.all as f64 / 1e6,
        after.jobs_bytes.saturating_sub(empty.jobs_bytes) as f64 / jobs,
        after.instances_bytes.saturating_sub(empty.instances_bytes) as f64 / after.instances.max(1) as f64,
    );
    let _ = args;
}

async fn reference_raw(args: &Args, rows: &[Row]) -> Result<()> {
    // Its own vhost, like the system runs, so nothing else shares the queue.
    let spec = system::Spec {
        workers: 0,
        worker_concurrency: None,
        log: "warn".into(),
        bin_dir: args.bin_dir.clone(),
        config: args.config.clone(),
    };
    let sys = system::System::start(&spec).await?;
    let raw = raw::run(&sys.amqp_url, args.jobs, args.concurrency).await?;
    drop(sys);
    let per_s = args.jobs as f64 / raw.elapsed.as_secs_f64();
    let lat = sorted_ms(raw.latencies);
    println!("== reference: raw RabbitMQ (confirmed persistent publish → quorum queue → consume + ack) ==");
    println!("throughput      {per_s:>8.1} msgs/s");
    println!("publish→consume {}", pcts(&lat));
    for r in rows {
        println!(
            "ratio ({} worker(s)): throughput {:.2} of raw, p50 latency {:.1}× raw",
            r.workers,
            r.jobs_per_s / per_s,
            quantile(&r.latency_ms, 0.5) / quantile(&lat, 0.5)
        );
    }
    Ok(())
}

fn reference_baseline(args: &Args, rows: &[Row]) -> Result<()> {
    let script = PathBuf::from("bench/baseline.sh");
    let out = Command::new(&script)
        .args([args.jobs.to_string(), args.concurrency.to_string()])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut per_instance: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut elapsed_ms = f64::NAN;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("instance") => {
                let _name = f.next();
                let rest: Vec<&str> = f.collect();
                for kv in rest.chunks(2) {
                    if let [k, v] = kv {
                        if let Ok(v) = v.parse::<f64>() {
                            per_instance.entry(k.trim_end_matches("-ms")).or_default().push(v);
                        }
                    }
                }
            }
            Some("elapsed-ms") => elapsed_ms = f.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
            _ => {}
        }
    }
    let per_s = args.jobs as f64 / (elapsed_ms / 1e3);
    println!("== reference: bench/baseline.sh (docker volume create, psql CREATE ROLE/DATABASE, docker run, curl) ==");
    println!("throughput      {per_s:>8.2} instances/s  ({} at a time)", args.concurrency);
    let mut sum_p50 = 0.0;
    for (step, v) in &per_instance {
        let v = sorted(v.clone());
        println!("step {step:<10} {}", pcts(&v));
        if *step != "total" && *step != "health" {
            sum_p50 += quantile(&v, 0.5);
        }
    }
    for r in rows {
        println!(
            "ratio ({} worker(s)): throughput {:.2}× baseline; submit→provisioned p50 {:.2}× the baseline's raw operations (p50 sum {:.0} ms)",
            r.workers,
            r.jobs_per_s / per_s,
            quantile(&r.latency_ms, 0.5) / sum_p50,
            sum_p50
        );
    }
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default()
}
