//! A service over HTTP (and gRPC): the user's routes plus `/healthz`, `/readyz` and `/metrics`,
//! request ids and `http_server_request_duration_seconds`, problem+json for every error the HTTP
//! layer answers itself, panics contained to their request, limits per client, and graceful shutdown
//! on SIGTERM / SIGINT.
//!
//! ```no_run
//! use marty::axum::extract::Path;
//!
//! struct Greeter;
//!
//! #[marty::service]
//! impl Greeter {
//!     #[get("/hello/{name}")]
//!     async fn hello(&self, Path(name): Path<String>) -> String {
//!         format!("hello, {name}")
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), marty::service::ServeError> {
//!     marty::service::serve(Greeter).await // or server_with(|registry| async { .. }) to build state from config
//! }
//! ```
//!
//! Routes are `#[get]`, `#[post]`, `#[put]`, `#[patch]`, `#[delete]` on `async fn`s taking `&self`
//! and axum extractors; paths are axum templates, checked when compiling (with duplicates and
//! receivers). `#[service]` generates the [`Routes`] impl; everything here is usable without it:
//! build a [`Server`] from any axum `Router`, or merge one in with [`Server::merge`].
//!
//! # What every service serves
//!
//! - `GET /healthz`: the process is alive (from the moment it listens).
//! - `GET /readyz`: JSON with each dependency's circuit, bulkhead and readiness role and each
//!   `#[health_check]` probe's result. 503 while the service is starting (broker connection, Marty's
//!   migrations, relay and consumers: `"starting"`), draining, a probe fails (or takes over 2s), or a
//!   dependency declared `readiness = "required"` has a breaker that turns calls away; an open
//!   breaker whose `open_for` has passed reads ready, so trial calls can come. Every other
//!   dependency's breaker is shown and never counted: one dependency's outage must not take every
//!   replica out of the load balancer, where no call would ever close the breaker again. A probe is
//!   `#[health_check] async fn ledger(&self) -> Result<T, E>` in the impl block. gRPC health
//!   (`grpc.health.v1.Health`) follows the same rule, probes included.
//! - `GET /metrics`: every `marty_*` metric ([`crate::metrics`]) and
//!   `http_server_request_duration_seconds{http_request_method, http_route,
//!   http_response_status_code}` (the OpenTelemetry `http.server.request.duration`, by matched
//!   route).
//!
//! With `[management] addr = "0.0.0.0:9090"`, `/healthz`, `/readyz`, `/metrics` and gRPC reflection
//! are served there and leave the public port (as Spring's `management.server.port`); gRPC health is
//! served on both.
//!
//! # Errors are problems
//!
//! Errors are RFC 9457 `application/problem+json` ([`Problem`]): `marty::Error` (503 with
//! `Retry-After`, 504), unknown routes (404, without echoing the path), malformed JSON (400),
//! missing fields (422), oversized bodies (413), slow bodies (408), wrong methods (405), the requests
//! hyper refuses before any handler runs (400 unparseable, 414 URI over 8 KiB, 431 head too large),
//! and a panicking handler (500; the process keeps serving). Every problem has a stable `type`
//! ([`ProblemType`]), `title`, `status`, `detail` and `instance`, the request id. Clients are told
//! what they can do, nothing of the insides: a 503 says "try again later", not which dependency's
//! bulkhead was full; that goes to the log. A handler can `?` a wrapped call's
//! [`CallError`](crate::CallError) into a [`Problem`].
//!
//! Every response carries an `x-request-id` ([`REQUEST_ID`]): the client's when it is 1 to 128
//! characters of letters, digits and `-_.:=+/`, else a generated one (a forged id cannot break or
//! inject log lines). gRPC errors are gRPC statuses; a request message that does not decode is
//! `INVALID_ARGUMENT` and one over the size limit `RESOURCE_EXHAUSTED`, as the gRPC status code guide
//! has them.
//!
//! # What the server allows each client
//!
//! Marty runs its own listener on hyper (`axum::serve` has no timeouts): a slow or silent client, or
//! a flood of them, cannot hold the service's connections, file descriptors or memory.
//!
//! ```toml
//! [http]
//! addr = "0.0.0.0:8080"
//! header_read_timeout = "10s"  # a new connection, or a request head once begun, must be complete by then (slowloris)
//! body_timeout = "30s"         # a request body must have arrived in full (408); gRPC streams are exempt
//! idle_timeout = "60s"         # a connection with nothing in flight is closed (HTTP/2 with a GOAWAY); above load balancers' 60 s
//! max_connections = 10000      # unset: 10,000, or 3/4 of the open-file limit when lower; more wait to be accepted
//! max_body_bytes = 2097152     # a larger declared Content-Length is refused (413) before any of it is read
//! max_header_bytes = 32768     # request line and headers (431)
//! security_headers = true      # nosniff, DENY framing, no referrer, a CSP that loads nothing
//!
//! [http.tls]                    # feature `tls`: HTTPS, and gRPC over TLS (ALPN h2)
//! cert = "/etc/tls/tls.crt"     # PEM chain, leaf first
//! key = "/etc/tls/tls.key"
//! client_ca = "/etc/tls/ca.crt" # ask clients for certificates chaining to it (mTLS)
//! client_auth = "required"      # or "optional": anonymous clients served without an identity
//! watch_interval = "10s"        # rotated files load for new connections; open ones keep theirs
//! ```
//!
//! With `[http.tls]`, `[http] addr` and `[grpc] addr` speak TLS 1.2 and 1.3 only (rustls); the
//! handshake must finish within `header_read_timeout`; the management port stays plain text for
//! in-cluster probes. A certificate that does not load stops startup naming the key; a rotation
//! that does not load (yet) keeps the last good one served. A client's certificate is in each of its
//! requests as [`ClientCertificate`].
//!
//! HTTP/2 connections (gRPC) are pinged every 20 s and closed when a ping goes unanswered for 20 s.
//! A refused request (413, 408) is answered with `connection: close`, and what the client still
//! sends is read and dropped for up to 2 s so it gets the answer rather than a reset. Reaching the
//! connection limit and failing to accept (out of file descriptors) are logged, once a window.
//!
//! # Shutdown
//!
//! On SIGTERM or SIGINT: `/readyz` turns 503 ("draining"), requests are still served for `[service]
//! drain_delay`, the listener closes, in-flight requests get `shutdown_timeout` (default 30s), and
//! the process exits 0. Unset, `drain_delay` fits where the service runs: 5 s in Kubernetes (every
//! pod has `KUBERNETES_SERVICE_HOST`; its endpoints take a few seconds to stop routing to a
//! terminating pod), 0 elsewhere, so Ctrl-C on a terminal stops at once. When the listener closes,
//! connections with nothing in flight (idle keep-alive, a half-sent request) are closed at once, so
//! no client can stretch a shutdown; the others finish their requests. The event consumers and the
//! outbox relay stop after the drain.
//!
//! # gRPC
//!
//! With the `grpc` feature, the state implements tonic-generated server traits and the attribute
//! names the servers: `#[marty::service(grpc(OrdersServer), reflection =
//! proto::FILE_DESCRIPTOR_SET)]`. They are served on the same port as HTTP (requests with an
//! `application/grpc` content type go to gRPC), with the standard `grpc.health.v1.Health` service
//! (`NOT_SERVING` by the rule of `/readyz`) and reflection. With `[grpc] addr` set, the service also
//! listens there. gRPC calls are measured per method: `rpc_server_call_duration_seconds{rpc_service,
//! rpc_method, rpc_grpc_status_code}`, from the request to the end of the response (streams
//! included); at most 1,000 distinct methods are kept, then `rpc_method="_OTHER"`, since clients
//! choose the path.
//!
//! # Logs that survive overload
//!
//! Events that repeat with load are written once a window with a count: ``37,412 calls to
//! `orders_db` turned away in the last 10s`` (with the latest error), `1,204 requests to POST
//! /orders answered 503 Service Unavailable in the last 10s`, and the connection limit being
//! reached. A panic is one ERROR line with the message, the location and the backtrace as fields,
//! inside the span of the request or event it happened in. See [`crate::telemetry`] for the log
//! format and traces.
//!
//! # Reload
//!
//! A service re-reads its configuration on SIGHUP, or when the file changes (checked every 2s), and
//! applies bulkhead sizes, timeouts, breaker thresholds and retry to the running dependencies without
//! dropping calls in flight (a smaller bulkhead retires permits as their calls finish; an open
//! breaker stays open). An invalid file is rejected, its errors logged, and the configuration in
//! force stays. New dependencies and `[service]`/`[http]`/`[telemetry]` changes take a restart, and
//! the log says so. `DependencyRegistry::reload(config)` does the same from code.

mod access;
#[cfg(feature = "openapi")]
mod description;
mod dispatch;
mod errors;
#[cfg(feature = "events")]
mod events;
#[cfg(feature = "grpc")]
mod grpc;
pub(crate) mod health;
mod layer;
mod listener;
mod problem;
mod reload;
pub(crate) mod rpc;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use access::{Requirement, RouteAccess};
#[cfg(feature = "grpc")]
pub use grpc::GrpcServices;
pub use health::{HealthCheck, Readiness};
pub use layer::{HttpLayer, HttpService};
pub use problem::{Problem, ProblemType, PROBLEM_JSON};

use crate::metrics::Metrics;
use crate::registry::DependencyRegistry;
use crate::Runtime;

/// A service's own routes; `#[service]` implements it from the methods marked `#[get(..)]`, `#[post(..)]`, ...
pub trait Routes: Send + Sync + 'static {
    /// The service's name in telemetry.
    const NAME: &'static str;
    /// The configuration file the macros checked (absolute path) and its text when compiled; the
    /// runtime reads the file again at startup (see [`crate::DependencyRegistry`]).
    #[doc(hidden)]
    const CONFIG: (&'static str, &'static str);

    /// What the routes with `#[public]` or `#[authorize]` require of their caller.
    #[doc(hidden)]
    const ACCESS: &'static [RouteAccess] = &[];

    /// Every route as `"METHOD /path"`, for the startup check of `[rate_limit.routes]` (`None`:
    /// not known, not checked).
    #[doc(hidden)]
    const ROUTE_NAMES: Option<&'static [&'static str]> = None;

    /// The routes, with handlers that call the service's methods.
    fn routes(self: Arc<Self>) -> Router;

    /// The readiness probes: the methods marked `#[health_check]`.
    fn health_checks(self: Arc<Self>) -> Vec<HealthCheck> {
        Vec::new()
    }

    /// The event consumers: the methods marked `#[event_handler]`.
    #[cfg(feature = "events")]
    fn event_handlers(self: Arc<Self>) -> Vec<crate::events::EventHandler> {
        Vec::new()
    }

    /// The gRPC services, when `#[service(grpc(..))]` names some.
    #[cfg(feature = "grpc")]
    fn grpc(self: Arc<Self>) -> Option<GrpcServices> {
        None
    }

    /// Whether the routes were described (`[openapi]` in the configuration they compiled with).
    #[cfg(feature = "openapi")]
    #[doc(hidden)]
    const DESCRIBED: bool = false;

    /// The crate's version, the description's.
    #[cfg(feature = "openapi")]
    #[doc(hidden)]
    const VERSION: &'static str = "0.0.0";

    /// The routes' OpenAPI operations (see [`crate::openapi`]).
    #[cfg(feature = "openapi")]
    #[doc(hidden)]
    fn describe(operations: &mut crate::openapi::Operations) {
        let _ = operations;
    }
}

