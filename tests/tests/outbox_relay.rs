//! The outbox and relay end to end: events written in business transactions reach consumers once
//! per group, in key order, with nothing skipped when transactions commit out of order and nothing
//! published twice by two relays on one table. SQLite with the in-process broker always; PostgreSQL,
//! NATS JetStream, RabbitMQ and Kafka (tansu) in tests ignored unless asked for (`--include-ignored`,
//! with `MARTY_TEST_*` set, as `.ci/run` does).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use marty::events::{
    Broker, EventHandler, Handled, HandlerError, HandlerOptions, MemoryBroker, Message, SubscribeOptions,
};
use marty::metrics::EventMetrics;
use marty::outbox::{self, Relay, RelayOptions};
use marty::store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, Clone, Serialize, Deserialize, marty::Event)]
#[event(topic = "accounts.credited")]
struct Credited {
    #[event(key)]
    account: String,
    seq: i64,
}

async fn sqlite_store() -> (Store, sqlx::SqlitePool, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(4).connect(&url).await.unwrap();
    sqlx::query("create table ledger (account text not null, seq integer not null)").execute(&pool).await.unwrap();
    let store = marty::store::register("ledger_db", pool.clone()).await.unwrap();
    (store, pool, dir)
}

/// A fresh PostgreSQL schema of its own, so tests running at once do not see each other's rows.
async fn postgres_store(url: &str, schema: &str) -> (Store, sqlx::PgPool) {
    marty_tests::fresh_schema(url, schema).await.unwrap();
    let pool = marty_tests::pool_in_schema(url, schema, 12).await.unwrap();
    sqlx::query("create table ledger (account text not null, seq bigint not null)").execute(&pool).await.unwrap();
    let store = marty::store::register("ledger_pg", pool.clone()).await.unwrap();
    (store, pool)
}

