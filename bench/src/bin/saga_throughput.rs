//! Three-step sagas per second through the orchestrator, against the same database transactions
//! written by hand, at the same concurrency, on SQLite and on PostgreSQL; and the latency of one saga
//! from start to completion.
//!
//! The steps do nothing but change the state, so the figures are the orchestrator's own cost. A saga
//! is four commits either way: the start (with step 1 begun), then one per step, each saving the state
//! and two history lines (step done, next begun). The hand-written path runs those statements
//! directly; the orchestrator adds its lease, fencing, tracing, metrics and the task that drives it.
//!
//! `MARTY_BENCH_POSTGRES_URL` overrides the loopback default. Last stdout line: JSON.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use marty::saga::{Orchestrator, StepError};
use marty::store::Store;
use serde::{Deserialize, Serialize};

const SCHEMA: &str = "bench_saga";
const CONCURRENCY: usize = 16;
const ROUNDS: usize = 3;
const COMMITS_PER_SAGA: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Transfer {
    from: String,
    to: String,
    amount_cents: i64,
    progress: Vec<String>,
}

#[marty::saga(name = "bench_transfer", store = "bench_saga_db")]
impl Transfer {
    #[saga_step(compensate = refund)]
    async fn debit(&mut self) -> Result<(), StepError> {
        self.progress.push("debited".into());
        Ok(())
    }

    async fn refund(&mut self) -> Result<(), StepError> {
        self.progress.push("refunded".into());
        Ok(())
    }

    #[saga_step]
    async fn credit(&mut self) -> Result<(), StepError> {
        self.progress.push("credited".into());
        Ok(())
    }

    #[saga_step]
    async fn notify(&mut self) -> Result<(), StepError> {
        self.progress.push("notified".into());
        Ok(())
    }
}

fn transfer(n: usize) -> Transfer {
    Transfer { from: format!("acct-{n}"), to: format!("acct-{}", n + 1), amount_cents: 1_000, progress: Vec::new() }
}

