//! [`DependencyLayer`]: a dependency's whole policy (retry, breaker, timeout, bulkhead, metrics) as one
//! tower layer, running the same [`Call::attempt`](super::Call::attempt) as the macros.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::CallPolicy;
use crate::classify::Classify;
use crate::error::Error;
use crate::BoxFuture;

/// Wraps a service in one call site's [`CallPolicy`]. Requests must be `Clone` (a retry sends one again).
#[derive(Debug, Clone)]
pub struct DependencyLayer {
    policy: Arc<CallPolicy>,
}

impl DependencyLayer {
    /// A layer applying `policy`.
    pub fn new(policy: Arc<CallPolicy>) -> Self {
        DependencyLayer { policy }
    }
}

impl<S> Layer<S> for DependencyLayer {
    type Service = DependencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DependencyService { inner, policy: self.policy.clone() }
    }
}

/// The service [`DependencyLayer`] builds.
#[derive(Debug, Clone)]
pub struct DependencyService<S> {
    inner: S,
    policy: Arc<CallPolicy>,
}

impl<S, Req> Service<Req> for DependencyService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    S::Error: From<Error> + Classify,
    Req: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let ready_clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready_clone);
        let policy = self.policy.clone();
        Box::pin(async move {
            // The loop of `CallPolicy::call`, written out so the future owns `inner` and `request`
            // instead of lending them to a closure (which would demand `S: Sync`).
            let mut call = policy.begin();
            loop {
                let mut attempt_service = inner.clone();
                let attempt_request = request.clone();
                let attempt = async move {
                    std::future::poll_fn(|cx| attempt_service.poll_ready(cx)).await?;
                    attempt_service.call(attempt_request).await
                };
                if let ControlFlow::Break(result) = call.attempt(attempt, S::Error::classify, S::Error::from).await {
                    return result;
                }
            }
        })
    }
}
