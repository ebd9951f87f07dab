//! Events: typed messages with a topic, a schema version and an aggregate key, encoded as JSON.
//!
//! `#[derive(Event)]` implements [`Event`]; the transactional outbox ([`crate::outbox`]) writes
//! events with the business data, its relay publishes them to a [`Broker`], and consumers
//! ([`EventHandler`], from `#[event_handler]`) handle them, once per consumer group with the inbox
//! ([`crate::inbox`]).

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

/// A message other services may consume.
///
/// - `TOPIC` is where it is published (`orders.created`);
/// - `VERSION` is its schema version, carried with it so consumers can tell old payloads from new;
/// - [`Event::key`] is the aggregate it belongs to: events with the same key are delivered in order.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    note = "derive it: `#[derive(marty::Event, serde::Serialize, serde::Deserialize)] #[event(topic = \"orders.created\")]`"
)]
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
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
