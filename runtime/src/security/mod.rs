//! Who may call a service: callers authenticate with a bearer token (a JWT from your OpenID Connect
//! or OAuth2 issuer), checked against the issuer's public keys, and handlers read the caller as a
//! [`Principal`]. Configured under `[security]` in `marty.toml` (feature `security`):
//!
//! ```toml
//! [security]
//! default = "authenticated"   # what a route requires; "public" lets anyone in
//! roles = ["admin", "clerk"]  # the roles the service's attributes may name
//! scopes = ["orders:read"]
//!
//! [security.jwt]
//! issuer = "https://login.example.com/realms/shop"
//! audiences = ["orders"]
//! jwks_url = "https://login.example.com/realms/shop/protocol/openid-connect/certs"
//! # or: discovery_url = "https://login.example.com/realms/shop/.well-known/openid-configuration"
//! algorithms = ["RS256", "ES256"]      # asymmetric only: never `none`, never HMAC
//! roles_claim = "realm_access.roles"   # dotted for nested claims (default `roles`)
//! scopes_claim = "scope"               # a space-separated string or an array (`scp` when absent)
//! leeway = "30s"
//! refresh = "5m"
//! ```
//!
//! What a request gets:
//! - no `Authorization: Bearer` on a route that needs a caller: **401** with `WWW-Authenticate:
//!   Bearer`; a token that is not valid (signature, issuer, audience, expiry, algorithm): **401**
//!   with `WWW-Authenticate: Bearer error="invalid_token"` and nothing said about why (the reason
//!   goes to the log at debug level, on target `marty::security`; the token never does);
//! - before the issuer's keys were ever fetched: **503** with `Retry-After` (the token may well be
//!   valid); once fetched, the keys are refreshed every `refresh` and when a token names a key not
//!   in the cache (at most once every 10 s), and the cached keys keep validating while the issuer
//!   is unreachable;
//! - `/healthz`, `/readyz` and `/metrics` stay open to probes and scrapers.
//!
//! Per route, `#[public]` lets anyone in, and `#[authorize(roles = ["admin", "clerk"], scopes =
//! ["orders:write"])]` requires a caller holding **any** of the roles and **all** of the scopes
//! (bare `#[authorize]`: any authenticated caller); others get **403**. The names must be declared
//! under `[security]`: a name that is not is a compile error at the literal, with the nearest
//! declared name, and a startup error if the configuration in force lost it. A token that is
//! present but not valid is refused even on a `#[public]` route.
//!
//! Machine clients can present an API key instead (`[security.api_keys]`): a header (default
//! `x-api-key`) carrying a key that the service knows only by its SHA-256, from a file read at
//! startup, each key granting its own roles and scopes (see `marty::config::parse_api_keys` for the
//! file). The caller's subject is `api-key:<name>`. A request with both a bearer token and an API
//! key is refused.
//!
//! Browser pages on other origins may call the service as `[security.cors]` allows
//! (`allowed_origins`, `allowed_methods`, `allowed_headers`, `expose_headers`,
//! `allow_credentials`, `max_age`); preflights are answered before authentication. Every response
//! also carries the usual security headers (`[http] security_headers`).
//!
//! Rate limits (`[rate_limit]`, see below) are checked in the same place, after routing:
//!
//! ```toml
//! [rate_limit]
//! default = { limit = "100/s", burst = 200 }  # routes without their own (none: unlimited)
//! trusted_proxies = ["10.0.0.0/8"]           # whose X-Forwarded-For names the client
//! client_ip_header = "x-forwarded-for"       # or "forwarded" (RFC 7239), "x-real-ip"
//! max_keys = 100000                          # callers tracked per limit
//!
//! [rate_limit.routes]
//! "POST /orders" = { limit = "10/s", burst = 20, key = "caller" }  # or key = "ip"
//! ```
//!
//! A limit is GCRA (`governor`): `limit` requests per second, minute or hour, `burst` at once
//! (default: `limit`'s count). `key = "caller"` (the default) counts the authenticated subject or
//! API key, and the client's address for anonymous callers; `key = "ip"` counts the address and is
//! checked before credentials, so a flood of forged tokens costs no signature checks. Failed
//! credentials always count against the address. The address is the socket's, unless the peer is
//! one of `trusted_proxies`: then the forwarding chain is walked back to the first hop that is not
//! a trusted proxy. IPv6 clients are counted per /64. Over the limit: **429** problem+json with
//! `Retry-After`; limited responses carry `RateLimit-Policy: "POST /orders";q=20;w=2` and
//! `RateLimit: "POST /orders";r=<left>;t=<seconds until whole>` (the IETF draft's fields). A route
//! named under `[rate_limit.routes]` that the service does not have is a compile error, and a
//! startup error for the configuration in force (a file several services share can therefore hold
//! only `default`). Each limit tracks at most `max_keys` callers: beyond them, new callers share
//! one allowance until tracked ones go quiet, and a warning says so.
//!
//! **gRPC** methods pass the same checks (authentication, `[rate_limit] default`), with the bearer
//! token or API key in the call's metadata, and are answered with gRPC statuses: `UNAUTHENTICATED`,
//! `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`, `UNAVAILABLE`. A method follows `[security] default`
//! unless `[security.grpc]` says otherwise, by full method name:
//!
//! ```toml
//! [security.grpc]
//! "store.Payments/Quote" = "public"
//! "store.Payments/Charge" = { roles = ["clerk"], scopes = ["payments:write"] }
//! ```
//!
//! Undeclared roles and scopes are errors when the service compiles (the file is checked with it);
//! the methods are checked at startup against the services the service serves and their
//! descriptors (`#[service(grpc(..), reflection = FILE_DESCRIPTOR_SET)]`, required for an entry to
//! be checked): a misspelled method stops startup with the nearest real one. Health and reflection
//! stay open, as the HTTP probes do.
//!
//! Services calling each other can prove who they are with **client certificates** (mTLS): with
//! `[http.tls] client_ca` (feature `tls`) and `[security.mtls]`, a caller without a token or API
//! key is the identity its certificate names (its first URI subject alternative name, a SPIFFE id,
//! else its first DNS name), granted roles and scopes by `identities`:
//!
//! ```toml
//! [security.mtls.identities]
//! "spiffe://shop.example/ns/prod/sa/orders" = { roles = ["service"], scopes = ["payments:write"] }
//! ```
//!
//! A bearer token in the same request wins (it names the end user the calling service acts for).
//!
//! Every refused request (HTTP or gRPC), and every allowed request to a route marked `#[audit]`,
//! is written to the audit trail (see [`marty::audit`](mod@crate::audit)): who, what, decision, reason, request id,
//! trace id and time, on the tracing target `marty::audit`, never with the credentials.
//!
//! HTTP answers are problem+json.

