//! Events: typed messages with a topic, a schema version and an aggregate key, encoded as JSON.
//!
//! `#[derive(Event)]` implements [`Event`]; the transactional outbox (`marty::outbox`, features
//! `postgres` or `sqlite`) writes events in the same transaction as the data they are about, its
//! relay publishes them to a [`Broker`], and consumers ([`EventHandler`], from `#[event_handler]`)
//! handle them, once per consumer group with the inbox (`marty::inbox`).
//!
//! ```no_run
//! #[derive(marty::Event, serde::Serialize, serde::Deserialize)]
//! #[event(topic = "orders.placed", version = 1)]
//! struct OrderPlaced {
//!     #[event(key)] // the aggregate: events with the same key keep their order
//!     order_id: i64,
//!     item: String,
//! }
//!
//! struct Audit;
//!
//! #[marty::service]
//! impl Audit {
//!     /// Decoded, retried with backoff, dead-lettered. Taking a transaction as well
//!     /// (`tx: &mut sqlx::Transaction<'_, sqlx::Postgres>`) records the event in the inbox in it, so a
//!     /// redelivery does not repeat the effect.
//!     #[event_handler(group = "order-audit")]
//!     async fn audit_order(&self, event: OrderPlaced) -> Result<(), std::io::Error> {
//!         marty::tracing::info!(order_id = event.order_id, item = %event.item, "order placed");
//!         Ok(())
//!     }
//! }
//! ```
//!
//! `#[service]` starts the relay and the consumers with the server and stops them after the drain.
//!
//! # Brokers
//!
//! ```toml
//! [events]
//! broker = "memory"        # memory (default) | nats | rabbitmq | kafka, each behind its cargo feature
//! url = "nats://127.0.0.1:4222"
//!
//! [events.nats]            # the streams Marty creates (existing streams are left as they are)
//! replicas = 3             # default 1
//! storage = "file"         # or "memory"
//! max_age = "7d"           # default 7d: past it an unconsumed event is gone
//! credentials = "/etc/nats/orders.creds"                 # a NATS credentials file (JWT + NKey seed)
//! tls_ca = "/etc/nats/ca.pem"                            # for tls:// servers with a private CA
//! tls_client_cert = "/etc/nats/client.pem"               # mTLS, with tls_client_key
//! tls_client_key = "/etc/nats/client-key.pem"
//!
//! [events.rabbitmq]
//! queue_type = "quorum"    # default: replicated, durable; "classic" to keep classic queues
//! tls_ca = "/etc/rabbitmq/ca.pem"                        # amqps:// with a private CA (the Mozilla roots are trusted anyway)
//! tls_client_cert = "/etc/rabbitmq/client.pem"           # mTLS, with tls_client_key
//! tls_client_key = "/etc/rabbitmq/client-key.pem"
//!
//! [events.kafka]           # topics Marty creates (existing topics are left as they are)
//! partitions = 3
//! replication_factor = 3   # default 1
//! properties = { "security.protocol" = "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-512", "sasl.username" = "orders", "sasl.password" = "${KAFKA_PASSWORD}" }
//! ```
//!
//! | broker | feature | mapping |
//! |---|---|---|
//! | in-process | always | per process, nothing stored (the outbox keeps an event until every group handled it); for the quick start, tests and services whose events stay in the process |
//! | NATS JetStream | `nats` | a stream per topic (`MARTY_<topic>`), a durable pull consumer per group, explicit acks, dedup by `Nats-Msg-Id`; dead letters in stream `MARTY_DEAD_LETTER` |
//! | RabbitMQ | `rabbitmq` | topic exchange `marty.events`, a durable queue `<group>.<topic>` per group, persistent, mandatory and confirmed publishes (an event no group is bound to is refused, then parked, never dropped); dead letters to exchange `marty.dead_letter` |
//! | Kafka | `kafka` | the topic, record key = aggregate key, idempotent producer with `acks=all`; offsets committed only past fully settled records; dead letters to topic `marty.dead_letter`. Builds the bundled librdkafka (about 1.5 minutes on 2 cores) |
//!
//! Kafka over TLS and SASL needs the `kafka-tls` feature (librdkafka linked with the system's
//! OpenSSL; without it librdkafka refuses `security.protocol = "SASL_SSL"` at startup).
//! `[events.kafka] properties` go to every librdkafka client Marty makes, after Marty's own settings,
//! and may not name what delivery rests on (`acks`, `enable.idempotence`, `group.id`,
//! `enable.auto.commit`, `enable.auto.offset.store`, `bootstrap.servers`): the configuration says so
//! at compile time. RabbitMQ cannot change a queue's type: a queue an earlier release declared as
//! classic is kept as it is (the log says so), and new queues are quorum queues.
//!
//! **Broker durability**: JetStream's default fsync interval loses acknowledged messages when the
//! server is killed (Jepsen, NATS 2.12.1, December 2025). Run NATS with `jetstream { sync_interval:
//! always }` (2.10 and later), or replicated streams, when the outbox's guarantee must survive that.
//!
//! # What consumers can rely on
//!
//! - **Nothing lost at shutdown or in a crash, on every broker.** On SIGTERM the consumers finish
//!   the deliveries they hold (within `shutdown_timeout`) and stop; whatever else is left stays
//!   where it is kept, and the next start picks it up. With NATS, RabbitMQ or Kafka it stays in the
//!   broker (acknowledged there before the row left the outbox) and is redelivered to the group:
//!   after `ack_wait` on NATS, at once on RabbitMQ, from the last committed offset on Kafka. With
//!   the in-process broker it stays in the outbox: that broker stores nothing, so it acknowledges a
//!   relayed event only once every subscribed group has handled (or dead-lettered) it; one queued
//!   when the consumers stop is refused back and the row kept (after a SIGKILL on SQLite, rows the
//!   relay had claimed wait out their 30 s claim). Its relay's next batch waits for the handlers of
//!   the one it sent, so a handler still retrying an event holds the relay back for up to its
//!   retries. Events published to a topic no consumer of the process has ever subscribed to are
//!   kept in memory for the first that does (and lost with the process).
//! - **Order per key.** Consumers keep a key on one lane (`concurrency` lanes run in parallel). A
//!   NATS consumer that restarts, or whose connection dropped, first waits for the deliveries left
//!   unsettled and takes them back in stream order. The order holds per consumer process: replicas
//!   sharing a group on NATS or RabbitMQ split a key's events between them (Kafka keeps a partition
//!   on one).
//! - **Effects once.** Redeliveries happen (a relay killed between the ack and its commit, a
//!   consumer killed mid-handler); JetStream drops republished events by `Nats-Msg-Id` = event id,
//!   and the inbox `(group, event id)`, committed with the handler's effects, turns any other repeat
//!   into a no-op.
//! - **Bad input is kept, not lost.** An undecodable payload is dead-lettered at once with the
//!   reason; a handler that keeps failing (or panics) is retried with exponential backoff and full
//!   jitter (`max_attempts`, `backoff`), then dead-lettered.
//! - **One trace** from the request through the outbox row (it carries `traceparent` and
//!   `tracestate`) to the handler (span `process <topic>`, a child of `publish <topic>`).

