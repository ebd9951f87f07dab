//! The databases the outbox, the inbox and sagas keep their tables in: a database dependency of
//! `marty.toml`, reached through a sqlx pool. A service hands over the pool it already has with
//! [`register`] (an in-memory SQLite database only exists in its own pool); otherwise the first use
//! connects one from the dependency's `url`. Marty's tables are created on first use ([`schema`];
//! `[storage] migrate`), and what they no longer need is pruned in the background ([`prune`]).
//!
//! # Operating Marty's tables
//!
//! `marty_outbox`, `marty_inbox`, `marty_saga` and `marty_saga_history`:
//!
//! ```toml
//! [storage]
//! migrate = true            # false: create nothing, only check the tables are at the version needed
//! inbox_retention = "7d"    # how long the inbox remembers a handled event (the dedup window)
//! saga_retention = "30d"    # finished sagas (completed, compensated) and their history
//! ```
//!
//! - Teams that own their migrations (sqlx-cli, refinery, Flyway) take the DDL as text:
//!   [`schema::ddl`] (all tables, for an empty database) or [`schema::migrations`] (each step with
//!   its version marker, for upgrades), and set `migrate = false`. A database that is behind stops
//!   startup with the migrations to apply. Migrations are recorded in `marty_schema`.
//! - Each registered store is pruned in the background, in batches of 5,000, at a tenth of the
//!   shortest retention (between 1 s and 10 min). Running and parked sagas are never pruned. Keep
//!   `inbox_retention` longer than the broker may redeliver a message (NATS streams keep messages
//!   7 days by default): a redelivery past it is handled again. [`prune::prune`] does one round from
//!   code.
//! - A replica of the previous release that starts after the new one migrated never lowers the
//!   recorded version (rolling deploys), and migrations only ever add.

pub mod prune;
pub mod schema;

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use crate::Runtime;

/// Now, as the saga tables keep times: Unix milliseconds, written by the replicas' own clocks.
pub(crate) fn unix_millis() -> i64 {
    unix_time().as_millis().try_into().unwrap_or(i64::MAX)
}

/// Now, as SQLite's outbox keeps times: Unix seconds.
#[cfg(feature = "sqlite")]
pub(crate) fn unix_seconds() -> f64 {
    unix_time().as_secs_f64()
}

fn unix_time() -> std::time::Duration {
    let system = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let skew = clock_skew_nanos();
    let nanos = i128::try_from(system.as_nanos()).unwrap_or(i128::MAX) + skew;
    std::time::Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
}

/// How far tokio's clock is from the system's, in nanoseconds: a few nanoseconds in a running
/// service; under a paused clock (`#[tokio::test(start_paused = true)]`), the time advanced
/// less the time really passed. Added to the system clock, it makes the saga and outbox times move
/// as tokio's timers do, so a test's paused clock passes a saga's backoff or an outbox retry at once.
fn clock_skew_nanos() -> i128 {
    let tokio_now = tokio::time::Instant::now().into_std();
    let std_now = std::time::Instant::now();
    match tokio_now.checked_duration_since(std_now) {
        Some(ahead) => i128::try_from(ahead.as_nanos()).unwrap_or(i128::MAX),
        None => -i128::try_from(std_now.duration_since(tokio_now).as_nanos()).unwrap_or(i128::MAX),
    }
}

/// [`clock_skew_nanos`] in seconds, for SQL that reads the database's `now()`.
#[cfg(feature = "postgres")]
pub(crate) fn clock_skew_seconds() -> f64 {
    clock_skew_nanos() as f64 / 1e9
}

/// A database holding Marty's tables.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Store {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

#[cfg(feature = "postgres")]
impl From<sqlx::PgPool> for Store {
    fn from(pool: sqlx::PgPool) -> Self {
        Store::Postgres(pool)
    }
}

#[cfg(feature = "sqlite")]
impl From<sqlx::SqlitePool> for Store {
    fn from(pool: sqlx::SqlitePool) -> Self {
        Store::Sqlite(pool)
    }
}

