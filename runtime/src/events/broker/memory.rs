//! The in-process broker: for the quick start, tests, and services whose events never leave the
//! process. It stores nothing: a publish is acknowledged only once every consumer group subscribed
//! to the topic has settled the message, so with the outbox an event leaves its table only after it
//! was handled, and one still queued when the consumers stop (or the process dies) stays there for
//! the next start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

use super::{BrokerError, Delivery, Settle, Settlement, SubscribeOptions, Subscription};
use crate::events::BoxFuture;
use crate::events::Message;

/// An in-process broker. Messages published to a topic no group ever subscribed to are kept (and
/// acknowledged) for the first group that does; after that each group gets what is published from
/// its subscription on, and a topic whose groups have all gone refuses publishes until one returns.
#[derive(Debug, Default)]
pub struct MemoryBroker {
    topics: Arc<Mutex<HashMap<String, Topic>>>,
    dead_letters: Arc<Mutex<Vec<DeadLetter>>>,
    /// What was published, once recording is on (the testing kit's); nothing is kept otherwise.
    recorded: Recorded,
}

#[derive(Debug)]
struct Recorded {
    on: std::sync::atomic::AtomicBool,
    messages: Mutex<Vec<Message>>,
    /// How many messages were recorded, for those waiting for one.
    count: tokio::sync::watch::Sender<usize>,
}

impl Default for Recorded {
    fn default() -> Self {
        Recorded {
            on: std::sync::atomic::AtomicBool::new(false),
            messages: Mutex::default(),
            count: tokio::sync::watch::Sender::new(0),
        }
    }
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
    /// Published before any group subscribed.
    kept: Vec<Message>,
    /// A group has subscribed at some point: from then on, a publish with no group refuses.
    had_groups: bool,
}

#[derive(Debug)]
struct Group {
    queue: mpsc::UnboundedSender<Envelope>,
    /// Shared by the group's members: each message goes to one of them.
    queued: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Envelope>>>,
    /// Members subscribed; the last to leave removes the group and fails what it left queued.
    members: Arc<AtomicUsize>,
}

/// Tells a publisher when every group its message was queued for has settled it, or that one
/// dropped it unsettled.
struct Receipt {
    groups_left: AtomicUsize,
    outcome: Mutex<Option<oneshot::Sender<Result<(), BrokerError>>>>,
}

impl Receipt {
    fn new(groups: usize, outcome: Option<oneshot::Sender<Result<(), BrokerError>>>) -> Arc<Self> {
        Arc::new(Receipt { groups_left: AtomicUsize::new(groups), outcome: Mutex::new(outcome) })
    }

    fn group_settled(&self) {
        if self.groups_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish(Ok(()));
        }
    }

    fn finish(&self, outcome: Result<(), BrokerError>) {
        if let Some(publisher) = lock(&self.outcome).take() {
            let _ = publisher.send(outcome);
        }
    }
}

/// A message queued for one group; dropped unsettled, it fails its publish, so the outbox keeps
/// the row and publishes it again (to every group: the inbox makes that harmless for the others).
struct Envelope {
    message: Message,
    receipt: Option<Arc<Receipt>>,
}

impl Envelope {
    fn settled(mut self) {
        if let Some(receipt) = self.receipt.take() {
            receipt.group_settled();
        }
    }
}

