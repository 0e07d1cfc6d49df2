//! The local snapshot store: where an export's archive goes (the default directory or a
//! named destination) and where an import or a download finds one. The schema of
//! `[snapshots]` is in [`crate::config`]; this is what is done with it.

use std::path::{Path, PathBuf};

use crate::config::SnapshotsConfig;

/// The file name of snapshot `id` in a store directory.
pub fn file_name(id: &str) -> String {
    format!("{id}.snapshot.tar.gz")
}

impl SnapshotsConfig {
    /// The directory of a destination (`None`: the default store). `None` when unknown.
    pub fn dir(&self, destination: Option<&str>) -> Option<&Path> {
        match destination {
            None | Some("default") => Some(self.path.as_path()),
            Some(name) => self.destinations.get(name).map(|d| d.path.as_path()),
        }
    }

    /// Every store directory: the default first, then the named destinations.
    pub fn all_dirs(&self) -> Vec<(&str, &Path)> {
        let mut dirs = vec![("default", self.path.as_path())];
        dirs.extend(self.destinations.iter().map(|(k, v)| (k.as_str(), v.path.as_path())));
        dirs
    }

    /// Finds the archive of snapshot `id` in the stores. The id is a [`crate::ids::Tag`]
    /// (no `/`), and the file's real path must lie inside its store directory, so neither a
    /// crafted id nor a symlink can point outside the store.
    pub fn locate(&self, id: &str) -> Option<(String, PathBuf)> {
        crate::ids::Tag::parse(id).ok()?;
        for (name, dir) in self.all_dirs() {
            let candidate = dir.join(file_name(id));
            let (Ok(real), Ok(real_dir)) = (candidate.canonicalize(), dir.canonicalize()) else { continue };
            if real.starts_with(&real_dir) && real.is_file() {
                return Some((name.to_owned(), real));
            }
        }
        None
    }
}
