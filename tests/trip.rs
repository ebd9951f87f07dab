//! The saga the saga tests run: book a flight, a hotel and a car, each undone by a cancellation.
//! Every step and compensation writes its effect to `trip_effects`, deduplicated by the step's
//! idempotency key (as a real service would), and logs each execution to `trip_executions` (not
//! deduplicated), so the tests can tell "ran more than once" from "took effect more than once".
//! The state says where to fail, where to hang past a timeout, how each execution of a step answers
//! (a script of [`Reply`]s), and where the process should be killed (the crash tests' worker prints
//! `crash <saga> <point>` and waits for its SIGKILL).

use std::collections::BTreeMap;
use std::time::Duration;

use marty::saga::{StepContext, StepError};
use marty::store::Store;
use serde::{Deserialize, Serialize};

/// Runs `$body` with `$pool` bound to the store's pool, PostgreSQL or SQLite (the same SQL serves both).
#[macro_export]
macro_rules! on_store {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            marty::store::Store::Postgres($pool) => $body,
            marty::store::Store::Sqlite($pool) => $body,
            _ => unreachable!("the tests use PostgreSQL or SQLite"),
        }
    };
}

/// Steps in order.
pub const STEPS: [&str; 3] = ["book_flight", "book_hotel", "book_car"];

/// A trip to book, and how the test wants it to go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    /// The step (index) that fails with a permanent error.
    pub fail_at: Option<usize>,
    /// The step (index) that hangs past its timeout on every attempt.
    pub hang_at: Option<usize>,
    /// Where the process stops for its SIGKILL: `do:<step>:before|after` or `undo:<step>:before|after`.
    pub crash_at: Option<String>,
    /// Compensations fail (transiently) this many times before they work.
    pub flaky_undo: u32,
    /// How the executions of a step (`do:<step>`) or compensation (`undo:<step>`) answer, in order;
    /// once the script runs out they take effect and answer.
    pub script: BTreeMap<String, Vec<Reply>>,
    /// What the steps booked, as the state carries it.
    pub bookings: Vec<String>,
}

/// What one execution of a step or compensation does, as the service it calls would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Takes effect and answers.
    Ok,
    /// Takes effect, then the answer is lost on the way back: a transient error that may have applied.
    LostAfterEffect,
    /// The request is lost before the service acted: the same transient error, and no effect.
    Lost,
    /// Marty's circuit breaker turns the call away for this many milliseconds: no effect.
    TurnedAway(u64),
    /// Takes effect, then the step's next call is turned away by the breaker: the step says so with
    /// `StepError::uncertain`.
    EffectThenTurnedAway,
    /// A call through a real policy: its first attempt takes effect and loses the answer (and so
    /// opens the breaker); the retry is turned away, and that is the error the call returns.
    RetriedThenTurnedAway,
    /// The service answers no (declined, out of stock): permanent, and certainly no effect.
    Declined,
    /// The service fails with an error that is not transient and says nothing of the effect (an
    /// `io::Error::other`): it may have applied (it did not here).
    Internal,
}

/// Published by the last step, through the outbox, in the commit that records it done.
#[derive(Debug, Serialize, Deserialize, marty::Event)]
#[event(topic = "trips.booked")]
pub struct TripBooked {
    #[event(key)]
    pub trip: String,
}

/// A saga whose second step never answers and has no timeout of its own: the saga's `timeout`
/// ends it, and the first step is undone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Errand {
    /// Stop for the SIGKILL before the hanging step.
    pub crash: bool,
}

#[marty::saga(name = "errand", store = "orders_sqlite", timeout = "1s")]
impl Errand {
    #[saga_step(compensate = undo_first)]
    async fn first(&mut self, ctx: &mut StepContext<Effects>) -> Result<(), StepError> {
        let key = ctx.idempotency_key();
        record_effect(&ctx.env().store, ctx.saga_id(), 0, "do", &key)
            .await
            .map_err(|error| StepError::transient(error.to_string()))
    }

