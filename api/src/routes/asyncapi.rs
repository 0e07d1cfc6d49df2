//! `GET /api/v1/asyncapi.json`: the AsyncAPI 3 document of the broker side of the system:
//! the direct exchange `dfe.jobs` (a channel per routing key, its message named as the AMQP
//! `type`, `ProvisionJob`, …) and the topic exchange `dfe.events` (a channel per event,
//! its message named as the event, `dfe.provisioned`, …).
//!
//! The schemas are the `utoipa::ToSchema` schemas of the very types that serialize the
//! bodies (`dfe_shared::job::*Job`, `dfe_shared::event::Event`), the ones the OpenAPI
//! document uses, so the two documents and the wire cannot drift apart; the events come from
//! `dfe_shared::event::catalogue`, the one list of what is published. Built once.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use dfe_shared::event::{catalogue, About, Event, EventError};
use dfe_shared::job::{DeprovisionJob, ExportJob, ImportJob, JobKind, MoveJob, ProvisionJob, ResumeJob, SuspendJob};
use dfe_shared::topology::{EVENTS_EXCHANGE, JOBS_EXCHANGE};
use serde_json::{json, Value};
use utoipa::ToSchema;

/// Version of the AMQP bindings used.
const AMQP_BINDING: &str = "0.3.0";

/// Schemas by name, as `components.schemas` holds them.
type Schemas = BTreeMap<String, Value>;

/// Adds `T`'s schema and those it refers to.
fn collect<T: ToSchema>(schemas: &mut Schemas) {
    let mut all = vec![(T::name().into_owned(), T::schema())];
    T::schemas(&mut all);
    for (name, schema) in all {
        // A schema is plain data: it always serializes.
        schemas.entry(name).or_insert_with(|| serde_json::to_value(schema).unwrap_or_default());
    }
}

/// Adds the schema of the job of `kind` and returns its name (the AMQP `type`). A new kind
/// is one more arm here, which the compiler asks for.
fn job_schema(kind: JobKind, schemas: &mut Schemas) -> &'static str {
    match kind {
        JobKind::Provision => collect::<ProvisionJob>(schemas),
        JobKind::Deprovision => collect::<DeprovisionJob>(schemas),
        JobKind::Import => collect::<ImportJob>(schemas),
        JobKind::Export => collect::<ExportJob>(schemas),
        JobKind::Suspend => collect::<SuspendJob>(schemas),
        JobKind::Resume => collect::<ResumeJob>(schemas),
        JobKind::Move => collect::<MoveJob>(schemas),
    }
    kind.message_type()
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The `traceparent` header a message may carry.
fn headers() -> Value {
    json!({
        "type": "object",
        "properties": {
            "traceparent": {
                "type": "string",
                "description": "W3C trace context: the job's spans and events continue this trace.",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            },
        },
    })
}

