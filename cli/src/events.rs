//! Reading and showing events, and `dfe events`.
//!
//! Bodies are read as plain JSON rather than as `dfe_shared::event::Event`: a tail should
//! show an event it does not fully understand (another version's, a hand-published one)
//! instead of stopping at it.

use std::io::Write;

use anyhow::Context;
use dfe_shared::event::EventError;
use serde_json::{Map, Value};

use crate::args::EventsArgs;
use crate::broker::{next_body, Broker};
use crate::settings::Settings;

/// Result keys shown first, in this order; others follow alphabetically.
const RESULT_ORDER: &[&str] =
    &["instance-id", "host", "resource-uri", "container", "volume", "database", "snapshot", "snapshot-id", "path"];

/// How long the one-line summary of a result may grow.
const SUMMARY_MAX: usize = 120;

/// An event body, read leniently: any member may be missing.
#[derive(Debug, Clone)]
pub struct EventView {
    body: Value,
}

impl EventView {
    /// Parses a body; `None` when it is not a JSON object.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        match serde_json::from_slice(bytes) {
            Ok(body @ Value::Object(_)) => Some(EventView { body }),
            _ => None,
        }
    }

    fn str_of(&self, key: &str) -> Option<&str> {
        self.body.get(key).and_then(Value::as_str)
    }

    /// `event`: the event name.
    pub fn name(&self) -> &str {
        self.str_of("event").unwrap_or("?")
    }

    /// `event-id`, for dropping redelivered duplicates.
    pub fn event_id(&self) -> Option<&str> {
        self.str_of("event-id")
    }

    /// `job-id`.
    pub fn job_id(&self) -> Option<&str> {
        self.str_of("job-id")
    }

    /// `instance-id`.
    pub fn instance_id(&self) -> Option<&str> {
        self.str_of("instance-id")
    }

    /// `occurred-at`.
    pub fn occurred_at(&self) -> Option<&str> {
        self.str_of("occurred-at")
    }

    /// `result`, when it is an object.
    pub fn result(&self) -> Option<&Map<String, Value>> {
        self.body.get("result").and_then(Value::as_object)
    }

    /// `error.code` and `error.message`, when the event carries an error.
    pub fn error(&self) -> Option<EventError> {
        error_parts(self.body.get("error")?).map(|(code, message)| EventError { code, message })
    }

    /// The raw body.
    pub fn body(&self) -> &Value {
        &self.body
    }
}

/// `(code, message)` of an error member, which is `{code, message}` or, leniently, a string.
pub fn error_parts(error: &Value) -> Option<(String, String)> {
    match error {
        Value::Null => None,
        Value::String(s) => Some(("error".to_owned(), s.clone())),
        Value::Object(map) => {
            let text = |k: &str| map.get(k).map(scalar_text);
            Some((text("code").unwrap_or_else(|| "error".to_owned()), text("message").unwrap_or_default()))
        }
        other => Some(("error".to_owned(), other.to_string())),
    }
}

/// Whether a key may hold a secret. The worker never puts one in a result, but a display
/// that cannot show one is cheap insurance.
pub fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token"].iter().any(|s| k.contains(s))
}

/// Whether a value says nothing worth a column: null or an empty string.
pub fn is_empty(v: &Value) -> bool {
    v.is_null() || v.as_str().is_some_and(str::is_empty)
}

/// An RFC 3339 time as UTC with milliseconds, so that the lines of a tail align; any other
/// text is shown as it is.
pub fn short_time(t: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(t, &Rfc3339).map_or_else(|_| t.to_owned(), utc_millis)
}

/// A time as UTC with milliseconds: `2026-11-26T18:38:31.973Z`.
pub fn utc_millis(at: time::OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    time::format_description::parse_borrowed::<2>("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z")
        .ok()
        .and_then(|format| utc.format(&format).ok())
        .unwrap_or_else(|| utc.to_string())
}

