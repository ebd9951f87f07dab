//! The one layer every request to the service's own routes and gRPC methods passes: credentials,
//! what the route requires, rate limits, and the audit trail of the decision.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use marty_config::{Access, LimitKey};

use super::authenticator::{Authenticator, Denial};
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
