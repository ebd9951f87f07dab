//! The orchestrator of one saga type: starts sagas, drives each through its steps (then, on failure,
//! its compensations) committing every transition, and takes over sagas whose owner died.
//!
//! A saga in memory is a [`Run`]: the last committed row and the live state. Each transition builds
//! the next row and commits it with its history lines, fenced on this replica's ownership; the row in
//! the database is always the truth, so any error drops the run and reloads it from there.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::record::{self, Entry, SagaRow};
use super::{Saga, StepContext, StepDefinition, StepError};
use crate::events::{continue_trace, current_trace_context};
use crate::events::{new_event_id, Message};
use crate::metrics::{Metrics, SagaTypeMetrics, StepOutcome};
use crate::retry::effects;
use crate::store::{unix_millis, Store};
use crate::DependencyRegistry;
use crate::{Classify, ErrorClass};
use marty_config::SagasConfig;

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Running its steps.
    Running,
    /// Undoing the steps it ran, last first.
    Compensating,
    /// Every step ran.
    Completed,
    /// A step failed and every compensation ran.
    Compensated,
    /// A compensation kept failing: waiting for an operator to [`Orchestrator::resume`] it.
    Parked,
}

impl Status {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Compensating => "compensating",
            Status::Completed => "completed",
            Status::Compensated => "compensated",
            Status::Parked => "parked",
        }
    }

    fn parse(name: &str) -> Option<Status> {
        [Status::Running, Status::Compensating, Status::Completed, Status::Compensated, Status::Parked]
            .into_iter()
            .find(|status| status.as_str() == name)
    }

    /// Whether the orchestrator has nothing more to do (finished, or parked for an operator).
    pub fn is_settled(self) -> bool {
        matches!(self, Status::Completed | Status::Compensated | Status::Parked)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A saga as stored.
#[derive(Debug, Clone)]
pub struct SagaStatus<S> {
    /// Its id.
    pub id: String,
    /// Where it is.
    pub status: Status,
    /// The step running or being compensated (for a parked saga: the compensation that failed).
    pub step: Option<&'static str>,
    /// The attempt of that step.
    pub attempt: u32,
    /// The state as the last completed step left it.
    pub state: S,
    /// Why it compensated (or parked).
    pub error: Option<String>,
    /// When it started.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
}

/// One line of a saga's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// When it happened.
    pub at: SystemTime,
    /// The step concerned, if any.
    pub step: Option<String>,
    /// What happened: `started`, `step_started`, `step_completed`, `step_failed`, `step_timed_out`,
    /// `step_interrupted`, `step_waiting`, `timed_out`, `compensation_started`,
    /// `compensation_completed`, `compensation_failed`, `compensation_timed_out`,
    /// `compensation_interrupted`, `compensation_waiting`, `completed`, `compensated`, `parked`,
    /// `resumed`. (`*_waiting`: Marty turned a call away, and the attempt is tried again later.)
    pub kind: String,
    /// The attempt concerned.
    pub attempt: u32,
    /// The error, or the retry delay.
    pub detail: Option<String>,
}

/// What went wrong talking to the saga store.
#[derive(Debug)]
#[non_exhaustive]
pub enum SagaError {
    /// The database failed.
    Database(sqlx::Error),
    /// The state could not be encoded, or a stored state no longer decodes into the type.
    State(serde_json::Error),
    /// The configuration or the definition is not usable.
    Config(String),
    /// No saga of this type has the id.
    NotFound(String),
}

impl fmt::Display for SagaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SagaError::Database(error) => write!(f, "saga store: {error}"),
            SagaError::State(error) => write!(f, "saga state: {error}"),
            SagaError::Config(problem) => f.write_str(problem),
            SagaError::NotFound(id) => write!(f, "no saga `{id}`"),
        }
    }
}

impl std::error::Error for SagaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SagaError::Database(error) => Some(error),
            SagaError::State(error) => Some(error),
            SagaError::Config(_) | SagaError::NotFound(_) => None,
        }
    }
}

