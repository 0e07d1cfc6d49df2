//! Process plumbing shared by the binaries: logging, traces and the shutdown signal.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`), as text or, with
//! `log.format = "json"`, one JSON object a line ([`JsonLines`]) whose top level holds
//! `timestamp`, `level`, `message`, `target`, the event's fields and the fields of every span
//! it is in: a line written inside a job's span carries `job_id`, `instance_id` and
//! `trace_id`. With the `otlp` feature (the api and the worker), spans are OpenTelemetry
//! spans too ([`init_services`]), exported over OTLP/HTTP when `telemetry.otlp-endpoint` is
//! set, and W3C `traceparent` values carry a trace across processes ([`traceparent`],
//! [`continue_trace`]).

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The filter of every binary: `RUST_LOG`, else `info` with the chatty dependencies quieter.
fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=warn,bollard=warn,tokio_postgres=warn"))
}

/// Installs the global subscriber: text lines on stderr, no traces. Safe to call once per
/// process.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// One JSON object a line: `timestamp` (RFC 3339, UTC), `level`, `target`, `message` and the
/// event's other fields, and the fields of the spans the event is in (outermost first, the
/// event's own fields win), all at the top level. Span fields are read as `JsonFields`
/// formats them, so the subscriber's field formatter must be `JsonFields`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        let now = time::OffsetDateTime::now_utc();
        let timestamp = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::String(meta.level().as_str().to_owned()));
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else { continue };
                // A span without fields has an empty text, which is no object: nothing to add.
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        line.entry("message").or_insert(Value::String(String::new()));
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields into a JSON object.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::Bool(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_owned(), Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
}

#[cfg(feature = "otlp")]
pub use otel::{continue_trace, init_services, trace_id, traceparent, Telemetry};

#[cfg(feature = "otlp")]
mod otel {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    use super::{filter, JsonLines};
    use crate::config::{LogConfig, LogFormat, TelemetryConfig};

    /// The trace pipeline of a service; dropping it flushes the spans not yet exported.
    pub struct Telemetry {
        provider: SdkTracerProvider,
    }

    impl Drop for Telemetry {
        fn drop(&mut self) {
            let _ = self.provider.shutdown();
        }
    }

    /// The URL spans are posted to: `endpoint` as given when it names a path, else its
    /// `/v1/traces`, as OTLP/HTTP collectors serve it.
    fn traces_url(endpoint: &str) -> String {
        let trimmed = endpoint.trim().trim_end_matches('/');
        match url::Url::parse(trimmed) {
            Ok(u) if u.path() != "/" && !u.path().is_empty() => trimmed.to_owned(),
            _ => format!("{trimmed}/v1/traces"),
        }
    }

    /// Installs the global subscriber of a service (`service` names it in the traces): logs
    /// as `log` says, and every span an OpenTelemetry span as well, so that each has a trace
    /// id and the ones of a job share its trace. With `telemetry.otlp-endpoint` set they are
    /// exported over OTLP/HTTP (protobuf) in batches; else they are only used for their ids.
    pub fn init_services(service: &'static str, log: &LogConfig, telemetry: &TelemetryConfig) -> Telemetry {
        let mut builder = SdkTracerProvider::builder()
            .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build());
        let mut exporting = None;
        if let Some(endpoint) = telemetry.otlp_endpoint.as_deref().filter(|e| !e.trim().is_empty()) {
            // The exporter's reqwest is built with rustls but no provider of its own (the
            // snapshot store's S3 client asks for that, and cargo unifies the features), so
            // the process's provider must exist before the client does: ring, as elsewhere.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let url = traces_url(endpoint);
            match opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(url.clone()).build() {
                Ok(exporter) => {
                    builder = builder.with_batch_exporter(exporter);
                    exporting = Some(Ok(url));
                }
                Err(e) => exporting = Some(Err(format!("{url}: {e}"))),
            }
        }
        let provider = builder.build();
        let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
        let fmt = match log.format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(JsonLines)
                .boxed(),
        };
        let _ = tracing_subscriber::registry().with(filter()).with(fmt).with(otel).try_init();
        match exporting {
            Some(Ok(url)) => tracing::info!(%url, "exporting traces over OTLP/HTTP"),
            Some(Err(e)) => tracing::warn!(error = %e, "telemetry.otlp-endpoint is not usable; no traces are exported"),
            None => {}
        }
        Telemetry { provider }
    }

    /// The W3C `traceparent` of `span` (to carry its trace to another process), if it is
    /// part of a trace.
    pub fn traceparent(span: &tracing::Span) -> Option<String> {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.remove("traceparent")
    }

    /// Makes `span` part of the trace `traceparent` names (a child of the span that sent
    /// it); an absent or unreadable value leaves it the root of a trace of its own. Call it
    /// before the span is first entered.
    pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
        let Some(value) = traceparent else { return };
        let carrier = HashMap::from([("traceparent".to_owned(), value.trim().to_owned())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }

    /// The trace id of `span` (32 lowercase hex digits), if it is part of a trace.
    pub fn trace_id(span: &tracing::Span) -> Option<String> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_traces_url_is_the_collectors_v1_traces_unless_a_path_is_given() {
            assert_eq!(traces_url("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/traces");
            assert_eq!(traces_url("http://127.0.0.1:4318/"), "http://127.0.0.1:4318/v1/traces");
            assert_eq!(traces_url("http://c:4318/otlp/v1/traces"), "http://c:4318/otlp/v1/traces");
        }

        #[test]
        fn a_span_continues_the_trace_of_a_traceparent_and_hands_it_on() {
            let provider = SdkTracerProvider::builder().build();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tests")));
            tracing::subscriber::with_default(subscriber, || {
                let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
                let span = tracing::info_span!("job");
                continue_trace(&span, Some(incoming));
                assert_eq!(trace_id(&span).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
                let outgoing = traceparent(&span).expect("a traceparent");
                assert!(outgoing.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{outgoing}");
                assert!(!outgoing.contains("00f067aa0ba902b7"), "the span's own id is handed on: {outgoing}");
                let root = tracing::info_span!("request");
                let id = trace_id(&root).expect("a root span starts a trace");
                assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
            });
        }
    }
}

/// A token cancelled on SIGTERM or SIGINT: what the services run until. Every task of a
/// service holds a clone (or a child) and stops when it is cancelled.
pub fn shutdown_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    token
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested");
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::ErrorKind::Other)?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn json_lines_carry_the_fields_of_the_event_and_of_its_spans_at_the_top_level() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let job = tracing::info_span!("job", job_id = "j-1", instance_id = tracing::field::Empty, trace_id = "t");
            let _entered = job.enter();
            job.record("instance_id", "acme-1");
            tracing::info_span!("step", step = "storage").in_scope(|| tracing::info!(attempt = 2, "step done"));
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("UTF-8");
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON object");
        assert_eq!(line["message"], "step done");
        assert_eq!(line["level"], "INFO");
        assert_eq!(
            (&line["job_id"], &line["instance_id"], &line["trace_id"]),
            (&"j-1".into(), &"acme-1".into(), &"t".into())
        );
        assert_eq!((&line["step"], &line["attempt"]), (&"storage".into(), &2.into()));
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
        assert!(line["target"].as_str().is_some(), "{line}");
    }
}
