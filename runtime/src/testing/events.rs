//! [`ExpectEvent`]: waiting for a published event that matches.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::events::{Event, MemoryBroker, Message};

/// An event being waited for (see [`super::TestService::expect_event`]).
#[must_use = "nothing is checked until `.within(..)` is awaited"]
pub struct ExpectEvent<E> {
    broker: Arc<MemoryBroker>,
    matching: Box<dyn Fn(&E) -> bool + Send>,
    _event: PhantomData<fn() -> E>,
}

impl<E> fmt::Debug for ExpectEvent<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpectEvent").field("topic", &std::any::type_name::<E>()).finish_non_exhaustive()
    }
}

impl<E: Event> ExpectEvent<E> {
    pub(super) fn new(broker: Arc<MemoryBroker>, matching: Box<dyn Fn(&E) -> bool + Send>) -> Self {
        ExpectEvent { broker, matching, _event: PhantomData }
    }

    /// The first matching event published (already, or within `timeout`, by tokio's clock). Panics
    /// after `timeout` listing the events of `E`'s topic that were published, and those that did not
    /// decode as `E`.
    pub async fn within(self, timeout: Duration) -> E {
        let mut changes = self.broker.published_changes();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if let Some(found) = self.find() {
                return found;
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                panic!("{}", self.not_found(timeout));
            }
        }
    }

    fn find(&self) -> Option<E> {
        decoded::<E>(&self.broker.published()).into_iter().find(|event| (self.matching)(event))
    }

    fn not_found(&self, timeout: Duration) -> String {
        let published = self.broker.published();
        let of_topic: Vec<String> = published
            .iter()
            .filter(|message| message.topic == E::TOPIC)
            .map(|message| String::from_utf8_lossy(&message.payload).into_owned())
            .collect();
        let topics: HashSet<&str> = published.iter().map(|message| message.topic.as_str()).collect();
        format!(
            "no `{}` event on `{}` matched within {}; published on that topic: [{}]; topics published: {:?}",
            std::any::type_name::<E>(),
            E::TOPIC,
            marty_config::format_duration(timeout),
            of_topic.join(", "),
            topics
        )
    }
}

/// The messages of `E`'s topic that decode as `E`, each event id once.
pub(super) fn decoded<E: Event>(messages: &[Message]) -> Vec<E> {
    let mut seen = HashSet::new();
    messages
        .iter()
        .filter(|message| message.topic == E::TOPIC && seen.insert(message.id.clone()))
        .filter_map(|message| E::decode(&message.payload).ok())
        .collect()
}