    #[saga_step]
    async fn never_answers(&mut self, ctx: &mut StepContext<Effects>) -> Result<(), StepError> {
        if self.crash {
            let trip = Trip { crash_at: Some("do:1:before".into()), ..Trip::default() };
            trip.maybe_crash(ctx.env(), ctx.saga_id(), "do:1:before").await;
        }
        std::future::pending().await
    }

    async fn undo_first(&mut self, ctx: &mut StepContext<Effects>) -> Result<(), StepError> {
        let key = ctx.idempotency_key();
        record_effect(&ctx.env().store, ctx.saga_id(), 0, "undo", &key)
            .await
            .map_err(|error| StepError::transient(error.to_string()))
    }
}

/// What the steps reach: the database with the effect tables, and what to do at a crash point.
#[derive(Debug, Clone)]
pub struct Effects {
    pub store: Store,
    /// Stop at crash points (the crash tests' worker); elsewhere they are ignored.
    pub crash: bool,
    /// How long a step's work takes.
    pub work: Duration,
}

#[marty::saga(name = "trip", store = "orders_sqlite", timeout = "60s")]
impl Trip {
    #[saga_step(compensate = cancel_flight, timeout = "2s", max_attempts = 10)]
    async fn book_flight(&mut self, ctx: &mut StepContext<Effects>) -> Result<(), StepError> {
        self.act(ctx, 0, "do").await
    }

    #[saga_step(compensate = cancel_hotel, timeout = "500ms", max_attempts = 10)]
    async fn book_hotel(&mut self, ctx: &mut StepContext<Effects>) -> Result<(), StepError> {
        self.act(ctx, 1, "do").await
    }

    #[saga_step(compensate = cancel_car, timeout = "2s", max_attempts = 10)]
    async fn book_car(&mut self, ctx: &mut StepContext<Effects>) -> Result<(), StepError> {
        self.act(ctx, 2, "do").await
    }

    async fn cancel_flight(&mut self, ctx: &mut StepContext<Effects>) -> Result<(), StepError> {
        self.act(ctx, 0, "undo").await
    }

    async fn cancel_hotel(&mut self, ctx: &mut StepContext<Effects>) -> Result<(), StepError> {
        self.act(ctx, 1, "undo").await
    }

    async fn cancel_car(&mut self, ctx: &mut StepContext<Effects>) -> Result<(), StepError> {
        self.act(ctx, 2, "undo").await
    }
}

