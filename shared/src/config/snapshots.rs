//! `[snapshots]`: the default store, named destinations (a local directory or an
//! S3-compatible bucket, optionally encrypted to age recipients), the identity that decrypts
//! on import, and the schedules that export on their own and prune what their retention
//! no longer keeps. What is done with these is in [`crate::snapshot_store`] and, with the
//! `store` feature, [`crate::store`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::ids::OwnerId;
use crate::secret::Secret;

/// The snapshot store.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotsConfig {
    /// Directory of the default store (destination `default`).
    #[serde(default = "default_snapshots_path")]
    pub path: PathBuf,
    /// Named destinations an export may choose (`destination`).
    #[serde(default)]
    pub destinations: BTreeMap<String, SnapshotDestination>,
    /// An age identity file (`AGE-SECRET-KEY-1…` lines, as `age-keygen` writes them) that
    /// decrypts the encrypted snapshots on import. Read by the workers only.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// Where imports download an archive from a remote destination, and where exports to
    /// a remote destination gather their members [default: `path`].
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    /// Schedules by name.
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleConfig>,
    /// Seconds the worker running the schedules holds its lease without renewing it: when
    /// it dies, another takes over after at most this long.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

fn default_snapshots_path() -> PathBuf {
    PathBuf::from("/var/lib/dfe/snapshots")
}

fn default_lease_secs() -> u64 {
    15
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        SnapshotsConfig {
            path: default_snapshots_path(),
            destinations: BTreeMap::new(),
            identity_file: None,
            work_dir: None,
            schedules: BTreeMap::new(),
            lease_secs: default_lease_secs(),
        }
    }
}

/// Where a destination keeps its archives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DestinationKind {
    /// A directory (`path`).
    #[default]
    Local,
    /// A bucket of an S3-compatible server (`endpoint`, `bucket`, `region`, `prefix`).
    S3,
}

/// A named snapshot destination, `[snapshots.destinations.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SnapshotDestination {
    /// `local` (the default) or `s3`.
    #[serde(default)]
    pub kind: DestinationKind,
    /// `local`: its directory.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `s3`: the server's URL, e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `http://127.0.0.1:9000` [default: AWS's endpoint of `region`].
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `s3`: the bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// `s3`: the region [default: `us-east-1`].
    #[serde(default)]
    pub region: Option<String>,
    /// `s3`: the key prefix of the archives (`<prefix>/<snapshot-id>.snapshot.tar.gz`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// `s3`: the access key id (or `DFE__SNAPSHOTS__DESTINATIONS__<NAME>__ACCESS_KEY_ID`).
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    /// `s3`: the secret access key (or `DFE__SNAPSHOTS__DESTINATIONS__<NAME>__SECRET_ACCESS_KEY`).
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// `s3`: address buckets as `<bucket>.<endpoint host>` instead of `<endpoint>/<bucket>`
    /// (path-style, the default, which local servers need).
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// `s3`: bytes of one part of a multipart upload [default: 8 MiB; S3 needs at least 5 MiB].
    #[serde(default)]
    pub part_size: Option<usize>,
    /// age recipients (`age1…`): archives written here are encrypted to them while they are
    /// written, and only a worker holding one of their identities can import them.
    #[serde(default)]
    pub encrypt_to: Vec<String>,
}

impl SnapshotDestination {
    /// A local destination in `path`.
    pub fn local(path: impl Into<PathBuf>) -> SnapshotDestination {
        SnapshotDestination {
            kind: DestinationKind::Local,
            path: Some(path.into()),
            endpoint: None,
            bucket: None,
            region: None,
            prefix: None,
            access_key_id: None,
            secret_access_key: None,
            virtual_hosted_style: false,
            part_size: None,
            encrypt_to: Vec::new(),
        }
    }

    /// The key prefix without leading or trailing `/` (empty: none).
    pub fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or_default().trim_matches('/')
    }
}

/// How often a schedule runs: `"30s"`, `"15m"`, `"24h"`, `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every(pub Duration);

