//! Prometheus metrics of wrapped calls. Handles are resolved once per call site, so recording a call
//! is a few relaxed atomic adds: no lock, no label hashing, no allocation.
//!
//! - `marty_calls_total{dependency,operation,outcome}`: every attempt, by outcome
//!   (`success`, `error`, `timeout`, `rejected`, `short_circuited`).
//! - `marty_call_duration_seconds{dependency,operation}`: attempts that reached the dependency.
//! - `marty_retries_total{dependency,operation}`.
//! - `http_server_request_duration_seconds{http_request_method,http_route,http_response_status_code}`
//!   and `rpc_server_call_duration_seconds{rpc_service,rpc_method,rpc_grpc_status_code}` (gRPC).
//! - `marty_circuit_state{dependency}` (0 closed, 1 open, 2 half-open) and
//!   `marty_bulkhead_available{dependency}`: read from the live policies at scrape time.
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

pub mod process;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Metric;
use prometheus_client::registry::Registry;

use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::CircuitBreaker;
use crate::stripe::{self, Padded, STRIPES};

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
    policies: Arc<PolicyGauges>,
    events: EventMetrics,
    sagas: SagaMetrics,
    /// The service's own metrics ([`Metrics::register`]), encoded after Marty's.
    own: Mutex<Registry>,
    /// When counting began: the start of every cumulative series exported over OTLP.
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    pub(crate) created: std::time::SystemTime,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SagaLabels {
    saga: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    saga: &'static str,
    step: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepOutcomeLabels {
    saga: &'static str,
    step: &'static str,
    outcome: &'static str,
}

/// The saga metric families.
#[derive(Debug, Clone)]
pub struct SagaMetrics {
    started: Family<SagaLabels, Counter>,
    completed: Family<SagaLabels, Counter>,
    compensated: Family<SagaLabels, Counter>,
    parked: Family<SagaLabels, Counter>,
    steps: Family<StepOutcomeLabels, Counter>,
    step_durations: Histograms<StepLabels>,
}

impl SagaMetrics {
    /// The handles one saga type records into, resolved once.
    pub fn saga(&self, saga: &'static str, steps: &[&'static str]) -> SagaTypeMetrics {
        let labels = SagaLabels { saga };
        let step_outcomes = |step: &'static str| {
            ["completed", "failed", "timed_out", "compensated", "compensation_failed", "turned_away"]
                .map(|outcome| self.steps.get_or_create(&StepOutcomeLabels { saga, step, outcome }).clone())
        };
        SagaTypeMetrics {
            started: self.started.get_or_create(&labels).clone(),
            completed: self.completed.get_or_create(&labels).clone(),
            compensated: self.compensated.get_or_create(&labels).clone(),
            parked: self.parked.get_or_create(&labels).clone(),
            steps: steps
                .iter()
                .map(|&step| StepMetrics {
                    outcomes: step_outcomes(step),
                    duration: self.step_durations.get_or_create(&StepLabels { saga, step }).clone(),
                })
                .collect(),
        }
    }
}

/// One saga type's metric handles (see [`SagaMetrics::saga`]).
#[derive(Debug, Clone)]
pub struct SagaTypeMetrics {
    /// Sagas started.
    pub started: Counter,
    /// Sagas that ran every step.
    pub completed: Counter,
    /// Sagas undone by their compensations.
    pub compensated: Counter,
    /// Sagas parked for an operator after a compensation kept failing.
    pub parked: Counter,
    /// Per step, in declaration order.
    pub steps: Vec<StepMetrics>,
}

/// One step's metric handles.
#[derive(Debug, Clone)]
pub struct StepMetrics {
    outcomes: [Counter; 6],
    /// Duration of the step's attempts (and its compensation's).
    pub duration: LatencyHistogram,
}

/// How a step attempt (or compensation attempt) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepOutcome {
    /// The step returned `Ok`.
    Completed,
    /// The step returned an error.
    Failed,
    /// The step did not finish within its timeout.
    TimedOut,
    /// The compensation returned `Ok`.
    Compensated,
    /// The compensation failed or timed out.
    CompensationFailed,
    /// Marty turned a call of the step or compensation away (breaker open, bulkhead full): the
    /// orchestrator waits and tries again, and the attempt does not count.
    TurnedAway,
}

