//! Pruning what Marty's tables no longer need: inbox records past `[storage] inbox_retention`, and
//! finished sagas (completed or compensated) with their history past `[storage] saga_retention`.
//! Running and parked sagas are never pruned; sent outbox rows are the relay's (`[outbox] retention`).
//! Every registered store gets a background task that prunes it, in batches, so a backlog never
//! holds long locks.

use std::time::Duration;

use marty_config::StorageConfig;

#[cfg(feature = "sqlite")]
use super::unix_seconds;
use super::{unix_millis, Store};
use crate::runtime::WeakRuntime;

/// What one [`prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Inbox records.
    pub inbox: u64,
    /// Finished sagas (their history went with them).
    pub sagas: u64,
}

/// Rows deleted per statement: small enough that no statement holds its locks for long.
const BATCH: i64 = 5_000;

/// Deletes, from `store`, the inbox records and finished sagas older than `storage` keeps them.
pub async fn prune(store: &Store, storage: &StorageConfig) -> Result<Pruned, sqlx::Error> {
    let mut pruned = Pruned::default();
    loop {
        let deleted = prune_inbox(store, storage.inbox_retention).await?;
        pruned.inbox += deleted;
        if deleted < BATCH as u64 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let cutoff = unix_millis() - i64::try_from(storage.saga_retention.as_millis()).unwrap_or(i64::MAX / 2);
    loop {
        let deleted = prune_sagas(store, cutoff).await?;
        pruned.sagas += deleted;
        if deleted < BATCH as u64 {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(pruned)
}

async fn prune_inbox(store: &Store, retention: Duration) -> Result<u64, sqlx::Error> {
    let done = match store {
        #[cfg(feature = "postgres")]
        Store::Postgres(pool) => sqlx::query(
            "delete from marty_inbox where (consumer_group, event_id) in (
                    select consumer_group, event_id from marty_inbox
                    where handled_at < now() - make_interval(secs => $1) limit $2)",
        )
        .bind(retention.as_secs_f64())
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected(),
        #[cfg(feature = "sqlite")]
        Store::Sqlite(pool) => {
            // SQLite's inbox times are Unix seconds.
            sqlx::query(
                "delete from marty_inbox where rowid in (
                    select rowid from marty_inbox where handled_at < ? limit ?)",
            )
            .bind(unix_seconds() - retention.as_secs_f64())
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected()
        }
    };
    Ok(done)
}

/// Deletes up to a batch of the sagas that finished before `cutoff` (Unix ms), history first, in
/// one transaction; how many sagas went.
async fn prune_sagas(store: &Store, cutoff: i64) -> Result<u64, sqlx::Error> {
    // The same batch in both statements: finished sagas never change, and the order is total.
    const OLD_FINISHED: &str = "select id from marty_saga
        where status in ('completed', 'compensated') and updated_at < $1 order by updated_at, id limit $2";
    let history = format!("delete from marty_saga_history where saga_id in ({OLD_FINISHED})");
    let sagas = format!("delete from marty_saga where id in ({OLD_FINISHED})");
    macro_rules! in_transaction {
        ($pool:expr) => {{
            let mut tx = $pool.begin().await?;
            sqlx::query(sqlx::AssertSqlSafe(history)).bind(cutoff).bind(BATCH).execute(&mut *tx).await?;
            let deleted = sqlx::query(sqlx::AssertSqlSafe(sagas)).bind(cutoff).bind(BATCH).execute(&mut *tx).await?;
            tx.commit().await?;
            deleted.rows_affected()
        }};
    }
    let done = match store {
        #[cfg(feature = "postgres")]
        Store::Postgres(pool) => in_transaction!(pool),
        #[cfg(feature = "sqlite")]
        Store::Sqlite(pool) => in_transaction!(pool),
    };
    Ok(done)
}

/// Starts the task that prunes the store of dependency `name` in `runtime` (once per name: the
/// runtime remembers). It reads `[storage]` from the runtime's configuration at each round, so a
/// reload applies, and ends with the runtime.
pub(crate) fn spawn_pruner(runtime: WeakRuntime, name: &str, store: &Store) {
    let (name, store) = (name.to_owned(), store.clone());
    tokio::spawn(async move {
        loop {
            let Some(storage) = runtime.upgrade().map(|runtime| runtime.storage_config()) else { return };
            tokio::time::sleep(interval(&storage)).await;
            match prune(&store, &storage).await {
                Ok(pruned) if pruned != Pruned::default() => {
                    tracing::info!(store = %name, inbox = pruned.inbox, sagas = pruned.sagas, "pruned Marty's tables")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(store = %name, %error, "cannot prune Marty's tables; trying again later"),
            }
        }
    });
}

/// A tenth of the shortest retention, between a second and ten minutes: rows outlive their
/// retention by at most that much.
fn interval(storage: &StorageConfig) -> Duration {
    (storage.inbox_retention.min(storage.saga_retention) / 10).clamp(Duration::from_secs(1), Duration::from_secs(600))
}
