//! The orders service (REST) and the `PlaceOrder` saga it runs: reserve the stock, charge the
//! payment, confirm. Each step calls another service with its idempotency key; a declined payment
//! or missing stock undoes what ran, last first. The order *is* the saga: its state and status are
//! what `GET /orders/{id}` shows, and `OrderConfirmed` / `OrderCancelled` are written to the outbox
//! in the same commit as the step that decides them.

use std::time::{Duration, UNIX_EPOCH};

use marty::axum::extract::{Json, Path};
use marty::axum::http::{HeaderMap, StatusCode};
use marty::saga::{Orchestrator, StepContext};
use marty::security::TokenSource;
use marty::{api_call, database_call, saga, service, DependencyRegistry};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use tonic::transport::Channel;
use tonic::Request;

use super::proto::inventory_client::InventoryClient;
use super::proto::payments_client::PaymentsClient;
use super::proto::{ChargeRequest, RefundRequest, ReleaseRequest, ReserveRequest};
use super::{channel, open_database, OrderCancelled, OrderConfirmed, StoreError};

/// An order being placed: the saga's state, saved after every step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub order_id: String,
    pub item: String,
    pub quantity: i64,
    pub amount_cents: i64,
    /// The reservation the inventory holds for it, once made.
    pub reservation: Option<String>,
    /// The charge, once made.
    pub payment: Option<String>,
}

/// What the saga's steps reach: the other services, with the token they require
/// (`[security.clients.store]`), and the orders database.
#[derive(Debug, Clone)]
pub struct Clients {
    inventory: InventoryClient<Channel>,
    payments: PaymentsClient<Channel>,
    tokens: TokenSource,
    orders: AnyPool,
}

#[saga(store = "orders_db", timeout = "60s", config = "store.toml")]
impl PlaceOrder {
    #[saga_step(compensate = release_stock, timeout = "5s", max_attempts = 5)]
    async fn reserve_stock(&mut self, ctx: &mut StepContext<Clients>) -> Result<(), StoreError> {
        let key = ctx.idempotency_key();
        ctx.env().reserve(&key, &self.item, self.quantity).await?;
        self.reservation = Some(key);
        Ok(())
    }

    /// The first step's undo is the last compensation: the order is cancelled.
    async fn release_stock(&mut self, ctx: &mut StepContext<Clients>) -> Result<(), StoreError> {
        ctx.env().release(&ctx.idempotency_key()).await?;
        self.reservation = None;
        let reason = "the order could not be completed".to_owned();
        ctx.publish(&OrderCancelled { order_id: self.order_id.clone(), reason })
            .map_err(|error| StoreError::Invalid(error.to_string()))?;
        Ok(())
    }

    #[saga_step(compensate = refund_payment, timeout = "5s", max_attempts = 5)]
    async fn charge_payment(&mut self, ctx: &mut StepContext<Clients>) -> Result<(), StoreError> {
        let key = ctx.idempotency_key();
        ctx.env().charge(&key, &self.order_id, self.amount_cents).await?;
        self.payment = Some(key);
        Ok(())
    }

    async fn refund_payment(&mut self, ctx: &mut StepContext<Clients>) -> Result<(), StoreError> {
        ctx.env().refund(&ctx.idempotency_key()).await?;
        self.payment = None;
        Ok(())
    }

    #[saga_step(timeout = "5s", max_attempts = 5)]
    async fn confirm(&mut self, ctx: &mut StepContext<Clients>) -> Result<(), StoreError> {
        ctx.env().record_confirmed(self).await?;
        let confirmed = OrderConfirmed {
            order_id: self.order_id.clone(),
            item: self.item.clone(),
            quantity: self.quantity,
            amount_cents: self.amount_cents,
        };
        ctx.publish(&confirmed).map_err(|error| StoreError::Invalid(error.to_string()))
    }
}

impl Clients {
    #[api_call(dependency = "inventory_api", config = "store.toml", operation = "reserve")]
    async fn reserve(&self, key: &str, item: &str, quantity: i64) -> Result<i64, StoreError> {
        let request = ReserveRequest { reservation_id: key.to_owned(), item: item.to_owned(), quantity };
        let request = self.tokens.authorize(Request::new(request)).await?;
        Ok(self.inventory.clone().reserve(request).await?.into_inner().remaining)
    }

