//! The saga orchestrator's promises, each on SQLite and (with `MARTY_TEST_POSTGRES_URL`) PostgreSQL:
//! steps in order with the state saved after each; compensations in reverse when a step fails; a
//! failing compensation retried, then parked, listed and resumed; events published by a step exist
//! exactly when the step completed; a start is idempotent by id; several replicas drive each saga
//! once, and take over from one that leaves; sagas ride out their database going away mid-flight
//! (PostgreSQL behind a proxy the test cuts). The crash suite (`saga_crash.rs`) covers SIGKILLs.

mod support;

use std::time::Duration;

use marty::config::SagasConfig;
use marty::metrics::Metrics;
use marty::saga::{Orchestrator, Status};
use marty::store::Store;
use marty_tests::trip::{
    check_settled, create_tables, effects_of, executions_of, fresh_sqlite, test_settings, Effects, Reply, Trip,
};
use support::proxy::Proxy;

async fn fresh_postgres(name: &str) -> Store {
    let url = marty_tests::server_env("MARTY_TEST_POSTGRES_URL");
    let schema = format!("sagas_{name}");
    marty_tests::fresh_schema(&url, &schema).await.unwrap();
    let postgres = Store::Postgres(marty_tests::pool_in_schema(&url, &schema, 8).await.unwrap());
    create_tables(&postgres).await.unwrap();
    postgres
}

async fn trips(store: &Store, metrics: &Metrics) -> Orchestrator<Trip> {
    trips_with(store, test_settings(), metrics).await
}

/// Trips on `store` whose steps take 5 ms, with `settings`.
async fn trips_with(store: &Store, settings: SagasConfig, metrics: &Metrics) -> Orchestrator<Trip> {
    let effects = Effects { store: store.clone(), crash: false, work: Duration::from_millis(5) };
    Orchestrator::with_store(store.clone(), effects, settings, metrics).await.unwrap()
}

fn kinds(history: &[marty::saga::HistoryEntry]) -> Vec<String> {
    history.iter().map(|entry| format!("{}:{}", entry.step.as_deref().unwrap_or("-"), entry.kind)).collect()
}

/// A trip's script: how the executions of `do:<step>` / `undo:<step>` answer.
fn script(replies: &[(&str, Vec<Reply>)]) -> std::collections::BTreeMap<String, Vec<Reply>> {
    replies.iter().map(|(key, replies)| (key.to_string(), replies.clone())).collect()
}

fn effects(effects: &[(i32, &str)]) -> Vec<(i32, String)> {
    effects.iter().map(|(step, kind)| (*step, kind.to_string())).collect()
}

async fn outbox_rows(store: &Store, key: &str) -> i64 {
    const ROWS: &str = "select count(*) from marty_outbox where topic = 'trips.booked' and key = $1";
    marty_tests::on_store!(store, pool => sqlx::query_scalar(ROWS).bind(key).fetch_one(pool).await.unwrap())
}

marty_tests::on_each_store! {
    stores: fresh_sqlite, fresh_postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_saga_runs_its_steps_in_order_and_saves_the_state_after_each(store = "complete") {
        let metrics = Metrics::new();
        let trips = trips(&store, &metrics).await;
        let id = trips.start(Trip::default()).await.unwrap();
        assert_eq!(trips.wait(&id).await.unwrap(), Status::Completed);
        let status = trips.status(&id).await.unwrap().unwrap();
        assert_eq!(status.state.bookings, ["book_flight", "book_hotel", "book_car"], "the state each step left");
        assert_eq!((status.step, status.error), (None, None));
        assert_eq!(
            kinds(&trips.history(&id).await.unwrap()),
            [
                "-:started",
                "book_flight:step_started",
                "book_flight:step_completed",
                "book_hotel:step_started",
                "book_hotel:step_completed",
                "book_car:step_started",
                "book_car:step_completed",
                "-:completed"
            ]
        );
        check_settled(&id, status.status, &effects_of(&store, &id).await.unwrap()).unwrap();
        assert_eq!(outbox_rows(&store, &id).await, 1, "the last step's event is in the outbox");
        let exposition = metrics.render();
        for line in ["marty_sagas_started_total{saga=\"trip\"} 1", "marty_sagas_completed_total{saga=\"trip\"} 1"] {
            assert!(exposition.contains(line), "{line} missing from:\n{exposition}");
        }
        assert!(exposition.contains("marty_saga_step_duration_seconds_count{saga=\"trip\",step=\"book_car\"} 1"));
        trips.shutdown().await;
    }
}

