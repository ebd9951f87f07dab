//! The state machine of one saga: forward through the steps, then, on failure, backward through
//! the compensations, committing each transition fenced on this replica's ownership.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::{lock, millis, Inner, Next, Run, SagaError, Status};
use crate::events::{continue_trace, Message};
use crate::metrics::StepOutcome;
use crate::retry::effects;
use crate::saga::record::{self, Entry, SagaRow};
use crate::saga::{Saga, StepContext, StepDefinition, StepError};
use crate::store::unix_millis;
use crate::{Classify, ErrorClass};
use marty_config::SagasConfig;

pub(super) fn spawn_drive<S: Saga>(inner: Arc<Inner<S>>, run: Run<S>) {
    let id: Arc<str> = run.row.id.as_str().into();
    if !lock(&inner.driving).insert(id.clone()) {
        return;
    }
    let span = tracing::info_span!("saga", saga = S::DEFINITION.name, saga.id = %id);
    continue_trace(&span, run.row.traceparent.as_deref(), None);
    let runtime = inner.runtime.upgrade().filter(|runtime| !runtime.is_global());
    let task = async move {
        drive(&inner, run).await;
        lock(&inner.driving).remove(&id);
    }
    .instrument(span);
    match runtime {
        Some(runtime) => drop(tokio::spawn(runtime.scope(task))),
        None => drop(tokio::spawn(task)),
    }
}

/// Drives one saga until it settles, this replica stops, or another replica owns it. A failure to
/// reach the database drops what is in memory and starts again from the stored row.
async fn drive<S: Saga>(inner: &Arc<Inner<S>>, mut run: Run<S>) {
    let mut stop = inner.stop.subscribe();
    let mut failures = 0;
    loop {
        let result = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            result = advance(inner, &mut run) => result,
        };
        match result {
            Ok(Next::Continue) => failures = 0,
            Ok(Next::Stop) => return,
            Err(error) => {
                tracing::warn!(%error, "saga store unavailable; reloading the saga");
                // What is in memory may or may not have been committed: only the stored row counts.
                loop {
                    failures += 1;
                    let delay = backoff(&inner.settings, failures);
                    tokio::select! {
                        _ = stop.wait_for(|stopped| *stopped) => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    match reload(inner, &run.row.id).await {
                        Ok(Some(reloaded)) => break run = reloaded,
                        Ok(None) => return,
                        Err(error) => tracing::warn!(%error, ?delay, "saga store unavailable"),
                    }
                }
            }
        }
    }
}

/// The stored saga, as a run of this replica's; `None` when it is not ours any more, or settled.
pub(super) async fn reload<S: Saga>(inner: &Inner<S>, id: &str) -> Result<Option<Run<S>>, SagaError> {
    // Renewing is how we learn whether we still own it; it records the hand-over `run_of` reads.
    let now = unix_millis();
    let owned = record::claim_one(&inner.store, id, &inner.owner, now, now + millis(inner.settings.lease)).await?;
    if !owned {
        return Ok(None);
    }
    let Some(row) = record::load(&inner.store, S::DEFINITION.name, id).await? else { return Ok(None) };
    if Status::parse(&row.status).is_none_or(Status::is_settled) {
        return Ok(None);
    }
    run_of(inner, row).await.map(Some)
}

pub(super) async fn run_of<S: Saga>(inner: &Inner<S>, mut row: SagaRow) -> Result<Run<S>, SagaError> {
    let state = serde_json::from_str(&row.state)?;
    let seq = record::next_seq(&inner.store, &row.id).await?;
    // The attempt may have been under way unless it was not due when the saga changed hands: the
    // previous owner was waiting (a backoff, an open breaker) and starts an attempt only at
    // `next_attempt_at`. A saga taken from an owner that stopped renewing changed hands now, long
    // after its attempt if it had started one, so clock skew between replicas does not blur the
    // line; one its owner released (a clean shutdown) changed hands then, by the owner's own clock,
    // however late another replica takes it. A resumed parked saga records attempt 0: nothing was
    // under way.
    let interrupted = row.attempt > 0 && row.next_attempt_at <= row.handed_over_at;
    row.attempt = row.attempt.max(1);
    if row.step_started_at == 0 {
        // Written by a version before the column existed.
        row.step_started_at = row.updated_at;
    }
    Ok(Run { row, state, seq, interrupted, turned_away: 0 })
}

