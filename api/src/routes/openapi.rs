//! `GET /api/v1/openapi.json`: the OpenAPI 3 document of this API, kept beside the code in
//! `api/openapi/openapi.json` (a test checks every path in it is routed).

use axum::http::header;
use axum::response::IntoResponse;

/// The document, compiled in.
pub const DOCUMENT: &str = include_str!("../../openapi/openapi.json");

/// GET /api/v1/openapi.json
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_valid_json_with_every_operation() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).expect("JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        for path in [
            "/api/v1/ops/provision",
            "/api/v1/ops/jobs/{job-id}",
            "/api/v1/snapshots/{snapshot-id}/download",
            "/readyz",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is documented");
        }
    }
}