    #[api_call(dependency = "inventory_api", config = "store.toml", operation = "release")]
    async fn release(&self, key: &str) -> Result<bool, StoreError> {
        let request = self.tokens.authorize(Request::new(ReleaseRequest { reservation_id: key.to_owned() })).await?;
        Ok(self.inventory.clone().release(request).await?.into_inner().released)
    }

    #[api_call(dependency = "payments_api", config = "store.toml", operation = "charge")]
    async fn charge(&self, key: &str, order_id: &str, amount_cents: i64) -> Result<(), StoreError> {
        let request = ChargeRequest { payment_id: key.to_owned(), order_id: order_id.to_owned(), amount_cents };
        let request = self.tokens.authorize(Request::new(request)).await?;
        self.payments.clone().charge(request).await?;
        Ok(())
    }

    #[api_call(dependency = "payments_api", config = "store.toml", operation = "refund")]
    async fn refund(&self, key: &str) -> Result<bool, StoreError> {
        let request = self.tokens.authorize(Request::new(RefundRequest { payment_id: key.to_owned() })).await?;
        Ok(self.payments.clone().refund(request).await?.into_inner().refunded)
    }

    /// The confirmed order, for the shop's books (once, whatever the retries).
    #[database_call(dependency = "orders_db", config = "store.toml")]
    async fn record_confirmed(&self, order: &PlaceOrder) -> Result<(), StoreError> {
        sqlx::query(
            "insert into confirmed_orders (order_id, item, quantity, amount_cents) values ($1, $2, $3, $4)
             on conflict (order_id) do nothing",
        )
        .bind(&order.order_id)
        .bind(&order.item)
        .bind(order.quantity)
        .bind(order.amount_cents)
        .execute(&self.orders)
        .await?;
        Ok(())
    }
}

/// What a client sends to place an order.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewOrder {
    #[schema(min_length = 1)]
    pub item: String,
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "whole_number")]
    pub quantity: i64,
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "whole_number")]
    pub amount_cents: i64,
}

/// An integer as JSON Schema reads `integer` (what the description promises): `2` or `2.0`, where
/// serde alone refuses `2.0`.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    number
        .as_i64()
        .or_else(|| {
            number.as_f64().filter(|float| float.fract() == 0.0 && float.abs() < 9.0e15).map(|float| float as i64)
        })
        .ok_or_else(|| serde::de::Error::custom(format!("expected an integer, found {number}")))
}

/// An order as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: String,
    /// `running`, `compensating`, `completed`, `compensated` or `parked`.
    pub status: String,
    /// The step running (or being undone).
    pub step: Option<String>,
    /// Why it was compensated.
    pub error: Option<String>,
    pub item: String,
    pub quantity: i64,
    pub amount_cents: i64,
    pub placed_at_ms: u64,
}

impl From<marty::saga::SagaStatus<PlaceOrder>> for OrderView {
    fn from(saga: marty::saga::SagaStatus<PlaceOrder>) -> Self {
        OrderView {
            id: saga.id,
            status: saga.status.to_string(),
            step: saga.step.map(str::to_owned),
            error: saga.error,
            item: saga.state.item,
            quantity: saga.state.quantity,
            amount_cents: saga.state.amount_cents,
            placed_at_ms: saga.created_at.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64),
        }
    }
}

/// A line of an order's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryLine {
    pub at_ms: u64,
    pub step: Option<String>,
    pub kind: String,
    pub attempt: u32,
    pub detail: Option<String>,
}

pub struct Orders {
    sagas: Orchestrator<PlaceOrder>,
}

#[service(config = "store.toml")]
impl Orders {
    /// Places an order: starts its saga and answers `202 Accepted` with the order's id at once. An
    /// `Idempotency-Key` header makes a retried request place the order once.
    #[post("/orders")]
    #[authorize(roles = ["customer"])]
    async fn place(
        &self,
        headers: HeaderMap,
        Json(new): Json<NewOrder>,
    ) -> Result<(StatusCode, Json<OrderView>), StoreError> {
        if new.item.is_empty() || new.quantity <= 0 || new.amount_cents <= 0 {
            return Err(StoreError::Invalid(
                "an order needs an item, a positive quantity and a positive amount".into(),
            ));
        }
        let id = match headers.get("idempotency-key").map(|key| key.to_str()) {
            Some(Ok(key)) if !key.is_empty() && key.len() <= 200 => key.to_owned(),
            Some(_) => return Err(StoreError::Invalid("`Idempotency-Key` must be 1 to 200 visible characters".into())),
            None => marty::events::new_event_id(),
        };
        let state = PlaceOrder {
            order_id: id.clone(),
            item: new.item,
            quantity: new.quantity,
            amount_cents: new.amount_cents,
            reservation: None,
            payment: None,
        };
        self.sagas.start_with_id(&id, state).await?;
        Ok((StatusCode::ACCEPTED, Json(self.view(&id).await?)))
    }

