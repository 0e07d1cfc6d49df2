//! The console's script, style sheet and icon, compiled into the binary from `api/assets/`
//! (plain files: nothing builds them).

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

/// Every asset: its name, content type and content.
const ASSETS: &[(&str, &str, &str)] = &[
    ("console.js", "text/javascript; charset=utf-8", include_str!("../../assets/console.js")),
    ("console.css", "text/css; charset=utf-8", include_str!("../../assets/console.css")),
    ("icon.svg", "image/svg+xml", include_str!("../../assets/icon.svg")),
];

/// The path of an asset, with a digest of its content so that a browser never keeps an old
/// script beside a new api.
pub fn url(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let content = ASSETS.iter().find(|(n, _, _)| *n == name).map_or("", |(_, _, c)| *c);
    let digest = hex::encode(Sha256::digest(content.as_bytes()));
    format!("/console/assets/{name}?v={}", &digest[..12])
}

/// GET /console/assets/{file}
pub async fn asset(Path(file): Path<String>) -> Result<Response, Problem> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| Problem::not_found("no such asset of the console"))?;
    let mut response = (*body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on each load: small files, and a rebuilt binary may change them.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(response)
}