impl Every {
    /// Parses `<digits><unit>`, unit one of `s`, `m`, `h`, `d`.
    pub fn parse(s: &str) -> Result<Every, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a duration such as \"30s\", \"15m\", \"24h\" or \"7d\""))?;
        let secs = match unit {
            "s" => Some(n),
            "m" => n.checked_mul(60),
            "h" => n.checked_mul(3600),
            "d" => n.checked_mul(86_400),
            _ => None,
        }
        .ok_or_else(|| format!("{s:?} is not a duration such as \"30s\", \"15m\", \"24h\" or \"7d\""))?;
        if secs == 0 {
            return Err(format!("{s:?} is no time at all"));
        }
        Ok(Every(Duration::from_secs(secs)))
    }

    /// Whole seconds.
    pub fn secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl<'de> Deserialize<'de> for Every {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Every::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A schedule, `[snapshots.schedules.<name>]`: exports every instance it selects once per
/// slot of `every`, and prunes that schedule's snapshots beyond its retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScheduleConfig {
    /// The length of a slot.
    pub every: Every,
    /// Where its exports go [default: the default store].
    #[serde(default)]
    pub destination: Option<String>,
    /// Keep this many of its newest snapshots of each instance.
    #[serde(default)]
    pub keep_last: Option<u32>,
    /// Keep its snapshots younger than this many days.
    #[serde(default)]
    pub keep_days: Option<u32>,
    /// Only the instances of these owners.
    #[serde(default)]
    pub owner_ids: Option<Vec<OwnerId>>,
    /// Only the instances of this provisioner.
    #[serde(default)]
    pub guest_location: Option<String>,
}

impl ScheduleConfig {
    /// Whether the schedule selects an instance of `owner` made by provisioner `guest_location`.
    pub fn selects(&self, owner: &OwnerId, guest_location: &str) -> bool {
        let owner = owner.as_text();
        self.owner_ids.as_ref().is_none_or(|ids| ids.iter().any(|o| o.as_text() == owner))
            && self.guest_location.as_deref().is_none_or(|g| g == guest_location)
    }

    /// Whether it prunes at all.
    pub fn has_retention(&self) -> bool {
        self.keep_last.is_some() || self.keep_days.is_some()
    }
}

impl SnapshotsConfig {
    /// Checks destinations and schedules: each destination has what its kind needs, each
    /// schedule names a known destination and keeps at least one snapshot.
    pub fn check(&self) -> Result<(), String> {
        for (name, d) in &self.destinations {
            if name == "default" {
                return Err("snapshots.destinations.default: `default` is the name of snapshots.path".into());
            }
            crate::ids::Tag::parse(name).map_err(|e| format!("snapshots.destinations.{name}: the name {e}"))?;
            match d.kind {
                DestinationKind::Local => {
                    if d.path.is_none() {
                        return Err(format!("snapshots.destinations.{name}: kind = \"local\" needs `path`"));
                    }
                    if d.bucket.is_some() || d.endpoint.is_some() {
                        return Err(format!(
                            "snapshots.destinations.{name}: `bucket` and `endpoint` are for kind = \"s3\""
                        ));
                    }
                }
                DestinationKind::S3 => {
                    if d.bucket.as_deref().is_none_or(str::is_empty) {
                        return Err(format!("snapshots.destinations.{name}: kind = \"s3\" needs `bucket`"));
                    }
                    if d.path.is_some() {
                        return Err(format!("snapshots.destinations.{name}: `path` is for kind = \"local\""));
                    }
                    if let Some(e) = &d.endpoint {
                        let url = url::Url::parse(e)
                            .map_err(|err| format!("snapshots.destinations.{name}.endpoint = {e:?}: {err}"))?;
                        if !matches!(url.scheme(), "http" | "https") {
                            return Err(format!("snapshots.destinations.{name}.endpoint must be http:// or https://"));
                        }
                    }
                    if d.access_key_id.is_some() != d.secret_access_key.is_some() {
                        return Err(format!(
                            "snapshots.destinations.{name}: set both access-key-id and secret-access-key, or neither"
                        ));
                    }
                    if d.part_size.is_some_and(|p| p < 5 << 20) {
                        return Err(format!("snapshots.destinations.{name}.part-size is below S3's 5 MiB minimum"));
                    }
                }
            }
            for r in &d.encrypt_to {
                if !r.starts_with("age1") {
                    return Err(format!(
                        "snapshots.destinations.{name}.encrypt-to: {r:?} is not an age recipient (age1…)"
                    ));
                }
            }
        }
        for (name, s) in &self.schedules {
            crate::ids::Tag::parse(name).map_err(|e| format!("snapshots.schedules.{name}: the name {e}"))?;
            if let Some(d) = &s.destination {
                if d != "default" && !self.destinations.contains_key(d) {
                    return Err(format!(
                        "snapshots.schedules.{name}.destination = {d:?} names no [snapshots.destinations.{d}]"
                    ));
                }
            }
            if s.keep_last == Some(0) {
                return Err(format!("snapshots.schedules.{name}.keep-last must be at least 1"));
            }
        }
        if self.lease_secs < 2 {
            return Err("snapshots.lease-secs must be at least 2".into());
        }
        Ok(())
    }

