//! [`CircuitBreakerLayer`]: a shared circuit breaker as a tower layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{CallOutcome, CircuitBreaker, OwnedPermit};
use crate::classify::Classify;
use crate::error::Error;

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
    S::Error: From<Error> + Classify,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.breaker.try_acquire_owned() {
            // Open: no call is made.
            Err(error) => ResponseFuture { inner: None, permit: None, started: None, rejected: Some(error) },
            Ok(permit) => ResponseFuture {
                inner: Some(self.inner.call(request)),
                permit: Some(permit),
                started: None,
                rejected: None,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// [`CircuitBreakerService`]'s future: [`Error::CircuitOpen`] when the breaker turned the call
    /// away, else the call's result, recorded into the breaker. It holds the call's permit, so a
    /// cancelled call hands its half-open trial slot back when the future is dropped.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        // The call's permit, until its outcome is recorded.
        permit: Option<OwnedPermit>,
        // When the call was first polled: its duration counts from there.
        started: Option<Instant>,
        // Why the breaker turned the call away (then `inner` is `None`).
        rejected: Option<Error>,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: From<Error> + Classify,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(error) = this.rejected.take() {
            return Poll::Ready(Err(error.into()));
        }
        let started = *this.started.get_or_insert_with(Instant::now);
        // `None` only once a rejection was returned: polled after completion, as an `async` block would.
        let inner = this.inner.as_pin_mut().expect("`ResponseFuture` polled after completion");
        let result = ready!(inner.poll(cx));
        if let Some(permit) = this.permit.take() {
            let class = result.as_ref().err().map(Classify::classify);
            let slow = permit.breaker.slow_call_duration();
            permit.record(CallOutcome::new(class, started.elapsed(), slow));
        }
        Poll::Ready(result)
    }
}
