//! The relay: takes committed outbox rows in batches, publishes them pipelined, and marks them sent
//! once the broker acknowledged them. See the module docs of [`crate::outbox`] for its promises.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Store;
use crate::events::{Broker, BrokerError, Message};
use crate::metrics::EventMetrics;
#[cfg(feature = "sqlite")]
use crate::store::unix_seconds;

/// How long the relay waits after a small batch before taking the next.
const LINGER: Duration = Duration::from_millis(2);

/// How the relay works; `[outbox]` sets these.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayOptions {
    /// Rows per batch.
    pub batch_size: u32,
    /// How often the relay looks for rows when no wake-up came (PostgreSQL wakes it on commit).
    pub poll_interval: Duration,
    /// Publish attempts the broker may reject before the row is parked.
    pub max_attempts: u32,
    /// How long sent rows are kept before they are deleted; zero deletes them as they are sent.
    pub retention: Duration,
    /// How long a SQLite relay's claim on a batch lasts if the relay dies holding it.
    pub claim_lease: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            max_attempts: 10,
            retention: Duration::ZERO,
            claim_lease: Duration::from_secs(30),
        }
    }
}

impl RelayOptions {
    /// The options `[outbox]` gives.
    pub fn from_config(config: &marty_config::OutboxConfig) -> Self {
        RelayOptions {
            batch_size: config.batch_size,
            poll_interval: config.poll_interval,
            max_attempts: config.max_attempts,
            retention: config.retention,
            ..Self::default()
        }
    }

    /// Sets the rows per batch.
    pub fn batch_size(mut self, rows: u32) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// Sets the attempts before a row is parked.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets how long sent rows are kept (zero: deleted as they are sent).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the polling fallback.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows taken.
    pub taken: usize,
    /// Rows the broker acknowledged (now sent).
    pub published: usize,
    /// Rows the broker rejected (attempt counted; parked at the last).
    pub rejected: usize,
    /// Rows parked by this batch.
    pub parked: usize,
    /// The broker could not be reached: nothing was counted against the rows.
    pub broker_unavailable: bool,
    /// Committed rows exist that could not be taken yet (an earlier transaction still open, or an
    /// earlier row of the same key held by another relay): worth looking again soon.
    pub waiting: bool,
}

/// Relays one outbox table to one broker.
#[derive(Debug, Clone)]
pub struct Relay {
    store: Store,
    broker: Arc<dyn Broker>,
    options: RelayOptions,
    metrics: EventMetrics,
}

/// Rows taken for one batch: their ids and messages, in id order.
struct Taken {
    ids: Vec<i64>,
    messages: Vec<Message>,
    attempts: Vec<i32>,
}

/// What to write back after publishing a batch.
struct Settled {
    sent: Vec<i64>,
    /// Rejected rows: id, the attempt count it reaches, whether that parks it, and the reason.
    rejected: Vec<(i64, i32, bool, String)>,
    /// Rows not published because the broker was unreachable.
    unavailable: Vec<i64>,
}

impl Relay {
    /// A relay of `store`'s outbox into `broker`.
    pub fn new(store: Store, broker: Arc<dyn Broker>, options: RelayOptions, metrics: EventMetrics) -> Self {
        Relay { store, broker, options, metrics }
    }