/// Collects what a broker delivers to one group, in delivery order, acknowledging each.
async fn collect(broker: Arc<dyn Broker>, topic: &str, group: &str, count: usize) -> Vec<Message> {
    let mut subscription = broker.subscribe(topic, group, SubscribeOptions::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < count {
        let delivery = tokio::time::timeout(Duration::from_secs(20), subscription.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} messages arrived", seen.len()))
            .expect("subscription ended");
        seen.push(delivery.message.clone());
        delivery.ack().await.unwrap();
    }
    seen
}

/// Per key, the sequence numbers in the order they arrived.
fn sequences(messages: &[Message]) -> BTreeMap<String, Vec<i64>> {
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for message in messages {
        let event: Credited = marty::Event::decode(&message.payload).unwrap();
        by_key.entry(event.account).or_default().push(event.seq);
    }
    by_key
}

fn assert_in_order(by_key: &BTreeMap<String, Vec<i64>>, per_key: i64) {
    for (key, seqs) in by_key {
        assert_eq!(seqs, &(0..per_key).collect::<Vec<_>>(), "key {key}: every event once, in order");
    }
}

#[tokio::test]
async fn sqlite_outbox_events_reach_the_broker_once_in_key_order_and_rolled_back_ones_never() {
    let (store, pool, _dir) = sqlite_store().await;
    for seq in 0..30 {
        for account in ["a", "b", "c"] {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("insert into ledger values (?, ?)").bind(account).bind(seq).execute(&mut *tx).await.unwrap();
            outbox::publish(&mut tx, &Credited { account: account.into(), seq }).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
    let mut tx = pool.begin().await.unwrap();
    outbox::publish(&mut tx, &Credited { account: "rolled-back".into(), seq: 0 }).await.unwrap();
    tx.rollback().await.unwrap();

    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let relay =
        Relay::new(store.clone(), broker.clone(), RelayOptions::default().batch_size(7), EventMetrics::default());
    let (stop, shutdown) = watch::channel(false);
    let running = relay.start(shutdown);
    let seen = collect(broker, "accounts.credited", "audit", 90).await;
    let by_key = sequences(&seen);
    assert_eq!(by_key.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_in_order(&by_key, 30);
    stop.send(true).unwrap();
    running.await.unwrap();
    let pending: i64 =
        sqlx::query_scalar("select count(*) from marty_outbox where state <> 1").fetch_one(&pool).await.unwrap();
    assert_eq!(pending, 0, "every row marked sent after its ack");
}

/// A broker that rejects every message of one key: the rows are parked after `max_attempts`, stay
/// visible, and come back with `replay`.
#[derive(Debug)]
struct RejectingBroker {
    inner: MemoryBroker,
    poisoned_key: &'static str,
}

impl Broker for RejectingBroker {
    fn publish<'a>(
        &'a self,
        messages: &'a [Message],
    ) -> marty::events::BoxFuture<'a, Vec<Result<(), marty::events::BrokerError>>> {
        Box::pin(async move {
            let (poisoned, fine): (Vec<_>, Vec<_>) =
                messages.iter().cloned().partition(|message| message.key.as_deref() == Some(self.poisoned_key));
            let _ = self.inner.publish(&fine).await;
            messages
                .iter()
                .map(|message| {
                    if poisoned.iter().any(|poison| poison.id == message.id) {
                        Err(marty::events::BrokerError::Rejected("message too large".into()))
                    } else {
                        Ok(())
                    }
                })
                .collect()
        })
    }

    fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> marty::events::BoxFuture<'_, Result<marty::events::Subscription, marty::events::BrokerError>> {
        self.inner.subscribe(topic, group, options)
    }
}

#[tokio::test]
async fn rows_the_broker_keeps_rejecting_are_parked_visible_and_replayable() {
    let (store, pool, _dir) = sqlite_store().await;
    let mut tx = pool.begin().await.unwrap();
    outbox::publish(&mut tx, &Credited { account: "poison".into(), seq: 0 }).await.unwrap();
    outbox::publish(&mut tx, &Credited { account: "fine".into(), seq: 0 }).await.unwrap();
    tx.commit().await.unwrap();
    let broker = Arc::new(RejectingBroker { inner: MemoryBroker::new(), poisoned_key: "poison" });
    let relay =
        Relay::new(store.clone(), broker.clone(), RelayOptions::default().max_attempts(2), EventMetrics::default());
    let first = relay.run_batch().await.unwrap();
    assert_eq!((first.taken, first.published, first.rejected, first.parked), (2, 1, 1, 0));
    sqlx::query("update marty_outbox set next_attempt_at = 0").execute(&pool).await.unwrap(); // skip the retry wait
    let second = relay.run_batch().await.unwrap();
    assert_eq!((second.taken, second.rejected, second.parked), (1, 1, 1));
    let parked = outbox::parked(&store).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].key.as_deref(), Some("poison"));
    assert_eq!(parked[0].attempts, 2);
    assert!(parked[0].to_string().contains("message too large"), "{}", parked[0]);
    assert_eq!(relay.run_batch().await.unwrap().taken, 0, "a parked row is not retried on its own");
    assert!(outbox::replay(&store, parked[0].id).await.unwrap());
    assert_eq!(relay.run_batch().await.unwrap().taken, 1, "a replayed row is taken again");
    assert!(!outbox::replay(&store, 999_999).await.unwrap());
}

fn ledger_handler(
    pool: sqlx::SqlitePool,
    group: &str,
    effects: Arc<std::sync::Mutex<Vec<(String, i64)>>>,
) -> EventHandler {
    let invoke: marty::events::Invoke = Arc::new(move |message: Message| {
        let pool = pool.clone();
        let effects = effects.clone();
        Box::pin(async move {
            let event: Credited =
                marty::Event::decode(&message.payload).map_err(|error| HandlerError::Undecodable(error.to_string()))?;
            let Some(tx) = marty::inbox::begin(&pool, "ledger", &message.id)
                .await
                .map_err(|error| HandlerError::Failed(error.to_string()))?
            else {
                return Ok(Handled::Duplicate);
            };
            effects.lock().unwrap().push((event.account, event.seq));
            tx.commit().await.map_err(|error| HandlerError::Failed(error.to_string()))?;
            Ok(Handled::Done)
        })
    });
    EventHandler::new("accounts.credited", group, "ledger", HandlerOptions::default().concurrency(4), invoke)
}