/// One transition: a step (or compensation) attempt and the commit of its outcome.
async fn advance<S: Saga>(inner: &Inner<S>, run: &mut Run<S>) -> Result<Next, SagaError> {
    match Status::parse(&run.row.status) {
        Some(Status::Running) => forward(inner, run).await,
        Some(Status::Compensating) => backward(inner, run).await,
        _ => Ok(Next::Stop),
    }
}

/// How an attempt ended.
enum Attempt {
    Succeeded(Vec<Message>),
    Failed(StepError),
    /// The step's own timeout passed: its effect is unknown.
    TimedOut,
    /// The previous owner stopped during the attempt (after its deadline, if `timed_out`).
    Interrupted {
        timed_out: bool,
    },
    /// The saga's deadline passed, before the attempt or `during` it.
    SagaTimedOut {
        during: bool,
    },
}

async fn forward<S: Saga>(inner: &Inner<S>, run: &mut Run<S>) -> Result<Next, SagaError> {
    let definition = S::DEFINITION;
    let index = run.row.step as usize;
    let step = &definition.steps[index];
    if std::mem::take(&mut run.interrupted) {
        let timed_out = run.row.step_deadline.is_some_and(|deadline| deadline <= unix_millis());
        return step_failed(inner, run, Attempt::Interrupted { timed_out }).await;
    }
    wait_until(run.row.next_attempt_at).await;
    let now = unix_millis();
    if run.row.deadline.is_some_and(|deadline| deadline <= now) {
        return step_failed(inner, run, Attempt::SagaTimedOut { during: false }).await;
    }
    let mut limit = step.timeout;
    let mut saga_limits = false;
    if let Some(deadline) = run.row.deadline {
        let left = Duration::from_millis((deadline - now).max(0) as u64);
        if limit.is_none_or(|limit| left < limit) {
            limit = Some(left);
            saga_limits = true;
        }
    }
    let mut ctx = StepContext::new(inner.env.clone(), run.row.id.as_str().into(), step.name, run.row.attempt as u32);
    let span = tracing::info_span!("saga step", step = step.name, attempt = run.row.attempt);
    let started = Instant::now();
    let result = within(limit, effects::watch(S::run_step(&mut run.state, index, &mut ctx))).instrument(span).await;
    let metrics = &inner.metrics.steps[index];
    let attempt = match result {
        Some((Ok(()), _)) => {
            metrics.record(StepOutcome::Completed, started.elapsed());
            Attempt::Succeeded(ctx.take_outbox())
        }
        Some((Err(error), retried)) => {
            // A call the step retried may have taken effect on an earlier attempt, whatever the
            // error of its last attempt says.
            let error = if retried { error.uncertain() } else { error };
            if let Some(retry_after) = error.turned_away() {
                metrics.record(StepOutcome::TurnedAway, started.elapsed());
                return wait_out(inner, run, retry_after, &error).await;
            }
            metrics.record(StepOutcome::Failed, started.elapsed());
            Attempt::Failed(error)
        }
        None => {
            metrics.record(StepOutcome::TimedOut, started.elapsed());
            if saga_limits {
                Attempt::SagaTimedOut { during: true }
            } else {
                Attempt::TimedOut
            }
        }
    };
    run.turned_away = 0;
    match attempt {
        Attempt::Succeeded(outbox) => step_completed(inner, run, index, outbox).await,
        failed => step_failed(inner, run, failed).await,
    }
}

