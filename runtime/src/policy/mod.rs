//! The policies of one dependency composed into one call path: what `#[database_call]`,
//! `#[api_call]` and `#[cache_call]` do, and [`DependencyLayer`] does as a tower layer.
//!
//! ```no_run
//! use marty::CallError;
//!
//! /// Each call goes through `payments_api`'s bulkhead, breaker, timeout and retry (from
//! /// `marty.toml`), is a `marty.call` span and is counted in `/metrics`.
//! #[marty::api_call(dependency = "payments_api", timeout = "2s")]
//! async fn charge(order_id: i64, cents: u64) -> Result<String, CallError<std::io::Error>> {
//!     // The request to the payments service; an `io::Error` says whether it is worth retrying.
//!     Ok(format!("charge-{order_id}-{cents}"))
//! }
//! ```
//!
//! The function returns `Result<T, E>`, where `E: From<marty::Error>` holds Marty's own errors
//! ([`CallError`](crate::CallError) wraps an error type that cannot) and `E: Classify` says which
//! errors are worth retrying. The call passes through its dependency's policies, outermost first:
//!
//! **retry -> circuit breaker -> timeout -> bulkhead -> the call**
//!
//! - **Retry** only errors classified `Transient` (timeouts, refused or reset connections, SQLite
//!   `BUSY`, PostgreSQL serialization failures, gRPC `UNAVAILABLE`, a tonic or reqwest connection
//!   lost mid-call), with exponential backoff and full jitter, capped at `max`. A budget keeps
//!   retries at most `budget` (default 20%) of first attempts, plus a reserve of 10, so a failing
//!   dependency is not hit `max_attempts` times harder. Each attempt asks the breaker again, so an
//!   opening breaker stops a retry loop. The body runs once per attempt, so it must not move its
//!   arguments out; take them by reference, or set `retry = false` on the call. `retry = false`
//!   under `[dependencies.<name>]` in `marty.toml` turns retry off for every call to it.
//! - **Circuit breaker**: a count-based window over the last `window` calls. Once `min_calls` are
//!   recorded, a failure rate or slow-call rate at or above its threshold opens it; open, it rejects
//!   at once without calling; after `open_for`, `half_open_calls` trial calls decide between closed
//!   and open. Errors classified `Expected` ("not found", a constraint violation) mean the
//!   dependency answered: they count as successes. `circuit_breaker = false` turns it off.
//! - **Timeout** per attempt. It starts before the bulkhead, so waiting for a permit counts against
//!   it.
//! - **Bulkhead**: at most `max_concurrent` calls at once; a call waits at most `max_wait` (default a
//!   quarter of `timeout`) for a permit, then fails with `Rejected`. Waiters are not served in FIFO
//!   order. Left unset, a database dependency's `max_concurrent` takes the size of the pool handed to
//!   Marty (`marty::store::register`, `register_pool`), so calls queue for a permit, where they are
//!   measured and bounded, rather than for a connection.
//!
//! Calls the breaker or bulkhead turned away (`ErrorClass::TurnedAway`) are neither recorded by the
//! breaker (the dependency was not called) nor retried (that would only add load).
//!
//! Framework errors reach the function's error type through `From<marty::Error>`: `Rejected` and
//! `CircuitOpen` (HTTP 503 with a retry hint), `Timeout` (504), and `Config`. Per call the attribute
//! can override `timeout`, `retry` (`false`, or `retry(max_attempts = .., backoff = .., initial = ..,
//! max = .., jitter = ..)`), add a `fallback = path` that receives the final error, a `classify =
//! path` that replaces the error type's classification, `operation = ".."` for the metric label,
//! `config = ".."` and `crate = ".."`; the attribute's own documentation has the full table.
//!
//! [`Classify`] answers a second question, for sagas: could a failed call have taken effect on the
//! other side (`may_have_applied`)? Only an error that certainly came first says no: Marty turned
//! the call away, the connection was refused, or the other side answered no (`NOT_FOUND`, a 4xx, a
//! constraint violation). A connection lost after the request was sent (tonic's `Unknown: transport
//! error`), a timeout, `Internal`, a proxy's 502/503/504 say "maybe". Marty answers for
//! `io::Error`, `sqlx::Error`, `tonic::Status` and `reqwest::Error` (features `sqlx`, `tonic`,
//! `reqwest`); an error type of the service's delegates both methods to the errors it wraps.
//!
//! Everything the macros do is plain Rust too: [`crate::bulkhead::BulkheadLayer`],
//! [`crate::circuit_breaker::CircuitBreakerLayer`], [`crate::timeout::TimeoutLayer`],
//! [`crate::retry::RetryLayer`] and [`DependencyLayer`] (the whole policy) are tower layers over the
//! same shared state, and [`CallPolicy::call`] is the macro without the macro. [`Dependency`] is
//! what every call to one dependency shares; [`CallPolicy`] is one call site's view of it (its own
//! timeout, retry and metric labels). The macros and [`DependencyLayer`] both run [`Call::attempt`]:
//! there is one implementation of the semantics.
//!
//! Timing in tests: every policy reads tokio's clock once it waits, so a test under
//! `#[tokio::test(start_paused = true)]` sees timeouts, backoffs and `open_for` pass at once and in
//! order, without sleeping.