    /// Relays until `shutdown` turns true; the batch in flight finishes first.
    pub fn start(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let relay_id = crate::events::new_event_id();
        let mut wake = Wake::new(&self.store).await;
        let mut backoff = Duration::from_millis(50);
        // Marked as waiting in `marty_relay_wake`, so commits notify it.
        let mut waiting = false;
        let mut quick_rechecks = 0u32;
        let mut next_gauges = Instant::now();
        let mut next_housekeeping = Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if Instant::now() >= next_gauges {
                next_gauges = Instant::now() + Duration::from_secs(1);
                if let Err(error) = self.refresh_gauges().await {
                    tracing::warn!(%error, "reading the outbox's size failed");
                }
            }
            if Instant::now() >= next_housekeeping {
                next_housekeeping = Instant::now() + Duration::from_secs(60);
                if let Err(error) = self.housekeeping(&relay_id, waiting).await {
                    tracing::warn!(%error, "outbox housekeeping failed");
                }
            }
            let report = match self.run_batch().await {
                Ok(report) if !report.broker_unavailable => report,
                Ok(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "outbox relay batch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            if report.published > 0 || report.taken >= self.options.batch_size as usize {
                if waiting {
                    waiting = self.mark_waiting(&relay_id, false).await;
                }
                quick_rechecks = 4;
                if report.taken < self.options.batch_size as usize / 4 {
                    // A trickle: linger a moment so the next batch carries more rows for the same
                    // round trips (costs at most this much latency).
                    tokio::time::sleep(LINGER).await;
                }
                continue;
            }
            if !waiting {
                // Look once more after marking: a commit between the last look and the mark did
                // not notify.
                waiting = self.mark_waiting(&relay_id, true).await;
                continue;
            }
            // Rows held back by the gate, or transactions in progress: look again soon a few
            // times (2, 4, 8, 16 ms), then rely on wake-ups and polling.
            let pause = if report.waiting && quick_rechecks > 0 {
                quick_rechecks -= 1;
                Duration::from_millis(2u64 << (3 - quick_rechecks.min(3)))
            } else {
                self.options.poll_interval
            };
            tokio::select! {
                woken = wake.wait(pause) => if woken { quick_rechecks = 4; },
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        let _ = self.forget_relay(&relay_id).await;
    }

    /// Marks this relay as waiting for commits, or not; returns the mark now in place (unchanged
    /// when writing it failed).
    async fn mark_waiting(&self, relay_id: &str, waiting: bool) -> bool {
        match &self.store {
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                let marked = sqlx::query(
                    "insert into marty_relay_wake (relay_id, sleeping, updated_at) values ($1, $2, now())
                     on conflict (relay_id) do update set sleeping = excluded.sleeping, updated_at = now()",
                )
                .bind(relay_id)
                .bind(waiting)
                .execute(pool)
                .await;
                match marked {
                    Ok(_) => waiting,
                    Err(error) => {
                        tracing::warn!(%error, "cannot mark the relay as waiting; polling instead");
                        !waiting
                    }
                }
            }
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) => {
                let _ = relay_id;
                waiting
            }
        }
    }

    /// Once a minute: keep this relay's wake mark fresh, drop those of relays that died, and delete
    /// sent rows past their retention.
    #[allow(irrefutable_let_patterns)]
    async fn housekeeping(&self, relay_id: &str, waiting: bool) -> Result<(), sqlx::Error> {
        #[cfg(feature = "postgres")]
        if let Store::Postgres(pool) = &self.store {
            if waiting {
                self.mark_waiting(relay_id, true).await;
            }
            sqlx::query("delete from marty_relay_wake where updated_at < now() - interval '10 minutes'")
                .execute(pool)
                .await?;
        }
        let _ = (relay_id, waiting);
        if !self.options.retention.is_zero() {
            self.delete_sent().await?;
        }
        Ok(())
    }

    #[allow(irrefutable_let_patterns)]
    async fn forget_relay(&self, relay_id: &str) -> Result<(), sqlx::Error> {
        #[cfg(feature = "postgres")]
        if let Store::Postgres(pool) = &self.store {
            sqlx::query("delete from marty_relay_wake where relay_id = $1").bind(relay_id).execute(pool).await?;
        }
        let _ = relay_id;
        Ok(())
    }

    /// Takes, publishes and settles one batch.
    pub async fn run_batch(&self) -> Result<BatchReport, sqlx::Error> {
        match &self.store {
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => self.postgres_batch(pool).await,
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => self.sqlite_batch(pool).await,
        }
    }