async fn step_completed<S: Saga>(
    inner: &Inner<S>,
    run: &mut Run<S>,
    index: usize,
    outbox: Vec<Message>,
) -> Result<Next, SagaError> {
    let steps = S::DEFINITION.steps;
    let now = unix_millis();
    let mut row = run.row.clone();
    row.state = serde_json::to_string(&run.state)?;
    row.updated_at = now;
    let mut history = vec![run.entry(Some(steps[index].name), "step_completed", None)];
    let settled = match steps.get(index + 1) {
        Some(next) => {
            start_step::<S>(&mut row, index + 1, now);
            history.push(run.entry_at(Some(next.name), "step_started", 1, None));
            None
        }
        None => {
            row.status = Status::Completed.as_str().to_owned();
            row.step_deadline = None;
            history.push(run.entry_at(None, "completed", 0, None));
            Some(Status::Completed)
        }
    };
    commit(inner, run, row, history, &outbox, settled).await
}

/// Points `row` at the first attempt of step `index` (or of its compensation), due now.
fn start_step<S: Saga>(row: &mut SagaRow, index: usize, now: i64) {
    row.step = index as i32;
    row.attempt = 1;
    row.next_attempt_at = now;
    row.step_started_at = now;
    row.uncertain = false;
    row.refusals = 0;
    row.step_deadline = S::DEFINITION.steps[index].timeout.map(|timeout| now + millis(timeout));
}

/// A forward attempt failed (or timed out, or was interrupted): retry it, or start compensating.
async fn step_failed<S: Saga>(inner: &Inner<S>, run: &mut Run<S>, attempt: Attempt) -> Result<Next, SagaError> {
    let mut history = Vec::new();
    let index = run.row.step as usize;
    let step = &S::DEFINITION.steps[index];
    // A failed attempt leaves no trace in the state.
    run.state = serde_json::from_str(&run.row.state)?;
    let (error, retryable, may_have_applied) = match attempt {
        Attempt::Failed(error) => {
            let mut detail = error.to_string();
            if error.may_have_applied() {
                detail.push_str(" (may have taken effect)");
            }
            history.push(run.entry(Some(step.name), "step_failed", Some(detail)));
            (error.to_string(), error.is_transient(), error.may_have_applied())
        }
        Attempt::TimedOut => {
            let detail = step.timeout.map(|timeout| format!("no answer within {timeout:?}"));
            history.push(run.entry(Some(step.name), "step_timed_out", detail));
            (format!("step `{}` timed out", step.name), true, true)
        }
        Attempt::Interrupted { timed_out } => {
            let kind = if timed_out { "step_timed_out" } else { "step_interrupted" };
            let detail = "the previous owner stopped during this attempt".to_owned();
            history.push(run.entry(Some(step.name), kind, Some(detail)));
            (format!("step `{}` was interrupted", step.name), true, true)
        }
        Attempt::SagaTimedOut { during } => {
            let detail = S::DEFINITION.timeout.map(|timeout| format!("the saga's {timeout:?} ran out"));
            history.push(run.entry_at(None, "timed_out", 0, detail));
            ("the saga timed out".to_owned(), false, during)
        }
        Attempt::Succeeded(_) => unreachable!("only failures come here"),
    };
    let now = unix_millis();
    let attempts_left = (run.row.attempt as u32) < step.max_attempts;
    let saga_alive = run.row.deadline.is_none_or(|deadline| deadline > now);
    let mut error = error;
    if !saga_alive && !history.iter().any(|entry| entry.kind == "timed_out") {
        let detail = S::DEFINITION.timeout.map(|timeout| format!("the saga's {timeout:?} ran out"));
        history.push(run.entry_at(None, "timed_out", 0, detail));
        error = "the saga timed out".to_owned();
    }
    let mut row = run.row.clone();
    row.updated_at = now;
    // Once an attempt may have taken effect, the step stays uncertain whatever later attempts say.
    row.uncertain |= may_have_applied;
    if retryable && attempts_left && saga_alive {
        let delay = backoff(&inner.settings, run.row.attempt as u32);
        row.attempt += 1;
        row.next_attempt_at = now + millis(delay);
        row.step_deadline = step.timeout.map(|timeout| row.next_attempt_at + millis(timeout));
        history.push(run.entry_at(Some(step.name), "step_started", row.attempt, Some(format!("after {delay:?}"))));
        return commit(inner, run, row, history, &[], None).await;
    }
    // A step that may have taken effect is compensated too: its compensation finds nothing to undo
    // when the effect did not happen after all.
    let last_to_undo = if row.uncertain { Some(index) } else { index.checked_sub(1) };
    start_compensating(inner, run, row, last_to_undo, error, history).await
}

