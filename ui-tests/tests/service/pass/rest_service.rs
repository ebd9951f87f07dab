#![deny(warnings)]
//! Every route attribute, extractors, a `#[database_call]` method inside the service, and the
//! service's arguments; compiled with warnings denied and its router built.

use std::sync::Arc;

use marty::axum::extract::{Json, Path, Query};
use marty::service::Routes;

#[derive(Debug)]
struct AppError(marty::Error);

impl From<marty::Error> for AppError {
    fn from(error: marty::Error) -> Self {
        AppError(error)
    }
}

impl marty::Classify for AppError {
    fn classify(&self) -> marty::ErrorClass {
        self.0.classify()
    }
}

impl marty::axum::response::IntoResponse for AppError {
    fn into_response(self) -> marty::axum::response::Response {
        self.0.into_response()
    }
}

struct Orders {
    prefix: String,
}

#[marty::service(name = "orders")]
impl Orders {
    #[get("/orders/{id}")]
    async fn get_order(&self, Path(id): Path<u64>) -> Result<String, AppError> {
        Ok(format!("{}{}", self.prefix, self.load(id).await?))
    }

    #[post("/orders")]
    async fn create(&self, Json(body): Json<Vec<u8>>) -> String {
        format!("{} bytes", body.len())
    }

    #[put("/orders/{id}")]
    async fn replace(&self, Path(id): Path<u64>, Json(_body): Json<Vec<u8>>) -> String {
        id.to_string()
    }

    #[patch("/orders/{id}")]
    async fn amend(&self, Path(id): Path<u64>) -> String {
        id.to_string()
    }

    #[delete("/orders/{id}")]
    async fn remove(&self, Path(_id): Path<u64>) {}

    #[get("/search")]
    async fn search(&self, Query(query): Query<Vec<(String, String)>>) -> String {
        query.len().to_string()
    }

    #[get("/files/{*rest}")]
    async fn files(&self, Path(rest): Path<String>) -> String {
        rest
    }

    #[marty::database_call(dependency = "orders_db")]
    async fn load(&self, id: u64) -> Result<u64, AppError> {
        Ok(id)
    }
}

fn main() {
    let _router = Arc::new(Orders { prefix: "order ".into() }).routes();
    assert_eq!(<Orders as Routes>::NAME, "orders");
}
