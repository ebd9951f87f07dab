//! Gauges read from the live policies when scraped (breaker state, free and total bulkhead permits), so the
//! call path never updates them.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::CircuitBreaker;

pub(super) type WatchedPolicy = (Arc<str>, Weak<CircuitBreaker>, Weak<Bulkhead>);

/// Gauges read from live policies when scraped, so the call path never updates them.
#[derive(Debug, Default)]
pub(super) struct PolicyGauges {
    watched: Mutex<Vec<WatchedPolicy>>,
}

impl PolicyGauges {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Vec<WatchedPolicy>> {
        self.watched.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DependencyLabels {
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
        // With the capacity beside it, bulkhead use is `1 - available / capacity` in any dashboard,
        // and stays right when a reload changes the capacity.
        let help = "Bulkhead permits in all (max_concurrent)";
        let mut family = encoder.encode_descriptor("marty_bulkhead_capacity", help, None, MetricType::Gauge)?;
        for (name, _, bulkhead) in &live {
            let labels = DependencyLabels { dependency: name.clone() };
            ConstGauge::new(bulkhead.max_concurrent() as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
