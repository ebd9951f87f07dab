//! The breaker's state machine under a paused clock: every transition, and what each state does with calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use marty_config::CircuitBreakerConfig;

use super::*;

const OK: CallOutcome = CallOutcome { failed: false, slow: false };
const FAILED: CallOutcome = CallOutcome { failed: true, slow: false };
const SLOW: CallOutcome = CallOutcome { failed: false, slow: true };

fn config() -> CircuitBreakerConfig {
    let mut config = CircuitBreakerConfig::defaults_for(Duration::from_millis(100));
    config.failure_rate = 0.5;
    config.slow_call_rate = 0.8;
    config.window = 4;
    config.min_calls = 4;
    config.open_for = Duration::from_secs(10);
    config.half_open_calls = 2;
    config
}

type TransitionLog = Arc<Mutex<Vec<(CircuitState, CircuitState)>>>;

/// A breaker that logs its transitions as (from, to).
fn watched(config: CircuitBreakerConfig) -> (CircuitBreaker, TransitionLog) {
    let breaker = CircuitBreaker::new("db", config);
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    breaker.on_transition(move |t| sink.lock().unwrap().push((t.from, t.to)));
    (breaker, log)
}

fn call(breaker: &CircuitBreaker, outcome: CallOutcome) {
    breaker.try_acquire().expect("the breaker should let this call through").record(outcome);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_until_min_calls_are_recorded() {
    let (breaker, log) = watched(config());
    for _ in 0..3 {
        call(&breaker, FAILED);
    }
    assert_eq!(breaker.state(), CircuitState::Closed, "3 failures < min_calls 4: the rate is not trusted yet");
    call(&breaker, FAILED);
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(*log.lock().unwrap(), [(CircuitState::Closed, CircuitState::Open)]);
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_rate_threshold_not_below_it() {
    let (breaker, _) = watched(config());
    for outcome in [OK, OK, OK, FAILED] {
        call(&breaker, outcome);
    }
    assert_eq!(breaker.state(), CircuitState::Closed, "25% < 50%");
    call(&breaker, FAILED); // the window slides: OK OK FAILED FAILED = 50%
    assert_eq!(breaker.state(), CircuitState::Open, "50% >= 50% opens");
}

#[tokio::test(start_paused = true)]
async fn the_window_forgets_old_outcomes() {
    let (breaker, _) = watched(config());
    for outcome in [FAILED, OK, OK, OK, OK, OK, FAILED] {
        call(&breaker, outcome);
    }
    assert_eq!(breaker.state(), CircuitState::Closed, "the first failure slid out of the 4-call window");
}

#[tokio::test(start_paused = true)]
async fn opens_on_slow_calls_alone() {
    let (breaker, _) = watched(config());
    for outcome in [OK, SLOW, SLOW, SLOW] {
        call(&breaker, outcome);
    }
    assert_eq!(breaker.state(), CircuitState::Closed, "75% slow < 80%");
    call(&breaker, SLOW);
    assert_eq!(breaker.state(), CircuitState::Open, "the OK slid out: 4 of 4 slow");
}

#[tokio::test(start_paused = true)]
async fn open_rejects_immediately_with_the_time_left_then_half_opens_after_open_for() {
    let (breaker, _) = watched(config());
    for _ in 0..4 {
        call(&breaker, FAILED);
    }
    tokio::time::advance(Duration::from_secs(4)).await;
    match breaker.try_acquire() {
        Err(Error::CircuitOpen { retry_after, .. }) => assert_eq!(retry_after, Duration::from_secs(6)),
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert!(breaker.rejects_calls());
    tokio::time::advance(Duration::from_secs(6)).await;
    // No call has come since: still open, but it would let the next one through.
    assert_eq!(breaker.state(), CircuitState::Open);
    assert!(!breaker.rejects_calls(), "past open_for, an open breaker turns no call away");
    let trial = breaker.try_acquire().expect("after open_for a trial call passes");
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    drop(trial);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_half_open_calls_and_closes_when_they_succeed() {
    let (breaker, log) = watched(config());
    for _ in 0..4 {
        call(&breaker, FAILED);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let first = breaker.try_acquire().unwrap();
    let second = breaker.try_acquire().unwrap();
    assert!(matches!(breaker.try_acquire(), Err(Error::CircuitOpen { .. })), "only 2 trial calls at once");
    first.record(OK);
    assert_eq!(breaker.state(), CircuitState::HalfOpen, "one trial does not decide");
    second.record(OK);
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(
        *log.lock().unwrap(),
        [
            (CircuitState::Closed, CircuitState::Open),
            (CircuitState::Open, CircuitState::HalfOpen),
            (CircuitState::HalfOpen, CircuitState::Closed)
        ]
    );
    for _ in 0..3 {
        call(&breaker, FAILED);
    }
    assert_eq!(breaker.state(), CircuitState::Closed, "closing cleared the window: min_calls counts again");
}

#[tokio::test(start_paused = true)]
async fn a_failing_trial_opens_again_for_a_full_open_for() {
    let (breaker, _) = watched(config());
    for _ in 0..4 {
        call(&breaker, FAILED);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    call(&breaker, FAILED);
    call(&breaker, OK);
    assert_eq!(breaker.state(), CircuitState::Open, "1 of 2 trials failed = 50%");
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(breaker.try_acquire().is_err(), "open_for restarts when it reopens");
}

#[tokio::test(start_paused = true)]
async fn a_trial_dropped_without_an_outcome_gives_its_slot_back() {
    let mut one_trial = config();
    one_trial.half_open_calls = 1;
    let (breaker, _) = watched(one_trial);
    for _ in 0..4 {
        call(&breaker, FAILED);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let cancelled = breaker.try_acquire().unwrap();
    assert!(breaker.try_acquire().is_err());
    drop(cancelled);
    call(&breaker, OK);
    assert_eq!(breaker.state(), CircuitState::Closed, "a cancelled trial must not wedge the breaker half-open");
}

#[tokio::test(start_paused = true)]
async fn outcomes_of_calls_started_in_an_earlier_state_are_not_counted_again() {
    let (breaker, _) = watched(config());
    let straggler = breaker.try_acquire().unwrap();
    for _ in 0..4 {
        call(&breaker, FAILED);
    }
    straggler.record(FAILED);
    tokio::time::advance(Duration::from_secs(10)).await;
    call(&breaker, OK);
    call(&breaker, OK);
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_disabled_breaker_never_opens() {
    let mut disabled = config();
    disabled.enabled = false;
    let (breaker, log) = watched(disabled);
    for _ in 0..100 {
        call(&breaker, FAILED);
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert!(log.lock().unwrap().is_empty());
}

/// Through the tower layer: failures are recorded, an open breaker answers without calling, and a
/// trial call dropped mid-flight hands its slot back.
#[tokio::test(start_paused = true)]
async fn the_layer_records_calls_rejects_when_open_and_frees_a_cancelled_trial() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::{Service, ServiceBuilder, ServiceExt};

    use crate::error::CallError;

    let mut one_trial = config();
    one_trial.half_open_calls = 1;
    let breaker = Arc::new(CircuitBreaker::new("db", one_trial));
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let mut service =
        ServiceBuilder::new().layer(CircuitBreakerLayer::new(breaker.clone())).service_fn(move |fail: bool| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if fail {
                    return Err(CallError::Inner(std::io::Error::other("down")));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, CallError<std::io::Error>>(())
            }
        });
    for _ in 0..4 {
        assert!(service.ready().await.unwrap().call(true).await.is_err());
    }
    assert_eq!(breaker.state(), CircuitState::Open, "four failures recorded through the layer");
    let rejected = service.ready().await.unwrap().call(false).await;
    assert!(matches!(rejected, Err(CallError::Resilience(Error::CircuitOpen { .. }))));
    assert_eq!(calls.load(Ordering::SeqCst), 4, "an open breaker makes no call");

    tokio::time::advance(Duration::from_secs(10)).await;
    let mut trial = Box::pin(service.ready().await.unwrap().call(false));
    assert!(poll_once(trial.as_mut()).await.is_none(), "the trial is in flight");
    assert!(breaker.try_acquire().is_err(), "its slot is taken");
    drop(trial);
    service.ready().await.unwrap().call(false).await.expect("the freed slot admits a trial");
    assert_eq!(breaker.state(), CircuitState::Closed);
}

/// Polls `future` once: its output if it was ready.
async fn poll_once<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
    let mut future = future;
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut future).poll(cx) {
        std::task::Poll::Ready(output) => std::task::Poll::Ready(Some(output)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}