marty_tests::on_each_store! {
    stores: fresh_sqlite, fresh_postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_step_compensates_the_steps_before_it_last_first(store = "compensate") {
        let metrics = Metrics::new();
        let trips = trips(&store, &metrics).await;
        let id = trips.start(Trip { fail_at: Some(2), flaky_undo: 2, ..Trip::default() }).await.unwrap();
        assert_eq!(trips.wait(&id).await.unwrap(), Status::Compensated);
        let status = trips.status(&id).await.unwrap().unwrap();
        assert_eq!(status.error.as_deref(), Some("no book_car available"));
        assert!(status.state.bookings.is_empty(), "the compensations' changes are saved: {:?}", status.state.bookings);
        let effects = effects_of(&store, &id).await.unwrap();
        check_settled(&id, status.status, &effects).unwrap();
        assert_eq!(effects.len(), 4, "{effects:?}");
        // A permanent error is not retried; each flaky compensation ran three times, took effect once.
        assert_eq!(executions_of(&store, &id, 2, "do").await.unwrap(), 1);
        assert_eq!(executions_of(&store, &id, 1, "undo").await.unwrap(), 3);
        assert_eq!(executions_of(&store, &id, 0, "undo").await.unwrap(), 3);
        assert_eq!(outbox_rows(&store, &id).await, 0, "the failed step's event was dropped with it");
        let history = kinds(&trips.history(&id).await.unwrap());
        assert_eq!(history.iter().filter(|kind| kind.ends_with(":compensation_failed")).count(), 4, "{history:?}");
        assert_eq!(history.last().map(String::as_str), Some("-:compensated"));
        assert!(metrics.render().contains("marty_sagas_compensated_total{saga=\"trip\"} 1"));
        trips.shutdown().await;
    }
}

marty_tests::on_each_store! {
    stores: fresh_sqlite, fresh_postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_compensation_the_other_side_keeps_refusing_parks_the_saga_until_an_operator_resumes_it(store = "park") {
        let metrics = Metrics::new();
        let mut settings = test_settings();
        settings.compensation_attempts = 3;
        let trips = trips_with(&store, settings, &metrics).await;
        // Each cancellation is refused 4 times (the service answers no): the hotel's parks the saga
        // after 3 refusals in a row.
        let refused = vec![Reply::Declined; 4];
        let script = script(&[("undo:1", refused.clone()), ("undo:0", refused)]);
        let id = trips.start(Trip { fail_at: Some(2), script, ..Trip::default() }).await.unwrap();
        assert_eq!(trips.wait(&id).await.unwrap(), Status::Parked);
        let parked = trips.parked().await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!((parked[0].id.as_str(), parked[0].step), (id.as_str(), Some("book_hotel")));
        assert!(
            parked[0]
                .error
                .as_deref()
                .unwrap()
                .contains("compensation `book_hotel` refused 3 times in a row: declined"),
            "{:?}",
            parked[0].error
        );
        assert!(metrics.render().contains("marty_sagas_parked_total{saga=\"trip\"} 1"));

        assert!(trips.resume(&id).await.unwrap());
        assert!(!trips.resume(&id).await.unwrap(), "only a parked saga resumes");
        // Resumed, the hotel's works at its 5th try; then the flight's parks the saga in turn.
        assert_eq!(trips.wait(&id).await.unwrap(), Status::Parked);
        assert_eq!(trips.parked().await.unwrap()[0].step, Some("book_flight"));
        assert!(trips.resume(&id).await.unwrap());
        assert_eq!(trips.wait(&id).await.unwrap(), Status::Compensated);
        assert!(trips.parked().await.unwrap().is_empty());
        check_settled(&id, Status::Compensated, &effects_of(&store, &id).await.unwrap()).unwrap();
        let history = kinds(&trips.history(&id).await.unwrap());
        assert!(
            history.contains(&"book_hotel:parked".to_owned()) && history.contains(&"-:resumed".to_owned()),
            "{history:?}"
        );
        trips.shutdown().await;
    }
}

