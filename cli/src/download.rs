//! `dfe snapshots download`: a snapshot's archive streamed to a file (or standard output),
//! checked against the size and SHA-256 the registry recorded for it.
//!
//! The archive is never held in memory: chunks go to disk as they arrive, hashed on the way.
//! A file is written under a hidden `.part` name beside the target and renamed into place
//! only once complete and verified, so an interrupted, stalled or corrupt download never
//! leaves a file under the snapshot's name.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use dfe_shared::records::SnapshotRecord;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::api::ApiClient;
use crate::args::DownloadArgs;
use crate::error::CliError;
use crate::inspect::{human_size, snapshot_id};
use crate::output::emit_line;
use crate::settings::Settings;

/// How long the download may go without receiving a byte before it counts as stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a progress line on a terminal is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What the registry says the archive must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

impl Expected {
    /// The `size` and `sha256` of a snapshot record; `None` when they cannot be checked
    /// against (a negative size, an empty digest).
    pub fn of_record(record: &SnapshotRecord) -> Option<Expected> {
        let size = u64::try_from(record.size).ok()?;
        let sha256 = record.sha256.trim().to_ascii_lowercase();
        (!sha256.is_empty()).then_some(Expected { size, sha256 })
    }

    /// Why `size` bytes hashing to `sha256` are not this archive; `None` when they are.
    pub fn mismatch(&self, size: u64, sha256: &str) -> Option<String> {
        if size != self.size {
            Some(format!("received {size} bytes, the registry records {}", self.size))
        } else if sha256 != self.sha256 {
            Some(format!("its SHA-256 is {sha256}, the registry records {}", self.sha256))
        } else {
            None
        }
    }
}

/// Where the archive goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Standard output (`-o -`).
    Stdout,
    /// A file.
    File(PathBuf),
}

impl Target {
    /// The target of `-o` for snapshot `id`: a directory gets the archive's own file name in
    /// it; an existing file is refused unless `force`.
    pub fn resolve(output: Option<&Path>, id: &str, force: bool) -> Result<Target, CliError> {
        Target::resolve_named(output, dfe_shared::snapshot_store::file_name(id), force)
    }

    /// [`Target::resolve`] for an archive named `name` (`….tar.gz.age` when encrypted).
    pub fn resolve_named(output: Option<&Path>, name: String, force: bool) -> Result<Target, CliError> {
        let path = match output {
            Some(p) if p == Path::new("-") => return Ok(Target::Stdout),
            Some(p) if p.is_dir() => p.join(name),
            Some(p) => p.to_path_buf(),
            None => PathBuf::from(name),
        };
        if path.exists() && !force {
            return Err(CliError::Usage(format!(
                "{} exists — pass --force to overwrite it, or -o to write elsewhere",
                path.display()
            )));
        }
        Ok(Target::File(path))
    }
}

/// A temporary file beside the target (`tempfile`), removed unless it was moved into place.
struct PartFile {
    path: tempfile::TempPath,
    file: tokio::fs::File,
}

impl PartFile {
    async fn create(target: &Path) -> anyhow::Result<PartFile> {
        let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp =
            tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".part").tempfile_in(dir).with_context(
                || format!("creating a file in {} (is the directory there and writable?)", dir.display()),
            )?;
        let (file, path) = tmp.into_parts();
        Ok(PartFile { path, file: tokio::fs::File::from_std(file) })
    }

    /// Flushes to disk and renames to `target`.
    async fn persist(mut self, target: &Path) -> anyhow::Result<()> {
        self.file.flush().await.with_context(|| format!("writing {}", self.path.display()))?;
        self.file.sync_all().await.with_context(|| format!("writing {}", self.path.display()))?;
        let shown = self.path.display().to_string();
        self.path
            .persist(target)
            .map_err(|e| e.error)
            .with_context(|| format!("moving {shown} to {}", target.display()))?;
        Ok(())
    }
}

/// A byte count redrawn on one terminal line; silent when stderr is not a terminal.
struct Progress {
    on: bool,
    total: Option<u64>,
    last: Instant,
}

impl Progress {
    fn new(total: Option<u64>) -> Self {
        Progress { on: std::io::stderr().is_terminal(), total, last: Instant::now() }
    }

    fn update(&mut self, id: &str, done: u64) {
        if !self.on || self.last.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last = Instant::now();
        let of = match self.total {
            Some(total) if total > 0 => {
                format!(" of {} ({}%)", human_size(total), done.saturating_mul(100) / total)
            }
            _ => String::new(),
        };
        eprint!("\r\x1b[Kdownloading snapshot {id}: {}{of}", human_size(done));
    }