/// Why a service could not start or stopped with an error.
///
/// Its `Debug` is its readable text, causes included, because `fn main() -> Result<(), ServeError>`
/// prints the error it returns with `Debug`: a bad `marty.toml` then reads `Error: invalid Marty
/// configuration:` and one `<file>:<line>: key ..` with its `help:` per problem. `{:#?}` shows the
/// structure.
pub enum ServeError {
    /// The configuration did not load: every problem, with file, line and key.
    Config(crate::Error),
    /// Building the service's state failed (e.g. its database pool did not connect).
    Startup(Box<dyn std::error::Error + Send + Sync>),
    /// Binding or serving failed.
    Io(std::io::Error),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Config(error) => error.fmt(f),
            ServeError::Startup(error) => write!(f, "cannot build the service: {error}"),
            ServeError::Io(error) => write!(f, "cannot serve: {error}"),
        }
    }
}

impl std::fmt::Debug for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.alternate() {
            return match self {
                ServeError::Config(error) => f.debug_tuple("Config").field(error).finish(),
                ServeError::Startup(error) => f.debug_tuple("Startup").field(error).finish(),
                ServeError::Io(error) => f.debug_tuple("Io").field(error).finish(),
            };
        }
        write!(f, "{self}")?;
        // `Display` already includes the error it wraps; what caused that one follows.
        let mut cause = std::error::Error::source(self).and_then(std::error::Error::source);
        while let Some(error) = cause {
            write!(f, "\n  caused by: {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Config(error) => Some(error),
            ServeError::Startup(error) => Some(error.as_ref()),
            ServeError::Io(error) => Some(error),
        }
    }
}