impl Trip {
    async fn act(&mut self, ctx: &mut StepContext<Effects>, step: usize, kind: &str) -> Result<(), StepError> {
        let effects = ctx.env().clone();
        let saga = ctx.saga_id().to_owned();
        let transient = |error: sqlx::Error| StepError::transient(error.to_string());
        let executions = log_execution(&effects.store, &saga, step, kind, ctx.attempt()).await.map_err(transient)?;
        self.maybe_crash(&effects, &saga, &format!("{kind}:{step}:before")).await;
        let reply = self.script.get(&format!("{kind}:{step}")).and_then(|replies| replies.get(executions as usize - 1));
        match reply.copied().unwrap_or(Reply::Ok) {
            Reply::Ok => {}
            Reply::LostAfterEffect => {
                record_effect(&effects.store, &saga, step, kind, &ctx.idempotency_key()).await.map_err(transient)?;
                return Err(StepError::transient("transport error: connection closed before the reply"));
            }
            Reply::Lost => return Err(StepError::transient("transport error: connection reset")),
            Reply::TurnedAway(millis) => {
                return Err(StepError::from_error(&circuit_open(Duration::from_millis(millis))));
            }
            Reply::EffectThenTurnedAway => {
                record_effect(&effects.store, &saga, step, kind, &ctx.idempotency_key()).await.map_err(transient)?;
                return Err(StepError::from_error(&circuit_open(Duration::from_millis(50))).uncertain());
            }
            Reply::RetriedThenTurnedAway => {
                let error = retried_then_turned_away(&effects.store, &saga, step, kind, &ctx.idempotency_key()).await;
                return Err(StepError::from_error(&error));
            }
            Reply::Declined => return Err(StepError::permanent("declined")),
            Reply::Internal => return Err(StepError::from_error(&std::io::Error::other("internal error"))),
        }
        if kind == "do" && step == 2 {
            // Dropped unless the step completes: the event exists exactly when the booking does.
            ctx.publish(&TripBooked { trip: saga.clone() }).map_err(|error| StepError::permanent(error.to_string()))?;
        }
        if kind == "do" && self.fail_at == Some(step) {
            return Err(StepError::permanent(format!("no {} available", STEPS[step])));
        }
        if kind == "do" && self.hang_at == Some(step) {
            std::future::pending::<()>().await;
        }
        if kind == "undo" && executions <= i64::from(self.flaky_undo) {
            return Err(StepError::transient("the cancellation service is busy"));
        }
        tokio::time::sleep(effects.work).await;
        record_effect(&effects.store, &saga, step, kind, &ctx.idempotency_key()).await.map_err(transient)?;
        self.maybe_crash(&effects, &saga, &format!("{kind}:{step}:after")).await;
        if kind == "do" {
            self.bookings.push(STEPS[step].to_owned());
        } else {
            self.bookings.retain(|booking| booking != STEPS[step]);
        }
        Ok(())
    }

    /// At its crash point, the first time: note it (so the restarted process goes on), tell the test,
    /// and wait for the SIGKILL.
    async fn maybe_crash(&self, effects: &Effects, saga: &str, point: &str) {
        if !effects.crash || self.crash_at.as_deref() != Some(point) {
            return;
        }
        const NOTE: &str = "insert into trip_crashes (saga_id, point) values ($1, $2) on conflict do nothing";
        let first = on_store!(&effects.store, pool => {
            sqlx::query(NOTE).bind(saga).bind(point).execute(pool).await.map(|done| done.rows_affected())
        });
        if first.expect("record the crash point") == 1 {
            use std::io::Write;
            println!("crash {saga} {point}");
            std::io::stdout().flush().expect("tell the test");
            std::future::pending::<()>().await;
        }
    }
}

fn circuit_open(retry_after: Duration) -> marty::Error {
    marty::Error::CircuitOpen { dependency: "bookings".into(), retry_after }
}

/// A call through a policy whose breaker opens at the first failure and which retries once: the
/// first attempt takes effect and loses its answer, the retry is turned away by the breaker.
async fn retried_then_turned_away(
    store: &Store,
    saga: &str,
    step: usize,
    kind: &str,
    key: &str,
) -> marty::CallError<std::io::Error> {
    const BOOKINGS: &str = "[dependencies.bookings]\nkind = \"api\"\n\
        circuit_breaker = { window = 1, min_calls = 1, failure_rate = 0.5, open_for = \"50ms\" }\n\
        retry = { max_attempts = 2, initial = \"1ms\", max = \"1ms\" }\n";
    let config = marty::config::Config::parse(BOOKINGS, "bookings.toml").expect("a valid dependency");
    let dependency = std::sync::Arc::new(marty::policy::Dependency::new(config.dependencies["bookings"].clone()));
    let policy = marty::policy::CallPolicy::new(dependency, "book", &marty::metrics::Metrics::new());
    let mut attempts = 0;
    let result: Result<(), marty::CallError<std::io::Error>> = policy
        .call(|| {
            attempts += 1;
            let first = attempts == 1;
            async move {
                if first {
                    record_effect(store, saga, step, kind, key).await.expect("record the effect");
                }
                Err(marty::CallError::Inner(std::io::ErrorKind::ConnectionReset.into()))
            }
        })
        .await;
    let error = result.expect_err("the call fails");
    assert!(matches!(error, marty::CallError::Resilience(marty::Error::CircuitOpen { .. })), "{error}");
    error
}