    /// Publishes a batch in waves: each wave holds at most one event per key and is pipelined; an
    /// event goes out only once the broker acknowledged the previous one of its key. So a failure
    /// (say the connection drops with the first event in flight while the client resends the
    /// second after reconnecting) can never leave a later event of a key stored before an earlier
    /// one. A key whose event failed sends nothing more in this batch. Distinct keys (the usual
    /// batch) make one wave.
    async fn publish_in_waves(&self, messages: &[Message]) -> Vec<Result<(), BrokerError>> {
        let mut acks: Vec<Option<Result<(), BrokerError>>> = vec![None; messages.len()];
        let mut failed_keys: HashSet<&str> = HashSet::new();
        let mut remaining: Vec<usize> = (0..messages.len()).collect();
        while !remaining.is_empty() {
            let mut in_wave: HashSet<&str> = HashSet::new();
            let (mut wave, mut later) = (Vec::new(), Vec::new());
            for index in remaining {
                match messages[index].key.as_deref() {
                    Some(key) if failed_keys.contains(key) => {
                        let held = "held back: an earlier event of its key was not acknowledged";
                        acks[index] = Some(Err(BrokerError::Unavailable(held.into())));
                    }
                    Some(key) if !in_wave.insert(key) => later.push(index),
                    _ => wave.push(index),
                }
            }
            let wave_acks = if wave.len() == messages.len() {
                self.broker.publish(messages).await
            } else {
                let batch: Vec<Message> = wave.iter().map(|&index| messages[index].clone()).collect();
                self.broker.publish(&batch).await
            };
            for (&index, ack) in wave.iter().zip(wave_acks) {
                if let (Err(_), Some(key)) = (&ack, messages[index].key.as_deref()) {
                    failed_keys.insert(key);
                }
                acks[index] = Some(ack);
            }
            remaining = later;
        }
        acks.into_iter().map(|ack| ack.expect("every event is in a wave or held back")).collect()
    }

    async fn publish(&self, taken: &Taken, report: &mut BatchReport) -> Settled {
        let acks = self.publish_in_waves(&taken.messages).await;
        let mut settled = Settled { sent: Vec::new(), rejected: Vec::new(), unavailable: Vec::new() };
        for (index, ack) in acks.into_iter().enumerate() {
            let id = taken.ids[index];
            match ack {
                Ok(()) => settled.sent.push(id),
                Err(BrokerError::Unavailable(problem)) => {
                    if settled.unavailable.is_empty() {
                        tracing::warn!(%problem, "broker unavailable; the relay backs off");
                    }
                    settled.unavailable.push(id);
                }
                Err(BrokerError::Rejected(problem)) => {
                    let attempts = taken.attempts[index] + 1;
                    let park = attempts >= self.options.max_attempts as i32;
                    if park {
                        tracing::error!(id, event_id = %taken.messages[index].id, %problem, "outbox row parked");
                    }
                    settled.rejected.push((id, attempts, park, problem));
                }
            }
        }
        report.published = settled.sent.len();
        report.rejected = settled.rejected.len();
        report.parked = settled.rejected.iter().filter(|rejected| rejected.2).count();
        report.broker_unavailable = !settled.unavailable.is_empty();
        self.metrics.outbox_published.inc_by(settled.sent.len() as u64);
        self.metrics.outbox_failed.inc_by((settled.rejected.len() + settled.unavailable.len()) as u64);
        settled
    }

    /// Backoff before a rejected row's next attempt.
    fn retry_delay(attempts: i32) -> Duration {
        Duration::from_millis(100).saturating_mul(1 << attempts.clamp(0, 10)).min(Duration::from_secs(60))
    }

    async fn refresh_gauges(&self) -> Result<(), sqlx::Error> {
        let (pending, parked, lag): (i64, i64, f64) = match &self.store {
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                sqlx::query_as(
                    "select (select count(*) from marty_outbox where state = 0),
                            (select count(*) from marty_outbox where state = 2),
                            coalesce((select extract(epoch from clock_timestamp() - created_at)::float8
                                      from marty_outbox where state = 0 order by id limit 1), 0)",
                )
                .fetch_one(pool)
                .await?
            }
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => {
                sqlx::query_as(
                    "select (select count(*) from marty_outbox where state = 0),
                            (select count(*) from marty_outbox where state = 2),
                            coalesce((select ? - created_at from marty_outbox where state = 0 order by id limit 1), 0.0)",
                )
                .bind(unix_seconds())
                .fetch_one(pool)
                .await?
            }
        };
        self.metrics.outbox_pending.set(pending);
        self.metrics.outbox_parked.set(parked);
        self.metrics.outbox_lag_seconds.set(lag.max(0.0));
        Ok(())
    }

    async fn delete_sent(&self) -> Result<(), sqlx::Error> {
        let retention = self.options.retention.as_secs_f64();
        match &self.store {
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                sqlx::query(
                    "delete from marty_outbox where id in (select id from marty_outbox
                     where state = 1 and sent_at < now() - make_interval(secs => $1) limit 10000)",
                )
                .bind(retention)
                .execute(pool)
                .await?;
            }
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => {
                sqlx::query(
                    "delete from marty_outbox where id in (select id from marty_outbox
                     where state = 1 and sent_at < ? limit 10000)",
                )
                .bind(unix_seconds() - retention)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }
}

