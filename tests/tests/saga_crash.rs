//! Sagas survive SIGKILL: a worker process runs a plan of sagas, each of which stops the process at
//! one crash point (before or after the effect of every step, and of every compensation, and before
//! steps that then time out); the test SIGKILLs the worker there and starts it again, until every
//! saga has settled. Then: each saga completed with every booking made once, or was compensated with
//! every booking undone exactly once, last first; steps killed after their effect ran again without
//! taking effect twice (the idempotency key is stable across restarts); the step timeout and the
//! saga timeout fired although the process died while they ran.
//!
//! On SQLite always; on PostgreSQL with `MARTY_TEST_POSTGRES_URL`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use marty::saga::{Orchestrator, Status};
use marty::store::Store;
use marty_tests::trip::{
    check_settled, crash_plan, effects_of, executions_of, plain_trips, test_settings, Effects, Errand, Trip,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const WORKER: &str = env!("CARGO_BIN_EXE_saga_worker");

#[tokio::test(flavor = "multi_thread")]
async fn sagas_settle_correctly_through_sigkills_on_sqlite() {
    let (url, store) = marty_tests::trip::fresh_sqlite_at("crash").await;
    run_suite(&[("WORKER_STORE_URL", url)], store).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs MARTY_TEST_POSTGRES_URL"]
async fn sagas_settle_correctly_through_sigkills_on_postgres() {
    let url = marty_tests::server_env("MARTY_TEST_POSTGRES_URL");
    let schema = "saga_crash";
    marty_tests::fresh_schema(&url, schema).await.unwrap();
    let store = Store::Postgres(marty_tests::pool_in_schema(&url, schema, 4).await.unwrap());
    run_suite(&[("WORKER_STORE_URL", url), ("WORKER_SCHEMA", schema.to_owned())], store).await;
}

async fn run_suite(env: &[(&str, String)], store: Store) {
    let plan = crash_plan();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut next = 0;
    let mut kills = 0;
    let mut crash_points = Vec::new();
    'runs: loop {
        assert!(Instant::now() < deadline, "sagas still unsettled after {kills} kills");
        let mut worker = Command::new(WORKER)
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .env("WORKER_NEXT", next.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the worker");
        let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout_at(deadline.into(), async {
            loop {
                match lines.next_line().await.unwrap() {
                    Some(line) if line.starts_with("started ") => next = line[8..].parse::<usize>().unwrap() + 1,
                    Some(line) => return Some(line),
                    None => return None,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("sagas still unsettled after {kills} kills"));
        match line {
            Some(line) if line.starts_with("crash ") => {
                worker.kill().await.expect("SIGKILL the worker");
                kills += 1;
                crash_points.push(line[6..].to_owned());
            }
            Some(line) if line == "done" => {
                worker.kill().await.unwrap();
                break 'runs;
            }
            other => panic!("the worker said {other:?} and exited: {:?}", worker.wait().await),
        }
    }
    eprintln!("settled after {kills} SIGKILLs at {crash_points:?}");
    // Every crash point was reached, once: the process died there and the saga went on elsewhere.
    let mut expected: Vec<String> =
        plan.iter().map(|(id, trip)| format!("{id} {}", trip.crash_at.as_deref().unwrap())).collect();
    expected.push("errand-crash do:1:before".to_owned());
    crash_points.sort();
    expected.sort();
    assert_eq!(crash_points, expected, "the kills did not land at every crash point");

    // Read back through the API, with no worker running.
    let effects = Effects { store: store.clone(), crash: false, work: Duration::ZERO };
    let metrics = marty::metrics::Metrics::new();
    let trips =
        Orchestrator::<Trip>::with_store(store.clone(), effects.clone(), test_settings(), &metrics).await.unwrap();
    let mut failures = Vec::new();
    let mut outcomes = (0, 0);
    for (id, trip) in plan.iter().chain(&plain_trips()) {
        let status = trips.status(id).await.unwrap().expect("every planned saga exists");
        let effects = effects_of(&store, id).await.unwrap();
        if let Err(problem) = check_settled(id, status.status, &effects) {
            failures.push(problem);
        }
        match status.status {
            Status::Completed => outcomes.0 += 1,
            _ => outcomes.1 += 1,
        }
        if trip.fail_at.is_some() && status.status != Status::Compensated {
            failures.push(format!("{id} fails at a step, yet ended {}", status.status));
        }
        if status.status == Status::Completed && status.state.bookings.len() != 3 {
            failures.push(format!("{id} completed with bookings {:?} in its state", status.state.bookings));
        }
        // Killed after its effect and before the commit: the step ran again, and took effect once.
        if let Some(point) = trip.crash_at.as_deref().filter(|point| point.ends_with(":after")) {
            let mut parts = point.split(':');
            let (kind, step) = (parts.next().unwrap(), parts.next().unwrap().parse::<i32>().unwrap());
            let ran = executions_of(&store, id, step, kind).await.unwrap();
            let took_effect = effects.iter().filter(|(s, k)| *s == step && k == kind).count();
            if ran < 2 || took_effect != 1 {
                failures.push(format!("{id}: `{point}` ran {ran} times and took effect {took_effect} times"));
            }
        }
    }
    // The hotel step hung past its timeout while the process was killed: the timeout still fired,
    // and the saga undid the flight (the hotel's cancellation found nothing to undo).
    let hang = trips.history("hang-hotel").await.unwrap();
    if !hang.iter().any(|entry| entry.kind == "step_timed_out") {
        failures.push(format!("hang-hotel never timed out: {:?}", kinds(&hang)));
    }
    let errands = Orchestrator::<Errand>::with_store(store.clone(), effects, test_settings(), &metrics).await.unwrap();
    let errand = errands.status("errand-crash").await.unwrap().unwrap();
    let errand_history = errands.history("errand-crash").await.unwrap();
    if errand.status != Status::Compensated || !errand_history.iter().any(|entry| entry.kind == "timed_out") {
        failures.push(format!(
            "the errand's saga timeout did not fire: {} {:?}",
            errand.status,
            kinds(&errand_history)
        ));
    }
    if effects_of(&store, "errand-crash").await.unwrap() != [(0, "do".to_owned()), (0, "undo".to_owned())] {
        failures.push("the errand's first step was not undone once".to_owned());
    }
    trips.shutdown().await;
    errands.shutdown().await;
    eprintln!("{} completed, {} compensated", outcomes.0, outcomes.1);
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
}

fn kinds(history: &[marty::saga::HistoryEntry]) -> Vec<String> {
    history.iter().map(|entry| format!("{}:{}", entry.step.as_deref().unwrap_or("-"), entry.kind)).collect()
}
