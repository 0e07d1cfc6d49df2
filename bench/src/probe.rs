//! What a full registry costs the reads (`--probe`): the first page of each list endpoint,
//! the last page reached by following cursors, `dfe instances`, and one reconciliation pass
//! of the workers against the engines and database servers. Run after the measured load,
//! with whatever `--fill` and the load left in the registry.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::stats::{pcts, sorted_ms};
use crate::system::System;

/// How often each read is timed.
const REPEAT: usize = 10;

/// Times the reads and prints them.
pub async fn run(sys: &System, bin_dir: &Path) -> Result<()> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{}{path}", sys.api_url);
        let token = sys.token.clone();
        async move {
            let t = Instant::now();
            let resp = http.get(&url).bearer_auth(&token).send().await?;
            let status = resp.status();
            let body: Value = resp.json().await?;
            if !status.is_success() {
                bail!("GET {url}: {status} {body}");
            }
            Ok::<_, anyhow::Error>((t.elapsed(), body))
        }
    };
    for (what, path) in [
        ("GET /api/v1/instances (first 100)", "/api/v1/instances?limit=100"),
        ("GET /api/v1/instances (first 1000)", "/api/v1/instances?limit=1000"),
        ("GET /api/v1/instances?state=provisioned", "/api/v1/instances?state=provisioned&limit=100"),
        ("GET /api/v1/ops/jobs (first 100)", "/api/v1/ops/jobs?limit=100"),
        ("GET /api/v1/ops/jobs?state=succeeded", "/api/v1/ops/jobs?state=succeeded&limit=100"),
    ] {
        let mut times = Vec::with_capacity(REPEAT);
        for _ in 0..REPEAT {
            times.push(get(path.to_owned()).await?.0);
        }
        println!("{what:<44} {}", pcts(&sorted_ms(times)));
    }

    // Every page of the instances, 100 at a time: the cost of a cursor deep in the table.
    let t = Instant::now();
    let (mut pages, mut rows) = (0usize, 0usize);
    let mut cursor: Option<String> = None;
    let mut last_page;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/instances?limit=100&cursor={c}"),
            None => "/api/v1/instances?limit=100".to_owned(),
        };
        let (took, body) = get(path).await?;
        pages += 1;
        last_page = took;
        rows += body["instances"].as_array().map_or(0, Vec::len);
        match body["next-cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    println!(
        "all instances by cursor, 100 a page        {rows} rows in {pages} pages, {:.0} ms in all, last page {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3,
        last_page.as_secs_f64() * 1e3
    );

    let dfe = bin_dir.join("dfe");
    let mut times = Vec::with_capacity(REPEAT);
    for _ in 0..REPEAT {
        let t = Instant::now();
        let out = Command::new(&dfe)
            .args(["--api-url", &sys.api_url, "instances", "--limit", "100"])
            .env("DFE_TOKEN", &sys.token)
            .output()
            .with_context(|| format!("running {}", dfe.display()))?;
        if !out.status.success() {
            bail!("dfe instances failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        times.push(t.elapsed());
    }
    println!("{:<44} {}", "`dfe instances --limit 100` (process)", pcts(&sorted_ms(times)));

    let (took, report) = reconcile(&http, sys).await?;
    println!(
        "{:<44} {:.0} ms (request → report; found {} orphans, {} missing, {} stuck)",
        "reconciliation pass (fix: false)",
        took.as_secs_f64() * 1e3,
        report["orphans"].as_array().map_or(0, Vec::len),
        report["missing"].as_array().map_or(0, Vec::len),
        report["stuck"].as_array().map_or(0, Vec::len),
    );
    Ok(())
}

/// Asks for a reconciliation and waits for its report: the time from the request to the
/// report, and the report.
async fn reconcile(http: &reqwest::Client, sys: &System) -> Result<(Duration, Value)> {
    let t = Instant::now();
    let resp = http
        .post(format!("{}/api/v1/reconcile", sys.api_url))
        .bearer_auth(&sys.token)
        .json(&serde_json::json!({ "fix": false }))
        .send()
        .await?;
    let status = resp.status();
    let mut body: Value = resp.json().await?;
    if status.as_u16() == 202 {
        let id = body["id"].as_str().context("a 202 without an id")?.to_owned();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            body = http
                .get(format!("{}/api/v1/reconcile/{id}", sys.api_url))
                .bearer_auth(&sys.token)
                .send()
                .await?
                .json()
                .await?;
            if body["state"] != "requested" && body["state"] != "running" {
                break;
            }
            if t.elapsed() > Duration::from_secs(600) {
                bail!("the reconciliation did not finish in 10 minutes");
            }
        }
    } else if !status.is_success() {
        bail!("POST /api/v1/reconcile: {status} {body}");
    }
    if body["state"] != "done" {
        bail!("the reconciliation ended {}: {}", body["state"], body["error"]);
    }
    Ok((t.elapsed(), body["report"].clone()))
}
