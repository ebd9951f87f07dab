//! Kafka (rdkafka, `kafka` feature): the topic is the Kafka topic (created with `partitions`
//! partitions on first use), the aggregate key the record key, so one aggregate stays in one
//! partition and in order. The producer is idempotent with `acks=all`, so its own retries neither
//! duplicate nor reorder. Each consumer group is a Kafka consumer group; an offset is committed
//! only once every earlier record of its partition is settled, so a crash redelivers what was not
//! finished (the inbox makes the repeats harmless). Dead letters go to the topic
//! `marty.dead_letter` with the reason in their headers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use marty_config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

use super::{BrokerError, Delivery, Settle, Settlement, SubscribeOptions, Subscription};
use crate::events::message::headers;
use crate::events::{BoxFuture, Message};

/// Where dead letters go.
pub const DEAD_LETTER_TOPIC: &str = "marty.dead_letter";

/// A Kafka producer, and what subscriptions need to open consumers.
pub struct KafkaBroker {
    bootstrap: String,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Topics this process has made sure of.
    topics: Mutex<HashSet<String>>,
    /// Topics, and librdkafka properties for every client.
    config: KafkaConfig,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker").field("bootstrap", &self.bootstrap).finish_non_exhaustive()
    }
}

fn unavailable(error: KafkaError) -> BrokerError {
    BrokerError::Unavailable(error.to_string())
}

fn publish_error(error: KafkaError) -> BrokerError {
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::InvalidRecord,
        ) => BrokerError::Rejected(error.to_string()),
        _ => BrokerError::Unavailable(error.to_string()),
    }
}

fn headers_of(message: &Message) -> OwnedHeaders {
    let version = message.version.to_string();
    let mut map = OwnedHeaders::new()
        .insert(Header { key: headers::ID, value: Some(message.id.as_str()) })
        .insert(Header { key: headers::VERSION, value: Some(version.as_str()) });
    if let Some(key) = &message.key {
        map = map.insert(Header { key: headers::KEY, value: Some(key.as_str()) });
    }
    if let Some(tracestate) = &message.tracestate {
        map = map.insert(Header { key: headers::TRACESTATE, value: Some(tracestate.as_str()) });
    }
    if let Some(traceparent) = &message.traceparent {
        map = map.insert(Header { key: headers::TRACEPARENT, value: Some(traceparent.as_str()) });
    }
    map
}

impl KafkaBroker {
    /// Connects to the `bootstrap` servers (`127.0.0.1:9092`, or `kafka://127.0.0.1:9092`) with
    /// `[events.kafka]`'s defaults.
    pub fn connect(bootstrap: &str) -> Result<Self, BrokerError> {
        Self::connect_with(bootstrap, &KafkaConfig::default())
    }

    /// Connects with `kafka`: its librdkafka properties (TLS, SASL) on every client, and the
    /// partitions and replication factor of the topics it creates.
    pub fn connect_with(bootstrap: &str, kafka: &KafkaConfig) -> Result<Self, BrokerError> {
        let bootstrap = bootstrap.trim_start_matches("kafka://").to_owned();
        // Idempotent and acknowledged by every in-sync replica: what "nothing lost" needs.
        let producing =
            [("enable.idempotence", "true"), ("acks", "all"), ("linger.ms", "1"), ("message.timeout.ms", "10000")];
        let producer: FutureProducer = client_config(&bootstrap, &producing, kafka).create().map_err(unavailable)?;
        let admin = client_config(&bootstrap, &[], kafka).create().map_err(unavailable)?;
        Ok(KafkaBroker { bootstrap, producer, admin, topics: Mutex::new(HashSet::new()), config: kafka.clone() })
    }

    async fn ensure_topic(&self, topic: &str) -> Result<(), BrokerError> {
        if self.topics.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(topic) {
            return Ok(());
        }
        let new = NewTopic::new(topic, self.config.partitions, TopicReplication::Fixed(self.config.replication_factor));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self.admin.create_topics([&new], &options).await.map_err(unavailable)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BrokerError::Unavailable(format!("cannot create the Kafka topic `{name}`: {code}")))
                }
            }
        }
        self.topics.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(topic.to_owned());
        Ok(())
    }
}

/// A client's configuration: the servers, Marty's `settings` for that client, then the user's
/// properties (`[events.kafka] properties`, which may not name what delivery depends on).
fn client_config(bootstrap: &str, settings: &[(&str, &str)], kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (name, value) in settings {
        config.set(*name, *value);
    }
    for (name, value) in &kafka.properties {
        config.set(name, value);
    }
    config
}

