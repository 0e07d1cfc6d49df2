//! A stand-in OpenTelemetry collector: an OTLP/HTTP (protobuf) receiver on a free loopback
//! port that decodes what the services export (`POST /v1/traces`) and keeps every span, so a
//! test can follow one trace across the api and the workers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;

/// A span as received.
#[derive(Debug, Clone)]
pub struct Span {
    /// The service that exported it (its resource's `service.name`).
    pub service: String,
    /// Its name.
    pub name: String,
    /// Its trace id, 32 hex digits.
    pub trace_id: String,
    /// Its id, 16 hex digits.
    pub span_id: String,
    /// Its parent's id (empty for a root span).
    pub parent_span_id: String,
    /// Its string attributes, `key=value`.
    pub attributes: Vec<String>,
}

/// The receiver; it stops with the test.
pub struct Collector {
    /// Its base URL (`telemetry.otlp-endpoint`).
    pub endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    /// Starts a receiver on 127.0.0.1 and a free port.
    pub async fn start() -> Result<Collector> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(receive)).with_state(spans.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Collector { endpoint, spans })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until the spans of `trace_id` include all of `names` (each from the service
    /// named with it); returns the trace's spans.
    pub async fn wait_for(&self, trace_id: &str, names: &[(&str, &str)], timeout: Duration) -> Result<Vec<Span>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let trace: Vec<Span> = self.spans().into_iter().filter(|s| s.trace_id == trace_id).collect();
            let missing: Vec<&(&str, &str)> = names
                .iter()
                .filter(|(service, name)| !trace.iter().any(|s| s.service == *service && s.name == *name))
                .collect();
            if missing.is_empty() {
                return Ok(trace);
            }
            if tokio::time::Instant::now() > deadline {
                let seen: Vec<String> =
                    self.spans().iter().map(|s| format!("{} {} {}", s.service, s.name, s.trace_id)).collect();
                bail!("trace {trace_id} lacks {missing:?} after {timeout:?}; spans received: {seen:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn receive(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut received = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(any_value)
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                received.push(Span {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| format!("{}={}", kv.key, kv.value.as_ref().map(any_value).unwrap_or_default()))
                        .collect(),
                });
            }
        }
    }
    if let Ok(mut all) = spans.lock() {
        all.extend(received);
    }
    (StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
}

fn any_value(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}