/// So that `main` can `?` what [`Server::serve`] returns.
impl From<std::io::Error> for ServeError {
    fn from(error: std::io::Error) -> Self {
        ServeError::Io(error)
    }
}

impl From<marty_config::ConfigErrors> for ServeError {
    fn from(errors: marty_config::ConfigErrors) -> Self {
        ServeError::Config(crate::Error::Config(Arc::new(errors)))
    }
}

/// The server for `service` on the global runtime (see [`server_in`]).
pub fn server<S: Routes>(service: S) -> Result<Server, ServeError> {
    server_in(Runtime::global(), service)
}

/// The server for `service` on `runtime`, with its configuration loaded (the global runtime's on
/// first use) and logging started.
pub fn server_in<S: Routes>(runtime: &Runtime, service: S) -> Result<Server, ServeError> {
    let registry = load_and_start_logging::<S>(runtime)?;
    server_for(Arc::new(service), runtime, registry)
}

/// The configuration, then logging ([`crate::telemetry`]), then a log line saying where the
/// configuration came from.
fn load_and_start_logging<S: Routes>(runtime: &Runtime) -> Result<Arc<DependencyRegistry>, ServeError> {
    let (path, text) = S::CONFIG;
    let registry = runtime.registry_or_load(path, text).map_err(ServeError::Config)?;
    check_service::<S>(registry)?;
    #[cfg(feature = "openapi")]
    description::write_if_asked::<S>(&registry.config())?;
    if crate::telemetry::init(S::NAME, &registry.config().telemetry) {
        registry.log_provenance();
    }
    Ok(registry.clone())
}

