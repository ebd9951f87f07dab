//! The circuit breaker: a count-based window over the latest calls of one dependency.
//!
//! Closed: calls pass and are recorded; once `min_calls` are in the window and the failure rate or the
//! slow-call rate reaches its threshold, the breaker opens. Open: calls are rejected at once, without
//! touching the dependency. After `open_for`, it is half-open: `half_open_calls` trial calls go
//! through and their rates decide between closed (window cleared) and open again.
//!
//! The closed state is read with one atomic load, so a healthy dependency pays no lock to ask; each
//! recorded outcome takes a short uncontended-in-the-common-case lock, as Resilience4j's does.

mod layer;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use marty_config::CircuitBreakerConfig;
use tokio::time::Instant;

use crate::classify::ErrorClass;
use crate::error::Error;

pub use layer::{CircuitBreakerLayer, CircuitBreakerService, ResponseFuture};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass and are recorded.
    Closed,
    /// Calls are rejected without reaching the dependency.
    Open,
    /// A few trial calls pass and decide the next state.
    HalfOpen,
}

impl CircuitState {
    /// The value of the `marty_circuit_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => CircuitState::Closed,
            1 => CircuitState::Open,
            _ => CircuitState::HalfOpen,
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        })
    }
}

/// A change of state, as listeners and logs see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The dependency whose breaker changed.
    pub dependency: Arc<str>,
    /// The state it left.
    pub from: CircuitState,
    /// The state it entered.
    pub to: CircuitState,
    /// The failure rate over the window that decided it (0 when time alone decided).
    pub failure_rate: f64,
    /// The slow-call rate over the window that decided it.
    pub slow_call_rate: f64,
}

/// How a recorded call went, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOutcome {
    /// The dependency failed (see [`ErrorClass::is_failure`]); timeouts are failures.
    pub failed: bool,
    /// The call took at least `slow_call_duration`.
    pub slow: bool,
}

impl CallOutcome {
    /// The outcome of a call that ended with `class` (or succeeded, with `None`) after `elapsed`.
    pub fn new(class: Option<ErrorClass>, elapsed: Duration, slow_call_duration: Duration) -> Self {
        CallOutcome { failed: class.is_some_and(ErrorClass::is_failure), slow: elapsed >= slow_call_duration }
    }
}

/// Permission to make one call. [`Permit::record`] reports how it went; dropping it unrecorded (the call
/// was never made, or was cancelled) hands a half-open trial slot back.
#[derive(Debug)]
#[must_use = "record the call's outcome with `Permit::record`"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    trial: bool,
}

impl Permit<'_> {
    /// Records how the permitted call went; this may open or close the breaker.
    pub fn record(mut self, outcome: CallOutcome) {
        self.breaker.record(self.trial, outcome);
        self.trial = false;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.trial {
            self.breaker.release_trial();
        }
    }
}

/// A [`Permit`] that holds its breaker, for a future that outlives a borrow of it (the tower
/// layer's); the same rules: record the outcome, or dropping it hands a trial slot back.
#[derive(Debug)]
pub(crate) struct OwnedPermit {
    breaker: Arc<CircuitBreaker>,
    trial: bool,
}

impl OwnedPermit {
    pub(crate) fn record(mut self, outcome: CallOutcome) {
        self.breaker.record(self.trial, outcome);
        self.trial = false;
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if self.trial {
            self.breaker.release_trial();
        }
    }
}

type Listener = Arc<dyn Fn(&Transition) + Send + Sync>;

/// One dependency's circuit breaker, shared by every call to it.
pub struct CircuitBreaker {
    dependency: Arc<str>,
    /// Mirrors `inner.config.enabled` for the lock-free fast path.
    enabled: AtomicBool,
    /// Mirrors `inner.config.slow_call_duration`, in nanoseconds, for callers classifying outcomes.
    slow_call_nanos: AtomicU64,
    /// Mirrors `inner.state` so the closed fast path needs no lock.
    state: AtomicU8,
    /// Set while the window is full of plain successes: another success would change no rate, so it
    /// is not written (a read of this flag instead of a lock, which is what lets a healthy dependency's
    /// calls scale across threads). A success skipped during a race only delays, by one call, when an
    /// older outcome leaves the window.
    window_full_and_clean: AtomicBool,
    inner: Mutex<Inner>,
    listeners: RwLock<Vec<Listener>>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker").field("dependency", &self.dependency).field("state", &self.state()).finish()
    }
}

struct Inner {
    /// Replaced whole by [`CircuitBreaker::reconfigure`].
    config: CircuitBreakerConfig,
    state: CircuitState,
    window: Window,
    opened_at: Instant,
    /// Trial calls let through since the breaker turned half-open.
    trials_started: u32,
    /// Outcomes of those trials: (recorded, failed, slow).
    trials: (u32, u32, u32),
}

