//! The client of the snapshot destinations (feature `store`, for the api and the worker):
//! the default directory and the named destinations of `[snapshots]`, each a local
//! directory or a bucket of an S3-compatible server (through `object_store`).
//!
//! Archives stream both ways, so no archive is ever held in memory:
//! - [`Store::upload`] hands a blocking writer ([`UploadSink`], a `std::io::Write` for the
//!   thread that builds the archive) and a task that takes its bytes in chunks: into a
//!   temporary file renamed into place (local), or a multipart upload whose parts go out
//!   while the archive is still being written (S3). Only a complete upload makes an object
//!   under the snapshot's name; a failed or abandoned one is aborted, leaving none.
//! - [`Store::open`] streams an archive back (for the API's download and the import).
//!
//! Credentials live in [`crate::secret::Secret`]s and are handed to the S3 client only.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use futures::FutureExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::{DestinationKind, SnapshotDestination, SnapshotsConfig};
use crate::snapshot_store::{archive_name, object_key};
use crate::{Error, Result};

/// Bytes the archive writer hands over at a time.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the writer and the upload (memory: `CHUNKS × CHUNK`).
const CHUNKS: usize = 4;
/// Default part of a multipart upload.
const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once (memory: about `PARTS × part size`).
const PARTS: usize = 3;

/// Every destination of the configuration, by name (`default` is `snapshots.path`).
#[derive(Clone)]
pub struct Stores {
    stores: Arc<BTreeMap<String, Arc<Store>>>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.stores.keys()).finish()
    }
}

impl Stores {
    /// The destinations of `cfg`, with their clients (nothing is contacted yet).
    pub fn from_config(cfg: &SnapshotsConfig) -> Result<Stores> {
        // reqwest's rustls takes the process's provider: ring, like the rest of the tree.
        // Another one installed first (nothing here does) would do as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut stores = BTreeMap::new();
        stores.insert("default".to_owned(), Arc::new(Store::build("default", &SnapshotDestination::local(&cfg.path))?));
        for (name, d) in &cfg.destinations {
            stores.insert(name.clone(), Arc::new(Store::build(name, d)?));
        }
        Ok(Stores { stores: Arc::new(stores) })
    }

    /// The destination `name` (`None` or `default`: the default store).
    pub fn get(&self, name: Option<&str>) -> Option<&Arc<Store>> {
        self.stores.get(name.unwrap_or("default"))
    }

    /// Every destination, the default first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Store>> {
        let default = self.stores.get("default");
        default.into_iter().chain(self.stores.iter().filter(|(k, _)| *k != "default").map(|(_, v)| v))
    }
}

enum Backend {
    Local(PathBuf),
    S3 { client: Arc<dyn ObjectStore>, bucket: String, prefix: String, part_size: usize },
}

/// One destination.
pub struct Store {
    name: String,
    backend: Backend,
    recipients: Vec<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("name", &self.name).field("remote", &self.is_remote()).finish()
    }
}

/// An archive being read back.
pub struct Download {
    /// Its size in bytes.
    pub size: u64,
    /// Its bytes.
    pub stream: BoxStream<'static, io::Result<Bytes>>,
}

