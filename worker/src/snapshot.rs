//! The snapshot archive: `<id>.snapshot.tar.gz` holding `snapshot.json` (the manifest),
//! `database.sql` and `storage.tar`.
//!
//! Everything streams: members are hashed while they are written, the archive is written
//! straight into its destination's sink (a file, or a multipart upload), and an archive is
//! checked member by member while it is unpacked into a work directory, so no dump or
//! archive is ever held in memory.
//!
//! Encryption is a layer of the stream: tar → gzip → age (to the destination's
//! `encrypt-to` recipients) → the destination. Compression comes first (ciphertext does
//! not compress); the archive's SHA-256 (recorded in the registry, checked by downloads) is
//! of the bytes stored, the manifest's checksums of the plain members, checked after
//! decryption. An encrypted archive starts with age's header, which is how a reader knows
//! it; one encrypted to keys this worker does not hold is refused before anything else.
//!
//! An archive is refused before anything touches a
//! target when a member is unknown, duplicated, not a regular file, or escapes with an
//! absolute path or `..`; when the manifest has an unknown format version; when a
//! member's size or SHA-256 differs from the manifest; or when `storage.tar` holds anything
//! but plain files and directories under relative paths.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// The archive format version this worker writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest member.
pub const MANIFEST: &str = "snapshot.json";
/// The database dump member.
pub const DATABASE: &str = "database.sql";
/// The storage member.
pub const STORAGE: &str = "storage.tar";
/// A manifest larger than this is refused (it is a few hundred bytes).
const MANIFEST_LIMIT: u64 = 1 << 20;

/// Size and SHA-256 of a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Member {
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// `snapshot.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The snapshot id.
    pub snapshot_id: String,
    /// The exported instance.
    pub instance_id: String,
    /// Its owner.
    pub owner_id: serde_json::Value,
    /// DFE's owner type.
    #[serde(default)]
    pub owner_type: Option<serde_json::Value>,
    /// The provisioner tag it ran on.
    pub guest_location: String,
    /// The engine of `database.sql` (`postgres`, `mysql`, `none`); absent in archives
    /// written before it was recorded, which are all `postgres` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_engine: Option<String>,
    /// Its Docker cluster.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// The offering items it was provisioned with.
    #[serde(default)]
    pub offerings: BTreeMap<String, String>,
    /// When the export was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// `database.sql` and `storage.tar`.
    pub members: BTreeMap<String, Member>,
}

/// A writer that hashes and counts what passes through.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Hashing<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Hashing { inner, hasher: Sha256::new(), size: 0 }
    }

    /// The inner writer and the member figures.
    pub fn finish(self) -> (W, Member) {
        (self.inner, Member { size: self.size, sha256: hex::encode(self.hasher.finalize()) })
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Size and SHA-256 of a file, streamed.
pub fn hash_file(path: &Path) -> Result<Member> {
    let mut file = File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    let mut sink = Hashing::new(io::sink());
    io::copy(&mut file, &mut sink).map_err(Error::io(format!("reading {}", path.display())))?;
    Ok(sink.finish().1)
}

fn append_file<W: Write>(builder: &mut tar::Builder<W>, name: &str, path: &Path) -> Result<()> {
    let mut file = File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    let len = file.metadata().map_err(Error::io(format!("reading {}", path.display())))?.len();
    let mut header = tar::Header::new_gnu();
    header.set_size(len);
    header.set_mode(0o644);
    header.set_mtime(OffsetDateTime::now_utc().unix_timestamp().max(0) as u64);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, name, &mut file).map_err(Error::io(format!("archiving {name}")))
}

/// The age recipients of `encrypt-to`, parsed (none: the archive is not encrypted).
pub fn recipients(encrypt_to: &[String]) -> Result<Vec<age::x25519::Recipient>> {
    encrypt_to
        .iter()
        .map(|r| r.parse::<age::x25519::Recipient>().map_err(|e| Error::Config(format!("encrypt-to {r:?}: {e}"))))
        .collect()
}

/// The identities of `[snapshots] identity-file` (none: encrypted archives are refused).
pub fn identities(file: Option<&Path>) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>> {
    let Some(file) = file else { return Ok(Vec::new()) };
    let text =
        File::open(file).map_err(|e| Error::Config(format!("snapshots.identity-file {}: {e}", file.display())))?;
    let identities = age::IdentityFile::from_buffer(BufReader::new(text))
        .and_then(|f| f.into_identities().map_err(io::Error::other))
        .map_err(|e| Error::Config(format!("snapshots.identity-file {}: {e}", file.display())))?;
    if identities.is_empty() {
        return Err(Error::Config(format!("snapshots.identity-file {} holds no identity", file.display())));
    }
    Ok(identities)
}

