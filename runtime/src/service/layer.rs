//! [`HttpLayer`]: what every request to a service passes through, as one tower layer with a named
//! future: a request id, an `http.request` span, `http_server_request_duration_seconds`, panics
//! contained to their request (500), axum's plain-text rejections rewritten as problem+json, and
//! `[http] max_body_bytes` as the limit of axum's body extractors.
//!
//! One layer rather than a stack of `from_fn` middlewares: each of those clones the inner service
//! and boxes a future per request, which made `#[service]` cost ~30% more CPU per request than bare
//! axum in `bench/http_overhead`. A router wraps every route in a boxed service per layer it is
//! given, so the body limit is applied here too rather than as a layer of its own.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body::Body as _;
use tower_layer::Layer;
use tower_service::Service;

use super::problem::{PendingInstance, Problem, ProblemType};
use super::REQUEST_ID;
use crate::metrics::Metrics;
use crate::throttled_log::{Throttle, WINDOW};
use crate::timeout::Stopwatch;

/// Observes and protects every request; see the module docs.
#[derive(Debug, Clone)]
pub struct HttpLayer {
    metrics: Arc<Metrics>,
    body_limit: DefaultBodyLimit,
    security_headers: bool,
}

impl HttpLayer {
    /// A layer recording into `metrics`, letting axum's extractors read bodies of up to
    /// `max_body_bytes`, adding the security headers to responses.
    pub fn new(metrics: Arc<Metrics>, max_body_bytes: usize) -> Self {
        HttpLayer { metrics, body_limit: DefaultBodyLimit::max(max_body_bytes), security_headers: true }
    }

    /// Whether responses get the security headers (`[http] security_headers`) where the handler
    /// did not set them.
    pub fn security_headers(mut self, enabled: bool) -> Self {
        self.security_headers = enabled;
        self
    }
}

/// The headers `[http] security_headers` adds: an API's responses are data, never a page to frame,
/// sniff or load resources for.
const SECURITY_HEADERS: [(HeaderName, HeaderValue); 4] = [
    (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'")),
];

impl<S> Layer<S> for HttpLayer {
    type Service = HttpService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpService {
            inner: self.body_limit.layer(inner),
            metrics: self.metrics.clone(),
            security_headers: self.security_headers,
        }
    }
}

/// The service [`HttpLayer`] builds.
#[derive(Debug, Clone)]
pub struct HttpService<S> {
    inner: <DefaultBodyLimit as Layer<S>>::Service,
    metrics: Arc<Metrics>,
    security_headers: bool,
}

impl<S> Service<Request> for HttpService<S>
where
    S: Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        // The time-stamp counter: two OS clock reads per request were a measurable part of its cost.
        let start = Stopwatch::start();
        let method = method_label(request.method());
        let route =
            request.extensions().get::<MatchedPath>().map_or_else(unmatched, |matched| route_label(matched.as_str()));
        let request_id = request_id_of(request.headers()).unwrap_or_else(|| {
            let generated = generate_request_id();
            request.headers_mut().insert(REQUEST_ID, generated.clone());
            generated
        });
        // OpenTelemetry's HTTP server span: `GET /orders/{id}` (the method alone when no route
        // matched, so raw paths never become span names), kind server.
        // A gRPC call is named after its method: `orders.v1.Orders/Get`.
        let matched = request.extensions().get::<MatchedPath>().is_some();
        let rpc = super::rpc::method_of(&request, &self.metrics);
        let span = tracing::info_span!(
            "http.request",
            otel.name = %SpanName { method, route: matched.then_some(&*route), rpc: rpc.as_ref() },
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = rpc.as_ref().map(|_| "grpc"),
            rpc.service = rpc.as_ref().map(|rpc| &*rpc.service),
            rpc.method = rpc.as_ref().map(|rpc| &*rpc.method),
            rpc.grpc.status_code = tracing::field::Empty,
            http.request.method = method,
            http.route = &*route,
            url.path = request.uri().path(),
            url.scheme = "http",
            network.protocol.version = protocol_version(request.version()),
            user_agent.original = request.headers().get(header::USER_AGENT).and_then(|agent| agent.to_str().ok()),
            request_id = %String::from_utf8_lossy(request_id.as_bytes()),
            trace_id = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        if !span.is_disabled() {
            // The caller's W3C trace id, so this request's log lines join the caller's trace.
            crate::telemetry::otel::continue_trace(&span, request.headers());
            match request.headers().get(TRACEPARENT).and_then(trace_id_of) {
                Some(trace_id) => {
                    span.record("trace_id", trace_id);
                }
                // A trace this request starts: its id comes from OpenTelemetry, when exporting.
                None => {
                    if let Some(trace_id) = crate::telemetry::otel::trace_id(&span) {
                        span.record("trace_id", trace_id.as_str());
                    }
                }
            }
        }
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner,
            observed: Some(Observed {
                start,
                method,
                route,
                rpc,
                request_id,
                span,
                metrics: self.metrics.clone(),
                security_headers: self.security_headers,
            }),
        }
    }
}

