//! The document against the code: every route is documented with its methods; what the
//! extractors answer (401, 413, 415, 400 and 422, no registry needed) is what each operation
//! documents, as `Problem`s; and the schemas accept what the parsers accept.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter};
use axum::Router;
use dfe_shared::job::{Job, JobKind, MAX_JOB_BYTES};
use dfe_shared::records::{InstanceRecord, JobRecord, PruneReport, Reconciliation, SnapshotRecord};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use crate::auth::{Client, Clients};
use crate::extract::{JobBody, ListParams};
use crate::routes::read::{INSTANCES_FILTERS, JOBS_FILTERS, SNAPSHOTS_FILTERS};

/// Every route the API serves, with its methods.
const ROUTES: &[(&str, &[&str])] = &[
    ("/api/v1/ops/provision", &["post"]),
    ("/api/v1/ops/deprovision", &["post"]),
    ("/api/v1/ops/import", &["post"]),
    ("/api/v1/ops/export", &["post"]),
    ("/api/v1/ops/suspend", &["post"]),
    ("/api/v1/ops/resume", &["post"]),
    ("/api/v1/ops/move", &["post"]),
    ("/api/v1/ops/jobs", &["get"]),
    ("/api/v1/ops/jobs/{job-id}", &["get"]),
    ("/api/v1/ops/jobs/{job-id}/cancel", &["post"]),
    ("/api/v1/ops/provisioners", &["get"]),
    ("/api/v1/instances", &["get"]),
    ("/api/v1/instances/{instance-id}", &["get", "patch"]),
    ("/api/v1/lifecycle", &["get"]),
    ("/api/v1/owners/{owner-id}", &["get"]),
    ("/api/v1/snapshots", &["get"]),
    ("/api/v1/snapshots/{snapshot-id}", &["get", "delete"]),
    ("/api/v1/snapshots/{snapshot-id}/download", &["get"]),
    ("/api/v1/snapshots/prune", &["post"]),
    ("/api/v1/reconcile", &["get", "post"]),
    ("/api/v1/reconcile/{id}", &["get"]),
    ("/api/v1/hosts", &["get"]),
    ("/api/v1/hosts/{host-id}", &["get"]),
    ("/api/v1/hosts/{host-id}/cordon", &["post"]),
    ("/api/v1/hosts/{host-id}/uncordon", &["post"]),
    ("/api/v1/database-servers", &["get"]),
    ("/api/v1/whoami", &["get"]),
    ("/api/v1/events/stream", &["get"]),
    ("/console", &["get"]),
    ("/api/v1/openapi.json", &["get"]),
    ("/api/v1/asyncapi.json", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
];

/// The paths that need no token.
const PUBLIC: &[&str] =
    &["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json", "/api/v1/asyncapi.json", "/console"];

/// The token the test router accepts.
const TOKEN: &str = "a-test-token";

fn doc() -> Value {
    serde_json::from_str(super::json()).expect("the served document is JSON")
}

/// A documented operation.
struct Operation {
    path: String,
    method: String,
    op: Value,
}

impl Operation {
    fn name(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }

    fn needs_token(&self) -> bool {
        self.op["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()))
    }

    fn has_body(&self) -> bool {
        self.op.get("requestBody").is_some()
    }

    /// The names of its query parameters.
    fn query(&self) -> Vec<String> {
        self.parameters("query")
    }

    fn parameters(&self, place: &str) -> Vec<String> {
        let all = self.op["parameters"].as_array().cloned().unwrap_or_default();
        all.iter().filter(|p| p["in"] == place).filter_map(|p| p["name"].as_str().map(str::to_owned)).collect()
    }

    /// The documented response for `status`, if there is one.
    fn response(&self, status: StatusCode) -> Option<&Value> {
        self.op["responses"].get(status.as_str())
    }
}

fn operations(doc: &Value) -> Vec<Operation> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object().expect("a path item").iter().map(|(method, op)| Operation {
                path: path.clone(),
                method: method.clone(),
                op: op.clone(),
            })
        })
        .collect()
}

/// A validator of `schema`, a schema of the document (it may `$ref` the document's components).
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("{schema} is not a JSON Schema: {e}"))
}