impl From<sqlx::Error> for SagaError {
    fn from(error: sqlx::Error) -> Self {
        SagaError::Database(error)
    }
}

impl From<serde_json::Error> for SagaError {
    fn from(error: serde_json::Error) -> Self {
        SagaError::State(error)
    }
}

/// Runs sagas of type `S`: start them, read them, resume parked ones. Cheap to clone; every clone
/// is the same orchestrator. Its background work (taking over sagas, renewing leases) runs until
/// [`Orchestrator::shutdown`].
pub struct Orchestrator<S: Saga> {
    inner: Arc<Inner<S>>,
}

impl<S: Saga> Clone for Orchestrator<S> {
    fn clone(&self) -> Self {
        Orchestrator { inner: self.inner.clone() }
    }
}

impl<S: Saga> fmt::Debug for Orchestrator<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Orchestrator")
            .field("saga", &S::DEFINITION.name)
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

struct Inner<S: Saga> {
    store: Store,
    env: Arc<S::Env>,
    /// This orchestrator's name in leases, new at every start (`<replica>/<saga>/<run>` when the
    /// replica has a stable name), so that fencing tells it from an earlier run of the same replica.
    owner: Arc<str>,
    /// `<replica>/<saga>/`, when the replica has a stable name: an owner starting with it is an
    /// earlier run of this replica.
    replica_prefix: Option<String>,
    settings: SagasConfig,
    metrics: SagaTypeMetrics,
    stop: watch::Sender<bool>,
    /// Sagas this replica drives now.
    driving: Mutex<HashSet<Arc<str>>>,
    /// Callers of [`Orchestrator::wait`], told when the saga settles here.
    waiters: Mutex<HashMap<Arc<str>, Vec<oneshot::Sender<Status>>>>,
    background: Mutex<Vec<JoinHandle<()>>>,
}

/// A saga this replica drives: the row as last committed, and the live state.
struct Run<S> {
    row: SagaRow,
    state: S,
    /// The next history line's number.
    seq: i32,
    /// Taken over from another owner: the attempt the row records may have been under way.
    interrupted: bool,
    /// How many times in a row Marty turned this attempt's calls away: the wait grows with it.
    turned_away: u32,
}

enum Next {
    Continue,
    Stop,
}

impl<S: Saga> Orchestrator<S> {
    /// The orchestrator for `S`, on the database dependency its `#[saga(store = ..)]` names, with
    /// `[sagas]` settings and metrics from `marty.toml` (the one the macros checked, or `MARTY_CONFIG`).
    /// It resumes unfinished sagas at once.
    pub async fn new(env: S::Env) -> Result<Self, SagaError> {
        let definition = S::DEFINITION;
        let (path, text) = definition.config;
        let registry =
            DependencyRegistry::global_or_load(path, text).map_err(|error| SagaError::Config(error.to_string()))?;
        let store = crate::store::get(definition.store).await?;
        let mut settings = registry.config().sagas.clone();
        if settings.replica.is_none() {
            settings.replica = replica_from_environment();
        }
        Self::with_store(store, env, settings, registry.metrics()).await
    }