#[tokio::test]
async fn the_inbox_turns_a_redelivered_event_into_a_duplicate_and_poison_is_dead_lettered() {
    let (_store, pool, _dir) = sqlite_store().await;
    let broker = Arc::new(MemoryBroker::new());
    let effects = Arc::new(std::sync::Mutex::new(Vec::new()));
    let metrics = EventMetrics::default();
    let (stop, shutdown) = watch::channel(false);
    let consumer =
        ledger_handler(pool, "ledger", effects.clone()).start(broker.clone(), metrics.clone(), shutdown).await;
    let event = Message::from_event(&Credited { account: "a".into(), seq: 1 }).unwrap();
    let poison = Message { payload: b"{\"account\": 7}".to_vec(), id: marty::events::new_event_id(), ..event.clone() };
    for message in [event.clone(), event.clone(), poison.clone()] {
        broker.publish(std::slice::from_ref(&message)).await;
    }
    for _ in 0..200 {
        if metrics.consumed("accounts.credited", "ledger", "dead_lettered") == 1
            && metrics.consumed("accounts.credited", "ledger", "duplicate") == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*effects.lock().unwrap(), [("a".to_owned(), 1)], "the side effect happened once");
    assert_eq!(metrics.consumed("accounts.credited", "ledger", "handled"), 1);
    assert_eq!(metrics.consumed("accounts.credited", "ledger", "duplicate"), 1);
    let dead = broker.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, poison.id);
    assert!(dead[0].reason.contains("undecodable"), "{}", dead[0].reason);
    stop.send(true).unwrap();
    consumer.await.unwrap();
}

/// A handler that panics on one event fails that attempt, like an error: retried, then
/// dead-lettered, while the consumer goes on with the others.
#[tokio::test]
async fn a_handler_that_panics_fails_its_attempt_and_the_consumer_goes_on() {
    let broker = Arc::new(MemoryBroker::new());
    let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let invoke: marty::events::Invoke = Arc::new({
        let handled = handled.clone();
        move |message: Message| {
            let handled = handled.clone();
            Box::pin(async move {
                let event: Credited = marty::Event::decode(&message.payload).unwrap();
                assert!(event.account != "poison", "the handler has a bug");
                handled.lock().unwrap().push(event.seq);
                Ok(Handled::Done)
            })
        }
    });
    let options = HandlerOptions::default().concurrency(1).max_attempts(2).backoff(Duration::ZERO, Duration::ZERO);
    let metrics = EventMetrics::default();
    let (stop, shutdown) = watch::channel(false);
    let consumer = EventHandler::new("accounts.credited", "ledger", "ledger", options, invoke)
        .start(broker.clone(), metrics.clone(), shutdown)
        .await;
    let poison = Message::from_event(&Credited { account: "poison".into(), seq: 0 }).unwrap();
    let fine = Message::from_event(&Credited { account: "fine".into(), seq: 1 }).unwrap();
    let acks = broker.publish(&[poison.clone(), fine]).await;
    assert_eq!(acks, [Ok(()), Ok(())], "both settled: one handled, one dead-lettered");
    assert_eq!(*handled.lock().unwrap(), [1], "the event after the panicking one was handled");
    assert_eq!(metrics.consumed("accounts.credited", "ledger", "retried"), 1);
    let dead = broker.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, poison.id);
    assert!(dead[0].reason.contains("the handler panicked: the handler has a bug"), "{}", dead[0].reason);
    stop.send(true).unwrap();
    consumer.await.unwrap();
}

#[tokio::test]
#[ignore = "needs MARTY_TEST_POSTGRES_URL"]
async fn postgres_never_skips_a_row_whose_transaction_commits_after_a_later_one() {
    let url = marty_tests::server_env("MARTY_TEST_POSTGRES_URL");
    let (store, pool) = postgres_store(&url, "outbox_gate").await;
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let relay = Relay::new(store, broker.clone(), RelayOptions::default(), EventMetrics::default());

    // T1 writes first (lower id) but commits last.
    let mut first = pool.begin().await.unwrap();
    outbox::publish(&mut *first, &Credited { account: "a".into(), seq: 0 }).await.unwrap();
    let mut second = pool.begin().await.unwrap();
    outbox::publish(&mut *second, &Credited { account: "b".into(), seq: 0 }).await.unwrap();
    second.commit().await.unwrap();
    let gated = relay.run_batch().await.unwrap();
    assert_eq!(gated.taken, 0, "T2's row waits while T1, which may hold an earlier id, is open");
    assert!(gated.waiting, "the relay knows to look again soon");
    first.commit().await.unwrap();
    let report = relay.run_batch().await.unwrap();
    assert_eq!(report.published, 2);
    let seen = collect(broker, "accounts.credited", "audit", 2).await;
    let accounts: Vec<_> = sequences(&seen).into_keys().collect();
    assert_eq!(accounts, ["a", "b"], "both published, neither skipped");
    let left: i64 = sqlx::query_scalar("select count(*) from marty_outbox").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0, "without a retention, sent rows are deleted as they are acknowledged");
}

