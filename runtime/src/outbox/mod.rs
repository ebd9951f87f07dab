//! The transactional outbox: [`publish`] writes an event in the same database transaction as the
//! business data, so the event exists exactly when the data does; the [`Relay`] publishes it to
//! the broker afterwards (at least once, deduplicated by event id at the broker and the inbox).
//!
//! ```no_run
//! # #[derive(marty::Event, serde::Serialize, serde::Deserialize)]
//! # #[event(topic = "orders.placed")]
//! # struct OrderPlaced { #[event(key)] order_id: i64, item: String }
//! # #[cfg(feature = "sqlite")]
//! async fn place_order(pool: &marty::sqlx::SqlitePool, item: String) -> Result<i64, marty::sqlx::Error> {
//!     let mut tx = pool.begin().await?;
//!     let order_id: i64 = marty::sqlx::query_scalar("insert into orders (item) values (?) returning id")
//!         .bind(&item)
//!         .fetch_one(&mut *tx)
//!         .await?;
//!     // The event commits, or rolls back, with the order.
//!     marty::outbox::publish(&mut *tx, &OrderPlaced { order_id, item }).await?;
//!     tx.commit().await?;
//!     Ok(order_id)
//! }
//! ```
//!
//! ```toml
//! [outbox]
//! store = "orders_db"      # the database dependency holding marty_outbox / marty_inbox (PostgreSQL or SQLite)
//! batch_size = 100
//! poll_interval = "500ms"  # fallback; PostgreSQL wakes the relay on commit (LISTEN/NOTIFY)
//! max_attempts = 10        # broker rejections before a row is parked
//! retention = "0s"         # sent rows: deleted at once (default), or kept this long
//! ```
//!
//! What the relay promises (PostgreSQL; SQLite serialises writers, so the same holds there):
//! - **Nothing lost, nothing skipped.** An event exists exactly when its transaction commits. No
//!   event is skipped when transactions commit out of order: a row is taken only once every
//!   transaction that could still commit an earlier one has ended (snapshot gating on the writing
//!   transaction id, as Watermill does).
//! - **Order per key**, across any number of relays on one table: a row is published only when
//!   every earlier pending row of its key is in the same batch (rows are locked `FOR UPDATE SKIP
//!   LOCKED`, so relays never publish one row twice at once), and a batch goes out in waves so an
//!   event is sent only after the previous one of its key was acknowledged.
//! - A row is marked sent only after the broker acknowledged it; while the broker is unreachable the
//!   relay backs off and counts nothing against the rows.
//! - A row the broker rejects `max_attempts` times is parked with the reason: visible with
//!   [`parked`], replayed with [`replay`], never deleted silently.
//! - Sent rows are deleted once acknowledged, or kept for `retention` when one is set.
//! - A relay waiting for work is woken by the commit (NOTIFY, sent only while a relay waits: NOTIFY
//!   serialises commits, and telling a busy relay cost a quarter of the transaction rate).
//!
//! Metrics: `marty_outbox_published_total`, `marty_outbox_failed_total`, and the gauges
//! `marty_outbox_pending`, `marty_outbox_parked` and `marty_outbox_lag_seconds` (the age of the
//! oldest pending event).

mod relay;

use std::fmt;

use tracing::Instrument;

pub use relay::{Relay, RelayOptions};

use crate::events::{BoxFuture, Event, Message};
pub use crate::store::Store;

/// A transaction (or connection) the outbox can write to: sqlx PostgreSQL and SQLite transactions.
pub trait OutboxTransaction: Send {
    /// Inserts `message` as a pending outbox row.
    fn insert_outbox_row<'a>(&'a mut self, message: &'a Message) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

/// One statement: the row, and a wake-up for relays waiting for work (only then: NOTIFY serialises
/// commits, so a busy relay is not told; it finds the row anyway).
#[cfg(any(feature = "postgres", feature = "any"))]
const INSERT_POSTGRES: &str = "
    with row as (
        insert into marty_outbox (event_id, topic, key, version, payload, traceparent, tracestate)
        values ($1, $2, $3, $4, $5, $6, $7)
    )
    select pg_notify('marty_outbox', '') from marty_relay_wake where sleeping limit 1";

#[cfg(any(feature = "sqlite", feature = "any"))]
const INSERT_SQLITE: &str = "
    insert into marty_outbox (event_id, topic, key, version, payload, traceparent, tracestate)
    values (?, ?, ?, ?, ?, ?, ?)";

#[cfg(feature = "postgres")]
impl OutboxTransaction for sqlx::PgConnection {
    fn insert_outbox_row<'a>(&'a mut self, message: &'a Message) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(INSERT_POSTGRES)
                .bind(&message.id)
                .bind(&message.topic)
                .bind(&message.key)
                .bind(message.version as i32)
                .bind(&message.payload)
                .bind(&message.traceparent)
                .bind(&message.tracestate)
                .execute(self)
                .await
                .map(drop)
        })
    }
}

#[cfg(feature = "sqlite")]
impl OutboxTransaction for sqlx::SqliteConnection {
    fn insert_outbox_row<'a>(&'a mut self, message: &'a Message) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(INSERT_SQLITE)
                .bind(&message.id)
                .bind(&message.topic)
                .bind(&message.key)
                .bind(message.version as i64)
                .bind(&message.payload)
                .bind(&message.traceparent)
                .bind(&message.tracestate)
                .execute(self)
                .await?;
            // SQLite has no commit notification: tell this process's relay to look (it looks again
            // shortly if the transaction has not committed yet).
            relay::LOCAL_WRITES.notify_one();
            Ok(())
        })
    }
}

