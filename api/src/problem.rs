//! Errors as RFC 9457 `application/problem+json`: the one place where failures reach API
//! clients. Internals are logged here and never shown.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dfe_shared::ids::FieldError;
use serde::Serialize;

/// The content type of every error answer.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// An error answer.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<FieldError>,
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, kind, title, detail: detail.into(), errors: Vec::new() }
    }

    /// 400: the body is not JSON.
    pub fn malformed(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "malformed-request", "Malformed request", detail)
    }

    /// 400 naming a query parameter or header that cannot be read at all.
    pub fn malformed_field(e: FieldError) -> Problem {
        let mut p = Problem::malformed(e.to_string());
        p.errors.push(e);
        p
    }

    /// 413: the body is larger than a job may be.
    pub fn too_large(detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", "Request body too large", detail);
        p.errors.push(FieldError::new("body", p.detail.clone()));
        p
    }

    /// 415: the body is declared as something other than JSON.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            detail,
        );
        p.errors.push(FieldError::new("Content-Type", p.detail.clone()));
        p
    }

    /// Any other status, for answers the router makes itself (405, …), turned into a problem.
    pub fn status(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem::new(status, "http", status.canonical_reason().unwrap_or("Error"), detail)
    }

    /// 401: no or unknown bearer token.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", detail)
    }

    /// 403: the token lacks a scope, or may not act for an owner.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 409.
    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    /// A job refused by the instance's state: 404 when it does not exist, else 409; the
    /// problem type is the refusal's code (`…:instance-exists`, `…:instance-busy`).
    pub fn refused(r: &dfe_registry::Refusal) -> Problem {
        let status = if r.code == "instance-not-found" { StatusCode::NOT_FOUND } else { StatusCode::CONFLICT };
        let title = if status == StatusCode::NOT_FOUND { "Not found" } else { "Conflict" };
        Problem::new(status, r.code, title, r.message.clone())
    }

    /// 422 naming the field.
    pub fn invalid_field(e: FieldError) -> Problem {
        let mut p = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", "Invalid field", e.to_string());
        p.errors.push(e);
        p
    }

    /// 503: the job could not be recorded (nothing was accepted). The cause is logged.
    pub fn unavailable(detail: impl Into<String>, cause: &dyn std::error::Error) -> Problem {
        tracing::error!(error = %chain(cause), "request failed on a dependency");
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail)
    }

    /// 503 of `/readyz`: a dependency does not answer (nothing to log: the probe asked).
    pub fn not_ready(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail)
    }

    /// 500 for anything unexpected. The cause is logged.
    pub fn internal(cause: &dyn std::error::Error) -> Problem {
        tracing::error!(error = %chain(cause), "internal error");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", "see the dfe-api log")
    }
}

/// The answer to a handler that panicked (the panic itself is logged).
pub fn from_panic(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", "see the dfe-api log").into_response()
}

/// Turns an error answer that is not problem+json (made by the router or an extractor of
/// axum's, e.g. a 405 or an undecodable path) into one, keeping its status and headers.
pub async fn problemize(response: Response) -> Response {
    let status = response.status();
    let is_problem =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(CONTENT_TYPE.as_bytes()));
    if status.as_u16() < 400 || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    let detail = match text {
        Ok(t) if !t.is_empty() => t,
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let mut answer = Problem::status(status, detail).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    answer
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl From<dfe_shared::Error> for Problem {
    fn from(e: dfe_shared::Error) -> Problem {
        match e {
            dfe_shared::Error::Json(j) => Problem::malformed(format!("the body is not valid JSON: {j}")),
            dfe_shared::Error::Field(f) => Problem::invalid_field(f),
            e @ dfe_shared::Error::TooLarge { .. } => Problem::too_large(e.to_string()),
            // The broker is away: worth retrying, not a bug.
            other if other.is_transient() => Problem::unavailable("a dependency is not reachable; retry later", &other),
            other => Problem::internal(&other),
        }
    }
}

impl From<dfe_registry::Error> for Problem {
    fn from(e: dfe_registry::Error) -> Problem {
        // A value the registry cannot store (a data exception) is the request's fault, and
        // validation should have caught it: logged, so that it can be.
        if e.sqlstate().is_some_and(|c| c.starts_with("22")) {
            tracing::warn!(error = %chain(&e), "the registry refused a value of a request");
            return Problem::invalid_field(FieldError::new("body", "holds a value the registry cannot store"));
        }
        if e.is_transient() {
            return Problem::unavailable("the registry is not reachable; retry later", &e);
        }
        Problem::internal(&e)
    }
}

/// An RFC 9457 problem: the body of every error answer, as `application/problem+json`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Problem, example = json!({
    "type": "urn:dfe:problem:invalid-field",
    "title": "Invalid field",
    "status": 422,
    "detail": "instance-id: must start with a lowercase letter (a-z)",
    "errors": [{"field": "instance-id", "detail": "must start with a lowercase letter (a-z)"}]
}))]
pub struct ProblemBody {
    /// `urn:dfe:problem:<kind>`: `malformed-request`, `unauthorized`, `forbidden`, `not-found`, `conflict`,
    /// `instance-exists`, `instance-busy`, `instance-not-found`, `too-large`,
    /// `unsupported-media-type`, `invalid-field`, `unavailable`, `internal`, or `http` for
    /// an answer of the router itself (an unsupported method, a path it cannot decode).
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:dfe:problem:[a-z-]+$")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The fields, query parameters or headers at fault, by their names in the request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub errors: Vec<FieldProblem>,
}

/// One field of a request at fault.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    /// Its name as the client wrote it: `instance-id`, `packages[2]`, `limit`,
    /// `Idempotency-Key`, `Content-Type`, or `body` for the whole body.
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

impl Problem {
    /// The body sent for this problem.
    pub fn body(&self) -> ProblemBody {
        ProblemBody {
            kind: format!("urn:dfe:problem:{}", self.kind),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            errors: self
                .errors
                .iter()
                .map(|e| FieldProblem { field: e.field.clone(), detail: e.message.clone() })
                .collect(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is not read, so the connection cannot carry another
            // request: saying so keeps a client from sending its next one on a connection
            // the server is closing ("connection closed before message completed").
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_problem_json() {
        let app = axum::Router::new()
            .route("/boom", get(|| async { panic!("boom") as &str }))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(super::from_panic));
        let response = app.oneshot(Request::get("/boom").body(Body::empty()).expect("request")).await.expect("answer");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["content-type"], "application/problem+json");
    }

    #[test]
    fn field_errors_name_the_field() {
        let p = super::Problem::invalid_field(dfe_shared::ids::FieldError::new("instance-id", "too short"));
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p.errors[0].field, "instance-id");
    }
}