#[tokio::test]
#[ignore = "needs MARTY_TEST_POSTGRES_URL"]
async fn postgres_a_commit_wakes_a_waiting_relay_long_before_its_poll() {
    let url = marty_tests::server_env("MARTY_TEST_POSTGRES_URL");
    let (store, pool) = postgres_store(&url, "outbox_wake").await;
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let mut subscription = broker.subscribe("accounts.credited", "audit", SubscribeOptions::default()).await.unwrap();
    let options = RelayOptions::default().poll_interval(Duration::from_secs(3600));
    let (stop, shutdown) = watch::channel(false);
    let relay = Relay::new(store, broker, options, EventMetrics::default()).start(shutdown);
    for seq in 0..2 {
        // Once the relay has found nothing, marked itself waiting and done its quick rechecks, a
        // commit reaches it only through NOTIFY: it polls once an hour. The second round proves the
        // relay marks itself again after it has worked.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: bool = sqlx::query_scalar("select exists (select 1 from marty_relay_wake where sleeping)")
                .fetch_one(&pool)
                .await
                .unwrap();
            if waiting {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the relay never marked itself waiting (round {seq})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut tx = pool.begin().await.unwrap();
        outbox::publish(&mut *tx, &Credited { account: "a".into(), seq }).await.unwrap();
        tx.commit().await.unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .unwrap_or_else(|_| panic!("the commit did not wake the relay (round {seq})"))
            .unwrap();
        let event: Credited = marty::Event::decode(&delivery.message.payload).unwrap();
        assert_eq!(event.seq, seq);
        delivery.ack().await.unwrap();
    }
    stop.send(true).unwrap();
    relay.await.unwrap();
    let marks: i64 = sqlx::query_scalar("select count(*) from marty_relay_wake").fetch_one(&pool).await.unwrap();
    assert_eq!(marks, 0, "a relay that stops removes its wake mark");
}

#[tokio::test]
#[ignore = "needs MARTY_TEST_POSTGRES_URL"]
async fn postgres_two_relays_on_one_table_publish_each_row_once_in_key_order() {
    let url = marty_tests::server_env("MARTY_TEST_POSTGRES_URL");
    let (store, pool) = postgres_store(&url, "outbox_two_relays").await;
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let collector = tokio::spawn(collect(broker.clone(), "accounts.credited", "audit", 2000));
    let (stop, shutdown) = watch::channel(false);
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let options = RelayOptions::default().batch_size(50).poll_interval(Duration::from_millis(20));
            Relay::new(store.clone(), broker.clone(), options, EventMetrics::default()).start(shutdown.clone())
        })
        .collect();
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for seq in 0..250 {
                    let account = format!("acct-{writer}-{}", seq % 5);
                    let mut tx = pool.begin().await.unwrap();
                    outbox::publish(&mut *tx, &Credited { account, seq: seq / 5 }).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = collector.await.unwrap();
    let ids: HashSet<_> = seen.iter().map(|message| message.id.clone()).collect();
    assert_eq!(ids.len(), 2000, "every event once");
    let by_key = sequences(&seen);
    assert_eq!(by_key.len(), 40);
    assert_in_order(&by_key, 50);
    stop.send(true).unwrap();
    for relay in relays {
        relay.await.unwrap();
    }
}

