//! The load: N provision jobs submitted with C in flight, through REST or onto `dfe.jobs`,
//! timed from the start of each submission to its final event on `dfe.events`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dfe_shared::broker::Publisher;
use dfe_shared::job::JobKind;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// How jobs are submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// `POST /api/v1/ops/provision`.
    Api,
    /// Published onto `dfe.jobs` with confirms.
    Queue,
}

/// What one job measured.
#[derive(Debug, Clone)]
pub struct JobTiming {
    /// Submission start to final event received.
    pub latency: Duration,
    /// Whether the final event was a success.
    pub succeeded: bool,
    /// `result.timings` of the final event (milliseconds by step).
    pub steps: HashMap<String, f64>,
}

/// What a load run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// First submission to last final event.
    pub elapsed: Duration,
    /// Per job.
    pub jobs: Vec<JobTiming>,
    /// First submission to last 202/confirm.
    pub submit_elapsed: Duration,
}

/// Final events of provisions, by job id: the time they arrived and their body.
type Finals = Arc<Mutex<HashMap<String, (Instant, Value)>>>;

/// Subscribes to the final events of provisions (bound before it returns).
async fn subscribe(amqp_url: &str) -> Result<(Finals, Arc<tokio::sync::Notify>)> {
    let conn = dfe_shared::broker::connect(amqp_url, "dfe-bench events").await?;
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    for key in ["dfe.provisioned", "dfe.provision.failed"] {
        ch.queue_bind(
            q.name().clone(),
            "dfe.events".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            "dfe-bench".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let finals: Finals = Arc::default();
    let notify = Arc::new(tokio::sync::Notify::new());
    let (f, n) = (finals.clone(), notify.clone());
    tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(d)) = consumer.next().await {
            let at = Instant::now();
            let Ok(event) = serde_json::from_slice::<Value>(&d.data) else { continue };
            let Some(job) = event["job-id"].as_str().map(str::to_owned) else { continue };
            if let Ok(mut m) = f.lock() {
                // At-least-once: the first copy counts.
                m.entry(job).or_insert((at, event));
            }
            n.notify_one();
        }
    });
    Ok((finals, notify))
}

/// What to submit and how.
#[derive(Debug, Clone, Copy)]
pub struct Load<'a> {
    /// REST or the queue.
    pub via: Via,
    /// Guest location (`noop`, `docker`).
    pub guest: &'a str,
    /// Instance ids are `<prefix>-<i>`.
    pub prefix: &'a str,
    /// Jobs.
    pub n: usize,
    /// Submissions in flight.
    pub concurrency: usize,
    /// Closed loop: each job is submitted only after the previous one's final event (one
    /// job in the system at a time: the latency of a single provision).
    pub sequential: bool,
    /// Open loop: submission `i` starts at `i / rate` seconds (the latency at a given load,
    /// rather than at saturation).
    pub rate: Option<f64>,
    /// How long to wait for all final events.
    pub timeout: Duration,
}

/// Submits the provisions and waits for all their final events.
pub async fn run(system: &crate::system::System, load: Load<'_>) -> Result<LoadResult> {
    let Load { via, guest, prefix, n, concurrency, sequential, rate, timeout } = load;
    let (finals, notify) = subscribe(&system.amqp_url).await?;
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(concurrency).build()?;
    let conn = dfe_shared::broker::connect(&system.amqp_url, "dfe-bench submit").await?;
    let publisher = Publisher::open(&conn).await?;
    let slots = Arc::new(Semaphore::new(concurrency));
    let submitted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        if let Some(rate) = rate {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        }
        let permit = slots.clone().acquire_owned().await?;
        let job_id = uuid::Uuid::new_v4().to_string();
        let this_job = job_id.clone();
        let body = json!({
            "job-id": job_id, "owner-id": 1, "instance-id": format!("{prefix}-{i}"), "guest-location": guest,
        });
        let (http, publisher, submitted) = (http.clone(), publisher.clone(), submitted.clone());
        let (url, token) = (format!("{}/api/v1/ops/provision", system.api_url), system.token.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            if let Ok(mut s) = submitted.lock() {
                s.insert(job_id.clone(), Instant::now());
            }
            match via {
                Via::Api => {
                    let resp = http.post(url).bearer_auth(token).json(&body).send().await?;
                    let status = resp.status();
                    if status.as_u16() != 202 {
                        bail!("POST provision answered {status}: {}", resp.text().await.unwrap_or_default());
                    }
                }
                Via::Queue => {
                    let bytes = serde_json::to_vec(&body)?;
                    publisher.publish_job(JobKind::Provision, &job_id, &bytes, "dfe-bench", None).await?;
                }
            }
            anyhow::Ok(())
        }));
        if sequential {
            if let Some(t) = tasks.pop() {
                t.await.context("a submission task panicked")??;
            }
            let deadline = tokio::time::Instant::now() + timeout;
            while !finals.lock().map(|m| m.contains_key(&this_job)).unwrap_or(false) {
                if tokio::time::Instant::now() > deadline {
                    bail!("job {this_job} had no final event within {timeout:?}");
                }
                let _ = tokio::time::timeout(Duration::from_millis(20), notify.notified()).await;
            }
        }
    }
    for t in tasks {
        t.await.context("a submission task panicked")??;
    }
    let submit_elapsed = start.elapsed();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = finals.lock().map(|m| m.len()).unwrap_or(0);
        if got >= n {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("only {got} of {n} final events within {timeout:?}; logs in {}", system.dir.display());
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), notify.notified()).await;
    }
    let finals = finals.lock().map(|m| m.clone()).unwrap_or_default();
    let submitted = submitted.lock().map(|m| m.clone()).unwrap_or_default();
    let _ = conn.close(200, "done".into()).await;
    let last = finals.values().map(|(at, _)| *at).max().unwrap_or(start);
    let mut jobs = Vec::with_capacity(n);
    for (job, (at, event)) in &finals {
        let Some(sent) = submitted.get(job) else { continue };
        let steps = event["result"]["timings"]
            .as_object()
            .map(|o| o.iter().filter_map(|(k, v)| Some((k.trim_end_matches("-ms").to_owned(), v.as_f64()?))).collect())
            .unwrap_or_default();
        jobs.push(JobTiming {
            latency: at.saturating_duration_since(*sent),
            succeeded: event["event"] == "dfe.provisioned",
            steps,
        });
    }
    Ok(LoadResult { elapsed: last.duration_since(start), jobs, submit_elapsed })
}
