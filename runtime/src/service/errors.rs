//! Unknown routes answer with problem+json (rejections and panics are handled in [`super::layer`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::problem::{Problem, ProblemType};

/// Unknown routes. The path is not echoed back: a client's input reflected in a response is how
/// content injection starts.
pub(crate) async fn not_found() -> Response {
    Problem::marty(StatusCode::NOT_FOUND, ProblemType::NotFound, "no route matches the request").into_response()
}