    /// The directory imports download into and remote exports gather in.
    pub fn work_dir(&self) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(|| self.path.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_a_number_and_a_unit() {
        assert_eq!(Every::parse("30s"), Ok(Every(Duration::from_secs(30))));
        assert_eq!(Every::parse("15m").map(Every::secs), Ok(900));
        assert_eq!(Every::parse("24h").map(Every::secs), Ok(86_400));
        assert_eq!(Every::parse("7d").map(Every::secs), Ok(604_800));
        for bad in ["", "30", "s", "1w", "1.5h", "-1s", "0s", "99999999999999999999d", "1 h"] {
            assert!(Every::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[derive(Deserialize)]
    struct Only {
        snapshots: SnapshotsConfig,
    }

    #[test]
    fn an_s3_destination_takes_its_secret_from_the_environment_and_never_prints_it() {
        let dir = tempfile_dir();
        let path = dir.join("s3.toml");
        std::fs::write(
            &path,
            "[snapshots]\npath = \"/tmp/x\"\n[snapshots.destinations.offsite]\nkind = \"s3\"\n\
             endpoint = \"http://127.0.0.1:9000\"\nbucket = \"b\"\nprefix = \"/dfe/\"\naccess-key-id = \"AKIA1\"\n\
             [snapshots.schedules.nightly]\nevery = \"24h\"\ndestination = \"offsite\"\nkeep-last = 3\n",
        )
        .expect("write");
        let env = [("DFE__SNAPSHOTS__DESTINATIONS__OFFSITE__SECRET_ACCESS_KEY", "s3cr3t-value")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let cfg: Only = crate::config::load_layers(Some(&path), Some(env)).expect("loads");
        let d = &cfg.snapshots.destinations["offsite"];
        assert_eq!((d.kind, d.prefix()), (DestinationKind::S3, "dfe"));
        assert_eq!(d.secret_access_key.as_ref().map(Secret::expose), Some("s3cr3t-value"));
        assert!(!format!("{cfg:?}", cfg = cfg.snapshots).contains("s3cr3t-value"), "the secret prints");
        assert_eq!(cfg.snapshots.check(), Ok(()));
        assert_eq!(cfg.snapshots.schedules["nightly"].every.secs(), 86_400);
        let mut broken = cfg.snapshots.clone();
        broken.schedules.get_mut("nightly").expect("nightly").destination = Some("nowhere".into());
        assert!(broken.check().expect_err("unknown destination").contains("names no"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("dfe-snapshots-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn a_schedule_selects_by_owner_and_guest_location() {
        let s: ScheduleConfig =
            serde_json::from_value(serde_json::json!({"every": "1h", "owner-ids": [7, "acme"]})).expect("schedule");
        assert!(s.selects(&OwnerId::Number(7), "docker"));
        assert!(s.selects(&OwnerId::Text("acme".into()), "noop"));
        assert!(!s.selects(&OwnerId::Number(8), "docker"));
        let all: ScheduleConfig = serde_json::from_value(serde_json::json!({"every": "1h"})).expect("schedule");
        assert!(all.selects(&OwnerId::Number(8), "docker"));
        let by_tag: ScheduleConfig =
            serde_json::from_value(serde_json::json!({"every": "1h", "guest-location": "docker"})).expect("schedule");
        assert!(!by_tag.selects(&OwnerId::Number(8), "noop"));
    }
}