mod layer;

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use marty_config::{DependencyConfig, DependencyKind};
use tracing::Instrument;

use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::{CallOutcome, CircuitBreaker};
use crate::classify::{Classify, ErrorClass};
use crate::error::Error;
use crate::metrics::{CallMetrics, Metrics, Outcome};
use crate::retry::{RetryBudget, RetryPolicy};
use crate::timeout::{Deadline, Elapsed, Stopwatch, Timed};

pub use layer::{DependencyLayer, DependencyService};

/// What every call to one dependency shares: its bulkhead, circuit breaker and retry budget, and
/// the timeout and retry policy of call sites that do not override them. All of it can be
/// reconfigured while calls run ([`Dependency::reconfigure`]).
#[derive(Debug)]
pub struct Dependency {
    name: Arc<str>,
    kind: DependencyKind,
    config: RwLock<DependencyConfig>,
    /// The current `timeout`, read by every attempt without a lock.
    timeout_nanos: AtomicU64,
    /// The current `retry`, read only when an attempt failed.
    retry: RwLock<RetryPolicy>,
    bulkhead: Arc<Bulkhead>,
    breaker: Arc<CircuitBreaker>,
    budget: RetryBudget,
    /// The size of the pool the service registered for this dependency (0: none).
    pool_size: std::sync::atomic::AtomicUsize,
    /// OpenTelemetry's `db.system` of a database or cache, from its URL's scheme.
    db_system: Option<&'static str>,
    /// `[dependencies.<name>.fault]`, while `[faults] enabled`.
    #[cfg(feature = "faults")]
    faults: crate::fault::Faults,
}

/// OpenTelemetry's `db.system` for a database or cache dependency whose URL names a known one.
fn db_system(config: &DependencyConfig) -> Option<&'static str> {
    if !matches!(config.kind, DependencyKind::Database | DependencyKind::Cache) {
        return None;
    }
    let scheme = config.url.as_deref()?.split(':').next()?;
    Some(match scheme {
        "postgres" | "postgresql" => "postgresql",
        "sqlite" => "sqlite",
        "mysql" | "mariadb" => "mysql",
        "redis" | "rediss" => "redis",
        "mongodb" | "mongodb+srv" => "mongodb",
        _ => return None,
    })
}

impl Dependency {
    /// The shared state `[dependencies.<name>]` describes.
    pub fn new(config: DependencyConfig) -> Self {
        let name: Arc<str> = config.name.as_str().into();
        Dependency {
            kind: config.kind,
            timeout_nanos: AtomicU64::new(nanos(config.timeout)),
            retry: RwLock::new(RetryPolicy::from_config(&config.retry)),
            bulkhead: Arc::new(Bulkhead::new(name.clone(), config.max_concurrent, config.max_wait)),
            breaker: Arc::new(CircuitBreaker::new(name.clone(), config.circuit_breaker.clone())),
            budget: RetryBudget::new(config.retry.budget),
            pool_size: std::sync::atomic::AtomicUsize::new(0),
            db_system: db_system(&config),
            #[cfg(feature = "faults")]
            faults: crate::fault::Faults::default(),
            name,
            config: RwLock::new(config),
        }
    }

    /// Applies a new configuration of this dependency to every call, in flight ones included: the
    /// bulkhead resizes (calls beyond a smaller limit finish; new ones wait for room), the breaker
    /// keeps its state under new thresholds, new attempts use the new timeout and retry. The kind
    /// cannot change (call sites were checked against it).
    pub fn reconfigure(&self, mut config: DependencyConfig) -> Result<(), String> {
        if config.kind != self.kind {
            return Err(format!(
                "`{}` cannot change kind from `{}` to `{}` without a restart",
                self.name, self.kind, config.kind
            ));
        }
        let pool_size = self.pool_size.load(Ordering::Relaxed);
        if config.max_concurrent_unset && pool_size > 0 {
            config.max_concurrent = pool_size;
        }
        self.bulkhead.reconfigure(config.max_concurrent, config.max_wait);
        self.breaker.reconfigure(config.circuit_breaker.clone());
        self.budget.set_ratio(config.retry.budget);
        self.timeout_nanos.store(nanos(config.timeout), Ordering::Relaxed);
        *self.retry.write().unwrap_or_else(|poison| poison.into_inner()) = RetryPolicy::from_config(&config.retry);
        *self.config.write().unwrap_or_else(|poison| poison.into_inner()) = config;
        Ok(())
    }

