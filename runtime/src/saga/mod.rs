//! Sagas: a business transaction across services as steps run in order, each undone by its
//! compensation when a later step fails. `#[saga]` on the `impl` block of the saga's state (any serde
//! type) implements [`Saga`]; an [`Orchestrator`] runs it, persisting in a database the team already
//! has (SQLite or PostgreSQL), so that a saga survives the process that started it.
//!
//! ```no_run
//! use marty::saga::{Orchestrator, StepContext, StepError};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct PlaceOrder { order_id: i64, amount_cents: i64, payment: Option<String> }
//!
//! /// What the steps call: clients of other services, each call behind an `#[api_call]`.
//! struct Clients;
//! # impl Clients {
//! #     async fn charge(&self, _cents: i64, key: &str) -> Result<String, StepError> { Ok(key.to_owned()) }
//! #     async fn refund(&self, _key: &str) -> Result<(), StepError> { Ok(()) }
//! # }
//!
//! #[marty::saga(store = "orders_db", timeout = "60s")] // name defaults to `place_order`
//! impl PlaceOrder {
//!     #[saga_step(compensate = refund, timeout = "5s", max_attempts = 3)]
//!     async fn charge(&mut self, ctx: &mut StepContext<Clients>) -> Result<(), StepError> {
//!         self.payment = Some(ctx.env().charge(self.amount_cents, &ctx.idempotency_key()).await?);
//!         Ok(())
//!     }
//!
//!     /// Succeeds, undoing nothing, when there is no charge under the key.
//!     async fn refund(&mut self, ctx: &mut StepContext<Clients>) -> Result<(), StepError> {
//!         ctx.env().refund(&ctx.idempotency_key()).await
//!     }
//! }
//!
//! # async fn run() -> Result<(), marty::saga::SagaError> {
//! let sagas = Orchestrator::<PlaceOrder>::new(Clients).await?; // resumes unfinished sagas
//! let id = sagas.start(PlaceOrder { order_id: 7, amount_cents: 1200, payment: None }).await?;
//! sagas.wait(&id).await?; // also: status, history, parked, resume
//! # Ok(())
//! # }
//! ```
//!
//! What the orchestrator promises:
//! - **State committed before and after each step.** A saga costs one commit to start and one per
//!   step: the commit that records step N done (with the state it left) also records step N+1 begun.
//!   Events a step publishes with [`StepContext::publish`] are written to the outbox in that same
//!   commit, so they exist exactly when the step's completion does.
//! - **At-least-once steps, one key per step.** A step attempt interrupted by a crash runs again after
//!   the restart, and transient failures are retried (`max_attempts`, exponential backoff with full
//!   jitter); [`StepContext::idempotency_key`] is the same for every attempt of a step, across
//!   retries and restarts (and for its compensation), so the services it calls can make the effect
//!   happen once.
//! - **Failures compensate in reverse.** A step that fails `max_attempts` times, or fails with an
//!   error that is not transient, or outlives the saga's `timeout`, starts the compensations of the
//!   steps before it, last first.
//! - **A step that may have taken effect is compensated too.** An attempt's effect is certainly
//!   absent only when its error says so ([`Classify::may_have_applied`] is `false`): Marty turned
//!   the call away, the connection was refused, or the other side answered that it did nothing (a
//!   declined payment). Any other failure (a connection lost after the request was sent, a
//!   timeout, `Unknown` or `Internal`, a proxy's 502/503/504, a crash during the attempt) leaves the
//!   step uncertain, and so does a call Marty retried during the attempt (its last error speaks only
//!   of its last try). The uncertainty stays with the step through its later attempts: when the
//!   saga gives up, the step's own compensation runs before the others. **The orchestrator relies
//!   on compensations that undo nothing when there is nothing to undo** (a refund that finds no
//!   charge under the key succeeds), and that leave a mark under the key when they find nothing,
//!   so that the original, should it still arrive late (a slow server, not a dead one), does
//!   nothing. A step that makes several calls and fails on a later one has applied the earlier
//!   ones: return [`StepError::uncertain`] then, or make one call per step.
//! - **Open breakers are waited out.** When Marty turns a step's or compensation's call away (the
//!   breaker is open, the bulkhead is full: [`ErrorClass::TurnedAway`]), nothing reached the other
//!   side, so the attempt does not count: the orchestrator waits the breaker's `retry_after` and
//!   tries again, within the saga's `timeout` for a step (each attempt keeps its own `timeout`). A
//!   saga without a `timeout` waits as long as the breaker keeps turning its calls away.
//! - **Compensations outlast outages.** A compensation is retried, with exponential backoff and
//!   through open breakers, until it succeeds or `[sagas] compensation_deadline` (default 5 minutes,
//!   longer than every breaker's `open_for`) has passed since it began, counting only from an
//!   attempt this replica made (time no replica drove it does not park it); sooner only when the
//!   other side refused it ([`ErrorClass::Expected`], e.g. [`StepError::permanent`])
//!   `compensation_attempts` times in a row. Then the saga is parked, listed by
//!   [`Orchestrator::parked`], and continues when [`Orchestrator::resume`] is called. An outage
//!   shorter than the deadline never parks a saga.
//! - **Timeouts are deadlines in the database**, so a step or saga timeout that passed while no process
//!   was running still fires when one resumes the saga.
//! - **One owner at a time.** A replica owns the sagas it runs through a lease it renews every sixth
//!   of a lease; when it dies, another replica takes them over once the lease expires (`[sagas]
//!   lease`). A replica with a stable name (`[sagas] replica`, else `POD_NAME` or `HOSTNAME`) that
//!   restarts takes its own sagas back as soon as its previous run has missed two renewals (a third
//!   of the lease), and never from a run that still renews. Every commit is fenced on the owner's
//!   run, so a replica that lost a saga stops driving it (an attempt it had under way may still
//!   finish: the idempotency key makes that harmless).
//! - **Resumed on startup**: every orchestrator looks for unfinished sagas with no live owner, at
//!   start and every `[sagas] poll_interval`. While the database is unreachable a saga waits, then
//!   goes on from its stored row: the attempt it was in counts once, as interrupted, however long
//!   the outage.
//! - **Tracing**: the saga's spans (`saga`, `saga step`, `saga compensation`) continue the trace it
//!   was started in, across processes. **Metrics**: `marty_sagas_{started,completed,compensated,
//!   parked}_total{saga}`, `marty_saga_steps_total{saga,step,outcome}`,
//!   `marty_saga_step_duration_seconds{saga,step}`.
//!
//! Steps are numbered by their order in the database: adding, removing or reordering steps changes
//! the meaning of sagas in flight, so finish them (or give the new version a new `name`) first.

