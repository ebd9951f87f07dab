//! A `#[service]` that shuts down gracefully releases the leases of its runtime's saga orchestrators,
//! so another replica continues their sagas at once instead of after the lease. A binary of its own:
//! the release covers every orchestrator of the global runtime, and would stop those of tests
//! running beside it.

mod support;

use std::time::Duration;

use marty::metrics::Metrics;
use marty::saga::{Orchestrator, Status};
use marty::service;
use marty_tests::trip::{check_settled, effects_of, fresh_sqlite, test_settings, Effects, Trip};

struct Probe;

#[service]
impl Probe {
    #[marty::get("/ping")]
    async fn ping(&self) -> &'static str {
        "pong"
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_shutting_down_hands_its_sagas_to_another_replica_at_once() {
    support::registry();
    let store = fresh_sqlite("shutdown").await;
    // A lease far longer than the test may wait: only a release lets the second replica in.
    let mut settings = test_settings();
    settings.lease = Duration::from_secs(60);
    let effects = |work| Effects { store: store.clone(), crash: false, work };
    let metrics = Metrics::new();
    // Its steps take longer than any step's timeout: it would never complete these sagas itself.
    let leaving =
        Orchestrator::<Trip>::with_store(store.clone(), effects(Duration::from_secs(30)), settings.clone(), &metrics)
            .await
            .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(leaving.start(Trip::default()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = service::server(Probe).expect("configuration loads").start(listener).unwrap();
    running.shutdown().await.unwrap();

    let staying =
        Orchestrator::<Trip>::with_store(store.clone(), effects(Duration::from_millis(1)), settings, &metrics)
            .await
            .unwrap();
    for id in &ids {
        // Well within the 60 s lease.
        let status = tokio::time::timeout(Duration::from_secs(20), staying.wait(id))
            .await
            .unwrap_or_else(|_| panic!("saga {id} was not taken over: its lease was not released"));
        assert_eq!(status.unwrap(), Status::Completed);
        check_settled(id, Status::Completed, &effects_of(&store, id).await.unwrap()).unwrap();
    }
    staying.shutdown().await;
}
