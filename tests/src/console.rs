//! Support for the console's tests: clients with other rights, a reader of
//! `GET /api/v1/events/stream`, and the browser test's tools (Debian's chromium, node and
//! playwright-core of `deploy/setup-console.sh`), whose absence fails with that command named.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::repo_root;

/// The command that installs chromium, node and playwright-core.
pub const SETUP_CONSOLE: &str = "deploy/setup-console.sh";

/// The browser the tests drive.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// An `[[api.clients]]` entry admitting `token` as client `id`, with `rights` (TOML lines such
/// as `scopes = ["read"]`), for `Options::extra_config`.
pub fn client_entry(id: &str, token: &str, rights: &str) -> String {
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    format!("\n[[api.clients]]\nid = \"{id}\"\ntoken-sha256 = \"{digest}\"\n{rights}\n")
}

/// The directory of the browser tests, with playwright-core installed; fails naming
/// [`SETUP_CONSOLE`] when chromium, node or playwright-core is missing.
pub fn browser_tests_dir() -> Result<PathBuf> {
    let dir = repo_root().join("deploy/console-tests");
    if !Path::new(CHROMIUM).exists() {
        bail!("Debian's chromium ({CHROMIUM}) is missing: run `{SETUP_CONSOLE}` (deploy/setup.sh runs it) first");
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        bail!("node is missing: run `{SETUP_CONSOLE}` (deploy/setup.sh runs it) first");
    }
    if !dir.join("node_modules/playwright-core/package.json").exists() {
        bail!("playwright-core is not installed in {}: run `{SETUP_CONSOLE}` first", dir.display());
    }
    Ok(dir)
}

/// An SSE event as read off the stream: its `event` name (`message` when it has none), `id`
/// and `data` (as JSON where it is JSON).
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// `event:`.
    pub name: String,
    /// `id:`.
    pub id: Option<String>,
    /// `data:`, parsed.
    pub data: Value,
}

/// A reader of `GET /api/v1/events/stream`, collecting what it receives in the background.
pub struct EventStream {
    events: Arc<Mutex<Vec<SseEvent>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl EventStream {
    /// Opens the stream at `api_url` with `token` and `pattern`, and waits for its `ready`.
    pub async fn open(api_url: &str, token: &str, pattern: &str) -> Result<EventStream> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        let mut response = http
            .get(format!("{api_url}/api/v1/events/stream"))
            .query(&[("pattern", pattern)])
            .bearer_auth(token)
            .send()
            .await?;
        if response.status() != 200 {
            bail!("the stream answered {}: {}", response.status(), response.text().await.unwrap_or_default());
        }
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !content_type.starts_with("text/event-stream") {
            bail!("the stream is {content_type}, not text/event-stream");
        }
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let reader = tokio::spawn(async move {
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk).replace('\r', ""));
                while let Some(cut) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..cut + 2).collect();
                    if let Some(event) = parse(&block) {
                        sink.lock().map(|mut e| e.push(event)).ok();
                    }
                }
            }
        });
        let stream = EventStream { events, reader };
        stream.wait_for(|e| e.name == "ready", Duration::from_secs(10)).await.context("waiting for `ready`")?;
        Ok(stream)
    }

    /// Everything received so far.
    pub fn all(&self) -> Vec<SseEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The events (not `ready`) of a job.
    pub fn of_job(&self, job_id: &str) -> Vec<SseEvent> {
        self.all().into_iter().filter(|e| e.data["job-id"] == job_id).collect()
    }

    /// Waits until an event received passes `check`; returns it.
    pub async fn wait_for(&self, check: impl Fn(&SseEvent) -> bool, timeout: Duration) -> Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.all().into_iter().find(|e| check(e)) {
                return Ok(e);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("not received within {timeout:?}; received: {:?}", self.all());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // Ends the request: the api closes the stream's channel and its queue goes.
        self.reader.abort();
    }
}

fn parse(block: &str) -> Option<SseEvent> {
    let (mut name, mut id, mut data) = (None, None, Vec::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
        }
    }
    if name.is_none() && data.is_empty() {
        return None; // a keep-alive comment
    }
    let text = data.join("\n");
    let data = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Some(SseEvent { name: name.unwrap_or_else(|| "message".to_owned()), id, data })
}