pub mod broker;
mod consumer;
mod message;

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

#[cfg(feature = "nats")]
pub use broker::NatsBroker;
pub use broker::{Broker, BrokerError, Delivery, MemoryBroker, SubscribeOptions, Subscription};
pub use consumer::{EventHandler, Handled, HandlerError, HandlerOptions, Invoke};
// The saga driver continues traces the way consumers do.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) use message::{continue_trace, current_trace_context};
pub use message::{headers, new_event_id, Message};

pub use crate::BoxFuture;

/// What an event's type must be to travel as JSON: `Serialize + DeserializeOwned`, named as one
/// trait so that a type missing serde's derives gets serde's own "add `#[derive(serde::Serialize)]`"
/// at its name, without rustc's note on `DeserializeOwned` being a sealed trait of `serde_core`.
pub trait EventPayload: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> EventPayload for T {}

/// A message other services may consume.
///
/// - `TOPIC` is where it is published (`orders.created`);
/// - `VERSION` is its schema version, carried with it so consumers can tell old payloads from new;
/// - [`Event::key`] is the aggregate it belongs to: events with the same key are delivered in order.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    note = "events are types of your own that derive it: `#[derive(marty::Event, serde::Serialize, serde::Deserialize)] #[event(topic = \"orders.created\")] struct OrderCreated {{ .. }}`"
)]
pub trait Event: EventPayload + Send + Sync + 'static {
    /// The topic it is published to.
    const TOPIC: &'static str;
    /// Its schema version (1 for the first).
    const VERSION: u32;

    /// The aggregate key (`#[event(key)]` field), if the event has one.
    fn key(&self) -> Option<String>;

    /// The payload as it travels: JSON.
    fn encode(&self) -> Result<Vec<u8>, EventError> {
        serde_json::to_vec(self).map_err(|error| EventError { topic: Self::TOPIC, problem: error.to_string() })
    }

    /// Reads a payload back; a malformed one is an error to dead-letter, never a panic.
    fn decode(payload: &[u8]) -> Result<Self, EventError> {
        serde_json::from_slice(payload).map_err(|error| EventError { topic: Self::TOPIC, problem: error.to_string() })
    }
}

/// An event that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    /// The event's topic.
    pub topic: &'static str,
    /// What was wrong with the payload.
    pub problem: String,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event on `{}`: {}", self.topic, self.problem)
    }
}

impl std::error::Error for EventError {}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize, marty_macros::Event)]
    #[event(topic = "orders.created", version = 2, crate = "crate")]
    struct OrderCreated {
        #[event(key)]
        order_id: i64,
        item: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize, marty_macros::Event)]
    #[event(topic = "audit.entries", crate = "crate")]
    enum AuditEntry {
        Login { user: String },
        Logout,
    }

    #[test]
    fn the_derive_gives_topic_version_and_key() {
        let event = OrderCreated { order_id: 42, item: "book".into() };
        assert_eq!((OrderCreated::TOPIC, OrderCreated::VERSION), ("orders.created", 2));
        assert_eq!(event.key().as_deref(), Some("42"));
        assert_eq!((AuditEntry::TOPIC, AuditEntry::VERSION), ("audit.entries", 1), "versions start at 1");
        assert_eq!(AuditEntry::Logout.key(), None);
    }

    #[test]
    fn payloads_round_trip_as_json_and_bad_ones_are_errors_not_panics() {
        let event = OrderCreated { order_id: 7, item: "pen".into() };
        let payload = event.encode().unwrap();
        assert_eq!(payload, br#"{"order_id":7,"item":"pen"}"#);
        assert_eq!(OrderCreated::decode(&payload).unwrap(), event);
        let error = OrderCreated::decode(br#"{"order_id":"seven"}"#).unwrap_err();
        assert_eq!(error.topic, "orders.created");
        assert!(error.problem.contains("invalid type"), "{error}");
        assert_eq!(
            AuditEntry::decode(&AuditEntry::Login { user: "ada".into() }.encode().unwrap()).unwrap(),
            AuditEntry::Login { user: "ada".into() }
        );
    }
}
