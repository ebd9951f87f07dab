//! The one layer every request to the service's own routes and gRPC methods passes: credentials,
//! what the route requires, rate limits, and the audit trail of the decision.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use marty_config::{Access, LimitKey};
use tower_layer::Layer;
use tower_service::Service;

use super::authenticator::{Authenticator, Denial, Unproven};
use super::rate_limit::{Allowance, Limiter, OverLimit, RateLimits};
use super::Principal;
use crate::service::{Requirement, RouteAccess};

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

/// Which calls a guard stands before: they differ in how a requirement is found and how a refusal
/// is answered.
#[derive(Debug, Clone, Copy)]
enum Calls {
    /// The service's own routes (after routing, so the matched route is known).
    Routes,
    /// gRPC methods, by path (`/store.Payments/Charge`).
    #[cfg(feature = "grpc")]
    Grpc,
}

impl Gate {
    /// The guard of the service's own routes: a caller proven, allowed and within its rate limit,
    /// or a problem+json refusal. Applied with `route_layer`.
    pub(crate) fn for_routes(&self) -> GuardLayer {
        GuardLayer { gate: self.clone(), calls: Calls::Routes }
    }

    /// The same checks for gRPC calls, answered with gRPC statuses: `UNAUTHENTICATED`,
    /// `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED` (over `[rate_limit] default`), `UNAVAILABLE`.
    /// Health and reflection stay open, as the HTTP probes do.
    #[cfg(feature = "grpc")]
    pub(crate) fn for_grpc(&self) -> GuardLayer {
        GuardLayer { gate: self.clone(), calls: Calls::Grpc }
    }

    /// Admits `request` (the rate limit's headers for its response, if any) or answers it. Only a
    /// token whose key is not cached makes it wait: [`Stop::KeyNotCached`].
    fn check(&self, calls: Calls, request: &mut Request, attempt: Attempt) -> Result<Option<Allowance>, Stop> {
        match calls {
            Calls::Routes => self.check_route(request, attempt),
            #[cfg(feature = "grpc")]
            Calls::Grpc => self.check_grpc(request, attempt),
        }
    }

    fn check_route(&self, request: &mut Request, attempt: Attempt) -> Result<Option<Allowance>, Stop> {
        let route = request.extensions().get::<MatchedPath>().map(|matched| matched.as_str());
        let (requirement, audited) =
            route.and_then(|route| self.routes.get(&(request.method().clone(), route))).copied().unwrap_or_default();
        let need = match requirement {
            Requirement::Default => Need::Default,
            Requirement::Public => Need::Public,
            Requirement::Authorize { roles, scopes } => Need::Authorize { roles, scopes },
        };
        let limit =
            self.rate_limits.as_deref().and_then(|limits| Some((limits, limits.for_route(request.method(), route)?)));
        let what = |request: &Request| {
            let route = request.extensions().get::<MatchedPath>().map_or(request.uri().path(), MatchedPath::as_str);
            format!("{} {route}", request.method())
        };
        match admit(self, need, limit, request, attempt) {
            Ok(allowance) => {
                if audited {
                    audit(request, what(request), None);
                }
                Ok(allowance)
            }
            Err(Stop::Refused(refusal)) => {
                audit(request, what(request), Some(&refusal));
                Err(Stop::Refused(refusal))
            }
            Err(wait) => Err(wait),
        }
    }

    #[cfg(feature = "grpc")]
    fn check_grpc(&self, request: &mut Request, attempt: Attempt) -> Result<Option<Allowance>, Stop> {
        let path = request.uri().path();
        let method = path.strip_prefix('/').unwrap_or(path);
        if method.starts_with("grpc.health.v1.Health/") || method.starts_with("grpc.reflection.") {
            return Ok(None);
        }
        let need = match self.grpc.get(method) {
            None => Need::Default,
            Some(None) => Need::Public,
            Some(Some((roles, scopes))) => Need::Authorize { roles: roles.as_slice(), scopes: scopes.as_slice() },
        };
        let limit =
            self.rate_limits.as_deref().and_then(|limits| Some((limits, limits.for_route(&Method::POST, None)?)));
        let refusal = match admit(self, need, limit, request, attempt) {
            // gRPC answers carry no rate-limit headers.
            Ok(_) => return Ok(None),
            Err(Stop::Refused(refusal)) => refusal,
            Err(wait) => return Err(wait),
        };
        audit(request, request.uri().path().trim_start_matches('/').to_owned(), Some(&refusal));
        Err(Stop::Refused(refusal))
    }
}

impl Calls {
    /// The answer to a request `refusal` turned away.
    fn answer(self, refusal: Refusal) -> Response {
        match (self, refusal) {
            (Calls::Routes, Refusal::Denied(denial)) => denial.into_response(),
            (Calls::Routes, Refusal::OverLimit(over)) => over.into_response(),
            #[cfg(feature = "grpc")]
            (Calls::Grpc, refusal) => grpc_status(refusal).into_http(),
        }
    }
}

#[cfg(feature = "grpc")]
fn grpc_status(refusal: Refusal) -> tonic::Status {
    match refusal {
        Refusal::Denied(Denial::Missing) => tonic::Status::unauthenticated(
            "this call needs credentials: a bearer token (`authorization: Bearer <token>` metadata) or an API key",
        ),
        Refusal::Denied(Denial::Invalid) => tonic::Status::unauthenticated("the credentials are not valid"),
        Refusal::Denied(Denial::Forbidden) => tonic::Status::permission_denied(
            "the caller may not do this: a role or scope the method requires is missing",
        ),
        Refusal::Denied(Denial::Unavailable) => {
            tonic::Status::unavailable("the service cannot check credentials now; try again later")
        }
        Refusal::OverLimit(_) => tonic::Status::resource_exhausted("too many requests: slow down and retry later"),
    }
}

