//! Who a request's credentials prove it comes from: a bearer JWT checked against the issuer's keys,
//! an API key, or the client certificate of its connection.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, Validation};
use marty_config::{Access, ConfigErrors, JwtConfig, SecurityConfig};

use super::{api_keys, jwks, mtls, Principal};
use crate::service::{ClientCertificate, Problem, ProblemType};

/// Checks every request's credentials, as `[security]` says.
pub(crate) struct Authenticator {
    /// What a route or method without its own requirement needs.
    pub(super) default: Access,
    /// `[security.grpc]`.
    pub(super) grpc: Vec<marty_config::GrpcMethodAccess>,
    jwt: Option<JwtCheck>,
    api_keys: Option<api_keys::ApiKeys>,
    mtls: Option<mtls::Identities>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("default", &self.default).finish_non_exhaustive()
    }
}

/// Why a request is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denial {
    /// No credentials where a caller is needed.
    Missing,
    /// Credentials that are not valid; why stays in the log.
    Invalid,
    /// Credentials cannot be checked now (the issuer's keys were never fetched).
    Unavailable,
    /// The caller lacks a role or scope the route requires.
    Forbidden,
}

impl Denial {
    pub(crate) fn into_response(self) -> Response {
        let (status, kind, detail, challenge) = match self {
            Denial::Missing => (
                StatusCode::UNAUTHORIZED,
                ProblemType::Unauthorized,
                "this request needs credentials: a bearer token (`Authorization: Bearer <token>`) or an API key",
                Some("Bearer"),
            ),
            Denial::Invalid => (
                StatusCode::UNAUTHORIZED,
                ProblemType::Unauthorized,
                "the credentials are not valid",
                Some("Bearer error=\"invalid_token\""),
            ),
            Denial::Forbidden => (
                StatusCode::FORBIDDEN,
                ProblemType::Forbidden,
                "the caller may not do this: a role or scope the route requires is missing",
                None,
            ),
            Denial::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemType::Unavailable,
                "the service cannot check credentials now; try again later",
                None,
            ),
        };
        let mut problem = Problem::new(status, detail).with_type(kind.uri());
        if self == Denial::Unavailable {
            problem = problem.retry_after(jwks::MIN_REFETCH.as_secs());
        }
        let mut response = problem.into_response();
        if let Some(challenge) = challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

impl Authenticator {
    /// The checks `config` asks for; the API keys are read now. `file` names the configuration in
    /// errors.
    pub(crate) fn from_config(config: &SecurityConfig, file: &str) -> Result<Arc<Self>, ConfigErrors> {
        let api_keys = match &config.api_keys {
            Some(keys) => Some(api_keys::ApiKeys::load(keys, config, file)?),
            None => None,
        };
        Ok(Arc::new(Authenticator {
            default: config.default,
            grpc: config.grpc.clone(),
            jwt: config.jwt.as_ref().map(JwtCheck::new),
            api_keys,
            mtls: config.mtls.as_ref().map(mtls::Identities::new),
        }))
    }

    /// Starts fetching the issuer's keys, and refreshing them, in the background.
    pub(crate) fn start(&self) {
        if let Some(jwt) = &self.jwt {
            jwt.keys.spawn_refresh(jwt.config.refresh);
        }
    }

    /// The caller a request proves, if any: by its bearer token or API key, else by the client
    /// certificate of its connection (a token names the end user a service calls for). Answers
    /// without waiting; a token whose key is not cached asks for [`refetch_keys`](Self::refetch_keys)
    /// first, unless that was `refetched` already.
    pub(super) fn authenticate(
        &self,
        headers: &HeaderMap,
        certificate: Option<&ClientCertificate>,
        refetched: bool,
    ) -> Result<Option<Principal>, Unproven> {
        let api_key = self.api_keys.as_ref().and_then(|keys| Some((keys, headers.get(keys.header())?)));
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return match (api_key, &self.mtls, certificate) {
                (Some((keys, key)), _, _) => {
                    keys.check(key.as_bytes()).map(Some).ok_or_else(|| denied("an API key that is not known"))
                }
                (None, Some(identities), Some(certificate)) => identities
                    .caller(certificate)
                    .map(Some)
                    .ok_or_else(|| denied("a client certificate naming no URI or DNS identity")),
                _ => Ok(None),
            };
        };
        if api_key.is_some() {
            return Err(denied("both an Authorization header and an API key"));
        }
        if values.next().is_some() {
            return Err(denied("more than one Authorization header"));
        }
        let value = value.to_str().map_err(|_| denied("an Authorization header that is not text"))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(denied("an Authorization header that is not a bearer token")),
        };
        match &self.jwt {
            Some(jwt) => jwt.check(token, refetched).map(Some),
            None => Err(denied("a bearer token, and no `[security.jwt]` to check it with")),
        }
    }

    /// Fetches the issuer's keys for a token whose key is not cached (at most once per
    /// [`jwks::MIN_REFETCH`], however many such tokens arrive).
    pub(super) async fn refetch_keys(&self) {
        if let Some(jwt) = &self.jwt {
            jwt.keys.refetch_for_unknown_key().await;
        }
    }
}

