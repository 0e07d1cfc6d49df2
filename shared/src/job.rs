//! The job kinds, as DFE's requests: kebab-case JSON, unknown fields rejected.
//!
//! A job arrives as bytes (an HTTP body or a queue message) and is parsed once, here, into a
//! typed value whose fields are valid by construction; errors name the offending field.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{FieldError, InstanceId, JobId, OwnerId, Tag};
use crate::{Error, Result};

/// The kind of a job; its name is the routing key, the queue suffix and the event stem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Create an instance: storage, database, container.
    Provision,
    /// Remove an instance.
    Deprovision,
    /// Restore a snapshot into an instance.
    Import,
    /// Write a snapshot of an instance.
    Export,
    /// Stop an instance and refuse its database's logins, keeping everything.
    Suspend,
    /// Undo a suspend.
    Resume,
    /// Move a running instance to another Docker host (and database server).
    Move,
}

impl JobKind {
    /// All kinds, in the order queues are declared.
    pub const ALL: [JobKind; 7] = [
        JobKind::Provision,
        JobKind::Deprovision,
        JobKind::Import,
        JobKind::Export,
        JobKind::Suspend,
        JobKind::Resume,
        JobKind::Move,
    ];

    /// `provision`, `deprovision`, `import` or `export`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Provision => "provision",
            JobKind::Deprovision => "deprovision",
            JobKind::Import => "import",
            JobKind::Export => "export",
            JobKind::Suspend => "suspend",
            JobKind::Resume => "resume",
            JobKind::Move => "move",
        }
    }

    /// The AMQP `type` property: `ProvisionJob`, …
    pub fn message_type(self) -> &'static str {
        match self {
            JobKind::Provision => "ProvisionJob",
            JobKind::Deprovision => "DeprovisionJob",
            JobKind::Import => "ImportJob",
            JobKind::Export => "ExportJob",
            JobKind::Suspend => "SuspendJob",
            JobKind::Resume => "ResumeJob",
            JobKind::Move => "MoveJob",
        }
    }

    /// The kind named by an AMQP `type` property.
    pub fn from_message_type(t: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.message_type() == t)
    }

    /// The past participle used in event names: `provisioned`, …
    pub fn done(self) -> &'static str {
        match self {
            JobKind::Provision => "provisioned",
            JobKind::Deprovision => "deprovisioned",
            JobKind::Import => "imported",
            JobKind::Export => "exported",
            JobKind::Suspend => "suspended",
            JobKind::Resume => "resumed",
            JobKind::Move => "moved",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown job kind {s:?}"))
    }
}

/// A request to provision an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ProvisionJob {
    /// Client-chosen job id; one is assigned when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// Who owns the instance.
    pub owner_id: OwnerId,
    /// The instance to create.
    pub instance_id: InstanceId,
    /// Provisioner tag; `provisioners.default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_location: Option<Tag>,
    /// Docker cluster; the provisioner's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<Tag>,
    /// DFE's owner type (e.g. a user or a partner), recorded as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_type: Option<OwnerId>,
    /// Offering id → chosen item value; the offering's `suggested` item when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(schema_with = schema::offerings))]
    pub offerings: Option<BTreeMap<String, String>>,
    /// Packages to install into the instance, recorded as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(schema_with = schema::packages))]
    pub packages: Option<Vec<String>>,
}

/// A request to remove an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DeprovisionJob {
    /// Client-chosen job id; one is assigned when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The instance to remove.
    pub instance_id: InstanceId,
    /// Docker cluster; the instance's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<Tag>,
    /// Keep the database and its role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_database: Option<bool>,
}

/// A request to restore a snapshot into an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ImportJob {
    /// Client-chosen job id; one is assigned when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// Owner of the target instance.
    pub owner_id: OwnerId,
    /// The target instance.
    pub instance_id: InstanceId,
    /// Snapshot id in the store.
    pub snapshot: Tag,
    /// Provisioner tag for a target that must be created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_location: Option<Tag>,
    /// Docker cluster for a target that must be created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<Tag>,
    /// DFE's owner type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_type: Option<OwnerId>,
    /// Empty the target's storage first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean: Option<bool>,
}

/// A request to write a snapshot of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ExportJob {
    /// Client-chosen job id; one is assigned when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The instance to export.
    pub instance_id: InstanceId,
    /// A named snapshot destination; the default store when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Tag>,
}