impl StepMetrics {
    /// Counts one attempt (a run turned away reached nobody: it is counted, not timed).
    pub fn record(&self, outcome: StepOutcome, elapsed: Duration) {
        self.outcomes[outcome as usize].inc();
        if outcome != StepOutcome::TurnedAway {
            self.duration.observe(elapsed);
        }
    }

    /// Attempts that ended with `outcome` (for tests and reports).
    pub fn count(&self, outcome: StepOutcome) -> u64 {
        self.outcomes[outcome as usize].get()
    }
}

/// Labels of consumer metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    topic: Arc<str>,
    group: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumedLabels {
    topic: Arc<str>,
    group: Arc<str>,
    outcome: &'static str,
}

/// The event metrics: consumers and the outbox relay.
#[derive(Debug, Clone)]
pub struct EventMetrics {
    consumed: Family<ConsumedLabels, Counter>,
    handler_durations: Histograms<ConsumerLabels>,
    /// Events the broker acknowledged.
    pub outbox_published: Counter,
    /// Publish attempts the broker did not acknowledge.
    pub outbox_failed: Counter,
    /// Events waiting to be published.
    pub outbox_pending: Gauge,
    /// Events parked after too many failed attempts.
    pub outbox_parked: Gauge,
    /// Age of the oldest pending event, in seconds.
    pub outbox_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl EventMetrics {
    /// The handles one consumer (`topic`, `group`) records into, resolved once so a delivery
    /// records with a few atomic adds, no label hashing.
    pub fn consumer(&self, topic: &Arc<str>, group: &Arc<str>) -> ConsumerMetrics {
        let counter = |outcome: &'static str| {
            self.consumed.get_or_create(&ConsumedLabels { topic: topic.clone(), group: group.clone(), outcome }).clone()
        };
        ConsumerMetrics {
            handled: counter("handled"),
            duplicate: counter("duplicate"),
            retried: counter("retried"),
            dead_lettered: counter("dead_lettered"),
            duration: self
                .handler_durations
                .get_or_create(&ConsumerLabels { topic: topic.clone(), group: group.clone() })
                .clone(),
        }
    }

    /// How many deliveries of `topic` to `group` ended with `outcome` (for tests and reports).
    pub fn consumed(&self, topic: &str, group: &str, outcome: &'static str) -> u64 {
        self.consumed.get_or_create(&ConsumedLabels { topic: topic.into(), group: group.into(), outcome }).get()
    }
}

