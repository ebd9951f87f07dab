//! `/healthz` (the process is alive) and `/readyz` (it should receive traffic: not draining, and no
//! dependency's circuit breaker open).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::circuit_breaker::CircuitState;
use crate::registry::DependencyRegistry;

/// Whether the service is draining (shutting down): readiness fails first, so load balancers stop
/// sending traffic before the listener closes.
#[derive(Debug, Default)]
pub struct Readiness {
    draining: AtomicBool,
}

impl Readiness {
    /// Marks the service as shutting down.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

type Probe = dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync;

/// A named readiness probe, run by every `/readyz` request: a `#[health_check]` method, or any async
/// fn returning `Result`. A probe that fails, or takes longer than [`HealthCheck::TIMEOUT`], makes
/// the service not ready.
#[derive(Clone)]
pub struct HealthCheck {
    name: &'static str,
    probe: Arc<Probe>,
}

impl fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheck").field("name", &self.name).finish_non_exhaustive()
    }
}

impl HealthCheck {
    /// How long one probe may take before it counts as failed.
    pub const TIMEOUT: Duration = Duration::from_secs(2);

    /// A probe named `name` that passes when `probe` returns `Ok`.
    pub fn new<F, Fut, T, E>(name: &'static str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: fmt::Display,
    {
        let probe = move || -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
            let check = probe();
            Box::pin(async move { check.await.map(drop).map_err(|error| error.to_string()) })
        };
        HealthCheck { name, probe: Arc::new(probe) }
    }

    /// Runs the probe within [`Self::TIMEOUT`].
    async fn run(&self) -> Result<(), String> {
        match tokio::time::timeout(Self::TIMEOUT, (self.probe)()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", Self::TIMEOUT)),
        }
    }
}

/// What the health endpoints read.
#[derive(Debug, Clone)]
pub(crate) struct HealthState {
    pub(crate) registry: &'static DependencyRegistry,
    pub(crate) readiness: Arc<Readiness>,
    pub(crate) checks: Arc<Vec<HealthCheck>>,
}

pub(crate) async fn healthz() -> Response {
    json(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

/// The dependencies whose circuit breaker is open.
pub(crate) fn open_breakers(registry: &DependencyRegistry) -> Vec<String> {
    let config = registry.config();
    config
        .dependencies
        .keys()
        .filter(|name| registry.dependency(name).is_some_and(|d| d.circuit_breaker().state() == CircuitState::Open))
        .cloned()
        .collect()
}

pub(crate) async fn readyz(State(state): State<HealthState>) -> Response {
    let mut dependencies = serde_json::Map::new();
    let down = open_breakers(state.registry);
    let config = state.registry.config();
    // A BTreeMap: the dependencies come out sorted, so the JSON is stable.
    for name in config.dependencies.keys() {
        let Some(dependency) = state.registry.dependency(name) else { continue };
        let circuit = dependency.circuit_breaker().state();
        dependencies.insert(
            name.to_owned(),
            serde_json::json!({
                "kind": dependency.kind().as_str(),
                "circuit": circuit.to_string(),
                "bulkhead_available": dependency.bulkhead().available(),
                "max_concurrent": dependency.bulkhead().max_concurrent(),
            }),
        );
    }
    // Probes run concurrently, so the slowest one bounds the answer.
    let running: Vec<_> = state
        .checks
        .iter()
        .map(|check| {
            (
                check.name,
                tokio::spawn({
                    let check = check.clone();
                    async move { check.run().await }
                }),
            )
        })
        .collect();
    let mut checks = serde_json::Map::new();
    let mut failing = Vec::new();
    for (name, task) in running {
        let result = task.await.unwrap_or_else(|panic| Err(format!("the probe panicked: {panic}")));
        let entry = match &result {
            Ok(()) => serde_json::json!({ "status": "pass" }),
            Err(detail) => {
                failing.push(name);
                serde_json::json!({ "status": "fail", "detail": detail })
            }
        };
        checks.insert(name.to_owned(), entry);
    }
    let draining = state.readiness.is_draining();
    let (status, word) = match (draining, down.is_empty() && failing.is_empty()) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        (false, false) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
        (false, true) => (StatusCode::OK, "ready"),
    };
    json(
        status,
        serde_json::json!({ "status": word, "down": down, "failing_checks": failing, "dependencies": dependencies, "checks": checks }),
    )
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