marty_tests::on_each_store! {
    stores: fresh_sqlite, fresh_postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn transient_compensation_failures_park_only_after_the_compensation_deadline(store = "deadline") {
        let mut settings = test_settings();
        settings.compensation_attempts = 2;
        settings.compensation_deadline = Duration::from_millis(1500);
        let trips = trips_with(&store, settings, &Metrics::new()).await;
        // The flight's cancellation keeps losing its requests: far more failures than
        // `compensation_attempts`, yet retried until the deadline.
        let script = script(&[("undo:0", vec![Reply::Lost; 10_000])]);
        let id = trips.start(Trip { fail_at: Some(1), script, ..Trip::default() }).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(trips.wait(&id).await.unwrap(), Status::Parked);
        assert!(started.elapsed() >= Duration::from_millis(1400), "parked after {:?}", started.elapsed());
        let tries = executions_of(&store, &id, 0, "undo").await.unwrap();
        assert!(tries > 2, "only {tries} tries before parking");
        let error = trips.status(&id).await.unwrap().unwrap().error.unwrap();
        assert!(error.starts_with("compensation `book_flight` kept failing for "), "{error}");
        trips.shutdown().await;
    }
}

marty_tests::on_each_store! {
    stores: fresh_sqlite, fresh_postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_step_that_may_have_taken_effect_is_compensated_with_the_others(store = "uncertain") {
        let trips = trips(&store, &Metrics::new()).await;
        // Every attempt at the hotel books it, and every answer is lost: when the saga gives up, the
        // hotel is cancelled too, then the flight.
        let lost = trips
            .start(Trip { script: script(&[("do:1", vec![Reply::LostAfterEffect; 10])]), ..Trip::default() })
            .await
            .unwrap();
        // A service that fails with `Internal` may have done the work: the same.
        let internal =
            trips.start(Trip { script: script(&[("do:1", vec![Reply::Internal])]), ..Trip::default() }).await.unwrap();
        // A declined booking certainly did nothing: only the flight is cancelled.
        let declined =
            trips.start(Trip { script: script(&[("do:1", vec![Reply::Declined])]), ..Trip::default() }).await.unwrap();
        for id in [&lost, &internal, &declined] {
            assert_eq!(trips.wait(id).await.unwrap(), Status::Compensated, "{id}");
            check_settled(id, Status::Compensated, &effects_of(&store, id).await.unwrap()).unwrap();
        }
        assert_eq!(
            effects_of(&store, &lost).await.unwrap(),
            effects(&[(0, "do"), (1, "do"), (1, "undo"), (0, "undo")])
        );
        assert_eq!(executions_of(&store, &lost, 1, "do").await.unwrap(), 10, "every attempt was made, with one key");
        assert_eq!(executions_of(&store, &internal, 1, "undo").await.unwrap(), 1, "the hotel's cancellation ran");
        assert_eq!(executions_of(&store, &declined, 1, "undo").await.unwrap(), 0, "nothing to cancel at the hotel");
        let history = kinds(&trips.history(&internal).await.unwrap());
        assert!(history.contains(&"book_hotel:compensation_started".to_owned()), "{history:?}");
        trips.shutdown().await;
    }
}

