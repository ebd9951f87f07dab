//! `/healthz` (the process is alive) and `/readyz` (this replica should receive traffic), and the
//! one rule gRPC health follows too. Ready means: startup has finished (broker connected, Marty's
//! tables migrated, relay and consumers started), the service is not draining, every
//! `#[health_check]` passes, and no dependency declared `readiness = "required"` has a breaker that
//! turns calls away. Other dependencies' breakers are shown, never counted: one dependency's outage
//! must not take every replica out of its load balancer, where no call would ever close the breaker.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use marty_config::DependencyReadiness;

use crate::registry::DependencyRegistry;
use crate::BoxFuture;

/// Whether the service is still starting or already draining (shutting down): readiness fails in
/// both, so load balancers send traffic only once everything runs, and stop before the listener
/// closes.
#[derive(Debug, Default)]
pub struct Readiness {
    starting: AtomicBool,
    draining: AtomicBool,
    /// Wakes gRPC health at once when either flag changes, rather than at its next poll.
    changed: tokio::sync::Notify,
}

impl Readiness {
    /// Marks the service as starting: not ready until [`Readiness::finish_starting`].
    pub fn begin_starting(&self) {
        self.starting.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Marks startup as done.
    pub fn finish_starting(&self) {
        self.starting.store(false, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Completes when a flag changed since the last call (or at once, if one did meanwhile).
    #[cfg(feature = "grpc")]
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Whether startup is still under way.
    pub fn is_starting(&self) -> bool {
        self.starting.load(Ordering::SeqCst)
    }

    /// Marks the service as shutting down.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

type Probe = dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync;

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
        let probe = move || -> BoxFuture<'static, Result<(), String>> {
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
    pub(crate) registry: Arc<DependencyRegistry>,
    pub(crate) readiness: Arc<Readiness>,
    pub(crate) checks: Arc<Vec<HealthCheck>>,
}

pub(crate) async fn healthz() -> Response {
    json(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

/// Why the service is not ready, if it is not; the cheap part of the rule, without the probes.
fn unready_because(state: &HealthState) -> Option<&'static str> {
    if state.readiness.is_draining() {
        Some("draining")
    } else if state.readiness.is_starting() {
        Some("starting")
    } else {
        None
    }
}

/// The dependencies declared `readiness = "required"` whose breaker turns calls away now.
fn required_down(registry: &DependencyRegistry) -> Vec<String> {
    let config = registry.config();
    config
        .dependencies
        .values()
        .filter(|dependency| dependency.readiness == DependencyReadiness::Required)
        .filter(|dependency| registry.dependency(&dependency.name).is_some_and(|d| d.circuit_breaker().rejects_calls()))
        .map(|dependency| dependency.name.clone())
        .collect()
}

/// Runs every probe at once (the slowest bounds the wait): each one's result, by name.
async fn run_checks(checks: &[HealthCheck]) -> Vec<(&'static str, Result<(), String>)> {
    let running: Vec<_> = checks
        .iter()
        .map(|check| {
            let check = check.clone();
            (check.name, tokio::spawn(async move { check.run().await }))
        })
        .collect();
    let mut results = Vec::with_capacity(running.len());
    for (name, task) in running {
        results.push((name, task.await.unwrap_or_else(|panic| Err(format!("the probe panicked: {panic}")))));
    }
    results
}

/// The readiness rule without the probes: started, not draining, no required dependency down.
#[cfg(feature = "grpc")]
pub(crate) fn ready_but_for_probes(state: &HealthState) -> bool {
    unready_because(state).is_none() && required_down(&state.registry).is_empty()
}

/// Whether every `#[health_check]` passes.
#[cfg(feature = "grpc")]
pub(crate) async fn probes_pass(state: &HealthState) -> bool {
    run_checks(&state.checks).await.iter().all(|(_, result)| result.is_ok())
}

pub(crate) async fn readyz(State(state): State<HealthState>) -> Response {
    let config = state.registry.config();
    let mut dependencies = serde_json::Map::new();
    // A BTreeMap: the dependencies come out sorted, so the JSON is stable.
    for (name, declared) in &config.dependencies {
        let Some(dependency) = state.registry.dependency(name) else { continue };
        #[cfg_attr(not(feature = "faults"), allow(unused_mut))]
        let mut entry = serde_json::json!({
            "kind": dependency.kind().as_str(),
            "readiness": declared.readiness.as_str(),
            "circuit": dependency.circuit_breaker().state().to_string(),
            "bulkhead_available": dependency.bulkhead().available(),
            "max_concurrent": dependency.bulkhead().max_concurrent(),
        });
        // Shown, never counted: an injected fault is meant to be seen through the policies.
        #[cfg(feature = "faults")]
        if let Some(current) = dependency.faults().current() {
            entry["fault"] = crate::fault::endpoint::describe(Some(current));
        }
        dependencies.insert(name.to_owned(), entry);
    }
    let down = required_down(&state.registry);
    let mut checks = serde_json::Map::new();
    let mut failing = Vec::new();
    for (name, result) in run_checks(&state.checks).await {
        let entry = match &result {
            Ok(()) => serde_json::json!({ "status": "pass" }),
            Err(detail) => {
                failing.push(name);
                serde_json::json!({ "status": "fail", "detail": detail })
            }
        };
        checks.insert(name.to_owned(), entry);
    }
    let word = match unready_because(&state) {
        Some(reason) => reason,
        None if down.is_empty() && failing.is_empty() => "ready",
        None => "not_ready",
    };
    let status = if word == "ready" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(
        status,
        serde_json::json!({ "status": word, "down": down, "failing_checks": failing, "dependencies": dependencies, "checks": checks }),
    )
}

/// `body` as `application/json` with `status`.
pub(crate) fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
