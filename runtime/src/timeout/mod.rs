//! Timeouts: a deadline per attempt, enforced without arming a timer for calls that finish at once,
//! and the stopwatch that times attempts without reading the OS clock when they do.

mod layer;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::error::Error;

pub use layer::{ResponseFuture, TimeoutLayer, TimeoutService};

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

/// How long an attempt (or a request) took, cheaply: the CPU's time-stamp counter (quanta) until a
/// [`Stopwatch::deadline`] is asked for (an attempt about to wait), tokio's clock from then on. A
/// call that completes at once (a
/// cache hit, a pool handing out a connection) costs two counter reads (~8 ns each) rather than
/// two OS clock reads (~17 ns each), and a call that waits is timed by tokio's clock, so pausing
/// time in a test moves its duration and its deadline as it moves every timer.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    started: u64,
    /// When the attempt first waited (tokio's clock), and how long it had run until then.
    waiting: Option<(Instant, Duration)>,
}

/// Calibrates the time-stamp counter on a thread of its own (quanta measures it against the OS
/// clock for up to 200 ms), so that the first call does not pay for it; the registry starts it.
pub(crate) fn calibrate_counter_in_background() {
    if COUNTER.get().is_none() {
        let _ = std::thread::Builder::new().name("marty-tsc-calibration".into()).spawn(counter);
    }
}

static COUNTER: OnceLock<quanta::Clock> = OnceLock::new();

/// The calibrated time-stamp counter (quanta falls back to the OS clock where it is not reliable).
fn counter() -> &'static quanta::Clock {
    COUNTER.get_or_init(quanta::Clock::new)
}

impl Stopwatch {
    /// Starts timing now.
    #[inline]
    pub fn start() -> Stopwatch {
        Stopwatch { started: counter().raw(), waiting: None }
    }

    /// The instant on tokio's clock at which `timeout` since the start has passed; from the first
    /// call on, the stopwatch follows tokio's clock (the attempt is about to wait).
    pub fn deadline(&mut self, timeout: Duration) -> Instant {
        let started = self.started;
        let (since, ran) =
            *self.waiting.get_or_insert_with(|| (Instant::now(), counter().delta(started, counter().raw())));
        since + timeout.saturating_sub(ran)
    }

    /// Time since the start.
    #[inline]
    pub fn elapsed(&self) -> Duration {
        match self.waiting {
            None => counter().delta(self.started, counter().raw()),
            Some((since, ran)) => ran + since.elapsed(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Runs an attempt until `timeout` has passed on its [`Stopwatch`]; the timer is armed, and
    /// tokio's clock read, only if the attempt is still pending after its first poll. Resolves to
    /// the attempt's output (or [`Elapsed`]) and the stopwatch, to read the attempt's duration from.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Timed<F> {
        #[pin]
        future: F,
        // Boxed, and only once the attempt waits: every call moves its future a few times, and a
        // timer kept inline (112 bytes) made each move, and so each call, measurably dearer.
        sleep: Option<Pin<Box<Sleep>>>,
        timeout: Duration,
        stopwatch: Stopwatch,
    }
}

impl<F> Timed<F> {
    /// `future`, cancelled once `timeout` has passed on `stopwatch`.
    pub fn new(future: F, timeout: Duration, stopwatch: Stopwatch) -> Self {
        Timed { future, sleep: None, timeout, stopwatch }
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = (Result<F::Output, Elapsed>, Stopwatch);

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready((Ok(output), *this.stopwatch));
        }
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(this.stopwatch.deadline(*this.timeout))));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready((Err(Elapsed), *this.stopwatch))
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

    #[tokio::test(start_paused = true)]
    async fn the_layer_answers_a_slow_call_with_a_timeout_naming_the_dependency() {
        use tower::{ServiceBuilder, ServiceExt};

        use crate::error::CallError;

        let service = ServiceBuilder::new().layer(TimeoutLayer::new("db", Duration::from_secs(1))).service_fn(
            |sleep: u64| async move {
                tokio::time::sleep(Duration::from_secs(sleep)).await;
                Ok::<_, CallError<std::io::Error>>(sleep)
            },
        );
        assert_eq!(service.clone().oneshot(0).await.unwrap(), 0);
        let start = Instant::now();
        match service.oneshot(5).await {
            Err(CallError::Resilience(Error::Timeout { dependency, timeout })) => {
                assert_eq!((&*dependency, timeout), ("db", Duration::from_secs(1)));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::from_secs(1), "cut at the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_attempt_follows_tokios_clock_once_it_waits() {
        let start = Instant::now();
        let (slow, stopwatch) =
            Timed::new(tokio::time::sleep(Duration::from_secs(5)), Duration::from_secs(1), Stopwatch::start()).await;
        assert_eq!(slow, Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_secs(1), "cut at the timeout, on the paused clock");
        let took = stopwatch.elapsed();
        assert!(took >= Duration::from_secs(1) && took < Duration::from_millis(1100), "{took:?}");

        let (waited, stopwatch) =
            Timed::new(tokio::time::sleep(Duration::from_millis(300)), Duration::from_secs(1), Stopwatch::start())
                .await;
        assert_eq!(waited, Ok(()));
        let took = stopwatch.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(400), "{took:?}");

        let (quick, stopwatch) = Timed::new(async { 7 }, Duration::ZERO, Stopwatch::start()).await;
        assert_eq!(quick, Ok(7), "a ready attempt wins even with no time at all");
        assert!(stopwatch.elapsed() < Duration::from_millis(100), "timed by the counter: {:?}", stopwatch.elapsed());
    }
}
