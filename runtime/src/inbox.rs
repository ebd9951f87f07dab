//! The inbox: a consumer records `(consumer group, event id)` in the transaction that carries the
//! handler's effects, so a redelivered event finds its record and its effects are not repeated.
//!
//! `#[event_handler]` does this when the handler takes a transaction:
//!
//! ```no_run
//! # #[derive(marty::Event, serde::Serialize, serde::Deserialize)]
//! # #[event(topic = "orders.placed")]
//! # struct OrderPlaced { #[event(key)] order_id: i64 }
//! # #[cfg(feature = "postgres")]
//! # mod billing {
//! # use super::OrderPlaced;
//! use marty::sqlx::{self, Postgres, Transaction};
//!
//! struct Billing;
//!
//! #[marty::service]
//! impl Billing {
//!     #[event_handler(group = "billing", inbox = "orders_db")]
//!     async fn invoice(&self, event: OrderPlaced, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
//!         sqlx::query("insert into invoices (order_id) values ($1)").bind(event.order_id).execute(&mut **tx).await?;
//!         Ok(()) // Marty commits: the invoice and the inbox record together, or neither
//!     }
//! }
//! # }
//! # fn main() {}
//! ```

use crate::events::BoxFuture;
use crate::store::{Store, StoreDatabase};

/// A database the inbox can live in: one Marty keeps its tables in.
pub trait InboxDatabase: StoreDatabase {
    /// Records `(group, event_id)` in `tx`; `false` when it is already there.
    fn record<'a>(
        tx: &'a mut sqlx::Transaction<'static, Self>,
        group: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;
}

#[cfg(any(feature = "postgres", feature = "any"))]
const RECORD_POSTGRES: &str =
    "insert into marty_inbox (consumer_group, event_id) values ($1, $2) on conflict do nothing";
#[cfg(any(feature = "sqlite", feature = "any"))]
const RECORD_SQLITE: &str = "insert into marty_inbox (consumer_group, event_id) values (?, ?) on conflict do nothing";

#[cfg(feature = "postgres")]
impl InboxDatabase for sqlx::Postgres {
    fn record<'a>(
        tx: &'a mut sqlx::Transaction<'static, Self>,
        group: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(RECORD_POSTGRES).bind(group).bind(event_id).execute(&mut **tx).await?;
            Ok(done.rows_affected() == 1)
        })
    }
}

#[cfg(feature = "sqlite")]
impl InboxDatabase for sqlx::Sqlite {
    fn record<'a>(
        tx: &'a mut sqlx::Transaction<'static, Self>,
        group: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(RECORD_SQLITE).bind(group).bind(event_id).execute(&mut **tx).await?;
            Ok(done.rows_affected() == 1)
        })
    }
}

#[cfg(feature = "any")]
impl InboxDatabase for sqlx::Any {
    fn record<'a>(
        tx: &'a mut sqlx::Transaction<'static, Self>,
        group: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let sql = match tx.backend_name() {
                "PostgreSQL" => RECORD_POSTGRES,
                "SQLite" => RECORD_SQLITE,
                other => return Err(crate::store::unsupported(other)),
            };
            let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(group).bind(event_id).execute(&mut **tx).await?;
            Ok(done.rows_affected() == 1)
        })
    }
}

/// Begins a transaction on `pool` and records `event_id` for `group` in it: `None` when the group
/// already handled that event (its transaction committed), so nothing should run again. A
/// concurrent delivery of the same event waits on the record until the first one's transaction ends.
pub async fn begin<DB: InboxDatabase>(
    pool: &sqlx::Pool<DB>,
    group: &str,
    event_id: &str,
) -> Result<Option<sqlx::Transaction<'static, DB>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !DB::record(&mut tx, group, event_id).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    Ok(Some(tx))
}

/// Whether `group` has handled `event_id` (for operators and tests).
pub async fn handled(store: &Store, group: &str, event_id: &str) -> Result<bool, sqlx::Error> {
    let count: i64 = match store {
        #[cfg(feature = "postgres")]
        Store::Postgres(pool) => {
            sqlx::query_scalar("select count(*) from marty_inbox where consumer_group = $1 and event_id = $2")
                .bind(group)
                .bind(event_id)
                .fetch_one(pool)
                .await?
        }
        #[cfg(feature = "sqlite")]
        Store::Sqlite(pool) => {
            sqlx::query_scalar("select count(*) from marty_inbox where consumer_group = ? and event_id = ?")
                .bind(group)
                .bind(event_id)
                .fetch_one(pool)
                .await?
        }
    };
    Ok(count > 0)
}
