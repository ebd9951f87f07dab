//! The saga tables (`marty_saga`, `marty_saga_history`; created by `outbox::schema`): every statement
//! the orchestrator runs, written once for PostgreSQL and SQLite (both take `$N` parameters, and times
//! are Unix milliseconds from the replica's clock). This module owns the SQL and nothing else: what
//! the rows mean is the orchestrator's.

use crate::events::Message;
use crate::outbox::OutboxTransaction;
use crate::store::Store;

/// Runs `$body` with `$pool` bound to the store's pool, whichever database it is.
macro_rules! on_store {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            #[cfg(feature = "postgres")]
            Store::Postgres($pool) => $body,
            #[cfg(feature = "sqlite")]
            Store::Sqlite($pool) => $body,
        }
    };
}

/// Inserts one history line in the transaction `$tx`.
macro_rules! insert_entry {
    ($tx:expr, $saga_id:expr, $entry:expr) => {{
        let entry: &Entry = $entry;
        sqlx::query(
            "insert into marty_saga_history (saga_id, seq, at, step, kind, attempt, detail)
             values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind($saga_id)
        .bind(entry.seq)
        .bind(entry.at)
        .bind(entry.step)
        .bind(entry.kind)
        .bind(entry.attempt)
        .bind(entry.detail.as_deref())
        .execute(&mut *$tx)
        .await?;
    }};
}

const NEXT_SEQ: &str = "select cast(coalesce(max(seq), 0) + 1 as integer) from marty_saga_history where saga_id = $1";

/// One row of `marty_saga`.
#[derive(Debug, Clone)]
pub(super) struct SagaRow {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) state: String,
    pub(super) status: String,
    pub(super) step: i32,
    pub(super) attempt: i32,
    pub(super) error: Option<String>,
    pub(super) deadline: Option<i64>,
    pub(super) step_deadline: Option<i64>,
    pub(super) next_attempt_at: i64,
    pub(super) traceparent: Option<String>,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    /// The step running may have taken effect in an attempt so far (it timed out, was interrupted, or
    /// failed in a way that may have reached the other side): it is compensated if the saga gives up.
    pub(super) uncertain: bool,
    /// When the step or compensation now running got its first attempt.
    pub(super) step_started_at: i64,
    /// How many times in a row the other side refused the compensation now running.
    pub(super) refusals: i32,
    /// When the saga last changed hands: the time its owner released it (a clean shutdown), or the
    /// time a replica took it from one that stopped renewing its lease. An attempt due by then may
    /// have been under way; one due later had not begun. Read only after a claim.
    pub(super) handed_over_at: i64,
}

const COLUMNS: &str = "id, name, state, status, step, attempt, error, deadline, step_deadline, next_attempt_at, \
    traceparent, created_at, updated_at, uncertain, step_started_at, refusals, handed_over_at";

impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for SagaRow
where
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(SagaRow {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            state: row.try_get("state")?,
            status: row.try_get("status")?,
            step: row.try_get("step")?,
            attempt: row.try_get("attempt")?,
            error: row.try_get("error")?,
            deadline: row.try_get("deadline")?,
            step_deadline: row.try_get("step_deadline")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            traceparent: row.try_get("traceparent")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            uncertain: row.try_get("uncertain")?,
            step_started_at: row.try_get("step_started_at")?,
            refusals: row.try_get("refusals")?,
            handed_over_at: row.try_get("handed_over_at")?,
        })
    }
}

/// One line of a saga's history, as written.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) seq: i32,
    pub(super) at: i64,
    pub(super) step: Option<&'static str>,
    pub(super) kind: &'static str,
    pub(super) attempt: i32,
    pub(super) detail: Option<String>,
}

/// One line of a saga's history, as read.
pub(super) type EntryRow = (i32, i64, Option<String>, String, i32, Option<String>);

/// Inserts a new saga owned by `owner` until `lease_until`, with its first history lines; `false`
/// when a saga with that id exists (starting is idempotent by id).
pub(super) async fn insert(
    store: &Store,
    row: &SagaRow,
    owner: &str,
    lease_until: i64,
    history: &[Entry],
) -> Result<bool, sqlx::Error> {
    const INSERT: &str = "
        insert into marty_saga (id, name, state, status, step, attempt, error, deadline, step_deadline,
            next_attempt_at, owner, lease_until, traceparent, created_at, updated_at, uncertain, step_started_at,
            refusals)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
        on conflict (id) do nothing";
    on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        let inserted = sqlx::query(INSERT)
            .bind(&row.id)
            .bind(&row.name)
            .bind(&row.state)
            .bind(&row.status)
            .bind(row.step)
            .bind(row.attempt)
            .bind(&row.error)
            .bind(row.deadline)
            .bind(row.step_deadline)
            .bind(row.next_attempt_at)
            .bind(owner)
            .bind(lease_until)
            .bind(&row.traceparent)
            .bind(row.created_at)
            .bind(row.updated_at)
            .bind(row.uncertain)
            .bind(row.step_started_at)
            .bind(row.refusals)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !inserted {
            return Ok(false);
        }
        for entry in history {
            insert_entry!(tx, &row.id, entry);
        }
        tx.commit().await?;
        Ok(true)
    })
}

