//! Brokers behind one trait: the in-process one (the default), NATS JetStream (`nats` feature),
//! RabbitMQ (`rabbitmq`) and Kafka (`kafka`).
//!
//! A broker publishes batches and answers only once it has stored them (acknowledged), and delivers
//! a topic to a consumer group: every group sees every message, each message reaches one member of
//! the group, and one that is not settled is delivered again (at-least-once).

#[cfg(feature = "kafka")]
pub mod kafka;
mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

#[cfg(feature = "kafka")]
pub use kafka::KafkaBroker;
pub use memory::MemoryBroker;
#[cfg(feature = "nats")]
pub use nats::{NatsBroker, DEAD_LETTER_STREAM};
#[cfg(feature = "rabbitmq")]
pub use rabbitmq::RabbitMqBroker;

use super::Message;
use crate::events::BoxFuture;

/// A message broker.
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Publishes `messages` in order, pipelined, and waits for the broker's acknowledgement of each.
    /// The answer has one entry per message, in the same order.
    fn publish<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>>;

    /// Starts delivering `topic` to `group`.
    fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, BrokerError>>;
}

/// How a consumer group takes deliveries.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Messages delivered and not yet settled, at most.
    pub max_in_flight: usize,
    /// How long the broker waits for a settlement before delivering the message again (the
    /// consumer reports progress while it retries, so a slow handler is not redelivered).
    pub ack_wait: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions { max_in_flight: 256, ack_wait: Duration::from_secs(5) }
    }
}

/// The deliveries of one subscription.
#[derive(Debug)]
pub struct Subscription {
    deliveries: mpsc::Receiver<Delivery>,
}

impl Subscription {
    /// A subscription fed by `deliveries` (what each adapter's delivery task sends into).
    pub fn new(deliveries: mpsc::Receiver<Delivery>) -> Self {
        Subscription { deliveries }
    }

    /// The next delivery; `None` once the broker connection is gone for good.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }
}

/// A message delivered to a consumer group, to be settled once handled.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// 1 on first delivery, more on redelivery (after a crash or an `ack_wait` that ran out).
    pub delivered: u32,
    settle: Box<dyn Settle>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery").field("message", &self.message).field("delivered", &self.delivered).finish()
    }
}

impl Delivery {
    /// A delivery an adapter settles through `settle`.
    pub fn new(message: Message, delivered: u32, settle: Box<dyn Settle>) -> Self {
        Delivery { message, delivered, settle }
    }

    /// Done: the broker forgets it for this group.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.settle.settle(Settlement::Ack).await
    }

    /// Given up on: moved to the dead-letter destination with `reason`, never delivered again.
    pub async fn dead_letter(self, group: &str, reason: &str) -> Result<(), BrokerError> {
        let settlement = Settlement::DeadLetter { group: group.to_owned(), reason: reason.to_owned() };
        self.settle.settle(settlement).await
    }

    /// Still being worked on (between retries): the broker does not deliver it again yet.
    pub async fn in_progress(&self) {
        self.settle.in_progress().await;
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Handled.
    Ack,
    /// Given up on, to the dead-letter destination.
    DeadLetter {
        /// The consumer group that gave up.
        group: String,
        /// Why.
        reason: String,
    },
}

/// What an adapter does to settle one delivery.
pub trait Settle: Send + Sync {
    /// Acknowledges or dead-letters the delivery.
    fn settle(self: Box<Self>, settlement: Settlement) -> BoxFuture<'static, Result<(), BrokerError>>;

    /// Tells the broker the delivery is still being worked on.
    fn in_progress(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Why a broker operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// The broker could not be reached or did not answer in time: try again later, the message is
    /// not at fault.
    Unavailable(String),
    /// The broker refused this message (no stream for the subject, too large, ...): retrying the
    /// same message is unlikely to help.
    Rejected(String),
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::Unavailable(problem) => write!(f, "broker unavailable: {problem}"),
            BrokerError::Rejected(problem) => write!(f, "broker rejected the message: {problem}"),
        }
    }
}

impl std::error::Error for BrokerError {}

/// The broker `[events]` names, connected: `memory` is [`crate::Runtime::current`]'s in-process broker.
pub async fn connect(config: Option<&marty_config::EventsConfig>) -> Result<Arc<dyn Broker>, BrokerError> {
    connect_in(&crate::Runtime::current(), config).await
}

/// The broker `[events]` names, connected: `memory` is `runtime`'s in-process broker.
pub(crate) async fn connect_in(
    runtime: &crate::Runtime,
    config: Option<&marty_config::EventsConfig>,
) -> Result<Arc<dyn Broker>, BrokerError> {
    use marty_config::Broker as Kind;
    let Some(config) = config else {
        return Ok(runtime.memory_broker());
    };
    match config.broker {
        Kind::Memory => Ok(runtime.memory_broker()),
        #[cfg(feature = "nats")]
        Kind::Nats => {
            let url = config.url.as_deref().unwrap_or("nats://127.0.0.1:4222");
            Ok(Arc::new(NatsBroker::connect_with(url, &config.nats).await?))
        }
        #[cfg(not(feature = "nats"))]
        Kind::Nats => Err(not_built("nats", "nats")),
        #[cfg(feature = "rabbitmq")]
        Kind::RabbitMq => {
            let url = config.url.as_deref().unwrap_or("amqp://guest:guest@127.0.0.1:5672/%2f");
            Ok(Arc::new(RabbitMqBroker::connect_with(url, &config.rabbitmq).await?))
        }
        #[cfg(not(feature = "rabbitmq"))]
        Kind::RabbitMq => Err(not_built("rabbitmq", "rabbitmq")),
        #[cfg(feature = "kafka")]
        Kind::Kafka => {
            let url = config.url.as_deref().unwrap_or("127.0.0.1:9092");
            Ok(Arc::new(KafkaBroker::connect_with(url, &config.kafka)?))
        }
        #[cfg(not(feature = "kafka"))]
        Kind::Kafka => Err(not_built("kafka", "kafka")),
    }
}

#[cfg(not(all(feature = "nats", feature = "rabbitmq", feature = "kafka")))]
fn not_built(broker: &str, feature: &str) -> BrokerError {
    BrokerError::Unavailable(format!(
        "`[events] broker = \"{broker}\"` needs marty's `{feature}` feature: `marty = {{ features = [\"{feature}\"] }}`"
    ))
}
