//! Request parts read the way the contract defines them, each refusal a problem+json that
//! names what is wrong: job bodies (content type, size), list queries (known parameters,
//! each once, `limit` in range) and path ids (an id that breaks its rule names nothing).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use dfe_registry::Page;
use dfe_shared::ids::{FieldError, InstanceId, OwnerId, Tag};
use dfe_shared::job::MAX_JOB_BYTES;

use crate::problem::Problem;

/// A job body: at most [`MAX_JOB_BYTES`], declared as JSON or not declared at all.
///
/// A missing `Content-Type` is accepted because simple clients (and `curl --data-binary`
/// without `-H`) send none; `application/json` and any `application/*+json` are JSON; any
/// other declared type is a 415, so that a form or a text body is never taken for a job
/// by accident.
pub struct JobBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JobBody {
    type Rejection = Problem;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Problem> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default();
            if !is_json(ct) {
                return Err(Problem::unsupported_media_type(
                    "a job body must be sent as application/json (or with no Content-Type)",
                ));
            }
        }
        let too_large = || Problem::too_large(format!("a job body is at most {MAX_JOB_BYTES} bytes"));
        if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
            if len.to_str().ok().and_then(|l| l.parse::<usize>().ok()).is_some_and(|l| l > MAX_JOB_BYTES) {
                return Err(too_large());
            }
        }
        // A chunked body is cut off at the limit instead of being read whole.
        match axum::body::to_bytes(req.into_body(), MAX_JOB_BYTES).await {
            Ok(bytes) => Ok(JobBody(bytes)),
            Err(e) if is_length_limit(&e) => Err(too_large()),
            Err(_) => Err(Problem::malformed("the request body could not be read")),
        }
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Whether a `Content-Type` value names JSON: `application/json` or `application/<x>+json`,
/// with any parameters (`; charset=utf-8`).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The query of a list endpoint, checked: only the parameters that endpoint knows, each
/// given once, with valid values.
#[derive(Debug, Default)]
pub struct ListParams {
    params: BTreeMap<String, String>,
}

/// Default and bounds of `limit`.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest `limit`.
pub const MAX_LIMIT: i64 = 1000;

impl<S: Send + Sync> FromRequestParts<S> for ListParams {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        let mut params = BTreeMap::new();
        for (key, value) in url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()) {
            if key.is_empty() {
                continue;
            }
            if params.insert(key.to_string(), value.into_owned()).is_some() {
                return Err(Problem::malformed_field(FieldError::new(
                    key.to_string(),
                    "is given more than once; give each query parameter at most once",
                )));
            }
        }
        Ok(ListParams { params })
    }
}

/// The parameters every list takes besides its filters.
pub const PAGE_PARAMETERS: &[&str] = &["limit", "cursor"];

impl ListParams {
    /// Refuses any parameter not in `known` or [`PAGE_PARAMETERS`] (a typo must not silently
    /// list everything).
    pub fn only(&self, known: &[&str]) -> Result<(), Problem> {
        match self.params.keys().find(|k| !known.contains(&k.as_str()) && !PAGE_PARAMETERS.contains(&k.as_str())) {
            Some(unknown) => {
                let mut all: Vec<&str> = known.to_vec();
                all.extend(PAGE_PARAMETERS);
                let name = if unknown.chars().any(char::is_control) { "query" } else { unknown.as_str() };
                Err(Problem::invalid_field(FieldError::new(
                    name,
                    format!("is not a parameter of this list (known: {})", all.join(", ")),
                )))
            }
            None => Ok(()),
        }
    }

    /// `limit`: default [`DEFAULT_LIMIT`], 1 to [`MAX_LIMIT`]; anything else is a 422.
    pub fn limit(&self) -> Result<i64, Problem> {
        let Some(raw) = self.params.get("limit") else { return Ok(DEFAULT_LIMIT) };
        raw.trim().parse::<i64>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
            Problem::invalid_field(FieldError::new("limit", format!("must be an integer from 1 to {MAX_LIMIT}")))
        })
    }

    /// The page asked for: `limit` and `cursor` (the `next-cursor` of the previous page).
    pub fn page(&self) -> Result<Page, Problem> {
        let after = self.get("cursor").map(cursor::decode).transpose()?;
        Ok(Page { limit: self.limit()?, after })
    }

    /// An instance id filter, valid or a 422 naming `field`.
    pub fn instance_id(&self, field: &str) -> Result<Option<InstanceId>, Problem> {
        self.params
            .get(field)
            .map(|v| InstanceId::parse(v).map_err(|m| Problem::invalid_field(FieldError::new(field, m))))
            .transpose()
    }

    /// An owner id filter in its textual form (numbers in decimal), or a 422.
    pub fn owner_id(&self, field: &str) -> Result<Option<String>, Problem> {
        self.params
            .get(field)
            .map(|v| {
                OwnerId::parse_cli(v)
                    .map(|o| o.as_text())
                    .map_err(|m| Problem::invalid_field(FieldError::new(field, m)))
            })
            .transpose()
    }

    /// A boolean flag (`true`/`false`, `1`/`0`), absent = false.
    pub fn flag(&self, field: &str) -> Result<bool, Problem> {
        match self.params.get(field).map(String::as_str) {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1" | "") => Ok(true),
            Some(_) => Err(Problem::invalid_field(FieldError::new(field, "must be true or false"))),
        }
    }

    /// A value of a type with a strict `FromStr` (a job state, a job kind), or a 422.
    pub fn parsed<T: std::str::FromStr>(&self, field: &str) -> Result<Option<T>, Problem>
    where
        T::Err: std::fmt::Display,
    {
        self.params
            .get(field)
            .map(|v| v.parse::<T>().map_err(|e| Problem::invalid_field(FieldError::new(field, e.to_string()))))
            .transpose()
    }

    /// A raw value, for parameters checked by the caller.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.params.get(field).map(String::as_str)
    }
}