async fn start_compensating<S: Saga>(
    inner: &Inner<S>,
    run: &mut Run<S>,
    mut row: SagaRow,
    last_to_undo: Option<usize>,
    error: String,
    mut history: Vec<Entry>,
) -> Result<Next, SagaError> {
    let steps = S::DEFINITION.steps;
    let now = unix_millis();
    row.error = Some(error);
    row.next_attempt_at = now;
    match last_to_undo.and_then(|last| previous_compensable(steps, last + 1)) {
        Some(index) => {
            row.status = Status::Compensating.as_str().to_owned();
            start_step::<S>(&mut row, index, now);
            history.push(run.entry_at(Some(steps[index].name), "compensation_started", 1, None));
            commit(inner, run, row, history, &[], None).await
        }
        None => {
            row.status = Status::Compensated.as_str().to_owned();
            row.step_deadline = None;
            history.push(run.entry_at(None, "compensated", 0, Some("nothing to undo".to_owned())));
            commit(inner, run, row, history, &[], Some(Status::Compensated)).await
        }
    }
}

/// The last step before `end` that has a compensation.
fn previous_compensable(steps: &[StepDefinition], end: usize) -> Option<usize> {
    (0..end).rev().find(|&index| steps[index].compensation.is_some())
}

async fn backward<S: Saga>(inner: &Inner<S>, run: &mut Run<S>) -> Result<Next, SagaError> {
    let index = run.row.step as usize;
    let step = &S::DEFINITION.steps[index];
    if std::mem::take(&mut run.interrupted) {
        let entry = run.entry(
            Some(step.name),
            "compensation_interrupted",
            Some("the previous owner stopped during this attempt".into()),
        );
        // Whatever time passed while no replica drove it (an outage, every replica down) is not the
        // compensation failing: it gets a new attempt before it can be parked.
        let error = StepError::transient("interrupted");
        return compensation_failed(inner, run, error, vec![entry], false).await;
    }
    wait_until(run.row.next_attempt_at).await;
    let mut ctx = StepContext::new(inner.env.clone(), run.row.id.as_str().into(), step.name, run.row.attempt as u32);
    let span = tracing::info_span!("saga compensation", step = step.name, attempt = run.row.attempt);
    let started = Instant::now();
    let result = within(step.timeout, S::compensate(&mut run.state, index, &mut ctx)).instrument(span).await;
    let metrics = &inner.metrics.steps[index];
    match result {
        Some(Ok(())) => {
            metrics.record(StepOutcome::Compensated, started.elapsed());
            run.turned_away = 0;
            let outbox = ctx.take_outbox();
            let now = unix_millis();
            let mut row = run.row.clone();
            row.state = serde_json::to_string(&run.state)?;
            row.updated_at = now;
            let mut history = vec![run.entry(Some(step.name), "compensation_completed", None)];
            let steps = S::DEFINITION.steps;
            let settled = match previous_compensable(steps, index) {
                Some(previous) => {
                    start_step::<S>(&mut row, previous, now);
                    history.push(run.entry_at(Some(steps[previous].name), "compensation_started", 1, None));
                    None
                }
                None => {
                    row.status = Status::Compensated.as_str().to_owned();
                    row.step_deadline = None;
                    history.push(run.entry_at(None, "compensated", 0, None));
                    Some(Status::Compensated)
                }
            };
            commit(inner, run, row, history, &outbox, settled).await
        }
        Some(Err(error)) if error.turned_away().is_some() => {
            metrics.record(StepOutcome::TurnedAway, started.elapsed());
            compensation_failed(inner, run, error, Vec::new(), true).await
        }
        Some(Err(error)) => {
            metrics.record(StepOutcome::CompensationFailed, started.elapsed());
            let entry = run.entry(Some(step.name), "compensation_failed", Some(error.to_string()));
            compensation_failed(inner, run, error, vec![entry], true).await
        }
        None => {
            metrics.record(StepOutcome::CompensationFailed, started.elapsed());
            let detail = step.timeout.map(|timeout| format!("no answer within {timeout:?}"));
            let entry = run.entry(Some(step.name), "compensation_timed_out", detail);
            compensation_failed(inner, run, StepError::transient("timed out"), vec![entry], true).await
        }
    }
}