fn component(doc: &Value, name: &str) -> jsonschema::Validator {
    validator(doc, &json!({ "$ref": format!("#/components/schemas/{name}") }))
}

fn assert_valid(validator: &jsonschema::Validator, value: &Value, what: &str) {
    let errors: Vec<String> = validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{what}: {value} does not validate: {errors:?}");
}

#[test]
fn every_route_is_documented_with_its_methods() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = operations(&doc).into_iter().map(|o| (o.path, o.method)).collect();
    let routed: BTreeSet<(String, String)> =
        ROUTES.iter().flat_map(|(path, methods)| methods.iter().map(|m| (path.to_string(), m.to_string()))).collect();
    // The router and the document are made from the one list in `crate::routes()`, so what
    // is documented is what is routed; this checks that list is the API's.
    assert_eq!(documented, routed);
    // Building the router checks the paths (a path axum cannot route panics here).
    let _ = crate::routes().split_for_parts();
}

#[test]
fn every_path_parameter_is_documented() {
    let doc = doc();
    for o in operations(&doc) {
        let placeholders: BTreeSet<String> =
            o.path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).map(str::to_owned).collect();
        let documented: BTreeSet<String> = o.parameters("path").into_iter().collect();
        assert_eq!(placeholders, documented, "{}", o.name());
    }
}

#[test]
fn only_health_metrics_and_the_document_need_no_token() {
    let doc = doc();
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!((scheme["type"].as_str(), scheme["scheme"].as_str()), (Some("http"), Some("bearer")));
    assert!(doc.get("security").is_none(), "security is said per operation");
    for o in operations(&doc) {
        let public = PUBLIC.contains(&o.path.as_str());
        assert_eq!(o.needs_token(), !public, "{} needs a token: {}", o.name(), !public);
        assert_eq!(o.response(StatusCode::UNAUTHORIZED).is_some(), !public, "{} documents 401", o.name());
    }
}

/// The scope each operation needs: every GET `read`, but the reconciliation's; job
/// submissions and cancel `ops`; the fleet's cordons and moves, expiries, snapshot removal
/// and the reconciliation `admin`.
fn expected_scope(o: &Operation) -> &'static str {
    match (o.method.as_str(), o.path.as_str()) {
        (_, p) if p.starts_with("/api/v1/reconcile") => "admin",
        ("post", p) if p.ends_with("/cordon") || p.ends_with("/uncordon") => "admin",
        ("patch", p) if p.starts_with("/api/v1/instances/") => "admin",
        ("delete", p) if p.starts_with("/api/v1/snapshots/") => "admin",
        ("post", "/api/v1/snapshots/prune") => "admin",
        ("post", "/api/v1/ops/move") => "admin",
        ("post", _) => "ops",
        _ => "read",
    }
}

