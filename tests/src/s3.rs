//! The S3-compatible server of the snapshot tests: moto's server mode, started by
//! `deploy/setup.sh` (`deploy/setup-s3.sh`) on 127.0.0.1:9000 and shared by the tests, each
//! in a bucket of its own; or a private instance on a free port for a test that stops it
//! ([`S3Server`]). moto checks no credentials, so the tests read buckets with plain HTTP.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{random_hex, SETUP};

/// The shared server's endpoint.
pub const ENDPOINT: &str = "http://127.0.0.1:9000";
/// moto's server, as `deploy/setup-s3.sh` installs it.
pub const MOTO: &str = "/opt/dfe/s3-venv/bin/moto_server";
/// The access key id the tests configure (moto takes any).
pub const ACCESS_KEY_ID: &str = "dfe-test";
/// The secret access key the tests hand over in `DFE__…` variables (moto takes any).
pub const SECRET_ACCESS_KEY: &str = "dfe-test-secret-never-logged";

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap_or_default()
}

/// Fails, naming the setup command, when no S3 server answers at `endpoint`.
pub async fn preflight(endpoint: &str) -> Result<()> {
    match http().get(format!("{endpoint}/")).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => bail!("the S3 server at {endpoint} answers {}: run `{SETUP}` (deploy/setup-s3.sh)", r.status()),
        Err(e) => {
            bail!("no S3 server answers at {endpoint} ({e}): run `{SETUP}` (it starts one with deploy/setup-s3.sh)")
        }
    }
}

/// Makes a fresh bucket `dfe-test-<stem>-<random>` on the server at `endpoint`; its name.
pub async fn bucket(endpoint: &str, stem: &str) -> Result<String> {
    preflight(endpoint).await?;
    let name = format!("dfe-test-{stem}-{}", random_hex(8));
    create_bucket(endpoint, &name).await?;
    Ok(name)
}

/// Creates bucket `name` (again, after a restart of a private server).
pub async fn create_bucket(endpoint: &str, name: &str) -> Result<()> {
    let r = http().put(format!("{endpoint}/{name}")).send().await.context("creating a bucket")?;
    if !r.status().is_success() {
        bail!("creating bucket {name} at {endpoint}: {} {}", r.status(), r.text().await.unwrap_or_default());
    }
    Ok(())
}

/// The objects of `bucket` (key and size), in key order.
pub async fn objects(endpoint: &str, bucket: &str) -> Result<Vec<(String, u64)>> {
    let r = http().get(format!("{endpoint}/{bucket}?list-type=2")).send().await.context("listing a bucket")?;
    let text = r.text().await?;
    let mut out = Vec::new();
    for contents in text.split("<Contents>").skip(1) {
        let field = |tag: &str| -> Option<String> {
            let start = contents.find(&format!("<{tag}>"))? + tag.len() + 2;
            let end = contents[start..].find(&format!("</{tag}>"))? + start;
            Some(contents[start..end].to_owned())
        };
        let key = field("Key").context("an object without a key")?;
        let size = field("Size").and_then(|s| s.parse().ok()).unwrap_or_default();
        out.push((key, size));
    }
    out.sort();
    Ok(out)
}

/// The raw bytes of object `key` of `bucket`.
pub async fn object(endpoint: &str, bucket: &str, key: &str) -> Result<Vec<u8>> {
    let r = http().get(format!("{endpoint}/{bucket}/{key}")).send().await.context("reading an object")?;
    if !r.status().is_success() {
        bail!("reading {bucket}/{key}: {}", r.status());
    }
    Ok(r.bytes().await?.to_vec())
}

/// TOML of an S3 destination `name` on `endpoint`/`bucket` under `prefix`, encrypted to
/// `encrypt_to` when given. The secret access key is not in it: hand it over as
/// [`secret_env`].
pub fn destination(name: &str, endpoint: &str, bucket: &str, prefix: &str, encrypt_to: Option<&str>) -> String {
    let encrypt = encrypt_to.map(|r| format!("encrypt-to = [\"{r}\"]\n")).unwrap_or_default();
    format!(
        "\n[snapshots.destinations.{name}]\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\n\
         region = \"us-east-1\"\nprefix = \"{prefix}\"\naccess-key-id = \"{ACCESS_KEY_ID}\"\n{encrypt}"
    )
}

/// The `DFE__…` variable that hands destination `name` its secret access key.
pub fn secret_env(name: &str) -> (String, String) {
    (format!("DFE__SNAPSHOTS__DESTINATIONS__{}__SECRET_ACCESS_KEY", name.to_uppercase()), SECRET_ACCESS_KEY.to_owned())
}

/// A private moto server on a free loopback port, for a test that stops and restarts it.
/// It keeps objects in memory: a restart empties it. Stopped when dropped.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    port: u16,
    child: Option<Child>,
}

impl S3Server {
    /// Starts one and waits until it answers.
    pub async fn start() -> Result<S3Server> {
        if !std::path::Path::new(MOTO).exists() {
            bail!("{MOTO} is missing: run `{SETUP}` (deploy/setup-s3.sh installs moto)");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = S3Server { endpoint: format!("http://127.0.0.1:{port}"), port, child: None };
        server.restart().await?;
        Ok(server)
    }

    /// Stops it (SIGKILL: a server that dies, not one that says goodbye).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty) and waits until it answers.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        let child = Command::new(MOTO)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {MOTO}"))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while preflight(&self.endpoint).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                bail!("the private moto server on port {} did not answer within 30 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
