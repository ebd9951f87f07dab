//! The inventory service (gRPC): stock per item, and reservations held by id, so that a retried
//! `Reserve` holds the stock once and `Release` puts back exactly what was held.

use marty::axum::extract::{Json, Path};
use marty::{database_call, service, DependencyRegistry};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use tonic::{Request, Response, Status};

use super::proto::inventory_server::{self, InventoryServer};
use super::proto::{ReleaseReply, ReleaseRequest, ReserveReply, ReserveRequest};
use super::{open_database, proto, StoreError};

/// How a reservation refused for want of stock's error begins.
pub const OUT_OF_STOCK: &str = "out of stock";

/// What the demo sells, and how many of each: plenty, except the rare stamp.
pub const STOCK: [(&str, i64); 4] = [("book", 1_000_000), ("lamp", 1_000_000), ("mug", 1_000_000), ("rare-stamp", 25)];

const SCHEMA: &str = "
    create table if not exists inventory_stock (item text primary key, available bigint not null);
    create table if not exists inventory_reservations (id text primary key, item text not null, quantity bigint not null);";

pub struct Inventory {
    pool: AnyPool,
}

/// Stock held for an order: `id` is the reserving step's idempotency key (`<order>/reserve_stock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reservation {
    pub id: String,
    pub item: String,
    pub quantity: i64,
}

/// What is left of an item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StockLevel {
    pub item: String,
    pub available: i64,
}

#[service(config = "store.toml", grpc(InventoryServer), reflection = proto::FILE_DESCRIPTOR_SET)]
impl Inventory {
    /// What is left of `item`: public, for the shop's pages.
    #[get("/stock/{item}")]
    #[public]
    async fn stock(&self, Path(item): Path<String>) -> Result<Json<i64>, StoreError> {
        Ok(Json(self.available(&item).await?.ok_or_else(|| StoreError::NotFound(format!("no item `{item}`")))?))
    }

    /// What is left of every item.
    #[get("/stock")]
    #[authorize(roles = ["operator"])]
    async fn all_stock(&self) -> Result<Json<Vec<StockLevel>>, StoreError> {
        Ok(Json(self.stock_levels().await?))
    }

    /// Every reservation held: with `/stock`, the books the load report checks (stock is conserved,
    /// and held exactly for the orders that completed).
    #[get("/reservations")]
    #[authorize(roles = ["operator"])]
    async fn reservations(&self) -> Result<Json<Vec<Reservation>>, StoreError> {
        Ok(Json(self.held().await?))
    }
}

impl Inventory {
    /// Opens `inventory_db` and stocks it on first start.
    pub async fn open(registry: &DependencyRegistry) -> Result<Self, sqlx::Error> {
        let pool = open_database(registry, "inventory_db", SCHEMA).await?;
        for (item, available) in STOCK {
            sqlx::query("insert into inventory_stock (item, available) values ($1, $2) on conflict (item) do nothing")
                .bind(item)
                .bind(available)
                .execute(&pool)
                .await?;
        }
        Ok(Inventory { pool })
    }

    #[database_call(dependency = "inventory_db", config = "store.toml")]
    async fn available(&self, item: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("select available from inventory_stock where item = $1")
            .bind(item)
            .fetch_optional(&self.pool)
            .await?)
    }

    #[database_call(dependency = "inventory_db", config = "store.toml")]
    async fn stock_levels(&self) -> Result<Vec<StockLevel>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("select item, available from inventory_stock order by item").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(item, available)| StockLevel { item, available }).collect())
    }

    #[database_call(dependency = "inventory_db", config = "store.toml")]
    async fn held(&self) -> Result<Vec<Reservation>, StoreError> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("select id, item, quantity from inventory_reservations order by id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(id, item, quantity)| Reservation { id, item, quantity }).collect())
    }

    /// Holds the stock under `id` once; what is left.
    #[database_call(dependency = "inventory_db", config = "store.toml")]
    async fn reserve(&self, id: &str, item: &str, quantity: i64) -> Result<i64, StoreError> {
        if quantity <= 0 {
            return Err(StoreError::Invalid("quantity must be positive".into()));
        }
        // Writes first: on SQLite (WAL) a transaction that reads and then writes fails when another
        // writer committed in between, instead of waiting for the lock.
        let mut tx = self.pool.begin().await?;
        let new = sqlx::query(
            "insert into inventory_reservations (id, item, quantity) values ($1, $2, $3) on conflict (id) do nothing",
        )
        .bind(id)
        .bind(item)
        .bind(quantity)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if new {
            let taken = sqlx::query(
                "update inventory_stock set available = available - $2 where item = $1 and available >= $2",
            )
            .bind(item)
            .bind(quantity)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if taken == 0 {
                // Dropping the transaction rolls the reservation back.
                return Err(StoreError::Rejected(format!("{OUT_OF_STOCK}: `{item}`")));
            }
        }
        let remaining: i64 = sqlx::query_scalar("select available from inventory_stock where item = $1")
            .bind(item)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(remaining)
    }

    /// Puts back what `id` held; `false` when it held nothing.
    #[database_call(dependency = "inventory_db", config = "store.toml")]
    async fn release(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let held: Option<(String, i64)> =
            sqlx::query_as("delete from inventory_reservations where id = $1 returning item, quantity")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((item, quantity)) = &held {
            sqlx::query("update inventory_stock set available = available + $2 where item = $1")
                .bind(item)
                .bind(quantity)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(held.is_some())
    }
}

#[tonic::async_trait]
impl inventory_server::Inventory for Inventory {
    async fn reserve(&self, request: Request<ReserveRequest>) -> Result<Response<ReserveReply>, Status> {
        let request = request.into_inner();
        let remaining = Inventory::reserve(self, &request.reservation_id, &request.item, request.quantity).await?;
        Ok(Response::new(ReserveReply { remaining }))
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseReply>, Status> {
        let released = Inventory::release(self, &request.into_inner().reservation_id).await?;
        Ok(Response::new(ReleaseReply { released }))
    }
}
