//! Bearer tokens and what each may do. A request's token is hashed with SHA-256 and
//! compared, in constant time, with the digests of `[[api.clients]]`; the matching client's
//! `expires-at`, `scopes` and `owners` then decide what it may do. Tokens are never stored
//! or logged in clear.
//!
//! - [`Client`]: the authenticated client (401 for no, an unknown or an expired token).
//! - [`Scoped`]: a client holding a scope (403 naming the scope otherwise), the extractor of
//!   every handler: `Scoped<Read>` for every GET, `Scoped<Ops>` for submissions and cancel,
//!   `Scoped<Admin>` for the fleet's cordons, reconciliation, expiries and quotas.
//! - [`Client::sees`]: whether an owner's instances, jobs and snapshots exist for it.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use dfe_shared::config::Scope;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::problem::Problem;

/// The accepted clients, as the router's state holds them.
pub type Clients = Arc<Vec<ClientKey>>;

/// A configured client: its id, token digest and rights.
#[derive(Clone)]
pub struct ClientKey {
    id: String,
    digest: [u8; 32],
    scopes: BTreeSet<Scope>,
    owners: Option<BTreeSet<String>>,
    expires_at: Option<OffsetDateTime>,
}

/// Parses the configured clients; a digest that is not 64 hex digits, or an empty list of
/// scopes or owners (a token that could do nothing at all, surely a mistake), is a startup
/// error.
pub fn client_keys(clients: &[dfe_shared::config::ApiClient]) -> anyhow::Result<Vec<ClientKey>> {
    clients
        .iter()
        .map(|c| {
            let bytes = hex::decode(c.token_sha256.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| anyhow::anyhow!("api.clients {:?}: token-sha256 must be 64 hex digits", c.id))?;
            let scopes: BTreeSet<Scope> =
                c.scopes.clone().map_or_else(|| Scope::ALL.into(), |s| s.into_iter().collect());
            if scopes.is_empty() {
                anyhow::bail!("api.clients {:?}: scopes is empty; leave it out for all of read, ops and admin", c.id);
            }
            let owners: Option<BTreeSet<String>> = c.owners.as_ref().map(|o| o.iter().map(|o| o.as_text()).collect());
            if owners.as_ref().is_some_and(BTreeSet::is_empty) {
                anyhow::bail!("api.clients {:?}: owners is empty; leave it out for every owner", c.id);
            }
            Ok(ClientKey { id: c.id.clone(), digest: bytes, scopes, owners, expires_at: c.expires_at })
        })
        .collect()
}

/// The authenticated client of a request.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its id from the configuration (recorded as `requested-by` of what it submits).
    pub id: String,
    /// What it may do.
    pub scopes: BTreeSet<Scope>,
    /// The owners it may see and act for, as text (`None`: every owner).
    owners: Option<Vec<String>>,
    /// When its token stops being accepted (a stream it opened ends then too).
    pub expires_at: Option<OffsetDateTime>,
}

impl Client {
    /// Whether the instances, jobs and snapshots of `owner` (as text; `None`: recorded with
    /// no owner) exist for this client.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match (&self.owners, owner) {
            (None, _) => true,
            (Some(owners), Some(owner)) => owners.iter().any(|o| o == owner),
            (Some(_), None) => false,
        }
    }

    /// The owners it is limited to, for the registry's filters (`None`: every owner).
    pub fn owners(&self) -> Option<&[String]> {
        self.owners.as_deref()
    }
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
                found = Some(key.clone());
            }
        }
        let key = found.ok_or_else(|| Problem::unauthorized("the bearer token is not accepted"))?;
        if let Some(at) = key.expires_at.filter(|at| *at <= OffsetDateTime::now_utc()) {
            let when = at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
            return Err(Problem::unauthorized(format!(
                "the bearer token expired at {when}; ask for a new one (`dfe token` mints one)"
            )));
        }
        Ok(Client {
            id: key.id,
            scopes: key.scopes,
            owners: key.owners.map(|o| o.into_iter().collect()),
            expires_at: key.expires_at,
        })
    }
}

/// A scope as a type, for [`Scoped`].
pub trait ScopeName: Send + Sync + 'static {
    /// The scope.
    const SCOPE: Scope;
}

/// The `read` scope: every GET.
pub struct Read;
/// The `ops` scope: job submissions and cancelling a job.
pub struct Ops;
/// The `admin` scope: the fleet (cordon), reconciliation, expiries and quotas.
pub struct Admin;

impl ScopeName for Read {
    const SCOPE: Scope = Scope::Read;
}
impl ScopeName for Ops {
    const SCOPE: Scope = Scope::Ops;
}
impl ScopeName for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// An authenticated client that holds scope `S`: 401 without an accepted token, 403 naming
/// the scope when the token lacks it.
pub struct Scoped<S: ScopeName>(pub Client, PhantomData<S>);

impl<S: ScopeName> std::ops::Deref for Scoped<S> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0
    }
}

impl<St: Send + Sync, S: ScopeName> FromRequestParts<St> for Scoped<S>
where
    Clients: FromRef<St>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        let client = Client::from_request_parts(parts, state).await?;
        if !client.scopes.contains(&S::SCOPE) {
            let held: Vec<&str> = client.scopes.iter().map(|s| s.as_str()).collect();
            return Err(Problem::forbidden(format!(
                "this token lacks the `{}` scope (it has: {})",
                S::SCOPE,
                held.join(", ")
            )));
        }
        Ok(Scoped(client, PhantomData))
    }
}

#[cfg(test)]
impl Client {
    /// A client with every scope, limited to `owners`, for the unit tests of other modules.
    pub(crate) fn for_tests(owners: Option<&[&str]>) -> Client {
        Client {
            id: "tests".into(),
            scopes: Scope::ALL.into(),
            owners: owners.map(|o| o.iter().map(|s| (*s).to_owned()).collect()),
            expires_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(owners: Option<&[&str]>) -> Client {
        Client {
            id: "c".into(),
            scopes: Scope::ALL.into(),
            owners: owners.map(|o| o.iter().map(|s| (*s).to_owned()).collect()),
            expires_at: None,
        }
    }

    #[test]
    fn a_client_limited_to_owners_sees_only_theirs() {
        assert!(client(None).sees(Some("7")) && client(None).sees(None));
        let limited = client(Some(&["7", "acme"]));
        assert!(limited.sees(Some("7")) && limited.sees(Some("acme")));
        assert!(!limited.sees(Some("8")) && !limited.sees(None));
    }

    #[test]
    fn empty_scopes_or_owners_are_refused_at_start() {
        let mut c = dfe_shared::config::ApiClient::new("c", "0".repeat(64));
        assert_eq!(client_keys(std::slice::from_ref(&c)).expect("defaults")[0].scopes.len(), 3);
        c.scopes = Some(vec![]);
        assert!(client_keys(std::slice::from_ref(&c)).is_err());
        c.scopes = None;
        c.owners = Some(vec![]);
        assert!(client_keys(std::slice::from_ref(&c)).is_err());
    }
}
