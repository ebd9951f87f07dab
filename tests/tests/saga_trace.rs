//! One trace per saga, whoever drives it: a saga started inside a caller's span, left mid-step by the
//! replica that started it and finished by another, has every span of both replicas in the caller's
//! trace, exported over OTLP to a collector inside the test. The second replica knows the trace only
//! from the saga's row, as a replica in another process would. A binary of its own: it installs the
//! process's global subscriber.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use marty::metrics::Metrics;
use marty::saga::{Orchestrator, Status};
use marty_tests::trip::{create_tables, test_settings, Effects, Trip};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use tracing::Instrument;

/// Keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.spans.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saga_taken_over_by_another_replica_stays_in_its_trace() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut telemetry = marty::config::TelemetryConfig::default();
    telemetry.otlp_endpoint = Some(format!("http://{collector_addr}"));
    assert!(marty::telemetry::init("saga-trace", &telemetry));

    let dir = std::env::temp_dir().join(format!("marty-saga-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trips.db");
    let _ = std::fs::remove_file(&path);
    let store = marty::store::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap();
    create_tables(&store).await.unwrap();
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
        let spans = collector.spans.lock().unwrap().clone();
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