/// One consumer's metric handles (see [`EventMetrics::consumer`]).
#[derive(Debug, Clone)]
pub struct ConsumerMetrics {
    /// Deliveries handled (effects committed).
    pub handled: Counter,
    /// Deliveries the inbox recognised as already handled.
    pub duplicate: Counter,
    /// Failed attempts that were retried.
    pub retried: Counter,
    /// Deliveries given up on.
    pub dead_lettered: Counter,
    /// Duration of handler attempts.
    pub duration: LatencyHistogram,
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

impl Default for SagaMetrics {
    fn default() -> Self {
        Self::with_buckets(&Buckets::default())
    }
}

impl SagaMetrics {
    fn with_buckets(buckets: &Buckets) -> Self {
        SagaMetrics {
            started: Family::default(),
            completed: Family::default(),
            compensated: Family::default(),
            parked: Family::default(),
            steps: Family::default(),
            step_durations: histograms(buckets),
        }
    }
}

impl Default for EventMetrics {
    fn default() -> Self {
        Self::with_buckets(&Buckets::default())
    }
}

impl EventMetrics {
    fn with_buckets(buckets: &Buckets) -> Self {
        EventMetrics {
            consumed: Family::default(),
            handler_durations: histograms(buckets),
            outbox_published: Counter::default(),
            outbox_failed: Counter::default(),
            outbox_pending: Gauge::default(),
            outbox_parked: Gauge::default(),
            outbox_lag_seconds: Gauge::default(),
        }
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
        let events = EventMetrics::with_buckets(&buckets);
        registry.register("marty_events_consumed", "Deliveries to event handlers, by outcome", events.consumed.clone());
        registry.register(
            "marty_event_handler_duration_seconds",
            "Duration of event handler attempts",
            events.handler_durations.clone(),
        );
        registry.register(
            "marty_outbox_published",
            "Outbox events the broker acknowledged",
            events.outbox_published.clone(),
        );
        registry.register(
            "marty_outbox_failed",
            "Outbox publish attempts the broker did not acknowledge",
            events.outbox_failed.clone(),
        );
        registry.register(
            "marty_outbox_pending",
            "Outbox events waiting to be published",
            events.outbox_pending.clone(),
        );
        registry.register(
            "marty_outbox_parked",
            "Outbox events parked after too many failed attempts",
            events.outbox_parked.clone(),
        );
        registry.register(
            "marty_outbox_lag_seconds",
            "Age of the oldest pending outbox event",
            events.outbox_lag_seconds.clone(),
        );
        let sagas = SagaMetrics::with_buckets(&buckets);
        registry.register("marty_sagas_started", "Sagas started", sagas.started.clone());
        registry.register("marty_sagas_completed", "Sagas that ran every step", sagas.completed.clone());
        registry.register("marty_sagas_compensated", "Sagas undone by their compensations", sagas.compensated.clone());
        registry.register("marty_sagas_parked", "Sagas parked for an operator", sagas.parked.clone());
        registry.register("marty_saga_steps", "Saga step and compensation attempts, by outcome", sagas.steps.clone());
        registry.register(
            "marty_saga_step_duration_seconds",
            "Duration of saga step and compensation attempts",
            sagas.step_durations.clone(),
        );
        registry.register_collector(Box::new(process::ProcessMetrics));
        let own = Mutex::new(Registry::default());
        Metrics {
            registry,
            calls,
            durations,
            retries,
            http_requests,
            rpc_calls,
            policies,
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
        let _ = outcomes[Outcome::Success as usize].successes.set(Successes {
            timed: duration.clone(),
            failed: [Outcome::Error, Outcome::Timeout].map(|failure| outcomes[failure as usize].counted.clone()),
            reported: AtomicU64::new(0),
        });
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

    /// Reports a dependency's breaker state and free bulkhead permits at every scrape, while they live.
    pub fn watch_policies(&self, dependency: Arc<str>, breaker: &Arc<CircuitBreaker>, bulkhead: &Arc<Bulkhead>) {
        self.policies.lock().push((dependency, Arc::downgrade(breaker), Arc::downgrade(bulkhead)));
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

/// One series of `marty_calls_total`. Successes are not counted on the call path: they are the
/// attempts the duration histogram timed less the errors and timeouts, which saves every successful
/// call one atomic add.
#[derive(Debug, Clone, Default)]
struct CallCounter {
    counted: StripedCounter,
    /// Set on the `success` series: the count is derived, and `counted` stays at zero.
    successes: Arc<OnceLock<Successes>>,
}

impl CallCounter {
    fn get(&self) -> u64 {
        match self.successes.get() {
            Some(successes) => successes.get(),
            None => self.counted.get(),
        }
    }
}

impl TypedMetric for CallCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for CallCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The successful attempts of one call site: timed attempts less failed ones.
#[derive(Debug)]
struct Successes {
    timed: LatencyHistogram,
    /// The errors and timeouts, the other outcomes that are timed.
    failed: [StripedCounter; 2],
    /// The highest count reported, so that the series never goes down.
    reported: AtomicU64,
}

impl Successes {
    fn get(&self) -> u64 {
        // The histogram is read first: a failure is counted before it is timed, so a call racing
        // this read can make the difference low, but not high. A low read is a count that lags
        // by the calls in flight; the maximum keeps a later low read from looking like a reset.
        let timed = self.timed.count();
        let failed: u64 = self.failed.iter().map(StripedCounter::get).sum();
        let now = timed.saturating_sub(failed);
        self.reported.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

/// A counter spread over `STRIPES` cache lines.
#[derive(Debug, Clone, Default)]
pub struct StripedCounter {
    stripes: Arc<[Padded<AtomicU64>; STRIPES]>,
}

impl StripedCounter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.stripes[stripe::current()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.stripes.iter().map(|cell| cell.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for StripedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for StripedCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The most bucket bounds a histogram may have (`[telemetry] histogram_buckets`).
pub const MAX_BUCKETS: usize = 30;

/// Default upper bounds in seconds: 0.5 ms to 10 s, the range that separates a cache hit from a
/// stuck query.
const DEFAULT_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The upper bounds every histogram of one [`Metrics`] counts into, kept in nanoseconds so that
/// recording compares integers.
#[derive(Debug, Clone)]
pub struct Buckets {
    nanos: Arc<[u64]>,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets::from_seconds(&DEFAULT_BUCKETS)
    }
}

impl Buckets {
    /// Bounds in seconds, increasing (as `[telemetry] histogram_buckets` checks); at most
    /// [`MAX_BUCKETS`] are kept.
    pub fn from_seconds(seconds: &[f64]) -> Self {
        let nanos: Vec<u64> = seconds.iter().take(MAX_BUCKETS).map(|bound| (bound * 1e9).round() as u64).collect();
        Buckets { nanos: nanos.into() }
    }

    /// The bounds in seconds.
    pub fn seconds(&self) -> impl Iterator<Item = f64> + '_ {
        self.nanos.iter().map(|&nanos| nanos as f64 / 1e9)
    }
}

/// A family of histograms with one [`Metrics`]' buckets.
type Histograms<L> = Family<L, LatencyHistogram, HistogramMaker>;

fn histograms<L: Clone + std::hash::Hash + Eq>(buckets: &Buckets) -> Histograms<L> {
    Family::new_with_constructor(HistogramMaker(buckets.clone()))
}

/// Makes the histograms of a family, with the family's buckets.
#[derive(Debug, Clone)]
struct HistogramMaker(Buckets);

impl MetricConstructor<LatencyHistogram> for HistogramMaker {
    fn new_metric(&self) -> LatencyHistogram {
        LatencyHistogram::with_buckets(self.0.clone())
    }
}

/// A lock-free latency histogram, striped like [`StripedCounter`]: prometheus-client's own takes a
/// mutex per observation, which serialises every worker thread calling the same dependency.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    buckets: Buckets,
    stripes: Arc<[Padded<HistogramCells>; STRIPES]>,
}

#[derive(Debug, Default)]
struct HistogramCells {
    /// Per-bucket (not cumulative) counts; the one after the last bound is `+Inf`.
    buckets: [AtomicU64; MAX_BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// A histogram counting into `buckets`.
    pub fn with_buckets(buckets: Buckets) -> Self {
        LatencyHistogram { buckets, stripes: Arc::default() }
    }

    /// Records one duration.
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bounds = &self.buckets.nanos;
        let bucket = bounds.iter().position(|&bound| nanos <= bound).unwrap_or(bounds.len());
        let cells = &self.stripes[stripe::current()].0;
        cells.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        cells.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Durations recorded so far.
    pub fn count(&self) -> u64 {
        self.stripes.iter().flat_map(|stripe| &stripe.0.buckets).map(|cell| cell.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        let used = self.buckets.nanos.len() + 1;
        let mut counts = [0u64; MAX_BUCKETS + 1];
        let mut sum_nanos = 0u64;
        for stripe in self.stripes.iter() {
            for (count, cell) in counts[..used].iter_mut().zip(&stripe.0.buckets) {
                *count += cell.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(stripe.0.sum_nanos.load(Ordering::Relaxed));
        }
        let counts = &counts[..used];
        let buckets: Vec<(f64, u64)> =
            self.buckets.seconds().chain([f64::INFINITY]).zip(counts.iter().copied()).collect();
        let sum = sum_nanos as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

type WatchedPolicy = (Arc<str>, Weak<CircuitBreaker>, Weak<Bulkhead>);

/// Gauges read from live policies when scraped, so the call path never updates them.
#[derive(Debug, Default)]
struct PolicyGauges {
    watched: Mutex<Vec<WatchedPolicy>>,
}

impl PolicyGauges {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<WatchedPolicy>> {
        self.watched.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: Arc<str>,
}

impl Collector for PolicyGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let mut live: Vec<(Arc<str>, Arc<CircuitBreaker>, Arc<Bulkhead>)> = Vec::new();
        self.lock().retain(|(name, breaker, bulkhead)| match (breaker.upgrade(), bulkhead.upgrade()) {
            (Some(breaker), Some(bulkhead)) => {
                live.push((name.clone(), breaker, bulkhead));
                true
            }
            _ => false,
        });
        let help = "Circuit breaker state: 0 closed, 1 open, 2 half-open";
        let mut family = encoder.encode_descriptor("marty_circuit_state", help, None, MetricType::Gauge)?;
        for (name, breaker, _) in &live {
            let labels = DependencyLabels { dependency: name.clone() };
            ConstGauge::new(breaker.state().as_gauge()).encode(family.encode_family(&labels)?)?;
        }
        let help = "Free bulkhead permits";
        let mut family = encoder.encode_descriptor("marty_bulkhead_available", help, None, MetricType::Gauge)?;
        for (name, _, bulkhead) in &live {
            let labels = DependencyLabels { dependency: name.clone() };
            ConstGauge::new(bulkhead.available() as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
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
