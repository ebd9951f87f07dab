//! Each request on a connection: counted in flight while it runs and while its response is sent, a
//! declared body over `max_body_bytes` refused before any of it is read (413), and a body that has
//! not fully arrived within `body_timeout` cut off (408). Both answers close the connection: what the
//! client is still sending is not worth reading.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use tower_service::Service;

use super::connection::Activity;
use super::Limits;
use crate::service::problem::{Problem, ProblemType};
use crate::service::ClientCertificate;

/// The longest request URI served (as nginx's default line buffer): routes and query strings are
/// short, and longer ones are how caches and logs get flooded.
const MAX_URI_BYTES: usize = 8192;

/// The hyper service of one connection, around the application's tower service.
#[derive(Debug, Clone)]
pub(super) struct Requests<S> {
    service: S,
    /// The client's address, given to every request as `ConnectInfo` (rate limits key on it).
    peer: ConnectInfo<SocketAddr>,
    /// The certificate the client presented in the TLS handshake, given to every request.
    client_certificate: Option<ClientCertificate>,
    activity: Arc<Activity>,
    limits: Arc<Limits>,
}

impl<S> Requests<S> {
    pub(super) fn new(
        service: S,
        peer: SocketAddr,
        client_certificate: Option<ClientCertificate>,
        activity: Arc<Activity>,
        limits: Arc<Limits>,
    ) -> Self {
        Requests { service, peer: ConnectInfo(peer), client_certificate, activity, limits }
    }
}

/// One request in flight on its connection, until dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.request_started();
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for Requests<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = hyper::Response<ResponseBody>;
    type Error = Infallible;
    type Future = RequestFuture<S::Future>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = Some(InFlight::new(&self.activity));
        let uri = request.uri();
        let uri_bytes = uri.path_and_query().map_or(0, |path| path.as_str().len())
            + uri.authority().map_or(0, |authority| authority.as_str().len());
        if uri_bytes > MAX_URI_BYTES {
            let detail = format!("the request URI is longer than {MAX_URI_BYTES} bytes");
            let refused = refusal(&request, StatusCode::URI_TOO_LONG, ProblemType::UriTooLong, &detail);
            self.activity.linger_on_close();
            return RequestFuture { inner: None, refused: Some(refused), in_flight, body_timed_out: None };
        }
        let declared =
            request.headers().get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse().ok());
        if declared.is_some_and(|length: u64| length > self.limits.max_body_bytes as u64) {
            let detail = format!("the request body is larger than {} bytes", self.limits.max_body_bytes);
            let refused = refusal(&request, StatusCode::PAYLOAD_TOO_LARGE, ProblemType::PayloadTooLarge, &detail);
            self.activity.linger_on_close();
            return RequestFuture { inner: None, refused: Some(refused), in_flight, body_timed_out: None };
        }
        // gRPC streams are long-lived by design: HTTP/2 pings and the idle timeout watch them.
        let streaming = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let mut request = request;
        request.extensions_mut().insert(self.peer);
        if let Some(certificate) = &self.client_certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        let (request, body_timed_out) = if request.body().is_end_stream() || streaming {
            (request.map(Body::new), None)
        } else {
            let timed_out = Arc::new(AtomicBool::new(false));
            let deadline = tokio::time::sleep(self.limits.body_timeout);
            let flag = timed_out.clone();
            (request.map(|body| Body::new(TimedBody { body, deadline, timed_out: flag })), Some(timed_out))
        };
        let mut service = self.service.clone();
        RequestFuture { inner: Some(service.call(request)), refused: None, in_flight, body_timed_out }
    }
}

/// An answer given without calling the application, with the client's request id when it sent a
/// good one.
fn refusal<B>(request: &hyper::Request<B>, status: StatusCode, kind: ProblemType, detail: &str) -> Response {
    let request_id = crate::service::layer::request_id_of(request.headers())
        .unwrap_or_else(crate::service::layer::generate_request_id);
    closing_problem(request_id, status, kind, detail)
}

/// A problem that ends the connection (what the client is still sending is not read), carrying
/// `request_id` as its `instance` and its `x-request-id`.
fn closing_problem(request_id: HeaderValue, status: StatusCode, kind: ProblemType, detail: &str) -> Response {
    let mut response =
        Problem::marty(status, kind, detail).instance(request_id.to_str().unwrap_or_default()).into_response();
    response.headers_mut().insert(crate::service::REQUEST_ID, request_id);
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

pin_project_lite::pin_project! {
    /// The future of [`Requests`].
    pub(super) struct RequestFuture<F> {
        #[pin]
        inner: Option<F>,
        refused: Option<Response>,
        in_flight: Option<InFlight>,
        body_timed_out: Option<Arc<AtomicBool>>,
    }
}

impl<F> Future for RequestFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<hyper::Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match (this.refused.take(), this.inner.as_pin_mut()) {
            (Some(refused), _) => refused,
            (None, Some(inner)) => {
                let Ok(response) = ready!(inner.poll(cx));
                match this.body_timed_out.as_deref().is_some_and(|flag| flag.load(Ordering::Acquire)) {
                    true => {
                        if let Some(InFlight(activity)) = this.in_flight.as_ref() {
                            activity.linger_on_close();
                        }
                        body_timeout(response)
                    }
                    false => response,
                }
            }
            (None, None) => unreachable!("RequestFuture polled after completion"),
        };
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| ResponseBody { body, _in_flight: in_flight })))
    }
}

/// The application's answer to a request whose body ran out of time, replaced by a 408 that keeps
/// its request id.
fn body_timeout(answered: Response) -> Response {
    let request_id = answered
        .headers()
        .get(crate::service::REQUEST_ID)
        .cloned()
        .unwrap_or_else(crate::service::layer::generate_request_id);
    let detail = "the request body did not arrive in time";
    closing_problem(request_id, StatusCode::REQUEST_TIMEOUT, ProblemType::RequestTimeout, detail)
}

pin_project_lite::pin_project! {
    /// A request body that fails once its deadline passes.
    struct TimedBody {
        #[pin]
        body: Incoming,
        #[pin]
        deadline: tokio::time::Sleep,
        timed_out: Arc<AtomicBool>,
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        ready!(this.deadline.poll(cx));
        this.timed_out.store(true, Ordering::Release);
        Poll::Ready(Some(Err("the request body did not arrive within `[http] body_timeout`".into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until hyper has sent it.
    pub(super) struct ResponseBody {
        #[pin]
        body: Body,
        _in_flight: Option<InFlight>,
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