/// The payload of event `name`: an [`Event`] with what this event says of its members.
fn event_payload(name: &str, about: About, schemas: &mut Schemas) -> (Value, String) {
    let mut properties = serde_json::Map::new();
    properties.insert("event".into(), json!({ "const": name }));
    let mut required = vec![json!("event")];
    let summary = match about {
        About::Succeeded(kind) => {
            properties.insert("request".into(), schema_ref(job_schema(kind, schemas)));
            properties.insert("job-id".into(), json!({ "type": "string" }));
            format!("A {kind} job succeeded: `result` holds what was made, `request` the job.")
        }
        About::Failed(kind) => {
            properties.insert("request".into(), schema_ref(job_schema(kind, schemas)));
            properties.insert("job-id".into(), json!({ "type": "string" }));
            properties.insert("error".into(), schema_ref("EventError"));
            required.push(json!("error"));
            format!(
                "A {kind} job failed (`error.code` says why; `cancelled` for a job cancelled before it ran): \
                 every job ends in exactly one success or failure event."
            )
        }
        About::Step(kind) => {
            properties.insert("request".into(), schema_ref(job_schema(kind, schemas)));
            properties.insert("job-id".into(), json!({ "type": "string" }));
            format!("A sub-provisioner's part of a {kind} job is done (before the job's final event).")
        }
        About::Rejected => {
            properties.insert("error".into(), schema_ref("EventError"));
            required.push(json!("error"));
            "A message on dfe.jobs that could not become a job: dead-lettered to dfe.jobs.dead; `request` \
             echoes what could be read of it."
                .to_owned()
        }
        About::Fleet => {
            properties.insert(
                "result".into(),
                json!({
                    "type": "object",
                    "properties": { "host-id": { "type": "string" }, "cluster-id": { "type": "string" } },
                    "required": ["host-id", "cluster-id"],
                }),
            );
            "A Docker host became unreachable (3 failed probes in a row; `error` holds the last) or \
             answers again: once per outage."
                .to_owned()
        }
        About::Expiring => {
            properties.insert(
                "result".into(),
                json!({
                    "type": "object",
                    "properties": {
                        "expires-at": { "type": "string", "format": "date-time" },
                        "days": { "type": "number", "description": "The warning day of `lifecycle.warn-days`" },
                        "seconds-left": { "type": "integer", "minimum": 0 },
                        "on-expiry": { "type": "string", "enum": ["deprovision", "suspend"] },
                    },
                    "required": ["expires-at", "days", "seconds-left", "on-expiry"],
                }),
            );
            "An instance's `expires-at` is near: sent once for each of `lifecycle.warn-days`, by the worker \
             running the expiry schedule, with no job (the job at expiry has events of its own)."
                .to_owned()
        }
        About::Overdue => {
            properties.insert(
                "result".into(),
                json!({
                    "type": "object",
                    "properties": {
                        "schedule": { "type": "string" },
                        "slot": { "type": "integer" },
                        "slot-start": { "type": "string", "format": "date-time" },
                        "slot-end": { "type": "string", "format": "date-time" },
                    },
                    "required": ["schedule", "slot", "slot-start", "slot-end"],
                }),
            );
            "A snapshot schedule's slot passed without a snapshot of an instance it selects: once per slot, \
             `error.code` `not-submitted` (no worker held the schedules) or the export's failure; `job-id` is \
             the slot's export job id."
                .to_owned()
        }
    };
    let payload = json!({
        "allOf": [
            schema_ref("Event"),
            { "type": "object", "properties": properties, "required": required },
        ],
    });
    (payload, summary)
}