/// A new SQLite database `<name>.db` in a directory of this process's, with the effect tables.
pub async fn fresh_sqlite(name: &str) -> Store {
    fresh_sqlite_at(name).await.1
}

/// The same, with its URL (for a worker process to open it too).
pub async fn fresh_sqlite_at(name: &str) -> (String, Store) {
    let dir = std::env::temp_dir().join(format!("marty-sagas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the test's directory");
    let path = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = marty::store::connect(&url).await.expect("open SQLite");
    create_tables(&store).await.expect("create the effect tables");
    (url, store)
}

/// Creates the effect tables (idempotent).
pub async fn create_tables(store: &Store) -> Result<(), sqlx::Error> {
    let serial = match store {
        Store::Postgres(_) => "bigserial primary key",
        _ => "integer primary key autoincrement",
    };
    let ddl = format!(
        "create table if not exists trip_effects (seq {serial}, saga_id text not null, step integer not null,
             kind text not null, key text not null, unique (kind, key));
         create table if not exists trip_executions (seq {serial}, saga_id text not null, step integer not null,
             kind text not null, attempt integer not null);
         create table if not exists trip_crashes (saga_id text not null, point text not null, primary key (saga_id, point));"
    );
    on_store!(store, pool => sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(pool).await.map(drop))
}

/// Logs one execution; returns how many executions of this (saga, step, kind) there have been.
async fn log_execution(store: &Store, saga: &str, step: usize, kind: &str, attempt: u32) -> Result<i64, sqlx::Error> {
    const LOG: &str = "insert into trip_executions (saga_id, step, kind, attempt) values ($1, $2, $3, $4)";
    const COUNT: &str = "select count(*) from trip_executions where saga_id = $1 and step = $2 and kind = $3";
    let step = step as i32;
    on_store!(store, pool => {
        sqlx::query(LOG).bind(saga).bind(step).bind(kind).bind(attempt as i32).execute(pool).await?;
        sqlx::query_scalar(COUNT).bind(saga).bind(step).bind(kind).fetch_one(pool).await
    })
}

/// The step's effect, once per idempotency key; a cancellation only undoes a booking that exists.
async fn record_effect(store: &Store, saga: &str, step: usize, kind: &str, key: &str) -> Result<(), sqlx::Error> {
    const DO: &str = "insert into trip_effects (saga_id, step, kind, key) values ($1, $2, 'do', $3)
        on conflict (kind, key) do nothing";
    const UNDO: &str = "insert into trip_effects (saga_id, step, kind, key)
        select $1, $2, 'undo', $3 where exists (select 1 from trip_effects where kind = 'do' and key = $3)
        on conflict (kind, key) do nothing";
    let sql = if kind == "do" { DO } else { UNDO };
    on_store!(store, pool => sqlx::query(sql).bind(saga).bind(step as i32).bind(key).execute(pool).await.map(drop))
}

/// The effects of one saga, in the order they happened: `(step, kind)`.
pub async fn effects_of(store: &Store, saga: &str) -> Result<Vec<(i32, String)>, sqlx::Error> {
    const EFFECTS: &str = "select step, kind from trip_effects where saga_id = $1 order by seq";
    on_store!(store, pool => sqlx::query_as(EFFECTS).bind(saga).fetch_all(pool).await)
}

/// How many times a step or compensation of `saga` ran (counting the runs that had no effect).
pub async fn executions_of(store: &Store, saga: &str, step: i32, kind: &str) -> Result<i64, sqlx::Error> {
    const COUNT: &str = "select count(*) from trip_executions where saga_id = $1 and step = $2 and kind = $3";
    on_store!(store, pool => sqlx::query_scalar(COUNT).bind(saga).bind(step).bind(kind).fetch_one(pool).await)
}