impl Store {
    fn build(name: &str, d: &SnapshotDestination) -> Result<Store> {
        let backend = match d.kind {
            DestinationKind::Local => {
                let path = d.path.clone().ok_or_else(|| {
                    Error::Config(format!("snapshots.destinations.{name}: kind = \"local\" needs `path`"))
                })?;
                Backend::Local(path)
            }
            DestinationKind::S3 => {
                let bucket = d.bucket.clone().unwrap_or_default();
                let mut b = match (&d.access_key_id, &d.secret_access_key) {
                    (Some(id), Some(secret)) => {
                        AmazonS3Builder::new().with_access_key_id(id.expose()).with_secret_access_key(secret.expose())
                    }
                    // The environment's AWS_* credentials or the instance's role.
                    _ => AmazonS3Builder::from_env(),
                };
                b = b
                    .with_bucket_name(&bucket)
                    .with_region(d.region.clone().unwrap_or_else(|| "us-east-1".into()))
                    .with_virtual_hosted_style_request(d.virtual_hosted_style)
                    // A dead server fails a request within seconds, and the job's own retries
                    // (with their backoff, through the retry queues) take it from there.
                    .with_retry(RetryConfig {
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(20),
                        ..Default::default()
                    })
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(5))
                            .with_timeout(Duration::from_secs(120))
                            .with_allow_http(d.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))),
                    );
                if let Some(e) = &d.endpoint {
                    b = b.with_endpoint(e.trim_end_matches('/'));
                }
                let client = b.build().map_err(|e| Error::Config(format!("snapshots.destinations.{name}: {e}")))?;
                Backend::S3 {
                    client: Arc::new(client),
                    bucket,
                    prefix: d.prefix().to_owned(),
                    part_size: d.part_size.unwrap_or(PART_SIZE),
                }
            }
        };
        Ok(Store { name: name.to_owned(), backend, recipients: d.encrypt_to.clone() })
    }

    /// The destination's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is an S3-compatible bucket rather than a directory of this host.
    pub fn is_remote(&self) -> bool {
        matches!(self.backend, Backend::S3 { .. })
    }

    /// The directory of a local destination.
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Local(dir) => Some(dir),
            Backend::S3 { .. } => None,
        }
    }

    /// The age recipients its archives are encrypted to (none: plain).
    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }

    /// The key of snapshot `id` here: its file name in a directory, or
    /// `<prefix>/<id>.snapshot.tar.gz` in a bucket; `.age` appended when encrypted.
    pub fn key(&self, id: &str, encrypted: bool) -> String {
        match &self.backend {
            Backend::Local(_) => archive_name(id, encrypted),
            Backend::S3 { prefix, .. } => object_key(prefix, id, encrypted),
        }
    }

    /// Where `key` is, for the registry and the logs: a path, or `s3://<bucket>/<key>`.
    pub fn location(&self, key: &str) -> String {
        match &self.backend {
            Backend::Local(dir) => dir.join(key).display().to_string(),
            Backend::S3 { bucket, .. } => format!("s3://{bucket}/{key}"),
        }
    }

    fn err(&self, context: impl Into<String>, source: object_store::Error) -> Error {
        if let object_store::Error::NotFound { path, .. } = &source {
            return Error::StoreNotFound { destination: self.name.clone(), key: path.clone() };
        }
        let transient = !matches!(
            source,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
                | object_store::Error::InvalidPath { .. }
                | object_store::Error::NotSupported { .. }
                | object_store::Error::NotImplemented { .. }
                | object_store::Error::UnknownConfigurationKey { .. }
        );
        Error::Store { context: format!("{}: {}", self.name, context.into()), transient, source: Box::new(source) }
    }

    fn io_err(&self, context: impl Into<String>) -> impl FnOnce(io::Error) -> Error + '_ {
        let context = context.into();
        move |source| Error::Store {
            context: format!("{}: {context}", self.name),
            transient: false,
            source: Box::new(source),
        }
    }

    /// Starts writing the archive `key`: the sink takes its bytes on a blocking thread, the
    /// task carries them to the destination and must be awaited for the outcome. The
    /// archive exists under `key` only once the sink has [`UploadSink::end`]ed and the
    /// task has succeeded.
    pub async fn upload(self: &Arc<Self>, key: &str) -> Result<(UploadSink, UploadTask)> {
        let (tx, rx) = mpsc::channel::<Chunk>(CHUNKS);
        let store = self.clone();
        let key = key.to_owned();
        let task = match &self.backend {
            Backend::Local(dir) => {
                let tmp = tempfile::Builder::new()
                    .prefix(&format!(".{key}."))
                    .suffix(".partial")
                    .tempfile_in(dir)
                    .map_err(self.io_err(format!("creating a temporary archive in {}", dir.display())))?;
                tokio::spawn(async move { store.receive_local(tmp, &key, rx).await })
            }
            Backend::S3 { client, part_size, .. } => {
                let location = ObjectPath::from(key.as_str());
                let upload = client
                    .put_multipart(&location)
                    .await
                    .map_err(|e| self.err(format!("starting the upload of {key}"), e))?;
                let writer = WriteMultipart::new_with_chunk_size(upload, *part_size);
                tokio::spawn(async move { store.receive_s3(writer, &key, rx).await })
            }
        };
        Ok((UploadSink { tx: Some(tx), buf: BytesMut::with_capacity(CHUNK) }, UploadTask { task }))
    }

    async fn receive_local(
        &self,
        tmp: tempfile::NamedTempFile,
        key: &str,
        mut rx: mpsc::Receiver<Chunk>,
    ) -> Result<u64> {
        let (file, path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut size = 0u64;
        let context = || format!("writing {}", path.display());
        loop {
            match rx.recv().await {
                Some(Chunk::Data(bytes)) => {
                    size += bytes.len() as u64;
                    file.write_all(&bytes).await.map_err(self.io_err(context()))?;
                }
                Some(Chunk::End) => break,
                // The writer gave up: the temporary file goes with `path`.
                None => return Err(self.abandoned(key)),
            }
        }
        file.flush().await.map_err(self.io_err(context()))?;
        file.sync_all().await.map_err(self.io_err(context()))?;
        let Backend::Local(dir) = &self.backend else { unreachable!("a local upload of a local store") };
        let target = dir.join(key);
        path.persist(&target)
            .map_err(|e| self.io_err(format!("moving the archive to {}", target.display()))(e.error))?;
        Ok(size)
    }

    async fn receive_s3(&self, mut writer: WriteMultipart, key: &str, mut rx: mpsc::Receiver<Chunk>) -> Result<u64> {
        let mut size = 0u64;
        let received: Result<()> = async {
            while let Some(chunk) = rx.recv().await {
                match chunk {
                    Chunk::Data(bytes) => {
                        size += bytes.len() as u64;
                        let failed = |e| self.err(format!("uploading a part of {key}"), e);
                        // A part that failed is noticed now, not once the next parts are full.
                        if let Some(Err(e)) = writer.wait_for_capacity(1).now_or_never() {
                            return Err(failed(e));
                        }
                        // At most PARTS parts in flight: the writer waits, memory stays bounded.
                        writer.wait_for_capacity(PARTS).await.map_err(failed)?;
                        writer.put(bytes);
                    }
                    Chunk::End => return Ok(()),
                }
            }
            Err(self.abandoned(key))
        }
        .await;
        if let Err(e) = received {
            // The writer learns at its next chunk that the upload is over.
            drop(rx);
            if let Err(a) = writer.abort().await {
                tracing::warn!(destination = %self.name, key, error = %a, "aborting a failed multipart upload failed; the server drops its parts by its own rules");
            }
            return Err(e);
        }
        // `finish` aborts the upload itself when a part or the completion fails.
        writer.finish().await.map_err(|e| self.err(format!("completing the upload of {key}"), e))?;
        Ok(size)
    }

    fn abandoned(&self, key: &str) -> Error {
        Error::Store {
            context: format!("{}: the archive writer stopped before the end of {key}", self.name),
            transient: false,
            source: Box::new(io::Error::other("abandoned")),
        }
    }

    /// Streams the archive `key` back.
    pub async fn open(&self, key: &str) -> Result<Download> {
        match &self.backend {
            Backend::Local(dir) => {
                let path = dir.join(key);
                let file = match tokio::fs::File::open(&path).await {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(Error::StoreNotFound { destination: self.name.clone(), key: key.to_owned() })
                    }
                    Err(e) => return Err(self.io_err(format!("opening {}", path.display()))(e)),
                };
                let size = file.metadata().await.map_err(self.io_err(format!("reading {}", path.display())))?.len();
                Ok(Download { size, stream: tokio_util::io::ReaderStream::new(file).boxed() })
            }
            Backend::S3 { client, .. } => {
                let got =
                    client.get(&ObjectPath::from(key)).await.map_err(|e| self.err(format!("reading {key}"), e))?;
                let size = got.meta.size;
                let stream = got.into_stream().map_err(io::Error::other).boxed();
                Ok(Download { size, stream })
            }
        }
    }

    /// The size of the archive `key`, `None` when there is none.
    pub async fn size(&self, key: &str) -> Result<Option<u64>> {
        match &self.backend {
            Backend::Local(dir) => match tokio::fs::metadata(dir.join(key)).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.io_err(format!("reading {key}"))(e)),
            },
            Backend::S3 { client, .. } => match client.head(&ObjectPath::from(key)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err(format!("looking up {key}"), e)),
            },
        }
    }

    /// Removes the archive `key`; one that is not there is removed already.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match &self.backend {
            Backend::Local(dir) => match tokio::fs::remove_file(dir.join(key)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.io_err(format!("removing {key}"))(e)),
            },
            Backend::S3 { client, .. } => match client.delete(&ObjectPath::from(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.err(format!("removing {key}"), e)),
            },
        }
    }
}

