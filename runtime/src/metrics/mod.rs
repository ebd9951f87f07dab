//! Prometheus metrics of wrapped calls. Handles are resolved once per call site, so recording a call
//! is a few relaxed atomic adds: no lock, no label hashing, no allocation.
//!
//! - `marty_calls_total{dependency,operation,outcome}`: every attempt, by outcome
//!   (`success`, `error`, `timeout`, `rejected`, `short_circuited`).
//! - `marty_call_duration_seconds{dependency,operation}`: attempts that reached the dependency.
//! - `marty_retries_total{dependency,operation}`.
//! - `http_server_request_duration_seconds{http_request_method,http_route,http_response_status_code}`
//!   and `rpc_server_call_duration_seconds{rpc_service,rpc_method,rpc_grpc_status_code}` (gRPC).
//! - `marty_circuit_state{dependency}` (0 closed, 1 open, 2 half-open),
//!   `marty_bulkhead_available{dependency}` and `marty_bulkhead_capacity{dependency}`: read from the
//!   live policies at scrape time.
//! - `marty_events_consumed_total{topic,group,outcome}` (`handled`, `duplicate`, `retried`,
//!   `dead_lettered`) and `marty_event_handler_duration_seconds{topic,group}`.
//! - `marty_outbox_published_total`, `marty_outbox_failed_total` (publish attempts the broker did
//!   not acknowledge), and the gauges `marty_outbox_pending`, `marty_outbox_parked` and
//!   `marty_outbox_lag_seconds` (age of the oldest pending event).
//! - `marty_sagas_started_total{saga}`, `marty_sagas_completed_total{saga}`,
//!   `marty_sagas_compensated_total{saga}`, `marty_sagas_parked_total{saga}`,
//!   `marty_saga_steps_total{saga,step,outcome}` (`completed`, `failed`, `timed_out`, `compensated`,
//!   `compensation_failed`, `turned_away`) and `marty_saga_step_duration_seconds{saga,step}`.
//! - `process_*`: CPU, memory, open files and threads of the process ([`process`], Linux).
//!
//! Every call is also a `marty.call` tracing span with `dependency`, `operation`, `attempt` and
//! `outcome`. Breaker transitions are logged and can be watched:
//! `dependency.circuit_breaker().on_transition(|t| ..)`.
//!
//! The service's own metrics go in the same exposition, under the names given:
//!
//! ```no_run
//! use marty::prometheus_client::metrics::counter::Counter;
//!
//! # fn example(registry: &marty::DependencyRegistry) {
//! let created = Counter::<u64>::default();
//! registry.metrics().register("orders_created", "Orders created", created.clone()); // orders_created_total
//! created.inc();
//! # }
//! ```
//!
//! `#[service]` serves the exposition at `/metrics`. A program that uses the call attributes
//! without `#[service]` installs its registry at startup and renders it where it likes
//! ([`DependencyRegistry::global`](crate::DependencyRegistry::global) is `None` until a registry is
//! installed or a first wrapped call loads one):
//!
//! ```no_run
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let registry = marty::DependencyRegistry::load("marty.toml".as_ref())?
//!         .install_global()
//!         .map_err(|_| "a registry is already installed")?;
//!     // ... calls ...
//!     let exposition: String = registry.metrics().render(); // the Prometheus text format
//!     # let _ = exposition;
//!     Ok(())
//! }
//! ```
//!
//! Every Marty histogram (calls, HTTP requests, event handlers, saga steps) uses the same bounds,
//! 0.5 ms to 10 s by default; `[telemetry] histogram_buckets` chooses them in seconds, 1 to 30
//! increasing bounds:
//!
//! ```toml
//! [telemetry]
//! histogram_buckets = [0.005, 0.025, 0.1, 0.5, 2.5, 10.0]
//! ```
//!
//! With the `otel` feature and an OTLP endpoint, the same exposition is also pushed to the collector
//! (`marty::telemetry`).

mod events;
mod gauges;
mod primitives;
pub mod process;
#[cfg(feature = "http")]
mod rpc_methods;
mod sagas;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Metric;
use prometheus_client::registry::Registry;

use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::CircuitBreaker;
pub use events::{ConsumerMetrics, EventMetrics};
use gauges::PolicyGauges;
use primitives::{histograms, CallCounter, Histograms, Successes};
pub use primitives::{Buckets, LatencyHistogram, StripedCounter, MAX_BUCKETS};
#[cfg(feature = "http")]
pub(crate) use rpc_methods::RpcMethod;
#[cfg(feature = "http")]
use rpc_methods::RpcMethods;
pub use sagas::{SagaMetrics, SagaTypeMetrics, StepMetrics, StepOutcome};

