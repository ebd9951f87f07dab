//! The transactional outbox against PostgreSQL and NATS JetStream on loopback, each figure beside
//! its baseline in the same run:
//!
//! - `business_tps_raw` / `business_tps_outbox`: transactions per second at 8 concurrent clients,
//!   an order insert alone vs the same with one event through `marty::outbox::publish`;
//! - `relay_drain_eps` / `broker_pipelined_eps`: one relay draining a backlog of 100,000 events into
//!   JetStream vs the raw client publishing as many with acks pipelined;
//! - `producer_tps_relay_on` / `producer_tps_relay_off`: outbox transactions per second while a relay
//!   runs vs while none does; and `producer_tps_sql_only`, while the same relay runs against a broker
//!   that acknowledges at once: the relay's own SQL (claim and delete) is all it costs the database,
//!   the physical reference for `producer_ratio_sql_only` (relay on / SQL-only relay on);
//! - `p50_ms` / `p99_ms`: from a transaction's commit to its event's delivery from JetStream (so
//!   after the broker's ack), at a fixed 1,000 events per second.
//!
//! `MARTY_BENCH_POSTGRES_URL` and `MARTY_BENCH_NATS_URL` override the loopback defaults. Last stdout
//! line: one JSON object.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use marty::events::{Broker, NatsBroker, SubscribeOptions};
use marty::metrics::EventMetrics;
use marty::outbox::{Relay, RelayOptions};
use marty::store::Store;
use marty_bench::{json, median, Value};
use serde::{Deserialize, Serialize};

const SCHEMA: &str = "bench_outbox";
const CLIENTS: usize = 8;
const ROUND: Duration = Duration::from_secs(2);
const ROUNDS: usize = 5;
const BACKLOG: i64 = 100_000;
const DRAIN_BATCH: u32 = 1_000;

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "bench.orders")]
struct OrderPlaced {
    #[event(key)]
    order_id: i64,
    item: String,
    quantity: i64,
}

async fn pool(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(CLIENTS as u32 + 4)
        .after_connect(|connection, _| {
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("set search_path to {SCHEMA}"))).execute(connection).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .expect("PostgreSQL")
}

/// Business transactions per second at `CLIENTS` concurrent clients for one round.
async fn business_tps(pool: &sqlx::PgPool, with_event: bool) -> f64 {
    let deadline = Instant::now() + ROUND;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let mut tx = pool.begin().await.unwrap();
                    let (order_id,): (i64,) =
                        sqlx::query_as("insert into orders (item, quantity) values ($1, $2) returning id")
                            .bind("book")
                            .bind(2i64)
                            .fetch_one(&mut *tx)
                            .await
                            .unwrap();
                    if with_event {
                        let event = OrderPlaced { order_id, item: "book".into(), quantity: 2 };
                        marty::outbox::publish(&mut *tx, &event).await.unwrap();
                    }
                    tx.commit().await.unwrap();
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for client in clients {
        total += client.await.unwrap();
    }
    total as f64 / ROUND.as_secs_f64()
}

/// A broker that acknowledges every event at once and delivers nothing: with it, a relay does only
/// its SQL.
#[derive(Debug)]
struct AcknowledgesAtOnce;

impl Broker for AcknowledgesAtOnce {
    fn publish<'a>(
        &'a self,
        messages: &'a [marty::events::Message],
    ) -> marty::events::BoxFuture<'a, Vec<Result<(), marty::events::BrokerError>>> {
        Box::pin(async move { messages.iter().map(|_| Ok(())).collect() })
    }

    fn subscribe(
        &self,
        _topic: &str,
        _group: &str,
        _options: SubscribeOptions,
    ) -> marty::events::BoxFuture<'_, Result<marty::events::Subscription, marty::events::BrokerError>> {
        Box::pin(async { Err(marty::events::BrokerError::Unavailable("delivers nothing".into())) })
    }
}

