//! The payments service (gRPC): charges and refunds held by id, so a retried charge charges once and
//! a refund undoes exactly the charge it names; and a consumer of `OrderConfirmed` that records each
//! order's receipt once (inbox), however often the broker delivers it.

use marty::axum::extract::Json;
use marty::{database_call, service, DependencyRegistry};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use tonic::{Request, Response, Status};

use super::proto::payments_server::{self, PaymentsServer};
use super::proto::{ChargeReply, ChargeRequest, RefundReply, RefundRequest};
use super::{open_database, proto, OrderConfirmed, StoreError};

/// Charges above this are declined: how the demo's load makes some orders compensate.
pub const LIMIT_CENTS: i64 = 50_000;

/// How a declined charge's error begins.
pub const DECLINED: &str = "card declined";

const SCHEMA: &str = "
    create table if not exists payments (id text primary key, order_id text not null, amount_cents bigint not null,
        status text not null);
    create table if not exists payment_receipts (order_id text primary key, amount_cents bigint not null);";

pub struct Payments {
    pool: AnyPool,
}

/// A charge: `id` is the charging step's idempotency key (`<order>/charge_payment`); `status` is
/// `charged` or `refunded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    pub amount_cents: i64,
    pub status: String,
}

#[service(config = "store.toml", grpc(PaymentsServer), reflection = proto::FILE_DESCRIPTOR_SET)]
impl Payments {
    /// How many receipts the `OrderConfirmed` consumer recorded.
    #[get("/receipts/count")]
    #[authorize(roles = ["operator"])]
    async fn receipts(&self) -> Result<Json<i64>, StoreError> {
        Ok(Json(self.count_receipts().await?))
    }

    /// Every charge and refund: the books the load report checks (a charge stands exactly for each
    /// order that completed).
    #[get("/payments")]
    #[authorize(roles = ["operator"])]
    async fn payments(&self) -> Result<Json<Vec<Payment>>, StoreError> {
        Ok(Json(self.ledger().await?))
    }

    /// One receipt per confirmed order: the inbox record commits with it, so a redelivery is a no-op.
    #[event_handler(group = "payments-receipts", inbox = "payments_db")]
    async fn record_receipt(
        &self,
        event: OrderConfirmed,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("insert into payment_receipts (order_id, amount_cents) values ($1, $2)")
            .bind(&event.order_id)
            .bind(event.amount_cents)
            .execute(&mut **tx)
            .await
            .map(drop)
    }
}

impl Payments {
    /// Opens `payments_db`, and hands its pool to Marty for the consumer's inbox.
    pub async fn open(registry: &DependencyRegistry) -> Result<Self, sqlx::Error> {
        let pool = open_database(registry, "payments_db", SCHEMA).await?;
        marty::store::get("payments_db").await?;
        marty::store::register_pool("payments_db", pool.clone());
        Ok(Payments { pool })
    }

    #[database_call(dependency = "payments_db", config = "store.toml")]
    async fn count_receipts(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("select count(*) from payment_receipts").fetch_one(&self.pool).await?)
    }

    #[database_call(dependency = "payments_db", config = "store.toml")]
    async fn ledger(&self) -> Result<Vec<Payment>, StoreError> {
        let rows: Vec<(String, String, i64, String)> =
            sqlx::query_as("select id, order_id, amount_cents, status from payments order by id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, order_id, amount_cents, status)| Payment { id, order_id, amount_cents, status })
            .collect())
    }

    /// Charges once per payment id.
    #[database_call(dependency = "payments_db", config = "store.toml")]
    async fn charge(&self, id: &str, order_id: &str, amount_cents: i64) -> Result<(), StoreError> {
        if amount_cents > LIMIT_CENTS {
            return Err(StoreError::Rejected(format!("{DECLINED} for {amount_cents} cents")));
        }
        sqlx::query(
            "insert into payments (id, order_id, amount_cents, status) values ($1, $2, $3, 'charged')
             on conflict (id) do nothing",
        )
        .bind(id)
        .bind(order_id)
        .bind(amount_cents)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Refunds the charge made under `id`; `false` when there is none to refund.
    #[database_call(dependency = "payments_db", config = "store.toml")]
    async fn refund(&self, id: &str) -> Result<bool, StoreError> {
        let refunded = sqlx::query("update payments set status = 'refunded' where id = $1 and status = 'charged'")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(refunded == 1)
    }
}

#[tonic::async_trait]
impl payments_server::Payments for Payments {
    async fn charge(&self, request: Request<ChargeRequest>) -> Result<Response<ChargeReply>, Status> {
        let request = request.into_inner();
        Payments::charge(self, &request.payment_id, &request.order_id, request.amount_cents).await?;
        Ok(Response::new(ChargeReply { payment_id: request.payment_id }))
    }

    async fn refund(&self, request: Request<RefundRequest>) -> Result<Response<RefundReply>, Status> {
        let refunded = Payments::refund(self, &request.into_inner().payment_id).await?;
        Ok(Response::new(RefundReply { refunded }))
    }
}
