//! RabbitMQ (AMQP 0.9.1, lapin): events go to the durable topic exchange `marty.events` with the
//! topic as routing key; each consumer group reads its own durable queue `<group>.<topic>` bound to
//! it, so every group sees every event and a group's members share its queue. Publishes are
//! persistent, mandatory and confirmed: an event no group's queue is bound to yet is refused (the
//! outbox retries, then parks it) rather than dropped. Dead letters go, with the reason, to the
//! exchange `marty.dead_letter` (routing key `<group>.<topic>`), also the queues' own
//! dead-letter exchange, and from it to the queue `marty.dead_letter`.
//!
//! RabbitMQ has no broker-side deduplication: a republished event (after a relay crash) arrives
//! twice, and the inbox makes the second harmless. A consumer's unacknowledged deliveries return to
//! the front of its queue as soon as its connection drops.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use marty_config::{QueueType, RabbitMqConfig};
use tokio::sync::{mpsc, Mutex};

use super::{BrokerError, Delivery, Settle, Settlement, SubscribeOptions, Subscription};
use crate::events::message::headers;
use crate::events::{BoxFuture, Message};

/// The exchange every event is published to.
pub const EXCHANGE: &str = "marty.events";
/// Where dead letters go.
pub const DEAD_LETTER_EXCHANGE: &str = "marty.dead_letter";
/// The queue that keeps every dead letter.
pub const DEAD_LETTER_QUEUE: &str = "marty.dead_letter";

/// How often a consumer that receives nothing checks that its connection and channel are alive.
const LIVENESS_CHECK: Duration = Duration::from_secs(2);

/// A RabbitMQ connection for publishing; each subscription opens its own.
#[derive(Debug)]
pub struct RabbitMqBroker {
    settings: Arc<Settings>,
    /// The publishing channel (confirm mode), reopened after a failure.
    publisher: Mutex<Option<(Connection, Channel)>>,
}

fn unavailable(error: lapin::Error) -> BrokerError {
    BrokerError::Unavailable(error.to_string())
}

/// Where the broker is and how to reach it: its URL, the TLS settings for `amqps://`, and the type
/// of the queues Marty declares there.
#[derive(Debug)]
struct Settings {
    url: String,
    config: RabbitMqConfig,
}

impl Settings {
    /// lapin's TLS settings: the Mozilla roots (lapin's `rustls-webpki-roots-certs`) and `tls_ca`,
    /// with the client certificate when one is configured. Read at each connect, so renewed
    /// certificates are picked up by the next connection.
    fn tls(&self) -> Result<OwnedTLSConfig, BrokerError> {
        let read = |path: &str| {
            std::fs::read(path).map_err(|error| {
                BrokerError::Unavailable(format!("cannot read the RabbitMQ TLS file `{path}`: {error}"))
            })
        };
        let cert_chain = match &self.config.tls_ca {
            Some(path) => Some(String::from_utf8_lossy(&read(path)?).into_owned()),
            None => None,
        };
        let identity = match &self.config.tls_client {
            Some((cert, key)) => Some(OwnedIdentity::PKCS8 { pem: read(cert)?, key: read(key)? }),
            None => None,
        };
        Ok(OwnedTLSConfig { identity, cert_chain })
    }
}

/// A channel in confirm mode with Marty's exchanges and dead-letter queue declared.
async fn open(settings: &Settings) -> Result<(Connection, Channel), BrokerError> {
    let queue_type = settings.config.queue_type;
    let runtime = lapin::runtime::default_runtime().map_err(unavailable)?;
    let connection =
        Connection::connect_with_config(&settings.url, ConnectionProperties::default(), settings.tls()?, runtime)
            .await
            .map_err(|error| BrokerError::Unavailable(format!("cannot connect to RabbitMQ: {error}")))?;
    let channel = connection.create_channel().await.map_err(unavailable)?;
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    for (exchange, kind) in [(EXCHANGE, ExchangeKind::Topic), (DEAD_LETTER_EXCHANGE, ExchangeKind::Topic)] {
        channel.exchange_declare(exchange.into(), kind, durable, FieldTable::default()).await.map_err(unavailable)?;
    }
    let channel = declare_queue(&connection, channel, DEAD_LETTER_QUEUE, queue_type, FieldTable::default()).await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
    channel
        .queue_bind(
            DEAD_LETTER_QUEUE.into(),
            DEAD_LETTER_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(unavailable)?;
    Ok((connection, channel))
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn properties_of(message: &Message) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(headers::ID.into(), text(&message.id));
    table.insert(headers::VERSION.into(), text(&message.version.to_string()));
    if let Some(key) = &message.key {
        table.insert(headers::KEY.into(), text(key));
    }
    if let Some(tracestate) = &message.tracestate {
        table.insert(headers::TRACESTATE.into(), text(tracestate));
    }
    if let Some(traceparent) = &message.traceparent {
        table.insert(headers::TRACEPARENT.into(), text(traceparent));
    }
    BasicProperties::default()
        .with_message_id(message.id.as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(table)
}

async fn confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<lapin::PublisherConfirm, BrokerError> {
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    channel.basic_publish(exchange.into(), routing_key.into(), options, payload, properties).await.map_err(unavailable)
}

fn outcome(confirmation: Result<Confirmation, lapin::Error>, topic: &str) -> Result<(), BrokerError> {
    match confirmation.map_err(unavailable)? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BrokerError::Rejected(format!(
            "no queue is bound to `{topic}` on `{EXCHANGE}`: no consumer group has subscribed to it yet"
        ))),
        Confirmation::Nack(_) => Err(BrokerError::Rejected("RabbitMQ refused the message (nack)".into())),
    }
}

