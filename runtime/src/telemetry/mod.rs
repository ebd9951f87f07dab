//! Logs, traces and metrics export for a service.
//!
//! - Logs: `tracing` events as JSON lines (for collectors) or pretty text (for a terminal), filtered
//!   by `RUST_LOG` (default `info`), each line carrying its spans' fields, so a request's lines share
//!   its `request_id` and, when the caller sent one, its W3C `trace_id`.
//! - Traces (feature `otel`): when `OTEL_EXPORTER_OTLP_ENDPOINT` (the standard variable) or
//!   `[telemetry] otlp_endpoint` is set, spans are exported over OTLP (gRPC, or `http/protobuf` as
//!   `OTEL_EXPORTER_OTLP_PROTOCOL` says), an incoming
//!   `traceparent` (with its `tracestate`) becomes their parent, and [`shutdown`] flushes what is
//!   buffered. The resource follows `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`; the service's
//!   name stands in for an unset `service.name`. Spans follow OpenTelemetry's conventions: an HTTP
//!   server span is named `GET /orders/{id}`, has kind server, the `http.*` and `url.*` attributes
//!   and an error status on 5xx; a call is a client span with `peer.service` (and `db.system`);
//!   events are created in a producer span and handled in a consumer span with `messaging.*`. Without the
//!   feature, a configured endpoint is reported in the log rather than ignored silently.
//! - Metrics (feature `otel`): with the same endpoint, what `/metrics` serves is also pushed over
//!   OTLP every `OTEL_METRIC_EXPORT_INTERVAL` and at shutdown (`otlp_metrics.rs`);
//!   `OTEL_METRICS_EXPORTER=none` keeps Prometheus only.
//!
//! | span | name, kind | attributes |
//! |---|---|---|
//! | an HTTP request | `GET /orders/{id}` (the method alone when no route matched), server; error status on 5xx | `http.request.method`, `http.route`, `url.path`, `url.scheme`, `network.protocol.version`, `user_agent.original`, `http.response.status_code` |
//! | a gRPC call | `orders.v1.Orders/GetOrder`, server; error status on UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS | `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code` |
//! | a wrapped call | `marty.call`, client | `peer.service` (the dependency), `db.system` (from a database's URL), `dependency`, `operation`, `attempt`, `outcome` |
//! | `outbox::publish` | `publish orders.placed`, producer | `messaging.destination.name`, `messaging.message.id`, `messaging.operation.type = create` |
//! | an event handler | `process orders.placed`, consumer, a child of the publish span | `messaging.destination.name`, `messaging.consumer.group.name`, `messaging.message.id` |
//!
//! Outgoing calls carry the trace on: wrap a client (a tonic `Channel`, a hyper client) in
//! `TraceContextLayer`, or call `inject_trace_context(&mut headers)`.
//!
//! **OTLP metrics**: what `/metrics` serves is pushed every `OTEL_METRIC_EXPORT_INTERVAL`
//! milliseconds (default 60000) and once more at shutdown (given up after 5 s, so a silent
//! collector cannot hold the exit); one source, so the two never disagree, and the service's own
//! registered metrics go too. Counters are cumulative monotonic sums named without `_total`,
//! histograms explicit-bucket histograms; the HTTP and gRPC durations take the semantic
//! conventions' names and attribute keys (`http.server.request.duration` with
//! `http.request.method`, `http.route`, `http.response.status_code`; `rpc.server.call.duration`).
//! The standard variables apply: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (alone, it sends metrics and
//! no traces), `OTEL_EXPORTER_OTLP_(METRICS_)PROTOCOL` (`grpc` or `http/protobuf`),
//! `OTEL_EXPORTER_OTLP_(METRICS_)HEADERS`, `OTEL_METRIC_EXPORT_TIMEOUT`. A collector that is down is
//! logged once until it answers again.
//!
//! **TLS to the collector**: `https://` endpoints trust the Mozilla roots, or the CA in
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`, and present a client certificate from
//! `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `_CLIENT_KEY` (each also per signal,
//! `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` ...). A bad setting is reported once at startup, naming
//! the variable, and that exporter is off: telemetry settings never stop a service.

use marty_config::{LogFormat, TelemetryConfig};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber for `service`, logging to standard output. Returns `false` (and
/// changes nothing) when the application installed its own first.
pub fn init(service: &str, config: &TelemetryConfig) -> bool {
    init_writing_to(service, config, std::io::stdout)
}

/// As [`init`], with the log lines written by `writer` rather than to standard output: a program
/// that draws on the terminal (a progress bar) writes them where they do not break it, and keeps
/// the trace and metrics export [`init`] sets up.
pub fn init_writing_to<W>(service: &str, config: &TelemetryConfig, writer: W) -> bool
where
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .or_else(|| config.otlp_endpoint.clone());
    let traces = otel::layer(service, endpoint.as_deref());
    let metrics_export = otel::configure_metrics(service, endpoint.as_deref());
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    let installed = match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(writer),
            )
            .try_init()
            .is_ok(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer().with_writer(writer)).try_init().is_ok(),
    };
    if installed {
        log_panics();
        tracing::info!(service, log_format = ?config.log_format, otlp_endpoint = endpoint.as_deref(), "telemetry initialised");
        if endpoint.is_some() && !cfg!(feature = "otel") {
            tracing::warn!("OTLP export needs marty's `otel` feature; traces stay in the logs");
        }
        if let Err(error) = metrics_export {
            tracing::warn!(%error, "OTLP metrics export disabled; /metrics still serves them");
        }
    }
    installed
}