/// Builds the document.
fn build() -> Value {
    let mut schemas = Schemas::new();
    collect::<Event>(&mut schemas);
    collect::<EventError>(&mut schemas);
    let (mut channels, mut operations, mut messages) = (Schemas::new(), Schemas::new(), Schemas::new());
    let exchange = |name: &str, kind: &str| {
        json!({ "amqp": {
            "is": "routingKey",
            "exchange": { "name": name, "type": kind, "durable": true, "autoDelete": false, "vhost": "/" },
            "bindingVersion": AMQP_BINDING,
        }})
    };
    for kind in JobKind::ALL {
        let name = job_schema(kind, &mut schemas);
        let channel = format!("jobs.{kind}");
        messages.insert(
            name.to_owned(),
            json!({
                "name": name,
                "title": format!("A {kind} job"),
                "summary": format!("Asks for a {kind}: the JSON the REST API takes at POST /api/v1/ops/{kind}."),
                "contentType": "application/json",
                "headers": headers(),
                "payload": schema_ref(name),
                "bindings": { "amqp": { "messageType": name, "bindingVersion": AMQP_BINDING } },
            }),
        );
        channels.insert(
            channel.clone(),
            json!({
                "address": kind.as_str(),
                "title": format!("dfe.jobs, routing key {kind}"),
                "description": format!(
                    "{kind} jobs: published persistent onto the direct exchange dfe.jobs with routing key `{kind}`, \
                     `message-id` the job id, AMQP `type` `{name}`, consumed from the quorum queue dfe.jobs.{kind}."
                ),
                "messages": { name: { "$ref": format!("#/components/messages/{name}") } },
                "bindings": exchange(JOBS_EXCHANGE, "direct"),
            }),
        );
        operations.insert(
            format!("receive{name}"),
            json!({
                "action": "receive",
                "title": format!("Workers take {kind} jobs"),
                "channel": { "$ref": format!("#/channels/{channel}") },
                "messages": [{ "$ref": format!("#/channels/{channel}/messages/{name}") }],
            }),
        );
    }
    for (name, about) in catalogue() {
        let (payload, summary) = event_payload(&name, about, &mut schemas);
        let channel = format!("events.{name}");
        messages.insert(
            name.clone(),
            json!({
                "name": name,
                "title": name,
                "summary": summary,
                "contentType": "application/json",
                "payload": payload,
                "bindings": { "amqp": { "messageType": name, "bindingVersion": AMQP_BINDING } },
            }),
        );
        channels.insert(
            channel.clone(),
            json!({
                "address": name,
                "title": format!("dfe.events, routing key {name}"),
                "description": format!(
                    "Published persistent onto the topic exchange dfe.events with routing key `{name}`, \
                     `message-id` the event id; bind a queue with a pattern such as `dfe.#` or `dfe.*.failed`."
                ),
                "messages": { name.clone(): { "$ref": format!("#/components/messages/{name}") } },
                "bindings": exchange(EVENTS_EXCHANGE, "topic"),
            }),
        );
        operations.insert(
            format!("publish.{name}"),
            json!({
                "action": "send",
                "title": format!("The services publish {name}"),
                "channel": { "$ref": format!("#/channels/{channel}") },
                "messages": [{ "$ref": format!("#/channels/{channel}/messages/{name}") }],
            }),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "DFE provisioner broker API",
            "version": "1.0.0",
            "description": "Jobs arrive on the direct exchange `dfe.jobs` (from dfe-api, the CLI's `--via queue`, or \
                any AMQP client), one routing key per kind, as kebab-case JSON; unknown fields are rejected. \
                Events go out on the topic exchange `dfe.events`, the routing key being the event name: \
                at least once, with a stable `event-id` per job and event for deduplication, and exactly one \
                final success or failure event per job. A W3C `traceparent` header on a job carries its \
                trace into the workers, and the job's events name it in `trace-id`.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages, "schemas": schemas },
    })
}

/// The document.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(build)
}

/// GET /api/v1/asyncapi.json
#[utoipa::path(
    get,
    path = "/api/v1/asyncapi.json",
    tag = "health",
    summary = "The AsyncAPI document of dfe.jobs and dfe.events",
    description = "AsyncAPI 3: one message per job type (named as its AMQP `type`, `ProvisionJob`, …) and per \
        event (named as the event, `dfe.provisioned`, …), each with its JSON Schema, generated from the types \
        that serialize them. No token needed.",
    responses((status = 200, description = "The AsyncAPI 3 document", body = Object)),
)]
pub async fn asyncapi() -> impl IntoResponse {
    static JSON: OnceLock<String> = OnceLock::new();
    let body = JSON.get_or_init(|| serde_json::to_string_pretty(document()).unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], body.as_str())
}

#[cfg(test)]
mod tests {
    use dfe_shared::event::names;
    use dfe_shared::job::Job;
    use serde_json::json;

    use super::*;

    /// A validator of message `name`'s payload.
    pub(crate) fn payload_validator(doc: &Value, name: &str) -> jsonschema::Validator {
        let mut root = doc["components"]["messages"][name]["payload"].clone();
        assert!(root.is_object(), "no message {name}");
        root["components"] = doc["components"].clone();
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{name}: not a JSON Schema: {e}"))
    }