/// How one attempt ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call returned `Ok`.
    Success,
    /// The call returned an error.
    Error,
    /// The attempt ran out of time.
    Timeout,
    /// The bulkhead was full.
    Rejected,
    /// The circuit breaker was open.
    ShortCircuited,
}

impl Outcome {
    const ALL: [Outcome; 5] =
        [Outcome::Success, Outcome::Error, Outcome::Timeout, Outcome::Rejected, Outcome::ShortCircuited];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Rejected => "rejected",
            Outcome::ShortCircuited => "short_circuited",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    dependency: Arc<str>,
    operation: Arc<str>,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    dependency: Arc<str>,
    operation: Arc<str>,
}

/// One registry of Marty's metrics; a [`crate::DependencyRegistry`] records into its own.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, CallCounter>,
    durations: Histograms<OperationLabels>,
    retries: Family<OperationLabels, Counter>,
    http_requests: Histograms<HttpLabels>,
    rpc_calls: Histograms<RpcLabels>,
    /// The gRPC methods admitted as `rpc_calls` labels.
    #[cfg(feature = "http")]
    rpc_methods: RpcMethods,
    policies: Arc<PolicyGauges>,
    #[cfg(feature = "faults")]
    faults: FaultFamilies,
    events: EventMetrics,
    sagas: SagaMetrics,
    /// The service's own metrics ([`Metrics::register`]), encoded after Marty's.
    own: Mutex<Registry>,
    /// When counting began: the start of every cumulative series exported over OTLP.
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    pub(crate) created: std::time::SystemTime,
}

/// `marty_fault_active` and `marty_faults_injected_total`.
#[cfg(feature = "faults")]
#[derive(Debug)]
struct FaultFamilies {
    active: Family<DependencyLabel, prometheus_client::metrics::gauge::Gauge>,
    injected: Family<FaultLabels, Counter>,
}

#[cfg(feature = "faults")]
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabel {
    dependency: Arc<str>,
}

#[cfg(feature = "faults")]
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    dependency: Arc<str>,
    /// `latency`, `error` or `timeout`.
    fault: &'static str,
}

#[cfg(feature = "faults")]
impl FaultFamilies {
    fn register(registry: &mut Registry) -> Self {
        let families = FaultFamilies { active: Family::default(), injected: Family::default() };
        registry.register(
            "marty_fault_active",
            "Whether a fault is injected into a dependency's calls: 1 yes, 0 no",
            families.active.clone(),
        );
        registry.register(
            "marty_faults_injected",
            "Faults injected into attempts to call a dependency, by fault",
            families.injected.clone(),
        );
        families
    }

    fn of(&self, dependency: &Arc<str>) -> crate::fault::FaultMetrics {
        let injected =
            |fault| self.injected.get_or_create(&FaultLabels { dependency: dependency.clone(), fault }).clone();
        crate::fault::FaultMetrics {
            active: self.active.get_or_create(&DependencyLabel { dependency: dependency.clone() }).clone(),
            latency: injected("latency"),
            error: injected("error"),
            timeout: injected("timeout"),
        }
    }
}

