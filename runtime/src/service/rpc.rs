//! gRPC calls as OpenTelemetry's RPC conventions see them: the span is `orders.v1.Orders/Get` with
//! `rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code`, and each call is measured in
//! `rpc_server_call_duration_seconds{rpc_service,rpc_method,rpc_grpc_status_code}` from its first
//! byte to its last, streams included. The status is the `grpc-status` of a trailers-only answer
//! (errors before the handler) or of the trailers that end the body.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http_body::Frame;

use crate::metrics::{Metrics, RpcMethod};
use crate::timeout::Stopwatch;

/// The method a gRPC request calls (`POST /orders.v1.Orders/Get`, `application/grpc...`), as a label
/// `metrics` admits.
pub(crate) fn method_of(request: &Request, metrics: &Metrics) -> Option<RpcMethod> {
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    // Every request passes here: plain HTTP leaves before its path is looked at.
    if !grpc {
        return None;
    }
    let (service, method) = request.uri().path().strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some(metrics.rpc_method(service, method))
}

/// The answer to `method`, measured until its body ends (or is dropped, when the client goes).
pub(crate) fn observe(
    method: RpcMethod,
    response: Response,
    span: tracing::Span,
    metrics: Arc<Metrics>,
    start: Stopwatch,
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
    start: Stopwatch,
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
        self.metrics.record_rpc(&self.method.service, &self.method.method, status, self.start.elapsed());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn call(path: &str) -> Request {
        http::Request::post(path).header("content-type", "application/grpc").body(Body::empty()).unwrap()
    }

    #[test]
    fn a_grpc_method_is_read_from_the_path_of_a_grpc_request() {
        let metrics = Metrics::new();
        let named = method_of(&call("/orders.v1.Orders/GetOrder"), &metrics).unwrap();
        assert_eq!(named.to_string(), "orders.v1.Orders/GetOrder");
        assert!(method_of(&call("/orders.v1.Orders"), &metrics).is_none());
        assert!(method_of(&call("/a/b/c"), &metrics).is_none());
        let plain = http::Request::post("/orders.v1.Orders/GetOrder").body(Body::empty()).unwrap();
        assert!(method_of(&plain, &metrics).is_none(), "not gRPC without its content type");
    }
}
