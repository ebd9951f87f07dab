//! [`TestClient`]: HTTP/1.1 requests to a test service's routes, one connection each.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// The largest response body a test reads.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A client of one test service.
#[derive(Debug, Clone)]
pub struct TestClient {
    addr: SocketAddr,
}

/// A request being built: `.header(..)`, `.json(..)` or `.body(..)`, then `.send().await`.
#[derive(Debug)]
#[must_use = "a request does nothing until sent"]
pub struct TestRequest {
    addr: SocketAddr,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct TestResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl TestClient {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        TestClient { addr }
    }

    /// Where the service listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A request with `method` to `path` (with its query, e.g. `/orders?limit=5`).
    pub fn request(&self, method: Method, path: &str) -> TestRequest {
        TestRequest { addr: self.addr, method, path: path.to_owned(), headers: HeaderMap::new(), body: Bytes::new() }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> TestRequest {
        self.request(Method::GET, path)
    }

    /// `POST path`.
    pub fn post(&self, path: &str) -> TestRequest {
        self.request(Method::POST, path)
    }

    /// `PUT path`.
    pub fn put(&self, path: &str) -> TestRequest {
        self.request(Method::PUT, path)
    }

    /// `PATCH path`.
    pub fn patch(&self, path: &str) -> TestRequest {
        self.request(Method::PATCH, path)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> TestRequest {
        self.request(Method::DELETE, path)
    }
}

impl TestRequest {
    /// Adds a header. Panics on a name or value HTTP does not allow: a mistake in the test.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::try_from(name).unwrap_or_else(|error| panic!("header name `{name}`: {error}"));
        let value = HeaderValue::try_from(value).unwrap_or_else(|error| panic!("header `{name}` value: {error}"));
        self.headers.append(name, value);
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header(header::AUTHORIZATION.as_str(), &format!("Bearer {token}"))
    }

    /// A JSON body (and its content type).
    pub fn json(mut self, body: &impl serde::Serialize) -> Self {
        self.body = serde_json::to_vec(body).expect("the test's body serializes to JSON").into();
        self.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self
    }

    /// A body as it is (set the content type with [`Self::header`]).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the request on a new connection and reads the response. Panics when the service
    /// cannot be reached or answers no HTTP: what the test is about has already failed.
    pub async fn send(self) -> TestResponse {
        let what = format!("{} {}", self.method, self.path);
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .unwrap_or_else(|error| panic!("{what}: cannot connect to the test service: {error}"));
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap_or_else(|error| panic!("{what}: HTTP handshake: {error}"));
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(self.method)
            .uri(&self.path)
            .header(header::HOST, self.addr.to_string())
            .body(Body::from(self.body))
            .unwrap_or_else(|error| panic!("{what}: {error}"));
        request.headers_mut().extend(self.headers);
        let response = sender.send_request(request).await.unwrap_or_else(|error| panic!("{what}: {error}"));
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(Body::new(body), MAX_BODY)
            .await
            .unwrap_or_else(|error| panic!("{what}: reading the response body: {error}"));
        TestResponse { status: parts.status, headers: parts.headers, body }
    }
}

impl TestResponse {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// One header's value, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body.
    pub fn bytes(&self) -> &Bytes {
        &self.body
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body read as JSON into `T`. Panics with the body when it is not that.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!("the {} response's body is not the JSON expected ({error}): {}", self.status, self.text())
        })
    }
}
