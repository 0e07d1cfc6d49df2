//! The records the registry holds, as the API serializes them and its clients (the CLI, the
//! tests, the console) deserialize them: one definition, so a state is never re-implemented
//! as a string match on the other side.
//!
//! States parse strictly: an unknown value is an error, never a guess.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::event::EventError;
use crate::ids::OwnerId;
use crate::job::JobKind;

/// A job's state: `queued → running → (retrying → running →) succeeded | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Recorded, waiting for a worker.
    Queued,
    /// A worker runs it.
    Running,
    /// Failed transiently, will run again.
    Retrying,
    /// Done.
    Succeeded,
    /// Ended without success.
    Failed,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 5] =
        [JobState::Queued, JobState::Running, JobState::Retrying, JobState::Succeeded, JobState::Failed];

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

/// A state name that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (known: {known})")]
pub struct UnknownState {
    /// Which kind of state.
    pub what: &'static str,
    /// The value found.
    pub value: String,
    /// The known values.
    pub known: String,
}

impl FromStr for JobState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, UnknownState> {
        JobState::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownState {
            what: "job state",
            value: s.to_owned(),
            known: JobState::ALL.map(JobState::as_str).join(", "),
        })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An instance's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Claimed by a provision (or an import into a new instance) that has not ended.
    Provisioning,
    /// Running.
    Provisioned,
    /// Stopped, its database's logins refused, nothing removed; a resume brings it back.
    Suspended,
    /// A deprovision is removing it.
    Deprovisioning,
    /// Removed (kept as history; the id may be provisioned again).
    Deprovisioned,
    /// A job ended part-way (a failed removal, a rollback that could not finish, a job that
    /// panicked or was abandoned): a deprovision, or the reconciler, finishes the removal.
    Failed,
}

impl InstanceState {
    /// Every state.
    pub const ALL: [InstanceState; 6] = [
        InstanceState::Provisioning,
        InstanceState::Provisioned,
        InstanceState::Suspended,
        InstanceState::Deprovisioning,
        InstanceState::Deprovisioned,
        InstanceState::Failed,
    ];

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Provisioning => "provisioning",
            InstanceState::Provisioned => "provisioned",
            InstanceState::Suspended => "suspended",
            InstanceState::Deprovisioning => "deprovisioning",
            InstanceState::Deprovisioned => "deprovisioned",
            InstanceState::Failed => "failed",
        }
    }
}

impl FromStr for InstanceState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, UnknownState> {
        InstanceState::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownState {
            what: "instance state",
            value: s.to_owned(),
            known: InstanceState::ALL.map(InstanceState::as_str).join(", "),
        })
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as the registry holds it (and as `GET /api/v1/ops/jobs/{id}` shows it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct JobRecord {
    /// The job id.
    pub job_id: String,
    /// `provision`, `deprovision`, `import` or `export`.
    #[serde(rename = "type")]
    pub kind: JobKind,
    /// Where it is in its life cycle.
    pub state: JobState,
    /// How many times a worker started it.
    pub attempts: i32,
    /// The instance it is about.
    pub instance_id: String,
    /// The original job.
    #[cfg_attr(feature = "schema", schema(value_type = Object))]
    pub request: serde_json::Value,
    /// What was made, once succeeded (and the step timings of its last run).
    #[cfg_attr(feature = "schema", schema(value_type = Option<Object>, required))]
    pub result: Option<serde_json::Value>,
    /// Why it failed (or, while retrying, why its last attempt failed).
    #[cfg_attr(feature = "schema", schema(required))]
    pub error: Option<EventError>,
    /// How it arrived: `api` or `queue`.
    pub source: String,
    /// Who asked for it: the API client id, `queue`, `lifecycle` or `schedule:<name>`.
    pub requested_by: String,
    /// When it was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When it was published onto `dfe.jobs` (None: not yet, the outbox will).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "schema", schema(required))]
    pub published_at: Option<OffsetDateTime>,
    /// When a worker last started it.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "schema", schema(required))]
    pub started_at: Option<OffsetDateTime>,
    /// When it ended.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "schema", schema(required))]
    pub finished_at: Option<OffsetDateTime>,
    /// When a job that is `retrying` runs again.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "schema", schema(required))]
    pub next_retry_at: Option<OffsetDateTime>,
    /// When the running attempt must be over.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "schema", schema(required))]
    pub deadline_at: Option<OffsetDateTime>,
    /// The W3C trace id of the job's trace (the request or `traceparent` it was submitted
    /// under), as its events carry it: where to look for it in a tracing backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(required = false, pattern = "^[0-9a-f]{32}$"))]
    pub trace_id: Option<String>,
}

/// The registry view of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct InstanceRecord {
    /// The instance id.
    pub instance_id: String,
    /// Its owner, as the provision named it.
    pub owner_id: OwnerId,
    /// DFE's owner type, if given.
    #[cfg_attr(feature = "schema", schema(required))]
    pub owner_type: Option<OwnerId>,
    /// Where it is in its life.
    pub state: InstanceState,
    /// Provisioner tag.
    pub guest_location: String,
    /// Docker cluster, chosen when the instance was claimed.
    #[cfg_attr(feature = "schema", schema(required))]
    pub cluster_id: Option<String>,
    /// Docker host, chosen when the instance was claimed.
    #[cfg_attr(feature = "schema", schema(required))]
    pub host_id: Option<String>,
    /// Database server, chosen when the instance was claimed.
    #[cfg_attr(feature = "schema", schema(required))]
    pub database_server: Option<String>,
    /// The item chosen for each offering when the instance was claimed.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(required))]
    pub offerings: BTreeMap<String, String>,
    /// Where the console talks to it.
    #[cfg_attr(feature = "schema", schema(required))]
    pub resource_uri: Option<String>,
    /// Names of what was made (container, volume, database, role).
    #[cfg_attr(feature = "schema", schema(value_type = Object))]
    pub resources: serde_json::Value,
    /// The last job that changed it.
    pub job_id: String,
    /// When it was first claimed.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When its provision succeeded.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "schema", schema(required))]
    pub provisioned_at: Option<OffsetDateTime>,
    /// When its deprovision succeeded.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "schema", schema(required))]
    pub deprovisioned_at: Option<OffsetDateTime>,
    /// When it expires (its provisioner's `ttl-days`, or set with PATCH); then the lifecycle
    /// schedule deprovisions (or suspends) it.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "schema", schema(required))]
    pub expires_at: Option<OffsetDateTime>,
}