mod api_keys;
pub(crate) mod cors;
mod jwks;
mod mtls;
mod principal;
mod rate_limit;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, Validation};
use marty_config::{Access, ConfigErrors, JwtConfig, LimitKey, SecurityConfig};

use crate::service::{ClientCertificate, Problem, ProblemType, Requirement, RouteAccess};
pub use principal::Principal;
pub(crate) use rate_limit::RateLimits;
use rate_limit::{Allowance, Limiter, OverLimit};

/// Checks every request's credentials, as `[security]` says.
pub(crate) struct Authenticator {
    default: Access,
    /// `[security.grpc]`.
    grpc: Vec<marty_config::GrpcMethodAccess>,
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
    /// certificate of its connection (a token names the end user a service calls for).
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        certificate: Option<&ClientCertificate>,
    ) -> Result<Option<Principal>, Denial> {
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
            Some(jwt) => jwt.check(token).await.map(Some),
            None => Err(denied("a bearer token, and no `[security.jwt]` to check it with")),
        }
    }
}

/// Logs why credentials were refused (never the credentials), and refuses them.
fn denied(reason: &str) -> Denial {
    tracing::debug!(target: "marty::security", reason, "credentials refused");
    Denial::Invalid
}

/// What the guard checks: credentials, each route's requirement, rate limits.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    authenticator: Option<Arc<Authenticator>>,
    rate_limits: Option<Arc<RateLimits>>,
    /// `#[public]` and `#[authorize]`, and whether `#[audit]` is on, by method and path as routed.
    routes: Arc<HashMap<(Method, &'static str), RouteNeed>>,
    /// `[security.grpc]`, by full method name (`store.Payments/Charge`): `None` for `"public"`,
    /// else the roles (any) and scopes (all).
    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    grpc: Arc<HashMap<String, GrpcNeed>>,
}

type GrpcNeed = Option<(Vec<String>, Vec<String>)>;

/// A route's requirement, and whether it is audited.
type RouteNeed = (Requirement, bool);

impl Gate {
    pub(crate) fn new(
        authenticator: Option<Arc<Authenticator>>,
        rate_limits: Option<Arc<RateLimits>>,
        access: &'static [RouteAccess],
    ) -> Self {
        let routes = access
            .iter()
            .filter_map(|route| Some(((route.method.parse().ok()?, route.path), (route.requirement, route.audit))))
            .collect();
        let grpc = authenticator.as_ref().map_or_else(HashMap::new, |authenticator| {
            authenticator.grpc.iter().map(|method| (method.method.clone(), method.authorize.clone())).collect()
        });
        Gate { authenticator, rate_limits, routes: Arc::new(routes), grpc: Arc::new(grpc) }
    }
}

