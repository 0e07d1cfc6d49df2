//! Where snapshot archives live: the default directory (`snapshots.path`, destination
//! `default`) or a named destination, a directory or an S3-compatible bucket. The names of
//! archives, and the local directories where an import or a download finds one that the
//! registry does not know (copied in by hand). The schema of `[snapshots]` is in
//! [`crate::config`]; the object-store client of the remote destinations is
//! [`crate::store`] (feature `store`).

use std::path::{Path, PathBuf};

use crate::config::{DestinationKind, SnapshotsConfig};

/// The suffix of an encrypted archive (`age`).
pub const ENCRYPTED_SUFFIX: &str = ".age";

/// The file name of snapshot `id` in a store directory.
pub fn file_name(id: &str) -> String {
    format!("{id}.snapshot.tar.gz")
}

/// The file name of snapshot `id`, with `.age` appended when it is encrypted.
pub fn archive_name(id: &str, encrypted: bool) -> String {
    if encrypted {
        format!("{}{ENCRYPTED_SUFFIX}", file_name(id))
    } else {
        file_name(id)
    }
}

/// The object key of snapshot `id` under `prefix` in a bucket:
/// `<prefix>/<id>.snapshot.tar.gz[.age]` (no leading `/`; just the name without a prefix).
pub fn object_key(prefix: &str, id: &str, encrypted: bool) -> String {
    let prefix = prefix.trim_matches('/');
    let name = archive_name(id, encrypted);
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

impl SnapshotsConfig {
    /// Whether `destination` names a configured destination (`default` is `path`).
    pub fn has_destination(&self, destination: &str) -> bool {
        destination == "default" || self.destinations.contains_key(destination)
    }

    /// The directory of a local destination (`None`: the default store). `None` when
    /// unknown or not local.
    pub fn dir(&self, destination: Option<&str>) -> Option<&Path> {
        match destination {
            None | Some("default") => Some(self.path.as_path()),
            Some(name) => {
                self.destinations.get(name).filter(|d| d.kind == DestinationKind::Local).and_then(|d| d.path.as_deref())
            }
        }
    }

    /// Every local store directory: the default first, then the local destinations.
    pub fn all_dirs(&self) -> Vec<(&str, &Path)> {
        let mut dirs = vec![("default", self.path.as_path())];
        dirs.extend(
            self.destinations
                .iter()
                .filter(|(_, d)| d.kind == DestinationKind::Local)
                .filter_map(|(k, d)| Some((k.as_str(), d.path.as_deref()?))),
        );
        dirs
    }

    /// Finds the archive of snapshot `id` in the local stores, plain or encrypted. The id is
    /// a [`crate::ids::Tag`] (no `/`), and the file's real path must lie inside its store
    /// directory, so neither a crafted id nor a symlink can point outside the store.
    pub fn locate(&self, id: &str) -> Option<(String, PathBuf)> {
        crate::ids::Tag::parse(id).ok()?;
        for (name, dir) in self.all_dirs() {
            for encrypted in [false, true] {
                let candidate = dir.join(archive_name(id, encrypted));
                let (Ok(real), Ok(real_dir)) = (candidate.canonicalize(), dir.canonicalize()) else { continue };
                if real.starts_with(&real_dir) && real.is_file() {
                    return Some((name.to_owned(), real));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_snapshot_is_the_object_prefix_slash_id_with_age_when_encrypted() {
        assert_eq!(object_key("backups/dfe", "s-1", false), "backups/dfe/s-1.snapshot.tar.gz");
        assert_eq!(object_key("/backups/", "s-1", true), "backups/s-1.snapshot.tar.gz.age");
        assert_eq!(object_key("", "s-1", false), "s-1.snapshot.tar.gz");
    }
}
