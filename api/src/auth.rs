//! Bearer tokens: a request's token is hashed with SHA-256 and compared, in constant time,
//! with the digests of `[[api.clients]]`. Tokens are never stored or logged in clear.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::Problem;

/// The accepted clients, as the router's state holds them.
pub type Clients = Arc<Vec<ClientKey>>;

/// A configured client: its id and token digest.
#[derive(Clone)]
pub struct ClientKey {
    id: String,
    digest: [u8; 32],
}

/// Parses the configured clients; a digest that is not 64 hex digits is a startup error.
pub fn client_keys(clients: &[dfe_shared::config::ApiClient]) -> anyhow::Result<Vec<ClientKey>> {
    clients
        .iter()
        .map(|c| {
            let bytes = hex::decode(c.token_sha256.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| anyhow::anyhow!("api.clients {:?}: token-sha256 must be 64 hex digits", c.id))?;
            Ok(ClientKey { id: c.id.clone(), digest: bytes })
        })
        .collect()
}

/// The authenticated client of a request.
pub struct Client {
    /// Its id from the configuration.
    pub id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Client
where
    Clients: FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("an Authorization: Bearer <token> header is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Problem::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare with every key so the time taken does not depend on which one matches.
        let mut found = None;
        for key in Clients::from_ref(state).iter() {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key.id.clone());
            }
        }
        found.map(|id| Client { id }).ok_or_else(|| Problem::unauthorized("the bearer token is not accepted"))
    }
}