struct Observed {
    start: Stopwatch,
    method: &'static str,
    route: Arc<str>,
    /// The gRPC method, for a gRPC call: measured as one, to the end of its response.
    rpc: Option<crate::metrics::RpcMethod>,
    request_id: HeaderValue,
    span: tracing::Span,
    metrics: Arc<Metrics>,
    security_headers: bool,
}

pin_project_lite::pin_project! {
    /// The future of [`HttpService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        observed: Option<Observed>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let observed = this.observed.as_ref().expect("polled after completion");
        let polled = {
            let _entered = observed.span.enter();
            // A panic is contained to this request; the inner future is never polled again.
            std::panic::catch_unwind(AssertUnwindSafe(|| this.inner.poll(cx)))
        };
        let response = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(response))) => rewrite_rejection(response, cx, &observed.request_id),
            Ok(Poll::Ready(Err(never))) => match never {},
            Err(panic) => panic_response(&observed.span, panic),
        };
        let observed = this.observed.take().expect("checked above");
        Poll::Ready(Ok(finish(observed, response)))
    }
}

fn finish(observed: Observed, mut response: Response) -> Response {
    let status = response.status();
    observed.span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        observed.span.record("otel.status_code", "ERROR");
        static LINES: std::sync::OnceLock<Throttle<(&'static str, Arc<str>, u16)>> = std::sync::OnceLock::new();
        let lines = LINES.get_or_init(|| Throttle::new(WINDOW));
        if let Some(count) = lines.hit_for((observed.method, observed.route.clone(), status.as_u16())) {
            let window = marty_config::format_duration(WINDOW);
            let (method, route) = (observed.method, &observed.route);
            tracing::warn!(parent: &observed.span, status = status.as_u16(), count, "{count} requests to {method} {route} answered {status} in the last {window}");
        }
    }
    if let Some(PendingInstance(problem)) = response.extensions_mut().remove::<PendingInstance>() {
        // Rendered by a handler that did not know the request id: render again with it.
        let headers = std::mem::take(response.headers_mut());
        response = problem.response_for(&observed.request_id);
        response.headers_mut().extend(headers);
    }
    // Room for what is added below at once, rather than the map growing twice on the way.
    response.headers_mut().reserve(1 + SECURITY_HEADERS.len());
    response.headers_mut().insert(REQUEST_ID, observed.request_id);
    if observed.security_headers && observed.rpc.is_none() {
        let headers = response.headers_mut();
        for (name, value) in SECURITY_HEADERS {
            headers.entry(name).or_insert(value);
        }
    }
    if let Some(rpc) = observed.rpc {
        return super::rpc::observe(rpc, response, observed.span, observed.metrics, observed.start);
    }
    observed.metrics.record_http_request(observed.method, observed.route, status.as_u16(), observed.start.elapsed());
    response
}

/// The statuses axum's extractors and router reject requests with, as plain text or no body.
const REJECTION_STATUSES: [StatusCode; 5] = [
    StatusCode::BAD_REQUEST,
    StatusCode::METHOD_NOT_ALLOWED,
    StatusCode::PAYLOAD_TOO_LARGE,
    StatusCode::UNSUPPORTED_MEDIA_TYPE,
    StatusCode::UNPROCESSABLE_ENTITY,
];