type Row = (i64, String, String, Option<String>, i32, Vec<u8>, Option<String>, Option<String>, i32);

fn taken_of(mut rows: Vec<Row>) -> Taken {
    rows.sort_unstable_by_key(|row| row.0);
    let mut taken = Taken { ids: Vec::new(), messages: Vec::new(), attempts: Vec::new() };
    for (id, event_id, topic, key, version, payload, traceparent, tracestate, attempts) in rows {
        taken.ids.push(id);
        taken.attempts.push(attempts);
        taken.messages.push(Message {
            id: event_id,
            topic,
            key,
            version: version as u32,
            payload,
            traceparent,
            tracestate,
        });
    }
    taken
}

#[cfg(feature = "postgres")]
impl Relay {
    async fn postgres_batch(&self, pool: &sqlx::PgPool) -> Result<BatchReport, sqlx::Error> {
        // Gate: only rows of transactions older than every transaction still running, so a row
        // whose transaction commits later can never be overtaken. Order: a row is published only
        // if no earlier pending row of its key is outside this batch.
        const TAKE: &str = "
            with batch as (
                select id, key from marty_outbox
                where state = 0 and next_attempt_at <= now()
                  and tx_id < pg_snapshot_xmin(pg_current_snapshot())
                order by id
                limit $1
                for update skip locked
            )
            select o.id, o.event_id, o.topic, o.key, o.version, o.payload, o.traceparent, o.tracestate, o.attempts
            from batch b join marty_outbox o on o.id = b.id
            where b.key is null or not exists (
                select 1 from marty_outbox p
                where p.key = b.key and p.id < b.id and p.state = 0
                  and p.id not in (select id from batch))";
        let mut tx = pool.begin().await?;
        let rows: Vec<Row> = sqlx::query_as(TAKE).bind(i64::from(self.options.batch_size)).fetch_all(&mut *tx).await?;
        let mut report = BatchReport { taken: rows.len(), ..BatchReport::default() };
        if rows.is_empty() {
            // Rows held back by the gate, or any transaction in progress (its commit may not wake
            // a relay that is not yet marked as waiting).
            report.waiting = sqlx::query_scalar(
                "select exists (select 1 from marty_outbox where state = 0 and next_attempt_at <= now()
                                and tx_id >= pg_snapshot_xmin(pg_current_snapshot()))
                     or pg_snapshot_xmin(pg_current_snapshot()) < pg_snapshot_xmax(pg_current_snapshot())",
            )
            .fetch_one(&mut *tx)
            .await?;
        }
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(report);
        }
        let taken = taken_of(rows);
        let settled = self.publish(&taken, &mut report).await;
        if !settled.sent.is_empty() {
            let mark_sent = if self.options.retention.is_zero() {
                "delete from marty_outbox where id = any($1)"
            } else {
                "update marty_outbox set state = 1, sent_at = now() where id = any($1)"
            };
            sqlx::query(mark_sent).bind(&settled.sent).execute(&mut *tx).await?;
        }
        for (id, attempts, park, problem) in &settled.rejected {
            sqlx::query(
                "update marty_outbox set attempts = $2, state = $3, last_error = $4,
                 next_attempt_at = now() + make_interval(secs => $5) where id = $1",
            )
            .bind(id)
            .bind(attempts)
            .bind(if *park { 2i16 } else { 0 })
            .bind(problem)
            .bind(Self::retry_delay(*attempts).as_secs_f64())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(report)
    }
}