    /// The order and where its saga is.
    #[get("/orders/{id}")]
    #[authorize(roles = ["customer", "operator"])]
    async fn order(&self, Path(id): Path<String>) -> Result<Json<OrderView>, StoreError> {
        Ok(Json(self.view(&id).await?))
    }

    /// Waits (up to 30 s) until the order is completed, compensated or parked, then answers as
    /// `GET /orders/{id}` does.
    #[get("/orders/{id}/outcome")]
    #[authorize(roles = ["customer", "operator"])]
    async fn outcome(&self, Path(id): Path<String>) -> Result<Json<OrderView>, StoreError> {
        let _ = tokio::time::timeout(Duration::from_secs(30), self.sagas.wait(&id)).await;
        Ok(Json(self.view(&id).await?))
    }

    /// Every step and compensation attempt of the order's saga.
    #[get("/orders/{id}/history")]
    #[authorize(roles = ["customer", "operator"])]
    async fn history(&self, Path(id): Path<String>) -> Result<Json<Vec<HistoryLine>>, StoreError> {
        let lines = self.sagas.history(&id).await?;
        if lines.is_empty() {
            return Err(StoreError::NotFound(format!("no order `{id}`")));
        }
        Ok(Json(
            lines
                .into_iter()
                .map(|line| HistoryLine {
                    at_ms: line.at.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64),
                    step: line.step,
                    kind: line.kind,
                    attempt: line.attempt,
                    detail: line.detail,
                })
                .collect(),
        ))
    }

    /// Orders whose compensation kept failing, waiting for an operator.
    #[get("/orders/parked")]
    #[authorize(roles = ["operator"])]
    async fn parked(&self) -> Result<Json<Vec<OrderView>>, StoreError> {
        Ok(Json(self.sagas.parked().await?.into_iter().map(OrderView::from).collect()))
    }

    /// Tries a parked order's compensations again: `202`, or `409` when the order is not parked.
    #[post("/orders/{id}/resume")]
    #[authorize(roles = ["operator"])]
    async fn resume(&self, Path(id): Path<String>) -> Result<StatusCode, StoreError> {
        if self.sagas.resume(&id).await? {
            return Ok(StatusCode::ACCEPTED);
        }
        let order = self.view(&id).await?;
        Err(StoreError::Rejected(format!("order `{id}` is {}, not parked", order.status)))
    }
}

impl Orders {
    /// Opens `orders_db` and starts the saga orchestrator, which resumes unfinished orders at once.
    /// The other services are at their dependencies' `url`s unless `inventory` / `payments` say where.
    pub async fn open(
        registry: &DependencyRegistry,
        inventory: Option<&str>,
        payments: Option<&str>,
    ) -> Result<Self, StoreError> {
        let orders = open_database(
            registry,
            "orders_db",
            "create table if not exists confirmed_orders (order_id text primary key, item text not null,
                 quantity bigint not null, amount_cents bigint not null);",
        )
        .await?;
        let clients = Clients {
            inventory: InventoryClient::new(channel(registry, "inventory_api", inventory)?),
            payments: PaymentsClient::new(channel(registry, "payments_api", payments)?),
            tokens: TokenSource::configured(&registry.config(), "store")
                .map_err(|error| StoreError::Invalid(error.to_string()))?,
            orders,
        };
        Ok(Orders { sagas: Orchestrator::new(clients).await? })
    }

    /// The orchestrator, to stop it with the service.
    pub fn sagas(&self) -> &Orchestrator<PlaceOrder> {
        &self.sagas
    }

    async fn view(&self, id: &str) -> Result<OrderView, StoreError> {
        let saga = self.sagas.status(id).await?.ok_or_else(|| StoreError::NotFound(format!("no order `{id}`")))?;
        Ok(saga.into())
    }
}
