//! RFC 9457 `application/problem+json` responses: what every error a client can cause or suffer
//! becomes.
//!
//! Each carries `type`, `title`, `status`, `detail` and `instance`, the request id (the same as the
//! `x-request-id` header, so a client's report finds the log lines). Marty's own problems have stable
//! `type` URIs, `urn:marty:problem:<name>` ([`ProblemType`]), and say nothing of the service's
//! insides: which dependency failed, and how, goes to the log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::error::{CallError, Error};

/// An RFC 9457 problem. `type` is `about:blank` unless set (the status says it all), `title` the
/// status's reason unless set; extension members carry what a client may act on.
///
/// ```
/// use marty::axum::http::StatusCode;
/// use marty::service::Problem;
///
/// let problem = Problem::new(StatusCode::FORBIDDEN, "your balance is 30, the order costs 50")
///     .with_type("https://example.com/problems/out-of-credit")
///     .with_title("You do not have enough credit")
///     .with_extension("balance", 30);
/// // A handler returns it as its error: `Result<Json<Order>, Problem>`.
/// # let _ = problem;
/// ```
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    kind: String,
    title: Option<String>,
    detail: String,
    instance: Option<String>,
    retry_after: Option<u64>,
    extensions: Map<String, Value>,
}

/// The problem types Marty answers with itself; each is `urn:marty:problem:<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemType {
    /// 400: the request could not be read (malformed HTTP, JSON or parameters).
    BadRequest,
    /// 401: the request has no credentials, or credentials that are not valid (see
    /// `WWW-Authenticate`).
    Unauthorized,
    /// 403: the caller is known, and lacks the role or scope the route requires.
    Forbidden,
    /// 404: no route matches.
    NotFound,
    /// 405: the route exists for other methods (see `Allow`).
    MethodNotAllowed,
    /// 408: the request body did not arrive within `[http] body_timeout`.
    RequestTimeout,
    /// 413: the body is over `[http] max_body_bytes`.
    PayloadTooLarge,
    /// 414: the URI is too long.
    UriTooLong,
    /// 415: the body's content type is not the one the route reads.
    UnsupportedMediaType,
    /// 422: the body was read but its content is not valid for the route.
    Unprocessable,
    /// 429: the caller is over its rate limit (`[rate_limit]`); see `Retry-After`.
    TooManyRequests,
    /// 431: the request head is over `[http] max_header_bytes`.
    HeadersTooLarge,
    /// 500: the request failed unexpectedly (a handler panicked, the configuration is invalid).
    Internal,
    /// 503: the service cannot take the request now (a dependency shed load or its breaker is
    /// open); see `Retry-After`.
    Unavailable,
    /// 504: the request did not complete in time.
    Timeout,
}

impl ProblemType {
    /// The `type` URI.
    pub fn uri(self) -> &'static str {
        match self {
            ProblemType::BadRequest => "urn:marty:problem:bad-request",
            ProblemType::Unauthorized => "urn:marty:problem:unauthorized",
            ProblemType::Forbidden => "urn:marty:problem:forbidden",
            ProblemType::NotFound => "urn:marty:problem:not-found",
            ProblemType::MethodNotAllowed => "urn:marty:problem:method-not-allowed",
            ProblemType::RequestTimeout => "urn:marty:problem:request-timeout",
            ProblemType::PayloadTooLarge => "urn:marty:problem:payload-too-large",
            ProblemType::UriTooLong => "urn:marty:problem:uri-too-long",
            ProblemType::UnsupportedMediaType => "urn:marty:problem:unsupported-media-type",
            ProblemType::Unprocessable => "urn:marty:problem:unprocessable",
            ProblemType::TooManyRequests => "urn:marty:problem:too-many-requests",
            ProblemType::HeadersTooLarge => "urn:marty:problem:headers-too-large",
            ProblemType::Internal => "urn:marty:problem:internal",
            ProblemType::Unavailable => "urn:marty:problem:unavailable",
            ProblemType::Timeout => "urn:marty:problem:timeout",
        }
    }

    /// The type Marty uses for a client error with `status` (axum's rejections).
    pub(crate) fn of_client_error(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => ProblemType::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ProblemType::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ProblemType::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemType::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => ProblemType::Unprocessable,
            StatusCode::TOO_MANY_REQUESTS => ProblemType::TooManyRequests,
            _ => ProblemType::BadRequest,
        }
    }
}

