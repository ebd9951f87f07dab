//! [`TimeoutLayer`]: a per-dependency timeout as a tower layer.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{Deadline, WithDeadline};
use crate::error::Error;
use crate::BoxFuture;

/// Cancels a call that takes longer than `timeout` with [`Error::Timeout`]. The inner service's error
/// type must hold Marty's errors (`From<marty::Error>`; wrap others with `marty::CallError`).
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    dependency: Arc<str>,
    timeout: Duration,
}

impl TimeoutLayer {
    /// A timeout for calls to `dependency`.
    pub fn new(dependency: impl Into<Arc<str>>, timeout: Duration) -> Self {
        TimeoutLayer { dependency: dependency.into(), timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService { inner, layer: self.clone() }
    }
}

/// The service [`TimeoutLayer`] builds.
#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    layer: TimeoutLayer,
}

impl<S, Req> Service<Req> for TimeoutService<S>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    S::Error: From<Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let deadline = Deadline::after(Instant::now(), self.layer.timeout);
        let future = WithDeadline::new(self.inner.call(request), deadline.at);
        let dependency = self.layer.dependency.clone();
        Box::pin(async move { future.await.unwrap_or_else(|_| Err(deadline.elapsed_error(&dependency).into())) })
    }
}