pub mod operator;
mod orchestrator;
mod record;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::events::{BoxFuture, Event, EventError, Message};
use crate::{Classify, ErrorClass, Runtime};

pub use orchestrator::{HistoryEntry, Orchestrator, SagaError, SagaStatus, Status};

/// How an orchestrator is stopped when its service shuts down gracefully; `None` once it is gone.
type Stop = Box<dyn Fn() -> Option<BoxFuture<'static, ()>> + Send + Sync>;

/// The orchestrators running in one [`Runtime`], stopped together when its service shuts down.
#[derive(Default)]
pub(crate) struct Running(Mutex<Vec<Stop>>);

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

impl Running {
    pub(super) fn add(&self, stop: Stop) {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(stop);
    }

    /// Stops every orchestrator and releases its leases, so that other replicas continue its sagas
    /// at once rather than after the lease.
    pub(crate) async fn stop_all(&self) {
        let stops: Vec<_> = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).drain(..).collect();
        for stop in stops {
            if let Some(stopping) = stop() {
                stopping.await;
            }
        }
    }
}

/// Stops every orchestrator of [`Runtime::current`] and releases its leases (a `#[service]` does this for its runtime when it shuts down
/// gracefully).
pub async fn shutdown_all() {
    Runtime::current().shared().sagas.stop_all().await;
}

/// A saga: its state is `Self`, its steps are methods. Implemented by `#[saga]`; by hand it is the
/// same: a definition and two functions that run step `index` (or its compensation).
pub trait Saga: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What steps reach besides the state: clients of the services they call (`env = ..`).
    type Env: Send + Sync + 'static;

    /// The saga's name, store, timeout and steps.
    const DEFINITION: &'static SagaDefinition;

    /// Runs step `index` once.
    fn run_step<'a>(
        &'a mut self,
        index: usize,
        ctx: &'a mut StepContext<Self::Env>,
    ) -> BoxFuture<'a, Result<(), StepError>>;

    /// Runs the compensation of step `index` once; only called for steps that declare one.
    fn compensate<'a>(
        &'a mut self,
        index: usize,
        ctx: &'a mut StepContext<Self::Env>,
    ) -> BoxFuture<'a, Result<(), StepError>>;
}

/// What `#[saga(..)]` declares.
#[derive(Debug)]
pub struct SagaDefinition {
    /// The saga's name: persisted with each instance, so keep it stable across releases.
    pub name: &'static str,
    /// The database dependency (`marty.toml`) that keeps the saga's state.
    pub store: &'static str,
    /// How long the forward steps may take in all; past it the saga compensates.
    pub timeout: Option<Duration>,
    /// The steps, in the order they run.
    pub steps: &'static [StepDefinition],
    /// The `marty.toml` the macros checked, and its text then (as for wrapped calls).
    pub config: (&'static str, &'static str),
}

/// What `#[saga_step(..)]` declares.
#[derive(Debug)]
pub struct StepDefinition {
    /// The method's name.
    pub name: &'static str,
    /// The compensation method's name, if the step has one.
    pub compensation: Option<&'static str>,
    /// How long one attempt (of the step or its compensation) may take.
    pub timeout: Option<Duration>,
    /// Attempts before the step counts as failed (crashes and timeouts count).
    pub max_attempts: u32,
}