enum Chunk {
    Data(Bytes),
    End,
}

/// The blocking end of an upload: a `std::io::Write` for the thread that builds the archive
/// (it must not run on the async runtime: it waits for the upload to take each chunk).
pub struct UploadSink {
    tx: Option<mpsc::Sender<Chunk>>,
    buf: BytesMut,
}

impl UploadSink {
    fn send(&mut self, chunk: Chunk) -> io::Result<()> {
        let stopped = || io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped");
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        // The upload task dropped its end: it failed, and says why when awaited.
        tx.blocking_send(chunk).map_err(|_| stopped())
    }

    /// Hands over what is buffered and marks the end: the upload completes.
    pub fn end(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let data = self.buf.split().freeze();
            self.send(Chunk::Data(data))?;
        }
        self.send(Chunk::End)?;
        self.tx = None;
        Ok(())
    }
}

impl Write for UploadSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            let full = self.buf.split().freeze();
            self.send(Chunk::Data(full))?;
            self.buf.reserve(CHUNK);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Bytes leave in whole chunks; `end` hands over the last one.
        Ok(())
    }
}

/// The async end of an upload. Dropped before it ends (the job timed out), it stops the
/// upload: a temporary file is removed, a multipart upload left unfinished (never an object).
pub struct UploadTask {
    task: tokio::task::JoinHandle<Result<u64>>,
}