/// Writes `row`'s new values, its history lines and the step's outbox events in one transaction,
/// if `owner` still owns the saga; `false` (and nothing written) when another replica took it over.
/// `release` gives up ownership (a finished or parked saga).
pub(super) async fn commit(
    store: &Store,
    row: &SagaRow,
    owner: &str,
    release: bool,
    history: &[Entry],
    outbox: &[Message],
) -> Result<bool, sqlx::Error> {
    const UPDATE: &str = "
        update marty_saga set state = $3, status = $4, step = $5, attempt = $6, error = $7,
            step_deadline = $8, next_attempt_at = $9, updated_at = $10,
            owner = case when $11 then null else owner end,
            lease_until = case when $11 then 0 else lease_until end,
            uncertain = $12, step_started_at = $13, refusals = $14
        where id = $1 and owner = $2";
    on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        let owned = sqlx::query(UPDATE)
            .bind(&row.id)
            .bind(owner)
            .bind(&row.state)
            .bind(&row.status)
            .bind(row.step)
            .bind(row.attempt)
            .bind(&row.error)
            .bind(row.step_deadline)
            .bind(row.next_attempt_at)
            .bind(row.updated_at)
            .bind(release)
            .bind(row.uncertain)
            .bind(row.step_started_at)
            .bind(row.refusals)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !owned {
            return Ok(false);
        }
        for entry in history {
            insert_entry!(tx, &row.id, entry);
        }
        for message in outbox {
            tx.insert_outbox_row(message).await?;
        }
        tx.commit().await?;
        Ok(true)
    })
}

/// The saga `id` of type `name`, if there is one.
pub(super) async fn load(store: &Store, name: &str, id: &str) -> Result<Option<SagaRow>, sqlx::Error> {
    let sql = format!("select {COLUMNS} from marty_saga where id = $1 and name = $2");
    on_store!(store, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(name).fetch_optional(pool).await
    })
}

/// Saga `id`, whatever its type.
pub(super) async fn load_any(store: &Store, id: &str) -> Result<Option<SagaRow>, sqlx::Error> {
    let sql = format!("select {COLUMNS} from marty_saga where id = $1");
    on_store!(store, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await)
}

/// Up to `limit` sagas of any type, with `status` when given, newest first.
pub(super) async fn list(store: &Store, status: Option<&str>, limit: i64) -> Result<Vec<SagaRow>, sqlx::Error> {
    let sql = format!(
        "select {COLUMNS} from marty_saga where ($1 is null or status = $1) order by created_at desc, id limit $2"
    );
    on_store!(store, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(status).bind(limit).fetch_all(pool).await)
}

/// The next history sequence number of saga `id`.
pub(super) async fn next_seq(store: &Store, id: &str) -> Result<i32, sqlx::Error> {
    on_store!(store, pool => sqlx::query_scalar(NEXT_SEQ).bind(id).fetch_one(pool).await)
}

/// What a claim sets, `now` being its parameter for the time (SQL reads the row as it was before the
/// update): a saga released by its owner keeps the time of the release; one taken from an owner that
/// stopped renewing (or reloaded by its own owner) is handed over now.
fn handed_over(now: &str) -> String {
    format!("handed_over_at = case when owner is null then handed_over_at else {now} end")
}

/// Takes over up to `limit` unfinished sagas of type `name` that no replica holds a live lease on and
/// that are due by `due_by`: they become `owner`'s until `lease_until`.
pub(super) async fn claim(
    store: &Store,
    name: &str,
    owner: &str,
    now: i64,
    lease_until: i64,
    due_by: i64,
    limit: i64,
) -> Result<Vec<SagaRow>, sqlx::Error> {
    // The outer `lease_until < $3` is checked again on the locked row (PostgreSQL re-evaluates it
    // after waiting for a concurrent claim; SQLite has one writer), so two replicas never both win.
    let sql = format!(
        "update marty_saga set {}, owner = $1, lease_until = $2
         where id in (
             select id from marty_saga
             where name = $4 and status in ('running', 'compensating') and lease_until < $3
                 and next_attempt_at <= $5
             order by next_attempt_at limit $6)
           and lease_until < $3
         returning {COLUMNS}",
        handed_over("$3")
    );
    on_store!(store, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(name)
            .bind(due_by)
            .bind(limit)
            .fetch_all(pool)
            .await
    })
}