/// Rewrites plain-text client errors (axum's rejections: malformed JSON, missing fields, oversized
/// bodies, wrong content type, wrong method) as problem+json with the same status and message. A
/// handler that wants another shape returns JSON or a [`Problem`], which passes through untouched.
fn rewrite_rejection(response: Response, cx: &mut Context<'_>, request_id: &HeaderValue) -> Response {
    if !REJECTION_STATUSES.contains(&response.status()) {
        return response;
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    if !content_type.is_none_or(|value| value.starts_with("text/plain")) {
        return response;
    }
    let (parts, mut body) = response.into_parts();
    // Rejection bodies are in memory, so their frames are ready at once; anything else keeps the
    // status's reason as the detail rather than waiting here.
    let mut text = Vec::new();
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(cx) {
        if let Ok(data) = frame.into_data() {
            text.extend_from_slice(&data);
        }
    }
    let detail = if text.is_empty() {
        parts.status.canonical_reason().unwrap_or("bad request").to_lowercase()
    } else {
        String::from_utf8_lossy(&text).into_owned()
    };
    let kind = ProblemType::of_client_error(parts.status);
    let mut problem = Problem::marty(parts.status, kind, detail).response_for(request_id);
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        problem.headers_mut().insert(header::ALLOW, allow.clone());
    }
    problem
}

fn panic_response(span: &tracing::Span, panic: Box<dyn Any + Send>) -> Response {
    // The panic hook logged it with its backtrace (one JSON line, inside this request's span).
    let message = crate::telemetry::panic_message(&*panic);
    tracing::debug!(parent: span, panic = message, "the request's handler panicked; answering 500");
    Problem::marty(StatusCode::INTERNAL_SERVER_ERROR, ProblemType::Internal, "the request failed unexpectedly")
        .into_response()
}

/// The W3C Trace Context header (<https://www.w3.org/TR/trace-context/#traceparent-header>).
const TRACEPARENT: &str = "traceparent";

/// The trace id of a `traceparent` header (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`),
/// or `None` when it is malformed or all zeros, as the specification requires.
fn trace_id_of(header: &HeaderValue) -> Option<&str> {
    let value = header.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16)
        && hex(flags, 2);
    valid.then_some(trace_id)
}

/// The client's `x-request-id`, when it is one to keep: 1 to 128 characters of letters, digits and
/// `-_.:=+/` (UUIDs, ULIDs, trace ids, base64). Anything else, which could forge or break log lines
/// and headers downstream, is replaced by a generated id.
pub(in crate::service) fn request_id_of(headers: &axum::http::HeaderMap) -> Option<HeaderValue> {
    let id = headers.get(REQUEST_ID)?;
    let safe = |byte: &u8| byte.is_ascii_alphanumeric() || b"-_.:=+/".contains(byte);
    ((1..=128).contains(&id.len()) && id.as_bytes().iter().all(safe)).then(|| id.clone())
}

/// 16 hex digits from a fast random source; unique enough to find a request's lines in the logs.
pub(in crate::service) fn generate_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut value = fastrand::u64(..);
    let mut digits = [0u8; 16];
    for digit in digits.iter_mut().rev() {
        *digit = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
    // One allocation, shared by the request's header and the response's: a value copied from a
    // slice allocates again when it is first cloned.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(digits)).expect("hex digits are a valid header value")
}

/// The method as a bounded label: the standard methods by name, anything else `_OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

thread_local! {
    /// Route labels by template, so a request clones an `Arc` instead of allocating its label.
    static ROUTE_LABELS: RefCell<HashMap<Box<str>, Arc<str>>> = RefCell::new(HashMap::new());
}

fn route_label(template: &str) -> Arc<str> {
    ROUTE_LABELS.with(|labels| {
        let mut labels = labels.borrow_mut();
        if let Some(label) = labels.get(template) {
            return label.clone();
        }
        let label: Arc<str> = Arc::from(template);
        labels.insert(template.into(), label.clone());
        label
    })
}

/// The route label of requests no route matched.
/// An HTTP server span's name, written only when a subscriber records it.
struct SpanName<'a> {
    method: &'static str,
    route: Option<&'a str>,
    rpc: Option<&'a crate::metrics::RpcMethod>,
}

impl std::fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.rpc, self.route) {
            (Some(rpc), _) => write!(f, "{rpc}"),
            (None, Some(route)) => write!(f, "{} {route}", self.method),
            (None, None) => f.write_str(self.method),
        }
    }
}

/// `network.protocol.version`: `1.1`, `2`, ...
fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

fn unmatched() -> Arc<str> {
    route_label("unmatched")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_only_from_well_formed_traceparents() {
        let header = |value: &str| HeaderValue::from_str(value).unwrap();
        let good = header("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(trace_id_of(&good), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id_of(&header(bad)), None, "{bad}");
        }
    }
}