#[tokio::test]
#[ignore = "needs MARTY_TEST_NATS_URL"]
async fn nats_jetstream_deduplicates_on_the_event_id_and_dead_letters_to_its_stream() {
    let url = marty_tests::server_env("MARTY_TEST_NATS_URL");
    let broker: Arc<dyn Broker> = Arc::new(marty::events::broker::NatsBroker::connect(&url).await.unwrap());
    let topic_suffix = marty::events::new_event_id().replace('-', "");
    let topic = format!("test.dedup{topic_suffix}");
    let message =
        Message { topic: topic.clone(), ..Message::from_event(&Credited { account: "a".into(), seq: 1 }).unwrap() };
    let other = Message { id: marty::events::new_event_id(), ..message.clone() };
    for acks in
        [broker.publish(std::slice::from_ref(&message)).await, broker.publish(&[message.clone(), other.clone()]).await]
    {
        assert!(acks.iter().all(Result::is_ok), "{acks:?}");
    }
    let mut subscription = broker.subscribe(&topic, "dedup", SubscribeOptions::default()).await.unwrap();
    let first = subscription.next().await.unwrap();
    let second = subscription.next().await.unwrap();
    assert_eq!((first.message.id.as_str(), second.message.id.as_str()), (message.id.as_str(), other.id.as_str()));
    assert_eq!(first.message.key.as_deref(), Some("a"));
    first.ack().await.unwrap();
    second.dead_letter("dedup", "poison").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), subscription.next()).await.is_err(),
        "the republished event was dropped by JetStream's dedup, and the dead letter is not redelivered"
    );
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed when dropped.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!("marty-test-{}", marty::events::new_event_id()));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test]
#[ignore = "needs MARTY_TEST_RABBITMQ_URL"]
async fn rabbitmq_every_group_gets_every_event_in_order_and_unroutable_events_are_refused() {
    let url = marty_tests::server_env("MARTY_TEST_RABBITMQ_URL");
    let broker = marty::events::broker::RabbitMqBroker::connect(&url).await.unwrap();
    let run = &marty::events::new_event_id()[24..];
    let topic = format!("test.rabbit{run}");
    let message = |seq: i64| Message {
        topic: topic.clone(),
        ..Message::from_event(&Credited { account: "a".into(), seq }).unwrap()
    };
    let refused = broker.publish(&[message(0)]).await;
    assert!(
        matches!(&refused[0], Err(marty::events::BrokerError::Rejected(problem)) if problem.contains("no consumer group")),
        "an event no queue is bound to is refused, not dropped: {refused:?}"
    );
    let mut billing = broker.subscribe(&topic, &format!("billing{run}"), SubscribeOptions::default()).await.unwrap();
    let mut audit = broker.subscribe(&topic, &format!("audit{run}"), SubscribeOptions::default()).await.unwrap();
    let sent: Vec<Message> = (0..5).map(message).collect();
    assert!(broker.publish(&sent).await.iter().all(Result::is_ok));
    for subscription in [&mut billing, &mut audit] {
        for expected in &sent {
            let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next()).await.unwrap().unwrap();
            assert_eq!(delivery.message, *expected, "each group gets every event, in order, metadata intact");
            delivery.ack().await.unwrap();
        }
    }
}

