//! A gRPC service: the orders API over gRPC only (with the standard health service and reflection),
//! plus the `/healthz`, `/readyz` and `/metrics` every Marty service serves.
//!
//! Run it with `cargo run -p marty-examples --bin grpc_orders`, then:
//!
//! ```sh
//! grpcurl -plaintext -d '{"item":"book","quantity":2}' localhost:8080 orders.v1.Orders/CreateOrder
//! grpcurl -plaintext localhost:8080 list
//! ```

use std::process::ExitCode;

use marty::service;
use marty_examples::proto::orders_server::{self, OrdersServer};
use marty_examples::{proto, OrderStore};
use tonic::{Request, Response, Status};

struct Orders {
    store: OrderStore,
}

#[service(grpc(OrdersServer), reflection = proto::FILE_DESCRIPTOR_SET)]
impl Orders {}

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
