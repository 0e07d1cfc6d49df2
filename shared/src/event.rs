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

    /// `dfe.instance.expiring`: an instance's `expires-at` is near (once per `lifecycle.warn-days`).
    pub const INSTANCE_EXPIRING: &str = "dfe.instance.expiring";
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
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct Event {
    /// Stable id: the same for a redelivered duplicate of the same event.
    pub event_id: Uuid,
    /// The event name, also the routing key.
    pub event: String,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "schema", schema(value_type = String, format = DateTime))]
    pub occurred_at: OffsetDateTime,
    /// The job it belongs to (absent for a message rejected before it had one).
    pub job_id: Option<String>,
    /// The service that published it (`dfe-worker`).
    pub service: String,
    /// The instance the job is about, when known.
    pub instance_id: Option<String>,
    /// The owner named by the job or recorded for the instance, when known (for a rejected
    /// message, whatever its `owner-id` held).
    #[cfg_attr(feature = "schema", schema(value_type = Option<Value>))]
    pub owner_id: Option<serde_json::Value>,
    /// The original job (or, for a rejected message, what could be read of it).
    #[cfg_attr(feature = "schema", schema(value_type = Value))]
    pub request: serde_json::Value,
    /// What was made; never a password or a token.
    #[cfg_attr(feature = "schema", schema(value_type = Object))]
    pub result: serde_json::Value,
    /// Why it failed, for failure events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(required = false))]
    pub error: Option<EventError>,
    /// The W3C trace id (32 hex digits) of the job's trace: the REST request or the incoming
    /// `traceparent` it was submitted under, through every step of the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(required = false, pattern = "^[0-9a-f]{32}$"))]
    pub trace_id: Option<String>,
}

/// What an event is about, for the events a catalogue lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum About {
    /// A job's final success event.
    Succeeded(JobKind),
    /// A job's final failure event (also a cancelled job's).
    Failed(JobKind),
    /// A sub-provisioner's part of a job, before the job's final event.
    Step(JobKind),
    /// A message that could not become a job.
    Rejected,
    /// A fleet notice (a host unreachable or recovered).
    Fleet,
    /// An instance's expiry is near (one of `lifecycle.warn-days`).
    Expiring,
    /// A snapshot schedule's slot passed without a snapshot.
    Overdue,
}

/// Every event the services publish, by name: what the AsyncAPI document lists, one message
/// each. A new event is added here with its name.
pub fn catalogue() -> Vec<(String, About)> {
    let mut all = Vec::new();
    for kind in JobKind::ALL {
        all.push((names::succeeded(kind), About::Succeeded(kind)));
        all.push((names::failed(kind), About::Failed(kind)));
        for component in [Component::Storage, Component::Database] {
            all.push((names::component(component, kind), About::Step(kind)));
        }
    }
    all.push((names::JOB_REJECTED.to_owned(), About::Rejected));
    all.push((names::HOST_UNREACHABLE.to_owned(), About::Fleet));
    all.push((names::HOST_RECOVERED.to_owned(), About::Fleet));
    all.push((names::INSTANCE_EXPIRING.to_owned(), About::Expiring));
    all.push((names::SNAPSHOT_OVERDUE.to_owned(), About::Overdue));
    all
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
