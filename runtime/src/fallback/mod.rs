//! Fallback: when a call fails for good (after retries, or turned away by the breaker or bulkhead), an
//! alternative answer from the error: a cached value, a default, a degraded response.
//!
//! The macros take `fallback = path`; this is the same as a tower layer, placed outermost.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

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
    F: Fn(S::Error) -> Fut + Clone,
    Fut: Future<Output = Result<S::Response, S::Error>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, F, Fut>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        ResponseFuture { state: State::Calling { call: self.inner.call(request) }, fallback: self.fallback.clone() }
    }
}

pin_project_lite::pin_project! {
    /// [`FallbackService`]'s future: the call's result, or, when it failed, the fallback's.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<C, F, Fut> {
        #[pin]
        state: State<C, Fut>,
        fallback: F,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProjection]
    enum State<C, Fut> {
        Calling { #[pin] call: C },
        Falling { #[pin] fallback: Fut },
    }
}

impl<C, F, Fut, T, E> Future for ResponseFuture<C, F, Fut>
where
    C: Future<Output = Result<T, E>>,
    F: Fn(E) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProjection::Calling { call } => match ready!(call.poll(cx)) {
                    Ok(response) => return Poll::Ready(Ok(response)),
                    Err(error) => {
                        let fallback = (this.fallback)(error);
                        this.state.set(State::Falling { fallback });
                    }
                },
                StateProjection::Falling { fallback } => return fallback.poll(cx),
            }
        }
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
