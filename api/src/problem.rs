//! Errors as RFC 9457 `application/problem+json`: the one place where failures reach API
//! clients. Internals are logged here and never shown.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dfe_shared::ids::FieldError;
use serde_json::json;

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

    /// 401: no or unknown bearer token.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 409.
    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
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
            other => Problem::internal(&other),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("urn:dfe:problem:{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if !self.errors.is_empty() {
            body["errors"] = self.errors.iter().map(|e| json!({ "field": e.field, "detail": e.message })).collect();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
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
