//! The saga metric families (`marty_sagas_*`, `marty_saga_step*`) and the handles one saga type
//! records into.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::primitives::{histograms, Buckets, Histograms, LatencyHistogram};

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

impl Default for SagaMetrics {
    fn default() -> Self {
        Self::with_buckets(&Buckets::default())
    }
}

impl SagaMetrics {
    pub(super) fn with_buckets(buckets: &Buckets) -> Self {
        SagaMetrics {
            started: Family::default(),
            completed: Family::default(),
            compensated: Family::default(),
            parked: Family::default(),
            steps: Family::default(),
            step_durations: histograms(buckets),
        }
    }

    /// Adds these families to `registry`.
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register("marty_sagas_started", "Sagas started", self.started.clone());
        registry.register("marty_sagas_completed", "Sagas that ran every step", self.completed.clone());
        registry.register("marty_sagas_compensated", "Sagas undone by their compensations", self.compensated.clone());
        registry.register("marty_sagas_parked", "Sagas parked for an operator", self.parked.clone());
        registry.register("marty_saga_steps", "Saga step and compensation attempts, by outcome", self.steps.clone());
        registry.register(
            "marty_saga_step_duration_seconds",
            "Duration of saga step and compensation attempts",
            self.step_durations.clone(),
        );
    }
}