/// A snapshot as the registry holds it (and `GET /api/v1/snapshots/{id}` shows it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotRecord {
    /// The snapshot id.
    pub snapshot_id: String,
    /// The exported instance.
    pub instance_id: String,
    /// Its owner.
    #[cfg_attr(feature = "schema", schema(required))]
    pub owner_id: Option<OwnerId>,
    /// The export job.
    pub job_id: String,
    /// The store it is in (`default` or a named destination).
    pub destination: String,
    /// The archive's key in its destination: its file name in a directory, or
    /// `<prefix>/<snapshot-id>.snapshot.tar.gz` in a bucket (`.age` appended when encrypted).
    #[serde(default)]
    pub key: String,
    /// Whether the archive is encrypted to the destination's age recipients.
    #[serde(default)]
    pub encrypted: bool,
    /// The schedule whose export made it (none: an export asked for by a client).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(required))]
    pub schedule: Option<String>,
    /// Size of the archive in bytes.
    pub size: i64,
    /// SHA-256 (hex) of the archive.
    pub sha256: String,
    /// The archive's `snapshot.json`.
    #[cfg_attr(feature = "schema", schema(value_type = Object))]
    pub manifest: serde_json::Value,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Where the archive is: a path on the store's host, or `s3://<bucket>/<key>` (not
    /// shown to clients).
    #[serde(skip)]
    pub path: String,
}

/// A snapshot that a retention removes (or, in a dry run, would remove).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct Pruned {
    /// The snapshot.
    pub snapshot_id: String,
    /// Its instance.
    pub instance_id: String,
    /// The schedule whose retention no longer keeps it.
    pub schedule: String,
    /// Its destination.
    pub destination: String,
    /// Its key there.
    pub key: String,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Why it goes, e.g. `beyond keep-last 3 and older than keep-days 7`.
    pub reason: String,
    /// Whether it was removed (archive and registry row); false in a dry run or on an error.
    pub removed: bool,
    /// Why its removal failed (it stays, archive and row).
    #[cfg_attr(feature = "schema", schema(required))]
    pub error: Option<String>,
}

/// What a pruning removed, or would remove.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct PruneReport {
    /// Whether nothing was removed, only listed.
    pub dry_run: bool,
    /// The snapshots beyond their schedule's retention, oldest first.
    pub snapshots: Vec<Pruned>,
}

/// A Docker host as `GET /api/v1/hosts` shows it: configured limits, what is placed on it,
/// and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct HostRecord {
    /// Its id.
    pub host_id: String,
    /// Its cluster.
    pub cluster_id: String,
    /// `pending` (not probed successfully yet), `active`, `cordoned` or `unreachable`.
    pub state: String,
    /// Whether an operator cordoned it (it takes no new instances); shown apart from the
    /// reachability, which `state` shows when it is not cordoned.
    pub cordoned: bool,
    /// `pending`, `active` or `unreachable`, from the probes.
    pub reachability: String,
    /// Instances placed on it.
    pub instances: i64,
    /// `max-instances`, if set.
    #[cfg_attr(feature = "schema", schema(required))]
    pub max_instances: Option<u32>,
    /// Bytes of memory its instances reserve (their offerings' `memory`).
    pub memory_reserved: i64,
    /// `memory-budget` in bytes, if set.
    #[cfg_attr(feature = "schema", schema(required))]
    pub memory_budget: Option<i64>,
    /// When a probe last succeeded.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "schema", schema(required))]
    pub last_seen_at: Option<OffsetDateTime>,
    /// When it was last probed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "schema", schema(required))]
    pub last_probe_at: Option<OffsetDateTime>,
    /// The last failed probe's error (cleared by a good one).
    #[cfg_attr(feature = "schema", schema(required))]
    pub last_error: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// How it is reached (`unix://…`, `tcp://…`, `ssh://…`; never a credential).
    pub docker_host: String,
}