/// A JSON value as display text: strings bare, null as `-`, others as compact JSON.
pub fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// The displayable `(key, value)` pairs of a result: known keys first, secrets never.
pub fn result_pairs(result: &Map<String, Value>) -> Vec<(String, String)> {
    // An export names its snapshot twice (`snapshot` as an import takes it, `snapshot-id`);
    // once is enough.
    let duplicate = |k: &str| k == "snapshot" && result.get("snapshot-id").is_some_and(|id| Some(id) == result.get(k));
    let mut keys: Vec<&String> = result.keys().filter(|k| !looks_secret(k) && !duplicate(k)).collect();
    keys.sort_by_key(|k| (RESULT_ORDER.iter().position(|o| o == k).unwrap_or(RESULT_ORDER.len()), k.as_str()));
    keys.into_iter()
        .filter(|k| !is_empty(&result[k.as_str()]))
        .map(|k| (k.clone(), scalar_text(&result[k.as_str()])))
        .collect()
}

/// The short summary of an event: `code: message` for a failure, else `key=value` pairs of
/// its result.
pub fn summary(event: &EventView) -> String {
    if let Some(EventError { code, message }) = event.error() {
        return shorten(&format!("{code}: {message}"));
    }
    let pairs = event.result().map(result_pairs).unwrap_or_default();
    let pairs: Vec<String> =
        pairs.into_iter().filter(|(k, _)| k != "instance-id").map(|(k, v)| format!("{k}={v}")).collect();
    shorten(&pairs.join(" "))
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= SUMMARY_MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(SUMMARY_MAX - 1).collect();
        out.push('…');
        out
    }
}

/// One line of `dfe events`: time, event name, job, instance, summary.
pub fn event_line(event: &EventView) -> String {
    let line = format!(
        "{}  {:<26}  job={}  instance={}  {}",
        event.occurred_at().map_or_else(|| "-".to_owned(), short_time),
        event.name(),
        event.job_id().unwrap_or("-"),
        event.instance_id().unwrap_or("-"),
        summary(event),
    );
    line.trim_end().to_owned()
}

/// The body as one line of `--json` output: as published when it is one line of text
/// already (keeping the publisher's member order), else re-serialized compactly; a body
/// that is not JSON is shown as text.
pub fn json_line(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains(['\n', '\r']) => text.to_owned(),
        _ => match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => v.to_string(),
            Err(_) => String::from_utf8_lossy(bytes).replace(['\n', '\r'], " "),
        },
    }
}

