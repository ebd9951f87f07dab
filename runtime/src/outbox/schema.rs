//! Marty's tables, created by embedded migrations on first use. Each migration runs once per
//! database, recorded in `marty_schema`; on PostgreSQL an advisory lock keeps replicas starting
//! together from running one twice. (Not sqlx's `_sqlx_migrations`: that table is the service's.)

use super::Store;

/// The saga tables, the same on both databases: times are Unix milliseconds written by the
/// replicas, and SQLite reads `bigint` as an integer.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
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
#[cfg(any(feature = "postgres", feature = "sqlite"))]
const SAGA_UNCERTAINTY: &str = r"
    alter table marty_saga add column uncertain boolean not null default false;
    alter table marty_saga add column step_started_at bigint not null default 0;
    alter table marty_saga add column refusals integer not null default 0;
    update marty_saga set step_started_at = updated_at;
    ";

/// Sagas remember when they last changed hands, so a replica taking one over knows whether its attempt
/// may have begun. A saga released by an earlier version counts as released just now: its attempt may
/// have been under way (the cautious reading, the one that version made).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
const SAGA_HAND_OVER: &str = r"
    alter table marty_saga add column handed_over_at bigint not null default 0;
    update marty_saga set handed_over_at = 9223372036854775807 where owner is null;
    ";

/// PostgreSQL migrations, in order; never edit one that has shipped, add the next.
#[cfg(feature = "postgres")]
const POSTGRES: &[&str] = &[
    // 1: outbox and inbox.
    r"
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
    ",
    // 2: sagas.
    SAGA_TABLES,
    // 3: saga steps' uncertainty and start time.
    SAGA_UNCERTAINTY,
    // 4: when a saga last changed hands.
    SAGA_HAND_OVER,
];

/// SQLite migrations, in order. Times are Unix seconds (REAL).
#[cfg(feature = "sqlite")]
const SQLITE: &[&str] = &[
    // 1: outbox and inbox.
    r"
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
    ",
    // 2: sagas.
    SAGA_TABLES,
    // 3: saga steps' uncertainty and start time.
    SAGA_UNCERTAINTY,
    // 4: when a saga last changed hands.
    SAGA_HAND_OVER,
];

/// Brings `store`'s Marty tables up to date.
pub(crate) async fn migrate(store: &Store) -> Result<(), sqlx::Error> {
    match store {
        #[cfg(feature = "postgres")]
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("select pg_advisory_xact_lock(hashtext('marty_schema'))").execute(&mut *tx).await?;
            sqlx::query(
                "create table if not exists marty_schema (component text primary key, version integer not null)",
            )
            .execute(&mut *tx)
            .await?;
            let applied: Option<i32> =
                sqlx::query_scalar("select version from marty_schema where component = 'events'")
                    .fetch_optional(&mut *tx)
                    .await?;
            let applied = applied.unwrap_or(0) as usize;
            for migration in POSTGRES.iter().skip(applied) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*migration)).execute(&mut *tx).await?;
            }
            sqlx::query(
                "insert into marty_schema (component, version) values ('events', $1)
                 on conflict (component) do update set version = excluded.version",
            )
            .bind(POSTGRES.len() as i32)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        #[cfg(feature = "sqlite")]
        Store::Sqlite(pool) => {
            // IMMEDIATE: take the write lock first, so a replica migrating at once waits for it
            // instead of failing on a snapshot that went stale between the read and the write.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(
                "create table if not exists marty_schema (component text primary key, version integer not null)",
            )
            .execute(&mut *tx)
            .await?;
            let applied: Option<i64> =
                sqlx::query_scalar("select version from marty_schema where component = 'events'")
                    .fetch_optional(&mut *tx)
                    .await?;
            let applied = applied.unwrap_or(0) as usize;
            for migration in SQLITE.iter().skip(applied) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*migration)).execute(&mut *tx).await?;
            }
            sqlx::query(
                "insert into marty_schema (component, version) values ('events', ?)
                 on conflict (component) do update set version = excluded.version",
            )
            .bind(SQLITE.len() as i64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
    }
}