/// Labels of `http_server_request_duration_seconds`, named after the OpenTelemetry semantic
/// conventions' `http.server.request.duration` attributes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    http_request_method: &'static str,
    http_route: Arc<str>,
    http_response_status_code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc_service: Arc<str>,
    rpc_method: Arc<str>,
    rpc_grpc_status_code: i32,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry with Marty's metric families and the default histogram buckets.
    pub fn new() -> Self {
        Self::with_buckets(Buckets::default())
    }

    /// An empty registry with Marty's metric families, whose histograms count into `buckets`.
    pub fn with_buckets(buckets: Buckets) -> Self {
        let mut registry = Registry::default();
        let calls = Family::default();
        let durations = histograms(&buckets);
        let retries = Family::default();
        let http_requests = histograms(&buckets);
        let rpc_calls = histograms(&buckets);
        let policies = Arc::new(PolicyGauges::default());
        registry.register("marty_calls", "Attempts to call a dependency, by outcome", calls.clone());
        registry.register(
            "marty_call_duration_seconds",
            "Duration of attempts that reached the dependency",
            durations.clone(),
        );
        registry.register("marty_retries", "Retries of calls to a dependency", retries.clone());
        registry.register(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests (OpenTelemetry http.server.request.duration)",
            http_requests.clone(),
        );
        registry.register(
            "rpc_server_call_duration_seconds",
            "Duration of gRPC calls served, to the end of the response (OpenTelemetry rpc.server.call.duration)",
            rpc_calls.clone(),
        );
        registry.register_collector(Box::new(policies.clone()));
        #[cfg(feature = "faults")]
        let faults = FaultFamilies::register(&mut registry);
        let events = EventMetrics::with_buckets(&buckets);
        events.register(&mut registry);
        let sagas = SagaMetrics::with_buckets(&buckets);
        sagas.register(&mut registry);
        registry.register_collector(Box::new(process::ProcessMetrics));
        let own = Mutex::new(Registry::default());
        Metrics {
            registry,
            calls,
            durations,
            retries,
            http_requests,
            rpc_calls,
            #[cfg(feature = "http")]
            rpc_methods: RpcMethods::default(),
            policies,
            #[cfg(feature = "faults")]
            faults,
            events,
            sagas,
            own,
            created: std::time::SystemTime::now(),
        }
    }

    /// The saga metrics.
    pub fn sagas(&self) -> &SagaMetrics {
        &self.sagas
    }

    /// The handles one call site records into.
    pub fn call_metrics(&self, dependency: &Arc<str>, operation: &Arc<str>) -> CallMetrics {
        let counter = |outcome: Outcome| {
            self.calls
                .get_or_create(&CallLabels {
                    dependency: dependency.clone(),
                    operation: operation.clone(),
                    outcome: outcome.as_str(),
                })
                .clone()
        };
        let labels = OperationLabels { dependency: dependency.clone(), operation: operation.clone() };
        let outcomes = Outcome::ALL.map(counter);
        let duration = self.durations.get_or_create(&labels).clone();
        let failed = [Outcome::Error, Outcome::Timeout].map(|failure| outcomes[failure as usize].counted.clone());
        let _ = outcomes[Outcome::Success as usize].successes.set(Successes::new(duration.clone(), failed));
        CallMetrics { outcomes, duration, retries: self.retries.get_or_create(&labels).clone() }
    }

    /// Records one HTTP request served. `route` is the matched route template (`/orders/{id}`), never
    /// the raw path, so label cardinality stays bounded; `method` is a standard method or `_OTHER`, as
    /// the OpenTelemetry conventions say. Allocates nothing once a label set has been seen.
    pub fn record_http_request(&self, method: &'static str, route: Arc<str>, status: u16, elapsed: Duration) {
        let labels = HttpLabels { http_request_method: method, http_route: route, http_response_status_code: status };
        self.http_requests.get_or_create(&labels).observe(elapsed);
    }

    /// Records one gRPC call served (`service`/`method`), with its `grpc-status` code.
    pub fn record_rpc(&self, service: &Arc<str>, method: &Arc<str>, status: i32, elapsed: Duration) {
        let labels =
            RpcLabels { rpc_service: service.clone(), rpc_method: method.clone(), rpc_grpc_status_code: status };
        self.rpc_calls.get_or_create(&labels).observe(elapsed);
    }

    /// The handles one dependency's injected faults count into.
    #[cfg(feature = "faults")]
    pub(crate) fn fault_metrics(&self, dependency: &Arc<str>) -> crate::fault::FaultMetrics {
        self.faults.of(dependency)
    }

    /// Reports a dependency's breaker state and free bulkhead permits at every scrape, while they live.
    pub fn watch_policies(&self, dependency: Arc<str>, breaker: &Arc<CircuitBreaker>, bulkhead: &Arc<Bulkhead>) {
        self.policies.lock().push((dependency, Arc::downgrade(breaker), Arc::downgrade(bulkhead)));
    }

    /// The labels of a gRPC method served: its own, or `_OTHER` once a thousand are admitted.
    #[cfg(feature = "http")]
    pub(crate) fn rpc_method(&self, service: &str, method: &str) -> RpcMethod {
        self.rpc_methods.label(service, method)
    }

    /// The consumer and outbox metrics.
    pub fn events(&self) -> &EventMetrics {
        &self.events
    }

    /// The Prometheus / OpenMetrics text exposition of every metric: Marty's, then the service's.
    pub fn render(&self) -> String {
        use prometheus_client::encoding::text;
        let mut out = String::new();
        let own = self.own.lock().unwrap_or_else(|poison| poison.into_inner());
        text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &own))
            .and_then(|()| text::encode_eof(&mut out))
            .expect("writing to a String cannot fail");
        out
    }

    /// Registers one of the service's own metrics (a prometheus-client `Counter`, `Gauge`,
    /// `Histogram`, or a `Family` of them) in the exposition `/metrics` serves. Keep a clone to
    /// record into: metrics are handles to shared values. Names follow Prometheus' rules, and a
    /// counter's `_total` suffix is added when encoded.
    pub fn register(&self, name: impl Into<String>, help: impl Into<String>, metric: impl Metric) {
        self.own.lock().unwrap_or_else(|poison| poison.into_inner()).register(name, help, metric);
    }

    /// Registers a collector of the service's own, asked for its metrics at every scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.own.lock().unwrap_or_else(|poison| poison.into_inner()).register_collector(collector);
    }

    /// Marty's registry (the service's own metrics are in [`Self::register`]'s, encoded after it).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// A call site's metric handles.
