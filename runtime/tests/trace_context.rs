//! Outgoing requests carry the current trace: the W3C context an incoming request brought is what
//! `inject_trace_context` (and `TraceContextLayer`) put on the next hop, with this service's span as
//! the parent. Only with the `otel` feature; without it there is no context to carry.
#![cfg(feature = "otel")]

use marty::opentelemetry::trace::TracerProvider as _;
use marty::opentelemetry_sdk::trace::SdkTracerProvider;
use marty::tracing_opentelemetry::OpenTelemetrySpanExt;
use tower::{Service, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn outgoing_requests_continue_the_incoming_trace_from_this_services_span() {
    let provider = SdkTracerProvider::builder().build();
    let subscriber =
        tracing_subscriber::registry().with(marty::tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut incoming = http::HeaderMap::new();
    incoming.insert("traceparent", INCOMING.parse().unwrap());
    let parent = {
        use marty::opentelemetry::propagation::TextMapPropagator;
        struct Headers<'a>(&'a http::HeaderMap);
        impl marty::opentelemetry::propagation::Extractor for Headers<'_> {
            fn get(&self, key: &str) -> Option<&str> {
                self.0.get(key).and_then(|v| v.to_str().ok())
            }
            fn keys(&self) -> Vec<&str> {
                self.0.keys().map(|k| k.as_str()).collect()
            }
        }
        marty::opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(&incoming))
    };
    let span = tracing::info_span!("http.request");
    span.set_parent(parent).unwrap();
    let _entered = span.enter();

    let mut outgoing = http::HeaderMap::new();
    marty::telemetry::inject_trace_context(&mut outgoing);
    let traceparent = outgoing.get("traceparent").expect("a traceparent to send").to_str().unwrap().to_owned();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "the same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "with this service's span as the parent, not the caller's");
    assert_eq!(parts[3], "01", "still sampled");

    // The layer does the same for every request a client sends.
    let mut client = tower::ServiceBuilder::new().layer(marty::telemetry::TraceContextLayer).service_fn(
        |request: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(request.headers().get("traceparent").cloned())
        },
    );
    let sent = client.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
    assert_eq!(sent.unwrap().to_str().unwrap(), traceparent);
}