/// A compensation attempt failed, or Marty turned its call away: try again, or park the saga for an
/// operator. A compensation must happen, so it is retried until `[sagas] compensation_deadline` has
/// passed since it began, whatever the errors; it is parked sooner only when the other side refused
/// it (an `Expected` error: it answered, and the answer is no) `compensation_attempts` times in a
/// row. Calls turned away are waited out and never count. `may_park` is false for an attempt that
/// was interrupted (the previous owner stopped): it gets a new attempt first.
async fn compensation_failed<S: Saga>(
    inner: &Inner<S>,
    run: &mut Run<S>,
    error: StepError,
    mut history: Vec<Entry>,
    may_park: bool,
) -> Result<Next, SagaError> {
    let expired = compensation_expired(inner, &run.row);
    if let Some(retry_after) = error.turned_away() {
        if !may_park || !expired {
            return wait_out(inner, run, retry_after, &error).await;
        }
    }
    let step = &S::DEFINITION.steps[run.row.step as usize];
    let settings = &inner.settings;
    run.turned_away = 0;
    run.state = serde_json::from_str(&run.row.state)?;
    let now = unix_millis();
    let mut row = run.row.clone();
    row.updated_at = now;
    if error.turned_away().is_none() {
        row.refusals = if error.classify() == ErrorClass::Expected { row.refusals + 1 } else { 0 };
    }
    let refused = row.refusals as u32 >= settings.compensation_attempts;
    if !may_park || (!expired && !refused) {
        let delay = backoff(settings, run.row.attempt as u32);
        row.attempt += 1;
        row.next_attempt_at = now + millis(delay);
        row.step_deadline = step.timeout.map(|timeout| row.next_attempt_at + millis(timeout));
        history.push(run.entry_at(
            Some(step.name),
            "compensation_started",
            row.attempt,
            Some(format!("after {delay:?}")),
        ));
        return commit(inner, run, row, history, &[], None).await;
    }
    row.status = Status::Parked.as_str().to_owned();
    row.step_deadline = None;
    let attempts = run.row.attempt;
    let reason = if refused {
        format!("compensation `{}` refused {} times in a row: {error}", step.name, row.refusals)
    } else {
        let elapsed = Duration::from_millis((now - run.row.step_started_at).max(0) as u64);
        format!("compensation `{}` kept failing for {elapsed:.0?} ({attempts} attempts): {error}", step.name)
    };
    tracing::error!(saga.error = %reason, "saga parked for an operator");
    row.error = Some(reason.clone());
    history.push(run.entry_at(Some(step.name), "parked", attempts, Some(reason)));
    commit(inner, run, row, history, &[], Some(Status::Parked)).await
}

/// Whether the compensation `row` is at has been tried for `[sagas] compensation_deadline`.
fn compensation_expired<S: Saga>(inner: &Inner<S>, row: &SagaRow) -> bool {
    unix_millis() >= row.step_started_at.saturating_add(millis(inner.settings.compensation_deadline))
}

