//! Marty's tables (outbox, inbox, sagas), created by embedded migrations on first use. Each
//! migration runs once per database, recorded in `marty_schema`; on PostgreSQL an advisory lock
//! keeps replicas starting together from running one twice. (Not sqlx's `_sqlx_migrations`: that
//! table is the service's.)
//!
//! Teams that own their migrations (sqlx-cli, refinery, Flyway) take the DDL as text from
//! [`ddl`] or [`migrations`], set `[storage] migrate = false`, and Marty only checks at startup that
//! the tables are at the version it needs.

use super::Store;

/// The saga tables, the same on both databases: times are Unix milliseconds written by the
/// replicas, and SQLite reads `bigint` as an integer.
const SAGA_TABLES: &str = r"
    create table if not exists marty_saga (
        id text primary key,
        name text not null,
        state text not null,
        status text not null, -- running, compensating, completed, compensated, parked
        step integer not null, -- the step running, or being compensated
        attempt integer not null,
        error text,
        deadline bigint,
        step_deadline bigint,
        next_attempt_at bigint not null,
        owner text,
        lease_until bigint not null,
        traceparent text,
        created_at bigint not null,
        updated_at bigint not null
    );
    create index if not exists marty_saga_unfinished on marty_saga (name, lease_until)
        where status in ('running', 'compensating');
    create index if not exists marty_saga_parked on marty_saga (name) where status = 'parked';
    create table if not exists marty_saga_history (
        saga_id text not null,
        seq integer not null,
        at bigint not null,
        step text,
        kind text not null,
        attempt integer not null,
        detail text,
        primary key (saga_id, seq)
    );
    ";

/// Sagas remember whether the step running may already have taken effect, since when the step or
/// compensation running has been tried (the compensation deadline counts from there), and how many
/// times in a row the other side refused a compensation.
const SAGA_UNCERTAINTY: &str = r"
    alter table marty_saga add column uncertain boolean not null default false;
    alter table marty_saga add column step_started_at bigint not null default 0;
    alter table marty_saga add column refusals integer not null default 0;
    update marty_saga set step_started_at = updated_at;
    ";

/// Sagas remember when they last changed hands, so a replica taking one over knows whether its attempt
/// may have begun. A saga released by an earlier version counts as released just now: its attempt may
/// have been under way (the cautious reading, the one that version made).
const SAGA_HAND_OVER: &str = r"
    alter table marty_saga add column handed_over_at bigint not null default 0;
    update marty_saga set handed_over_at = 9223372036854775807 where owner is null;
    ";

/// Pruning finds old inbox records and finished sagas by time.
const RETENTION_INDEXES: &str = r"
    create index if not exists marty_inbox_handled_at on marty_inbox (handled_at);
    create index if not exists marty_saga_finished on marty_saga (updated_at)
        where status in ('completed', 'compensated');
    ";

/// Events carry the W3C `tracestate` with their `traceparent`.
const OUTBOX_TRACESTATE: &str = "alter table marty_outbox add column tracestate text;";

/// Migration 1 on PostgreSQL: the outbox and the inbox.
const OUTBOX_POSTGRES: &str = r"
    create table if not exists marty_outbox (
        id bigserial primary key,
        event_id text not null,
        topic text not null,
        key text,
        version integer not null,
        payload bytea not null,
        traceparent text,
        -- The writing transaction: the relay takes rows only once every transaction that could
        -- still commit an earlier id has ended (snapshot gating).
        tx_id xid8 not null default pg_current_xact_id(),
        created_at timestamptz not null default clock_timestamp(),
        state smallint not null default 0, -- 0 pending, 1 sent, 2 parked
        attempts integer not null default 0,
        last_error text,
        next_attempt_at timestamptz not null default '-infinity',
        sent_at timestamptz
    );
    create index if not exists marty_outbox_pending on marty_outbox (id) where state = 0;
    create index if not exists marty_outbox_pending_by_key on marty_outbox (key, id) where state = 0;
    create index if not exists marty_outbox_parked on marty_outbox (id) where state = 2;
    -- Relays waiting for work: `publish` notifies `marty_outbox` only while one is (NOTIFY takes a
    -- global lock at commit, so telling a busy relay would serialise every commit for nothing).
    create table if not exists marty_relay_wake (
        relay_id text primary key,
        sleeping boolean not null,
        updated_at timestamptz not null default now()
    );
    create table if not exists marty_inbox (
        consumer_group text not null,
        event_id text not null,
        handled_at timestamptz not null default now(),
        primary key (consumer_group, event_id)
    );