/// The compressed stream, encrypted on its way out when there are recipients.
enum Sealed<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealed<W> {
    fn new(inner: W, recipients: &[age::x25519::Recipient]) -> Result<Self> {
        if recipients.is_empty() {
            return Ok(Sealed::Plain(inner));
        }
        let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| Error::Config(format!("encrypt-to: {e}")))?;
        Ok(Sealed::Age(encryptor.wrap_output(inner).map_err(Error::io("writing the age header"))?))
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(w) => w.flush(),
        }
    }
}

/// Writes the archive of the manifest and the two member files into `sink` (tar, gzip,
/// and age to `recipients` when there are any), and hands the sink back with the size and
/// SHA-256 of the bytes it took. Blocking: run it off the async runtime.
pub fn write_archive<W: Write>(
    sink: W,
    manifest: &Manifest,
    database: &Path,
    storage: &Path,
    recipients: &[age::x25519::Recipient],
) -> Result<(W, Member)> {
    let hashing = Hashing::new(sink);
    let sealed = Sealed::new(hashing, recipients)?;
    let gz = flate2::write::GzEncoder::new(sealed, flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let manifest_json = serde_json::to_vec_pretty(manifest).map_err(|e| Error::SnapshotInvalid(e.to_string()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest_json.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(manifest.created_at.unix_timestamp().max(0) as u64);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, MANIFEST, manifest_json.as_slice())
        .map_err(Error::io("archiving the manifest"))?;
    append_file(&mut builder, DATABASE, database)?;
    append_file(&mut builder, STORAGE, storage)?;
    let gz = builder.into_inner().map_err(Error::io("finishing the archive"))?;
    let sealed = gz.finish().map_err(Error::io("finishing the compression"))?;
    let hashing = sealed.finish().map_err(Error::io("finishing the encryption"))?;
    Ok(hashing.finish())
}

/// The first line of an age file.
const AGE_MAGIC: &[u8] = b"age-encryption.org/";

/// Whether the archive at `path` is encrypted (it starts with age's header).
pub fn is_encrypted(path: &Path) -> Result<bool> {
    let mut head = [0u8; AGE_MAGIC.len()];
    let mut file = File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    let mut read = 0;
    while read < head.len() {
        match io::Read::read(&mut file, &mut head[read..]).map_err(Error::io(format!("reading {}", path.display())))? {
            0 => break,
            n => read += n,
        }
    }
    Ok(read == head.len() && head == AGE_MAGIC)
}

/// The plain stream of an archive file: decrypted with `identities` when it is encrypted.
/// An encrypted archive that none of them opens is refused here, before anything else.
fn plain_reader(archive: &Path, identities: &[Box<dyn age::Identity + Send + Sync>]) -> Result<Box<dyn io::Read>> {
    let encrypted = is_encrypted(archive)?;
    let file = File::open(archive).map_err(Error::io(format!("opening {}", archive.display())))?;
    if !encrypted {
        return Ok(Box::new(BufReader::new(file)));
    }
    if identities.is_empty() {
        return Err(Error::SnapshotKeyMissing(
            "the snapshot is encrypted and this worker has no [snapshots] identity-file to decrypt it".into(),
        ));
    }
    let decryptor = age::Decryptor::new_buffered(BufReader::new(file))
        .map_err(|e| refuse(format!("the encrypted archive has no valid age header: {e}")))?;
    match decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity)) {
        Ok(reader) => Ok(Box::new(reader)),
        Err(age::DecryptError::NoMatchingKeys) => Err(Error::SnapshotKeyMissing(
            "the snapshot is encrypted to keys this worker does not hold (none of [snapshots] identity-file opens it)"
                .into(),
        )),
        Err(e) => Err(refuse(format!("the encrypted archive cannot be decrypted: {e}"))),
    }
}

/// The unpacked, verified members of an archive.
#[derive(Debug)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// Path of `database.sql` in the work directory.
    pub database: PathBuf,
    /// Path of `storage.tar` in the work directory.
    pub storage: PathBuf,
}