impl Drop for UploadTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UploadTask {
    /// Waits for the upload to complete (the sink ended) or fail (the sink dropped, the
    /// destination refused); returns the bytes stored.
    pub async fn wait(mut self) -> Result<u64> {
        (&mut self.task).await.map_err(|e| Error::Store {
            context: "the upload task failed".into(),
            transient: false,
            source: Box::new(e),
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn write_through(store: &Arc<Store>, key: &str, parts: Vec<Vec<u8>>, end: bool) -> Result<u64> {
        let (mut sink, task) = store.upload(key).await?;
        let writer = tokio::task::spawn_blocking(move || -> io::Result<()> {
            for p in parts {
                sink.write_all(&p)?;
            }
            if end {
                sink.end()?;
            }
            Ok(())
        });
        let size = task.wait().await;
        writer.await.expect("join").expect("writes");
        size
    }

    #[tokio::test]
    async fn a_local_upload_appears_only_once_ended_and_streams_back() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = SnapshotsConfig { path: dir.path().to_path_buf(), ..Default::default() };
        let stores = Stores::from_config(&cfg).expect("stores");
        let store = stores.get(None).expect("default").clone();
        let big = vec![7u8; 3 * CHUNK + 17];
        let size = write_through(&store, "s-1.snapshot.tar.gz", vec![b"abc".to_vec(), big.clone()], true).await;
        assert_eq!(size.expect("uploaded"), 3 + big.len() as u64);
        let got = store.open("s-1.snapshot.tar.gz").await.expect("open");
        assert_eq!(got.size, 3 + big.len() as u64);
        let bytes: Vec<Bytes> = got.stream.try_collect().await.expect("read");
        assert_eq!(bytes.concat().len(), 3 + big.len());

        // An upload whose writer stops before the end leaves nothing, not even a temporary file.
        let e = write_through(&store, "s-2.snapshot.tar.gz", vec![big], false).await.expect_err("abandoned");
        assert!(e.to_string().contains("stopped before the end"), "{e}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["s-1.snapshot.tar.gz"]);
        assert!(matches!(store.open("s-2.snapshot.tar.gz").await, Err(Error::StoreNotFound { .. })));
        store.delete("s-1.snapshot.tar.gz").await.expect("delete");
        store.delete("s-1.snapshot.tar.gz").await.expect("deleting what is gone is fine");
        assert_eq!(store.size("s-1.snapshot.tar.gz").await.expect("size"), None);
    }
}
