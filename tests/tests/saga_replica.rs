//! A replica that restarts under the same name (`[sagas] replica`, a pod's name) takes its sagas
//! back as soon as its previous run has missed two lease renewals, while another replica waits for
//! the whole lease: a worker process with a 20 s lease is SIGKILLed mid-saga; a replica of another
//! name started next leaves the sagas alone; the first replica, started again, finishes them well
//! before the lease would have run out.
//!
//! On SQLite always; on PostgreSQL with `MARTY_TEST_POSTGRES_URL`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use marty::metrics::Metrics;
use marty::saga::{Orchestrator, Status};
use marty::store::Store;
use marty_tests::trip::{check_settled, effects_of, test_settings, unsettled, Effects, Trip};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const WORKER: &str = env!("CARGO_BIN_EXE_saga_worker");
const TRIPS: usize = 6;
const LEASE_MS: u64 = 20_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_replica_takes_its_sagas_back_before_the_lease_runs_out_on_sqlite() {
    let (url, store) = marty_tests::trip::fresh_sqlite_at("replica").await;
    run(&[("WORKER_STORE_URL", url)], store).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs MARTY_TEST_POSTGRES_URL"]
async fn a_restarted_replica_takes_its_sagas_back_before_the_lease_runs_out_on_postgres() {
    let url = marty_tests::server_env("MARTY_TEST_POSTGRES_URL");
    let schema = "saga_replica";
    marty_tests::fresh_schema(&url, schema).await.unwrap();
    let store = Store::Postgres(marty_tests::pool_in_schema(&url, schema, 4).await.unwrap());
    run(&[("WORKER_STORE_URL", url), ("WORKER_SCHEMA", schema.to_owned())], store).await;
}

/// Starts the worker as replica `replica`, starting `trips` trips, and waits until it is ready.
async fn replica(env: &[(&str, String)], replica: &str, trips: usize) -> Child {
    let mut worker = Command::new(WORKER)
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .env("WORKER_REPLICA", replica)
        .env("WORKER_LEASE_MS", LEASE_MS.to_string())
        .env("WORKER_WORK_MS", "400")
        .env("WORKER_TRIPS", trips.to_string())
        .env("WORKER_NEXT", "0")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker");
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    assert!(matches!(ready, Ok(Ok(Some(ref line))) if line == "ready"), "replica {replica} said {ready:?}");
    worker
}

async fn owners(store: &Store) -> Vec<String> {
    const OWNERS: &str = "select coalesce(owner, '') from marty_saga order by id";
    marty_tests::on_store!(store, pool => sqlx::query_scalar(OWNERS).fetch_all(pool).await.unwrap())
}

async fn run(env: &[(&str, String)], store: Store) {
    // Each trip's three steps take 400 ms each (the hotel times out at 500): killed 300 ms in, every
    // trip is mid-flight, with most of its second left.
    let mut first = replica(env, "orders-a", TRIPS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill().await.expect("SIGKILL the replica");
    let killed = Instant::now();
    assert_eq!(unsettled(&store).await, TRIPS as i64, "every trip was mid-flight when the replica died");
    let dead_owners = owners(&store).await;
    assert!(dead_owners.iter().all(|owner| owner.starts_with("orders-a/trip/")), "{dead_owners:?}");

    // Another replica leaves them alone: their leases (20 s) are still running.
    let mut other = replica(env, "orders-b", 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(owners(&store).await, dead_owners, "a replica of another name took sagas before their leases ran out");
    other.kill().await.unwrap();

    // The same replica, started again, takes them back once the dead run has missed two renewals
    // (a third of the lease) and finishes them, long before the lease would have let anyone in.
    let mut again = replica(env, "orders-a", 0).await;
    let before_the_lease_ran_out = Duration::from_millis(LEASE_MS - 2_000);
    while unsettled(&store).await > 0 {
        assert!(killed.elapsed() < before_the_lease_ran_out, "the restarted replica did not take its sagas back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the restarted replica finished its sagas {:?} after the kill", killed.elapsed());
    again.kill().await.unwrap();

    let effects = Effects { store: store.clone(), crash: false, work: Duration::ZERO };
    let trips =
        Orchestrator::<Trip>::with_store(store.clone(), effects, test_settings(), &Metrics::new()).await.unwrap();
    for n in 0..TRIPS {
        let id = format!("trip-{n}");
        let status = trips.status(&id).await.unwrap().unwrap().status;
        assert_eq!(status, Status::Completed, "{id}");
        check_settled(&id, status, &effects_of(&store, &id).await.unwrap()).unwrap();
    }
    trips.shutdown().await;
}