marty_tests::on_each_store! {
    stores: fresh_sqlite, fresh_postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn uncertainty_carries_over_to_later_attempts_and_open_breakers_use_none(store = "carry") {
        let metrics = Metrics::new();
        let trips = trips(&store, &metrics).await;
        // Attempt 1 books the car and loses the answer; the breaker then turns the step away twice;
        // attempt 2 is declined. The car is uncertain since attempt 1: it is cancelled. (The car's
        // 2 s timeout keeps a slow machine from turning an attempt into a timeout.)
        let replies = vec![Reply::LostAfterEffect, Reply::TurnedAway(100), Reply::TurnedAway(50), Reply::Declined];
        let id = trips.start(Trip { script: script(&[("do:2", replies)]), ..Trip::default() }).await.unwrap();
        assert_eq!(trips.wait(&id).await.unwrap(), Status::Compensated);
        let all_undone = effects(&[(0, "do"), (1, "do"), (2, "do"), (2, "undo"), (1, "undo"), (0, "undo")]);
        assert_eq!(effects_of(&store, &id).await.unwrap(), all_undone);
        let history = trips.history(&id).await.unwrap();
        let car: Vec<(String, u32)> = history
            .iter()
            .filter(|entry| entry.step.as_deref() == Some("book_car") && !entry.kind.starts_with("compensation"))
            .map(|entry| (entry.kind.clone(), entry.attempt))
            .collect();
        let expected: Vec<(String, u32)> = [
            ("step_started", 1),
            ("step_failed", 1),
            ("step_started", 2),
            ("step_waiting", 2),
            ("step_waiting", 2),
            ("step_failed", 2),
        ]
        .iter()
        .map(|(kind, attempt)| (kind.to_string(), *attempt))
        .collect();
        assert_eq!(car, expected, "the turned-away runs did not count as attempts");

        // A step the breaker keeps turning away, more often than it has attempts, completes.
        let patient = trips
            .start(Trip { script: script(&[("do:0", vec![Reply::TurnedAway(10); 14])]), ..Trip::default() })
            .await
            .unwrap();
        assert_eq!(trips.wait(&patient).await.unwrap(), Status::Completed);
        let waits = kinds(&trips.history(&patient).await.unwrap())
            .iter()
            .filter(|kind| *kind == "book_flight:step_waiting")
            .count();
        assert_eq!(waits, 14);
        assert!(metrics
            .render()
            .contains("marty_saga_steps_total{saga=\"trip\",step=\"book_flight\",outcome=\"turned_away\"} 14"));
        trips.shutdown().await;
    }
}

marty_tests::on_each_store! {
    stores: fresh_sqlite, fresh_postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_compensation_waits_out_an_open_breaker_instead_of_parking(store = "breaker_wait") {
        let mut settings = test_settings();
        settings.compensation_attempts = 2;
        let trips = trips_with(&store, settings, &Metrics::new()).await;
        // One lost request, then the breaker stays open through 12 more tries: none of them counts.
        let mut replies = vec![Reply::Lost];
        replies.extend([Reply::TurnedAway(40); 12]);
        let id = trips.start(Trip { fail_at: Some(1), script: script(&[("undo:0", replies)]), ..Trip::default() });
        let id = id.await.unwrap();
        assert_eq!(trips.wait(&id).await.unwrap(), Status::Compensated);
        check_settled(&id, Status::Compensated, &effects_of(&store, &id).await.unwrap()).unwrap();
        let history = trips.history(&id).await.unwrap();
        let waits: Vec<u32> =
            history.iter().filter(|entry| entry.kind == "compensation_waiting").map(|entry| entry.attempt).collect();
        assert_eq!(waits, [2; 12], "the waits belong to attempt 2 and use none: {:?}", kinds(&history));
        trips.shutdown().await;
    }
}

