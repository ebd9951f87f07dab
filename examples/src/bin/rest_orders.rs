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
use marty::prometheus_client::metrics::counter::Counter;
use marty::service;
use marty_examples::{AppError, AuditEntry, NewOrder, Order, OrderPlaced, OrderStore};

struct Orders {
    store: OrderStore,
    limits: OrderLimits,
    /// The service's own metric, in `/metrics` beside Marty's.
    created: Counter,
}

/// The service's own settings, from `[app]` in `marty.toml`: checked at startup with the file, line
/// and key of a value that does not fit (`MARTY__APP__MAX_QUANTITY` overrides it).
#[derive(serde::Deserialize)]
struct OrderLimits {
    max_quantity: i64,
}

#[service]
impl Orders {
    #[post("/orders")]
    async fn create_order(&self, Json(new): Json<NewOrder>) -> Result<(StatusCode, Json<Order>), AppError> {
        if new.quantity > self.limits.max_quantity {
            return Err(AppError::Invalid("quantity is over the limit in [app] max_quantity"));
        }
        let order = self.store.create(&new).await?;
        self.created.inc();
        Ok((StatusCode::CREATED, Json(order)))
    }

    #[get("/orders/{id}")]
    async fn get_order(&self, Path(id): Path<i64>) -> Result<Json<Order>, AppError> {
        Ok(Json(self.store.get(id).await?))
    }

    /// What the audit consumer recorded for the order (404 until it has handled the event).
    #[get("/orders/{id}/audit")]
    async fn get_audit(&self, Path(id): Path<i64>) -> Result<Json<AuditEntry>, AppError> {
        Ok(Json(self.store.audit(id).await?))
    }

    /// Consumes `OrderPlaced` (relayed from the outbox) once per event: the inbox record and the
    /// audit row commit together.
    #[event_handler(group = "order-audit")]
    async fn audit_order(
        &self,
        event: OrderPlaced,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<(), sqlx::Error> {
        marty::tracing::info!(order_id = event.order_id, "auditing a placed order");
        OrderStore::record_audit(tx, &event).await
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
}

#[tokio::main]
async fn main() -> ExitCode {
    marty_examples::run(|registry| async move {
        let limits = registry.config().app.get::<OrderLimits>()?;
        let created = Counter::default();
        registry.metrics().register("orders_created", "Orders created", created.clone());
        Ok(Orders { store: OrderStore::open(registry).await?, limits, created })
    })
    .await
}
