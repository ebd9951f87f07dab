//! [`TimeoutLayer`]: a per-dependency timeout as a tower layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{Deadline, WithDeadline};
use crate::error::Error;

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
    S::Error: From<Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let deadline = Deadline::after(Instant::now(), self.layer.timeout);
        let inner = WithDeadline::new(self.inner.call(request), deadline.at);
        ResponseFuture { inner, deadline, dependency: self.layer.dependency.clone() }
    }
}

pin_project_lite::pin_project! {
    /// [`TimeoutService`]'s future: the call's, or [`Error::Timeout`] once its deadline passes.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: WithDeadline<F>,
        deadline: Deadline,
        dependency: Arc<str>,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(match ready!(this.inner.poll(cx)) {
            Ok(result) => result,
            Err(_elapsed) => Err(this.deadline.elapsed_error(this.dependency).into()),
        })
    }
}