impl CircuitBreaker {
    /// A closed breaker for `dependency`.
    pub fn new(dependency: impl Into<Arc<str>>, config: CircuitBreakerConfig) -> Self {
        let window = Window::new(config.window as usize);
        CircuitBreaker {
            dependency: dependency.into(),
            enabled: AtomicBool::new(config.enabled),
            slow_call_nanos: AtomicU64::new(nanos(config.slow_call_duration)),
            state: AtomicU8::new(0),
            window_full_and_clean: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                config,
                state: CircuitState::Closed,
                window,
                opened_at: Instant::now(),
                trials_started: 0,
                trials: (0, 0, 0),
            }),
            listeners: RwLock::new(Vec::new()),
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether it turns calls away now: open, and `open_for` not yet over. An open breaker whose
    /// `open_for` has passed lets the next call through as a trial (it turns half-open only when that
    /// call arrives), so it does not count.
    pub fn rejects_calls(&self) -> bool {
        if self.state() != CircuitState::Open {
            return false;
        }
        let inner = self.lock();
        inner.state == CircuitState::Open && inner.opened_at.elapsed() < inner.config.open_for
    }

    /// The configuration it runs with now.
    pub fn config(&self) -> CircuitBreakerConfig {
        self.lock().config.clone()
    }

    /// Calls at least this long count as slow.
    #[inline]
    pub fn slow_call_duration(&self) -> Duration {
        Duration::from_nanos(self.slow_call_nanos.load(Ordering::Relaxed))
    }

    /// Applies new thresholds without losing the state: an open breaker stays open (for the new
    /// `open_for`), and the window keeps its outcomes unless its size changed.
    pub fn reconfigure(&self, config: CircuitBreakerConfig) {
        let mut inner = self.lock();
        if config.window != inner.config.window {
            inner.window = Window::new(config.window as usize);
            self.window_full_and_clean.store(false, Ordering::Release);
        }
        self.enabled.store(config.enabled, Ordering::Release);
        self.slow_call_nanos.store(nanos(config.slow_call_duration), Ordering::Relaxed);
        inner.config = config;
    }

    /// Opens the breaker now, as if its window had filled with failures (for tests and drills): it
    /// turns calls away for `open_for`, then lets trial calls through as usual.
    pub fn force_open(&self) {
        let transition = {
            let mut inner = self.lock();
            (inner.state != CircuitState::Open).then(|| self.set_state(&mut inner, CircuitState::Open, (1.0, 0.0)))
        };
        self.notify(transition);
    }

    /// Closes the breaker now, with an empty window.
    pub fn force_closed(&self) {
        let transition = {
            let mut inner = self.lock();
            (inner.state != CircuitState::Closed).then(|| self.set_state(&mut inner, CircuitState::Closed, (0.0, 0.0)))
        };
        self.notify(transition);
    }

    /// Calls `listener` on every state change (after the change, outside the breaker's lock).
    pub fn on_transition(&self, listener: impl Fn(&Transition) + Send + Sync + 'static) {
        self.listeners.write().unwrap_or_else(|poison| poison.into_inner()).push(Arc::new(listener));
    }