/// Marty turned a call of the attempt away (breaker open, bulkhead full): nothing reached the other
/// side, so the attempt does not count and is made again once the breaker lets calls through (within
/// the saga's deadline, for a step). Waits grow with each turn-away in a row, so sagas waiting on a
/// half-open breaker, whose few trial calls are taken, do not spin.
async fn wait_out<S: Saga>(
    inner: &Inner<S>,
    run: &mut Run<S>,
    retry_after: Duration,
    error: &StepError,
) -> Result<Next, SagaError> {
    let step = &S::DEFINITION.steps[run.row.step as usize];
    run.state = serde_json::from_str(&run.row.state)?;
    run.turned_away += 1;
    let now = unix_millis();
    let wait = retry_after.saturating_add(backoff(&inner.settings, run.turned_away));
    let mut row = run.row.clone();
    row.updated_at = now;
    row.next_attempt_at = now + millis(wait);
    let compensating = row.status == Status::Compensating.as_str();
    if !compensating {
        // The step may have made a call that took effect before the one turned away.
        row.uncertain |= error.may_have_applied();
        if let Some(deadline) = row.deadline {
            row.next_attempt_at = row.next_attempt_at.min(deadline);
        }
    }
    row.step_deadline = step.timeout.map(|timeout| row.next_attempt_at + millis(timeout));
    let kind = if compensating { "compensation_waiting" } else { "step_waiting" };
    let detail =
        format!("{error}; trying again in {:?}", Duration::from_millis((row.next_attempt_at - now).max(0) as u64));
    let history = vec![run.entry(Some(step.name), kind, Some(detail))];
    commit(inner, run, row, history, &[], None).await
}

/// Commits `row` if this replica still owns the saga; then it is the run's row.
async fn commit<S: Saga>(
    inner: &Inner<S>,
    run: &mut Run<S>,
    row: SagaRow,
    history: Vec<Entry>,
    outbox: &[Message],
    settled: Option<Status>,
) -> Result<Next, SagaError> {
    let mut history = history;
    for (offset, entry) in history.iter_mut().enumerate() {
        entry.seq = run.seq + offset as i32;
    }
    let owned = record::commit(&inner.store, &row, &inner.owner, settled.is_some(), &history, outbox).await?;
    if !owned {
        tracing::warn!("another replica took this saga over; leaving it to them");
        return Ok(Next::Stop);
    }
    run.seq += history.len() as i32;
    run.row = row;
    let Some(status) = settled else { return Ok(Next::Continue) };
    match status {
        Status::Completed => inner.metrics.completed.inc(),
        Status::Compensated => inner.metrics.compensated.inc(),
        Status::Parked => inner.metrics.parked.inc(),
        Status::Running | Status::Compensating => 0,
    };
    tracing::info!(status = %status, "saga settled");
    if let Some(waiters) = lock(&inner.waiters).remove(run.row.id.as_str()) {
        for waiter in waiters {
            let _ = waiter.send(status);
        }
    }
    Ok(Next::Stop)
}

impl<S> Run<S> {
    /// A history line about the current attempt, numbered after those already queued.
    fn entry(&self, step: Option<&'static str>, kind: &'static str, detail: Option<String>) -> Entry {
        self.entry_at(step, kind, self.row.attempt, detail)
    }

    fn entry_at(&self, step: Option<&'static str>, kind: &'static str, attempt: i32, detail: Option<String>) -> Entry {
        Entry { seq: 0, at: unix_millis(), step, kind, attempt, detail }
    }
}

/// Runs `future` for at most `limit`; `None` when it ran out.
async fn within<T>(limit: Option<Duration>, future: impl std::future::Future<Output = T>) -> Option<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, future).await.ok(),
        None => Some(future.await),
    }
}

pub(super) async fn wait_until(at_millis: i64) {
    let wait = at_millis - unix_millis();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

/// Exponential backoff with full jitter: uniform in `[0, min(max, initial * 2^(attempt - 1))]`.
pub(super) fn backoff(settings: &SagasConfig, attempt: u32) -> Duration {
    let ceiling =
        settings.backoff_initial.saturating_mul(1 << attempt.saturating_sub(1).min(20)).min(settings.backoff_max);
    ceiling.mul_f64(fastrand::f64())
}
