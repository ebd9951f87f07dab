use marty::axum::extract::Json;
use marty::axum::response::{IntoResponse, Response};

#[derive(serde::Serialize)]
struct Order {
    id: String,
}

#[derive(Debug)]
struct OrderError;

impl IntoResponse for OrderError {
    fn into_response(self) -> Response {
        marty::axum::http::StatusCode::NOT_FOUND.into_response()
    }
}

struct Orders;

#[marty::service(config = "../../../../ui-tests/described.toml")]
impl Orders {
    #[marty::get("/orders/{id}")]
    async fn get(&self) -> Json<Order> {
        Json(Order { id: "1".into() })
    }

    #[marty::get("/orders/{id}/status")]
    async fn status(&self) -> Result<String, OrderError> {
        Ok("open".into())
    }
}

fn main() {}
