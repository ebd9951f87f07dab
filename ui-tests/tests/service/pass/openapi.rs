//! Every kind of argument and answer the OpenAPI description reads, and `#[undescribed]`.

use marty::axum::extract::{Json, Path, Query};
use marty::axum::http::{HeaderMap, StatusCode};
use marty::axum::response::IntoResponse;
use marty::security::Principal;
use marty::service::Problem;

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct NewOrder {
    item: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct Order {
    id: String,
    lines: Vec<Line>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct Line {
    item: String,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
struct Page {
    after: Option<String>,
}

#[derive(Debug)]
struct OrderError;

impl IntoResponse for OrderError {
    fn into_response(self) -> marty::axum::response::Response {
        StatusCode::NOT_FOUND.into_response()
    }
}

impl marty::openapi::DescribeProblems for OrderError {
    const STATUSES: &'static [u16] = &[404];
}

struct Orders;

#[marty::service(config = "../../../../ui-tests/described.toml")]
impl Orders {
    /// Places an order.
    #[marty::post("/orders")]
    #[marty::authorize(roles = ["clerk"])]
    async fn place(&self, _caller: Principal, _headers: HeaderMap, Json(new): Json<NewOrder>) -> Result<(StatusCode, Json<Order>), OrderError> {
        Ok((StatusCode::CREATED, Json(Order { id: new.item, lines: Vec::new() })))
    }

    #[marty::get("/orders")]
    #[marty::public]
    async fn list(&self, Query(_page): Query<Page>) -> Result<Json<Vec<Order>>, Problem> {
        Ok(Json(Vec::new()))
    }

    #[marty::get("/orders/{id}/lines/{line}")]
    async fn line(&self, Path((_id, _line)): Path<(String, u32)>) -> Result<Json<Line>, OrderError> {
        Err(OrderError)
    }

    #[marty::delete("/orders/{id}")]
    async fn cancel(&self, Path(_id): Path<String>) -> StatusCode {
        StatusCode::NO_CONTENT
    }

    #[marty::get("/orders/{id}/page")]
    #[marty::undescribed]
    async fn page(&self) -> impl IntoResponse {
        "<html></html>"
    }
}

fn main() {}