/// Why [`Authenticator::authenticate`] proved no caller.
pub(super) enum Unproven {
    Denied(Denial),
    /// The token names a key that is not cached: fetch the keys, then authenticate again.
    KeyNotCached,
}

impl From<Denial> for Unproven {
    fn from(denial: Denial) -> Self {
        Unproven::Denied(denial)
    }
}

/// Logs why credentials were refused (never the credentials), and refuses them.
fn denied(reason: &str) -> Unproven {
    tracing::debug!(target: "marty::security", reason, "credentials refused");
    Unproven::Denied(Denial::Invalid)
}

/// Bearer tokens checked against `[security.jwt]`.
struct JwtCheck {
    config: JwtConfig,
    /// Each accepted algorithm with its validation rules, made once (they allocate).
    validations: Vec<(Algorithm, Validation)>,
    keys: Arc<jwks::KeySet>,
}

impl JwtCheck {
    fn new(config: &JwtConfig) -> Self {
        // The configuration checked the names already.
        let validations = config
            .algorithms
            .iter()
            .filter_map(|name| name.parse().ok())
            .map(|algorithm| {
                let mut validation = Validation::new(algorithm);
                validation.set_issuer(&[&config.issuer]);
                validation.set_audience(&config.audiences);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                validation.validate_nbf = true;
                validation.leeway = config.leeway.as_secs();
                (algorithm, validation)
            })
            .collect();
        let keys = jwks::KeySet::new(config.keys.clone(), config.issuer.clone());
        JwtCheck { config: config.clone(), validations, keys }
    }

    fn check(&self, token: &str, refetched: bool) -> Result<Principal, Unproven> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| denied("a token that is not a JWT"))?;
        let Some((_, validation)) = self.validations.iter().find(|(algorithm, _)| *algorithm == header.alg) else {
            return Err(denied("a token signed with an algorithm `[security.jwt] algorithms` does not accept"));
        };
        let key = match (self.keys.lookup(header.kid.as_deref()), refetched) {
            (jwks::Lookup::Found(key), _) => key,
            (jwks::Lookup::NotFetched | jwks::Lookup::Unknown, false) => return Err(Unproven::KeyNotCached),
            (jwks::Lookup::Unknown, true) => {
                return Err(denied("a token signed with a key the issuer does not publish"))
            }
            (jwks::Lookup::NotFetched, true) => return Err(Unproven::Denied(Denial::Unavailable)),
        };
        if key.algorithm.is_some_and(|pinned| pinned != header.alg) {
            return Err(denied("a token whose algorithm is not the one its key is for"));
        }
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, validation)
            .map_err(|error| denied(&format!("a token that does not validate: {error}")))?
            .claims;
        let subject = claims
            .get("sub")
            .and_then(|sub| sub.as_str())
            .ok_or_else(|| denied("a token whose `sub` is not a string"))?;
        let roles = names_at(&claims, &self.config.roles_claim);
        let scopes = match (self.config.scopes_claim.as_str(), claim_at(&claims, &self.config.scopes_claim)) {
            ("scope", None) => names_at(&claims, "scp"),
            (path, _) => names_at(&claims, path),
        };
        Ok(Principal::new(subject.to_owned(), roles, scopes, claims))
    }
}

/// The claim at a dotted `path` (`realm_access.roles`).
fn claim_at<'a>(claims: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(claims, |value, key| value.get(key))
}

/// The names a claim holds: an array of strings, or one space-separated string (OAuth2's `scope`).
fn names_at(claims: &serde_json::Value, path: &str) -> Vec<String> {
    match claim_at(claims, path) {
        Some(serde_json::Value::Array(items)) => {
            items.iter().filter_map(|item| item.as_str()).map(str::to_owned).collect()
        }
        Some(serde_json::Value::String(names)) => names.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}