/// A database server as `GET /api/v1/database-servers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct DatabaseServerRecord {
    /// Its id.
    pub server_id: String,
    /// `postgres` or `mysql`.
    pub engine: String,
    /// `pending`, `active` or `unreachable`, from the probes.
    pub state: String,
    /// Instance databases on it.
    pub databases: i64,
    /// `max-databases`, if set.
    #[cfg_attr(feature = "schema", schema(required))]
    pub max_databases: Option<u32>,
    /// When a probe last succeeded.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "schema", schema(required))]
    pub last_seen_at: Option<OffsetDateTime>,
    /// The last failed probe's error.
    #[cfg_attr(feature = "schema", schema(required))]
    pub last_error: Option<String>,
}

/// A resource of this deployment without a live registry row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct Orphan {
    /// `container`, `volume`, `database` or `role`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The instance its label or comment names.
    pub instance_id: String,
    /// The host or database server it is on.
    pub location: String,
    /// Whether the reconciliation removed it.
    pub removed: bool,
}

/// A part missing from an instance the registry says is provisioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct Missing {
    /// The instance.
    pub instance_id: String,
    /// `container`, `volume`, `database` or `role`.
    pub kind: String,
}

/// A job past its deadline with no worker finishing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct Stuck {
    /// The job.
    pub job_id: String,
    /// Its kind.
    #[serde(rename = "type")]
    pub kind: JobKind,
    /// Its state.
    pub state: JobState,
    /// Its instance.
    pub instance_id: String,
    /// Whether the reconciliation failed it.
    pub failed: bool,
}

/// An instance left mid-operation by a job that has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct Abandoned {
    /// The instance.
    pub instance_id: String,
    /// The state it was left in.
    pub state: InstanceState,
    /// The job that left it.
    pub job_id: String,
    /// Whether the reconciliation marked it `failed` (so a deprovision can finish it).
    pub failed: bool,
}

/// What a reconciliation found (and fixed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct ReconcileReport {
    /// Resources without a live registry row.
    pub orphans: Vec<Orphan>,
    /// Parts missing from provisioned instances.
    pub missing: Vec<Missing>,
    /// Jobs past their deadline.
    pub stuck: Vec<Stuck>,
    /// Instances left mid-operation by jobs that ended.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(required))]
    pub abandoned: Vec<Abandoned>,
    /// Hosts or servers that could not be inspected (nothing about them is concluded).
    pub unreachable: Vec<String>,
}

impl ReconcileReport {
    /// Whether everything agreed.
    pub fn is_clean(&self) -> bool {
        self.orphans.is_empty()
            && self.missing.is_empty()
            && self.stuck.is_empty()
            && self.abandoned.is_empty()
            && self.unreachable.is_empty()
    }
}

/// A reconciliation: asked for through the API, or run by a worker on its own schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct Reconciliation {
    /// Its id.
    pub id: uuid::Uuid,
    /// `requested`, `running`, `done` or `failed`.
    #[cfg_attr(feature = "schema", schema(schema_with = schema::reconciliation_state))]
    pub state: String,
    /// Whether it removes orphans and fails stuck jobs, or only reports.
    pub fix: bool,
    /// The API client that asked, or `worker` for a periodic one.
    pub requested_by: String,
    /// The worker that ran it.
    #[cfg_attr(feature = "schema", schema(required))]
    pub worker: Option<String>,
    /// When it was asked for.
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    /// When it finished.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "schema", schema(required))]
    pub finished_at: Option<OffsetDateTime>,
    /// What it found, once done.
    #[cfg_attr(feature = "schema", schema(required))]
    pub report: Option<ReconcileReport>,
    /// Why it could not run, if it failed.
    #[cfg_attr(feature = "schema", schema(required))]
    pub error: Option<String>,
}

/// Schemas of the fields whose Rust type says less than their values do.
#[cfg(feature = "schema")]
mod schema {
    use utoipa::openapi::schema::{ObjectBuilder, Type};

    /// [`super::Reconciliation::state`].
    pub fn reconciliation_state() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["requested", "running", "done", "failed"]))
            .description(Some("`requested`, `running`, `done` or `failed`."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_strictly() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(s));
        }
        for s in InstanceState::ALL {
            assert_eq!(s.as_str().parse::<InstanceState>(), Ok(s));
        }
        let e = "done".parse::<JobState>().expect_err("unknown");
        assert!(e.to_string().contains("\"done\"") && e.to_string().contains("succeeded"), "{e}");
        assert!("removed".parse::<InstanceState>().is_err());
        assert!(serde_json::from_str::<InstanceState>("\"removed\"").is_err());
    }
}
