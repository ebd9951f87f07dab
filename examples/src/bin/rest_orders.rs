//! A REST service: orders in SQLite behind `#[database_call]`, served by `#[service]` with health,
//! readiness, metrics, problem+json errors and graceful shutdown.
//!
//! Run it with `cargo run -p marty-examples --bin rest_orders`, then:
//!
//! ```sh
//! curl -s localhost:8080/healthz
//! curl -s -XPOST localhost:8080/orders -H 'content-type: application/json' -d '{"item":"book","quantity":2}'
//! curl -s localhost:8080/orders/1
//! curl -s localhost:8080/readyz
//! curl -s localhost:8080/metrics
//! ```

use std::process::ExitCode;
use std::time::Duration;

use marty::axum::extract::{Json, Path};
use marty::axum::http::StatusCode;
use marty::axum::response::{IntoResponse, Response};
use marty::service::Problem;
use marty::{database_call, service, Classify, ErrorClass};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

#[derive(Debug, Serialize)]
struct Order {
    id: i64,
    item: String,
    quantity: i64,
}

#[derive(Debug, Deserialize)]
struct NewOrder {
    item: String,
    quantity: i64,
}

#[derive(Debug)]
enum AppError {
    NotFound(i64),
    Invalid(&'static str),
    Database(sqlx::Error),
    Resilience(marty::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        AppError::Database(error)
    }
}

impl From<marty::Error> for AppError {
    fn from(error: marty::Error) -> Self {
        AppError::Resilience(error)
    }
}

impl Classify for AppError {
    fn classify(&self) -> ErrorClass {
        match self {
            AppError::NotFound(_) | AppError::Invalid(_) => ErrorClass::Expected,
            AppError::Database(error) => error.classify(),
            AppError::Resilience(error) => error.classify(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::NotFound(id) => Problem::new(StatusCode::NOT_FOUND, format!("no order {id}")).into_response(),
            AppError::Invalid(why) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, why).into_response(),
            AppError::Database(error) => {
                marty::tracing::error!(%error, "database error");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "the order store failed").into_response()
            }
            AppError::Resilience(error) => error.into_response(),
        }
    }
}

struct Orders {
    pool: SqlitePool,
}

#[service]
impl Orders {
    #[post("/orders")]
    async fn create_order(&self, Json(new): Json<NewOrder>) -> Result<(StatusCode, Json<Order>), AppError> {
        if new.quantity <= 0 {
            return Err(AppError::Invalid("quantity must be positive"));
        }
        Ok((StatusCode::CREATED, Json(self.insert(&new).await?)))
    }

    #[get("/orders/{id}")]
    async fn get_order(&self, Path(id): Path<i64>) -> Result<Json<Order>, AppError> {
        self.find(id).await?.map(Json).ok_or(AppError::NotFound(id))
    }

    /// A slow report, to watch graceful shutdown let in-flight requests finish.
    #[get("/reports/slow")]
    async fn slow_report(&self) -> &'static str {
        tokio::time::sleep(Duration::from_millis(800)).await;
        "report done"
    }

    /// Proves a panicking handler costs one 500, not the process.
    #[get("/reports/broken")]
    async fn broken_report(&self) -> &'static str {
        panic!("the report generator has a bug")
    }

    #[database_call(dependency = "orders_db")]
    async fn insert(&self, new: &NewOrder) -> Result<Order, AppError> {
        let (id, item, quantity) =
            sqlx::query_as("insert into orders (item, quantity) values (?, ?) returning id, item, quantity")
                .bind(&new.item)
                .bind(new.quantity)
                .fetch_one(&self.pool)
                .await?;
        Ok(Order { id, item, quantity })
    }

    #[database_call(dependency = "orders_db", operation = "find_order")]
    async fn find(&self, id: i64) -> Result<Option<Order>, AppError> {
        let row: Option<(i64, String, i64)> = sqlx::query_as("select id, item, quantity from orders where id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(id, item, quantity)| Order { id, item, quantity }))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let server = match marty::service::server_with(|registry| async move {
        let url = registry.dependency("orders_db").and_then(|db| db.config().url.clone()).unwrap_or_default();
        let pool = SqlitePool::connect(&url).await?;
        sqlx::query(
            "create table if not exists orders (id integer primary key, item text not null, quantity integer not null)",
        )
        .execute(&pool)
        .await?;
        Ok::<_, sqlx::Error>(Orders { pool })
    })
    .await
    {
        Ok(server) => server,
        Err(error) => {
            eprintln!("orders: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("orders: serving on http://{}", server.configured_addr());
    match server.serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("orders: {error}");
            ExitCode::FAILURE
        }
    }
}
