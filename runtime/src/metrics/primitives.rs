//! The metric types Marty records into, built for a call path that must not contend: counters
//! striped across cache lines, latency histograms with one set of cells per stripe, summed when
//! scraped; and the call counter whose `success` series is derived rather than counted.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::stripe::{self, Padded, STRIPES};

/// One series of `marty_calls_total`. Successes are not counted on the call path: they are the
/// attempts the duration histogram timed less the errors and timeouts, which saves every successful
/// call one atomic add.
#[derive(Debug, Clone, Default)]
pub(super) struct CallCounter {
    pub(super) counted: StripedCounter,
    /// Set on the `success` series: the count is derived, and `counted` stays at zero.
    pub(super) successes: Arc<OnceLock<Successes>>,
}

impl CallCounter {
    pub(super) fn get(&self) -> u64 {
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
pub(super) struct Successes {
    timed: LatencyHistogram,
    /// The errors and timeouts, the other outcomes that are timed.
    failed: [StripedCounter; 2],
    /// The highest count reported, so that the series never goes down.
    reported: AtomicU64,
}

impl Successes {
    pub(super) fn new(timed: LatencyHistogram, failed: [StripedCounter; 2]) -> Self {
        Successes { timed, failed, reported: AtomicU64::new(0) }
    }

    pub(super) fn get(&self) -> u64 {
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
pub(super) const DEFAULT_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The upper bounds every histogram of one [`Metrics`](super::Metrics) counts into, kept in nanoseconds so that
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
pub(super) type Histograms<L> = Family<L, LatencyHistogram, HistogramMaker>;

pub(super) fn histograms<L: Clone + std::hash::Hash + Eq>(buckets: &Buckets) -> Histograms<L> {
    Family::new_with_constructor(HistogramMaker(buckets.clone()))
}

/// Makes the histograms of a family, with the family's buckets.
#[derive(Debug, Clone)]
pub(super) struct HistogramMaker(Buckets);

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
pub(super) struct HistogramCells {
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