marty_tests::on_each_store! {
    stores: fresh_sqlite, fresh_postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_call_retried_or_a_step_turned_away_after_an_effect_keeps_the_step_uncertain(store = "retried") {
        let trips = trips(&store, &Metrics::new()).await;
        // A real policy: the car's first call attempt books it and loses the answer, which opens
        // the breaker; the retry is turned away, and that is the error the step sees. Then the
        // car is declined: it must be cancelled all the same.
        let retried = [Reply::RetriedThenTurnedAway, Reply::Declined];
        // The step books the car, then its next call is turned away (it says `uncertain()`).
        let turned_away = [Reply::EffectThenTurnedAway, Reply::Declined];
        for replies in [retried, turned_away] {
            let id =
                trips.start(Trip { script: script(&[("do:2", replies.to_vec())]), ..Trip::default() }).await.unwrap();
            assert_eq!(trips.wait(&id).await.unwrap(), Status::Compensated, "{replies:?}");
            let all_undone = effects(&[(0, "do"), (1, "do"), (2, "do"), (2, "undo"), (1, "undo"), (0, "undo")]);
            assert_eq!(effects_of(&store, &id).await.unwrap(), all_undone, "{replies:?}");
        }
        trips.shutdown().await;
    }
}

marty_tests::on_each_store! {
    stores: fresh_sqlite, fresh_postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn only_refusals_in_a_row_park_a_compensation_early(store = "refusals") {
        let mut settings = test_settings();
        settings.compensation_attempts = 2;
        let trips = trips_with(&store, settings, &Metrics::new()).await;
        // Many lost requests and two refusals, never two in a row: it is not parked.
        let mut replies = vec![Reply::Lost; 5];
        replies.extend([Reply::Declined, Reply::Lost, Reply::Declined]);
        let id = trips.start(Trip { fail_at: Some(1), script: script(&[("undo:0", replies)]), ..Trip::default() });
        let id = id.await.unwrap();
        assert_eq!(trips.wait(&id).await.unwrap(), Status::Compensated);
        check_settled(&id, Status::Compensated, &effects_of(&store, &id).await.unwrap()).unwrap();
        trips.shutdown().await;
    }
}