/// The middleware on the service's own routes (after routing, so the matched route is known): a
/// caller proven, allowed and within its rate limit, or refused.
pub(crate) async fn guard(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|matched| matched.as_str());
    let (requirement, audited) =
        route.and_then(|route| gate.routes.get(&(request.method().clone(), route))).copied().unwrap_or_default();
    let need = match requirement {
        Requirement::Default => Need::Default,
        Requirement::Public => Need::Public,
        Requirement::Authorize { roles, scopes } => Need::Authorize { roles, scopes },
    };
    let limit =
        gate.rate_limits.as_deref().and_then(|limits| Some((limits, limits.for_route(request.method(), route)?)));
    let what = |request: &Request| {
        let route = request.extensions().get::<MatchedPath>().map_or(request.uri().path(), MatchedPath::as_str);
        format!("{} {route}", request.method())
    };
    let admitted = admit(&gate, need, limit, &mut request).await;
    match &admitted {
        Ok(_) if audited => audit(&request, what(&request), None),
        Ok(_) => {}
        Err(refusal) => audit(&request, what(&request), Some(refusal)),
    }
    match admitted {
        Ok(allowance) => {
            let mut response = next.run(request).await;
            if let Some(allowance) = allowance {
                allowance.add_to(&mut response);
            }
            response
        }
        Err(Refusal::Denied(denial)) => denial.into_response(),
        Err(Refusal::OverLimit(over)) => over.into_response(),
    }
}

/// The same checks for gRPC calls, by method (`/store.Payments/Charge`) and answered with gRPC
/// statuses: `UNAUTHENTICATED`, `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED` (over `[rate_limit]
/// default`), `UNAVAILABLE`. Health and reflection stay open, as the HTTP probes do.
#[cfg(feature = "grpc")]
pub(crate) async fn grpc_guard(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let method = path.strip_prefix('/').unwrap_or(path);
    if method.starts_with("grpc.health.v1.Health/") || method.starts_with("grpc.reflection.") {
        return next.run(request).await;
    }
    let need = match gate.grpc.get(method) {
        None => Need::Default,
        Some(None) => Need::Public,
        Some(Some((roles, scopes))) => Need::Authorize { roles: roles.as_slice(), scopes: scopes.as_slice() },
    };
    let limit = gate.rate_limits.as_deref().and_then(|limits| Some((limits, limits.for_route(&Method::POST, None)?)));
    let admitted = admit(&gate, need, limit, &mut request).await;
    if let Err(refusal) = &admitted {
        audit(&request, request.uri().path().trim_start_matches('/').to_owned(), Some(refusal));
    }
    let status = match admitted {
        Ok(_) => return next.run(request).await,
        Err(Refusal::Denied(Denial::Missing)) => tonic::Status::unauthenticated(
            "this call needs credentials: a bearer token (`authorization: Bearer <token>` metadata) or an API key",
        ),
        Err(Refusal::Denied(Denial::Invalid)) => tonic::Status::unauthenticated("the credentials are not valid"),
        Err(Refusal::Denied(Denial::Forbidden)) => tonic::Status::permission_denied(
            "the caller may not do this: a role or scope the method requires is missing",
        ),
        Err(Refusal::Denied(Denial::Unavailable)) => {
            tonic::Status::unavailable("the service cannot check credentials now; try again later")
        }
        Err(Refusal::OverLimit(_)) => tonic::Status::resource_exhausted("too many requests: slow down and retry later"),
    };
    status.into_http()
}

/// What a route or method requires, with the names it lists.
#[derive(Debug, Clone, Copy)]
enum Need<'a, Name> {
    /// No attribute or entry: `[security] default` decides.
    Default,
    Public,
    /// Any of `roles` (none listed: no role needed) and all of `scopes`.
    Authorize {
        roles: &'a [Name],
        scopes: &'a [Name],
    },
}

/// Why [`admit`] turned a request away.
enum Refusal {
    Denied(Denial),
    OverLimit(OverLimit),
}

impl Refusal {
    /// The reason in the audit trail.
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Denied(Denial::Missing) => "no credentials",
            Refusal::Denied(Denial::Invalid) => "credentials not valid",
            Refusal::Denied(Denial::Forbidden) => "a required role or scope is missing",
            Refusal::Denied(Denial::Unavailable) => "the issuer's keys were never fetched",
            Refusal::OverLimit(_) => "over the rate limit",
        }
    }
}