/// What a step sees besides the state: the environment, its idempotency key, and an outbox whose
/// events are committed with the step's completion.
pub struct StepContext<E> {
    env: Arc<E>,
    saga_id: Arc<str>,
    step: &'static str,
    attempt: u32,
    outbox: Vec<Message>,
}

impl<E> StepContext<E> {
    pub(crate) fn new(env: Arc<E>, saga_id: Arc<str>, step: &'static str, attempt: u32) -> Self {
        StepContext { env, saga_id, step, attempt, outbox: Vec::new() }
    }

    /// The clients and settings the orchestrator was built with.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// The saga's id.
    pub fn saga_id(&self) -> &str {
        &self.saga_id
    }

    /// The step's name (its method's).
    pub fn step(&self) -> &'static str {
        self.step
    }

    /// This attempt's number, from 1; an attempt interrupted by a crash counts, a run whose call Marty
    /// turned away (breaker open) does not, and is made again under the same number.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// `<saga id>/<step>`: the same for every attempt of the step, across retries and restarts, and
    /// for its compensation. Pass it to the services a step calls so that a retried step takes
    /// effect once (and a compensation can find what to undo).
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.saga_id, self.step)
    }

    /// Queues `event` for the outbox: it is written in the same transaction that records this step
    /// done (and the state it left), and dropped if the attempt fails.
    pub fn publish<T: Event>(&mut self, event: &T) -> Result<(), EventError> {
        self.outbox.push(Message::from_event(event)?);
        Ok(())
    }

    pub(crate) fn take_outbox(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.outbox)
    }
}

impl<E> fmt::Debug for StepContext<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("saga_id", &self.saga_id)
            .field("step", &self.step)
            .field("attempt", &self.attempt)
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

/// Why a step or compensation attempt failed, and what the orchestrator does about it (from the
/// error's [`Classify`]): whether another attempt may help ([`ErrorClass::Transient`]), whether Marty
/// turned a call away before it started ([`ErrorClass::TurnedAway`]: waited out, no attempt used),
/// and whether the attempt may have taken effect ([`Classify::may_have_applied`]: if so, the step is
/// compensated when the saga gives up on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    message: String,
    class: ErrorClass,
    may_have_applied: bool,
}

impl StepError {
    /// A failure worth retrying (a timeout, a lost connection); the attempt may have taken effect.
    pub fn transient(message: impl Into<String>) -> Self {
        StepError { message: message.into(), class: ErrorClass::Transient, may_have_applied: true }
    }

    /// A refusal no retry will fix, answered before anything happened (payment declined, out of
    /// stock; an [`ErrorClass::Expected`] error): the saga compensates the steps before this one at
    /// once, and a compensation refused `[sagas] compensation_attempts` times in a row parks the
    /// saga. If the attempt may have taken effect all the same, say so with [`StepError::uncertain`].
    pub fn permanent(message: impl Into<String>) -> Self {
        StepError { message: message.into(), class: ErrorClass::Expected, may_have_applied: false }
    }

    /// From any error that says what it is.
    pub fn from_error<E: fmt::Display + Classify + ?Sized>(error: &E) -> Self {
        StepError { message: error.to_string(), class: error.classify(), may_have_applied: error.may_have_applied() }
    }

    /// The same error, for an attempt that may have taken effect (say, a step that made two calls and
    /// failed on the second): the step is then compensated too when the saga gives up on it.
    pub fn uncertain(mut self) -> Self {
        self.may_have_applied = true;
        self
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        self.class.is_transient()
    }

    /// Whether the attempt may have taken effect on the other side.
    pub fn may_have_applied(&self) -> bool {
        self.may_have_applied
    }

    /// When Marty turned a call away before it started (breaker open, bulkhead full): how long until
    /// trying again makes sense.
    pub fn turned_away(&self) -> Option<Duration> {
        self.class.turned_away()
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Classify for StepError {
    fn classify(&self) -> ErrorClass {
        self.class
    }

    fn may_have_applied(&self) -> bool {
        self.may_have_applied
    }
}

/// What a step method may return: `Result<(), E>` where `E` says what went wrong ([`fmt::Display`])
/// and whether it is worth retrying ([`Classify`]).
#[diagnostic::on_unimplemented(
    message = "a saga step returns `Result<(), E>` where `E: Display + marty::Classify`, not `{Self}`",
    label = "the orchestrator records the error and asks it whether to retry",
    note = "return `Result<(), marty::saga::StepError>`, or implement `Display` and `marty::Classify` for your error type"
)]
pub trait StepResult {
    /// The outcome, as the orchestrator records it.
    fn into_step_result(self) -> Result<(), StepError>;
}

impl<E: fmt::Display + Classify> StepResult for Result<(), E> {
    fn into_step_result(self) -> Result<(), StepError> {
        self.map_err(|error| StepError::from_error(&error))
    }
}