    /// The service handed Marty a pool of `connections` for this dependency: a bulkhead whose size
    /// `marty.toml` does not set takes it, so a call holding a permit never waits for a connection
    /// and calls beyond the pool queue in the bulkhead (for `max_wait`) where they are measured.
    pub fn size_from_pool(&self, connections: usize) {
        if connections == 0 {
            return;
        }
        self.pool_size.store(connections, Ordering::Relaxed);
        let config = self.config();
        if config.max_concurrent_unset && config.max_concurrent != connections {
            tracing::info!(dependency = &*self.name, connections, "bulkhead sized from the registered pool");
            let _ = self.reconfigure(config);
        }
    }

    /// The name under `[dependencies]`.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// What it is.
    pub fn kind(&self) -> DependencyKind {
        self.kind
    }

    /// The configuration it runs with now.
    pub fn config(&self) -> DependencyConfig {
        self.config.read().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// The timeout of an attempt, unless a call site overrides it.
    #[inline]
    pub fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_nanos.load(Ordering::Relaxed))
    }

    /// The retry policy, unless a call site overrides it.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.read().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// Its bulkhead.
    pub fn bulkhead(&self) -> &Arc<Bulkhead> {
        &self.bulkhead
    }

    /// Its circuit breaker (e.g. to watch transitions with [`CircuitBreaker::on_transition`]).
    pub fn circuit_breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// Its retry budget.
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// Its injected fault (feature `faults`).
    #[cfg(feature = "faults")]
    #[cfg_attr(docsrs, doc(cfg(feature = "faults")))]
    pub fn faults(&self) -> &crate::fault::Faults {
        &self.faults
    }
}

/// One call site's policy: the dependency's shared state plus the call's own timeout, retry and labels.
#[derive(Debug)]
pub struct CallPolicy {
    dependency: Arc<Dependency>,
    operation: Arc<str>,
    /// The call site's own timeout; `None` follows the dependency's, reloads included.
    timeout: Option<Duration>,
    /// The call site's own retry; `None` follows the dependency's, reloads included.
    retry: Option<RetryPolicy>,
    metrics: CallMetrics,
}

impl CallPolicy {
    /// The policy for `operation` on `dependency`, with the dependency's timeout and retry, recording into `metrics`.
    pub fn new(dependency: Arc<Dependency>, operation: impl Into<Arc<str>>, metrics: &Metrics) -> Self {
        let operation = operation.into();
        CallPolicy {
            metrics: metrics.call_metrics(&dependency.name, &operation),
            timeout: None,
            retry: None,
            dependency,
            operation,
        }
    }

    /// Overrides the timeout for this call site.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Overrides retry for this call site.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The dependency this call site calls.
    pub fn dependency(&self) -> &Arc<Dependency> {
        &self.dependency
    }

    /// The operation label.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The timeout of one attempt now.
    #[inline]
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or_else(|| self.dependency.timeout())
    }

    /// The retry policy now.
    pub fn retry(&self) -> RetryPolicy {
        self.retry.clone().unwrap_or_else(|| self.dependency.retry_policy())
    }

    /// This call site's metric handles.
    pub fn metrics(&self) -> &CallMetrics {
        &self.metrics
    }

    /// Starts one logical call (which may take several attempts).
    #[inline]
    pub fn begin(&self) -> Call<'_> {
        self.dependency.budget.deposit();
        // A client span: `peer.service` is the dependency, as OpenTelemetry's service graphs read it.
        let span = tracing::info_span!(
            "marty.call",
            otel.kind = "client",
            peer.service = %self.dependency.name,
            db.system = self.dependency.db_system,
            dependency = %self.dependency.name,
            operation = %self.operation,
            attempt = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        Call { policy: self, attempt: 0, span }
    }

    /// Runs `operation` under the policy: the plain-Rust form of `#[database_call]`. `operation` is called
    /// once per attempt.
    pub async fn call<T, E, F, Fut>(&self, mut operation: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error> + Classify,
    {
        let mut call = self.begin();
        loop {
            if let ControlFlow::Break(result) = call.attempt(operation(), E::classify, E::from).await {
                return result;
            }
        }
    }
}

/// One logical call in progress.
#[derive(Debug)]
pub struct Call<'p> {
    policy: &'p CallPolicy,
    attempt: u32,
    span: tracing::Span,
}