impl Drop for Envelope {
    fn drop(&mut self) {
        if let Some(receipt) = self.receipt.take() {
            receipt.finish(Err(BrokerError::Unavailable("the consumer stopped before settling it".into())));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryBroker {
    /// A broker of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// The broker `[events] broker = "memory"` means in [`crate::Runtime::current`] (see
    /// [`crate::Runtime::memory_broker`]).
    pub fn shared() -> Arc<dyn super::Broker> {
        crate::Runtime::current().memory_broker()
    }

    /// Every message a group gave up on, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.dead_letters).clone()
    }

    /// Keeps every message accepted from now on, for [`Self::published`] (tests: a service's broker
    /// keeps nothing).
    pub fn record_published(&self) {
        self.recorded.on.store(true, Ordering::Release);
    }

    /// The messages accepted since [`Self::record_published`], oldest first; one the outbox
    /// published again (its first publish failed) appears again.
    pub fn published(&self) -> Vec<Message> {
        lock(&self.recorded.messages).clone()
    }

    /// Changes when a message is recorded.
    pub fn published_changes(&self) -> tokio::sync::watch::Receiver<usize> {
        self.recorded.count.subscribe()
    }

    fn record(&self, message: &Message) {
        if self.recorded.on.load(Ordering::Acquire) {
            let mut messages = lock(&self.recorded.messages);
            messages.push(message.clone());
            self.recorded.count.send_replace(messages.len());
        }
    }
}

impl super::Broker for MemoryBroker {
    fn publish<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut topics = lock(&self.topics);
        for message in messages {
            let topic = topics.entry(message.topic.clone()).or_default();
            if topic.groups.is_empty() {
                outcomes.push(Err(if topic.had_groups {
                    Err(BrokerError::Unavailable(format!("no consumer of `{}` is running", message.topic)))
                } else {
                    topic.kept.push(message.clone());
                    self.record(message);
                    Ok(())
                }));
                continue;
            }
            self.record(message);
            let (publisher, outcome) = oneshot::channel();
            let receipt = Receipt::new(topic.groups.len(), Some(publisher));
            for group in topic.groups.values() {
                let _ = group.queue.send(Envelope { message: message.clone(), receipt: Some(receipt.clone()) });
            }
            outcomes.push(Ok(outcome));
        }
        drop(topics);
        Box::pin(async move {
            let mut acks = Vec::with_capacity(outcomes.len());
            for outcome in outcomes {
                acks.push(match outcome {
                    Ok(outcome) => outcome.await.unwrap_or_else(|_| {
                        Err(BrokerError::Unavailable("the in-process broker dropped the message".into()))
                    }),
                    Err(now) => now,
                });
            }
            acks
        })
    }

    fn subscribe(
        &self,
        topic_name: &str,
        group_name: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, BrokerError>> {
        let mut topics = lock(&self.topics);
        let topic = topics.entry(topic_name.to_owned()).or_default();
        topic.had_groups = true;
        let first_group = topic.groups.is_empty();
        let group = topic.groups.entry(group_name.to_owned()).or_insert_with(|| {
            let (queue, queued) = mpsc::unbounded_channel();
            Group { queue, queued: Arc::new(tokio::sync::Mutex::new(queued)), members: Arc::default() }
        });
        group.members.fetch_add(1, Ordering::AcqRel);
        if first_group {
            for message in topic.kept.drain(..) {
                let _ = group.queue.send(Envelope { message, receipt: None });
            }
        }
        let member = Member {
            topics: self.topics.clone(),
            topic: topic_name.to_owned(),
            group: group_name.to_owned(),
            queued: group.queued.clone(),
            members: group.members.clone(),
            dead_letters: self.dead_letters.clone(),
        };
        drop(topics);
        let (deliveries, receiver) = mpsc::channel(options.max_in_flight.max(1));
        tokio::spawn(member.deliver(deliveries));
        Box::pin(async move { Ok(Subscription::new(receiver)) })
    }
}

/// One subscription of a group: takes from the group's queue while its subscriber listens.
struct Member {
    topics: Arc<Mutex<HashMap<String, Topic>>>,
    topic: String,
    group: String,
    queued: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Envelope>>>,
    members: Arc<AtomicUsize>,
    dead_letters: Arc<Mutex<Vec<DeadLetter>>>,
}

impl Member {
    async fn deliver(self, deliveries: mpsc::Sender<Delivery>) {
        loop {
            let envelope = tokio::select! {
                envelope = async { self.queued.lock().await.recv().await } => envelope,
                () = deliveries.closed() => None,
            };
            let Some(envelope) = envelope else { break };
            let message = envelope.message.clone();
            let settle = MemorySettle { envelope: Some(envelope), dead_letters: self.dead_letters.clone() };
            if deliveries.send(Delivery::new(message, 1, Box::new(settle))).await.is_err() {
                break;
            }
        }
        self.leave().await;
    }

    /// The last member of a group to leave removes it, and what it left queued fails its publish.
    async fn leave(self) {
        {
            let mut topics = lock(&self.topics);
            if self.members.fetch_sub(1, Ordering::AcqRel) != 1 {
                return;
            }
            // Counted under the lock `subscribe` joins under: no member joined this group since.
            if let Some(topic) = topics.get_mut(&self.topic) {
                topic.groups.remove(&self.group);
            }
        }
        let mut queued = self.queued.lock().await;
        queued.close();
        while queued.try_recv().is_ok() {}
    }
}

/// Settles one in-process delivery; one dropped unsettled fails its publish (see [`Envelope`]).
struct MemorySettle {
    envelope: Option<Envelope>,
    dead_letters: Arc<Mutex<Vec<DeadLetter>>>,
}

impl Settle for MemorySettle {
    fn settle(mut self: Box<Self>, settlement: Settlement) -> BoxFuture<'static, Result<(), BrokerError>> {
        if let Some(envelope) = self.envelope.take() {
            if let Settlement::DeadLetter { group, reason } = settlement {
                lock(&self.dead_letters).push(DeadLetter { message: envelope.message.clone(), group, reason });
            }
            envelope.settled();
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::events::Broker;

    fn message(id: &str) -> Message {
        Message {
            id: id.into(),
            topic: "orders.placed".into(),
            key: None,
            version: 1,
            payload: b"{}".to_vec(),
            traceparent: None,
            tracestate: None,
        }
    }

    #[tokio::test]
    async fn a_publish_is_acknowledged_once_every_group_settled_it() {
        let broker = Arc::new(MemoryBroker::new());
        let mut audit = broker.subscribe("orders.placed", "audit", SubscribeOptions::default()).await.unwrap();
        let mut billing = broker.subscribe("orders.placed", "billing", SubscribeOptions::default()).await.unwrap();
        let publishing = tokio::spawn({
            let broker = broker.clone();
            async move { broker.publish(&[message("1")]).await }
        });
        audit.next().await.unwrap().ack().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!publishing.is_finished(), "billing has not settled it yet");
        billing.next().await.unwrap().dead_letter("billing", "no account").await.unwrap();
        assert_eq!(publishing.await.unwrap(), [Ok(())]);
        assert_eq!(broker.dead_letters().len(), 1);
    }

    #[tokio::test]
    async fn what_a_stopped_consumer_did_not_settle_fails_its_publish() {
        let broker = Arc::new(MemoryBroker::new());
        let mut audit = broker.subscribe("orders.placed", "audit", SubscribeOptions::default()).await.unwrap();
        let publishing = tokio::spawn({
            let broker = broker.clone();
            async move { broker.publish(&[message("1"), message("2"), message("3")]).await }
        });
        audit.next().await.unwrap().ack().await.unwrap();
        let taken = audit.next().await.unwrap();
        drop((taken, audit));
        let acks = publishing.await.unwrap();
        assert_eq!(acks[0], Ok(()));
        assert!(matches!(&acks[1], Err(BrokerError::Unavailable(_))), "taken, not settled: {acks:?}");
        assert!(matches!(&acks[2], Err(BrokerError::Unavailable(_))), "still queued: {acks:?}");
        let after = broker.publish(&[message("4")]).await;
        assert!(matches!(&after[0], Err(BrokerError::Unavailable(problem)) if problem.contains("no consumer")));
    }

    #[tokio::test]
    async fn a_topic_no_group_ever_subscribed_keeps_messages_for_the_first() {
        let broker = MemoryBroker::new();
        assert_eq!(broker.publish(&[message("early")]).await, [Ok(())]);
        let mut audit = broker.subscribe("orders.placed", "audit", SubscribeOptions::default()).await.unwrap();
        assert_eq!(audit.next().await.unwrap().message.id, "early");
    }
}
