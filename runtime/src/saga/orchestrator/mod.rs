//! The orchestrator of one saga type: starts sagas, drives each through its steps (then, on failure,
//! its compensations) committing every transition, and takes over sagas whose owner died.
//!
//! A saga in memory is a [`Run`]: the last committed row and the live state. Each transition builds
//! the next row and commits it with its history lines, fenced on this replica's ownership; the row in
//! the database is always the truth, so any error drops the run and reloads it from there.

mod drive;
mod leases;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use marty_config::SagasConfig;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::record::{self, Entry, SagaRow};
use super::Saga;
use crate::events::{current_trace_context, new_event_id};
use crate::metrics::{Metrics, SagaTypeMetrics};
use crate::store::{unix_millis, Store};
use crate::Runtime;
use drive::spawn_drive;
use leases::{renew_leases, replica_from_environment, take_over};

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

impl From<record::EntryRow> for HistoryEntry {
    fn from((_, at, step, kind, attempt, detail): record::EntryRow) -> Self {
        HistoryEntry { at: time_of(at), step, kind, attempt: attempt.max(0) as u32, detail }
    }
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
    /// Where steps run: their wrapped calls use this runtime's dependencies.
    runtime: crate::runtime::WeakRuntime,
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
    /// The orchestrator for `S` in [`Runtime::current`] (see [`Self::new_in`]).
    pub async fn new(env: S::Env) -> Result<Self, SagaError> {
        Self::new_in(&Runtime::current(), env).await
    }

    /// The orchestrator for `S` in `runtime`: on the database dependency its `#[saga(store = ..)]`
    /// names, with `[sagas]` settings and metrics from the runtime's `marty.toml` (the one the
    /// macros checked, or `MARTY_CONFIG`). It resumes unfinished sagas at once, and stops when the
    /// runtime's service shuts down gracefully, or at [`Self::shutdown`].
    pub async fn new_in(runtime: &Runtime, env: S::Env) -> Result<Self, SagaError> {
        let definition = S::DEFINITION;
        let (path, text) = definition.config;
        let registry = runtime.registry_or_load(path, text).map_err(|error| SagaError::Config(error.to_string()))?;
        let store = runtime.store(definition.store).await?;
        let mut settings = registry.config().sagas.clone();
        if settings.replica.is_none() {
            settings.replica = replica_from_environment();
        }
        Self::launch(runtime, store, env, settings, registry.metrics()).await
    }

    /// The orchestrator for `S` on `store`, with explicit settings, recording into `metrics`. With a
    /// `replica` name in `settings`, it takes back the unfinished sagas an earlier run of the same
    /// replica owned as soon as that run has missed two lease renewals, not once the whole lease ran
    /// out. It belongs to [`Runtime::current`]: Marty's tables are created in `store` (or checked,
    /// as the runtime's `[storage] migrate` says), and it stops when the runtime's service shuts down
    /// gracefully, or at [`Self::shutdown`].
    pub async fn with_store(
        store: Store,
        env: S::Env,
        settings: SagasConfig,
        metrics: &Metrics,
    ) -> Result<Self, SagaError> {
        Self::launch(&Runtime::current(), store, env, settings, metrics).await
    }

    /// Starts the orchestrator's background work in `runtime`, which stops it when its service shuts
    /// down.
    async fn launch(
        runtime: &Runtime,
        store: Store,
        env: S::Env,
        settings: SagasConfig,
        metrics: &Metrics,
    ) -> Result<Self, SagaError> {
        let definition = S::DEFINITION;
        if definition.steps.is_empty() {
            return Err(SagaError::Config(format!("saga `{}` has no steps", definition.name)));
        }
        crate::store::schema::prepare(&store, &runtime.storage_config()).await?;
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
            runtime: runtime.downgrade(),
        });
        let poller = tokio::spawn(take_over(inner.clone()));
        let leases = tokio::spawn(renew_leases(inner.clone()));
        lock(&inner.background).extend([poller, leases]);
        let weak = Arc::downgrade(&inner);
        runtime.shared().sagas.add(Box::new(move || {
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
        Ok(record::history(&self.inner.store, id).await?.into_iter().map(HistoryEntry::from).collect())
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

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2)
}

pub(super) fn time_of(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
