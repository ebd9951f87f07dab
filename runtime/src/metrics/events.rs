//! The event metric families: consumers (`marty_events_consumed`, handler durations) and the
//! outbox relay (`marty_outbox_*`).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::primitives::{histograms, Buckets, Histograms, LatencyHistogram};

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

impl Default for EventMetrics {
    fn default() -> Self {
        Self::with_buckets(&Buckets::default())
    }
}

impl EventMetrics {
    pub(super) fn with_buckets(buckets: &Buckets) -> Self {
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

    /// Adds these families to `registry`.
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register("marty_events_consumed", "Deliveries to event handlers, by outcome", self.consumed.clone());
        registry.register(
            "marty_event_handler_duration_seconds",
            "Duration of event handler attempts",
            self.handler_durations.clone(),
        );
        registry.register(
            "marty_outbox_published",
            "Outbox events the broker acknowledged",
            self.outbox_published.clone(),
        );
        registry.register(
            "marty_outbox_failed",
            "Outbox publish attempts the broker did not acknowledge",
            self.outbox_failed.clone(),
        );
        registry.register("marty_outbox_pending", "Outbox events waiting to be published", self.outbox_pending.clone());
        registry.register(
            "marty_outbox_parked",
            "Outbox events parked after too many failed attempts",
            self.outbox_parked.clone(),
        );
        registry.register(
            "marty_outbox_lag_seconds",
            "Age of the oldest pending outbox event",
            self.outbox_lag_seconds.clone(),
        );
    }
}
