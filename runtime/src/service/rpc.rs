//! gRPC calls as OpenTelemetry's RPC conventions see them: the span is `orders.v1.Orders/Get` with
//! `rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code`, and each call is measured in
//! `rpc_server_call_duration_seconds{rpc_service,rpc_method,rpc_grpc_status_code}` from its first
//! byte to its last, streams included. The status is the `grpc-status` of a trailers-only answer
//! (errors before the handler) or of the trailers that end the body.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http_body::Frame;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// A gRPC method, as its request's path names it.
#[derive(Debug, Clone)]
pub(crate) struct RpcMethod {
    pub(crate) service: Arc<str>,
    pub(crate) method: Arc<str>,
}

impl std::fmt::Display for RpcMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.method)
    }
}

/// Distinct `(service, method)` labels a process keeps; past it, methods read `_OTHER`. Clients
/// choose the path, and a flood of made-up method names must not grow the metrics without bound.
const MAX_METHODS: usize = 1_000;
static METHODS_SEEN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static LABELS: RefCell<HashMap<(String, String), RpcMethod>> = RefCell::new(HashMap::new());
}

/// The method a gRPC request calls (`POST /orders.v1.Orders/Get`, `application/grpc...`).
pub(crate) fn method_of(request: &Request) -> Option<RpcMethod> {
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    let (service, method) = request.uri().path().strip_prefix('/')?.split_once('/')?;
    if !grpc || service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    LABELS.with(|labels| {
        let mut labels = labels.borrow_mut();
        if let Some(known) = labels.get(&(service.to_owned(), method.to_owned())) {
            return Some(known.clone());
        }
        let label = if METHODS_SEEN.fetch_add(1, Ordering::Relaxed) < MAX_METHODS {
            RpcMethod { service: service.into(), method: method.into() }
        } else {
            RpcMethod { service: service.into(), method: "_OTHER".into() }
        };
        labels.insert((service.to_owned(), method.to_owned()), label.clone());
        Some(label)
    })
}

/// The answer to `method`, measured until its body ends (or is dropped, when the client goes).
pub(crate) fn observe(
    method: RpcMethod,
    response: Response,
    span: tracing::Span,
    metrics: Arc<Metrics>,
    start: Instant,
) -> Response {
    let status = response.headers().get("grpc-status").and_then(status_code);
    let (parts, body) = response.into_parts();
    let body = ObservedBody { inner: body, call: Some(Call { method, status, span, metrics, start }) };
    Response::from_parts(parts, Body::new(body))
}

fn status_code(value: &http::HeaderValue) -> Option<i32> {
    value.to_str().ok()?.parse().ok()
}

/// What is recorded when the call ends.
struct Call {
    method: RpcMethod,
    /// `grpc-status`, once known.
    status: Option<i32>,
    span: tracing::Span,
    metrics: Arc<Metrics>,
    start: Instant,
}

impl Drop for Call {
    fn drop(&mut self) {
        // No status at all: the stream ended without one (the client sees UNKNOWN), or was cut.
        let status = self.status.unwrap_or(2);
        self.span.record("rpc.grpc.status_code", status);
        // The server's faults, as OpenTelemetry's gRPC conventions list them.
        if matches!(status, 2 | 4 | 12 | 13 | 14 | 15) {
            self.span.record("otel.status_code", "ERROR");
        }
        self.metrics.record_rpc(&self.method, status, self.start.elapsed());
    }
}

pin_project_lite::pin_project! {
    struct ObservedBody {
        #[pin]
        inner: Body,
        call: Option<Call>,
    }
}

impl http_body::Body for ObservedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(call)) = (frame.trailers_ref(), this.call.as_mut()) {
                    call.status = call.status.or_else(|| trailers.get("grpc-status").and_then(status_code));
                }
            }
            // The end: record now rather than when the connection drops the body.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => drop(this.call.take()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