impl RabbitMqBroker {
    /// Connects to `url` (`amqp://guest:guest@127.0.0.1:5672/%2f`) and declares Marty's exchanges.
    /// A broker that is down is not an error here: a service starts anyway, publishing reconnects
    /// (the outbox keeps events meanwhile) and subscriptions retry.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with(url, &RabbitMqConfig::default()).await
    }

    /// Connects to `url` (`amqps://` for TLS) with `config`: the certificates TLS trusts and
    /// presents, and the type of the queues it declares. TLS settings that cannot work (a file that
    /// cannot be read, an `amqp://` URL) are an error here, not a broker to wait for.
    pub async fn connect_with(url: &str, config: &RabbitMqConfig) -> Result<Self, BrokerError> {
        let settings = Arc::new(Settings { url: url.to_owned(), config: config.clone() });
        // Mistakes in the TLS settings fail startup, named, rather than read as a broker that is down.
        if (config.tls_ca.is_some() || config.tls_client.is_some()) && !url.starts_with("amqps://") {
            return Err(BrokerError::Unavailable(
                "[events.rabbitmq] has TLS settings but `[events] url` is not amqps://: use amqps:// (or drop them)"
                    .into(),
            ));
        }
        settings.tls()?;
        let opened = match open(&settings).await {
            Ok(opened) => Some(opened),
            Err(error) => {
                tracing::warn!(%error, "RabbitMQ unavailable at startup; retrying as events flow");
                None
            }
        };
        Ok(RabbitMqBroker { settings, publisher: Mutex::new(opened) })
    }

    /// The queue group `group` reads `topic` from.
    pub fn queue_name(topic: &str, group: &str) -> String {
        format!("{group}.{topic}")
    }
}

