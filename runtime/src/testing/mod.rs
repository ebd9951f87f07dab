//! The testing kit (feature `testing`, for `[dev-dependencies]`): a `#[service]` served in-process
//! on an ephemeral port, in a runtime of its own, with a client for its routes, the events it
//! publishes, and control of its dependencies.
//!
//! ```ignore
//! use std::time::Duration;
//! use marty::testing::TestService;
//!
//! #[tokio::test]
//! async fn an_order_is_placed_and_announced() {
//!     let service = TestService::start(Orders::default()).await;
//!     let placed = service.client().post("/orders").json(&serde_json::json!({"item": "book"})).send().await;
//!     assert_eq!(placed.status(), 201);
//!     let event = service.expect_event::<OrderPlaced>(|event| event.item == "book").within(Duration::from_secs(5)).await;
//!
//!     // The payments API misbehaves: its breaker is open.
//!     service.dependency("payments_api").open_breaker();
//!     assert_eq!(service.client().post("/orders").json(&event).send().await.status(), 503);
//! }
//! ```
//!
//! What a test gets:
//! - **its own runtime** ([`Runtime`]): the service's configuration as it compiled (`marty.toml`
//!   checked by the macros, not re-read from disk nor from the process's `MARTY__` variables), its
//!   own dependencies, metrics and in-process broker. The wrapped calls the service's handlers,
//!   consumers and saga steps make use them, so tests running side by side share nothing (the
//!   tracing subscriber aside: a process has one). [`TestService::run`] runs the test's own calls
//!   to `#[database_call]` functions in it too.
//! - **the server** on `127.0.0.1` at a port of its own, with the probes on the same port and
//!   `[events]` on the in-process broker whatever the file says; [`TestServiceBuilder::env`] sets
//!   overrides as `MARTY__` variables would (e.g. a database URL), without touching the process's
//!   environment.
//! - **events**: every message published, and [`TestService::expect_event`], which waits for one
//!   that matches.
//! - **dependencies** ([`DependencyControl`]): open or close a breaker, fill a bulkhead, inject
//!   latency, errors or hung calls (the fault injection of the `faults` feature, here without
//!   `[faults] enabled`, since the test asks for it in code).
//! - **time**: under `#[tokio::test(start_paused = true)]`, timeouts, retry backoffs, breakers'
//!   `open_for`, saga backoffs and outbox retries pass at once and in order (sagas and the outbox
//!   read tokio's clock). Tokio moves a paused clock on whenever the runtime waits, also while a
//!   database or a socket answers: keep paused tests to what does not wait on real I/O under a
//!   timeout.

mod client;
mod events;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use marty_config::{Config, Environment, FaultConfig};

pub use client::{TestClient, TestRequest, TestResponse};
pub use events::ExpectEvent;

use crate::bulkhead::OwnedBulkheadPermit;
use crate::events::{Event, MemoryBroker, Message};
use crate::fault::FaultSource;
use crate::policy::Dependency;
use crate::registry::DependencyRegistry;
use crate::service::{Routes, RunningServer};
use crate::Runtime;

/// A `#[service]` running in a test (see the [module](self)).
#[derive(Debug)]
pub struct TestService {
    runtime: Runtime,
    server: Option<RunningServer>,
    client: TestClient,
}

/// Sets up a [`TestService`] before it starts.
#[derive(Debug)]
pub struct TestServiceBuilder<S> {
    overrides: Vec<(String, String)>,
    _service: std::marker::PhantomData<fn() -> S>,
}

impl TestService {
    /// Serves `service` with the configuration it compiled with. Panics, with the errors, when the
    /// configuration is invalid or the server cannot start: this is a test's setup.
    pub async fn start<S: Routes>(service: S) -> TestService {
        Self::builder::<S>().start(service).await
    }

    /// Sets up a service of type `S` (overrides; a state built with its configuration) before it
    /// is served.
    pub fn builder<S: Routes>() -> TestServiceBuilder<S> {
        TestServiceBuilder { overrides: Vec::new(), _service: std::marker::PhantomData }
    }

    /// The runtime the service runs in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Where the service listens.
    pub fn addr(&self) -> SocketAddr {
        self.client.addr()
    }

    /// A client of the service's routes.
    pub fn client(&self) -> &TestClient {
        &self.client
    }

    /// Runs `future` in the service's runtime: the wrapped calls it makes use the service's
    /// dependencies (and the controls of [`Self::dependency`]).
    pub async fn run<F: Future>(&self, future: F) -> F::Output {
        self.runtime.clone().scope(future).await
    }

    /// The service's configuration and dependencies.
    pub fn registry(&self) -> &Arc<DependencyRegistry> {
        self.runtime.registry().expect("a test runtime has its configuration")
    }

    /// The Prometheus exposition of the service's metrics, as `/metrics` serves it.
    pub fn metrics(&self) -> String {
        self.registry().metrics().render()
    }

    /// Control of the dependency `name` under `[dependencies]`. Panics, naming the declared ones,
    /// when there is none.
    pub fn dependency(&self, name: &str) -> DependencyControl {
        match self.registry().dependency(name) {
            Some(dependency) => DependencyControl { dependency: dependency.clone() },
            None => {
                let config = self.registry().config();
                let declared = marty_config::suggest::list(config.dependencies.keys().map(String::as_str));
                panic!("no dependency `{name}` in the service's configuration; declared: {declared}")
            }
        }
    }

    /// The in-process broker the service publishes to and consumes from.
    pub fn broker(&self) -> Arc<MemoryBroker> {
        self.runtime.memory_broker()
    }

