//! The store demo: three services that place an order together.
//!
//! - **orders** (REST): `POST /orders` starts the `PlaceOrder` saga ([`orders`]): reserve the stock
//!   (inventory), charge the payment (payments), confirm. A declined payment or missing stock
//!   compensates what ran, in reverse. The saga's events go out through the outbox.
//! - **inventory** (gRPC): stock and reservations ([`inventory`]).
//! - **payments** (gRPC): charges and refunds, and a consumer of `OrderConfirmed` that records a
//!   receipt exactly once through the inbox ([`payments`]).
//!
//! All four attributes are here: `#[service]`, `#[database_call]`/`#[api_call]`, `#[event_handler]`
//! and `#[saga]`, with `#[derive(Event)]`. [`load`] is the built-in load generator.

pub mod inventory;
pub mod load;
pub mod orders;
pub mod payments;

use marty::axum::http::StatusCode;
use marty::axum::response::{IntoResponse, Response};
use marty::service::Problem;
use marty::{Classify, DependencyRegistry, ErrorClass};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;

/// The inventory and payments APIs, generated at build time.
pub mod proto {
    tonic::include_proto!("store.v1");

    /// The encoded descriptors of the APIs, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/store_descriptor.bin"));
}

/// Published when an order's saga completes: payments records a receipt.
#[derive(Debug, Clone, Serialize, Deserialize, marty::Event)]
#[event(topic = "store.order_confirmed")]
pub struct OrderConfirmed {
    #[event(key)]
    pub order_id: String,
    pub item: String,
    pub quantity: i64,
    pub amount_cents: i64,
}

/// Published when an order's saga released its stock: the order will not ship.
#[derive(Debug, Clone, Serialize, Deserialize, marty::Event)]
#[event(topic = "store.order_cancelled")]
pub struct OrderCancelled {
    #[event(key)]
    pub order_id: String,
    pub reason: String,
}

/// What goes wrong in the store's services.
#[derive(Debug)]
pub enum StoreError {
    /// The request is wrong (422).
    Invalid(String),
    /// There is nothing with this id (404).
    NotFound(String),
    /// The business said no: out of stock, payment declined. Not worth retrying.
    Rejected(String),
    /// A database failed.
    Database(sqlx::Error),
    /// Marty's policies stopped the call (bulkhead full, breaker open, timeout).
    Resilience(marty::Error),
    /// Another service answered with an error.
    Rpc(tonic::Status),
    /// The saga store failed.
    Saga(marty::saga::SagaError),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Invalid(why) | StoreError::NotFound(why) | StoreError::Rejected(why) => f.write_str(why),
            StoreError::Database(error) => write!(f, "database: {error}"),
            StoreError::Resilience(error) => error.fmt(f),
            StoreError::Rpc(status) => write!(f, "{}: {}", status.code(), status.message()),
            StoreError::Saga(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Database(error)
    }
}

impl From<marty::Error> for StoreError {
    fn from(error: marty::Error) -> Self {
        StoreError::Resilience(error)
    }
}

impl From<tonic::Status> for StoreError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::FailedPrecondition => StoreError::Rejected(status.message().to_owned()),
            _ => StoreError::Rpc(status),
        }
    }
}

impl From<marty::saga::SagaError> for StoreError {
    fn from(error: marty::saga::SagaError) -> Self {
        StoreError::Saga(error)
    }
}

/// How the breaker, retries and the saga read the store's errors: the other side's "no" is expected
/// and did nothing; the rest is what the wrapped error says, including whether a failed call may
/// still have taken effect (a charge whose reply was lost), so that the saga undoes it.
impl Classify for StoreError {
    fn classify(&self) -> ErrorClass {
        match self {
            StoreError::Invalid(_) | StoreError::NotFound(_) | StoreError::Rejected(_) => ErrorClass::Expected,
            StoreError::Database(error) => error.classify(),
            StoreError::Resilience(error) => error.classify(),
            StoreError::Rpc(status) => status.classify(),
            StoreError::Saga(_) => ErrorClass::Transient,
        }
    }

    fn may_have_applied(&self) -> bool {
        match self {
            StoreError::Invalid(_) | StoreError::NotFound(_) | StoreError::Rejected(_) => false,
            StoreError::Database(error) => error.may_have_applied(),
            StoreError::Resilience(error) => error.may_have_applied(),
            StoreError::Rpc(status) => status.may_have_applied(),
            StoreError::Saga(_) => true,
        }
    }
}

impl From<StoreError> for tonic::Status {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Invalid(why) => tonic::Status::invalid_argument(why),
            StoreError::NotFound(why) => tonic::Status::not_found(why),
            StoreError::Rejected(why) => tonic::Status::failed_precondition(why),
            StoreError::Resilience(error) => error.into(),
            StoreError::Rpc(status) => status,
            other => {
                marty::tracing::error!(error = %other, "internal error");
                tonic::Status::unavailable(other.to_string())
            }
        }
    }
}

/// The statuses `into_response` answers with, for the OpenAPI description (the resilience errors
/// are 503 and 504, which every route lists).
impl marty::openapi::DescribeProblems for StoreError {
    const STATUSES: &'static [u16] = &[404, 409, 422, 503];
}

impl IntoResponse for StoreError {
    fn into_response(self) -> Response {
        match self {
            StoreError::Invalid(why) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, why).into_response(),
            StoreError::NotFound(why) => Problem::new(StatusCode::NOT_FOUND, why).into_response(),
            StoreError::Rejected(why) => Problem::new(StatusCode::CONFLICT, why).into_response(),
            StoreError::Resilience(error) => error.into_response(),
            other => {
                marty::tracing::error!(error = %other, "internal error");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string()).into_response()
            }
        }
    }
}

/// Connects dependency `name`'s `url` (SQLite or PostgreSQL, by URL) and runs `schema` on it.
pub async fn open_database(registry: &DependencyRegistry, name: &str, schema: &str) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let url = registry.dependency(name).and_then(|db| db.config().url).unwrap_or_default();
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(16).connect(&url).await?;
    let serial = if url.starts_with("postgres") { "bigserial" } else { "integer" };
    if url.starts_with("sqlite") {
        // As Marty's own pool does: readers do not block the writer, one fsync per commit.
        sqlx::raw_sql("pragma journal_mode = wal").execute(&pool).await?;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(schema.replace("{serial}", serial))).execute(&pool).await?;
    Ok(pool)
}

/// The gRPC channel to dependency `name` (`url`, unless `at` overrides it), connected on first use.
pub fn channel(
    registry: &DependencyRegistry,
    name: &str,
    at: Option<&str>,
) -> Result<tonic::transport::Channel, StoreError> {
    let url = at.map(str::to_owned).or_else(|| registry.dependency(name).and_then(|api| api.config().url));
    let url = url.ok_or_else(|| StoreError::Invalid(format!("`[dependencies.{name}]` has no `url`")))?;
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|error| StoreError::Invalid(format!("`{url}` is not a URL: {error}")))?;
    Ok(endpoint.connect_lazy())
}
