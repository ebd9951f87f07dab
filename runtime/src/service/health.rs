//! `/healthz` (the process is alive) and `/readyz` (it should receive traffic: not draining, and no
//! dependency's circuit breaker open).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// What the health endpoints read.
#[derive(Debug, Clone)]
pub(crate) struct HealthState {
    pub(crate) registry: &'static DependencyRegistry,
    pub(crate) readiness: Arc<Readiness>,
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
    let mut names: Vec<&str> = config.dependencies.keys().map(String::as_str).collect();
    names.sort_unstable();
    for name in names {
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
    let draining = state.readiness.is_draining();
    let (status, word) = match (draining, down.is_empty()) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        (false, false) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
        (false, true) => (StatusCode::OK, "ready"),
    };
    json(status, serde_json::json!({ "status": word, "down": down, "dependencies": dependencies }))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
