//! Fault injection (feature `faults`): added latency, errors and hung calls in one dependency's
//! attempts, to see in a running service what its bulkheads, timeouts, retries, breakers and
//! fallbacks do when that dependency misbehaves — without breaking the dependency.
//!
//! ```toml
//! [faults]
//! enabled = true                   # and marty's `faults` feature: never active unless both
//! token = "${MARTY_FAULTS_TOKEN}"  # serves PUT/DELETE /faults/<dependency> for this bearer token
//!
//! [dependencies.payments.fault]
//! latency = "200ms"                # before every attempt, counted against its timeout
//! error_rate = 0.3                 # attempts failing with a transient `Error::InjectedFault`
//! timeout_rate = 0.1               # attempts that never answer and end at their timeout
//! ```
//!
//! An injected fault goes through the policies as a real one would: the latency holds a bulkhead
//! permit, an injected error is retried and counted by the breaker, a hung attempt times out. The
//! file's faults apply at startup and at every reload (replacing what the endpoint set); the
//! endpoint changes one dependency's fault until then. `marty_fault_active` and
//! `marty_faults_injected_total` show them, and `/readyz` lists each dependency's fault (faults
//! do not make a service unready by themselves).

#[cfg(feature = "http")]
pub(crate) mod endpoint;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{ready, Context, Poll};

use marty_config::FaultConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::error::Error;

/// Who set the fault in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultSource {
    /// `[dependencies.<name>.fault]`, at startup or at the last reload.
    Config,
    /// The management endpoint, `PUT /faults/<dependency>`.
    Endpoint,
    /// Code: the testing kit's `DependencyControl`.
    Code,
}

impl FaultSource {
    /// How `/readyz` and the endpoint name it.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultSource::Config => "config",
            FaultSource::Endpoint => "endpoint",
            FaultSource::Code => "code",
        }
    }
}

/// One dependency's injected fault, shared by its call sites.
#[derive(Debug, Default)]
pub struct Faults {
    /// Read by every attempt: without a fault in force, an attempt pays one relaxed load.
    active: AtomicBool,
    current: RwLock<Option<(FaultConfig, FaultSource)>>,
    metrics: OnceLock<FaultMetrics>,
}

/// The handles of one dependency's fault metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultMetrics {
    pub(crate) active: Gauge,
    pub(crate) latency: Counter,
    pub(crate) error: Counter,
    pub(crate) timeout: Counter,
}

impl Faults {
    /// The fault in force, and who set it.
    pub fn current(&self) -> Option<(FaultConfig, FaultSource)> {
        self.current.read().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// Puts `fault` in force (or none), as `source` says. A fault that does nothing is none.
    pub fn set(&self, fault: Option<FaultConfig>, source: FaultSource) {
        let fault = fault.filter(FaultConfig::is_active).map(|fault| (fault, source));
        let active = fault.is_some();
        *self.current.write().unwrap_or_else(|poison| poison.into_inner()) = fault;
        self.active.store(active, Ordering::Release);
        if let Some(metrics) = self.metrics.get() {
            metrics.active.set(i64::from(active));
        }
    }

    /// Applies the configuration: the dependency's `fault` when `[faults] enabled`, else none.
    pub(crate) fn configure(&self, enabled: bool, fault: Option<&FaultConfig>) {
        self.set(fault.filter(|_| enabled).cloned(), FaultSource::Config);
    }

    /// Counts into `metrics` from now on.
    pub(crate) fn count_into(&self, metrics: FaultMetrics) {
        metrics.active.set(i64::from(self.active.load(Ordering::Acquire)));
        let _ = self.metrics.set(metrics);
    }

    /// What to do to the next attempt on `dependency`: `None` without a fault in force.
    #[inline]
    pub(crate) fn roll(&self, dependency: &Arc<str>) -> Option<Box<Injection>> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let (fault, _) = self.current()?;
        let draw = fastrand::f64();
        let outcome = if draw < fault.error_rate {
            Injected::Error
        } else if draw < fault.error_rate + fault.timeout_rate {
            Injected::Hang
        } else {
            Injected::Nothing
        };
        if let Some(metrics) = self.metrics.get() {
            if !fault.latency.is_zero() {
                metrics.latency.inc();
            }
            match outcome {
                Injected::Error => drop(metrics.error.inc()),
                Injected::Hang => drop(metrics.timeout.inc()),
                Injected::Nothing => {}
            }
        }
        let delay = (!fault.latency.is_zero()).then(|| Box::pin(tokio::time::sleep(fault.latency)));
        Some(Box::new(Injection { delay, outcome, dependency: dependency.clone() }))
    }
}

/// What is done to one attempt.
#[derive(Debug)]
pub(crate) struct Injection {
    delay: Option<Pin<Box<tokio::time::Sleep>>>,
    outcome: Injected,
    dependency: Arc<str>,
}

#[derive(Debug, Clone, Copy)]
enum Injected {
    Nothing,
    Error,
    Hang,
}

pin_project_lite::pin_project! {
    /// An attempt's future with its injected fault, if any: the delay first, then an error, a
    /// future that never completes (the attempt's timeout ends it), or the attempt itself.
    pub(crate) struct WithFault<F, E> {
        #[pin]
        attempt: F,
        injection: Option<Box<Injection>>,
        convert: fn(Error) -> E,
    }
}

impl<F, E> WithFault<F, E> {
    pub(crate) fn new(attempt: F, injection: Option<Box<Injection>>, convert: fn(Error) -> E) -> Self {
        WithFault { attempt, injection, convert }
    }
}

impl<F: Future<Output = Result<T, E>>, T, E> Future for WithFault<F, E> {
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(injection) = this.injection.as_mut() {
            if let Some(delay) = injection.delay.as_mut() {
                ready!(delay.as_mut().poll(cx));
                injection.delay = None;
            }
            match injection.outcome {
                Injected::Nothing => *this.injection = None,
                Injected::Error => {
                    let dependency = injection.dependency.clone();
                    *this.injection = None;
                    return Poll::Ready(Err((this.convert)(Error::InjectedFault { dependency })));
                }
                Injected::Hang => return Poll::Pending,
            }
        }
        this.attempt.poll(cx)
    }
}

#[cfg(test)]
mod tests;