/// Takes back the unfinished sagas of type `name` that an earlier run of this replica owned (an owner
/// starting with `replica_prefix` other than `owner`) and no longer renews (its lease ends before
/// `stale_before`, though it has not run out): they become `owner`'s until `lease_until`.
pub(super) async fn reclaim(
    store: &Store,
    name: &str,
    owner: &str,
    replica_prefix: &str,
    now: i64,
    stale_before: i64,
    lease_until: i64,
) -> Result<Vec<SagaRow>, sqlx::Error> {
    // `substr` rather than `like`: a replica name may hold `_`, which `like` reads as a wildcard.
    let sql = format!(
        "update marty_saga set {}, owner = $1, lease_until = $2
         where name = $3 and status in ('running', 'compensating') and owner <> $1
             and substr(owner, 1, $4) = $5 and lease_until < $6
         returning {COLUMNS}",
        handed_over("$7")
    );
    on_store!(store, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(lease_until)
            .bind(name)
            .bind(replica_prefix.chars().count() as i32)
            .bind(replica_prefix)
            .bind(stale_before)
            .bind(now)
            .fetch_all(pool)
            .await
    })
}

/// Makes unfinished saga `id` `owner`'s until `lease_until` if it is already, or its lease has
/// expired; whether it is now.
pub(super) async fn claim_one(
    store: &Store,
    id: &str,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "update marty_saga set {}, owner = $2, lease_until = $4
         where id = $1 and status in ('running', 'compensating') and (owner = $2 or lease_until < $3)",
        handed_over("$3")
    );
    on_store!(store, pool => {
        let claimed = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(owner).bind(now).bind(lease_until).execute(pool).await?;
        Ok(claimed.rows_affected() == 1)
    })
}

/// Extends `owner`'s leases on every saga it still runs.
pub(super) async fn renew(store: &Store, owner: &str, lease_until: i64) -> Result<u64, sqlx::Error> {
    const RENEW: &str = "update marty_saga set lease_until = $2
        where owner = $1 and status in ('running', 'compensating')";
    on_store!(store, pool => Ok(sqlx::query(RENEW).bind(owner).bind(lease_until).execute(pool).await?.rows_affected()))
}

/// Gives up `owner`'s leases, so other replicas take its sagas over at once, and records when
/// (`now`): an attempt due later had not begun.
pub(super) async fn release(store: &Store, owner: &str, now: i64) -> Result<(), sqlx::Error> {
    const RELEASE: &str = "update marty_saga set owner = null, lease_until = 0, handed_over_at = $2 where owner = $1";
    on_store!(store, pool => sqlx::query(RELEASE).bind(owner).bind(now).execute(pool).await.map(drop))
}

/// Saga `id`'s history, oldest first.
pub(super) async fn history(store: &Store, id: &str) -> Result<Vec<EntryRow>, sqlx::Error> {
    const HISTORY: &str =
        "select seq, at, step, kind, attempt, detail from marty_saga_history where saga_id = $1 order by seq";
    on_store!(store, pool => sqlx::query_as(HISTORY).bind(id).fetch_all(pool).await)
}

/// The parked sagas of type `name`, oldest first.
pub(super) async fn parked(store: &Store, name: &str) -> Result<Vec<SagaRow>, sqlx::Error> {
    let sql = format!("select {COLUMNS} from marty_saga where name = $1 and status = 'parked' order by created_at");
    on_store!(store, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(name).fetch_all(pool).await)
}

/// Puts parked saga `id` back to compensating, its attempts reset, for any replica to take; `false`
/// when it is not parked.
pub(super) async fn resume(store: &Store, name: &str, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    // Attempt 0: nothing was under way, so the replica that takes it does not count an interruption.
    const RESUME: &str = "update marty_saga set status = 'compensating', attempt = 0, next_attempt_at = $3,
            step_deadline = null, owner = null, lease_until = 0, updated_at = $3, step_started_at = $3,
            refusals = 0
        where id = $1 and name = $2 and status = 'parked'";
    on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        let resumed = sqlx::query(RESUME).bind(id).bind(name).bind(now).execute(&mut *tx).await?.rows_affected() == 1;
        if resumed {
            let seq: i32 = sqlx::query_scalar(NEXT_SEQ).bind(id).fetch_one(&mut *tx).await?;
            let entry = Entry { seq, at: now, step: None, kind: "resumed", attempt: 0, detail: None };
            insert_entry!(tx, id, &entry);
            tx.commit().await?;
        }
        Ok(resumed)
    })
}
