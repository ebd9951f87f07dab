//! [`RetryLayer`]: retry of transient errors as a tower layer (requests must be `Clone`).

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::{RetryBudget, RetryPolicy};
use crate::classify::Classify;
use crate::BoxFuture;

/// Retries calls whose error [`Classify`]es as transient, within a shared [`RetryBudget`].
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: RetryPolicy,
    budget: Arc<RetryBudget>,
}

impl RetryLayer {
    /// A layer retrying by `policy`, spending from `budget`.
    pub fn new(policy: RetryPolicy, budget: Arc<RetryBudget>) -> Self {
        RetryLayer { policy, budget }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService { inner, layer: self.clone() }
    }
}

/// The service [`RetryLayer`] builds.
#[derive(Debug, Clone)]
pub struct RetryService<S> {
    inner: S,
    layer: RetryLayer,
}

impl<S, Req> Service<Req> for RetryService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    S::Error: Classify,
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
        let mut inner = std::mem::replace(&mut self.inner, ready_clone);
        let RetryLayer { policy, budget } = self.layer.clone();
        Box::pin(async move {
            budget.deposit();
            let mut attempt = 1;
            loop {
                let result = inner.call(request.clone()).await;
                match result {
                    Err(error)
                        if error.classify().is_transient()
                            && attempt < policy.max_attempts
                            && budget.try_withdraw() =>
                    {
                        super::effects::note_retry();
                        tokio::time::sleep(policy.backoff(attempt)).await;
                        attempt += 1;
                        std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                    }
                    other => return other,
                }
            }
        })
    }
}