#[test]
fn every_operation_needing_a_token_names_its_one_scope_and_documents_403() {
    let doc = doc();
    for o in operations(&doc).into_iter().filter(Operation::needs_token) {
        let security = o.op["security"].as_array().expect("security");
        let scopes: Vec<&str> = security
            .iter()
            .flat_map(|r| r["bearer"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(scopes, [expected_scope(&o)], "{}", o.name());
        let forbidden = o.response(StatusCode::FORBIDDEN).unwrap_or_else(|| panic!("{} documents 403", o.name()));
        let said = forbidden["description"].as_str().unwrap_or_default();
        assert!(said.contains(&format!("`{}` scope", expected_scope(&o))), "{}: {said}", o.name());
    }
}

#[test]
fn every_documented_error_is_a_problem() {
    let doc = doc();
    let problem = json!({ "$ref": "#/components/schemas/Problem" });
    for o in operations(&doc) {
        for (status, response) in o.op["responses"].as_object().expect("responses") {
            if status.as_str() < "400" {
                continue;
            }
            let content = response["content"].as_object().expect("content");
            let types: Vec<&String> = content.keys().collect();
            assert_eq!(types, ["application/problem+json"], "{} {status}", o.name());
            assert_eq!(content["application/problem+json"]["schema"], problem, "{} {status}", o.name());
        }
    }
}

#[test]
fn the_operations_taking_a_body_or_a_list_query_document_their_refusals() {
    let doc = doc();
    for o in operations(&doc) {
        let mut expected: Vec<StatusCode> = Vec::new();
        if o.has_body() {
            expected.extend([StatusCode::BAD_REQUEST, StatusCode::PAYLOAD_TOO_LARGE]);
            expected.extend([StatusCode::UNSUPPORTED_MEDIA_TYPE, StatusCode::UNPROCESSABLE_ENTITY]);
            let content: Vec<&String> = o.op["requestBody"]["content"].as_object().expect("content").keys().collect();
            assert_eq!(content, ["application/json"], "{}", o.name());
        }
        if o.query().contains(&"limit".to_owned()) {
            expected.extend([StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY]);
        }
        if o.query().contains(&"owner-id".to_owned()) {
            expected.push(StatusCode::NOT_FOUND);
        }
        if o.needs_token() {
            expected.push(StatusCode::FORBIDDEN);
        }
        if !o.parameters("path").is_empty() {
            expected.push(StatusCode::NOT_FOUND);
        }
        for status in expected {
            assert!(o.response(status).is_some(), "{} documents {status}", o.name());
        }
    }
}

#[test]
fn the_documented_query_parameters_are_the_ones_the_lists_accept() {
    let doc = doc();
    let lists: [(&str, &[&str]); 5] = [
        ("/api/v1/ops/jobs", JOBS_FILTERS),
        ("/api/v1/instances", INSTANCES_FILTERS),
        ("/api/v1/snapshots", SNAPSHOTS_FILTERS),
        ("/api/v1/hosts", &[]),
        ("/api/v1/database-servers", &[]),
    ];
    // Not lists: no `limit` or `cursor`.
    let unpaged: [(&str, &[&str]); 2] = [
        ("/api/v1/events/stream", crate::routes::stream::STREAM_PARAMETERS),
        // The expiry preview filters by owner but is one schedule, not pages.
        ("/api/v1/lifecycle", &["owner-id"]),
    ];
    for o in operations(&doc) {
        let list = lists.iter().find(|(path, _)| *path == o.path).map(|(_, known)| *known);
        let mut expected: Vec<String> = list.unwrap_or_default().iter().map(|s| s.to_string()).collect();
        if list.is_some() {
            expected.extend(crate::extract::PAGE_PARAMETERS.iter().map(|s| s.to_string()));
        }
        if let Some((_, known)) = unpaged.iter().find(|(path, _)| *path == o.path) {
            expected = known.iter().map(|s| s.to_string()).collect();
        }
        assert_eq!(o.query(), expected, "{}", o.name());
    }
    let limit = &operations(&doc).into_iter().find(|o| o.path == "/api/v1/ops/jobs").expect("jobs").op["parameters"];
    let limit = limit.as_array().and_then(|p| p.iter().find(|p| p["name"] == "limit")).expect("limit");
    assert_eq!(
        limit["schema"],
        json!({"type": "integer", "format": "int64", "default": 100, "maximum": 1000, "minimum": 1})
    );
}

/// Job bodies and whether `Job::parse` takes them (placement, which needs the configuration,
/// aside).
fn job_bodies() -> Vec<(JobKind, Value)> {
    let provision = |extra: Value| {
        let mut body = json!({ "owner-id": 7, "instance-id": "acme-1" });
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        (JobKind::Provision, body)
    };
    let long = |c: &str, n: usize| c.repeat(n);
    vec![
        provision(json!({})),
        provision(json!({
            "job-id": "j-1.x_y", "guest-location": "docker", "cluster-id": "local", "owner-type": "user",
            "offerings": {"image": "test"}, "packages": ["a", "b"],
        })),
        provision(json!({ "job-id": null, "guest-location": null, "packages": null, "offerings": null })),
        provision(json!({ "owner-id": "acme.co_1" })),
        provision(json!({ "owner-id": long("x", 64) })),
        provision(json!({ "owner-id": long("x", 65) })),
        provision(json!({ "owner-id": -1 })),
        provision(json!({ "owner-id": 1.5 })),
        provision(json!({ "owner-id": "" })),
        provision(json!({ "owner-id": "a b" })),
        provision(json!({ "owner-id": null })),
        provision(json!({ "owner-id": true })),
        provision(json!({ "owner-id": u64::MAX })),
        provision(json!({ "owner-type": 3 })),
        provision(json!({ "instance-id": "abc" })),
        provision(json!({ "instance-id": long("a", 63) })),
        provision(json!({ "instance-id": long("a", 64) })),
        provision(json!({ "instance-id": "ab" })),
        provision(json!({ "instance-id": "Acme" })),
        provision(json!({ "instance-id": "abc-" })),
        provision(json!({ "instance-id": "1abc" })),
        provision(json!({ "instance-id": "a_bc" })),
        provision(json!({ "instance-id": "../x" })),
        provision(json!({ "instance-id": 12345 })),
        provision(json!({ "instance_id": "abc" })),
        provision(json!({ "colour": "red" })),
        provision(json!({ "job-id": "a/b" })),
        provision(json!({ "job-id": long("j", 65) })),
        provision(json!({ "guest-location": "" })),
        provision(json!({ "packages": [long("p", 255), long("é", 255), "zero\u{200b}width"] })),
        provision(json!({ "packages": [long("p", 256)] })),
        provision(json!({ "packages": [""] })),
        provision(json!({ "packages": ["nul\u{0}"] })),
        provision(json!({ "packages": ["del\u{7f}"] })),
        provision(json!({ "packages": ["nel\u{85}"] })),
        provision(json!({ "packages": "one" })),
        provision(json!({ "offerings": {"image": "te\u{7}st"} })),
        provision(json!({ "offerings": {"": "test"} })),
        provision(json!({ "offerings": {"image": 1} })),
        provision(json!({ "offerings": {"image": long("i", 256)} })),
        (JobKind::Provision, json!({ "instance-id": "abc" })),
        (JobKind::Provision, json!([1])),
        (JobKind::Provision, json!("a job")),
        (JobKind::Deprovision, json!({ "instance-id": "abc" })),
        (JobKind::Deprovision, json!({ "instance-id": "abc", "keep-database": true, "cluster-id": "local" })),
        (JobKind::Deprovision, json!({ "instance-id": "abc", "keep-database": "y" })),
        (JobKind::Deprovision, json!({ "instance-id": "abc", "owner-id": 7 })),
        (JobKind::Import, json!({ "owner-id": 7, "instance-id": "abc", "snapshot": "s-1", "clean": true })),
        (JobKind::Import, json!({ "owner-id": 7, "instance-id": "abc" })),
        (JobKind::Import, json!({ "owner-id": 7, "instance-id": "abc", "snapshot": "s/1" })),
        (JobKind::Export, json!({ "instance-id": "abc", "destination": "offsite" })),
        (JobKind::Export, json!({ "instance-id": "abc", "destination": "off site" })),
        (JobKind::Export, json!({})),
    ]
}

#[test]
fn the_job_schemas_accept_exactly_what_the_job_parser_accepts() {
    let doc = doc();
    for (kind, body) in job_bodies() {
        let path = format!("/api/v1/ops/{kind}");
        let schema = &doc["paths"][path.as_str()]["post"]["requestBody"]["content"]["application/json"]["schema"];
        let parsed = Job::parse(kind, body.to_string().as_bytes());
        let valid = validator(&doc, schema).is_valid(&body);
        assert_eq!(valid, parsed.is_ok(), "{kind} {body}: the schema says {valid}, the parser {parsed:?}");
    }
}

#[test]
fn the_idempotency_key_schema_accepts_exactly_what_the_header_check_accepts() {
    let doc = doc();
    let op = &doc["paths"]["/api/v1/ops/provision"]["post"];
    let header = op["parameters"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "Idempotency-Key"));
    let schema = &header.expect("Idempotency-Key is documented")["schema"];
    let v = validator(&doc, schema);
    for key in ["k", "key-1:2/3?x=y", "~!@#$%^&*()", &"k".repeat(255), &"k".repeat(256), "a b", "a\tb", "é"] {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", HeaderValue::from_bytes(key.as_bytes()).expect("a header value"));
        let accepted = crate::routes::ops::idempotency_key(&headers).is_ok();
        assert_eq!(v.is_valid(&json!(key)), accepted, "{key:?}");
    }
}

/// `record` read as a `T` and written as the API serves it.
fn served<T: serde::de::DeserializeOwned + serde::Serialize>(record: Value) -> Value {
    let typed: T = serde_json::from_value(record).expect("a record");
    serde_json::to_value(typed).expect("JSON")
}

#[test]
fn the_records_as_served_validate_against_their_schemas() {
    let doc = doc();
    let at = "2026-01-02T03:04:05Z";
    let job = json!({
        "job-id": "j1", "type": "provision", "state": "retrying", "attempts": 2, "instance-id": "acme-1",
        "request": {"owner-id": 7, "instance-id": "acme-1"}, "result": null,
        "error": {"code": "host-unreachable", "message": "the Docker host does not answer"},
        "source": "api", "requested-by": "tests", "created-at": at, "updated-at": "2026-01-02T03:04:06.25+02:00",
        "published-at": at, "started-at": at, "finished-at": null, "next-retry-at": at, "deadline-at": null,
    });
    let done = json!({
        "job-id": "j2", "type": "export", "state": "succeeded", "attempts": 1, "instance-id": "acme-1",
        "request": {"instance-id": "acme-1"}, "result": {"snapshot-id": "s1"}, "error": null,
        "source": "queue", "requested-by": "queue", "created-at": at, "updated-at": at,
    });
    let instance = json!({
        "instance-id": "acme-1", "owner-id": "acme", "owner-type": 3, "state": "provisioned",
        "guest-location": "docker", "cluster-id": "local", "host-id": "local", "database-server": null,
        "offerings": {"image": "test"}, "resource-uri": "/api/v2/system", "resources": {"container": "dfe-acme-1"},
        "job-id": "j1", "created-at": at, "updated-at": at, "provisioned-at": at,
    });
    let snapshot = json!({
        "snapshot-id": "s1", "instance-id": "acme-1", "owner-id": 7, "job-id": "j2", "destination": "default",
        "size": 1024, "sha256": "00", "manifest": {"instance-id": "acme-1"}, "created-at": at,
    });
    let offsite = json!({
        "snapshot-id": "s2", "instance-id": "acme-1", "owner-id": 7, "job-id": "j3", "destination": "offsite",
        "key": "dfe/s2.snapshot.tar.gz.age", "encrypted": true, "schedule": "nightly",
        "size": 1024, "sha256": "00", "manifest": {"instance-id": "acme-1"}, "created-at": at,
    });
    let pruned = json!({ "dry-run": true, "snapshots": [{
        "snapshot-id": "s2", "instance-id": "acme-1", "schedule": "nightly", "destination": "offsite",
        "key": "dfe/s2.snapshot.tar.gz.age", "created-at": at, "reason": "beyond keep-last 3", "removed": false,
        "error": null,
    }]});
    let reconciliation = json!({
        "id": "6b1a2c3d-0000-4000-8000-000000000001", "state": "done", "fix": true, "requested-by": "tests",
        "worker": "w1", "requested-at": at, "finished-at": at, "error": null,
        "report": {
            "orphans": [{"kind": "container", "name": "dfe-x", "instance-id": "x", "location": "local", "removed": true}],
            "missing": [{"instance-id": "acme-1", "kind": "volume"}],
            "stuck": [{"job-id": "j3", "type": "import", "state": "running", "instance-id": "abc", "failed": true}],
            "abandoned": [{"instance-id": "abc", "state": "provisioning", "job-id": "j3", "failed": false}],
            "unreachable": ["db-2"],
        },
    });
    let requested = json!({ "id": "6b1a2c3d-0000-4000-8000-000000000002", "state": "requested", "fix": false,
        "requested-by": "tests", "requested-at": at });
    let cases = [
        ("JobRecord", served::<JobRecord>(job)),
        ("JobRecord", served::<JobRecord>(done)),
        ("InstanceRecord", served::<InstanceRecord>(instance)),
        ("SnapshotRecord", served::<SnapshotRecord>(snapshot)),
        ("SnapshotRecord", served::<SnapshotRecord>(offsite)),
        ("PruneReport", served::<PruneReport>(pruned)),
        ("Reconciliation", served::<Reconciliation>(reconciliation)),
        ("Reconciliation", served::<Reconciliation>(requested)),
    ];
    for (name, value) in cases {
        assert_valid(&component(&doc, name), &value, name);
    }
    // What a schema says must be there, is: a record missing a timestamp does not validate.
    let mut broken = served::<SnapshotRecord>(json!({"snapshot-id": "s1", "instance-id": "a", "owner-id": null,
        "job-id": "j", "destination": "default", "size": 1, "sha256": "00", "manifest": {}, "created-at": at}));
    assert_valid(&component(&doc, "SnapshotRecord"), &broken, "SnapshotRecord");
    broken.as_object_mut().map(|o| o.remove("created-at"));
    assert!(!component(&doc, "SnapshotRecord").is_valid(&broken));
    broken["created-at"] = json!("yesterday");
    assert!(!component(&doc, "SnapshotRecord").is_valid(&broken), "timestamps are RFC 3339");
}

/// A router with, at each documented path and method that needs a token, a probe taking
/// what the operation is documented to read: the client's token, then a job body (when it
/// documents a request body) or the list query (when it documents `limit`). The probes answer
/// 204 when the extractors let the request through. `/healthz`, the documents and the console's
/// page are the real handlers (they need no state); the other public routes are left out (they need the
/// registry and the broker).
fn probes(doc: &Value) -> Router {
    let mut router = Router::<Clients>::new();
    for path in doc["paths"].as_object().expect("paths").keys() {
        let (mut methods, mut mounted) = (MethodRouter::<Clients>::new(), false);
        for o in operations(doc).into_iter().filter(|o| &o.path == path) {
            let filter = match o.method.as_str() {
                "get" => MethodFilter::GET,
                "post" => MethodFilter::POST,
                "patch" => MethodFilter::PATCH,
                "delete" => MethodFilter::DELETE,
                other => panic!("a method the probes do not know: {other}"),
            };
            let known: Vec<String> =
                o.query().into_iter().filter(|q| !crate::extract::PAGE_PARAMETERS.contains(&q.as_str())).collect();
            methods = match (path.as_str(), o.needs_token(), o.has_body(), o.query().contains(&"limit".to_owned())) {
                ("/healthz", ..) => methods.on(filter, crate::routes::health::healthz),
                ("/api/v1/openapi.json", ..) => methods.on(filter, super::openapi),
                ("/api/v1/asyncapi.json", ..) => methods.on(filter, crate::routes::asyncapi::asyncapi),
                ("/console", ..) => methods.on(filter, crate::console::page),
                (_, false, ..) => continue,
                (_, true, true, _) => methods.on(filter, |_: Client, _: JobBody| async { StatusCode::NO_CONTENT }),
                (_, true, false, true) => methods.on(filter, move |_: Client, q: ListParams| async move {
                    let known: Vec<&str> = known.iter().map(String::as_str).collect();
                    q.only(&known)?;
                    q.page().map(|_| StatusCode::NO_CONTENT)
                }),
                (_, true, false, false) => methods.on(filter, |_: Client| async { StatusCode::NO_CONTENT }),
            };
            mounted = true;
        }
        if mounted {
            router = router.route(path, methods);
        }
    }
    let client = dfe_shared::config::ApiClient::new("tests", hex::encode(Sha256::digest(TOKEN.as_bytes())));
    let clients: Clients = std::sync::Arc::new(crate::auth::client_keys(&[client]).expect("a client key"));
    crate::answering_problems(router).with_state(clients)
}

/// A documented path with its placeholders filled in.
fn concrete(path: &str) -> String {
    path.replace("{job-id}", "j-1")
        .replace("{instance-id}", "acme-1")
        .replace("{snapshot-id}", "s-1")
        .replace("{id}", "6b1a2c3d-0000-4000-8000-000000000001")
}

/// Sends `request` to the probes; asserts the answer is one `o` documents and, if it is an
/// error, a `Problem` with that status. Returns the status and the body.
async fn answer(doc: &Value, o: &Operation, request: Request<Body>) -> (StatusCode, Value, HeaderMap) {
    let response: Response = probes(doc).oneshot(request).await.expect("an answer");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("a body");
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status == StatusCode::NO_CONTENT {
        return (status, body, headers);
    }
    let documented =
        o.response(status).unwrap_or_else(|| panic!("{} answered {status}, undocumented: {body}", o.name()));
    if status.as_u16() >= 400 {
        assert_eq!(headers[header::CONTENT_TYPE], crate::problem::CONTENT_TYPE, "{} {status}", o.name());
        assert_valid(&component(doc, "Problem"), &body, &format!("{} {status}", o.name()));
        assert_eq!(body["status"], status.as_u16(), "{} {status}", o.name());
    } else {
        let (content_type, media) = documented["content"].as_object().and_then(|c| c.iter().next()).expect("content");
        assert_eq!(headers[header::CONTENT_TYPE], content_type.as_str(), "{} {status}", o.name());
        assert_valid(&validator(doc, &media["schema"]), &body, &format!("{} {status}", o.name()));
    }
    (status, body, headers)
}

fn request(o: &Operation, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(o.method.to_uppercase().as_str()).uri(uri)
}

#[tokio::test]
async fn a_request_without_an_accepted_token_is_the_documented_401() {
    let doc = doc();
    for o in operations(&doc).into_iter().filter(Operation::needs_token) {
        for authorization in [None, Some("Bearer not-the-token"), Some("Basic dGVzdHM6dGVzdHM="), Some("Bearer ")] {
            let mut r = request(&o, &concrete(&o.path));
            if let Some(a) = authorization {
                r = r.header(header::AUTHORIZATION, a);
            }
            let (status, body, headers) = answer(&doc, &o, r.body(Body::empty()).expect("a request")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{} with {authorization:?}: {body}", o.name());
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
            assert_eq!(body["type"], "urn:dfe:problem:unauthorized");
        }
    }
}

#[tokio::test]
async fn a_body_not_declared_as_json_is_the_documented_415_and_one_over_64_kib_the_documented_413() {
    let doc = doc();
    let bodies = operations(&doc).into_iter().filter(Operation::has_body).collect::<Vec<_>>();
    assert_eq!(bodies.len(), 10, "seven job kinds, the reconciliation, an instance's expiry and the pruning");
    let too_large = || vec![b' '; MAX_JOB_BYTES + 1];
    for o in bodies {
        let post = |content_type: Option<&str>| {
            let r = request(&o, &o.path).header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
            match content_type {
                Some(t) => r.header(header::CONTENT_TYPE, t),
                None => r,
            }
        };
        for declared in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            let r = post(Some(declared)).body(Body::from("{}")).expect("a request");
            let (status, body, _) = answer(&doc, &o, r).await;
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{} as {declared}", o.name());
            assert_eq!(body["errors"][0]["field"], "Content-Type");
        }
        let declared = post(Some("application/json")).header(header::CONTENT_LENGTH, MAX_JOB_BYTES + 1);
        let streamed = post(Some("application/json"));
        for r in [declared.body(Body::from(too_large())), streamed.body(chunks(too_large()))] {
            let (status, body, headers) = answer(&doc, &o, r.expect("a request")).await;
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", o.name());
            assert_eq!(body["errors"][0]["field"], "body");
            assert_eq!(headers[header::CONNECTION], "close", "{}: the unread rest ends the connection", o.name());
        }
        // What the document says is accepted is: JSON, `application/*+json`, or no type at all.
        for declared in [Some("application/json; charset=utf-8"), Some("application/vnd.dfe+json"), None] {
            let r = post(declared).body(Body::from(vec![b' '; MAX_JOB_BYTES])).expect("a request");
            let (status, body, _) = answer(&doc, &o, r).await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{} as {declared:?}: {body}", o.name());
        }
    }
}

/// `bytes` as a stream of chunks, sent without a Content-Length.
fn chunks(bytes: Vec<u8>) -> Body {
    Body::from_stream(tokio_util::io::ReaderStream::new(std::io::Cursor::new(bytes)))
}

#[tokio::test]
async fn a_list_query_out_of_range_unknown_or_repeated_is_the_documented_422_or_400() {
    let doc = doc();
    let lists = operations(&doc).into_iter().filter(|o| o.query().contains(&"limit".to_owned())).collect::<Vec<_>>();
    assert_eq!(lists.len(), 5, "jobs, instances, snapshots, hosts, database servers");
    for o in lists {
        let get = |query: &str| {
            request(&o, &format!("{}?{query}", o.path))
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .expect("a request")
        };
        for (query, expected, field) in [
            ("limit=0", StatusCode::UNPROCESSABLE_ENTITY, "limit"),
            ("limit=1001", StatusCode::UNPROCESSABLE_ENTITY, "limit"),
            ("limit=ten", StatusCode::UNPROCESSABLE_ENTITY, "limit"),
            ("colour=red", StatusCode::UNPROCESSABLE_ENTITY, "colour"),
            ("limit=5&limit=6", StatusCode::BAD_REQUEST, "limit"),
            ("cursor=not-a-cursor", StatusCode::UNPROCESSABLE_ENTITY, "cursor"),
            ("cursor=", StatusCode::UNPROCESSABLE_ENTITY, "cursor"),
            ("cursor=MTIz", StatusCode::UNPROCESSABLE_ENTITY, "cursor"),
        ] {
            let (status, body, _) = answer(&doc, &o, get(query)).await;
            assert_eq!(status, expected, "{}?{query}: {body}", o.name());
            assert_eq!(body["errors"][0]["field"], field, "{}?{query}", o.name());
        }
        let cursor = crate::extract::cursor::encode(&dfe_registry::After {
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            id: "acme-1".into(),
        });
        let documented = o.query().into_iter().map(|q| match q.as_str() {
            "cursor" => format!("cursor={cursor}"),
            q => format!("{q}=1"),
        });
        for query in ["limit=1", "limit=1000"].into_iter().map(str::to_owned).chain(documented) {
            let (status, body, _) = answer(&doc, &o, get(&query)).await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{}?{query} is documented, so accepted: {body}", o.name());
        }
    }
}

#[tokio::test]
async fn what_is_not_an_operation_answers_a_problem_too() {
    let doc = doc();
    let problem = component(&doc, "Problem");
    let send = |method: &str, uri: &str| {
        let r = Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        probes(&doc).oneshot(r.body(Body::empty()).expect("a request"))
    };
    let response = send("GET", "/api/v1/no-such-thing").await.expect("an answer");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()[header::CONTENT_TYPE], crate::problem::CONTENT_TYPE);
    let body: Value =
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body"))
            .expect("JSON");
    assert_valid(&problem, &body, "the fallback");
    assert_eq!(body["detail"], "no such endpoint");
    for (path, methods) in ROUTES.iter().filter(|(path, _)| !matches!(*path, "/readyz" | "/metrics")) {
        let response = send("PUT", &concrete(path)).await.expect("an answer");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "PUT {path}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], crate::problem::CONTENT_TYPE);
        let allow = response.headers()[header::ALLOW].to_str().expect("Allow").to_lowercase();
        for m in *methods {
            assert!(allow.contains(m), "PUT {path}: Allow {allow} names {m}");
        }
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        assert_valid(&problem, &serde_json::from_slice(&bytes).expect("JSON"), &format!("PUT {path}"));
    }
}

#[tokio::test]
async fn liveness_and_the_document_answer_as_documented_without_a_token() {
    let doc = doc();
    let served = ["/healthz", "/api/v1/openapi.json", "/api/v1/asyncapi.json"];
    for o in operations(&doc).into_iter().filter(|o| served.contains(&o.path.as_str())) {
        let (status, body, _) = answer(&doc, &o, request(&o, &o.path).body(Body::empty()).expect("a request")).await;
        assert_eq!(status, StatusCode::OK, "{}", o.name());
        if o.path == "/api/v1/openapi.json" {
            assert_eq!(body, doc);
        }
        if o.path == "/api/v1/asyncapi.json" {
            assert_eq!(&body, crate::routes::asyncapi::document());
        }
    }
}