/// The four transactions of a saga, by hand: the same rows the orchestrator writes.
async fn hand_written(store: &Store, id: &str) -> Result<(), sqlx::Error> {
    const INSERT: &str =
        "insert into hand_saga (id, name, state, status, step, attempt, next_attempt_at, owner, lease_until,
        created_at, updated_at) values ($1, 'bench_transfer', $2, 'running', 0, 1, 0, 'me', $3, $3, $3)";
    const UPDATE: &str = "update hand_saga set state = $2, status = $3, step = $4, attempt = 1, updated_at = $5
        where id = $1 and owner = 'me'";
    const HISTORY: &str =
        "insert into hand_history (saga_id, seq, at, step, kind, attempt) values ($1, $2, $3, $4, $5, 1)";
    let mut state = transfer(0);
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    macro_rules! run {
        ($pool:expr) => {{
            let mut tx = $pool.begin().await?;
            sqlx::query(INSERT)
                .bind(id)
                .bind(serde_json::to_string(&state).unwrap())
                .bind(now())
                .execute(&mut *tx)
                .await?;
            for (seq, kind) in [(1, "started"), (2, "step_started")] {
                sqlx::query(HISTORY).bind(id).bind(seq).bind(now()).bind("debit").bind(kind).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            for (step, name) in ["debited", "credited", "notified"].into_iter().enumerate() {
                state.progress.push(name.into());
                let status = if step == 2 { "completed" } else { "running" };
                let mut tx = $pool.begin().await?;
                sqlx::query(UPDATE)
                    .bind(id)
                    .bind(serde_json::to_string(&state).unwrap())
                    .bind(status)
                    .bind(step as i32 + 1)
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                for (offset, kind) in [(0, "step_completed"), (1, "step_started")] {
                    let seq = 3 + 2 * step as i32 + offset;
                    sqlx::query(HISTORY).bind(id).bind(seq).bind(now()).bind(name).bind(kind).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            Ok(())
        }};
    }
    match store {
        Store::Postgres(pool) => run!(pool),
        Store::Sqlite(pool) => run!(pool),
        _ => unreachable!(),
    }
}

async fn create_hand_tables(store: &Store) {
    let ddl = "
        create table if not exists hand_saga (id text primary key, name text not null, state text not null,
            status text not null, step integer not null, attempt integer not null, error text, deadline bigint,
            step_deadline bigint, next_attempt_at bigint not null, owner text, lease_until bigint not null,
            traceparent text, created_at bigint not null, updated_at bigint not null);
        create index if not exists hand_saga_unfinished on hand_saga (name, lease_until)
            where status in ('running', 'compensating');
        create table if not exists hand_history (saga_id text not null, seq integer not null, at bigint not null,
            step text, kind text not null, attempt integer not null, detail text, primary key (saga_id, seq));";
    match store {
        Store::Postgres(pool) => sqlx::raw_sql(ddl).execute(pool).await.map(drop),
        Store::Sqlite(pool) => sqlx::raw_sql(ddl).execute(pool).await.map(drop),
        _ => unreachable!(),
    }
    .expect("create the hand-written tables");
}

/// Sagas per second with `CONCURRENCY` in flight, `count` in all.
async fn rate<F, Fut>(count: usize, run: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (next, run) = (next.clone(), run.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        break;
                    }
                    run(n).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

struct Figures {
    hand_sps: f64,
    marty_sps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn measure(label: &str, store: Store, count: usize) -> Figures {
    create_hand_tables(&store).await;
    let metrics = marty::metrics::Metrics::new();
    let sagas =
        Orchestrator::<Transfer>::with_store(store.clone(), (), marty::config::SagasConfig::default(), &metrics)
            .await
            .expect("orchestrator");
    let round = Arc::new(AtomicUsize::new(0));
    let (mut hand, mut marty) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let r = round.fetch_add(1, Ordering::Relaxed);
        let by_hand = store.clone();
        hand.push(
            rate(count, move |n| {
                let store = by_hand.clone();
                async move { hand_written(&store, &format!("hand-{r}-{n}")).await.expect("hand-written saga") }
            })
            .await,
        );
        let orchestrated = sagas.clone();
        marty.push(
            rate(count, move |n| {
                let sagas = orchestrated.clone();
                async move {
                    let id = sagas.start(transfer(n)).await.expect("start");
                    assert_eq!(sagas.wait(&id).await.expect("wait"), marty::saga::Status::Completed);
                }
            })
            .await,
        );
        eprintln!("{label}: by hand {:.0}/s, orchestrated {:.0}/s", hand.last().unwrap(), marty.last().unwrap());
    }
    // One saga at a time: start to completion.
    let mut latencies = Vec::new();
    for n in 0..300 {
        let began = Instant::now();
        let id = sagas.start(transfer(n)).await.unwrap();
        sagas.wait(&id).await.unwrap();
        latencies.push(began.elapsed());
    }
    sagas.shutdown().await;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e3;
    Figures { hand_sps: median(&mut hand), marty_sps: median(&mut marty), p50_ms: at(0.50), p99_ms: at(0.99) }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let pg_url =
        std::env::var("MARTY_BENCH_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = sqlx::PgPool::connect(&pg_url).await.expect("PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop schema if exists {SCHEMA} cascade; create schema {SCHEMA}")))
        .execute(&admin)
        .await
        .unwrap();
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .after_connect(|connection, _| {
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("set search_path to {SCHEMA}"))).execute(connection).await?;
                Ok(())
            })
        })
        .connect(&pg_url)
        .await
        .expect("PostgreSQL");
    let dir = std::env::temp_dir().join(format!("marty-bench-saga-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = marty::store::connect(&format!("sqlite://{}?mode=rwc", dir.join("sagas.db").display())).await.unwrap();

    let lite = measure("sqlite", sqlite, 1000).await;
    let postgres = measure("postgres", Store::Postgres(pg), 2000).await;
    let _ = std::fs::remove_dir_all(&dir);
    let round = |value: f64| (value * 1000.0).round() / 1000.0;
    println!(
        "{{\"bench\":\"saga_throughput\",\"steps\":3,\"concurrency\":{CONCURRENCY},\"commits_per_saga\":{COMMITS_PER_SAGA},\
\"sqlite_hand_sps\":{},\"sqlite_marty_sps\":{},\"sqlite_ratio\":{},\"sqlite_p50_ms\":{},\"sqlite_p99_ms\":{},\
\"postgres_hand_sps\":{},\"postgres_marty_sps\":{},\"postgres_ratio\":{},\"postgres_p50_ms\":{},\"postgres_p99_ms\":{}}}",
        round(lite.hand_sps),
        round(lite.marty_sps),
        round(lite.marty_sps / lite.hand_sps),
        round(lite.p50_ms),
        round(lite.p99_ms),
        round(postgres.hand_sps),
        round(postgres.marty_sps),
        round(postgres.marty_sps / postgres.hand_sps),
        round(postgres.p50_ms),
        round(postgres.p99_ms),
    );
}
