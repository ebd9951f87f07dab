//! Unknown routes answer with problem+json (rejections and panics are handled in [`super::layer`]).

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

/// Unknown routes.
pub(crate) async fn not_found(uri: Uri) -> Response {
    Problem::new(StatusCode::NOT_FOUND, format!("no route for `{}`", uri.path())).into_response()
}
