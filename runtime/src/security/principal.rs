//! [`Principal`]: who is calling, as a handler reads it.

use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::authenticator::Denial;

/// The authenticated caller of a request: its subject, roles and scopes, and the token's claims.
///
/// ```no_run
/// # use marty::security::Principal;
/// async fn whoami(caller: Principal) -> String {
///     format!("{} with roles {:?}", caller.subject(), caller.roles())
/// }
/// ```
///
/// As an extractor it answers 401 when the request has no authenticated caller (a `public` route
/// called without a token); take `Option<Principal>` where a caller is optional.
#[derive(Debug, Clone)]
pub struct Principal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    subject: String,
    roles: Vec<String>,
    scopes: Vec<String>,
    claims: serde_json::Value,
}

impl Principal {
    pub(crate) fn new(subject: String, roles: Vec<String>, scopes: Vec<String>, claims: serde_json::Value) -> Self {
        Principal { inner: Arc::new(Inner { subject, roles, scopes, claims }) }
    }

    /// Who the caller is: the token's `sub`.
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// The caller's roles, from `[security.jwt] roles_claim`.
    pub fn roles(&self) -> &[String] {
        &self.inner.roles
    }

    /// The caller's scopes, from `[security.jwt] scopes_claim`.
    pub fn scopes(&self) -> &[String] {
        &self.inner.scopes
    }

    /// Whether the caller has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.inner.roles.iter().any(|held| held == role)
    }

    /// Whether the caller has `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.inner.scopes.iter().any(|held| held == scope)
    }

    /// The token's claims, as they came.
    pub fn raw_claims(&self) -> &serde_json::Value {
        &self.inner.claims
    }

    /// The token's claims as your own type (e.g. a tenant id your issuer adds).
    pub fn claims<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.inner.claims)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| Denial::Missing.into_response())
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}