impl super::Broker for RabbitMqBroker {
    fn publish<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        Box::pin(async move {
            let mut publisher = self.publisher.lock().await;
            if !publisher
                .as_ref()
                .is_some_and(|(connection, channel)| connection.status().connected() && channel.status().connected())
            {
                *publisher = match open(&self.settings).await {
                    Ok(opened) => Some(opened),
                    Err(error) => return messages.iter().map(|_| Err(error.clone())).collect(),
                };
            }
            let Some((_, channel)) = publisher.as_ref() else { unreachable!("opened above") };
            // Send all, then wait for the confirms: one round trip for the batch, in publish order.
            let mut pending = Vec::with_capacity(messages.len());
            for message in messages {
                pending
                    .push(confirmed(channel, EXCHANGE, &message.topic, &message.payload, properties_of(message)).await);
            }
            let mut acks = Vec::with_capacity(messages.len());
            for (sent, message) in pending.into_iter().zip(messages) {
                let ack = match sent {
                    Ok(confirm) => outcome(confirm.await, &message.topic),
                    Err(error) => Err(error),
                };
                acks.push(ack);
            }
            if acks.iter().any(|ack| matches!(ack, Err(BrokerError::Unavailable(_)))) {
                *publisher = None;
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
        let (topic, group, settings) = (topic.to_owned(), group.to_owned(), self.settings.clone());
        Box::pin(async move {
            // The queue exists (and is bound) before this returns, so what is published from now on reaches it.
            let first = consume(&settings, &topic, &group, &options).await?;
            let (deliveries, receiver) = mpsc::channel(options.max_in_flight.max(1));
            tokio::spawn(async move {
                let mut opened = Some(first);
                let mut retry_in = Duration::from_millis(100);
                loop {
                    let (connection, channel, mut consumer) = match opened.take() {
                        Some(opened) => opened,
                        None => match consume(&settings, &topic, &group, &options).await {
                            Ok(opened) => opened,
                            Err(error) => {
                                tracing::warn!(%error, topic, group, "RabbitMQ unavailable; resubscribing");
                                tokio::time::sleep(retry_in).await;
                                retry_in = (retry_in * 2).min(Duration::from_secs(5));
                                continue;
                            }
                        },
                    };
                    retry_in = Duration::from_millis(100);
                    loop {
                        // A consumer whose connection or channel went away does not always end its
                        // stream (a broker restarted under SIGKILLed peers left one waiting for good):
                        // while no delivery comes, the connection is checked, and a dead one is left.
                        let next = tokio::select! {
                            next = consumer.next() => next,
                            () = tokio::time::sleep(LIVENESS_CHECK) => {
                                if connection.status().connected() && channel.status().connected() {
                                    continue;
                                }
                                None
                            }
                        };
                        let Some(Ok(raw)) = next else { break };
                        let message = message_of(&raw, &topic);
                        let delivered = if raw.redelivered { 2 } else { 1 };
                        let settle = AmqpSettle { raw, channel: channel.clone() };
                        if deliveries.send(Delivery::new(message, delivered, Box::new(settle))).await.is_err() {
                            let _ = connection.close(200, "consumer stopped".into()).await;
                            return;
                        }
                    }
                    tracing::warn!(topic, group, "RabbitMQ consumer interrupted; resubscribing");
                }
            });
            Ok(Subscription::new(receiver))
        })
    }
}

/// Declares durable queue `name` of `queue_type`, with `arguments`. RabbitMQ cannot change the type
/// of a queue that exists: declaring it with another type fails and closes the channel. Such a queue
/// (made by an earlier release, or by hand) is kept as it is, checked on a new channel, and the log
/// says so; that channel is the one to go on with.
async fn declare_queue(
    connection: &Connection,
    channel: Channel,
    name: &str,
    queue_type: QueueType,
    mut arguments: FieldTable,
) -> Result<Channel, BrokerError> {
    arguments.insert("x-queue-type".into(), text(queue_type.as_str()));
    match channel.queue_declare(name.into(), QueueDeclareOptions::durable(), arguments).await {
        Ok(_) => Ok(channel),
        Err(error) if matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406) => {
            let channel = connection.create_channel().await.map_err(unavailable)?;
            let exists = QueueDeclareOptions { passive: true, durable: true, ..QueueDeclareOptions::default() };
            channel.queue_declare(name.into(), exists, FieldTable::default()).await.map_err(unavailable)?;
            tracing::warn!(
                queue = name,
                wanted = queue_type.as_str(),
                %error,
                "the queue exists with other arguments (another type?); it is kept as it is",
            );
            Ok(channel)
        }
        Err(error) => Err(unavailable(error)),
    }
}

/// A connection, its channel and a consumer on group `group`'s queue for `topic`.
async fn consume(
    settings: &Settings,
    topic: &str,
    group: &str,
    options: &SubscribeOptions,
) -> Result<(Connection, Channel, lapin::Consumer), BrokerError> {
    let (connection, channel) = open(settings).await?;
    let queue_type = settings.config.queue_type;
    let queue = RabbitMqBroker::queue_name(topic, group);
    let mut arguments = FieldTable::default();
    arguments.insert("x-dead-letter-exchange".into(), text(DEAD_LETTER_EXCHANGE));
    let channel = declare_queue(&connection, channel, &queue, queue_type, arguments).await?;
    let prefetch = u16::try_from(options.max_in_flight).unwrap_or(u16::MAX);
    channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(unavailable)?;
    channel
        .queue_bind(
            queue.as_str().into(),
            EXCHANGE.into(),
            topic.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(unavailable)?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(unavailable)?;
    Ok((connection, channel, consumer))
}

fn message_of(raw: &AmqpDelivery, topic: &str) -> Message {
    let header = |name: &str| {
        raw.properties.headers().as_ref().and_then(|table| table.inner().get(name)).and_then(|value| match value {
            AMQPValue::LongString(text) => Some(text.to_string()),
            AMQPValue::ShortString(text) => Some(text.to_string()),
            _ => None,
        })
    };
    Message {
        id: header(headers::ID)
            .or_else(|| raw.properties.message_id().as_ref().map(ToString::to_string))
            .unwrap_or_default(),
        topic: topic.to_owned(),
        key: header(headers::KEY),
        version: header(headers::VERSION).and_then(|version| version.parse().ok()).unwrap_or(1),
        payload: raw.data.clone(),
        traceparent: header(headers::TRACEPARENT),
        tracestate: header(headers::TRACESTATE),
    }
}

struct AmqpSettle {
    raw: AmqpDelivery,
    channel: Channel,
}

impl Settle for AmqpSettle {
    fn settle(self: Box<Self>, settlement: Settlement) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(async move {
            if let Settlement::DeadLetter { group, reason } = settlement {
                let mut table = self.raw.properties.headers().clone().unwrap_or_default();
                table.insert(headers::DEAD_LETTER_GROUP.into(), text(&group));
                table.insert(headers::DEAD_LETTER_REASON.into(), text(&reason));
                let properties = self.raw.properties.clone().with_headers(table);
                let routing_key = format!("{group}.{}", self.raw.routing_key);
                let confirm =
                    confirmed(&self.channel, DEAD_LETTER_EXCHANGE, &routing_key, &self.raw.data, properties).await?;
                outcome(confirm.await, DEAD_LETTER_EXCHANGE)?;
            }
            self.raw.ack(BasicAckOptions::default()).await.map(drop).map_err(unavailable)
        })
    }
}
