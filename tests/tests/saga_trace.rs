//! One trace per saga, whoever drives it: a saga started inside a caller's span, left mid-step by the
//! replica that started it and finished by another, has every span of both replicas in the caller's
//! trace, exported over OTLP to a collector inside the test. The second replica knows the trace only
//! from the saga's row, as a replica in another process would. A binary of its own: it installs the
//! process's global subscriber.

use std::time::{Duration, Instant};

use marty::metrics::Metrics;
use marty::saga::{Orchestrator, Status};
use marty_tests::otlp::Collector;
use marty_tests::trip::{fresh_sqlite, test_settings, Effects, Trip};
use tracing::Instrument;

#[tokio::test(flavor = "multi_thread")]
async fn a_saga_taken_over_by_another_replica_stays_in_its_trace() {
    let (collector_addr, collector) = Collector::start().await;
    let mut telemetry = marty::config::TelemetryConfig::default();
    telemetry.otlp_endpoint = Some(format!("http://{collector_addr}"));
    assert!(marty::telemetry::init("saga-trace", &telemetry));

    let store = fresh_sqlite("trace").await;
    let effects = |work| Effects { store: store.clone(), crash: false, work };
    let metrics = Metrics::new();
    // Its first step outlasts the step's timeout: the saga is mid-step when this replica leaves.
    let leaving =
        Orchestrator::<Trip>::with_store(store.clone(), effects(Duration::from_secs(30)), test_settings(), &metrics)
            .await
            .unwrap();
    let caller = tracing::info_span!("caller");
    let id = leaving.start(Trip::default()).instrument(caller).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    leaving.shutdown().await;

    let staying =
        Orchestrator::<Trip>::with_store(store.clone(), effects(Duration::from_millis(1)), test_settings(), &metrics)
            .await
            .unwrap();
    let settled = tokio::time::timeout(Duration::from_secs(20), staying.wait(&id)).await.expect("taken over");
    assert_eq!(settled.unwrap(), Status::Completed);
    staying.shutdown().await;
    marty::telemetry::shutdown();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = collector.spans();
        let caller = spans.iter().find(|span| span.name == "caller");
        // The interrupted first attempt, then the three steps the second replica ran.
        let steps = spans.iter().filter(|span| span.name == "saga step").count();
        if let (Some(caller), 4..) = (caller, steps) {
            let drivers = spans.iter().filter(|span| span.name == "saga").count();
            assert!(drivers >= 2, "a driver span from each replica: {spans:#?}");
            for span in spans.iter().filter(|span| span.name.starts_with("saga")) {
                assert_eq!(span.trace_id, caller.trace_id, "`{}` is in the caller's trace", span.name);
            }
            return;
        }
        assert!(Instant::now() < deadline, "the collector did not receive the saga's spans: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