/// A request to suspend an instance: its container stopped, its database's logins refused,
/// nothing removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SuspendJob {
    /// Client-chosen job id; one is assigned when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The instance to suspend.
    pub instance_id: InstanceId,
    /// Why (non-payment, abuse, expiry…), recorded as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(schema_with = schema::reason))]
    pub reason: Option<String>,
}

/// A request to resume a suspended instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ResumeJob {
    /// Client-chosen job id; one is assigned when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The instance to resume.
    pub instance_id: InstanceId,
}

/// A request to move a running instance to another Docker host: its storage (and, when
/// `database-server` names another server, its database) is copied there, a new container
/// started, the record switched, and the old parts removed. With neither `host-id` nor
/// `cluster-id` it goes to another host of its own cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MoveJob {
    /// Client-chosen job id; one is assigned when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The instance to move.
    pub instance_id: InstanceId,
    /// The Docker host to move it to (of `cluster-id`, or of its own cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<Tag>,
    /// The cluster to move it to; placement chooses the host. Its own cluster when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<Tag>,
    /// The database server to move its database to (one of its provisioner's); the
    /// database stays where it is when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_server: Option<Tag>,
}

/// Any job.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// See [`ProvisionJob`].
    Provision(ProvisionJob),
    /// See [`DeprovisionJob`].
    Deprovision(DeprovisionJob),
    /// See [`ImportJob`].
    Import(ImportJob),
    /// See [`ExportJob`].
    Export(ExportJob),
    /// See [`SuspendJob`].
    Suspend(SuspendJob),
    /// See [`ResumeJob`].
    Resume(ResumeJob),
    /// See [`MoveJob`].
    Move(MoveJob),
}

/// The largest job body accepted, in bytes, on both paths (REST and queue). A job is a few
/// hundred bytes; the bound keeps one message from being echoed into several large events
/// and from filling the registry.
pub const MAX_JOB_BYTES: usize = 64 * 1024;

/// The longest free-form string in a job (a package name, an offering id or item), in
/// characters.
pub const MAX_TEXT_CHARS: usize = 255;

/// Checks a free-form string of a job: 1 to [`MAX_TEXT_CHARS`] characters, none of them a
/// control character. NUL in particular: PostgreSQL cannot store it in text or jsonb, so a
/// job carrying one could never be recorded and must be refused as invalid, not retried.
pub fn check_text(field: impl Into<String>, s: &str) -> Result<(), FieldError> {
    let n = s.chars().count();
    if n == 0 || n > MAX_TEXT_CHARS {
        return Err(FieldError::new(field, format!("must be 1 to {MAX_TEXT_CHARS} characters long, got {n}")));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(FieldError::new(field, format!("must not contain control characters, found U+{:04X}", c as u32)));
    }
    Ok(())
}

impl Job {
    /// Parses a job of `kind` from JSON bytes. A body over [`MAX_JOB_BYTES`] is
    /// [`Error::TooLarge`]; malformed JSON is [`Error::Json`]; a missing, unknown or invalid
    /// field is [`Error::Field`] naming it.
    pub fn parse(kind: JobKind, bytes: &[u8]) -> Result<Job> {
        if bytes.len() > MAX_JOB_BYTES {
            return Err(Error::TooLarge { size: bytes.len(), limit: MAX_JOB_BYTES });
        }
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(Error::Json)?;
        Job::from_value(kind, value)
    }

    /// Like [`Job::parse`], from an already parsed JSON value.
    pub fn from_value(kind: JobKind, value: serde_json::Value) -> Result<Job> {
        if !value.is_object() {
            return Err(FieldError::new(
                "body",
                format!("must be a JSON object, got {}", crate::ids::json_kind(&value)),
            )
            .into());
        }
        let job = match kind {
            JobKind::Provision => Job::Provision(typed(value)?),
            JobKind::Deprovision => Job::Deprovision(typed(value)?),
            JobKind::Import => Job::Import(typed(value)?),
            JobKind::Export => Job::Export(typed(value)?),
            JobKind::Suspend => Job::Suspend(typed(value)?),
            JobKind::Resume => Job::Resume(typed(value)?),
            JobKind::Move => Job::Move(typed(value)?),
        };
        job.check()?;
        Ok(job)
    }