/// The members a problem always has; extensions cannot replace them.
const STANDARD_MEMBERS: [&str; 5] = ["type", "title", "status", "detail", "instance"];

impl Problem {
    /// A problem with `status` and a human-readable `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status,
            kind: "about:blank".to_owned(),
            title: None,
            detail: detail.into(),
            instance: None,
            retry_after: None,
            extensions: Map::new(),
        }
    }

    /// One of Marty's own problems.
    pub(crate) fn marty(status: StatusCode, kind: ProblemType, detail: impl Into<String>) -> Self {
        Problem::new(status, detail).with_type(kind.uri())
    }

    /// Sets the `type` URI: what kind of problem this is, the same for every occurrence.
    pub fn with_type(mut self, uri: impl Into<String>) -> Self {
        self.kind = uri.into();
        self
    }

    /// Sets the `title`: a short summary of the type (the status's reason by default).
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Adds an extension member. The standard members (`type`, `title`, `status`, `detail`,
    /// `instance`) cannot be replaced this way; use their setters.
    pub fn with_extension(mut self, name: impl Into<String>, value: impl serde::Serialize) -> Self {
        let name = name.into();
        if STANDARD_MEMBERS.contains(&name.as_str()) {
            tracing::warn!(member = %name, "a problem's standard member cannot be set as an extension; ignored");
            return self;
        }
        match serde_json::to_value(value) {
            Ok(value) => {
                self.extensions.insert(name, value);
            }
            Err(error) => tracing::warn!(member = %name, %error, "a problem extension does not serialise; left out"),
        }
        self
    }

    /// Sets the `instance`: this occurrence. The service sets it to the request id when unset.
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Adds a `Retry-After` header (seconds, rounded up, at least 1).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body, as JSON text, members in the RFC's order and extensions after them.
    pub fn to_json(&self) -> String {
        let string = |text: &str| Value::from(text).to_string();
        let title = self.title.as_deref().or(self.status.canonical_reason()).unwrap_or("Error");
        let mut body = format!(
            r#"{{"type":{},"title":{},"status":{},"detail":{}"#,
            string(&self.kind),
            string(title),
            self.status.as_u16(),
            string(&self.detail)
        );
        if let Some(instance) = &self.instance {
            body.push_str(&format!(r#","instance":{}"#, string(instance)));
        }
        for (name, value) in &self.extensions {
            body.push_str(&format!(",{}:{value}", string(name)));
        }
        body.push('}');
        body
    }

    /// The response, with `instance` set to `request_id` unless the problem has one.
    pub(crate) fn response_for(mut self, request_id: &HeaderValue) -> Response {
        if self.instance.is_none() {
            self.instance = request_id.to_str().ok().map(str::to_owned);
        }
        self.render()
    }

    fn render(self) -> Response {
        let mut response = (self.status, self.to_json()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Rendered at once; the problem rides along in the response's extensions so that the service's
/// layer, which knows the request id, can fill in `instance`.
impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let unfinished = self.instance.is_none().then(|| PendingInstance(self.clone()));
        let mut response = self.render();
        if let Some(unfinished) = unfinished {
            response.extensions_mut().insert(unfinished);
        }
        response
    }
}

/// A problem response rendered before its request id was known.
#[derive(Debug, Clone)]
pub(crate) struct PendingInstance(pub(crate) Problem);

/// Shed load and open breakers answer 503 with `Retry-After`; timeouts 504; configuration 500. The
/// detail says what the client can do; the dependency, its limits and its timeout stay in the log.
impl From<&Error> for Problem {
    fn from(error: &Error) -> Self {
        let (status, kind, detail) = match error {
            Error::Rejected { .. } | Error::CircuitOpen { .. } | Error::InjectedFault { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemType::Unavailable,
                "the service cannot take this request now; try again later",
            ),
            Error::Timeout { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, ProblemType::Timeout, "the request did not complete in time")
            }
            Error::Config(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ProblemType::Internal, "the request failed unexpectedly")
            }
        };
        let problem = Problem::marty(status, kind, detail);
        match error.retry_after() {
            Some(wait) => problem.retry_after(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
            None => problem,
        }
    }
}

/// A wrapped call's error, so a handler can `?` it: the framework's errors answer as [`Error`]'s do
/// (503, 504); the call's own error is logged (in the request's span, so with its id) and answers a
/// 500 that says nothing of it.
impl<E: std::fmt::Display> From<CallError<E>> for Problem {
    fn from(error: CallError<E>) -> Self {
        match error {
            CallError::Resilience(error) => {
                error.log_for_operators();
                Problem::from(&error)
            }
            CallError::Inner(error) => {
                tracing::error!(%error, "a call failed; answering 500");
                Problem::marty(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ProblemType::Internal,
                    "the request failed unexpectedly",
                )
            }
        }
    }
}

impl<E: std::fmt::Display> IntoResponse for CallError<E> {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.log_for_operators();
        Problem::from(&self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_users_problem_has_its_type_title_and_extensions_but_never_loses_a_standard_member() {
        let problem = Problem::new(StatusCode::FORBIDDEN, "your balance is 30, the order costs 50")
            .with_type("https://example.com/problems/out-of-credit")
            .with_title("You do not have enough credit")
            .with_extension("balance", 30)
            .with_extension("accounts", ["/account/12345", "/account/67890"])
            .with_extension("status", 200)
            .instance("req-1");
        assert_eq!(
            problem.to_json(),
            r#"{"type":"https://example.com/problems/out-of-credit","title":"You do not have enough credit","status":403,"detail":"your balance is 30, the order costs 50","instance":"req-1","accounts":["/account/12345","/account/67890"],"balance":30}"#
        );
    }

    #[test]
    fn framework_errors_tell_clients_what_to_do_and_nothing_of_the_insides() {
        let full = Error::Rejected { dependency: Arc::from("orders_db"), max_concurrent: 10 };
        let slow = Error::Timeout { dependency: Arc::from("orders_db"), timeout: Duration::from_secs(2) };
        for (error, status, kind) in
            [(full, 503, "urn:marty:problem:unavailable"), (slow, 504, "urn:marty:problem:timeout")]
        {
            let body = Problem::from(&error).to_json();
            assert!(body.contains(&format!(r#""status":{status}"#)) && body.contains(kind), "{body}");
            assert!(!body.contains("orders_db") && !body.contains("10") && !body.contains("2s"), "{body}");
        }
    }

    #[test]
    fn a_wrapped_calls_error_answers_for_the_framework_or_as_an_internal_error_that_says_nothing() {
        let open: CallError<std::io::Error> = CallError::Resilience(Error::CircuitOpen {
            dependency: Arc::from("orders_db"),
            retry_after: Duration::from_secs(3),
        });
        let body = Problem::from(open).to_json();
        assert!(body.contains(r#""status":503"#) && body.contains("urn:marty:problem:unavailable"), "{body}");

        let failed: CallError<std::io::Error> =
            CallError::Inner(std::io::Error::other("password authentication failed"));
        let response = failed.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let problem = &response.extensions().get::<PendingInstance>().expect("the problem rides along").0;
        let body = problem.to_json();
        assert!(body.contains("urn:marty:problem:internal") && !body.contains("password"), "{body}");
    }
}
