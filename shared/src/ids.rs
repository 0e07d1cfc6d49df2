//! Validated identifiers. Each type can only hold a valid value, so code that receives one
//! never re-checks it; deserializing an invalid value fails with a message naming the rule.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A field of a request that is missing, unknown or invalid; `field` is its kebab-case name
/// as the client wrote it, so an API answer can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The kebab-case name of the field (e.g. `instance-id`), or `body` for the whole.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// An instance id: 3-63 characters, `^[a-z][a-z0-9-]*[a-z0-9]$`, a DNS label. It names the
/// container, the volume and the database, so nothing else may pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "schema",
    schema(pattern = "^[a-z][a-z0-9-]*[a-z0-9]$", min_length = 3, max_length = 63, example = "acme-1")
)]
pub struct InstanceId(String);

impl InstanceId {
    /// Validates an instance id.
    pub fn parse(s: &str) -> Result<Self, String> {
        let len = s.len();
        if !(3..=63).contains(&len) {
            return Err(format!("must be 3 to 63 characters long, got {len}"));
        }
        let bytes = s.as_bytes();
        if !bytes[0].is_ascii_lowercase() {
            return Err("must start with a lowercase letter (a-z)".into());
        }
        if bytes[len - 1] == b'-' {
            return Err("must not end with '-'".into());
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
            return Err(format!("may contain only lowercase letters, digits and '-' (a DNS label), found {c:?}"));
        }
        Ok(InstanceId(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id with `-` replaced by `_`: the stem of the database and role names.
    pub fn snake(&self) -> String {
        self.0.replace('-', "_")
    }
}

impl TryFrom<String> for InstanceId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        InstanceId::parse(&s)
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> String {
        id.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a free-form tag (`job-id`, `guest-location`, `cluster-id`, owner ids given as text):
/// 1-64 characters of `[A-Za-z0-9._-]`.
fn check_tag(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err(format!("must be 1 to 64 characters long, got {}", s.len()));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("may contain only letters, digits, '.', '_' and '-', found {c:?}"));
    }
    Ok(())
}

/// A tag: 1-64 characters of `[A-Za-z0-9._-]`. Used for job ids, guest locations and cluster
/// ids, which end up in logs, labels and URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", schema(pattern = "^[A-Za-z0-9._-]{1,64}$", min_length = 1, max_length = 64))]
pub struct Tag(String);

impl Tag {
    /// Validates a tag.
    pub fn parse(s: &str) -> Result<Self, String> {
        check_tag(s).map(|()| Tag(s.to_owned()))
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Tag {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Tag::parse(&s)
    }
}

impl From<Tag> for String {
    fn from(t: Tag) -> String {
        t.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job id: a [`Tag`]; generated ones are UUIDs.
pub type JobId = Tag;

/// An owner id as DFE had it: a string of 1-64 `[A-Za-z0-9._-]`, or a non-negative integer.
/// It keeps its JSON form so events echo what the client sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum OwnerId {
    /// A numeric owner id.
    Number(u64),
    /// A textual owner id.
    #[cfg_attr(feature = "schema", schema(value_type = Tag))]
    Text(String),
}

impl OwnerId {
    /// The owner id as text (numbers in decimal), for labels and registry columns.
    pub fn as_text(&self) -> String {
        match self {
            OwnerId::Number(n) => n.to_string(),
            OwnerId::Text(s) => s.clone(),
        }
    }

    /// Parses the CLI's textual form: digits become a number, anything else a checked string.
    pub fn parse_cli(s: &str) -> Result<Self, String> {
        if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = s.parse() {
                return Ok(OwnerId::Number(n));
            }
        }
        check_tag(s).map(|()| OwnerId::Text(s.to_owned()))
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_text())
    }
}

impl<'de> Deserialize<'de> for OwnerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => {
                check_tag(&s).map_err(D::Error::custom)?;
                Ok(OwnerId::Text(s))
            }
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(OwnerId::Number)
                .ok_or_else(|| D::Error::custom(format!("must be a non-negative integer or a string, got {n}"))),
            other => Err(D::Error::custom(format!(
                "must be a string of 1 to 64 characters [A-Za-z0-9._-] or a non-negative integer, got {}",
                json_kind(&other)
            ))),
        }
    }
}

/// The trace id a W3C `traceparent` value names (`00-<trace-id>-<span-id>-<flags>`): 32
/// lowercase hex digits, not all zero.
pub fn trace_id_of_traceparent(traceparent: &str) -> Option<String> {
    let id = traceparent.trim().split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| id.to_ascii_lowercase())
}

/// The JSON kind of a value, for error messages that must not echo the value itself.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_dns_labels() {
        for ok in ["abc", "acme-1", "a1b", &"a".repeat(63)] {
            assert!(InstanceId::parse(ok).is_ok(), "{ok} should be valid");
        }
        for bad in ["Acme", "../x", "a;drop", "ab", "1abc", "abc-", "a_b_c", &"a".repeat(64), ""] {
            assert!(InstanceId::parse(bad).is_err(), "{bad} should be invalid");
        }
        assert_eq!(InstanceId::parse("acme-prod-1").map(|i| i.snake()), Ok("acme_prod_1".into()));
    }

    #[test]
    fn owner_ids_are_tags_or_non_negative_integers() {
        let n: OwnerId = serde_json::from_str("42").expect("number");
        assert_eq!(n, OwnerId::Number(42));
        assert_eq!(serde_json::to_string(&n).expect("ser"), "42");
        let s: OwnerId = serde_json::from_str("\"acme.co_1\"").expect("string");
        assert_eq!(s.as_text(), "acme.co_1");
        assert!(serde_json::from_str::<OwnerId>("-1").is_err());
        assert!(serde_json::from_str::<OwnerId>("\"\"").is_err());
        assert!(serde_json::from_str::<OwnerId>("\"a b\"").is_err());
        assert!(serde_json::from_str::<OwnerId>("null").is_err());
        assert_eq!(OwnerId::parse_cli("7"), Ok(OwnerId::Number(7)));
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id_of_traceparent(tp).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id_of_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id_of_traceparent("garbage"), None);
        assert_eq!(OwnerId::parse_cli("x7"), Ok(OwnerId::Text("x7".into())));
    }
}