/// Producer transactions per second while a relay publishing to `broker` runs, from an empty outbox
/// (what earlier rounds left is relayed first), so that each relay measured starts alike.
async fn producer_tps_with_relay(pool: &sqlx::PgPool, store: &Store, broker: Arc<dyn Broker>) -> f64 {
    let relay = Relay::new(store.clone(), broker, RelayOptions::default(), EventMetrics::default());
    while relay.run_batch().await.unwrap().taken > 0 {}
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let relay = relay.start(shutdown);
    let tps = business_tps(pool, true).await;
    stop.send(true).unwrap();
    relay.await.unwrap();
    tps
}

async fn delete_stream(url: &str, name: &str) {
    let client = async_nats::connect(url).await.expect("NATS");
    let _ = async_nats::jetstream::new(client).delete_stream(name).await;
}

/// One relay draining `BACKLOG` pending rows: events per second.
async fn relay_drain(pool: &sqlx::PgPool, store: &Store, broker: Arc<dyn Broker>) -> f64 {
    sqlx::query("truncate marty_outbox").execute(pool).await.unwrap();
    sqlx::query(
        "insert into marty_outbox (event_id, topic, key, version, payload)
         select gen_random_uuid()::text, 'bench.drain', (n % 1000)::text, 1,
                convert_to('{\"order_id\":' || n || ',\"item\":\"book\",\"quantity\":2}', 'UTF8')
         from generate_series(1, $1) as n",
    )
    .bind(BACKLOG)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("analyze marty_outbox").execute(pool).await.unwrap();
    let options = RelayOptions::default().batch_size(DRAIN_BATCH);
    let relay = Relay::new(store.clone(), broker, options, EventMetrics::default());
    let started = Instant::now();
    let mut published = 0;
    while published < BACKLOG as usize {
        let report = relay.run_batch().await.unwrap();
        assert!(!report.broker_unavailable && report.rejected == 0, "{report:?}");
        published += report.published;
    }
    BACKLOG as f64 / started.elapsed().as_secs_f64()
}

/// The raw client publishing `BACKLOG` events of the same size with acks pipelined.
async fn broker_pipelined(url: &str) -> f64 {
    let client = async_nats::connect(url).await.expect("NATS");
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH_RAW".into(),
            subjects: vec!["bench.raw".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    for n in 0..BACKLOG {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", marty::events::new_event_id());
        let payload = format!(r#"{{"order_id":{n},"item":"book","quantity":2}}"#);
        in_flight.push_back(jetstream.publish_with_headers("bench.raw", headers, payload.into()).await.unwrap());
        if in_flight.len() >= DRAIN_BATCH as usize {
            in_flight.pop_front().unwrap().await.unwrap();
        }
    }
    for ack in in_flight {
        ack.await.unwrap();
    }
    BACKLOG as f64 / started.elapsed().as_secs_f64()
}

/// Commit-to-delivery latencies at 1,000 events per second for five seconds.
async fn latencies(pool: &sqlx::PgPool, mut subscription: marty::events::Subscription) -> (f64, f64) {
    let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let mut samples = Vec::new();
    let receiver = {
        let committed = committed.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_secs(3), subscription.next()).await {
                let event: OrderPlaced = marty::Event::decode(&delivery.message.payload).unwrap();
                if let Some(at) = committed.lock().unwrap().remove(&event.order_id) {
                    latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                }
                delivery.ack().await.unwrap();
            }
            latencies
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        tick.tick().await;
        let pool = pool.clone();
        let committed = committed.clone();
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            let (order_id,): (i64,) =
                sqlx::query_as("insert into orders (item, quantity) values ('pen', 1) returning id")
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            marty::outbox::publish(&mut *tx, &OrderPlaced { order_id, item: "pen".into(), quantity: 1 }).await.unwrap();
            // Recorded just before the commit: the commit itself is part of the latency.
            committed.lock().unwrap().insert(order_id, Instant::now());
            tx.commit().await.unwrap();
        });
    }
    samples.extend(receiver.await.unwrap());
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    eprintln!("latency samples: {}", samples.len());
    (at(0.50), at(0.99))
}

