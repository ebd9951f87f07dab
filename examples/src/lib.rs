//! What the example services share: the orders store (SQLite behind `#[database_call]`), its errors,
//! and the gRPC types generated from `proto/orders.proto`.

use marty::axum::http::StatusCode;
use marty::axum::response::{IntoResponse, Response};
use marty::service::Problem;
use std::future::Future;
use std::process::ExitCode;

use marty::service::Routes;
use marty::{database_call, Classify, DependencyRegistry, ErrorClass};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;

pub mod store;

/// The gRPC API, generated at build time.
pub mod proto {
    tonic::include_proto!("orders.v1");

    /// The encoded descriptors of the API, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/orders_descriptor.bin"));
}

/// An order.
#[derive(Debug, Clone, Serialize)]
pub struct Order {
    pub id: i64,
    pub item: String,
    pub quantity: i64,
}

/// Published through the outbox when an order is stored, in the same transaction.
#[derive(Debug, Clone, Serialize, Deserialize, marty::Event)]
#[event(topic = "orders.placed")]
pub struct OrderPlaced {
    #[event(key)]
    pub order_id: i64,
    pub item: String,
    pub quantity: i64,
}

/// What the audit consumer recorded for an order.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub order_id: i64,
    pub item: String,
    /// Times the consumer's effect was applied: the inbox keeps it at 1 whatever the redeliveries.
    pub applied: i64,
}

/// What a client sends to create an order.
#[derive(Debug, Deserialize)]
pub struct NewOrder {
    pub item: String,
    pub quantity: i64,
}

/// Everything that can go wrong with an order.
#[derive(Debug)]
pub enum AppError {
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

impl From<AppError> for tonic::Status {
    fn from(error: AppError) -> Self {
        match error {
            AppError::NotFound(id) => tonic::Status::not_found(format!("no order {id}")),
            AppError::Invalid(why) => tonic::Status::invalid_argument(why),
            AppError::Database(error) => {
                marty::tracing::error!(%error, "database error");
                tonic::Status::internal("the order store failed")
            }
            AppError::Resilience(error) => error.into(),
        }
    }
}

impl From<Order> for proto::Order {
    fn from(order: Order) -> Self {
        proto::Order { id: order.id, item: order.item, quantity: order.quantity }
    }
}

/// Orders in SQLite; every query goes through the `orders_db` dependency's policies.
#[derive(Debug, Clone)]
pub struct OrderStore {
    pool: AnyPool,
}

impl OrderStore {
    /// Connects to `[dependencies.orders_db] url` (SQLite by default, PostgreSQL by configuration
    /// alone), creates the tables if needed, and hands the pool to Marty for the inbox; Marty's own
    /// tables are created when the relay connects.
    pub async fn open(registry: &DependencyRegistry) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let url = registry.dependency("orders_db").and_then(|db| db.config().url).unwrap_or_default();
        let pool = AnyPool::connect(&url).await?;
        let id = if url.starts_with("postgres") { "bigserial" } else { "integer" };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "create table if not exists orders (id {id} primary key, item text not null, quantity bigint not null);
             create table if not exists order_audit (order_id bigint primary key, item text not null, applied bigint not null);"
        )))
        .execute(&pool)
        .await?;
        marty::store::get("orders_db").await?;
        marty::store::register_pool("orders_db", pool.clone());
        Ok(OrderStore { pool })
    }

    /// The audit consumer's effect, in its inbox transaction.
    pub async fn record_audit(tx: &mut sqlx::AnyConnection, event: &OrderPlaced) -> Result<(), sqlx::Error> {
        sqlx::query(
            "insert into order_audit (order_id, item, applied) values ($1, $2, 1)
             on conflict (order_id) do update set applied = order_audit.applied + 1",
        )
        .bind(event.order_id)
        .bind(&event.item)
        .execute(tx)
        .await
        .map(drop)
    }

    /// What the audit consumer recorded for order `id`, if it has handled its event yet.
    pub async fn audit(&self, id: i64) -> Result<AuditEntry, AppError> {
        let row: Option<(i64, String, i64)> =
            sqlx::query_as("select order_id, item, applied from order_audit where order_id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let (order_id, item, applied) = row.ok_or(AppError::NotFound(id))?;
        Ok(AuditEntry { order_id, item, applied })
    }

    /// Stores a new order.
    pub async fn create(&self, new: &NewOrder) -> Result<Order, AppError> {
        if new.quantity <= 0 {
            return Err(AppError::Invalid("quantity must be positive"));
        }
        self.insert(new).await
    }

    /// The order with this id, or `NotFound`.
    pub async fn get(&self, id: i64) -> Result<Order, AppError> {
        self.find(id).await?.ok_or(AppError::NotFound(id))
    }

    /// `CreateOrder` for the gRPC services.
    pub async fn create_rpc(
        &self,
        request: tonic::Request<proto::CreateOrderRequest>,
    ) -> Result<tonic::Response<proto::Order>, tonic::Status> {
        let request = request.into_inner();
        let order = self.create(&NewOrder { item: request.item, quantity: request.quantity }).await?;
        Ok(tonic::Response::new(order.into()))
    }

    /// `GetOrder` for the gRPC services.
    pub async fn get_rpc(
        &self,
        request: tonic::Request<proto::GetOrderRequest>,
    ) -> Result<tonic::Response<proto::Order>, tonic::Status> {
        Ok(tonic::Response::new(self.get(request.into_inner().id).await?.into()))
    }

    /// The order and its `OrderPlaced` event, committed together.
    #[database_call(dependency = "orders_db")]
    async fn insert(&self, new: &NewOrder) -> Result<Order, AppError> {
        let mut tx = self.pool.begin().await?;
        let (id, item, quantity) =
            sqlx::query_as("insert into orders (item, quantity) values ($1, $2) returning id, item, quantity")
                .bind(&new.item)
                .bind(new.quantity)
                .fetch_one(&mut *tx)
                .await?;
        marty::outbox::publish(&mut tx, &OrderPlaced { order_id: id, item: new.item.clone(), quantity }).await?;
        tx.commit().await?;
        Ok(Order { id, item, quantity })
    }

    #[database_call(dependency = "orders_db", operation = "find_order")]
    async fn find(&self, id: i64) -> Result<Option<Order>, AppError> {
        let row: Option<(i64, String, i64)> = sqlx::query_as("select id, item, quantity from orders where id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(id, item, quantity)| Order { id, item, quantity }))
    }
}

/// Why an example could not build its state: its store, or its `[app]` settings.
pub type StartupError = Box<dyn std::error::Error + Send + Sync>;

/// Each example's `main`: builds the service's state from its configuration, serves it until
/// SIGTERM or SIGINT, and exits non-zero with the reason when the configuration is invalid or the
/// store cannot be opened.
pub async fn run<S, F, Fut>(build: F) -> ExitCode
where
    S: Routes,
    F: FnOnce(&'static DependencyRegistry) -> Fut,
    Fut: Future<Output = Result<S, StartupError>>,
{
    let server = match marty::service::server_with(build).await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("{}: cannot start: {error}", S::NAME);
            return ExitCode::FAILURE;
        }
    };
    eprintln!("{}: serving on {}", S::NAME, server.configured_addr());
    match server.serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}: {error}", S::NAME);
            ExitCode::FAILURE
        }
    }
}
