//! Errors the HTTP layer itself answers: unknown routes, extractor rejections (bad JSON, body too
//! large, wrong content type) and panics in handlers all become problem+json; none of them takes the
//! process down.

use std::any::Any;

use axum::extract::Request;
use axum::http::{header, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

/// Unknown routes.
pub(crate) async fn not_found(uri: Uri) -> Response {
    Problem::new(StatusCode::NOT_FOUND, format!("no route for `{}`", uri.path())).into_response()
}

/// The statuses axum's extractors reject requests with, as plain text.
const REJECTION_STATUSES: [StatusCode; 5] = [
    StatusCode::BAD_REQUEST,
    StatusCode::METHOD_NOT_ALLOWED,
    StatusCode::PAYLOAD_TOO_LARGE,
    StatusCode::UNSUPPORTED_MEDIA_TYPE,
    StatusCode::UNPROCESSABLE_ENTITY,
];

/// Rewrites plain-text client errors (axum's extractor rejections: malformed JSON, missing fields,
/// oversized bodies, wrong content type) as problem+json with the same status and message. A handler
/// that wants another shape returns JSON or a [`Problem`] itself, which passes through untouched.
pub(crate) async fn rejections_as_problems(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    // Rejections are plain text; a 405 from the router has no body at all.
    let from_axum = content_type.is_none_or(|value| value.starts_with("text/plain"));
    if !from_axum || !REJECTION_STATUSES.contains(&response.status()) {
        return response;
    }
    let status = response.status();
    let detail = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
        // A 405's `Allow` header is added by the router around this layer and still reaches the client.
        _ => status.canonical_reason().unwrap_or("bad request").to_lowercase(),
    };
    Problem::new(status, detail).into_response()
}

/// A panic in a handler: logged, answered with 500, and the server keeps serving.
pub(crate) fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a non-string panic payload");
    tracing::error!(panic = message, "a request handler panicked");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "the request failed unexpectedly").into_response()
}
