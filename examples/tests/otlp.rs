//! Traces leave the service over OTLP: an OTLP/gRPC collector inside the test receives the spans of a
//! request, and they continue the trace the caller started (W3C `traceparent` and `tracestate`). The
//! spans follow OpenTelemetry's conventions: names, kinds, attributes, error status, and the
//! resource from `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`.

mod support;

use std::time::{Duration, Instant};

use marty_tests::otlp::{
    attribute, find_attribute, hex, metric, number_data_point, Collector, Metric, Span, SpanKind, StatusCode,
};
use support::Service;

const BINARY: &str = env!("CARGO_BIN_EXE_rest_orders");
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// The REST example, started with `env` (the test's OTLP settings).
async fn start(name: &str, env: impl IntoIterator<Item = (&'static str, String)>) -> Service {
    let (name, env): (String, Vec<_>) = (name.to_owned(), env.into_iter().collect());
    tokio::task::spawn_blocking(move || Service::start_with_env(BINARY, &name, std::process::Stdio::null(), None, &env))
        .await
        .unwrap()
}

/// SIGTERM, and a clean exit: what the service had buffered is flushed by then.
async fn stop(mut service: Service) {
    service.terminate();
    let exit = tokio::task::spawn_blocking(move || service.child.wait().unwrap()).await.unwrap();
    assert!(exit.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_spans_reach_the_collector_in_the_callers_trace() {
    let (collector_addr, collector) = Collector::start().await;

    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector_addr}")),
        ("OTEL_SERVICE_NAME", "orders-api".to_owned()),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test,service.version=1.2.3".to_owned()),
    ];
    let service = start("otlp", env).await;
    let addr = service.addr;
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    let created = tokio::task::spawn_blocking(move || {
        support::request_with(
            addr,
            "POST",
            "/orders",
            Some(r#"{"item":"book","quantity":1}"#),
            &[("traceparent", &traceparent), ("tracestate", "vendor=abc")],
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(created.status, 201, "{created:?}");
    // The order's event goes through the outbox to the audit consumer.
    let audited =
        tokio::task::spawn_blocking(move || support::wait_for_status(addr, "/orders/1/audit", 200)).await.unwrap();
    assert!(audited.body.contains(r#""applied":1"#), "{audited:?}");
    // A request that starts its own trace, and fails so that it logs.
    let broken = tokio::task::spawn_blocking(move || support::request(addr, "GET", "/reports/broken", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(broken.status, 500);

    // SIGTERM: the service flushes its spans before it exits.
    stop(service).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = collector.spans();
        let request = spans.iter().find(|span| span.name == "POST /orders");
        let call = spans.iter().find(|span| span.name == "marty.call");
        let publish = spans.iter().find(|span| span.name == "publish orders.placed");
        let consume = spans.iter().find(|span| span.name == "process orders.placed");
        let broken = spans.iter().find(|span| span.name == "GET /reports/broken");
        if let (Some(request), Some(call), Some(publish), Some(consume), Some(broken)) =
            (request, call, publish, consume, broken)
        {
            assert_eq!(hex(&request.trace_id), TRACE_ID, "the request continues the caller's trace");
            assert_eq!(hex(&request.parent_span_id), PARENT_SPAN_ID, "and is a child of the caller's span");
            assert_eq!(request.trace_state, "vendor=abc", "with the caller's tracestate");
            assert_eq!(hex(&call.trace_id), TRACE_ID, "the database call is in the same trace");
            assert_eq!(call.parent_span_id, request.span_id, "and is a child of the request");
            assert_eq!(publish.parent_span_id, call.span_id, "the event is created in the call that wrote it");
            assert_eq!(hex(&consume.trace_id), TRACE_ID, "the event's handler is in the request's trace");
            assert_eq!(consume.parent_span_id, publish.span_id, "a child of the span that created the event");
            assert_eq!(consume.trace_state, "vendor=abc", "the tracestate travelled with the event");

            assert_eq!(request.kind, SpanKind::Server as i32);
            for (key, value) in [
                ("http.request.method", "POST"),
                ("http.route", "/orders"),
                ("url.path", "/orders"),
                ("url.scheme", "http"),
                ("http.response.status_code", "201"),
            ] {
                assert_eq!(attribute(request, key).as_deref(), Some(value), "{key}: {:?}", request.attributes);
            }
            assert_eq!(broken.status.as_ref().map(|status| status.code), Some(StatusCode::Error as i32), "5xx");
            assert_ne!(request.status.as_ref().map(|status| status.code), Some(StatusCode::Error as i32));

            assert_eq!(call.kind, SpanKind::Client as i32);
            assert_eq!(attribute(call, "peer.service").as_deref(), Some("orders_db"), "{:?}", call.attributes);
            assert_eq!(attribute(call, "db.system").as_deref(), Some("sqlite"), "{:?}", call.attributes);

            assert_eq!(publish.kind, SpanKind::Producer as i32);
            assert_eq!(consume.kind, SpanKind::Consumer as i32);
            for span in [publish, consume] {
                assert_eq!(attribute(span, "messaging.destination.name").as_deref(), Some("orders.placed"));
                assert_eq!(attribute(span, "messaging.message.id"), attribute(publish, "messaging.message.id"));
            }
            assert_eq!(attribute(consume, "messaging.consumer.group.name").as_deref(), Some("order-audit"));

            let resource = collector.resource_attributes();
            for expected in ["service.name=orders-api", "deployment.environment.name=test", "service.version=1.2.3"] {
                assert!(resource.iter().any(|attribute| attribute == expected), "{expected}: {resource:?}");
            }
            return;
        }
        assert!(Instant::now() < deadline, "the collector did not receive the three spans: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The same spans over OTLP `http/protobuf`, when `OTEL_EXPORTER_OTLP_PROTOCOL` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_http_protobuf_when_the_protocol_says_so() {
    let (collector_addr, collector) = Collector::start_http().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector_addr}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
    ];
    let service = start("otlp-http", env).await;
    let addr = service.addr;
    let found = tokio::task::spawn_blocking(move || support::request(addr, "GET", "/orders/42", None).unwrap());
    assert_eq!(found.await.unwrap().status, 404);
    stop(service).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !collector.spans().iter().any(|span| span.name == "GET /orders/{id}") {
        assert!(Instant::now() < deadline, "no request span over http/protobuf: {:#?}", collector.spans());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resource = collector.resource_attributes();
    assert!(resource.iter().any(|attribute| attribute == "service.name=marty-examples"), "{resource:?}");
    // Metrics go the same way; the interval (60 s by default) never came, so these are the ones
    // the service sent as it stopped.
    let requests =
        histogram_count(&collector.metrics(), "http.server.request.duration", &[("http.route", "/orders/{id}")]);
    assert_eq!(requests, Some(1), "the request is in the metrics flushed at shutdown: {:#?}", collector.metrics());
}

/// An `https://` collector that verifies client certificates (behind a TLS proxy) gets traces and
/// metrics over gRPC and over `http/protobuf`, the service trusting the CA in
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` and presenting `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_metrics_reach_an_https_collector_that_verifies_clients() {
    let dir = tokio::task::block_in_place(|| marty_tests::tls::certificates_in("otlp-tls"));
    let path = |file: &str| dir.join(file).display().to_string();
    for protocol in ["grpc", "http/protobuf"] {
        let (collector_addr, collector) =
            if protocol == "grpc" { Collector::start().await } else { Collector::start_http().await };
        let proxy = marty_tests::tls::TlsProxy::start(collector_addr, &dir, true).await;
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://127.0.0.1:{}", proxy.addr.port())),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", path("ca.pem")),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", path("client.pem")),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", path("client-key.pem")),
        ];
        let name = format!("otlp-tls-{}", protocol.replace('/', "-"));
        let service = start(&name, env).await;
        let addr = service.addr;
        let found = tokio::task::spawn_blocking(move || support::request(addr, "GET", "/orders/42", None).unwrap());
        assert_eq!(found.await.unwrap().status, 404);
        stop(service).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let span = collector.spans().iter().any(|span| span.name == "GET /orders/{id}");
            let requests = histogram_count(
                &collector.metrics(),
                "http.server.request.duration",
                &[("http.route", "/orders/{id}")],
            );
            if span && requests == Some(1) {
                break;
            }
            assert!(Instant::now() < deadline, "{protocol}: span {span}, requests {requests:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same collector refuses a service that trusts its CA but has no client certificate, and a
/// service with a client certificate that does not trust its CA: the export fails (and says so in
/// the log), and nothing reaches the collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_collector_refuses_a_service_without_a_client_certificate_or_the_ca() {
    let dir = tokio::task::block_in_place(|| marty_tests::tls::certificates_in("otlp-refused"));
    let path = |file: &str| dir.join(file).display().to_string();
    let without_certificate = [("OTEL_EXPORTER_OTLP_CERTIFICATE", path("ca.pem"))];
    let without_ca = [
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", path("client.pem")),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", path("client-key.pem")),
    ];
    for (case, tls) in [("no-client-certificate", &without_certificate[..]), ("no-ca", &without_ca[..])] {
        let (collector_addr, collector) = Collector::start().await;
        let proxy = marty_tests::tls::TlsProxy::start(collector_addr, &dir, true).await;
        let mut env = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://127.0.0.1:{}", proxy.addr.port())),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_owned()),
        ];
        env.extend(tls.iter().cloned());
        let name = format!("otlp-refused-{case}");
        let mut service = tokio::task::spawn_blocking(move || {
            Service::start_with_env(BINARY, &name, std::process::Stdio::piped(), None, &env)
        })
        .await
        .unwrap();
        let logs = service.child.stdout.take().unwrap();
        let failed = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(logs)
                .lines()
                .map_while(Result::ok)
                .find(|line| line.contains("OTLP metrics export failed"))
        });
        let failed =
            tokio::time::timeout(Duration::from_secs(30), failed).await.expect("the failure is logged").unwrap();
        assert!(failed.is_some(), "{case}: the service logs that the export failed");
        stop(service).await;
        assert!(collector.metrics().is_empty() && collector.spans().is_empty(), "{case}: nothing got through");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The count of the latest data point of histogram `name` whose attributes include `having`.
fn histogram_count(metrics: &[Metric], name: &str, having: &[(&str, &str)]) -> Option<u64> {
    metrics
        .iter()
        .filter(|metric| metric.name == name)
        .filter_map(|metric| match &metric.data {
            Some(metric::Data::Histogram(histogram)) => Some(&histogram.data_points),
            _ => None,
        })
        .flatten()
        .filter(|point| {
            having.iter().all(|(key, value)| find_attribute(&point.attributes, key).as_deref() == Some(*value))
        })
        .map(|point| point.count)
        .next_back()
}

/// The latest value of counter `name` (a monotonic sum).
fn counter_value(metrics: &[Metric], name: &str) -> Option<f64> {
    metrics
        .iter()
        .filter(|metric| metric.name == name)
        .filter_map(|metric| match &metric.data {
            Some(metric::Data::Sum(sum)) if sum.is_monotonic => sum.data_points.last(),
            _ => None,
        })
        .filter_map(|point| match point.value {
            Some(number_data_point::Value::AsDouble(value)) => Some(value),
            Some(number_data_point::Value::AsInt(value)) => Some(value as f64),
            None => None,
        })
        .next_back()
}

/// Metrics go over OTLP beside `/metrics`, every `OTEL_METRIC_EXPORT_INTERVAL`, while the service
/// runs: Marty's under the semantic conventions' names, and the service's own registered ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reach_the_collector_every_interval_beside_prometheus() {
    let (collector_addr, collector) = Collector::start().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector_addr}")),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_owned()),
        ("OTEL_SERVICE_NAME", "orders-api".to_owned()),
    ];
    let mut service = start("otlp-metrics", env).await;
    let addr = service.addr;
    let created = tokio::task::spawn_blocking(move || {
        support::request(addr, "POST", "/orders", Some(r#"{"item":"book","quantity":2}"#)).unwrap()
    });
    assert_eq!(created.await.unwrap().status, 201);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = collector.metrics();
        let posts = histogram_count(
            &metrics,
            "http.server.request.duration",
            &[("http.request.method", "POST"), ("http.route", "/orders"), ("http.response.status_code", "201")],
        );
        if posts == Some(1) && counter_value(&metrics, "orders_created") == Some(1.0) {
            let calls = metrics.iter().find(|metric| metric.name == "marty_call_duration_seconds").expect("calls");
            assert_eq!(calls.unit, "s");
            break;
        }
        assert!(Instant::now() < deadline, "no POST /orders and orders_created over OTLP: {metrics:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The service is still running: these came with the interval, not the shutdown.
    assert!(service.child.try_wait().unwrap().is_none());
    let scraped = tokio::task::spawn_blocking(move || support::request(addr, "GET", "/metrics", None).unwrap());
    let scraped = scraped.await.unwrap().body;
    assert!(scraped.contains("orders_created_total 1"), "Prometheus still has them: {scraped}");
    let resource = collector.metric_resource_attributes();
    assert!(resource.iter().any(|attribute| attribute == "service.name=orders-api"), "{resource:?}");
    stop(service).await;
}

/// One trace per saga: the store demo places one order; the request that started it, its saga's
/// steps (run by the orchestrator's own task) and the consumer of the event the last step published
/// all share one trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_runs_in_the_trace_of_the_request_that_started_it() {
    let (collector_addr, collector) = Collector::start().await;
    let dir = std::env::temp_dir().join(format!("marty-store-otlp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_store"))
        .args(["--orders", "1", "--json"])
        .current_dir(&dir)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector_addr}"))
        .env("RUST_LOG", "info")
        .env_remove("MARTY_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = collector.spans();
        let steps: Vec<&Span> = spans.iter().filter(|span| span.name == "saga step").collect();
        let start = spans.iter().find(|span| span.name == "saga start");
        let consume = spans.iter().find(|span| span.name == "process store.order_confirmed");
        if let (Some(start), Some(consume), 3) = (start, consume, steps.len()) {
            let request = spans.iter().find(|span| span.span_id == start.parent_span_id).expect("the start's parent");
            assert!(
                request.name.starts_with("POST /"),
                "the saga starts in the request that placed the order: {}",
                request.name
            );
            for span in steps.iter().copied().chain([consume]) {
                assert_eq!(hex(&span.trace_id), hex(&request.trace_id), "{} is in the saga's trace", span.name);
            }
            return;
        }
        assert!(Instant::now() < deadline, "the collector did not receive the saga's spans: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