#[derive(Debug, Clone)]
pub struct CallMetrics {
    outcomes: [CallCounter; 5],
    duration: LatencyHistogram,
    retries: Counter,
}

impl CallMetrics {
    /// Records an attempt's outcome and, when it reached the dependency, its duration.
    #[inline]
    pub fn record(&self, outcome: Outcome, elapsed: Option<Duration>) {
        // Counted before it is timed: what `Successes` relies on.
        if outcome != Outcome::Success {
            self.outcomes[outcome as usize].counted.inc();
        }
        if let Some(elapsed) = elapsed {
            self.duration.observe(elapsed);
        }
    }

    /// Records a retry.
    pub fn record_retry(&self) {
        self.retries.inc();
    }

    /// Attempts recorded with `outcome` so far (for tests and dashboards built in code).
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize].get()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::metrics::counter::Counter;

    use super::{Buckets, Metrics, Outcome};

    #[test]
    fn the_services_own_metrics_and_process_metrics_are_in_the_exposition_once() {
        let metrics = Metrics::new();
        let created: Counter = Counter::default();
        metrics.register("orders_created", "Orders created", created.clone());
        created.inc_by(3);
        let text = metrics.render();
        assert!(text.contains("# TYPE orders_created counter\norders_created_total 3\n"), "{text}");
        if cfg!(target_os = "linux") {
            assert!(text.contains("process_resident_memory_bytes ") && text.contains("process_open_fds "), "{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn every_outcome_is_counted_and_successes_are_the_timed_attempts_that_did_not_fail() {
        let metrics = Metrics::new();
        let call = metrics.call_metrics(&"orders_db".into(), &"load".into());
        let same_labels = metrics.call_metrics(&"orders_db".into(), &"load".into());
        let took = Some(Duration::from_millis(3));
        for (outcome, elapsed, times) in [
            (Outcome::Success, took, 5),
            (Outcome::Error, took, 2),
            (Outcome::Timeout, took, 1),
            (Outcome::Rejected, None, 3),
            (Outcome::ShortCircuited, None, 4),
        ] {
            for _ in 0..times {
                call.record(outcome, elapsed);
            }
        }
        same_labels.record(Outcome::Success, took);
        let text = metrics.render();
        for (outcome, count) in [("success", 6), ("error", 2), ("timeout", 1), ("rejected", 3), ("short_circuited", 4)]
        {
            let series = format!(
                "marty_calls_total{{dependency=\"orders_db\",operation=\"load\",outcome=\"{outcome}\"}} {count}\n"
            );
            assert!(text.contains(&series), "{series} in {text}");
        }
        assert_eq!(call.count(Outcome::Success), 6, "a second call site with the same labels shares the series");
        assert!(text.contains("marty_call_duration_seconds_count{dependency=\"orders_db\",operation=\"load\"} 9\n"));
    }

    #[test]
    fn histograms_count_into_the_configured_buckets() {
        let metrics = Metrics::with_buckets(Buckets::from_seconds(&[0.1, 1.0]));
        metrics.record_http_request("GET", "/orders".into(), 200, Duration::from_millis(50));
        metrics.record_http_request("GET", "/orders".into(), 200, Duration::from_millis(500));
        metrics.record_http_request("GET", "/orders".into(), 200, Duration::from_secs(5));
        let text = metrics.render();
        let bucket = |le: &str| format!("_bucket{{le=\"{le}\",http_request_method=\"GET\"");
        for (le, count) in [("0.1", 1), ("1.0", 2), ("+Inf", 3)] {
            let line = text.lines().find(|line| line.contains(&bucket(le))).unwrap_or_else(|| panic!("{text}"));
            assert!(line.ends_with(&format!(" {count}")), "{line}");
        }
        assert!(!text.contains(&bucket("0.005")), "only the configured bounds: {text}");
    }
}