fn refuse(why: impl Into<String>) -> Error {
    Error::SnapshotInvalid(why.into())
}

/// Unpacks `archive` into `work` and verifies it completely (see the module doc),
/// decrypting it with `identities` when it is encrypted.
pub fn unpack_verified(
    archive: &Path,
    work: &Path,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<Verified> {
    let plain = plain_reader(archive, identities)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(plain));
    let mut found: BTreeMap<String, Member> = BTreeMap::new();
    let entries = tar.entries().map_err(|e| refuse(format!("not a tar.gz archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| refuse(format!("unreadable archive: {e}")))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            return Err(refuse(format!(
                "member {raw:?} is a {} entry; only regular files are allowed",
                kind_name(kind)
            )));
        }
        check_relative(&raw).map_err(|why| refuse(format!("member {raw:?} {why}")))?;
        let name = raw.trim_start_matches("./");
        if ![MANIFEST, DATABASE, STORAGE].contains(&name) {
            return Err(refuse(format!("unexpected member {raw:?}")));
        }
        if found.contains_key(name) {
            return Err(refuse(format!("member {name} appears twice")));
        }
        if name == MANIFEST && entry.size() > MANIFEST_LIMIT {
            return Err(refuse("snapshot.json is implausibly large"));
        }
        let path = work.join(name);
        let out = File::create(&path).map_err(Error::io(format!("creating {}", path.display())))?;
        let mut sink = Hashing::new(BufWriter::new(out));
        io::copy(&mut entry, &mut sink).map_err(|e| refuse(format!("member {name} is truncated or corrupt: {e}")))?;
        let (mut w, member) = sink.finish();
        w.flush().map_err(Error::io(format!("writing {}", path.display())))?;
        found.insert(name.to_owned(), member);
    }
    if !found.contains_key(MANIFEST) {
        return Err(refuse("snapshot.json is missing"));
    }
    let text = std::fs::read(work.join(MANIFEST)).map_err(Error::io("reading snapshot.json"))?;
    let version: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| refuse(format!("snapshot.json is not JSON: {e}")))?;
    match version.get("format-version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(refuse(format!("unknown snapshot format version {v} (this worker reads {FORMAT_VERSION})")))
        }
        None => return Err(refuse("snapshot.json has no format-version")),
    }
    let manifest: Manifest = serde_json::from_value(version).map_err(|e| refuse(format!("snapshot.json: {e}")))?;
    for name in [DATABASE, STORAGE] {
        let expected = manifest.members.get(name).ok_or_else(|| refuse(format!("snapshot.json lists no {name}")))?;
        let actual = found.get(name).ok_or_else(|| refuse(format!("member {name} is missing")))?;
        if actual.size != expected.size || actual.sha256 != expected.sha256 {
            return Err(refuse(format!(
                "checksum mismatch for {name}: the manifest says {} bytes sha256 {}, the archive holds {} bytes sha256 {}",
                expected.size, expected.sha256, actual.size, actual.sha256
            )));
        }
    }
    let storage = work.join(STORAGE);
    check_storage_tar(&storage)?;
    Ok(Verified { manifest, database: work.join(DATABASE), storage })
}

/// Refuses a storage tar holding links, devices or paths that escape the volume.
pub fn check_storage_tar(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(Error::io("opening storage.tar"))?;
    let mut tar = tar::Archive::new(BufReader::new(file));
    let entries = tar.entries().map_err(|e| refuse(format!("storage.tar is not a tar archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| refuse(format!("storage.tar is unreadable: {e}")))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(refuse(format!(
                "storage.tar entry {raw:?} is a {} entry; only files and directories are allowed",
                kind_name(kind)
            )));
        }
        check_relative(&raw).map_err(|why| refuse(format!("storage.tar entry {raw:?} {why}")))?;
    }
    Ok(())
}

fn check_relative(raw: &str) -> std::result::Result<(), &'static str> {
    let p = Path::new(raw);
    if raw.is_empty() {
        return Err("has an empty path");
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("contains '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(())
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char | tar::EntryType::Block => "device",
        tar::EntryType::Fifo => "fifo",
        tar::EntryType::Directory => "directory",
        _ => "special",
    }
}

