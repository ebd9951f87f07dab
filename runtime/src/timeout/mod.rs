//! Timeouts: a deadline per attempt, enforced without arming a timer for calls that finish at once.

mod layer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::error::Error;

pub use layer::{TimeoutLayer, TimeoutService};

/// When an attempt must be over, and the timeout it came from (for the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// The instant the attempt is cancelled.
    pub at: Instant,
    /// The timeout that `at` was computed from.
    pub timeout: Duration,
}

impl Deadline {
    /// The deadline `timeout` after `start`.
    pub fn after(start: Instant, timeout: Duration) -> Self {
        Deadline { at: start + timeout, timeout }
    }

    /// The error for an attempt that ran out of time.
    pub fn elapsed_error(&self, dependency: &Arc<str>) -> Error {
        Error::Timeout { dependency: dependency.clone(), timeout: self.timeout }
    }
}

pin_project_lite::pin_project! {
    /// Runs a future until a deadline. The timer is armed only if the future is still pending after its
    /// first poll: a call that completes at once never touches the timer wheel.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct WithDeadline<F> {
        #[pin]
        future: F,
        #[pin]
        sleep: Option<Sleep>,
        at: Instant,
    }
}

impl<F> WithDeadline<F> {
    /// `future`, cancelled at `at`.
    pub fn new(future: F, at: Instant) -> Self {
        WithDeadline { future, sleep: None, at }
    }
}

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl<F: Future> Future for WithDeadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(*this.at)));
        }
        let sleep = this.sleep.as_pin_mut().expect("armed just above");
        ready!(sleep.poll(cx));
        Poll::Ready(Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pending_future_is_cut_at_the_deadline_and_a_ready_one_is_not() {
        let start = Instant::now();
        let slow = WithDeadline::new(tokio::time::sleep(Duration::from_secs(5)), start + Duration::from_secs(1)).await;
        assert_eq!(slow, Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let quick = WithDeadline::new(async { 7 }, Instant::now()).await;
        assert_eq!(quick, Ok(7), "a ready future wins even at a deadline that has passed");
    }
}