/// The request's decision in the audit trail (`refusal`: denied, and why; else allowed), with the
/// caller when credentials proved one.
fn audit(request: &Request, what: String, refusal: Option<&Refusal>) {
    let who = request.extensions().get::<Principal>().map_or("anonymous", Principal::subject);
    let decision = if refusal.is_some() { "denied" } else { "allowed" };
    let mut record = crate::audit::AuditRecord::new(who, what, decision);
    if let Some(refusal) = refusal {
        record = record.reason(refusal.reason());
    }
    if let Some(request_id) = request.headers().get(crate::service::REQUEST_ID).and_then(|id| id.to_str().ok()) {
        record = record.request_id(request_id);
    }
    record.log();
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Self {
        Refusal::Denied(denial)
    }
}

impl From<OverLimit> for Refusal {
    fn from(over: OverLimit) -> Self {
        Refusal::OverLimit(over)
    }
}

/// Checks `request` in the order that costs an abuser most: limits by address before credentials
/// (a flood of forged tokens costs no signature check), failed credentials counted against the
/// address (guessing keys is limited too), limits by caller once the caller is known. Puts the
/// caller in the request for [`Principal`].
async fn admit<Name: AsRef<str>>(
    gate: &Gate,
    need: Need<'_, Name>,
    limit: Option<(&RateLimits, &Limiter)>,
    request: &mut Request,
) -> Result<Option<Allowance>, Refusal> {
    let mut allowance = match limit {
        Some((limits, limiter)) if limiter.key() == LimitKey::Ip => Some(limits.check(limiter, None, request)?),
        _ => None,
    };
    let caller = match &gate.authenticator {
        None => None,
        Some(authenticator) => match authenticator.authenticate(request.headers(), request.extensions().get()).await {
            Ok(caller) => caller,
            Err(denial) => {
                if let (None, Some((limits, limiter))) = (&allowance, limit) {
                    limits.check(limiter, None, request)?;
                }
                return Err(denial.into());
            }
        },
    };
    // In the request from here on: for the handler's `Principal`, and the audit trail of a refusal.
    if let Some(caller) = &caller {
        request.extensions_mut().insert(caller.clone());
    }
    let default = gate.authenticator.as_ref().map_or(Access::Public, |authenticator| authenticator.default);
    authorize(default, need, caller.as_ref())?;
    if let (None, Some((limits, limiter))) = (&allowance, limit) {
        allowance = Some(limits.check(limiter, caller.as_ref(), request)?);
    }
    Ok(allowance)
}

/// Whether `caller` may call what `need`s this (`Need::Default`: what `default` says).
fn authorize<Name: AsRef<str>>(
    default: Access,
    need: Need<'_, Name>,
    caller: Option<&Principal>,
) -> Result<(), Denial> {
    match (need, caller) {
        (Need::Public, _) => Ok(()),
        (Need::Default, None) if default == Access::Public => Ok(()),
        (_, None) => Err(Denial::Missing),
        (Need::Authorize { roles, scopes }, Some(caller)) => {
            let has_role = roles.is_empty() || roles.iter().any(|role| caller.has_role(role.as_ref()));
            match has_role && scopes.iter().all(|scope| caller.has_scope(scope.as_ref())) {
                true => Ok(()),
                false => Err(Denial::Forbidden),
            }
        }
        (Need::Default, Some(_)) => Ok(()),
    }
}

/// Bearer tokens checked against `[security.jwt]`.
struct JwtCheck {
    config: JwtConfig,
    algorithms: Vec<Algorithm>,
    keys: Arc<jwks::KeySet>,
}

impl JwtCheck {
    fn new(config: &JwtConfig) -> Self {
        // The configuration checked the names already.
        let algorithms = config.algorithms.iter().filter_map(|name| name.parse().ok()).collect();
        let keys = jwks::KeySet::new(config.keys.clone(), config.issuer.clone());
        JwtCheck { config: config.clone(), algorithms, keys }
    }

    async fn check(&self, token: &str) -> Result<Principal, Denial> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| denied("a token that is not a JWT"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(denied("a token signed with an algorithm `[security.jwt] algorithms` does not accept"));
        }
        let kid = header.kid.as_deref();
        let key = match self.keys.lookup(kid) {
            jwks::Lookup::Found(key) => key,
            jwks::Lookup::NotFetched | jwks::Lookup::Unknown => {
                self.keys.refetch_for_unknown_key().await;
                match self.keys.lookup(kid) {
                    jwks::Lookup::Found(key) => key,
                    jwks::Lookup::Unknown => {
                        return Err(denied("a token signed with a key the issuer does not publish"))
                    }
                    jwks::Lookup::NotFetched => return Err(Denial::Unavailable),
                }
            }
        };
        if key.algorithm.is_some_and(|pinned| pinned != header.alg) {
            return Err(denied("a token whose algorithm is not the one its key is for"));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, &validation)
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
