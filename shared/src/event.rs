//! Events published on the `dfe.events` topic exchange; the routing key is the event name.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::job::JobKind;

/// Namespace of the deterministic event ids (UUID v5).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6466_652e_6576_656e_7473_2d76_3100_0001);

/// A sub-provisioner's part of an operation, named in sub-events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The storage volume.
    Storage,
    /// The database and its role.
    Database,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Component::Storage => "storage",
            Component::Database => "database",
        }
    }
}

/// Event names.
pub mod names {
    use super::{Component, JobKind};

    /// `dfe.job.rejected`: a message that could not be parsed or validated.
    pub const JOB_REJECTED: &str = "dfe.job.rejected";

    /// `dfe.host.unreachable`: a Docker host failed its probes (once per outage).
    pub const HOST_UNREACHABLE: &str = "dfe.host.unreachable";

    /// `dfe.host.recovered`: a Docker host answers again after an outage.
    pub const HOST_RECOVERED: &str = "dfe.host.recovered";

    /// `dfe.snapshot.overdue`: a snapshot schedule's slot passed without a snapshot of an
    /// instance it selects (no worker held the schedules, or the export failed).
    pub const SNAPSHOT_OVERDUE: &str = "dfe.snapshot.overdue";

    /// `dfe.provisioned`, `dfe.deprovisioned`, `dfe.imported`, `dfe.exported`.
    pub fn succeeded(kind: JobKind) -> String {
        format!("dfe.{}", kind.done())
    }

    /// `dfe.provision.failed`, …
    pub fn failed(kind: JobKind) -> String {
        format!("dfe.{}.failed", kind.as_str())
    }

    /// `dfe.storage.provisioned`, `dfe.database.exported`, …
    pub fn component(component: Component, kind: JobKind) -> String {
        format!("dfe.{}.{}", component.as_str(), kind.done())
    }
}

/// The error part of a failure event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct EventError {
    /// A stable, machine-readable code (e.g. `instance-exists`, `image-not-found`).
    pub code: String,
    /// A human-readable explanation; never holds a secret.
    pub message: String,
}

/// An event body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Event {
    /// Stable id: the same for a redelivered duplicate of the same event.
    pub event_id: Uuid,
    /// The event name, also the routing key.
    pub event: String,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The job it belongs to (absent for a message rejected before it had one).
    pub job_id: Option<String>,
    /// The service that published it (`dfe-worker`).
    pub service: String,
    /// The instance the job is about, when known.
    pub instance_id: Option<String>,
    /// The owner named by the job or recorded for the instance, when known.
    pub owner_id: Option<serde_json::Value>,
    /// The original job (or, for a rejected message, what could be read of it).
    pub request: serde_json::Value,
    /// What was made; never a password or a token.
    pub result: serde_json::Value,
    /// Why it failed, for failure events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
}

impl Event {
    /// The deterministic id of event `name` of job `job_id`: a redelivered job publishes its
    /// events again under the same ids, so subscribers can drop duplicates.
    pub fn id_for(job_id: &str, name: &str) -> Uuid {
        Uuid::new_v5(&EVENT_NAMESPACE, format!("{job_id}\u{0}{name}").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_follow_the_contract() {
        assert_eq!(names::succeeded(JobKind::Provision), "dfe.provisioned");
        assert_eq!(names::failed(JobKind::Deprovision), "dfe.deprovision.failed");
        assert_eq!(names::component(Component::Storage, JobKind::Provision), "dfe.storage.provisioned");
        assert_eq!(names::component(Component::Database, JobKind::Export), "dfe.database.exported");
    }

    #[test]
    fn event_ids_are_stable_per_job_and_name() {
        assert_eq!(Event::id_for("j1", "dfe.provisioned"), Event::id_for("j1", "dfe.provisioned"));
        assert_ne!(Event::id_for("j1", "dfe.provisioned"), Event::id_for("j2", "dfe.provisioned"));
        assert_ne!(Event::id_for("j1", "dfe.provisioned"), Event::id_for("j1", "dfe.provision.failed"));
    }
}