/// The databases one [`Runtime`] keeps Marty's tables in, by dependency name.
#[derive(Debug, Default)]
pub(crate) struct Stores {
    registered: Mutex<HashMap<String, Store>>,
    /// Pools of a type of the service's choosing (`sqlx::Any`), by name and database type.
    typed: Mutex<HashMap<(String, TypeId), Box<dyn Any + Send + Sync>>>,
    /// The names whose tables a pruner of this runtime already keeps.
    pruned: Mutex<HashSet<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes `pool` the database of dependency `name` for the outbox, the inbox and sagas, creating
/// Marty's tables in it: in [`Runtime::current`] (see [`Runtime::register_store`]).
pub async fn register(name: &str, pool: impl Into<Store>) -> Result<Store, sqlx::Error> {
    Runtime::current().register_store(name, pool).await
}

/// The database of dependency `name` in [`Runtime::current`] (see [`Runtime::store`]).
pub async fn get(name: &str) -> Result<Store, sqlx::Error> {
    Runtime::current().store(name).await
}

/// Makes `pool` the one inbox transactions of type `DB` begin on for dependency `name`, in
/// [`Runtime::current`] (see [`Runtime::register_pool`]).
pub fn register_pool<DB: sqlx::Database>(name: &str, pool: sqlx::Pool<DB>) {
    Runtime::current().register_pool(name, pool)
}

/// The pool of type `DB` for dependency `name` in [`Runtime::current`] (see [`Runtime::pool`]).
pub async fn pool<DB: StoreDatabase>(name: &str) -> Result<sqlx::Pool<DB>, sqlx::Error> {
    Runtime::current().pool(name).await
}

/// The stores of one runtime.
impl Runtime {
    /// Makes `pool` the database of dependency `name` for this runtime's outbox, inbox and sagas,
    /// creating Marty's tables in it (or checking them, with `[storage] migrate = false`) and
    /// starting their pruning.
    pub async fn register_store(&self, name: &str, pool: impl Into<Store>) -> Result<Store, sqlx::Error> {
        let store = pool.into();
        let connections = match &store {
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => pool.options().get_max_connections(),
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => pool.options().get_max_connections(),
        };
        self.size_bulkhead(name, connections);
        schema::prepare(&store, &self.storage_config()).await?;
        let stores = &self.shared().stores;
        if lock(&stores.pruned).insert(name.to_owned()) {
            prune::spawn_pruner(self.downgrade(), name, &store);
        }
        lock(&stores.registered).insert(name.to_owned(), store.clone());
        Ok(store)
    }

    /// The database of dependency `name`: the registered pool, or one connected from its `url`.
    pub async fn store(&self, name: &str) -> Result<Store, sqlx::Error> {
        if let Some(store) = lock(&self.shared().stores.registered).get(name) {
            return Ok(store.clone());
        }
        let url = self
            .registry()
            .and_then(|registry| registry.config().dependencies.get(name).and_then(|dependency| dependency.url.clone()))
            .ok_or_else(|| {
                config_error(format!("dependency `{name}` has no `url` and no pool was registered for it"))
            })?;
        let store = connect(&url).await?;
        self.register_store(name, store).await
    }

    /// Makes `pool` the one inbox transactions of type `DB` begin on for dependency `name`: for a
    /// service that talks to its database through `sqlx::Any` (so PostgreSQL or SQLite is a matter of
    /// configuration). The outbox relay still connects its own pool from the dependency's `url`.
    pub fn register_pool<DB: sqlx::Database>(&self, name: &str, pool: sqlx::Pool<DB>) {
        self.size_bulkhead(name, pool.options().get_max_connections());
        lock(&self.shared().stores.typed).insert((name.to_owned(), TypeId::of::<DB>()), Box::new(pool));
    }

    /// The pool of type `DB` for dependency `name`: the one registered with [`Self::register_pool`],
    /// else the store's own when it is that database.
    pub async fn pool<DB: StoreDatabase>(&self, name: &str) -> Result<sqlx::Pool<DB>, sqlx::Error> {
        let registered = lock(&self.shared().stores.typed)
            .get(&(name.to_owned(), TypeId::of::<DB>()))
            .and_then(|pool| pool.downcast_ref::<sqlx::Pool<DB>>())
            .cloned();
        if let Some(pool) = registered {
            return Ok(pool);
        }
        DB::pool_of(&self.store(name).await?).ok_or_else(|| {
            config_error(format!(
                "dependency `{name}` is not a {} database, as the handler's transaction type says",
                DB::NAME
            ))
        })
    }