#[tokio::main]
async fn main() {
    let pg_url =
        std::env::var("MARTY_BENCH_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let nats_url = std::env::var("MARTY_BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let admin = sqlx::PgPool::connect(&pg_url).await.expect("PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop schema if exists {SCHEMA} cascade; create schema {SCHEMA}")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = pool(&pg_url).await;
    sqlx::query("create table orders (id bigserial primary key, item text not null, quantity bigint not null)")
        .execute(&pool)
        .await
        .unwrap();
    let store = marty::store::register("bench_db", pool.clone()).await.unwrap();
    for stream in ["MARTY_bench_orders", "MARTY_bench_drain", "BENCH_RAW"] {
        delete_stream(&nats_url, stream).await;
    }
    let broker: Arc<dyn Broker> = Arc::new(NatsBroker::connect(&nats_url).await.unwrap());

    eprintln!("business transactions: raw vs with an outbox event, {ROUNDS} rounds of {ROUND:?}");
    let (mut raw, mut outbox) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        raw.push(business_tps(&pool, false).await);
        outbox.push(business_tps(&pool, true).await);
    }
    let (business_tps_raw, business_tps_outbox) = (median(&mut raw), median(&mut outbox));

    eprintln!("relay on vs off vs a SQL-only relay");
    let sql_only: Arc<dyn Broker> = Arc::new(AcknowledgesAtOnce);
    let (mut on, mut off, mut sql) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        off.push(business_tps(&pool, true).await);
        on.push(producer_tps_with_relay(&pool, &store, broker.clone()).await);
        sql.push(producer_tps_with_relay(&pool, &store, sql_only.clone()).await);
    }
    let (producer_tps_relay_off, producer_tps_relay_on, producer_tps_sql_only) =
        (median(&mut off), median(&mut on), median(&mut sql));

    eprintln!("latency at 1,000 events/s");
    // Everything written so far is relayed first, so the latency run starts from an empty outbox.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let relay = Relay::new(store.clone(), broker.clone(), RelayOptions::default(), EventMetrics::default());
    while relay.run_batch().await.unwrap().taken > 0 {}
    delete_stream(&nats_url, "MARTY_bench_orders").await;
    let subscription = broker.subscribe("bench.orders", "latency", SubscribeOptions::default()).await.unwrap();
    let running = relay.clone().start(shutdown.clone());
    let (p50_ms, p99_ms) = latencies(&pool, subscription).await;
    stop.send(true).unwrap();
    running.await.unwrap();

    eprintln!("draining a backlog of {BACKLOG}: relay vs raw pipelined client");
    let relay_drain_eps = relay_drain(&pool, &store, broker.clone()).await;
    let broker_pipelined_eps = broker_pipelined(&nats_url).await;

    println!(
        "{}",
        json(&[
            ("bench", Value::Text("outbox_relay".into())),
            ("business_tps_raw", Value::Number(business_tps_raw)),
            ("business_tps_outbox", Value::Number(business_tps_outbox)),
            ("business_ratio", Value::Number(business_tps_outbox / business_tps_raw)),
            ("relay_drain_eps", Value::Number(relay_drain_eps)),
            ("broker_pipelined_eps", Value::Number(broker_pipelined_eps)),
            ("drain_ratio", Value::Number(relay_drain_eps / broker_pipelined_eps)),
            ("drain_batch", Value::Number(f64::from(DRAIN_BATCH))),
            ("producer_tps_relay_on", Value::Number(producer_tps_relay_on)),
            ("producer_tps_relay_off", Value::Number(producer_tps_relay_off)),
            ("producer_ratio", Value::Number(producer_tps_relay_on / producer_tps_relay_off)),
            ("producer_tps_sql_only", Value::Number(producer_tps_sql_only)),
            ("producer_ratio_sql_only", Value::Number(producer_tps_relay_on / producer_tps_sql_only)),
            ("p50_ms", Value::Number(p50_ms)),
            ("p99_ms", Value::Number(p99_ms)),
        ])
    );
}