    /// Asks to make a call: a permit, or [`Error::CircuitOpen`] with the time until trial calls.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Error> {
        if !self.enabled.load(Ordering::Relaxed) || self.state.load(Ordering::Acquire) == 0 {
            return Ok(Permit { breaker: self, trial: false });
        }
        self.try_acquire_slow()
    }

    /// [`Self::try_acquire`], with a permit that holds the breaker.
    pub(crate) fn try_acquire_owned(self: &Arc<Self>) -> Result<OwnedPermit, Error> {
        let permit = self.try_acquire()?;
        let owned = OwnedPermit { breaker: self.clone(), trial: permit.trial };
        // Its trial slot, if any, now belongs to the owned permit, which gives it back on drop.
        std::mem::forget(permit);
        Ok(owned)
    }

    #[cold]
    fn try_acquire_slow(&self) -> Result<Permit<'_>, Error> {
        let mut transition = None;
        let result = {
            let mut inner = self.lock();
            if inner.state == CircuitState::Open {
                let elapsed = inner.opened_at.elapsed();
                if elapsed < inner.config.open_for {
                    let retry_after = inner.config.open_for - elapsed;
                    return Err(Error::CircuitOpen { dependency: self.dependency.clone(), retry_after });
                }
                transition = Some(self.set_state(&mut inner, CircuitState::HalfOpen, (0.0, 0.0)));
            }
            match inner.state {
                CircuitState::Closed => Ok(Permit { breaker: self, trial: false }),
                _ if inner.trials_started < inner.config.half_open_calls => {
                    inner.trials_started += 1;
                    Ok(Permit { breaker: self, trial: true })
                }
                // Every trial slot is taken: reject until the trials decide.
                _ => Err(Error::CircuitOpen { dependency: self.dependency.clone(), retry_after: Duration::ZERO }),
            }
        };
        self.notify(transition);
        result
    }

    #[inline]
    fn record(&self, trial: bool, outcome: CallOutcome) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let plain_success = !outcome.failed && !outcome.slow;
        if plain_success && !trial && self.window_full_and_clean.load(Ordering::Acquire) {
            return;
        }
        self.record_locked(trial, outcome);
    }

    fn record_locked(&self, trial: bool, outcome: CallOutcome) {
        let transition = {
            let mut inner = self.lock();
            match (inner.state, trial) {
                (CircuitState::Closed, false) => {
                    inner.window.push(outcome);
                    self.window_full_and_clean.store(inner.window.is_full_and_clean(), Ordering::Release);
                    let (failure_rate, slow_rate) = inner.window.rates();
                    let config = &inner.config;
                    let tripped = inner.window.len() >= config.min_calls as usize
                        && (failure_rate >= config.failure_rate || slow_rate >= config.slow_call_rate);
                    tripped.then(|| self.set_state(&mut inner, CircuitState::Open, (failure_rate, slow_rate)))
                }
                (CircuitState::HalfOpen, true) => {
                    let (recorded, failed, slow) = &mut inner.trials;
                    *recorded += 1;
                    *failed += u32::from(outcome.failed);
                    *slow += u32::from(outcome.slow);
                    let (recorded, failed, slow) = inner.trials;
                    if recorded < inner.config.half_open_calls {
                        None
                    } else {
                        let rates = (f64::from(failed) / f64::from(recorded), f64::from(slow) / f64::from(recorded));
                        let reopen = rates.0 >= inner.config.failure_rate || rates.1 >= inner.config.slow_call_rate;
                        let next = if reopen { CircuitState::Open } else { CircuitState::Closed };
                        Some(self.set_state(&mut inner, next, rates))
                    }
                }
                // The call began in another state than the one it ends in; its outcome describes a
                // past the breaker has already judged, so it is not counted twice.
                _ => None,
            }
        };
        self.notify(transition);
    }

    fn release_trial(&self) {
        let mut inner = self.lock();
        if inner.state == CircuitState::HalfOpen {
            inner.trials_started = inner.trials_started.saturating_sub(1);
        }
    }

    fn set_state(&self, inner: &mut Inner, to: CircuitState, (failure_rate, slow_call_rate): (f64, f64)) -> Transition {
        let from = inner.state;
        inner.state = to;
        inner.window.clear();
        self.window_full_and_clean.store(false, Ordering::Release);
        inner.trials_started = 0;
        inner.trials = (0, 0, 0);
        if to == CircuitState::Open {
            inner.opened_at = Instant::now();
        }
        self.state.store(to.as_gauge() as u8, Ordering::Release);
        Transition { dependency: self.dependency.clone(), from, to, failure_rate, slow_call_rate }
    }

    fn notify(&self, transition: Option<Transition>) {
        let Some(transition) = transition else { return };
        match transition.to {
            CircuitState::Open => tracing::warn!(
                dependency = %transition.dependency, from = %transition.from, failure_rate = transition.failure_rate,
                slow_call_rate = transition.slow_call_rate, "circuit breaker opened"
            ),
            _ => {
                tracing::info!(dependency = %transition.dependency, from = %transition.from, to = %transition.to, "circuit breaker changed state")
            }
        }
        let listeners = self.listeners.read().unwrap_or_else(|poison| poison.into_inner()).clone();
        for listener in listeners {
            listener(&transition);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a handful of counters that every step leaves consistent; a panic elsewhere while
        // holding the lock cannot leave it half-written, so poisoning is ignored rather than spread.
        self.inner.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The last `capacity` outcomes, with running counts.
struct Window {
    outcomes: Vec<CallOutcome>,
    next: usize,
    len: usize,
    failures: usize,
    slow: usize,
}

impl Window {
    fn new(capacity: usize) -> Self {
        Window {
            outcomes: vec![CallOutcome { failed: false, slow: false }; capacity.max(1)],
            next: 0,
            len: 0,
            failures: 0,
            slow: 0,
        }
    }

    fn push(&mut self, outcome: CallOutcome) {
        if self.len == self.outcomes.len() {
            let evicted = self.outcomes[self.next];
            self.failures -= usize::from(evicted.failed);
            self.slow -= usize::from(evicted.slow);
        } else {
            self.len += 1;
        }
        self.outcomes[self.next] = outcome;
        self.next = (self.next + 1) % self.outcomes.len();
        self.failures += usize::from(outcome.failed);
        self.slow += usize::from(outcome.slow);
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_full_and_clean(&self) -> bool {
        self.len == self.outcomes.len() && self.failures == 0 && self.slow == 0
    }

    fn rates(&self) -> (f64, f64) {
        if self.len == 0 {
            return (0.0, 0.0);
        }
        (self.failures as f64 / self.len as f64, self.slow as f64 / self.len as f64)
    }

    fn clear(&mut self) {
        self.next = 0;
        self.len = 0;
        self.failures = 0;
        self.slow = 0;
    }
}

#[cfg(test)]
mod tests;
