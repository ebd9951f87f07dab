//! The in-process broker: for the quick start, tests, and services whose events never leave the
//! process. It keeps nothing across a restart; the outbox does (rows stay pending until published).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use super::{BrokerError, Delivery, Settle, Settlement, SubscribeOptions, Subscription};
use crate::events::BoxFuture;
use crate::events::Message;

/// An in-process broker. Messages published to a topic before any group subscribed are kept for
/// the first group that does; after that each group gets what is published from its subscription on.
#[derive(Debug, Default)]
pub struct MemoryBroker {
    topics: Mutex<HashMap<String, Topic>>,
    dead_letters: Arc<Mutex<Vec<DeadLetter>>>,
}

/// A message a consumer group gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message as it was delivered.
    pub message: Message,
    /// The group that gave up.
    pub group: String,
    /// Why.
    pub reason: String,
}

#[derive(Debug, Default)]
struct Topic {
    groups: HashMap<String, Group>,
    /// Published while no group was subscribed.
    kept: Vec<Message>,
}

#[derive(Debug)]
struct Group {
    queue: mpsc::UnboundedSender<Message>,
    /// Shared by the group's members: each message goes to one of them.
    members: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Message>>>,
}

impl MemoryBroker {
    /// A broker of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process's shared broker, the one `[events] broker = "memory"` means.
    pub fn shared() -> Arc<dyn super::Broker> {
        static SHARED: OnceLock<Arc<MemoryBroker>> = OnceLock::new();
        SHARED.get_or_init(|| Arc::new(MemoryBroker::new())).clone()
    }

    /// Every message a group gave up on, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl super::Broker for MemoryBroker {
    fn publish<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        let mut topics = self.topics.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for message in messages {
            let topic = topics.entry(message.topic.clone()).or_default();
            if topic.groups.is_empty() {
                topic.kept.push(message.clone());
            }
            for group in topic.groups.values() {
                let _ = group.queue.send(message.clone());
            }
        }
        let acks = messages.iter().map(|_| Ok(())).collect();
        Box::pin(async move { acks })
    }

    fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, BrokerError>> {
        let mut topics = self.topics.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let topic = topics.entry(topic.to_owned()).or_default();
        let first_group = topic.groups.is_empty();
        let group_state = topic.groups.entry(group.to_owned()).or_insert_with(|| {
            let (queue, receiver) = mpsc::unbounded_channel();
            Group { queue, members: Arc::new(tokio::sync::Mutex::new(receiver)) }
        });
        if first_group {
            for message in topic.kept.drain(..) {
                let _ = group_state.queue.send(message);
            }
        }
        let queue = group_state.queue.clone();
        let members = group_state.members.clone();
        let dead_letters = self.dead_letters.clone();
        let (deliveries, receiver) = mpsc::channel(options.max_in_flight.max(1));
        tokio::spawn(async move {
            loop {
                let Some(message) = members.lock().await.recv().await else { return };
                let settle = MemorySettle {
                    message: Some(message.clone()),
                    queue: queue.clone(),
                    dead_letters: dead_letters.clone(),
                };
                if deliveries.send(Delivery::new(message, 1, Box::new(settle))).await.is_err() {
                    return;
                }
            }
        });
        Box::pin(async move { Ok(Subscription::new(receiver)) })
    }
}

/// Settles one in-process delivery; one dropped unsettled goes back to its group.
struct MemorySettle {
    message: Option<Message>,
    queue: mpsc::UnboundedSender<Message>,
    dead_letters: Arc<Mutex<Vec<DeadLetter>>>,
}

impl Settle for MemorySettle {
    fn settle(mut self: Box<Self>, settlement: Settlement) -> BoxFuture<'static, Result<(), BrokerError>> {
        let message = self.message.take();
        if let (Some(message), Settlement::DeadLetter { group, reason }) = (message, settlement) {
            let mut dead_letters = self.dead_letters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            dead_letters.push(DeadLetter { message, group, reason });
        }
        Box::pin(async { Ok(()) })
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            let _ = self.queue.send(message);
        }
    }
}