";

/// Migration 1 on SQLite: the outbox and the inbox. Times are Unix seconds (REAL).
const OUTBOX_SQLITE: &str = r"
    create table if not exists marty_outbox (
        id integer primary key autoincrement,
        event_id text not null,
        topic text not null,
        key text,
        version integer not null,
        payload blob not null,
        traceparent text,
        created_at real not null default ((julianday('now') - 2440587.5) * 86400.0),
        state integer not null default 0,
        attempts integer not null default 0,
        last_error text,
        next_attempt_at real not null default 0,
        -- A relay claims rows for a lease instead of locking them (SQLite has no row locks).
        claimed_until real not null default 0,
        sent_at real
    );
    create index if not exists marty_outbox_pending on marty_outbox (id) where state = 0;
    create index if not exists marty_outbox_pending_by_key on marty_outbox (key, id) where state = 0;
    create index if not exists marty_outbox_parked on marty_outbox (id) where state = 2;
    create table if not exists marty_inbox (
        consumer_group text not null,
        event_id text not null,
        handled_at real not null default ((julianday('now') - 2440587.5) * 86400.0),
        primary key (consumer_group, event_id)
    );
";

/// A database Marty keeps its tables in, for the DDL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// One migration as text, ending with the statement that records its version in `marty_schema`.
#[derive(Debug, Clone)]
pub struct Migration {
    /// Its number, from 1; [`version`] is the last.
    pub version: u32,
    /// The SQL, several statements.
    pub sql: String,
}

const SCHEMA_TABLE: &str =
    "create table if not exists marty_schema (component text primary key, version integer not null);";

/// Migrations 2 on, the same on both databases. Never edit one that has shipped: add the next.
const SHARED: &[&str] = &[
    // 2: sagas.
    SAGA_TABLES,
    // 3: saga steps' uncertainty and start time.
    SAGA_UNCERTAINTY,
    // 4: when a saga last changed hands.
    SAGA_HAND_OVER,
    // 5: what pruning looks up.
    RETENTION_INDEXES,
    // 6: tracestate beside traceparent.
    OUTBOX_TRACESTATE,
];

/// Every migration of `database`, in order.
fn steps(database: Database) -> Vec<&'static str> {
    let first = match database {
        Database::Postgres => OUTBOX_POSTGRES,
        Database::Sqlite => OUTBOX_SQLITE,
    };
    std::iter::once(first).chain(SHARED.iter().copied()).collect()
}

/// The version of Marty's tables this build needs.
pub fn version(database: Database) -> u32 {
    steps(database).len() as u32
}

/// Every migration, in order, each with its version marker: apply those past the version your
/// database is at (`select version from marty_schema where component = 'events'`).
pub fn migrations(database: Database) -> Vec<Migration> {
    steps(database)
        .iter()
        .enumerate()
        .map(|(index, sql)| {
            let version = index as u32 + 1;
            let sql = format!(
                "{SCHEMA_TABLE}\n{}\ninsert into marty_schema (component, version) values ('events', {version})\n    \
                 on conflict (component) do update set version = excluded.version;\n",
                sql.trim_end()
            );
            Migration { version, sql }
        })
        .collect()
}

/// The DDL of all of Marty's tables at [`version`], for an empty database: what the embedded
/// migrations run, as one script.
pub fn ddl(database: Database) -> String {
    let header = format!(
        "-- Marty's tables ({}), version {}: the outbox, the inbox and the sagas.\n",
        match database {
            Database::Postgres => "PostgreSQL",
            Database::Sqlite => "SQLite",
        },
        version(database)
    );
    std::iter::once(header).chain(migrations(database).into_iter().map(|migration| migration.sql)).collect()
}