/// `dfe events`: prints each event until Ctrl-C or `--count`.
pub async fn run(settings: &Settings, args: &EventsArgs) -> anyhow::Result<()> {
    let mut broker = Broker::connect(&settings.amqp_url).await?;
    let mut consumer = broker.subscribe(&args.pattern).await?;
    // On stderr, so scripts reading stdout can still wait for this line to know the
    // subscription is in place.
    eprintln!(
        "listening on {} for {:?}{}",
        dfe_shared::topology::EVENTS_EXCHANGE,
        args.pattern,
        if args.count.is_some() { "" } else { " (Ctrl-C to stop)" }
    );
    let mut seen: u64 = 0;
    let mut stdout = std::io::stdout();
    // One future for the whole run: a Ctrl-C between two events is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let outcome = loop {
        let body = tokio::select! {
            body = next_body(&mut consumer) => body,
            _ = &mut ctrl_c => break Ok(()),
        };
        let broke = match body {
            Some(Ok(bytes)) => Ok(bytes),
            Some(Err(e)) => Err(e),
            None => Err(anyhow::anyhow!("RabbitMQ closed the event stream")),
        };
        let bytes = match broke {
            Ok(bytes) => bytes,
            // On a cluster the tail goes on through the next node; its private queue was on
            // the lost connection, so what was published in between is not shown.
            Err(e) if broker.nodes() > 1 => {
                eprintln!("warning: {e:#}; subscribing again through the next node (events meanwhile are missed)");
                broker = broker.reconnect().await?;
                consumer = broker.subscribe(&args.pattern).await?;
                continue;
            }
            Err(e) => break Err(e),
        };
        let line = if args.json {
            json_line(&bytes)
        } else {
            match EventView::parse(&bytes) {
                Some(event) => event_line(&event),
                None => format!("(not a JSON event: {})", shorten(&String::from_utf8_lossy(&bytes))),
            }
        };
        if writeln!(stdout, "{line}").is_err() {
            // The reader went away (e.g. `dfe events | head`): a normal end for a tail.
            break Ok(());
        }
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            break Ok(());
        }
    };
    stdout.flush().context("writing to standard output")?;
    broker.close().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(json: Value) -> EventView {
        EventView::parse(json.to_string().as_bytes()).expect("an event")
    }

    #[test]
    fn a_sub_event_line_shows_what_was_made() {
        let e = view(serde_json::json!({
            "event-id": "6b1c…", "event": "dfe.storage.provisioned", "occurred-at": "2025-01-02T03:04:05Z",
            "job-id": "j-1", "service": "dfe-worker", "instance-id": "acme-1", "owner-id": 7,
            "request": {}, "result": {"volume": "dfe-acme-1-storage", "instance-id": "acme-1"}
        }));
        assert_eq!(
            event_line(&e),
            "2025-01-02T03:04:05.000Z  dfe.storage.provisioned     job=j-1  instance=acme-1  volume=dfe-acme-1-storage"
        );
    }

    #[test]
    fn a_failure_line_shows_code_and_message() {
        let e = view(serde_json::json!({
            "event": "dfe.provision.failed", "occurred-at": "t", "job-id": "j-2", "instance-id": "acme-2",
            "result": null, "error": {"code": "image-not-found", "message": "no image dfe/x"}
        }));
        assert!(event_line(&e).ends_with("image-not-found: no image dfe/x"), "{}", event_line(&e));
    }

    #[test]
    fn results_list_known_keys_first_and_never_secrets() {
        let result = serde_json::json!({
            "zeta": 1, "container": "dfe-a", "resource-uri": "http://h/api", "db-password": "x",
            "instance-id": "a", "volume": null
        });
        let pairs = result_pairs(result.as_object().expect("object"));
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["instance-id", "resource-uri", "container", "zeta"]);
        let export = serde_json::json!({"snapshot-id": "s-1", "snapshot": "s-1", "size": 10});
        let pairs = result_pairs(export.as_object().expect("object"));
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["snapshot-id", "size"]);
    }

    #[test]
    fn long_summaries_are_shortened_and_lenient_bodies_still_show() {
        let e = view(serde_json::json!({"event": "dfe.x", "result": {"note": "y".repeat(500)}}));
        assert_eq!(summary(&e).chars().count(), SUMMARY_MAX);
        assert!(event_line(&e).starts_with("-  dfe.x"));
        assert!(EventView::parse(b"[1,2]").is_none());
        assert_eq!(error_parts(&Value::String("boom".into())), Some(("error".into(), "boom".into())));
    }

    #[test]
    fn times_are_shown_in_utc_to_the_millisecond() {
        assert_eq!(short_time("2026-11-26T18:21:32.49278795Z"), "2026-11-26T18:21:32.492Z");
        assert_eq!(short_time("2026-11-26T19:21:32+01:00"), "2026-11-26T18:21:32.000Z");
        assert_eq!(short_time("yesterday"), "yesterday");
    }

    #[test]
    fn json_output_is_one_line_per_event_in_the_publishers_order() {
        assert_eq!(json_line(br#"{"z":1,"a":2}"#), r#"{"z":1,"a":2}"#);
        assert_eq!(json_line(b"{\n  \"a\": 1\n}"), r#"{"a":1}"#);
        assert_eq!(json_line(b"not\njson"), "not json");
    }
}