    fn clear(&self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}

/// `dfe snapshots download ID [-o FILE|-|DIR] [--force]`.
pub async fn run(settings: &Settings, args: &DownloadArgs) -> anyhow::Result<()> {
    let id = snapshot_id(&args.snapshot_id)?;
    let id = id.as_str();
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    // The record says what the archive must be. An archive copied into the store by hand has
    // no record; the API still serves it, and it can only be checked against its length.
    let (expected, encrypted) = match api.snapshot(id).await {
        Ok(fetched) => (Expected::of_record(&fetched.record), fetched.record.encrypted),
        Err(e) if matches!(e.downcast_ref::<CliError>(), Some(CliError::Api { status: 404, .. })) => (None, false),
        Err(e) => return Err(e),
    };
    // An encrypted archive keeps its `.age`: it is what `age -d` reads.
    let name = dfe_shared::snapshot_store::archive_name(id, encrypted);
    let target = Target::resolve_named(args.output.as_deref(), name, args.force)?;
    let response = api.download(id).await?;
    if expected.is_none() {
        eprintln!("warning: snapshot {id} has no registry record; its archive cannot be checked against a SHA-256");
    }
    let expected_len = expected.as_ref().map(|e| e.size).or(response.content_length());

    // One Ctrl-C future for the whole download, so the .part file is removed on interrupt.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let copy = async {
        match &target {
            Target::Stdout => {
                let mut out = stdout()?;
                let copied = match copy_body(&api, id, response, &mut out, expected_len).await? {
                    Some(copied) => match out.flush().await {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => None,
                        other => other.map(|()| Some(copied)).context("writing to standard output")?,
                    },
                    None => None,
                };
                Ok::<_, anyhow::Error>((copied, None))
            }
            Target::File(path) => {
                let mut part = PartFile::create(path).await?;
                let copied = copy_body(&api, id, response, &mut part.file, expected_len).await?;
                Ok((copied, Some((part, path))))
            }
        }
    };
    let (copied, part) = tokio::select! {
        copied = copy => copied?,
        _ = &mut ctrl_c => anyhow::bail!("interrupted; the download of snapshot {id} was not saved"),
    };
    let Some((size, sha256)) = copied else {
        // The reader of standard output went away: a normal end for a pipe.
        return Ok(());
    };
    let problem = match &expected {
        Some(e) => e.mismatch(size, &sha256),
        None => expected_len.filter(|&n| n != size).map(|n| format!("received {size} bytes of {n}")),
    };
    if let Some(problem) = problem {
        let kept = if part.is_some() { "nothing was saved" } else { "what was written is not the snapshot" };
        anyhow::bail!(
            "the download of snapshot {id} is incomplete or corrupt: {problem}; {kept} — try again, and if it \
             fails the same way, the archive in the snapshot store is damaged"
        );
    }
    let checked = if expected.is_some() { "SHA-256 verified" } else { "not verified" };
    let summary = format!("{} bytes ({}), sha256 {sha256}, {checked}", size, human_size(size));
    match part {
        Some((part, path)) => {
            part.persist(path).await?;
            emit_line(&format!("saved snapshot {id} to {}: {summary}", path.display()))
        }
        None => {
            eprintln!("wrote snapshot {id} to standard output: {summary}");
            Ok(())
        }
    }
}

/// Standard output as an async file: a duplicate of its descriptor, written from tokio's
/// blocking pool like any file.
fn stdout() -> anyhow::Result<tokio::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout().as_fd().try_clone_to_owned().context("opening standard output")?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(fd)))
}

/// Streams the body into `out`, hashing it; `(size, sha256)`, or `None` when `out` is a pipe
/// whose reader went away.
async fn copy_body(
    api: &ApiClient,
    id: &str,
    mut response: reqwest::Response,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    total: Option<u64>,
) -> anyhow::Result<Option<(u64, String)>> {
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut progress = Progress::new(total);
    loop {
        let chunk = match tokio::time::timeout(STALL_TIMEOUT, response.chunk()).await {
            Err(_) => {
                progress.clear();
                anyhow::bail!(
                    "the download of snapshot {id} stalled: nothing arrived for {STALL_TIMEOUT:?} after {}",
                    human_size(size)
                );
            }
            Ok(Err(e)) => {
                progress.clear();
                return Err(api.transport_error(&e).context(format!("downloading snapshot {id}")));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        hasher.update(&chunk);
        if let Err(e) = out.write_all(&chunk).await {
            progress.clear();
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(None);
            }
            return Err(anyhow::Error::new(e).context(format!("writing snapshot {id}")));
        }
        size += chunk.len() as u64;
        progress.update(id, size);
    }
    progress.clear();
    Ok(Some((size, hex::encode(hasher.finalize()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::snapshot_json;

    fn record(size: u64, sha256: &str) -> SnapshotRecord {
        serde_json::from_value(snapshot_json("s", size, sha256)).expect("a snapshot record")
    }

    #[test]
    fn the_target_is_the_archives_name_a_file_a_directory_or_stdout() {
        let id = "snap-1";
        let default = Target::resolve(None, id, false);
        // The test runs in the crate directory, where no such archive lies.
        assert_eq!(default.expect("free"), Target::File(PathBuf::from("snap-1.snapshot.tar.gz")));
        assert_eq!(Target::resolve(Some(Path::new("-")), id, false).expect("stdout"), Target::Stdout);
        let dir = std::env::temp_dir();
        assert_eq!(
            Target::resolve(Some(&dir), id, false).expect("a directory"),
            Target::File(dir.join("snap-1.snapshot.tar.gz"))
        );
    }

    #[test]
    fn an_existing_file_is_kept_unless_forced() {
        let path = std::env::temp_dir().join(format!("dfe-cli-{}.tar.gz", uuid::Uuid::new_v4()));
        std::fs::write(&path, b"precious").expect("write");
        let err = Target::resolve(Some(&path), "s", false).expect_err("exists");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(err.exit_status(), crate::error::EXIT_REJECTED);
        assert_eq!(Target::resolve(Some(&path), "s", true).expect("forced"), Target::File(path.clone()));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_archive_must_match_the_recorded_size_and_digest() {
        let recorded = record(3, "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD");
        let expected = Expected::of_record(&recorded).expect("size and sha256");
        let abc = hex::encode(Sha256::digest(b"abc"));
        assert_eq!(expected.mismatch(3, &abc), None);
        assert!(expected.mismatch(2, &abc).expect("short").contains("received 2 bytes"));
        assert!(expected.mismatch(3, &"0".repeat(64)).expect("corrupt").contains("SHA-256"));
        let mut no_digest = record(3, "");
        assert_eq!(Expected::of_record(&no_digest), None);
        no_digest.sha256 = "ab".into();
        no_digest.size = -1;
        assert_eq!(Expected::of_record(&no_digest), None);
    }
}
