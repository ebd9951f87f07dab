//! RFC 9457 `application/problem+json` responses: what every error a client can cause or suffer becomes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// An RFC 9457 problem: `type` is `about:blank` (the status says it all), `title` the status's reason,
/// `detail` this occurrence.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    detail: String,
    retry_after: Option<u64>,
}

impl Problem {
    /// A problem with `status` and a human-readable `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem { status, detail: detail.into(), retry_after: None }
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
}

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Shed load and open breakers answer 503 with `Retry-After`; timeouts 504; configuration 500.
impl From<&Error> for Problem {
    fn from(error: &Error) -> Self {
        let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let detail = match error {
            // The configuration's errors are for operators' logs, not for clients.
            Error::Config(_) => "the service is misconfigured".to_owned(),
            other => other.to_string(),
        };
        let problem = Problem::new(status, detail);
        match error.retry_after() {
            Some(wait) => problem.retry_after(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
            None => problem,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Config(errors) = &self {
            tracing::error!(%errors, "request failed on invalid configuration");
        }
        Problem::from(&self).into_response()
    }
}
