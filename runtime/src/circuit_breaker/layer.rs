//! [`CircuitBreakerLayer`]: a shared circuit breaker as a tower layer.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{CallOutcome, CircuitBreaker};
use crate::classify::Classify;
use crate::error::Error;
use crate::BoxFuture;

/// Rejects calls with [`Error::CircuitOpen`] while the shared breaker is open and records every
/// call's outcome (classified by [`Classify`]) into it.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    breaker: Arc<CircuitBreaker>,
}

impl CircuitBreakerLayer {
    /// A layer sharing `breaker`.
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        CircuitBreakerLayer { breaker }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService { inner, breaker: self.breaker.clone() }
    }
}

/// The service [`CircuitBreakerLayer`] builds.
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
}

impl<S, Req> Service<Req> for CircuitBreakerService<S>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    S::Error: From<Error> + Classify,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        if let Err(error) = self.breaker.try_acquire().map(drop) {
            return Box::pin(std::future::ready(Err(error.into())));
        }
        let breaker = self.breaker.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            // Acquired again inside the future so the permit lives exactly as long as the call:
            // a cancelled call hands its half-open trial slot back.
            let permit = breaker.try_acquire()?;
            let start = Instant::now();
            let result = future.await;
            let class = result.as_ref().err().map(Classify::classify);
            permit.record(CallOutcome::new(class, start.elapsed(), breaker.slow_call_duration()));
            result
        })
    }
}