/// Creates or upgrades Marty's tables in `store`, or with `[storage] migrate = false` checks that
/// they are at the version this build needs.
pub(crate) async fn prepare(store: &Store, storage: &marty_config::StorageConfig) -> Result<(), sqlx::Error> {
    if storage.migrate {
        migrate(store).await
    } else {
        verify(store).await
    }
}

/// The version `store`'s tables are at (0 before the first migration).
async fn applied_version(store: &Store) -> Result<u32, sqlx::Error> {
    let version: Result<Option<i64>, sqlx::Error> = match store {
        #[cfg(feature = "postgres")]
        Store::Postgres(pool) => {
            sqlx::query_scalar("select cast(version as bigint) from marty_schema where component = 'events'")
                .fetch_optional(pool)
                .await
        }
        #[cfg(feature = "sqlite")]
        Store::Sqlite(pool) => {
            sqlx::query_scalar("select version from marty_schema where component = 'events'").fetch_optional(pool).await
        }
    };
    match version {
        Ok(version) => Ok(version.unwrap_or(0) as u32),
        // No `marty_schema` table: nothing was ever applied.
        Err(sqlx::Error::Database(error)) if error.message().contains("marty_schema") => Ok(0),
        Err(error) => Err(error),
    }
}

async fn verify(store: &Store) -> Result<(), sqlx::Error> {
    let database = match store {
        #[cfg(feature = "postgres")]
        Store::Postgres(_) => Database::Postgres,
        #[cfg(feature = "sqlite")]
        Store::Sqlite(_) => Database::Sqlite,
    };
    let (applied, needed) = (applied_version(store).await?, version(database));
    if applied >= needed {
        return Ok(());
    }
    Err(sqlx::Error::Configuration(
        format!(
            "Marty's tables are at version {applied}, and this build needs version {needed}; with \
             `[storage] migrate = false` Marty does not create them: apply migrations {} to {needed} from \
             `marty::store::schema::migrations(Database::{database:?})` (or all of `ddl(..)` on an empty \
             database) with your migration tool, or set `[storage] migrate = true`",
            applied + 1
        )
        .into(),
    ))
}

/// Brings `store`'s Marty tables up to date. Never lowers the recorded version: during a rolling
/// deploy, a replica of the previous release starting after the new one migrated finds a newer
/// schema, which only ever adds to what it uses.
async fn migrate(store: &Store) -> Result<(), sqlx::Error> {
    match store {
        #[cfg(feature = "postgres")]
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("select pg_advisory_xact_lock(hashtext('marty_schema'))").execute(&mut *tx).await?;
            sqlx::query(SCHEMA_TABLE).execute(&mut *tx).await?;
            let applied: Option<i32> =
                sqlx::query_scalar("select version from marty_schema where component = 'events'")
                    .fetch_optional(&mut *tx)
                    .await?;
            let (applied, steps) = (applied.unwrap_or(0) as usize, steps(Database::Postgres));
            if applied >= steps.len() {
                return tx.commit().await;
            }
            for migration in &steps[applied..] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*migration)).execute(&mut *tx).await?;
            }
            sqlx::query(
                "insert into marty_schema (component, version) values ('events', $1)
                 on conflict (component) do update set version = excluded.version",
            )
            .bind(steps.len() as i32)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        #[cfg(feature = "sqlite")]
        Store::Sqlite(pool) => {
            // IMMEDIATE: take the write lock first, so a replica migrating at once waits for it
            // instead of failing on a snapshot that went stale between the read and the write.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(SCHEMA_TABLE).execute(&mut *tx).await?;
            let applied: Option<i64> =
                sqlx::query_scalar("select version from marty_schema where component = 'events'")
                    .fetch_optional(&mut *tx)
                    .await?;
            let (applied, steps) = (applied.unwrap_or(0) as usize, steps(Database::Sqlite));
            if applied >= steps.len() {
                return tx.commit().await;
            }
            for migration in &steps[applied..] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*migration)).execute(&mut *tx).await?;
            }
            sqlx::query(
                "insert into marty_schema (component, version) values ('events', ?)
                 on conflict (component) do update set version = excluded.version",
            )
            .bind(steps.len() as i64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
    }
}