    /// Sizes dependency `name`'s bulkhead from the pool registered for it (see
    /// [`crate::policy::Dependency::size_from_pool`]).
    fn size_bulkhead(&self, name: &str, connections: u32) {
        if let Some(dependency) = self.registry().and_then(|registry| registry.dependency(name)) {
            dependency.size_from_pool(connections as usize);
        }
    }
}

/// Connects a pool to `url` (`postgres://..` or `sqlite:..`).
pub async fn connect(url: &str) -> Result<Store, sqlx::Error> {
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Ok(Store::Postgres(sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(url).await?));
    }
    #[cfg(feature = "sqlite")]
    if url.starts_with("sqlite:") {
        use std::str::FromStr;
        // WAL: readers do not block the writer, and a commit is one fsync of the log (sqlx leaves
        // SQLite's rollback journal otherwise). `synchronous` stays FULL: the relay must never publish
        // an event whose transaction a power loss could still roll back.
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10));
        return Ok(Store::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new().max_connections(4).connect_with(options).await?,
        ));
    }
    Err(config_error(format!(
        "cannot keep the outbox in `{}`: marty supports postgres:// (feature `postgres`) and sqlite: (feature `sqlite`)",
        url.split(':').next().unwrap_or(url)
    )))
}

/// A database Marty keeps its tables in, as sqlx names it: PostgreSQL, SQLite, and `sqlx::Any`
/// over either (with the `any` feature).
pub trait StoreDatabase: sqlx::Database {
    /// `store`'s pool, when it is this database (an `Any` pool is registered on its own, see
    /// [`Runtime::register_pool`]).
    fn pool_of(store: &Store) -> Option<sqlx::Pool<Self>>;
}

#[cfg(feature = "postgres")]
impl StoreDatabase for sqlx::Postgres {
    fn pool_of(store: &Store) -> Option<sqlx::Pool<Self>> {
        #[allow(irrefutable_let_patterns, unreachable_patterns)]
        match store {
            Store::Postgres(pool) => Some(pool.clone()),
            _ => None,
        }
    }
}

#[cfg(feature = "sqlite")]
impl StoreDatabase for sqlx::Sqlite {
    fn pool_of(store: &Store) -> Option<sqlx::Pool<Self>> {
        #[allow(irrefutable_let_patterns, unreachable_patterns)]
        match store {
            Store::Sqlite(pool) => Some(pool.clone()),
            _ => None,
        }
    }
}

#[cfg(feature = "any")]
impl StoreDatabase for sqlx::Any {
    fn pool_of(_store: &Store) -> Option<sqlx::Pool<Self>> {
        None
    }
}

/// The error for a database Marty keeps no tables in.
#[allow(dead_code)]
pub(crate) fn unsupported(backend: &str) -> sqlx::Error {
    config_error(format!("marty keeps its outbox and inbox in PostgreSQL or SQLite, not {backend}"))
}

fn config_error(problem: String) -> sqlx::Error {
    sqlx::Error::Configuration(problem.into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// Saga deadlines and backoffs, and the outbox's retries, are computed from `unix_millis`: under
    /// a test's paused clock it moves exactly as tokio's timers do, not with the system clock.
    #[tokio::test(start_paused = true)]
    async fn saga_and_outbox_time_follows_a_paused_tokio_clock() {
        let before = super::unix_millis();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(super::unix_millis() - before, 3_600_000, "an hour of tokio's time is an hour of Marty's");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(super::unix_millis() - before, 3_600_000, "real time passing under a paused clock moves nothing");
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(super::unix_millis() - before, 4_200_000);
    }

    /// Running normally, it is the system's time.
    #[tokio::test]
    async fn running_normally_it_is_the_system_clock() {
        let system = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let (before, marty, after) = (system(), super::unix_millis(), system());
        assert!(before - 1 <= marty && marty <= after + 1, "{marty} outside {before}..={after}");
    }
}
