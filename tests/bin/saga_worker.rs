//! The process the saga crash tests start, SIGKILL at crash points, and start again. It first drives
//! to the end whatever a killed predecessor left (taken over once its lease expires), then starts
//! the crash plan's sagas one at a time from `WORKER_NEXT`, each once everything before it settled,
//! printing `started <n>`; `done` when the plan is through.
//!
//! Configured by the environment: `WORKER_STORE_URL` (`sqlite:..` or `postgres:..`), for PostgreSQL
//! `WORKER_SCHEMA`, and `WORKER_NEXT`.
//!
//! With `WORKER_REPLICA` it is a replica of that name instead (for `saga_replica.rs`): leases of
//! `WORKER_LEASE_MS`, steps that take `WORKER_WORK_MS`, and `WORKER_TRIPS` trips started (`trip-<n>`)
//! before it prints `ready`.

use std::time::Duration;

use marty::saga::Orchestrator;
use marty::store::Store;
use marty_tests::trip::{crash_plan, create_tables, plain_trips, test_settings, unsettled, Effects, Errand, Trip};

#[tokio::main]
async fn main() {
    let url = std::env::var("WORKER_STORE_URL").expect("WORKER_STORE_URL");
    let next: usize = std::env::var("WORKER_NEXT").expect("WORKER_NEXT").parse().expect("a number");
    let store = if url.starts_with("postgres") {
        let schema = std::env::var("WORKER_SCHEMA").expect("WORKER_SCHEMA");
        Store::Postgres(marty_tests::pool_in_schema(&url, &schema, 8).await.expect("connect to PostgreSQL"))
    } else {
        marty::store::connect(&url).await.expect("open SQLite")
    };
    create_tables(&store).await.expect("create the effect tables");
    if let Ok(replica) = std::env::var("WORKER_REPLICA") {
        return run_replica(store, replica).await;
    }
    let effects = Effects { store: store.clone(), crash: true, work: Duration::from_millis(20) };
    let metrics = marty::metrics::Metrics::new();
    let trips = Orchestrator::<Trip>::with_store(store.clone(), effects.clone(), test_settings(), &metrics)
        .await
        .expect("trip orchestrator");
    let errands = Orchestrator::<Errand>::with_store(store.clone(), effects, test_settings(), &metrics)
        .await
        .expect("errand orchestrator");
    let plan = crash_plan();
    for index in next..=plan.len() {
        while unsettled(&store).await > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match plan.get(index) {
            Some((id, trip)) => {
                trips.start_with_id(id, trip.clone()).await.expect("start a trip");
                if index == 0 {
                    for (id, trip) in plain_trips() {
                        trips.start_with_id(&id, trip).await.expect("start a trip");
                    }
                }
            }
            // Last, the saga whose own timeout must fire across the crash.
            None => {
                errands.start_with_id("errand-crash", Errand { crash: true }).await.expect("start an errand");
            }
        }
        println!("started {index}");
    }
    while unsettled(&store).await > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("done");
    std::future::pending::<()>().await;
}

/// A replica named `replica` that starts `WORKER_TRIPS` slow trips and drives whatever it owns.
async fn run_replica(store: Store, replica: String) {
    let number =
        |key: &str| -> u64 { std::env::var(key).unwrap_or_else(|_| panic!("{key}")).parse().expect("a number") };
    let mut settings = test_settings();
    settings.replica = Some(replica);
    settings.lease = Duration::from_millis(number("WORKER_LEASE_MS"));
    let effects = Effects { store: store.clone(), crash: false, work: Duration::from_millis(number("WORKER_WORK_MS")) };
    let trips = Orchestrator::<Trip>::with_store(store, effects, settings, &marty::metrics::Metrics::new())
        .await
        .expect("trip orchestrator");
    for n in 0..number("WORKER_TRIPS") {
        trips.start_with_id(&format!("trip-{n}"), Trip::default()).await.expect("start a trip");
    }
    println!("ready");
    std::future::pending::<()>().await;
}