    #[test]
    fn every_job_kind_and_every_event_has_its_channel_message_and_operation() {
        let doc = document();
        assert_eq!(doc["asyncapi"], "3.0.0");
        for kind in JobKind::ALL {
            let name = kind.message_type();
            let channel = &doc["channels"][format!("jobs.{kind}")];
            assert_eq!(channel["address"], kind.as_str());
            assert_eq!(channel["bindings"]["amqp"]["exchange"]["name"], "dfe.jobs");
            assert_eq!(channel["messages"][name]["$ref"], format!("#/components/messages/{name}"));
            assert_eq!(doc["components"]["messages"][name]["name"], name);
            assert_eq!(doc["operations"][format!("receive{name}")]["action"], "receive");
        }
        for (name, _) in catalogue() {
            let channel = &doc["channels"][format!("events.{name}")];
            assert_eq!(channel["address"], name.as_str());
            assert_eq!(channel["bindings"]["amqp"]["exchange"]["type"], "topic");
            assert_eq!(doc["components"]["messages"][name.as_str()]["name"], name.as_str());
            assert_eq!(doc["operations"][format!("publish.{name}")]["action"], "send");
        }
        // Every reference resolves within the document.
        let text = doc.to_string();
        for (at, _) in text.match_indices("\"$ref\":\"#/") {
            let rest = &text[at + 9..];
            let pointer = &rest[..rest.find('"').expect("a closing quote")];
            assert!(doc.pointer(pointer).is_some(), "{pointer} resolves");
        }
    }

    #[test]
    fn job_bodies_validate_exactly_when_the_parser_takes_them() {
        let doc = document();
        let provision = payload_validator(doc, "ProvisionJob");
        let good = json!({"job-id": "j-1", "owner-id": 7, "instance-id": "acme-1", "offerings": {"image": "test"}});
        assert!(Job::from_value(JobKind::Provision, good.clone()).is_ok());
        assert!(provision.is_valid(&good));
        for bad in [json!({"owner-id": 7}), json!({"owner-id": 7, "instance-id": "acme-1", "colour": "red"})] {
            assert!(Job::from_value(JobKind::Provision, bad.clone()).is_err());
            assert!(!provision.is_valid(&bad), "{bad}");
        }
        assert!(payload_validator(doc, "ExportJob").is_valid(&json!({"instance-id": "acme-1"})));
    }

    #[test]
    fn events_as_serialized_validate_and_a_failure_needs_its_error() {
        let doc = document();
        let job = json!({"job-id": "j-1", "owner-id": 7, "instance-id": "acme-1"});
        let event = |name: &str, error: Option<EventError>| Event {
            event_id: Event::id_for("j-1", name),
            event: name.to_owned(),
            occurred_at: time::OffsetDateTime::now_utc(),
            job_id: Some("j-1".into()),
            service: "dfe-worker".into(),
            instance_id: Some("acme-1".into()),
            owner_id: Some(json!(7)),
            request: job.clone(),
            result: json!({"container": "dfe-acme-1"}),
            error,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        };
        let ok = serde_json::to_value(event("dfe.provisioned", None)).expect("JSON");
        assert!(payload_validator(doc, "dfe.provisioned").is_valid(&ok), "{ok}");
        assert!(!payload_validator(doc, "dfe.deprovisioned").is_valid(&ok), "the event names itself");
        let failed = names::failed(JobKind::Provision);
        let error = EventError { code: "cancelled".into(), message: "cancelled by tests".into() };
        let failure = serde_json::to_value(event(&failed, Some(error))).expect("JSON");
        assert!(payload_validator(doc, &failed).is_valid(&failure), "{failure}");
        let mut without = failure.clone();
        without.as_object_mut().map(|o| o.remove("error"));
        assert!(!payload_validator(doc, &failed).is_valid(&without), "a failure carries its error");
        let mut wrong_request = failure;
        wrong_request["request"] = json!({"instance-id": "acme-1", "colour": "red"});
        assert!(!payload_validator(doc, &failed).is_valid(&wrong_request), "the request is the job");
    }
}
