//! The four job kinds, as DFE's requests: kebab-case JSON, unknown fields rejected.
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
}

impl JobKind {
    /// All kinds, in the order queues are declared.
    pub const ALL: [JobKind; 4] = [JobKind::Provision, JobKind::Deprovision, JobKind::Import, JobKind::Export];

    /// `provision`, `deprovision`, `import` or `export`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Provision => "provision",
            JobKind::Deprovision => "deprovision",
            JobKind::Import => "import",
            JobKind::Export => "export",
        }
    }

    /// The AMQP `type` property: `ProvisionJob`, …
    pub fn message_type(self) -> &'static str {
        match self {
            JobKind::Provision => "ProvisionJob",
            JobKind::Deprovision => "DeprovisionJob",
            JobKind::Import => "ImportJob",
            JobKind::Export => "ExportJob",
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
    pub offerings: Option<BTreeMap<String, String>>,
    /// Packages to install into the instance, recorded as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<Vec<String>>,
}

/// A request to remove an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

impl Job {
    /// Parses a job of `kind` from JSON bytes. Malformed JSON is [`Error::Json`]; a missing,
    /// unknown or invalid field is [`Error::Field`] naming it.
    pub fn parse(kind: JobKind, bytes: &[u8]) -> Result<Job> {
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
        Ok(match kind {
            JobKind::Provision => Job::Provision(typed(value)?),
            JobKind::Deprovision => Job::Deprovision(typed(value)?),
            JobKind::Import => Job::Import(typed(value)?),
            JobKind::Export => Job::Export(typed(value)?),
        })
    }

    /// The job's kind.
    pub fn kind(&self) -> JobKind {
        match self {
            Job::Provision(_) => JobKind::Provision,
            Job::Deprovision(_) => JobKind::Deprovision,
            Job::Import(_) => JobKind::Import,
            Job::Export(_) => JobKind::Export,
        }
    }

    /// The job id, when set.
    pub fn job_id(&self) -> Option<&JobId> {
        match self {
            Job::Provision(j) => j.job_id.as_ref(),
            Job::Deprovision(j) => j.job_id.as_ref(),
            Job::Import(j) => j.job_id.as_ref(),
            Job::Export(j) => j.job_id.as_ref(),
        }
    }

    /// Sets the job id.
    pub fn set_job_id(&mut self, id: JobId) {
        let slot = match self {
            Job::Provision(j) => &mut j.job_id,
            Job::Deprovision(j) => &mut j.job_id,
            Job::Import(j) => &mut j.job_id,
            Job::Export(j) => &mut j.job_id,
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
        }
    }

    /// The owner named by the job, when it names one.
    pub fn owner_id(&self) -> Option<&OwnerId> {
        match self {
            Job::Provision(j) => Some(&j.owner_id),
            Job::Import(j) => Some(&j.owner_id),
            Job::Deprovision(_) | Job::Export(_) => None,
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
        };
        v.unwrap_or(serde_json::Value::Null)
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