    /// Every message published since the service started, oldest first.
    pub fn published(&self) -> Vec<Message> {
        self.broker().published()
    }

    /// The events of type `E` published since the service started, oldest first (each once, even
    /// when the outbox published it again).
    pub fn published_events<E: Event>(&self) -> Vec<E> {
        events::decoded::<E>(&self.published())
    }

    /// Waits for an event of type `E` that `matching` accepts, published before or after this
    /// call: `.within(timeout).await` returns it, or panics listing the `E`s that were published.
    pub fn expect_event<E: Event>(&self, matching: impl Fn(&E) -> bool + Send + 'static) -> ExpectEvent<E> {
        ExpectEvent::new(self.broker(), Box::new(matching))
    }

    /// Shuts the service down as SIGTERM would (consumers settle, sagas stop) and waits for it.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("the test service shuts down");
        }
    }
}

impl<S: Routes> TestServiceBuilder<S> {
    /// Overrides a key as the `MARTY__` variable `name` would (`MARTY__DEPENDENCIES__ORDERS_DB__URL`),
    /// or sets a variable that `${VAR}` in the file reads, for this service only.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.overrides.push((name.into(), value.into()));
        self
    }

    /// Serves `service`.
    pub async fn start(self, service: S) -> TestService {
        self.start_with(|_| async { Ok::<_, std::convert::Infallible>(service) }).await
    }

    /// Builds the service's state with its configuration, in its runtime (connect pools, start
    /// saga orchestrators: what `marty::service::server_with` does at startup), then serves it.
    /// Panics with `build`'s error.
    pub async fn start_with<F, Fut, E>(self, build: F) -> TestService
    where
        F: FnOnce(Arc<DependencyRegistry>) -> Fut,
        Fut: Future<Output = Result<S, E>>,
        E: std::fmt::Display,
    {
        let (path, text) = S::CONFIG;
        let environment = Environment::from_pairs(self.overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut config = Config::parse_at_startup(text, path, &environment)
            .unwrap_or_else(|errors| panic!("the service's configuration does not load:\n{errors}"));
        for_tests(&mut config);
        let runtime = Runtime::new(DependencyRegistry::from_config(config));
        runtime.memory_broker().record_published();
        let registry = runtime.registry().expect("made with its configuration").clone();
        let service = runtime
            .clone()
            .scope(build(registry))
            .await
            .unwrap_or_else(|error| panic!("the test service's state could not be built: {error}"));
        let server = crate::service::server_for_tests(&runtime, service)
            .unwrap_or_else(|error| panic!("the test service does not start: {error}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let server = server.start(listener).expect("the test service starts");
        let client = TestClient::new(server.addr());
        TestService { runtime, server: Some(server), client }
    }
}

/// One port, the in-process broker, and no pause before stopping.
fn for_tests(config: &mut Config) {
    config.management = None;
    config.grpc = None;
    config.service.drain_delay = Some(std::time::Duration::ZERO);
    if let Some(events) = config.events.as_mut() {
        events.broker = marty_config::Broker::Memory;
    }
}

/// Control of one dependency in a test (see [`TestService::dependency`]).
#[derive(Debug, Clone)]
pub struct DependencyControl {
    dependency: Arc<Dependency>,
}

/// Holds every permit of a bulkhead until dropped (see [`DependencyControl::fill_bulkhead`]).
#[derive(Debug)]
#[must_use = "the bulkhead is free again once this is dropped"]
pub struct FullBulkhead {
    _permits: Vec<OwnedBulkheadPermit>,
}

impl DependencyControl {
    /// Opens the breaker: calls are turned away (`503` from a route) until `open_for` has passed,
    /// then trial calls decide.
    pub fn open_breaker(&self) -> &Self {
        self.dependency.circuit_breaker().force_open();
        self
    }

    /// Closes the breaker, with an empty window.
    pub fn close_breaker(&self) -> &Self {
        self.dependency.circuit_breaker().force_closed();
        self
    }

    /// Takes every bulkhead permit until the returned guard is dropped: calls wait `max_wait`,
    /// then are rejected.
    pub fn fill_bulkhead(&self) -> FullBulkhead {
        let bulkhead = self.dependency.bulkhead();
        FullBulkhead { _permits: std::iter::from_fn(|| bulkhead.try_acquire_owned()).collect() }
    }

    /// Injects `fault` into every attempt from now on (latency, a share of errors, a share of
    /// attempts that hang until their timeout).
    pub fn inject(&self, fault: FaultConfig) -> &Self {
        self.dependency.faults().set(Some(fault), FaultSource::Code);
        self
    }

    /// Adds `latency` before every attempt (counted against its timeout).
    pub fn add_latency(&self, latency: std::time::Duration) -> &Self {
        self.inject(self.fault().with_latency(latency))
    }

    /// Fails this share of attempts with a transient error.
    pub fn fail(&self, rate: f64) -> &Self {
        self.inject(self.fault().with_error_rate(rate))
    }

    /// Makes this share of attempts hang until their timeout.
    pub fn hang(&self, rate: f64) -> &Self {
        self.inject(self.fault().with_timeout_rate(rate))
    }

    /// No injected fault.
    pub fn heal(&self) -> &Self {
        self.dependency.faults().set(None, FaultSource::Code);
        self
    }

    /// The dependency's state: breaker, bulkhead, configuration.
    pub fn dependency(&self) -> &Arc<Dependency> {
        &self.dependency
    }

    fn fault(&self) -> FaultConfig {
        self.dependency.faults().current().map(|(fault, _)| fault).unwrap_or_default()
    }
}