    /// The orchestrator for `S` on `store`, with explicit settings, recording into `metrics`. With a
    /// `replica` name in `settings`, it takes back the unfinished sagas an earlier run of the same
    /// replica owned as soon as that run has missed two lease renewals, not once the whole lease ran
    /// out.
    pub async fn with_store(
        store: Store,
        env: S::Env,
        settings: SagasConfig,
        metrics: &Metrics,
    ) -> Result<Self, SagaError> {
        let definition = S::DEFINITION;
        if definition.steps.is_empty() {
            return Err(SagaError::Config(format!("saga `{}` has no steps", definition.name)));
        }
        crate::store::schema::prepare(&store).await?;
        let step_names: Vec<&'static str> = definition.steps.iter().map(|step| step.name).collect();
        let replica_prefix = settings.replica.as_ref().map(|replica| format!("{replica}/{}/", definition.name));
        let owner = match &replica_prefix {
            Some(prefix) => format!("{prefix}{}", new_event_id()),
            None => format!("{}-{}", definition.name, new_event_id()),
        };
        let inner = Arc::new(Inner {
            store,
            env: Arc::new(env),
            owner: owner.into(),
            replica_prefix,
            metrics: metrics.sagas().saga(definition.name, &step_names),
            settings,
            stop: watch::channel(false).0,
            driving: Mutex::default(),
            waiters: Mutex::default(),
            background: Mutex::default(),
        });
        let poller = tokio::spawn(take_over(inner.clone()));
        let leases = tokio::spawn(renew_leases(inner.clone()));
        lock(&inner.background).extend([poller, leases]);
        let weak = Arc::downgrade(&inner);
        super::on_shutdown(Box::new(move || {
            let orchestrator = Orchestrator { inner: weak.upgrade()? };
            Some(Box::pin(async move { orchestrator.shutdown().await }))
        }));
        tracing::info!(saga = definition.name, owner = %inner.owner, "saga orchestrator started");
        Ok(Orchestrator { inner })
    }

    /// Starts a saga with `state` and returns its id; it runs in the background from here.
    pub async fn start(&self, state: S) -> Result<String, SagaError> {
        let id = new_event_id();
        self.start_with_id(&id, state).await?;
        Ok(id)
    }

    /// Starts a saga with the id of your choosing (an order id, a request id), so that a retried
    /// request starts it once: `false` when a saga with that id already exists.
    pub async fn start_with_id(&self, id: &str, state: S) -> Result<bool, SagaError> {
        let inner = &self.inner;
        let definition = S::DEFINITION;
        let now = unix_millis();
        let span = tracing::info_span!("saga start", saga = definition.name, saga.id = %id);
        let (traceparent, _) = span.in_scope(current_trace_context);
        let first = &definition.steps[0];
        let row = SagaRow {
            id: id.to_owned(),
            name: definition.name.to_owned(),
            state: serde_json::to_string(&state)?,
            status: Status::Running.as_str().to_owned(),
            step: 0,
            attempt: 1,
            error: None,
            deadline: definition.timeout.map(|timeout| now + millis(timeout)),
            step_deadline: first.timeout.map(|timeout| now + millis(timeout)),
            next_attempt_at: now,
            traceparent,
            created_at: now,
            updated_at: now,
            uncertain: false,
            step_started_at: now,
            refusals: 0,
            handed_over_at: 0,
        };
        let history = [
            Entry { seq: 1, at: now, step: None, kind: "started", attempt: 0, detail: None },
            Entry { seq: 2, at: now, step: Some(first.name), kind: "step_started", attempt: 1, detail: None },
        ];
        let lease_until = now + millis(inner.settings.lease);
        let inserted = record::insert(&inner.store, &row, &inner.owner, lease_until, &history).instrument(span).await?;
        if inserted {
            inner.metrics.started.inc();
            spawn_drive(inner.clone(), Run { row, state, seq: 3, interrupted: false, turned_away: 0 });
        }
        Ok(inserted)
    }

    /// Saga `id`, if there is one of this type.
    pub async fn status(&self, id: &str) -> Result<Option<SagaStatus<S>>, SagaError> {
        let row = record::load(&self.inner.store, S::DEFINITION.name, id).await?;
        row.map(status_of::<S>).transpose()
    }

    /// Saga `id`'s history, oldest first (empty when there is no such saga).
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, SagaError> {
        let rows = record::history(&self.inner.store, id).await?;
        Ok(rows
            .into_iter()
            .map(|(_, at, step, kind, attempt, detail)| HistoryEntry {
                at: time_of(at),
                step,
                kind,
                attempt: attempt.max(0) as u32,
                detail,
            })
            .collect())
    }

    /// The sagas of this type parked for an operator, oldest first.
    pub async fn parked(&self) -> Result<Vec<SagaStatus<S>>, SagaError> {
        let rows = record::parked(&self.inner.store, S::DEFINITION.name).await?;
        rows.into_iter().map(status_of::<S>).collect()
    }