impl Call<'_> {
    /// The call's `marty.call` span (fields: dependency, operation, attempt, outcome).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Makes one attempt with `future` (run inside the call's span): `Break` with the call's result, or
    /// `Continue` after the retry backoff has been slept, when the caller should attempt again with a
    /// fresh future. `classify`
    /// judges the call's errors; `convert` turns Marty's own errors into the call's error type.
    pub async fn attempt<T, E, F>(
        &mut self,
        future: F,
        classify: fn(&E) -> ErrorClass,
        convert: fn(Error) -> E,
    ) -> ControlFlow<Result<T, E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let policy = self.policy;
        let dependency = &*policy.dependency;
        self.attempt += 1;
        let permit = match dependency.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(error) => return self.turned_away(Outcome::ShortCircuited, convert(error)),
        };
        let timeout = policy.timeout();
        // The stopwatch and the bulkhead's answer live in a block of their own: a local still in scope
        // at the attempt's await is kept in the call's future, and every call pays to move it.
        let (bulkhead_permit, stopwatch) = {
            // Timed by the counter until the attempt waits: a call that completes at once reads no OS clock.
            let mut stopwatch = Stopwatch::start();
            // `Bulkhead::acquire` written out: awaiting that async fn nests one more future in every
            // call's state, which cost ~10 ns per call in `call_overhead`.
            let acquired = match dependency.bulkhead.try_acquire() {
                Some(bulkhead_permit) => Ok(bulkhead_permit),
                None => {
                    let deadline = Deadline { at: stopwatch.deadline(timeout), timeout };
                    dependency.bulkhead.wait_for_permit(Some(deadline)).await
                }
            };
            match acquired {
                Ok(bulkhead_permit) => (bulkhead_permit, stopwatch),
                Err(error) => {
                    drop(permit);
                    let outcome =
                        if matches!(error, Error::Timeout { .. }) { Outcome::Timeout } else { Outcome::Rejected };
                    return self.turned_away(outcome, convert(error));
                }
            }
        };
        let future = future.instrument(self.span.clone());
        #[cfg(feature = "faults")]
        let future = crate::fault::WithFault::new(future, dependency.faults.roll(&dependency.name), convert);
        let (result, stopwatch) = Timed::new(future, timeout, stopwatch).await;
        drop(bulkhead_permit);
        let elapsed = stopwatch.elapsed();
        let (outcome, class, result) = match result {
            Ok(Ok(value)) => (Outcome::Success, None, Ok(value)),
            Ok(Err(error)) => (Outcome::Error, Some(classify(&error)), Err(error)),
            Err(Elapsed) => {
                let error = Error::Timeout { dependency: dependency.name.clone(), timeout };
                (Outcome::Timeout, Some(ErrorClass::Transient), Err(convert(error)))
            }
        };
        permit.record(CallOutcome::new(class, elapsed, dependency.breaker.slow_call_duration()));
        policy.metrics.record(outcome, Some(elapsed));
        // The backoff is slept after the result has gone out of scope, so that it is not kept in
        // every call's future beside the timer (boxed for the same reason).
        let wait = match self.retry_wait(outcome, class) {
            Some(wait) => wait,
            None => {
                self.finish(outcome);
                return ControlFlow::Break(result);
            }
        };
        Box::pin(tokio::time::sleep(wait)).await;
        ControlFlow::Continue(())
    }

    /// The backoff before the next attempt, if an attempt that ended with `class` is retried (and
    /// the budget pays for it).
    fn retry_wait(&self, outcome: Outcome, class: Option<ErrorClass>) -> Option<Duration> {
        if !class.is_some_and(ErrorClass::is_transient) {
            return None;
        }
        // Read only on this path: a success never looks at the retry policy.
        let wait = self.policy.retry().backoff_before_attempt(self.attempt + 1)?;
        if !self.policy.dependency.budget.try_withdraw() {
            return None;
        }
        self.policy.metrics.record_retry();
        crate::retry::effects::note_retry();
        tracing::debug!(parent: &self.span, attempt = self.attempt, outcome = outcome.as_str(), ?wait, "retrying after a transient error");
        Some(wait)
    }

    fn turned_away<T, E>(&mut self, outcome: Outcome, error: E) -> ControlFlow<Result<T, E>> {
        self.policy.metrics.record(outcome, None);
        self.finish(outcome);
        ControlFlow::Break(Err(error))
    }

    fn finish(&self, outcome: Outcome) {
        // A disabled span still looks fields up by name when recorded; skip that work.
        if self.span.is_disabled() {
            return;
        }
        self.span.record("attempt", self.attempt);
        self.span.record("outcome", outcome.as_str());
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
