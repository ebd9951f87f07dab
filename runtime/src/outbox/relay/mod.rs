//! The relay: takes committed outbox rows in batches, publishes them pipelined, and marks them sent
//! once the broker acknowledged them. See the module docs of [`crate::outbox`] for its promises.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod wake;

use super::Store;
use crate::events::{Broker, BrokerError, Message};
use crate::metrics::EventMetrics;
#[cfg(feature = "sqlite")]
use crate::store::unix_seconds;
use wake::Wake;
#[cfg(feature = "sqlite")]
pub(crate) use wake::LOCAL_WRITES;

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
