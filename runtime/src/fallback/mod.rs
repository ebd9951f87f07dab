//! Fallback: when a call fails for good (after retries, or turned away by the breaker or bulkhead), an
//! alternative answer from the error: a cached value, a default, a degraded response.
//!
//! The macros take `fallback = path`; this is the same as a tower layer, placed outermost.

use std::future::Future;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::BoxFuture;

/// Answers a failed call with `fallback(error)`.
#[derive(Debug, Clone)]
pub struct FallbackLayer<F> {
    fallback: F,
}

impl<F> FallbackLayer<F> {
    /// A layer calling `fallback` with the error of every failed call.
    pub fn new(fallback: F) -> Self {
        FallbackLayer { fallback }
    }
}

impl<S, F: Clone> Layer<S> for FallbackLayer<F> {
    type Service = FallbackService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService { inner, fallback: self.fallback.clone() }
    }
}

/// The service [`FallbackLayer`] builds.
#[derive(Debug, Clone)]
pub struct FallbackService<S, F> {
    inner: S,
    fallback: F,
}

impl<S, F, Fut, Req> Service<Req> for FallbackService<S, F>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    F: Fn(S::Error) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<S::Response, S::Error>> + Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let call = self.inner.call(request);
        let fallback = self.fallback.clone();
        Box::pin(async move {
            match call.await {
                Ok(response) => Ok(response),
                Err(error) => fallback(error).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
    use crate::error::{CallError, Error};

    #[tokio::test]
    async fn a_failed_call_is_answered_by_the_fallback_and_a_good_one_is_not() {
        let service = ServiceBuilder::new()
            .layer(FallbackLayer::new(|error: &'static str| async move {
                Ok::<_, &'static str>(format!("cached ({error})"))
            }))
            .service_fn(|fail: bool| async move {
                if fail {
                    Err("down")
                } else {
                    Ok("fresh".to_owned())
                }
            });
        assert_eq!(service.clone().oneshot(false).await.unwrap(), "fresh");
        assert_eq!(service.oneshot(true).await.unwrap(), "cached (down)");
    }

    #[tokio::test]
    async fn layers_compose_and_the_fallback_sees_an_open_breaker() {
        let mut config = marty_config::CircuitBreakerConfig::defaults_for(Duration::from_secs(1));
        config.window = 1;
        config.min_calls = 1;
        let breaker = Arc::new(CircuitBreaker::new("api", config));
        let service = ServiceBuilder::new()
            .layer(FallbackLayer::new(|error: CallError<std::io::Error>| async move {
                match error {
                    CallError::Resilience(Error::CircuitOpen { .. }) => Ok("stale"),
                    other => Err(other),
                }
            }))
            .layer(CircuitBreakerLayer::new(breaker.clone()))
            .service_fn(|_: ()| async {
                Err::<&str, _>(CallError::Inner(std::io::Error::from(std::io::ErrorKind::ConnectionReset)))
            });
        assert!(
            matches!(service.clone().oneshot(()).await, Err(CallError::Inner(_))),
            "the first failure opens the breaker"
        );
        assert_eq!(service.oneshot(()).await.unwrap(), "stale", "the open breaker's rejection reaches the fallback");
    }
}