/// Replaces the default panic hook, which writes several lines of text to stderr, with one log event:
/// an ERROR line (JSON with the JSON format) with the message, where it happened and the backtrace
/// as fields, inside the span of the request or event being handled.
fn log_panics() {
    std::panic::set_hook(Box::new(|panic| {
        let location = panic.location().map(|location| format!("{}:{}", location.file(), location.line()));
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(
            panic = panic_message(panic.payload()),
            location = location.as_deref().unwrap_or("unknown"),
            backtrace = %backtrace,
            "panicked"
        );
    }));
}

/// What a panic said, for the log: its message when it was a string (as `panic!` makes it).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("a non-string panic payload")
}

/// Flushes and stops trace export; call before the process exits (the service does on shutdown).
pub fn shutdown() {
    otel::shutdown();
}

/// What a service exports while it runs, beside its logs: metrics pushed over OTLP (with the `otel`
/// feature and an endpoint; traces go from the subscriber [`init`] installed). [`Exports::finish`]
/// ends both.
pub(crate) struct Exports(#[cfg(feature = "otel")] Option<otlp_metrics::RunningExport>);

impl Exports {
    /// Starts pushing `metrics`, when [`init`] found an endpoint.
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn start(metrics: &std::sync::Arc<crate::metrics::Metrics>) -> Exports {
        #[cfg(feature = "otel")]
        return Exports(otel::start_metrics_export(metrics.clone()));
        #[cfg(not(feature = "otel"))]
        Exports()
    }

    /// Sends the metrics a last time, then flushes traces ([`shutdown`]).
    pub(crate) async fn finish(self) {
        #[cfg(feature = "otel")]
        if let Some(export) = self.0 {
            export.finish().await;
        }
        shutdown();
    }
}

/// Puts the current span's W3C trace context (`traceparent`, `tracestate`) on an outgoing request's
/// headers, so the service called continues this trace. Without the `otel` feature there is no trace
/// context to send and the headers are left as they are.
pub fn inject_trace_context(headers: &mut http::HeaderMap) {
    otel::inject(headers);
}

/// A tower layer for outgoing HTTP or gRPC clients (a tonic `Channel`, a hyper client) that adds the
/// current trace context to every request; see [`inject_trace_context`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextLayer;

impl<S> tower_layer::Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService { inner }
    }
}

/// The service [`TraceContextLayer`] builds.
#[derive(Debug, Clone)]
pub struct TraceContextService<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for TraceContextService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        inject_trace_context(request.headers_mut());
        self.inner.call(request)
    }
}

#[cfg(feature = "otel")]
pub(crate) mod otel;
#[cfg(feature = "otel")]
mod otlp_client;
#[cfg(feature = "otel")]
mod otlp_metrics;

#[cfg(not(feature = "otel"))]
pub(crate) mod otel {
    pub(crate) fn layer(_service: &str, _endpoint: Option<&str>) -> Option<tracing_subscriber::layer::Identity> {
        None
    }

    pub(crate) fn shutdown() {}

    pub(crate) fn configure_metrics(_service: &str, _endpoint: Option<&str>) -> Result<(), String> {
        Ok(())
    }

    pub(crate) fn continue_trace(_span: &tracing::Span, _headers: &http::HeaderMap) {}

    pub(crate) fn inject(_headers: &mut http::HeaderMap) {}

    pub(crate) fn trace_id(_span: &tracing::Span) -> Option<String> {
        None
    }
}