/// What a settled trip must look like: completed with every booking made once and none undone, or
/// compensated with every booking undone exactly once, last first.
pub fn check_settled(id: &str, status: marty::saga::Status, effects: &[(i32, String)]) -> Result<(), String> {
    let done: Vec<i32> = effects.iter().filter(|(_, kind)| kind == "do").map(|(step, _)| *step).collect();
    let undone: Vec<i32> = effects.iter().filter(|(_, kind)| kind == "undo").map(|(step, _)| *step).collect();
    match status {
        marty::saga::Status::Completed if done == [0, 1, 2] && undone.is_empty() => Ok(()),
        marty::saga::Status::Compensated => {
            let mut expected = done.clone();
            expected.reverse();
            if undone != expected {
                return Err(format!("saga {id}: booked {done:?} but cancelled {undone:?} (want {expected:?})"));
            }
            if let Some(last_do) = effects.iter().rposition(|(_, kind)| kind == "do") {
                if effects.iter().position(|(_, kind)| kind == "undo").is_some_and(|first_undo| first_undo < last_do) {
                    return Err(format!("saga {id}: a cancellation ran before the last booking: {effects:?}"));
                }
            }
            Ok(())
        }
        other => Err(format!("saga {id} ended {other} with effects {effects:?}")),
    }
}

/// Short leases and backoffs, and patient compensations, for tests.
pub fn test_settings() -> marty::config::SagasConfig {
    let mut settings = marty::config::SagasConfig::default();
    settings.lease = Duration::from_millis(1500);
    settings.poll_interval = Duration::from_millis(200);
    settings.backoff_initial = Duration::from_millis(20);
    settings.backoff_max = Duration::from_millis(200);
    settings.compensation_attempts = 20;
    settings
}

/// The sagas the crash tests run, one crash point each: before and after the effect of every step
/// (on sagas that complete and on sagas that fail later), before and after the effect of every
/// compensation, and before a step that then hangs past its timeout. The worker runs them one at a
/// time, so each SIGKILL lands where it is meant to (a saga killed at every restart would only ever
/// use up its attempts); the `plain-*` sagas run beside the first one and are interrupted by its crash.
pub fn crash_plan() -> Vec<(String, Trip)> {
    let mut plan = Vec::new();
    let mut add = |name: String, trip: Trip| plan.push((name, trip));
    for step in 0..3 {
        for phase in ["before", "after"] {
            let crash_at = Some(format!("do:{step}:{phase}"));
            add(format!("complete-do{step}-{phase}"), Trip { crash_at: crash_at.clone(), ..Trip::default() });
            if step < 2 {
                add(format!("fail-do{step}-{phase}"), Trip { crash_at, fail_at: Some(2), ..Trip::default() });
            }
        }
    }
    for step in 0..2 {
        for phase in ["before", "after"] {
            let crash_at = Some(format!("undo:{step}:{phase}"));
            add(
                format!("fail-undo{step}-{phase}"),
                Trip { crash_at, fail_at: Some(2), flaky_undo: 1, ..Trip::default() },
            );
        }
    }
    add("hang-hotel".into(), Trip { hang_at: Some(1), crash_at: Some("do:1:before".into()), ..Trip::default() });
    plan
}

/// The sagas with no crash point of their own, started beside the first crash saga.
pub fn plain_trips() -> Vec<(String, Trip)> {
    (0..8).map(|n| (format!("plain-{n}"), Trip { fail_at: (n % 2 == 1).then_some(n % 3), ..Trip::default() })).collect()
}

/// How many sagas are not settled yet (`i64::MAX` before the tables exist).
pub async fn unsettled(store: &Store) -> i64 {
    const UNSETTLED: &str = "select count(*) from marty_saga where status in ('running', 'compensating', 'parked')";
    let count = on_store!(store, pool => sqlx::query_scalar(UNSETTLED).fetch_one(pool).await);
    count.unwrap_or(i64::MAX)
}