    /// Resumes parked saga `id`: its compensations are tried again from the one that failed, with
    /// fresh attempts, by whichever replica takes it first. `false` when it is not parked.
    pub async fn resume(&self, id: &str) -> Result<bool, SagaError> {
        let resumed = record::resume(&self.inner.store, S::DEFINITION.name, id, unix_millis()).await?;
        if resumed {
            tracing::info!(saga = S::DEFINITION.name, saga.id = %id, "parked saga resumed");
        }
        Ok(resumed)
    }

    /// Waits until saga `id` settles (completed, compensated or parked), wherever it runs.
    pub async fn wait(&self, id: &str) -> Result<Status, SagaError> {
        let inner = &self.inner;
        let key: Arc<str> = id.into();
        loop {
            let (told, settled) = oneshot::channel();
            {
                let mut waiters = lock(&inner.waiters);
                let waiting = waiters.entry(key.clone()).or_default();
                waiting.retain(|waiter| !waiter.is_closed());
                waiting.push(told);
            }
            let row = record::load(&inner.store, S::DEFINITION.name, id).await?;
            let status =
                row.and_then(|row| Status::parse(&row.status)).ok_or_else(|| SagaError::NotFound(id.to_owned()))?;
            if status.is_settled() {
                lock(&inner.waiters).remove(&key);
                return Ok(status);
            }
            // Told at once when this replica settles it; otherwise looked up again.
            if let Ok(Ok(status)) = tokio::time::timeout(inner.settings.poll_interval, settled).await {
                return Ok(status);
            }
        }
    }

    /// This replica's name in the saga table's `owner` column.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Stops taking over and driving sagas and gives up this replica's leases, so another replica
    /// continues them at once. A step in flight is abandoned: it runs again where the saga resumes.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.stop.send_replace(true);
        let background: Vec<_> = lock(&inner.background).drain(..).collect();
        for task in background {
            let _ = task.await;
        }
        // Drivers return at their next await; give them a moment so none commits after the release.
        for _ in 0..100 {
            if lock(&inner.driving).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Err(error) = record::release(&inner.store, &inner.owner, unix_millis()).await {
            tracing::warn!(%error, "could not release saga leases; other replicas take over when they expire");
        }
    }
}

fn status_of<S: Saga>(row: SagaRow) -> Result<SagaStatus<S>, SagaError> {
    let status = Status::parse(&row.status)
        .ok_or_else(|| SagaError::Config(format!("saga `{}` has an unknown status `{}`", row.id, row.status)))?;
    let step = match status {
        Status::Completed => None,
        Status::Compensated => None,
        _ => S::DEFINITION.steps.get(row.step.max(0) as usize).map(|step| step.name),
    };
    Ok(SagaStatus {
        state: serde_json::from_str(&row.state)?,
        id: row.id,
        status,
        step,
        attempt: row.attempt.max(0) as u32,
        error: row.error,
        created_at: time_of(row.created_at),
        updated_at: time_of(row.updated_at),
    })
}