/// What a service's routes need of its configuration: the features it uses, the roles and scopes
/// they name, the paths the built-in endpoints take.
fn check_service<S: Routes>(registry: &DependencyRegistry) -> Result<(), ServeError> {
    check_features(registry)?;
    access::check(&registry.config(), S::ACCESS, S::ROUTE_NAMES)?;
    #[cfg(feature = "faults")]
    crate::fault::endpoint::check_paths(&registry.config(), S::ACCESS)?;
    Ok(())
}

/// The server for `service` in a test's runtime (`marty::testing`): checked as at startup, without
/// starting logging (the test's own) or writing a description.
#[cfg(feature = "testing")]
pub(crate) fn server_for_tests<S: Routes>(runtime: &Runtime, service: S) -> Result<Server, ServeError> {
    let registry = runtime.registry().cloned().ok_or_else(|| ServeError::Startup("no configuration".into()))?;
    check_service::<S>(&registry)?;
    server_for(Arc::new(service), runtime, registry)
}

fn server_for<S: Routes>(
    service: Arc<S>,
    runtime: &Runtime,
    registry: Arc<DependencyRegistry>,
) -> Result<Server, ServeError> {
    #[cfg(feature = "openapi")]
    let description = description::routes::<S>(&registry.config())?;
    let server = Server::with_registry(service.clone().routes(), runtime.clone(), registry)?
        .with_route_access(S::ACCESS)
        .with_health_checks(service.clone().health_checks());
    #[cfg(feature = "openapi")]
    let server = Server { description, ..server };
    #[cfg(feature = "events")]
    let server = server.with_event_handlers(service.clone().event_handlers());
    #[cfg(feature = "grpc")]
    if let Some(grpc) = service.grpc() {
        let server = server.with_grpc(grpc);
        server.check_grpc_access()?;
        return Ok(server);
    }
    Ok(server)
}

/// Loads the configuration, then builds the service's state with it (connect pools, read settings),
/// and returns its server, on the global runtime.
pub async fn server_with<S, F, Fut, E>(build: F) -> Result<Server, ServeError>
where
    S: Routes,
    F: FnOnce(&'static DependencyRegistry) -> Fut,
    Fut: Future<Output = Result<S, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let runtime = Runtime::global();
    let registry = load_and_start_logging::<S>(runtime)?;
    let global = DependencyRegistry::global().expect("loaded into the global runtime just above");
    let service = build(global).await.map_err(|error| ServeError::Startup(error.into()))?;
    server_for(Arc::new(service), runtime, registry)
}

/// Loads the configuration, starts logging ([`crate::telemetry`]), binds `[http] addr` and serves
/// `service` until SIGTERM or SIGINT, then shuts down gracefully. A configuration error returns before
/// anything is bound.
pub async fn serve<S: Routes>(service: S) -> Result<(), ServeError> {
    let server = server(service)?;
    server.serve().await.map_err(ServeError::Io)
}

/// Refuses a configuration that needs a feature this build of marty lacks: a service must not
/// serve unprotected, unlimited or plain-text routes because `[security]`, `[rate_limit]` or
/// `[http.tls]` was silently ignored (nor run a chaos test that injects nothing: `[faults]`).
fn check_features(registry: &DependencyRegistry) -> Result<(), ServeError> {
    let config = registry.config();
    let unprotected = [
        ("security", "security", config.security.is_some(), cfg!(feature = "security")),
        ("rate_limit", "security", config.rate_limit.is_some(), cfg!(feature = "security")),
        ("http.tls", "tls", config.http.tls.is_some(), cfg!(feature = "tls")),
        ("openapi", "openapi", config.openapi.is_some(), cfg!(feature = "openapi")),
        ("faults", "faults", config.faults.enabled, cfg!(feature = "faults")),
        (
            "openapi.ui",
            "openapi-ui",
            config.openapi.as_ref().is_some_and(|openapi| openapi.ui.is_some()),
            cfg!(feature = "openapi-ui"),
        ),
    ];
    let errors: Vec<_> = unprotected
        .iter()
        .filter(|(_, _, configured, built)| *configured && !built)
        .map(|(key, feature, _, _)| marty_config::ConfigError {
            file: config.file.clone(),
            origin: marty_config::Origin::Missing,
            key: (*key).to_owned(),
            problem: format!("`[{key}]` is configured, but marty was built without its `{feature}` feature"),
            help: Some(format!("add `features = [\"{feature}\"]` to marty in Cargo.toml")),
        })
        .collect();
    Ok(marty_config::ConfigErrors::from_found(errors)?)
}