/// Why [`Gate::check`] (and [`admit`]) did not admit a request.
enum Stop {
    /// Turned away (and audited).
    Refused(Refusal),
    /// The token's key is not cached: fetch the keys, then check again with what was counted.
    KeyNotCached(Counted),
}

/// What the first check of a request counted against the rate limit by address before it had to
/// wait for the issuer's keys, so the second check does not count the request twice.
type Counted = Option<Allowance>;

/// Which check of a request this is.
#[derive(Debug)]
enum Attempt {
    First,
    /// After the keys were fetched for its token.
    AfterKeyFetch(Counted),
}

/// The layer of a [`Gate`] over routes or gRPC methods.
#[derive(Debug, Clone)]
pub(crate) struct GuardLayer {
    gate: Gate,
    calls: Calls,
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard { inner, gate: self.gate.clone(), calls: self.calls }
    }
}

/// The service of a [`GuardLayer`]: a tower service with a named future rather than
/// `axum::middleware::from_fn`, which clones the inner service and boxes a future per request.
/// Only a request that must wait for the issuer's keys is boxed.
#[derive(Debug, Clone)]
pub(crate) struct Guard<S> {
    inner: S,
    gate: Gate,
    calls: Calls,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match self.gate.check(self.calls, &mut request, Attempt::First) {
            Ok(allowance) => GuardFuture::Admitted { inner: self.inner.call(request), allowance },
            Err(Stop::Refused(refusal)) => GuardFuture::Answered { response: Some(self.calls.answer(refusal)) },
            Err(Stop::KeyNotCached(counted)) => {
                // The service that was made ready goes with the request; this one keeps a clone.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                let (gate, calls) = (self.gate.clone(), self.calls);
                GuardFuture::FetchingKeys { future: Box::pin(after_key_fetch(gate, calls, ready, request, counted)) }
            }
        }
    }
}

/// Checks `request` again once the issuer's keys are fetched, and calls `inner` if it is admitted.
async fn after_key_fetch<S>(gate: Gate, calls: Calls, mut inner: S, mut request: Request, counted: Counted) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    if let Some(authenticator) = &gate.authenticator {
        authenticator.refetch_keys().await;
    }
    match gate.check(calls, &mut request, Attempt::AfterKeyFetch(counted)) {
        Ok(allowance) => {
            let Ok(mut response) = inner.call(request).await;
            if let Some(allowance) = allowance {
                allowance.add_to(&mut response);
            }
            response
        }
        Err(Stop::Refused(refusal)) => calls.answer(refusal),
        Err(Stop::KeyNotCached(_)) => unreachable!("a check after the key fetch settles"),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Guard`].
    #[project = GuardProjection]
    pub(crate) enum GuardFuture<F> {
        Admitted { #[pin] inner: F, allowance: Option<Allowance> },
        Answered { response: Option<Response> },
        FetchingKeys { future: Pin<Box<dyn Future<Output = Response> + Send>> },
    }
}

impl<F> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProjection::Admitted { inner, allowance } => {
                let Ok(mut response) = ready!(inner.poll(cx));
                if let Some(allowance) = allowance.take() {
                    allowance.add_to(&mut response);
                }
                Poll::Ready(Ok(response))
            }
            GuardProjection::Answered { response } => {
                Poll::Ready(Ok(response.take().expect("GuardFuture polled after completion")))
            }
            GuardProjection::FetchingKeys { future } => future.as_mut().poll(cx).map(Ok),
        }
    }
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

impl<T: Into<Refusal>> From<T> for Stop {
    fn from(refusal: T) -> Self {
        Stop::Refused(refusal.into())
    }
}

/// Checks `request` in the order that costs an abuser most: limits by address before credentials
/// (a flood of forged tokens costs no signature check), failed credentials counted against the
/// address (guessing keys is limited too), limits by caller once the caller is known. Puts the
/// caller in the request for [`Principal`].
fn admit<Name: AsRef<str>>(
    gate: &Gate,
    need: Need<'_, Name>,
    limit: Option<(&RateLimits, &Limiter)>,
    request: &mut Request,
    attempt: Attempt,
) -> Result<Option<Allowance>, Stop> {
    let (mut allowance, refetched) = match attempt {
        Attempt::AfterKeyFetch(counted) => (counted, true),
        Attempt::First => match limit {
            Some((limits, limiter)) if limiter.key() == LimitKey::Ip => {
                (Some(limits.check(limiter, None, request)?), false)
            }
            _ => (None, false),
        },
    };
    let caller = match &gate.authenticator {
        None => None,
        Some(authenticator) => {
            match authenticator.authenticate(request.headers(), request.extensions().get(), refetched) {
                Ok(caller) => caller,
                Err(Unproven::KeyNotCached) => return Err(Stop::KeyNotCached(allowance)),
                Err(Unproven::Denied(denial)) => {
                    if let (None, Some((limits, limiter))) = (&allowance, limit) {
                        limits.check(limiter, None, request)?;
                    }
                    return Err(denial.into());
                }
            }
        }
    };
    let default = gate.authenticator.as_ref().map_or(Access::Public, |authenticator| authenticator.default);
    let checked = match authorize(default, need, caller.as_ref()) {
        Err(denial) => Err(denial.into()),
        Ok(()) => match (&allowance, limit) {
            (None, Some((limits, limiter))) => {
                limits.check(limiter, caller.as_ref(), request).map(Some).map_err(Into::into)
            }
            _ => Ok(allowance.take()),
        },
    };
    // In the request from here on (moved, not cloned: the claims can be large): for the handler's
    // `Principal`, and the audit trail of a refusal.
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    checked
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