fn spawn_drive<S: Saga>(inner: Arc<Inner<S>>, run: Run<S>) {
    let id: Arc<str> = run.row.id.as_str().into();
    if !lock(&inner.driving).insert(id.clone()) {
        return;
    }
    let span = tracing::info_span!("saga", saga = S::DEFINITION.name, saga.id = %id);
    continue_trace(&span, run.row.traceparent.as_deref(), None);
    tokio::spawn(
        async move {
            drive(&inner, run).await;
            lock(&inner.driving).remove(&id);
        }
        .instrument(span),
    );
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
async fn reload<S: Saga>(inner: &Inner<S>, id: &str) -> Result<Option<Run<S>>, SagaError> {
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

async fn run_of<S: Saga>(inner: &Inner<S>, mut row: SagaRow) -> Result<Run<S>, SagaError> {
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

/// Drives the sagas this replica just took (`why` says how, for the log); one that cannot be loaded
/// is left for another try.
async fn drive_claimed<S: Saga>(inner: &Arc<Inner<S>>, rows: Vec<SagaRow>, why: &'static str) {
    for row in rows {
        tracing::info!(saga = S::DEFINITION.name, saga.id = %row.id, status = %row.status, why);
        match run_of(inner, row).await {
            Ok(run) => spawn_drive(inner.clone(), run),
            Err(error) => tracing::warn!(%error, "cannot resume saga; another replica will try"),
        }
    }
}

/// The replica's stable name where the platform gives one: `POD_NAME` (from the Kubernetes downward
/// API), else `HOSTNAME` (a pod's name in Kubernetes; shells keep it unexported).
fn replica_from_environment() -> Option<String> {
    ["POD_NAME", "HOSTNAME"]
        .into_iter()
        .filter_map(|key| std::env::var(key).ok())
        .find(|name| marty_config::is_replica_name(name))
}

/// Takes over, at start and every poll interval, unfinished sagas that no live replica owns: those
/// of an earlier run of this replica once it has missed two renewals, any other once its lease ran
/// out.
async fn take_over<S: Saga>(inner: Arc<Inner<S>>) {
    let mut stop = inner.stop.subscribe();
    let poll = inner.settings.poll_interval;
    let lease = millis(inner.settings.lease);
    // An earlier run's leases were last renewed before this run started, so they have all run out
    // a lease later; from then on the plain claim below finds those sagas, and reclaiming stops.
    let reclaim_until = unix_millis() + lease;
    loop {
        let now = unix_millis();
        if let Some(prefix) = inner.replica_prefix.as_ref().filter(|_| now <= reclaim_until) {
            // A live run renews every sixth of a lease: more than a third of a lease without a
            // renewal means the run is gone (or a second replica runs under the same name).
            let stale_before = now + lease * 2 / 3;
            match record::reclaim(
                &inner.store,
                S::DEFINITION.name,
                &inner.owner,
                prefix,
                now,
                stale_before,
                now + lease,
            )
            .await
            {
                Ok(rows) => drive_claimed(&inner, rows, "taking back a saga of this replica's previous run").await,
                Err(error) => tracing::warn!(%error, "cannot look for this replica's earlier sagas"),
            }
        }
        match record::claim(&inner.store, S::DEFINITION.name, &inner.owner, now, now + lease, now + millis(poll), 64)
            .await
        {
            Ok(rows) => drive_claimed(&inner, rows, "taking over saga").await,
            Err(error) => tracing::warn!(%error, "cannot look for sagas to take over"),
        }
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Renews this replica's leases every sixth of a lease (often enough that missing two renewals, a
/// third of a lease, tells a restarted run of the same replica that this one is gone).
async fn renew_leases<S: Saga>(inner: Arc<Inner<S>>) {
    let mut stop = inner.stop.subscribe();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(inner.settings.lease / 6) => {}
        }
        let lease_until = unix_millis() + millis(inner.settings.lease);
        if let Err(error) = record::renew(&inner.store, &inner.owner, lease_until).await {
            tracing::warn!(%error, "cannot renew saga leases; other replicas take the sagas over if this lasts");
        }
    }
}

/// Runs `future` for at most `limit`; `None` when it ran out.
async fn within<T>(limit: Option<Duration>, future: impl std::future::Future<Output = T>) -> Option<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, future).await.ok(),
        None => Some(future.await),
    }
}

async fn wait_until(at_millis: i64) {
    let wait = at_millis - unix_millis();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

/// Exponential backoff with full jitter: uniform in `[0, min(max, initial * 2^(attempt - 1))]`.
fn backoff(settings: &SagasConfig, attempt: u32) -> Duration {
    let ceiling =
        settings.backoff_initial.saturating_mul(1 << attempt.saturating_sub(1).min(20)).min(settings.backoff_max);
    ceiling.mul_f64(fastrand::f64())
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2)
}

fn time_of(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