    /// Checks what the types alone do not: the free-form strings (packages, offerings). Jobs
    /// built in code (the CLI) call it before sending; parsed jobs have passed it already.
    pub fn check(&self) -> Result<(), FieldError> {
        if let Job::Suspend(SuspendJob { reason: Some(reason), .. }) = self {
            check_text("reason", reason)?;
        }
        if let Job::Provision(p) = self {
            for (i, package) in p.packages.iter().flatten().enumerate() {
                check_text(format!("packages[{i}]"), package)?;
            }
            for (id, item) in p.offerings.iter().flatten() {
                // The key is not echoed into the field name: it may be what is wrong.
                check_text("offerings", id).map_err(|e| FieldError::new("offerings", format!("keys {}", e.message)))?;
                check_text(format!("offerings.{id}"), item)?;
            }
        }
        Ok(())
    }

    /// The job's kind.
    pub fn kind(&self) -> JobKind {
        match self {
            Job::Provision(_) => JobKind::Provision,
            Job::Deprovision(_) => JobKind::Deprovision,
            Job::Import(_) => JobKind::Import,
            Job::Export(_) => JobKind::Export,
            Job::Suspend(_) => JobKind::Suspend,
            Job::Resume(_) => JobKind::Resume,
            Job::Move(_) => JobKind::Move,
        }
    }

    /// The job id, when set.
    pub fn job_id(&self) -> Option<&JobId> {
        match self {
            Job::Provision(j) => j.job_id.as_ref(),
            Job::Deprovision(j) => j.job_id.as_ref(),
            Job::Import(j) => j.job_id.as_ref(),
            Job::Export(j) => j.job_id.as_ref(),
            Job::Suspend(j) => j.job_id.as_ref(),
            Job::Resume(j) => j.job_id.as_ref(),
            Job::Move(j) => j.job_id.as_ref(),
        }
    }

    /// Sets the job id.
    pub fn set_job_id(&mut self, id: JobId) {
        let slot = match self {
            Job::Provision(j) => &mut j.job_id,
            Job::Deprovision(j) => &mut j.job_id,
            Job::Import(j) => &mut j.job_id,
            Job::Export(j) => &mut j.job_id,
            Job::Suspend(j) => &mut j.job_id,
            Job::Resume(j) => &mut j.job_id,
            Job::Move(j) => &mut j.job_id,
        };
        *slot = Some(id);
    }

    /// The instance the job is about.
    pub fn instance_id(&self) -> &InstanceId {
        match self {
            Job::Provision(j) => &j.instance_id,
            Job::Deprovision(j) => &j.instance_id,
            Job::Import(j) => &j.instance_id,
            Job::Export(j) => &j.instance_id,
            Job::Suspend(j) => &j.instance_id,
            Job::Resume(j) => &j.instance_id,
            Job::Move(j) => &j.instance_id,
        }
    }

    /// The owner named by the job, when it names one.
    pub fn owner_id(&self) -> Option<&OwnerId> {
        match self {
            Job::Provision(j) => Some(&j.owner_id),
            Job::Import(j) => Some(&j.owner_id),
            Job::Deprovision(_) | Job::Export(_) | Job::Suspend(_) | Job::Resume(_) | Job::Move(_) => None,
        }
    }

    /// The job as its kebab-case JSON.
    pub fn to_value(&self) -> serde_json::Value {
        // Serializing these plain structs cannot fail: all keys are strings.
        let v = match self {
            Job::Provision(j) => serde_json::to_value(j),
            Job::Deprovision(j) => serde_json::to_value(j),
            Job::Import(j) => serde_json::to_value(j),
            Job::Export(j) => serde_json::to_value(j),
            Job::Suspend(j) => serde_json::to_value(j),
            Job::Resume(j) => serde_json::to_value(j),
            Job::Move(j) => serde_json::to_value(j),
        };
        v.unwrap_or(serde_json::Value::Null)
    }
}