/// A Kafka-protocol broker of the test's own (tansu, in memory).
struct Tansu(std::process::Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs MARTY_TEST_TANSU"]
fn kafka_keeps_each_key_in_order_and_dead_letters_with_the_reason() {
    let binary = marty_tests::server_env("MARTY_TEST_TANSU");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = std::process::Command::new(binary)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tansu");
    let mut tansu = Tansu(child);
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(tansu.0.try_wait().unwrap().is_none(), "tansu exited");
        assert!(started.elapsed() < Duration::from_secs(20), "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The runtime, and with it every consumer, goes before tansu does (also when the test fails):
    // a consumer leaves its group when dropped, and librdkafka waits for the broker to answer.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(kafka_in_order_and_dead_letters(port));
    drop(runtime);
    drop(tansu);
}

/// With `kafka-tls`, the clients take TLS and SASL settings (without it, librdkafka refuses them:
/// "OpenSSL not available at build time").
#[test]
fn kafka_clients_take_tls_and_sasl_properties() {
    let text = r#"
[events]
broker = "kafka"
[events.kafka]
properties = { "security.protocol" = "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-512", "sasl.username" = "orders", "sasl.password" = "secret" }
"#;
    let kafka = marty::config::Config::parse(text, "marty.toml").unwrap().events.unwrap().kafka;
    let broker = marty::events::broker::KafkaBroker::connect_with("127.0.0.1:9", &kafka);
    assert!(broker.is_ok(), "{:?}", broker.err());
}

async fn kafka_in_order_and_dead_letters(port: u16) {
    // `[events.kafka]` as a user writes it: the topics Marty creates get 5 partitions, and every
    // client carries the properties.
    let text = "[events]\nbroker = \"kafka\"\n[events.kafka]\npartitions = 5\nproperties = { \"client.id\" = \"marty-test\" }\n";
    let kafka = marty::config::Config::parse(text, "marty.toml").unwrap().events.unwrap().kafka;
    let bootstrap = format!("127.0.0.1:{port}");
    let broker = marty::events::broker::KafkaBroker::connect_with(&bootstrap, &kafka).unwrap();
    let traced = |message: Message| Message {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        tracestate: Some("vendor=abc".to_owned()),
        ..message
    };
    let sent: Vec<Message> = (0..6)
        .map(|seq| traced(Message::from_event(&Credited { account: format!("acct-{}", seq % 2), seq }).unwrap()))
        .collect();
    let acks = broker.publish(&sent).await;
    assert!(acks.iter().all(Result::is_ok), "{acks:?}");
    let mut subscription = broker.subscribe("accounts.credited", "ledger", SubscribeOptions::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < sent.len() {
        // The first join of a consumer group takes tansu about 20 seconds.
        let delivery = tokio::time::timeout(Duration::from_secs(90), subscription.next()).await.unwrap().unwrap();
        seen.push(delivery.message.clone());
        if delivery.message.id == sent[5].id {
            delivery.dead_letter("ledger", "poison for the test").await.unwrap();
        } else {
            delivery.ack().await.unwrap();
        }
    }
    let partitions = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer;
        let client: rdkafka::consumer::BaseConsumer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
        let metadata = client.fetch_metadata(Some("accounts.credited"), Duration::from_secs(20)).unwrap();
        metadata.topics()[0].partitions().len()
    });
    assert_eq!(partitions.await.unwrap(), 5, "the topic was created with `[events.kafka] partitions`");
    let by_key = sequences(&seen);
    assert_eq!(by_key["acct-0"], [0, 2, 4], "one key, one partition, in order");
    assert_eq!(by_key["acct-1"], [1, 3, 5]);
    assert!(seen.iter().all(|message| sent.contains(message)), "metadata survives the trip");
    let mut dead = broker.subscribe("marty.dead_letter", "inspect", SubscribeOptions::default()).await.unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(90), dead.next()).await.unwrap().unwrap();
    assert_eq!(letter.message.id, sent[5].id);
}

#[tokio::test]
async fn an_audit_record_reaches_the_broker_exactly_when_its_change_commits() {
    use marty::audit::AuditRecord;
    let (store, pool, _dir) = sqlite_store().await;
    for (account, commit) in [("kept", true), ("undone", false)] {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("insert into ledger values (?, 1)").bind(account).execute(&mut *tx).await.unwrap();
        let record = AuditRecord::new("ada", format!("credit {account}"), "credited").request_id("req-7");
        marty::audit::record(&mut tx, &record).await.unwrap();
        match commit {
            true => tx.commit().await.unwrap(),
            false => tx.rollback().await.unwrap(),
        }
    }
    let rows: i64 = sqlx::query_scalar("select count(*) from marty_outbox").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 1, "the rolled-back change left no audit record");
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let relay = Relay::new(store, broker.clone(), RelayOptions::default(), EventMetrics::default());
    let (stop, shutdown) = watch::channel(false);
    let running = relay.start(shutdown);
    let seen = collect(broker, "marty.audit", "auditors", 1).await;
    let record: AuditRecord = serde_json::from_slice(&seen[0].payload).unwrap();
    assert_eq!((record.who.as_str(), record.what.as_str()), ("ada", "credit kept"));
    assert_eq!((record.decision.as_str(), record.request_id.as_deref()), ("credited", Some("req-7")));
    assert_eq!(seen[0].key.as_deref(), Some("ada"));
    stop.send(true).unwrap();
    running.await.unwrap();
}