/// Re-packs a tar stream from Docker's archive endpoint (entries under the copied
/// directory's name, e.g. `storage/…`) into `dest` with paths relative to that directory.
/// Anything but files and directories is left out (an import would refuse it); returns how
/// many entries were left out.
pub fn repack_relative(docker_tar: &Path, dest: &Path) -> Result<u64> {
    let input = File::open(docker_tar).map_err(Error::io("opening the downloaded storage"))?;
    let mut archive = tar::Archive::new(BufReader::new(input));
    let out = File::create(dest).map_err(Error::io(format!("creating {}", dest.display())))?;
    let mut builder = tar::Builder::new(BufWriter::new(out));
    let mut skipped = 0;
    for entry in archive.entries().map_err(Error::io("reading the downloaded storage"))? {
        let mut entry = entry.map_err(Error::io("reading the downloaded storage"))?;
        let path = entry.path().map_err(Error::io("reading an entry path"))?.into_owned();
        let relative: PathBuf = path.components().skip(1).collect();
        if relative.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            skipped += 1;
            continue;
        }
        let mut header = entry.header().clone();
        builder
            .append_data(&mut header, &relative, &mut entry)
            .map_err(Error::io(format!("archiving {}", relative.display())))?;
    }
    let mut w = builder.into_inner().map_err(Error::io("finishing storage.tar"))?;
    w.flush().map_err(Error::io("writing storage.tar"))?;
    Ok(skipped)
}

/// An empty tar archive at `dest` (storage of a provisioner without storage).
pub fn write_empty_tar(dest: &Path) -> Result<()> {
    let out = File::create(dest).map_err(Error::io(format!("creating {}", dest.display())))?;
    tar::Builder::new(out).finish().map_err(Error::io("writing an empty tar"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(db: &Member, st: &Member) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            snapshot_id: "snap-1".into(),
            instance_id: "acme".into(),
            owner_id: serde_json::json!(1),
            owner_type: None,
            guest_location: "docker".into(),
            database_engine: Some("postgres".into()),
            cluster_id: None,
            offerings: BTreeMap::new(),
            created_at: OffsetDateTime::now_utc(),
            members: BTreeMap::from([(DATABASE.to_owned(), db.clone()), (STORAGE.to_owned(), st.clone())]),
        }
    }

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dfe-snap-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn an_archive_round_trips_and_verifies() {
        let dir = temp("rt");
        std::fs::write(dir.join("db.sql"), b"CREATE TABLE t (x int);\n").expect("write");
        let mut b = tar::Builder::new(File::create(dir.join("st.tar")).expect("create"));
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "files/a.txt", &b"hi"[..]).expect("append");
        b.finish().expect("finish");
        drop(b);
        let m = manifest(&hash_file(&dir.join("db.sql")).expect("h"), &hash_file(&dir.join("st.tar")).expect("h"));
        let key = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        for recipients in [vec![], vec![key.to_public()]] {
            let path = dir.join(format!("a-{}.snapshot.tar.gz", recipients.len()));
            let out = File::create(&path).expect("create");
            let (_, member) =
                write_archive(out, &m, &dir.join("db.sql"), &dir.join("st.tar"), &recipients).expect("write");
            assert_eq!(hash_file(&path).expect("hash"), member);
            assert_eq!(is_encrypted(&path).expect("read"), !recipients.is_empty());
            let work = temp("rt-work");
            let mine: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(key.clone())];
            let v = unpack_verified(&path, &work, &mine).expect("verifies");
            assert_eq!(v.manifest.snapshot_id, "snap-1");
            assert_eq!(std::fs::read(v.database).expect("read"), b"CREATE TABLE t (x int);\n");
            if !recipients.is_empty() {
                let raw = std::fs::read(&path).expect("raw");
                assert!(!raw.windows(12).any(|w| w == b"CREATE TABLE"), "no plaintext in an encrypted archive");
                let theirs: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(other.clone())];
                let e = unpack_verified(&path, &temp("rt-other"), &theirs).expect_err("a key it is not for");
                assert_eq!(e.code(), "snapshot-key-missing", "{e}");
                let e = unpack_verified(&path, &temp("rt-none"), &[]).expect_err("no key at all");
                assert_eq!(e.code(), "snapshot-key-missing", "{e}");
            }
        }
    }

    #[test]
    fn paths_that_escape_are_refused() {
        assert!(check_relative("../../etc/x").is_err());
        assert!(check_relative("/etc/passwd").is_err());
        assert!(check_relative("a/../../b").is_err());
        assert!(check_relative("a/b/c.txt").is_ok());
        assert!(check_relative("./a").is_ok());
    }
}
