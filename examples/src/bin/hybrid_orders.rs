//! A hybrid service: the same orders over gRPC (with health and reflection) and REST, on one port.
//!
//! Run it with `cargo run -p marty-examples --bin hybrid_orders`, then:
//!
//! ```sh
//! curl -s localhost:8080/orders/1 ; curl -s localhost:8080/readyz
//! grpcurl -plaintext -d '{"item":"book","quantity":2}' localhost:8080 orders.v1.Orders/CreateOrder
//! grpcurl -plaintext localhost:8080 grpc.health.v1.Health/Check
//! ```

use std::process::ExitCode;

use marty::axum::extract::{Json, Path};
use marty::service;
use marty_examples::proto::orders_server::{self, OrdersServer};
use marty_examples::{proto, AppError, AuditEntry, Order, OrderPlaced, OrderStore};
use tonic::{Request, Response, Status};

struct Orders {
    store: OrderStore,
}

#[service(grpc(OrdersServer), reflection = proto::FILE_DESCRIPTOR_SET)]
impl Orders {
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
}

#[tonic::async_trait]
impl orders_server::Orders for Orders {
    async fn create_order(
        &self,
        request: Request<proto::CreateOrderRequest>,
    ) -> Result<Response<proto::Order>, Status> {
        self.store.create_rpc(request).await
    }

    async fn get_order(&self, request: Request<proto::GetOrderRequest>) -> Result<Response<proto::Order>, Status> {
        self.store.get_rpc(request).await
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    marty_examples::run(|registry| async move { Ok(Orders { store: OrderStore::open(registry).await? }) }).await
}
