//! An OTLP collector inside a test, over gRPC or `http/protobuf`: it keeps every span and metric it
//! is sent, so a test can check the traces and metrics a service or an orchestrator exported.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
pub use opentelemetry_proto::tonic::common::v1::KeyValue;
pub use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Metric};
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
pub use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
pub use opentelemetry_proto::tonic::trace::v1::Span;

/// Keeps every span and metric it is sent, and the attributes of the resources that sent them.
#[derive(Clone, Default)]
pub struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<Vec<Metric>>>,
    resources: Arc<Mutex<Vec<KeyValue>>>,
    metric_resources: Arc<Mutex<Vec<KeyValue>>>,
}

impl Collector {
    /// Listens on a free loopback port; returns its address and the collector.
    pub async fn start() -> (std::net::SocketAddr, Collector) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the collector");
        let addr = listener.local_addr().expect("its address");
        let collector = Collector::default();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .add_service(MetricsServiceServer::new(collector.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (addr, collector)
    }

    /// The same collector over OTLP `http/protobuf`: `POST /v1/traces` and `/v1/metrics`, HTTP/1.1,
    /// kept alive.
    pub async fn start_http() -> (std::net::SocketAddr, Collector) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the collector");
        let addr = listener.local_addr().expect("its address");
        let collector = Collector::default();
        let accepting = collector.clone();
        tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                tokio::spawn(accepting.clone().serve_http(connection));
            }
        });
        (addr, collector)
    }

    async fn serve_http(self, mut connection: tokio::net::TcpStream) {
        use prost::Message as _;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buffer = Vec::new();
        loop {
            let head_end = loop {
                if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                    break end + 4;
                }
                let mut chunk = [0u8; 8192];
                match connection.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                }
            };
            let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            while buffer.len() < head_end + length {
                let mut chunk = [0u8; 8192];
                match connection.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                }
            }
            let body: Vec<u8> = buffer.drain(..head_end + length).skip(head_end).collect();
            let kept = if head.starts_with("post /v1/traces ") {
                ExportTraceServiceRequest::decode(&body[..]).map(|request| self.keep(request)).is_ok()
            } else if head.starts_with("post /v1/metrics ") {
                ExportMetricsServiceRequest::decode(&body[..]).map(|request| self.keep_metrics(request)).is_ok()
            } else {
                false
            };
            let status = if kept { "200 OK" } else { "400 Bad Request" };
            let response =
                format!("HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
            if connection.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn keep(&self, request: ExportTraceServiceRequest) {
        for resource_spans in request.resource_spans {
            let attributes = resource_spans.resource.map(|resource| resource.attributes).unwrap_or_default();
            self.resources.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(attributes);
            let spans = resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans);
            self.spans.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(spans);
        }
    }

    fn keep_metrics(&self, request: ExportMetricsServiceRequest) {
        for resource_metrics in request.resource_metrics {
            let attributes = resource_metrics.resource.map(|resource| resource.attributes).unwrap_or_default();
            self.metric_resources.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(attributes);
            let metrics = resource_metrics.scope_metrics.into_iter().flat_map(|scope| scope.metrics);
            self.metrics.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(metrics);
        }
    }

    /// The metrics received so far, every export's in the order they came.
    pub fn metrics(&self) -> Vec<Metric> {
        self.metrics.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The attributes of the resources that sent spans, as `key=value` text (values as strings).
    pub fn resource_attributes(&self) -> Vec<String> {
        as_text(&self.resources)
    }

    /// The same for the resources that sent metrics.
    pub fn metric_resource_attributes(&self) -> Vec<String> {
        as_text(&self.metric_resources)
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.keep_metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// A trace or span id as the hex string `traceparent` carries.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A span's attribute `key`, as text (strings bare, other values as OTLP prints them).
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    find_attribute(&span.attributes, key)
}

/// The attribute `key` among `attributes` (a data point's, a resource's), as text.
pub fn find_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).map(text)
}

fn as_text(attributes: &Mutex<Vec<KeyValue>>) -> Vec<String> {
    let attributes = attributes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    attributes.iter().map(|kv| format!("{}={}", kv.key, text(kv))).collect()
}

fn text(kv: &KeyValue) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match kv.value.as_ref().and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        other => format!("{other:?}"),
    }
}