/// A connection whose database is chosen by its URL at run time.
#[cfg(feature = "any")]
impl OutboxTransaction for sqlx::AnyConnection {
    fn insert_outbox_row<'a>(&'a mut self, message: &'a Message) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let sqlite = match self.backend_name() {
                "PostgreSQL" => false,
                "SQLite" => true,
                other => return Err(crate::store::unsupported(other)),
            };
            let sql = if sqlite { INSERT_SQLITE } else { INSERT_POSTGRES };
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&message.id)
                .bind(&message.topic)
                .bind(&message.key)
                .bind(message.version as i32)
                .bind(&message.payload)
                .bind(&message.traceparent)
                .bind(&message.tracestate)
                .execute(self)
                .await?;
            if sqlite {
                #[cfg(feature = "sqlite")]
                relay::LOCAL_WRITES.notify_one();
            }
            Ok(())
        })
    }
}

impl<DB> OutboxTransaction for sqlx::Transaction<'_, DB>
where
    DB: sqlx::Database,
    DB::Connection: OutboxTransaction,
{
    fn insert_outbox_row<'a>(&'a mut self, message: &'a Message) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        (**self).insert_outbox_row(message)
    }
}

/// Writes `event` to the outbox in `tx`: it is published once `tx` commits, and never if it rolls
/// back. The current trace travels with it. An event that cannot be encoded is an
/// `sqlx::Error::Encode`, so `?` works wherever sqlx errors do.
pub async fn publish<T, E>(tx: &mut T, event: &E) -> Result<(), sqlx::Error>
where
    T: OutboxTransaction + ?Sized,
    E: Event,
{
    // OpenTelemetry's producer span for creating a message; the consumer's span is its child.
    let span = tracing::info_span!(
        "event.publish",
        otel.name = %format_args!("publish {}", E::TOPIC),
        otel.kind = "producer",
        messaging.operation.type = "create",
        messaging.destination.name = E::TOPIC,
        messaging.message.id = tracing::field::Empty,
    );
    let message = span.in_scope(|| Message::from_event(event)).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    span.record("messaging.message.id", message.id.as_str());
    tx.insert_outbox_row(&message).instrument(span).await
}

/// An outbox row waiting to be published, or one the relay gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The row's id, for [`replay`].
    pub id: i64,
    /// The event's id.
    pub event_id: String,
    /// Its topic.
    pub topic: String,
    /// Its aggregate key.
    pub key: Option<String>,
    /// Publish attempts made.
    pub attempts: i32,
    /// What the broker said the last time.
    pub last_error: Option<String>,
}

/// A row the relay gave up on, as [`parked`] lists them.
pub type ParkedEvent = OutboxEntry;

impl fmt::Display for OutboxEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "outbox row {} (event {} on `{}`)", self.id, self.event_id, self.topic)?;
        match &self.last_error {
            Some(error) => write!(f, " after {} attempts: {error}", self.attempts),
            None => Ok(()),
        }
    }
}

/// Every parked row, oldest first.
pub async fn parked(store: &Store) -> Result<Vec<ParkedEvent>, sqlx::Error> {
    entries(store, 2, i64::MAX).await
}

/// The oldest `limit` rows waiting to be published (a broker that is down, a relay that is not
/// running, or one catching up), oldest first.
pub async fn pending(store: &Store, limit: u32) -> Result<Vec<OutboxEntry>, sqlx::Error> {
    entries(store, 0, i64::from(limit)).await
}

/// Up to `limit` rows in `state` (0 pending, 2 parked), oldest first.
async fn entries(store: &Store, state: i16, limit: i64) -> Result<Vec<OutboxEntry>, sqlx::Error> {
    const ENTRIES: &str = "select id, event_id, topic, key, attempts, last_error from marty_outbox
        where state = $1 order by id limit $2";
    type Row = (i64, String, String, Option<String>, i32, Option<String>);
    let rows: Vec<Row> = match store {
        #[cfg(feature = "postgres")]
        Store::Postgres(pool) => sqlx::query_as(ENTRIES).bind(state).bind(limit).fetch_all(pool).await?,
        #[cfg(feature = "sqlite")]
        Store::Sqlite(pool) => sqlx::query_as(ENTRIES).bind(state).bind(limit).fetch_all(pool).await?,
    };
    Ok(rows
        .into_iter()
        .map(|(id, event_id, topic, key, attempts, last_error)| OutboxEntry {
            id,
            event_id,
            topic,
            key,
            attempts,
            last_error,
        })
        .collect())
}

/// Puts a parked row back in line, its attempts reset; `false` when no parked row has that id.
pub async fn replay(store: &Store, id: i64) -> Result<bool, sqlx::Error> {
    let done = match store {
        #[cfg(feature = "postgres")]
        Store::Postgres(pool) => {
            sqlx::query("update marty_outbox set state = 0, attempts = 0, next_attempt_at = '-infinity' where id = $1 and state = 2")
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        }
        #[cfg(feature = "sqlite")]
        Store::Sqlite(pool) => {
            sqlx::query("update marty_outbox set state = 0, attempts = 0, next_attempt_at = 0 where id = ? and state = 2")
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        }
    };
    Ok(done == 1)
}
