//! Traces over OTLP (feature `otel`): the exporter, the resource, and the W3C trace context on
//! HTTP headers.

use std::sync::{Arc, OnceLock};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::otlp_client::OtlpTls;
use super::otlp_metrics::{ExportConfig, RunningExport};
use crate::metrics::Metrics;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// What [`super::Exports::start`] sends, and where: set by [`configure_metrics`].
static METRICS: OnceLock<(ExportConfig, Vec<opentelemetry_proto::tonic::common::v1::KeyValue>)> = OnceLock::new();

/// The OpenTelemetry layer exporting to `endpoint`, or nothing when there is none (or it fails
/// to build, which is logged once the subscriber is up).
pub(crate) fn layer<S>(service: &str, endpoint: Option<&str>) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let endpoint = endpoint?;
    let exporter = match span_exporter(endpoint) {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("marty: OTLP export to {endpoint} disabled: {error}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource(service)).build();
    let tracer = provider.tracer("marty");
    let _ = PROVIDER.set(provider);
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// The span exporter for `endpoint`, over the protocol `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
/// `OTEL_EXPORTER_OTLP_PROTOCOL` names: `grpc` (the default) or `http/protobuf`, whose traces go
/// to `<endpoint>/v1/traces` as the specification says.
fn span_exporter(endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let protocol = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.trim().is_empty()))
        .unwrap_or_else(|| "grpc".to_owned());
    // An `https://` collector gets TLS with the Mozilla roots and `OTEL_EXPORTER_OTLP_CERTIFICATE`.
    let tls = OtlpTls::from_env("TRACES")?;
    let built = match protocol.trim() {
        "grpc" => {
            let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint);
            match endpoint.starts_with("https://") {
                true => builder.with_tls_config(tls.tonic()).build(),
                false => builder.build(),
            }
        }
        "http/protobuf" => {
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
            builder.with_http_client(tls.http_client(export_timeout())?).build()
        }
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not supported: use `grpc` or `http/protobuf`"
            ))
        }
    };
    built.map_err(|error| error.to_string())
}

/// The resource traces and metrics describe: the standard detectors (`OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES`, where the platform sets them), and the service's own name otherwise.
fn resource(service: &str) -> opentelemetry_sdk::Resource {
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !service_named_by_environment() {
        resource = resource.with_service_name(service.to_owned());
    }
    resource.build()
}

/// Reads the metrics export the environment asks for next to traces sent to `endpoint` (which
/// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` may stand in for).
pub(crate) fn configure_metrics(service: &str, endpoint: Option<&str>) -> Result<(), String> {
    let Some(config) = ExportConfig::from_env(endpoint)? else { return Ok(()) };
    let attributes = resource(service)
        .iter()
        .map(|(key, value)| opentelemetry_proto::tonic::common::v1::KeyValue {
            key: key.to_string(),
            value: Some(value.clone().into()),
            ..Default::default()
        })
        .collect();
    let _ = METRICS.set((config, attributes));
    Ok(())
}

pub(crate) fn start_metrics_export(metrics: Arc<Metrics>) -> Option<RunningExport> {
    let (config, resource) = METRICS.get()?;
    Some(RunningExport::start(metrics, config.clone(), resource.clone()))
}

/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds; 10 s unset).
fn export_timeout() -> std::time::Duration {
    ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
        .map_or(std::time::Duration::from_secs(10), std::time::Duration::from_millis)
}

/// Whether `OTEL_SERVICE_NAME`, or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, names the service.
fn service_named_by_environment() -> bool {
    let set = |name: &str| std::env::var(name).ok().filter(|value| !value.trim().is_empty());
    set("OTEL_SERVICE_NAME").is_some()
        || set("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| {
            attributes.split(',').any(|pair| pair.split('=').next().is_some_and(|key| key.trim() == "service.name"))
        })
}

pub(crate) fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(error) = provider.shutdown() {
            tracing::warn!(%error, "flushing traces at shutdown failed");
        }
    }
}

pub(crate) fn inject(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers));
}

/// The trace id OpenTelemetry gave `span`, when it is exporting.
pub(crate) fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    PROVIDER.get()?;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// Makes the caller's W3C trace context (`traceparent`, `tracestate`) the parent of `span`.
pub(crate) fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    let _ = span.set_parent(parent);
}