/// The certificate the client presented in the TLS handshake (`[http.tls] client_ca`), in the
/// extensions of each request on that connection: `Option<Extension<ClientCertificate>>` in a
/// handler.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    der: Arc<[u8]>,
    /// The identity `[security.mtls]` reads, parsed once per connection rather than per request.
    #[cfg(feature = "security")]
    identity: Option<Arc<str>>,
}

impl ClientCertificate {
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn from_der(der: &[u8]) -> Self {
        ClientCertificate {
            der: der.into(),
            #[cfg(feature = "security")]
            identity: crate::security::mtls_identity(der).map(Arc::from),
        }
    }

    /// The certificate's first URI subject alternative name (a SPIFFE id), else its first DNS name.
    #[cfg(feature = "security")]
    pub(crate) fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// The leaf certificate, DER-encoded (parse it with an X.509 crate to read more than Marty does).
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

/// The header carrying a request's id, taken from the client when present, generated otherwise.
pub const REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

/// An HTTP server for one service.
#[derive(Debug)]
pub struct Server {
    routes: Router,
    runtime: Runtime,
    registry: Arc<DependencyRegistry>,
    /// `[security]`: what the service's own routes require of a caller.
    #[cfg(feature = "security")]
    authenticator: Option<Arc<crate::security::Authenticator>>,
    /// `[rate_limit]`: each route's allowance per caller.
    #[cfg(feature = "security")]
    rate_limits: Option<Arc<crate::security::RateLimits>>,
    /// `[http.tls]`: the certificate, reloaded when its files change.
    tls: Option<Arc<listener::Tls>>,
    /// The routes' `#[public]` and `#[authorize]`.
    access: &'static [RouteAccess],
    /// `[openapi]`: the description of the routes and its page, open like the probes.
    description: Router,
    readiness: Arc<Readiness>,
    checks: Vec<HealthCheck>,
    #[cfg(feature = "grpc")]
    grpc: Option<grpc::GrpcServices>,
    #[cfg(feature = "events")]
    handlers: Vec<crate::events::EventHandler>,
}

impl Server {
    /// A server for `routes` on `runtime`, with its dependencies (and their metrics). The runtime must
    /// have its configuration: one made with [`Runtime::new`], or the global once loaded or installed.
    pub fn new(routes: Router, runtime: &Runtime) -> Result<Self, ServeError> {
        let registry = runtime.registry().cloned().ok_or_else(|| {
            ServeError::Startup(
                "the runtime has no configuration yet: make it with `Runtime::new(registry)`, or give the global \
                 one its configuration with `DependencyRegistry::install_global` (or use `marty::service::server`)"
                    .into(),
            )
        })?;
        check_features(&registry)?;
        Self::with_registry(routes, runtime.clone(), registry)
    }