#[cfg(feature = "sqlite")]
impl Relay {
    async fn sqlite_batch(&self, pool: &sqlx::SqlitePool) -> Result<BatchReport, sqlx::Error> {
        // SQLite serialises writers, so ids are in commit order and no gate is needed. Rows are
        // claimed for a lease in one statement (it has no row locks); a row is claimed only if no
        // earlier pending row of its key is claimed by someone else or waiting for its retry.
        const CLAIM: &str = "
            update marty_outbox set claimed_until = ?1 + ?2
            where id in (
                select o.id from marty_outbox o
                where o.state = 0 and o.claimed_until < ?1 and o.next_attempt_at <= ?1
                  and (o.key is null or not exists (
                      select 1 from marty_outbox p
                      where p.key = o.key and p.id < o.id and p.state = 0
                        and (p.claimed_until >= ?1 or p.next_attempt_at > ?1)))
                order by o.id
                limit ?3)
            returning id, event_id, topic, key, version, payload, traceparent, tracestate, attempts";
        let now = unix_seconds();
        let rows: Vec<Row> = sqlx::query_as(CLAIM)
            .bind(now)
            .bind(self.options.claim_lease.as_secs_f64())
            .bind(i64::from(self.options.batch_size))
            .fetch_all(pool)
            .await?;
        let mut report = BatchReport { taken: rows.len(), ..BatchReport::default() };
        if rows.is_empty() {
            return Ok(report);
        }
        let taken = taken_of(rows);
        let settled = self.publish(&taken, &mut report).await;
        let ids = |ids: &[i64]| format!("[{}]", ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","));
        let mut tx = pool.begin().await?;
        if !settled.sent.is_empty() {
            let mark_sent = if self.options.retention.is_zero() {
                "delete from marty_outbox where ?1 > 0 and id in (select value from json_each(?2))"
            } else {
                "update marty_outbox set state = 1, sent_at = ?1, claimed_until = 0
                 where id in (select value from json_each(?2))"
            };
            sqlx::query(mark_sent).bind(unix_seconds()).bind(ids(&settled.sent)).execute(&mut *tx).await?;
        }
        if !settled.unavailable.is_empty() {
            sqlx::query("update marty_outbox set claimed_until = 0 where id in (select value from json_each(?))")
                .bind(ids(&settled.unavailable))
                .execute(&mut *tx)
                .await?;
        }
        for (id, attempts, park, problem) in &settled.rejected {
            sqlx::query(
                "update marty_outbox set attempts = ?, state = ?, last_error = ?, next_attempt_at = ?,
                 claimed_until = 0 where id = ?",
            )
            .bind(attempts)
            .bind(if *park { 2i64 } else { 0 })
            .bind(problem)
            .bind(unix_seconds() + Self::retry_delay(*attempts).as_secs_f64())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(report)
    }
}

/// What wakes the relay before its poll interval: PostgreSQL's `NOTIFY marty_outbox` (sent by
/// `publish` while a relay is marked waiting, delivered when its transaction commits); in-process
/// outbox writes otherwise.
enum Wake {
    #[cfg(feature = "postgres")]
    Listen(Option<sqlx::postgres::PgListener>),
    #[cfg(feature = "sqlite")]
    Local,
}

/// Outbox writes made in this process, for stores without a commit notification.
#[cfg(feature = "sqlite")]
pub(crate) static LOCAL_WRITES: tokio::sync::Notify = tokio::sync::Notify::const_new();

impl Wake {
    async fn new(store: &Store) -> Self {
        match store {
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                let listener = async {
                    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
                    listener.listen("marty_outbox").await?;
                    Ok::<_, sqlx::Error>(listener)
                };
                match listener.await {
                    Ok(listener) => Wake::Listen(Some(listener)),
                    Err(error) => {
                        tracing::warn!(%error, "cannot LISTEN for outbox commits; polling only");
                        Wake::Listen(None)
                    }
                }
            }
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) => Wake::Local,
        }
    }

    /// Waits up to `pause`; `true` when a write woke it.
    async fn wait(&mut self, pause: Duration) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            Wake::Listen(Some(listener)) => {
                tokio::select! {
                    notified = listener.recv() => {
                        if let Err(error) = notified {
                            tracing::warn!(%error, "outbox LISTEN connection lost; reconnecting");
                            tokio::time::sleep(pause.min(Duration::from_millis(100))).await;
                        }
                        true
                    }
                    () = tokio::time::sleep(pause) => false,
                }
            }
            #[cfg(feature = "postgres")]
            Wake::Listen(None) => {
                tokio::time::sleep(pause).await;
                false
            }
            #[cfg(feature = "sqlite")]
            Wake::Local => {
                tokio::select! {
                    () = LOCAL_WRITES.notified() => true,
                    () = tokio::time::sleep(pause) => false,
                }
            }
        }
    }
}
