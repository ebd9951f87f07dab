//! gRPC calls as OpenTelemetry's RPC conventions see them: the span is `orders.v1.Orders/Get` with
//! `rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code`, and each call is measured in
//! `rpc_server_call_duration_seconds{rpc_service,rpc_method,rpc_grpc_status_code}` from its first
//! byte to its last, streams included. The status is the `grpc-status` of a trailers-only answer
//! (errors before the handler) or of the trailers that end the body.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http_body::Frame;

use crate::metrics::Metrics;
use crate::timeout::Stopwatch;

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
/// choose the path, and a flood of made-up method names must grow neither the metrics nor memory.
const MAX_METHODS: usize = 1_000;

/// The methods admitted as labels, process-wide (looked up only when a thread's cache misses).
static ADMITTED: Mutex<Option<HashMap<(String, String), RpcMethod>>> = Mutex::new(None);

thread_local! {
    /// Each thread's copy of the admitted methods it has served: no lock on the request path.
    static LABELS: RefCell<HashMap<(String, String), RpcMethod>> = RefCell::new(HashMap::new());
}

/// The method a gRPC request calls (`POST /orders.v1.Orders/Get`, `application/grpc...`).
pub(crate) fn method_of(request: &Request) -> Option<RpcMethod> {
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
    let key = (service.to_owned(), method.to_owned());
    if let Some(known) = LABELS.with(|labels| labels.borrow().get(&key).cloned()) {
        return Some(known);
    }
    let admitted = {
        let mut admitted = ADMITTED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let admitted = admitted.get_or_insert_with(HashMap::new);
        match admitted.get(&key) {
            Some(known) => Some(known.clone()),
            None if admitted.len() < MAX_METHODS => {
                let label = RpcMethod { service: service.into(), method: method.into() };
                admitted.insert(key.clone(), label.clone());
                Some(label)
            }
            None => None,
        }
    };
    match admitted {
        Some(label) => {
            LABELS.with(|labels| labels.borrow_mut().insert(key, label.clone()));
            Some(label)
        }
        // Past the limit: counted as `_OTHER`, and remembered nowhere.
        None => Some(RpcMethod { service: service.into(), method: "_OTHER".into() }),
    }
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
    fn methods_past_the_limit_read_other_and_are_not_kept() {
        let named = method_of(&call("/orders.v1.Orders/GetOrder")).unwrap();
        assert_eq!(named.to_string(), "orders.v1.Orders/GetOrder");
        assert!(method_of(&call("/orders.v1.Orders")).is_none() && method_of(&call("/a/b/c")).is_none());
        let plain = http::Request::post("/orders.v1.Orders/GetOrder").body(Body::empty()).unwrap();
        assert!(method_of(&plain).is_none(), "not gRPC without its content type");
        for index in 0..MAX_METHODS + 50 {
            method_of(&call(&format!("/flood.Service/Made{index}"))).unwrap();
        }
        let late = method_of(&call("/orders.v1.Orders/Late")).unwrap();
        assert_eq!(&*late.method, "_OTHER");
        assert_eq!(&*method_of(&call("/orders.v1.Orders/GetOrder")).unwrap().method, "GetOrder", "admitted earlier");
        let admitted = ADMITTED.lock().unwrap().as_ref().map_or(0, HashMap::len);
        assert_eq!(admitted, MAX_METHODS);
        assert!(LABELS.with(|labels| labels.borrow().len()) <= MAX_METHODS);
    }
}