/// Schemas of the free-form strings, which [`Job::check`] checks rather than their type.
#[cfg(feature = "schema")]
mod schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};

    use super::MAX_TEXT_CHARS;

    /// What [`super::check_text`] accepts: 1 to 255 characters, no control character (Cc).
    fn text() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_TEXT_CHARS))
            .pattern(Some("^[^\\u0000-\\u001F\\u007F-\\u009F]*$"))
    }

    /// [`super::ProvisionJob::offerings`].
    pub fn offerings() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
            .property_names(Some(text()))
            .additional_properties(Some(text()))
            .description(Some("Offering id → chosen item value; the offering's `suggested` item when absent."))
    }

    /// [`super::SuspendJob::reason`]: free text, or null.
    pub fn reason() -> ObjectBuilder {
        text()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .description(Some("Why (non-payment, abuse, expiry…), recorded as given."))
    }

    /// [`super::ProvisionJob::packages`].
    pub fn packages() -> ArrayBuilder {
        ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .items(text())
            .description(Some("Packages to install into the instance, recorded as given."))
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        Error::Field(field_error(&path, &message))
    })
}

/// Turns serde's message into a field error: missing and unknown fields are reported at the
/// object's path by serde, so their name is taken from the message.
fn field_error(path: &str, message: &str) -> FieldError {
    let quoted = message.split('`').nth(1).map(str::to_owned);
    if message.starts_with("missing field") {
        if let Some(name) = quoted {
            return FieldError::new(name, "is required");
        }
    }
    if message.starts_with("unknown field") {
        if let Some(name) = quoted {
            let expected = message.split(", expected").nth(1).unwrap_or("").trim();
            // A name that is empty or cannot be shown is reported on the body instead.
            if name.is_empty() || name.chars().any(char::is_control) || name.len() > 64 {
                return FieldError::new(
                    "body",
                    format!("has a field whose name is not a known field (expected {expected})"),
                );
            }
            return FieldError::new(name, format!("is not a known field (expected {expected})"));
        }
    }
    let field = if path.is_empty() || path == "." { "body".to_owned() } else { path.to_owned() };
    // serde's messages for rejected values quote the value; keep only the rule.
    let message = match message.split_once(": ") {
        Some((head, tail)) if head.starts_with("invalid value") => tail.to_owned(),
        _ => message.to_owned(),
    };
    FieldError::new(field, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(kind: JobKind, body: &str) -> String {
        match Job::parse(kind, body.as_bytes()) {
            Err(Error::Field(f)) => f.field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_provision_job_parses_and_round_trips() {
        let body = r#"{"owner-id": 7, "instance-id": "acme-1", "guest-location": "docker",
                       "offerings": {"image": "test"}}"#;
        let job = Job::parse(JobKind::Provision, body.as_bytes()).expect("valid");
        assert_eq!(job.instance_id().as_str(), "acme-1");
        assert_eq!(job.owner_id(), Some(&OwnerId::Number(7)));
        let again = Job::from_value(JobKind::Provision, job.to_value()).expect("round trip");
        assert_eq!(job, again);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(JobKind::Provision, r#"{"owner-id":1,"instance-id":"Acme"}"#), "instance-id");
        assert_eq!(field_of(JobKind::Provision, r#"{"owner-id":1,"instance-id":"../x"}"#), "instance-id");
        assert_eq!(field_of(JobKind::Provision, r#"{"owner-id":1}"#), "instance-id");
        assert_eq!(field_of(JobKind::Provision, r#"{"instance-id":"abc"}"#), "owner-id");
        assert_eq!(
            field_of(JobKind::Provision, r#"{"owner-id":1,"instance-id":"abc","instance_id":"x"}"#),
            "instance_id"
        );
        assert_eq!(field_of(JobKind::Deprovision, r#"{"instance-id":"abc","keep-database":"y"}"#), "keep-database");
        assert_eq!(field_of(JobKind::Export, "[1]"), "body");
        assert_eq!(field_of(JobKind::Export, r#"{"instance-id":"abc","":1}"#), "body", "an empty name is not a field");
    }

    #[test]
    fn malformed_json_is_not_a_field_error() {
        assert!(matches!(Job::parse(JobKind::Provision, b"{"), Err(Error::Json(_))));
    }

    #[test]
    fn kinds_map_to_message_types() {
        for k in JobKind::ALL {
            assert_eq!(JobKind::from_message_type(k.message_type()), Some(k));
            assert_eq!(k.as_str().parse::<JobKind>(), Ok(k));
        }
    }
}