/// Cursors: where the next page of a list starts, as `next-cursor` hands it out. Opaque to
/// clients: base64url (no padding) of `<created_at in µs since the epoch>/<id>` of the last row
/// of the page before, the key the registry orders lists by.
pub mod cursor {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use dfe_registry::After;
    use dfe_shared::ids::FieldError;

    use crate::problem::Problem;

    /// The longest id a cursor carries.
    const MAX_ID: usize = 255;

    /// The cursor of the page after `after`.
    pub fn encode(after: &After) -> String {
        let micros = after.created_at.unix_timestamp_nanos() / 1000;
        URL_SAFE_NO_PAD.encode(format!("{micros}/{}", after.id))
    }

    /// Reads a cursor; anything this API did not hand out is a 422 naming `cursor`.
    pub fn decode(cursor: &str) -> Result<After, Problem> {
        let invalid = || {
            Problem::invalid_field(FieldError::new(
                "cursor",
                "is not a cursor of this list (pass the `next-cursor` of the page before, unchanged)",
            ))
        };
        let bytes = URL_SAFE_NO_PAD.decode(cursor.trim().as_bytes()).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (micros, id) = text.split_once('/').ok_or_else(invalid)?;
        let micros: i128 = micros.parse().map_err(|_| invalid())?;
        if id.is_empty() || id.len() > MAX_ID || id.chars().any(char::is_control) {
            return Err(invalid());
        }
        let created_at = time::OffsetDateTime::from_unix_timestamp_nanos(micros.checked_mul(1000).ok_or_else(invalid)?)
            .map_err(|_| invalid())?;
        Ok(After { created_at, id: id.to_owned() })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn cursors_round_trip_and_anything_else_is_refused() {
            let at = time::OffsetDateTime::from_unix_timestamp_nanos(1_767_225_600_123_456_000).expect("a time");
            let after = After { created_at: at, id: "acme-1".into() };
            let cursor = encode(&after);
            assert!(cursor.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{cursor}");
            assert_eq!(decode(&cursor).expect("decodes"), after);
            for bad in ["", "!!", "bm9zbGFzaA", &URL_SAFE_NO_PAD.encode("x/acme"), &URL_SAFE_NO_PAD.encode("1/")] {
                assert!(decode(bad).is_err(), "{bad:?}");
            }
            let huge = URL_SAFE_NO_PAD.encode(format!("{}/a", i128::MAX));
            assert!(decode(&huge).is_err());
        }
    }
}

/// A path id that cannot exist answers 404 without a registry round trip, and without
/// echoing the value (it may hold anything, NUL included).
pub fn instance_path(id: &str) -> Result<InstanceId, Problem> {
    InstanceId::parse(id).map_err(|_| Problem::not_found("no such instance (an instance id is a DNS label)"))
}

/// A job id from the path, or a 404.
pub fn job_path(id: &str) -> Result<Tag, Problem> {
    Tag::parse(id).map_err(|_| Problem::not_found("no such job (a job id is 1-64 of [A-Za-z0-9._-])"))
}

/// A snapshot id from the path, or a 404.
pub fn snapshot_path(id: &str) -> Result<Tag, Problem> {
    Tag::parse(id).map_err(|_| Problem::not_found("no such snapshot (a snapshot id is 1-64 of [A-Za-z0-9._-])"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        for ok in
            ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/vnd.dfe+json"]
        {
            assert!(is_json(ok), "{ok}");
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "json", ""] {
            assert!(!is_json(bad), "{bad}");
        }
    }

    #[test]
    fn path_ids_that_break_their_rule_are_not_found() {
        assert!(instance_path("a\u{0}b").is_err());
        assert!(instance_path("acme").is_ok());
        assert!(job_path("a/b").is_err());
        assert!(snapshot_path("").is_err());
    }

    #[test]
    fn limits_outside_the_range_are_refused() {
        let with = |v: &str| ListParams { params: BTreeMap::from([("limit".to_owned(), v.to_owned())]) };
        assert_eq!(with("5").limit().ok(), Some(5));
        for bad in ["0", "1001", "abc", "-1", ""] {
            assert!(with(bad).limit().is_err(), "{bad}");
        }
        assert_eq!(ListParams::default().limit().ok(), Some(DEFAULT_LIMIT));
        assert!(with("5").only(&["instance-id"]).is_ok());
        let unknown = ListParams { params: BTreeMap::from([("colour".to_owned(), "red".to_owned())]) };
        assert!(unknown.only(&["instance-id"]).is_err());
    }
}