marty_tests::on_each_store! {
    stores: fresh_sqlite, fresh_postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_saga_taken_over_while_waiting_out_a_breaker_counts_no_interruption(store = "handover") {
        let metrics = Metrics::new();
        let first = trips(&store, &metrics).await;
        let script = script(&[("do:0", vec![Reply::TurnedAway(1000)])]);
        let id = first.start(Trip { script, ..Trip::default() }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The first replica leaves while the saga waits: the attempt had not begun, and it had not
        // when the second replica comes, after the attempt was due.
        first.shutdown().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let second = trips(&store, &metrics).await;
        assert_eq!(second.wait(&id).await.unwrap(), Status::Completed);
        let history = second.history(&id).await.unwrap();
        assert!(!history.iter().any(|entry| entry.kind.ends_with("interrupted")), "{:?}", kinds(&history));
        let flight = history.iter().find(|entry| entry.kind == "step_completed").unwrap();
        assert_eq!(flight.attempt, 1, "the wait used no attempt: {:?}", kinds(&history));
        second.shutdown().await;
    }
}

marty_tests::on_each_store! {
    stores: fresh_sqlite, fresh_postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn starting_with_an_existing_id_starts_nothing(store = "idempotent") {
        let trips = trips(&store, &Metrics::new()).await;
        assert!(trips.start_with_id("order-7", Trip::default()).await.unwrap());
        assert!(!trips.start_with_id("order-7", Trip { fail_at: Some(0), ..Trip::default() }).await.unwrap());
        assert_eq!(trips.wait("order-7").await.unwrap(), Status::Completed);
        assert_eq!(executions_of(&store, "order-7", 0, "do").await.unwrap(), 1);
        assert!(matches!(trips.wait("order-8").await, Err(marty::saga::SagaError::NotFound(_))));
        trips.shutdown().await;
    }
}

marty_tests::on_each_store! {
    stores: fresh_sqlite, fresh_postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn replicas_drive_each_saga_once_and_take_over_from_one_that_leaves(store = "replicas") {
        let metrics = Metrics::new();
        let slow = |store: &Store| Effects { store: store.clone(), crash: false, work: Duration::from_millis(150) };
        let first =
            Orchestrator::<Trip>::with_store(store.clone(), slow(&store), test_settings(), &metrics).await.unwrap();
        let second =
            Orchestrator::<Trip>::with_store(store.clone(), slow(&store), test_settings(), &metrics).await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(first.start(Trip::default()).await.unwrap());
        }
        // The first replica leaves mid-flight; the second continues its sagas.
        tokio::time::sleep(Duration::from_millis(200)).await;
        first.shutdown().await;
        for id in &ids {
            assert_eq!(second.wait(id).await.unwrap(), Status::Completed, "{id}");
            check_settled(id, Status::Completed, &effects_of(&store, id).await.unwrap()).unwrap();
            let history = kinds(&second.history(id).await.unwrap());
            for step in 0..3 {
                // Ran by one replica at a time: more than once only where the first left mid-step
                // (perhaps before the step's code began, so not always once more).
                let ran = executions_of(&store, id, step, "do").await.unwrap();
                let interrupted = history
                    .iter()
                    .filter(|kind| {
                        kind.starts_with(marty_tests::trip::STEPS[step as usize]) && kind.ends_with("interrupted")
                    })
                    .count() as i64;
                assert!((1..=1 + interrupted).contains(&ran), "{id} step {step} ran {ran} times: {history:?}");
            }
        }
        second.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs MARTY_TEST_POSTGRES_URL"]
async fn sagas_ride_out_their_database_going_away_mid_flight() {
    let url = marty_tests::server_env("MARTY_TEST_POSTGRES_URL");
    // postgres://user@host:port/db, with host:port swapped for the proxy's.
    let authority_start = url.find('@').map_or("postgres://".len(), |at| at + 1);
    let authority_end = authority_start + url[authority_start..].find('/').unwrap();
    let target = tokio::net::lookup_host(&url[authority_start..authority_end]).await.unwrap().next().unwrap();
    let proxy = Proxy::start(target).await;
    let proxied_url = format!("{}{}{}", &url[..authority_start], proxy.addr(), &url[authority_end..]);

    let schema = "sagas_outage";
    marty_tests::fresh_schema(&url, schema).await.unwrap();
    let direct = Store::Postgres(marty_tests::pool_in_schema(&url, schema, 4).await.unwrap());
    create_tables(&direct).await.unwrap();
    let proxied = Store::Postgres(marty_tests::pool_in_schema(&proxied_url, schema, 8).await.unwrap());
    // The steps reach the database through the proxy too: they fail while it is cut. Each takes
    // 100 ms, so a saga is still under way when the cut comes 150 ms after its start.
    let effects = Effects { store: proxied.clone(), crash: false, work: Duration::from_millis(100) };
    let trips =
        Orchestrator::<Trip>::with_store(proxied.clone(), effects, test_settings(), &Metrics::new()).await.unwrap();
    // Shorter than a lease (1.5 s): each driver must reload its saga and go on. Longer: the leases
    // lapse meanwhile, and the orchestrator must take its own sagas back.
    for outage in [Duration::from_millis(600), Duration::from_millis(2500)] {
        let mut ids = Vec::new();
        for n in 0..12 {
            ids.push(trips.start(Trip { fail_at: (n % 3 == 2).then_some(2), ..Trip::default() }).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        proxy.cut();
        let in_flight = marty_tests::trip::unsettled(&direct).await;
        assert!(in_flight > 0, "the outage must catch sagas mid-flight");
        tokio::time::sleep(outage).await;
        proxy.restore();

        for (n, id) in ids.iter().enumerate() {
            let status = tokio::time::timeout(Duration::from_secs(30), trips.wait(id))
                .await
                .unwrap_or_else(|_| panic!("saga {id} did not settle after a {outage:?} outage"))
                .unwrap();
            let expected = if n % 3 == 2 { Status::Compensated } else { Status::Completed };
            assert_eq!(status, expected, "saga {id} ({in_flight} were in flight when the database went away)");
            check_settled(id, status, &effects_of(&direct, id).await.unwrap()).unwrap();
        }
    }
    trips.shutdown().await;
}