    fn with_registry(routes: Router, runtime: Runtime, registry: Arc<DependencyRegistry>) -> Result<Self, ServeError> {
        #[cfg(feature = "security")]
        let authenticator = {
            let config = registry.config();
            match config
                .security
                .as_ref()
                .map(|security| crate::security::Authenticator::from_config(security, &config.file))
            {
                Some(Ok(authenticator)) => Some(authenticator),
                Some(Err(errors)) => return Err(errors.into()),
                None => None,
            }
        };
        #[cfg(feature = "security")]
        let rate_limits = registry.config().rate_limit.as_ref().map(crate::security::RateLimits::new);
        #[cfg(feature = "tls")]
        let tls = match &registry.config().http.tls {
            Some(tls) => Some(listener::Tls::load(tls, &registry.config().file)?),
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        let tls = None;
        Ok(Server {
            routes,
            runtime,
            registry,
            #[cfg(feature = "security")]
            authenticator,
            #[cfg(feature = "security")]
            rate_limits,
            tls,
            access: &[],
            description: Router::new(),
            readiness: Arc::new(Readiness::default()),
            checks: Vec::new(),
            #[cfg(feature = "grpc")]
            grpc: None,
            #[cfg(feature = "events")]
            handlers: Vec::new(),
        })
    }

    /// Adds event consumers, started with the server on the `[events]` broker.
    #[cfg(feature = "events")]
    pub fn with_event_handlers(mut self, handlers: impl IntoIterator<Item = crate::events::EventHandler>) -> Self {
        self.handlers.extend(handlers);
        self
    }

    /// What routes require of their callers beyond `[security] default` (`#[service]` passes its
    /// `#[public]` and `#[authorize]` attributes here).
    pub fn with_route_access(mut self, access: &'static [RouteAccess]) -> Self {
        self.access = access;
        self
    }

    /// Adds readiness probes `/readyz` runs on every request.
    pub fn with_health_checks(mut self, checks: impl IntoIterator<Item = HealthCheck>) -> Self {
        self.checks.extend(checks);
        self
    }

    /// Adds the routes of an existing axum `Router` (its state already provided).
    pub fn merge(mut self, router: Router) -> Self {
        self.routes = self.routes.merge(router);
        self
    }

    /// The readiness flag `/readyz` reports, e.g. to start draining from your own signal.
    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// The address `[http] addr` configures (default `127.0.0.1:8080`).
    pub fn configured_addr(&self) -> SocketAddr {
        self.registry.config().http.addr
    }

    /// The complete application: user routes, built-in endpoints, and the layers every request passes.
    pub fn app(&self) -> Router {
        self.cors(self.in_runtime(self.http_routes())).layer(self.http_layer())
    }

    /// `[security.cors]` around `routes`, outside authentication: a browser's preflight carries no
    /// credentials.
    fn cors(&self, routes: Router) -> Router {
        #[cfg(feature = "security")]
        if let Some(cors) = self.registry.config().security.as_ref().and_then(|security| security.cors.as_ref()) {
            return routes.layer(crate::security::cors::layer(cors));
        }
        routes
    }

    /// The layer every request passes, with this service's metrics and body limit.
    fn http_layer(&self) -> HttpLayer {
        let http = &self.registry.config().http;
        HttpLayer::new(self.registry.metrics().clone(), http.max_body_bytes).security_headers(http.security_headers)
    }

    /// What the readiness rule reads, for `/readyz` and gRPC health.
    fn health_state(&self) -> health::HealthState {
        health::HealthState {
            registry: self.registry.clone(),
            readiness: self.readiness.clone(),
            checks: Arc::new(self.checks.clone()),
        }
    }

    /// User routes and built-in endpoints, before the layer every request passes.
    fn http_routes(&self) -> Router {
        self.api_routes().merge(self.operations_routes()).fallback(errors::not_found)
    }

    /// Requests to a server of a runtime other than the global one (a test's, a second service's)
    /// run in it, so the wrapped calls their handlers make use its dependencies and metrics.
    fn in_runtime(&self, routes: Router) -> Router {
        if self.runtime.is_global() {
            return routes;
        }
        let runtime = self.runtime.clone();
        routes.layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
            runtime.clone().scope(next.run(request))
        }))
    }

    /// The service's own routes and their description.
    fn api_routes(&self) -> Router {
        self.guarded_routes().merge(self.description.clone())
    }

    /// The service's own routes, behind `[security]` when it is configured (the built-in endpoints
    /// stay open to probes and scrapers).
    fn guarded_routes(&self) -> Router {
        #[cfg(feature = "security")]
        if let Some(gate) = self.gate() {
            return self.routes.clone().route_layer(gate.for_routes());
        }
        self.routes.clone()
    }

    /// What the guard of routes and gRPC methods checks, when `[security]` or `[rate_limit]` is
    /// configured.
    #[cfg(feature = "security")]
    fn gate(&self) -> Option<crate::security::Gate> {
        (self.authenticator.is_some() || self.rate_limits.is_some())
            .then(|| crate::security::Gate::new(self.authenticator.clone(), self.rate_limits.clone(), self.access))
    }

    /// `[security.grpc]` names methods these gRPC services serve.
    #[cfg(feature = "grpc")]
    fn check_grpc_access(&self) -> Result<(), marty_config::ConfigErrors> {
        match &self.grpc {
            Some(services) => access::check_grpc(&self.registry.config(), services.names(), services.descriptors()),
            None => Ok(()),
        }
    }

    /// The gRPC services behind the same checks as the routes (health and reflection stay open).
    #[cfg(feature = "grpc")]
    fn guarded_grpc(&self, grpc: Router) -> Router {
        #[cfg(feature = "security")]
        if let Some(gate) = self.gate() {
            return grpc.layer(gate.for_grpc());
        }
        grpc
    }

    /// The built-in endpoints: liveness, readiness and metrics.
    fn operations_routes(&self) -> Router {
        let health = self.health_state();
        let routes = Router::new()
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            .with_state(health)
            .route("/metrics", get(render_metrics).with_state(self.registry.metrics().clone()));
        #[cfg(feature = "faults")]
        if let Some(faults) = crate::fault::endpoint::routes(&self.registry) {
            return routes.merge(faults);
        }
        routes
    }

    /// Serves these gRPC services on the same port (requests with an `application/grpc` content type).
    #[cfg(feature = "grpc")]
    pub fn with_grpc(mut self, services: grpc::GrpcServices) -> Self {
        self.grpc = Some(services);
        self
    }

    /// What connections are served by: HTTP routes, and gRPC services when there are some, each
    /// behind [`HttpLayer`] (inside the router, so it sees the matched route); with `management`,
    /// a second service for the management port holding the built-in endpoints (and gRPC health
    /// and reflection), which then leave the API. Plus the task that keeps gRPC health in step.
    #[cfg_attr(not(feature = "grpc"), allow(unused_mut))]
    fn connection_services(mut self, management: bool) -> ConnectionServices {
        let observe = self.http_layer();
        let api_routes = match management {
            true => self.api_routes().fallback(errors::not_found),
            false => self.http_routes(),
        };
        let http = self.cors(self.in_runtime(api_routes)).layer(observe.clone());
        let management_http = management
            .then(|| self.in_runtime(self.operations_routes()).fallback(errors::not_found).layer(observe.clone()));
        #[cfg(feature = "grpc")]
        if let Some(services) = self.grpc.take() {
            let names = services.names().to_vec();
            let (grpc, management_grpc, reporter) = services.into_routers(management);
            let grpc =
                self.in_runtime(self.guarded_grpc(grpc)).layer(axum::middleware::map_response(grpc::spec_status_codes));
            let health = tokio::spawn(grpc::follow_readiness(reporter, names, self.health_state()));
            let api = dispatch::Dispatch::hybrid(http, grpc.layer(observe.clone()));
            let management = management_http.map(|http| match management_grpc {
                Some(grpc) => dispatch::Dispatch::hybrid(http, grpc.layer(observe)),
                None => dispatch::Dispatch::http(http),
            });
            return ConnectionServices { api, management, grpc_health: Some(health) };
        }
        ConnectionServices {
            api: dispatch::Dispatch::http(http),
            management: management_http.map(dispatch::Dispatch::http),
            grpc_health: None,
        }
    }

    /// Binds `[http] addr` and serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn serve(self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.configured_addr()).await?;
        tracing::info!(addr = %listener.local_addr()?, "serving HTTP (and gRPC, when the service has some)");
        let second = match self.registry.config().grpc.as_ref().map(|grpc| grpc.addr) {
            Some(addr) if addr != self.configured_addr() => {
                let listener = TcpListener::bind(addr).await?;
                tracing::info!(addr = %listener.local_addr()?, "serving gRPC on [grpc] addr as well");
                Some(listener)
            }
            _ => None,
        };
        self.serve_listeners(listener, second, shutdown_signal()).await
    }

    /// Serves on `listener` until `signal` completes, then shuts down gracefully.
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_listeners(listener, None, signal).await
    }

    /// Serves every request on `listener`, and on `second` too when given (`[grpc] addr`). Startup
    /// (the broker, Marty's tables, the relay and the consumers) runs while the listeners already
    /// answer: `/healthz` says alive and `/readyz` "starting" until it is done, so an orchestrator
    /// neither kills a slow start nor sends it traffic. A startup that fails stops the server.
    #[cfg_attr(not(feature = "events"), allow(unused_mut))]
    async fn serve_listeners(
        mut self,
        listener: TcpListener,
        second: Option<TcpListener>,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        #[cfg(feature = "grpc")]
        self.check_grpc_access().map_err(|errors| std::io::Error::new(std::io::ErrorKind::InvalidInput, errors))?;
        let config = self.registry.config();
        let (drain_delay, shutdown_timeout) = (drain_delay(&config.service), config.service.shutdown_timeout);
        let readiness = self.readiness.clone();
        readiness.begin_starting();
        let exports = crate::telemetry::Exports::start(self.registry.metrics());
        #[cfg(feature = "security")]
        if let Some(authenticator) = &self.authenticator {
            authenticator.start();
        }
        // Flips to true when the listeners must stop accepting; every listener and the in-flight
        // deadline wait on it.
        let (stop_accepting, stopped) = tokio::sync::watch::channel(false);
        let stop_accepting = Arc::new(stop_accepting);
        let shutdown = tokio::spawn({
            let (readiness, stop_accepting) = (readiness.clone(), stop_accepting.clone());
            async move {
                signal.await;
                readiness.start_draining();
                tracing::info!(?drain_delay, "shutdown requested: readiness is now 503");
                tokio::time::sleep(drain_delay).await;
                tracing::info!(?shutdown_timeout, "no longer accepting connections; waiting for in-flight requests");
                stop_accepting.send_replace(true);
            }
        });
        let deadline = {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stopped| *stopped).await;
            }
        };
        #[cfg_attr(not(feature = "events"), allow(unused_variables))]
        let (runtime, registry) = (self.runtime.clone(), self.registry.clone());
        #[cfg(feature = "events")]
        let startup = events::start(
            runtime.clone(),
            registry.clone(),
            std::mem::take(&mut self.handlers),
            stop_accepting.subscribe(),
        );
        #[cfg(not(feature = "events"))]
        let startup = std::future::ready(Ok::<(), std::io::Error>(()));
        let management = match &config.management {
            Some(management) => {
                let listener = TcpListener::bind(management.addr).await?;
                tracing::info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics on [management] addr");
                Some(listener)
            }
            None => None,
        };
        let limits = Arc::new(listener::Limits::from_config(&config.http));
        tracing::info!(?limits, "connection limits");
        let tls = self.tls.clone();
        #[cfg(feature = "tls")]
        if let Some(tls) = &tls {
            tls.watch();
        }
        let services = self.connection_services(management.is_some());
        let grpc_health = services.grpc_health;
        let serve = |listener: TcpListener, service: dispatch::Dispatch, tls: Option<Arc<listener::Tls>>| {
            listener::serve(listener, service, limits.clone(), stopped.clone(), tls)
        };
        // The API's ports get TLS; the management port stays plain for in-cluster probes.
        let first = serve(listener, services.api.clone(), tls.clone());
        let second = second.map(|second| serve(second, services.api, tls));
        let third = management.zip(services.management).map(|(listener, service)| serve(listener, service, None));
        let server = async move {
            let optional = |serving: Option<_>| async move {
                match serving {
                    Some(serving) => serving.await,
                    None => Ok(()),
                }
            };
            tokio::try_join!(first, optional(second), optional(third)).map(|_| ())
        };
        let reloads = reload::spawn(registry);
        let stop_background = move || {
            reloads.abort();
            shutdown.abort();
            if let Some(grpc_health) = &grpc_health {
                grpc_health.abort();
            }
        };
        tokio::pin!(server);
        let started = tokio::select! {
            // Startup first: a service with nothing to start is ready before its first connection.
            biased;
            started = startup => started,
            // Stopped (or failed) before startup finished: nothing was started to wait for.
            result = &mut server => {
                stop_background();
                exports.finish().await;
                return result;
            }
        };
        #[cfg_attr(not(feature = "events"), allow(clippy::let_unit_value))]
        let events = match started {
            Ok(events) => {
                readiness.finish_starting();
                tracing::info!("started: readiness follows the dependencies and probes now");
                events
            }
            Err(error) => {
                tracing::error!(%error, "startup failed; stopping");
                readiness.start_draining();
                stop_accepting.send_replace(true);
                let _ = tokio::time::timeout(shutdown_timeout, &mut server).await;
                stop_background();
                exports.finish().await;
                return Err(error);
            }
        };
        let result = tokio::select! {
            result = &mut server => result,
            () = async { deadline.await; tokio::time::sleep(shutdown_timeout).await } => {
                tracing::warn!(?shutdown_timeout, "in-flight requests did not finish in time; stopping anyway");
                Ok(())
            }
        };
        stop_background();
        #[cfg(feature = "events")]
        events.finish(shutdown_timeout).await;
        #[cfg(not(feature = "events"))]
        let () = events;
        // After the requests that may start sagas: their replicas elsewhere continue them at once.
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        runtime.shared().sagas.stop_all().await;
        exports.finish().await;
        result
    }

    /// Starts serving on `listener` in the background: for tests and embedding.
    pub fn start(self, listener: TcpListener) -> std::io::Result<RunningServer> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let readiness = self.readiness.clone();
        let task = tokio::spawn(self.serve_with_shutdown(listener, async move {
            let _ = stopped.await;
        }));
        Ok(RunningServer { addr, stop: Some(stop), task, readiness })
    }
}

/// A server started with [`Server::start`].
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    readiness: Arc<Readiness>,
}

impl RunningServer {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its readiness flag.
    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// Begins graceful shutdown, as SIGTERM would, and waits for it to finish.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// `[service] drain_delay`, or where it is unset, what fits where the service runs: 5 s in
/// Kubernetes, whose endpoints take a few seconds to stop routing to a terminating pod (every pod has
/// `KUBERNETES_SERVICE_HOST`), else 0, so Ctrl-C on a terminal stops at once.
fn drain_delay(service: &marty_config::ServiceConfig) -> std::time::Duration {
    const IN_KUBERNETES: std::time::Duration = std::time::Duration::from_secs(5);
    service.drain_delay.unwrap_or_else(|| match std::env::var_os("KUBERNETES_SERVICE_HOST") {
        Some(_) => IN_KUBERNETES,
        None => std::time::Duration::ZERO,
    })
}

/// Completes on SIGTERM (how orchestrators stop a process) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops the service");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, content_type)], metrics.render()).into_response()
}

/// The services of [`Server::connection_services`].
struct ConnectionServices {
    api: dispatch::Dispatch,
    management: Option<dispatch::Dispatch>,
    grpc_health: Option<tokio::task::JoinHandle<()>>,
}