impl super::Broker for KafkaBroker {
    fn publish<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        Box::pin(async move {
            let mut topics: Vec<&str> = messages.iter().map(|message| message.topic.as_str()).collect();
            topics.sort_unstable();
            topics.dedup();
            for topic in topics {
                if let Err(error) = self.ensure_topic(topic).await {
                    return messages.iter().map(|_| Err(error.clone())).collect();
                }
            }
            // Enqueue all, then wait for the acknowledgements.
            let pending: Vec<_> = messages
                .iter()
                .map(|message| {
                    let mut record =
                        FutureRecord::to(&message.topic).payload(&message.payload).headers(headers_of(message));
                    if let Some(key) = &message.key {
                        record = record.key(key.as_str());
                    }
                    self.producer.send_result(record).map_err(|(error, _)| publish_error(error))
                })
                .collect();
            let mut acks = Vec::with_capacity(messages.len());
            for sent in pending {
                acks.push(match sent {
                    Ok(delivery) => match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((error, _))) => Err(publish_error(error)),
                        Err(_) => Err(BrokerError::Unavailable("the Kafka producer was dropped".into())),
                    },
                    Err(error) => Err(error),
                });
            }
            acks
        })
    }

    fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, BrokerError>> {
        let (topic, group) = (topic.to_owned(), group.to_owned());
        Box::pin(async move {
            self.ensure_topic(&topic).await?;
            self.ensure_topic(DEAD_LETTER_TOPIC).await?;
            // Offsets are stored only for settled messages, and committed in the background.
            let consuming = [
                ("group.id", group.as_str()),
                ("enable.auto.commit", "true"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
            ];
            let consumer: StreamConsumer =
                client_config(&self.bootstrap, &consuming, &self.config).create().map_err(unavailable)?;
            consumer.subscribe(&[&topic]).map_err(unavailable)?;
            let consumer = Arc::new(consumer);
            let offsets = Arc::new(Mutex::new(Offsets::default()));
            let (deliveries, receiver) = mpsc::channel(options.max_in_flight.max(1));
            let dead_letters = self.producer.clone();
            tokio::spawn(async move {
                let mut stream = consumer.stream();
                while let Some(next) = stream.next().await {
                    let record = match next {
                        Ok(record) => record,
                        Err(error) => {
                            tracing::warn!(%error, topic, group, "Kafka delivery interrupted");
                            continue;
                        }
                    };
                    let message = message_of(&record, &topic);
                    let position = (record.partition(), record.offset());
                    offsets.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).delivered(position);
                    let settle = KafkaSettle {
                        consumer: consumer.clone(),
                        offsets: offsets.clone(),
                        position,
                        message: message.clone(),
                        producer: dead_letters.clone(),
                    };
                    if deliveries.send(Delivery::new(message, 1, Box::new(settle))).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Subscription::new(receiver))
        })
    }
}

fn message_of(record: &rdkafka::message::BorrowedMessage<'_>, topic: &str) -> Message {
    let header = |name: &str| {
        record.headers().and_then(|map| {
            map.iter()
                .find(|header| header.key == name)
                .and_then(|header| header.value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        })
    };
    Message {
        id: header(headers::ID).unwrap_or_default(),
        topic: topic.to_owned(),
        key: header(headers::KEY),
        version: header(headers::VERSION).and_then(|version| version.parse().ok()).unwrap_or(1),
        payload: record.payload().unwrap_or_default().to_vec(),
        traceparent: header(headers::TRACEPARENT),
        tracestate: header(headers::TRACESTATE),
    }
}

/// Per partition, the offsets delivered and not yet settled: the committed position may only pass
/// an offset once it and everything before it are settled.
#[derive(Default)]
struct Offsets {
    outstanding: HashMap<i32, BTreeSet<i64>>,
    highest: HashMap<i32, i64>,
}

impl Offsets {
    fn delivered(&mut self, (partition, offset): (i32, i64)) {
        self.outstanding.entry(partition).or_default().insert(offset);
        let highest = self.highest.entry(partition).or_insert(offset);
        *highest = (*highest).max(offset);
    }

    /// Settles one offset; returns the last offset of the partition that is done along with every
    /// earlier one, when there is one.
    fn settled(&mut self, (partition, offset): (i32, i64)) -> Option<i64> {
        let outstanding = self.outstanding.entry(partition).or_default();
        outstanding.remove(&offset);
        match outstanding.first() {
            Some(&lowest) if lowest > 0 => Some(lowest - 1),
            Some(_) => None,
            None => self.highest.get(&partition).copied(),
        }
    }
}

struct KafkaSettle {
    consumer: Arc<StreamConsumer>,
    offsets: Arc<Mutex<Offsets>>,
    position: (i32, i64),
    message: Message,
    producer: FutureProducer,
}

impl Settle for KafkaSettle {
    fn settle(self: Box<Self>, settlement: Settlement) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(async move {
            if let Settlement::DeadLetter { group, reason } = settlement {
                let map = headers_of(&self.message)
                    .insert(Header { key: headers::DEAD_LETTER_GROUP, value: Some(group.as_str()) })
                    .insert(Header { key: headers::DEAD_LETTER_REASON, value: Some(reason.as_str()) });
                let mut record = FutureRecord::to(DEAD_LETTER_TOPIC).payload(&self.message.payload).headers(map);
                if let Some(key) = &self.message.key {
                    record = record.key(key.as_str());
                }
                match self.producer.send(record, Duration::from_secs(10)).await {
                    Ok(_) => {}
                    Err((error, _)) => return Err(publish_error(error)),
                }
            }
            let done = self.offsets.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).settled(self.position);
            if let Some(done) = done {
                // Stores `done + 1`, the next offset to read, for the next automatic commit.
                self.consumer.store_offset(&self.message.topic, self.position.0, done).map_err(unavailable)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Offsets;

    #[test]
    fn the_committed_position_passes_an_offset_only_once_all_before_it_are_settled() {
        let mut offsets = Offsets::default();
        for offset in 10..14 {
            offsets.delivered((0, offset));
        }
        offsets.delivered((1, 0));
        assert_eq!(offsets.settled((0, 12)), Some(9), "10 and 11 are still in flight");
        assert_eq!(offsets.settled((0, 10)), Some(10));
        assert_eq!(offsets.settled((0, 11)), Some(12), "12 was settled before");
        assert_eq!(offsets.settled((1, 0)), Some(0), "partitions are independent");
        assert_eq!(offsets.settled((0, 13)), Some(13));
    }
}
