//! Consumers: deliveries of one topic to one handler, decoded, retried with backoff, dead-lettered
//! when they keep failing, with bounded concurrency and the order of each aggregate key kept.
//!
//! Order: a key always goes to the same lane, and a lane handles one delivery at a time, retries
//! included; so events of one aggregate are handled in the order the broker delivers them while
//! different aggregates proceed in parallel.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::broker::{Broker, Delivery, SubscribeOptions, Subscription};
use super::{message, Message};
use crate::events::BoxFuture;
use crate::metrics::{ConsumerMetrics, EventMetrics};
use crate::Runtime;

/// How a handler's attempt ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The handler ran and its effects are committed.
    Done,
    /// The inbox says this group already handled this event: nothing ran again.
    Duplicate,
}

/// Why a handler's attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// The payload is not the handler's event type: dead-lettered at once, retrying cannot help.
    Undecodable(String),
    /// The handler (or its inbox transaction) failed: retried with backoff, then dead-lettered.
    Failed(String),
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Undecodable(problem) => write!(f, "undecodable payload: {problem}"),
            HandlerError::Failed(problem) => write!(f, "handler failed: {problem}"),
        }
    }
}

/// Calls the handler once for one message.
pub type Invoke = Arc<dyn Fn(Message) -> BoxFuture<'static, Result<Handled, HandlerError>> + Send + Sync>;

/// How a handler consumes; `#[event_handler(..)]` fills these from its arguments.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandlerOptions {
    /// Attempts per delivery before it is dead-lettered (1 = no retry).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles up to `max_backoff`, with full jitter.
    pub initial_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// Deliveries handled at once (lanes); events with one key never run concurrently.
    pub concurrency: usize,
    /// Deliveries of one message the broker may make before it is dead-lettered unhandled: a
    /// message that kills the process every time it is handled stops doing so.
    pub max_deliveries: u32,
    /// How long the broker waits for a settlement before redelivering. A running handler reports
    /// progress every half of it, so only a delivery whose consumer died comes back; a restarted
    /// consumer that finds such deliveries waits this long before taking new ones, so they come
    /// first and each key stays in order.
    pub ack_wait: Duration,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            concurrency: 8,
            max_deliveries: 10,
            ack_wait: Duration::from_secs(5),
        }
    }
}

impl HandlerOptions {
    /// Sets the attempts per delivery.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the first and the longest backoff.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets the lanes.
    pub fn concurrency(mut self, lanes: usize) -> Self {
        self.concurrency = lanes.max(1);
        self
    }

    /// Sets the broker's redelivery wait (100ms at least: progress is reported every half of it).
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait.max(Duration::from_millis(100));
        self
    }
}

/// One event handler: a topic, the consumer group it reads as, and the function it calls.
#[derive(Clone)]
pub struct EventHandler {
    /// The topic consumed.
    pub topic: Arc<str>,
    /// The consumer group (by default the service's name): each group sees every event once.
    pub group: Arc<str>,
    /// The handler's name in spans and logs (`Service::method`).
    pub name: &'static str,
    /// Retries, concurrency, redelivery.
    pub options: HandlerOptions,
    invoke: Invoke,
}

impl fmt::Debug for EventHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventHandler")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl EventHandler {
    /// A handler of `topic` for `group` calling `invoke` for each message.
    pub fn new(topic: &str, group: &str, name: &'static str, options: HandlerOptions, invoke: Invoke) -> Self {
        EventHandler { topic: topic.into(), group: group.into(), name, options, invoke }
    }

    /// In [`Runtime::current`]; see [`Self::start_in`].
    pub async fn start(
        self,
        broker: Arc<dyn Broker>,
        metrics: EventMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        self.start_in(Runtime::current(), broker, metrics, shutdown).await
    }

    /// Subscribes (retrying while the broker cannot be reached), then handles deliveries in the
    /// background until `shutdown` turns true; deliveries in flight then finish their current
    /// attempt, and those not started are left for the broker to redeliver. Returns once subscribed,
    /// so what is published after it reaches this group; or, if `shutdown` came first, a finished
    /// task.
    /// The handler runs in `runtime` (its [`Runtime::current`]: the inbox's pools are `runtime`'s).
    pub async fn start_in(
        self,
        runtime: Runtime,
        broker: Arc<dyn Broker>,
        metrics: EventMetrics,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let options =
            SubscribeOptions { max_in_flight: self.options.concurrency * 16, ack_wait: self.options.ack_wait };
        let mut retry_in = Duration::from_millis(100);
        let subscription = loop {
            match broker.subscribe(&self.topic, &self.group, options.clone()).await {
                Ok(subscription) => break subscription,
                Err(error) => {
                    tracing::warn!(%error, topic = %self.topic, group = %self.group, "cannot subscribe; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(retry_in) => {}
                        _ = shutdown.wait_for(|stop| *stop) => return tokio::spawn(async {}),
                    }
                    retry_in = (retry_in * 2).min(Duration::from_secs(5));
                }
            }
        };
        tokio::spawn(self.run(runtime, subscription, metrics, shutdown))
    }

    async fn run(
        self,
        runtime: Runtime,
        mut subscription: Subscription,
        metrics: EventMetrics,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let metrics = metrics.consumer(&self.topic, &self.group);
        let handler = Arc::new(self);
        let lanes: Vec<_> = (0..handler.options.concurrency)
            .map(|_| {
                let (sender, receiver) = mpsc::channel::<Delivery>(16);
                let lane = tokio::spawn(lane(handler.clone(), runtime.clone(), metrics.clone(), receiver));
                (sender, lane)
            })
            .collect();
        let mut next_unkeyed = 0usize;
        loop {
            let delivery = tokio::select! {
                delivery = subscription.next() => delivery,
                _ = shutdown.wait_for(|stop| *stop) => None,
            };
            let Some(delivery) = delivery else { break };
            let index = match &delivery.message.key {
                Some(key) => {
                    let mut hasher = DefaultHasher::new();
                    key.hash(&mut hasher);
                    hasher.finish() as usize % lanes.len()
                }
                None => {
                    next_unkeyed = next_unkeyed.wrapping_add(1);
                    next_unkeyed % lanes.len()
                }
            };
            if lanes[index].0.send(delivery).await.is_err() {
                break;
            }
        }
        for (sender, lane) in lanes {
            drop(sender);
            let _ = lane.await;
        }
    }
}

async fn lane(
    handler: Arc<EventHandler>,
    runtime: Runtime,
    metrics: ConsumerMetrics,
    mut deliveries: mpsc::Receiver<Delivery>,
) {
    while let Some(delivery) = deliveries.recv().await {
        handle(&handler, &runtime, &metrics, delivery).await;
    }
}

/// Handles one delivery to the end: acknowledged, or dead-lettered with the reason.
async fn handle(handler: &EventHandler, runtime: &Runtime, metrics: &ConsumerMetrics, delivery: Delivery) {
    let message = &delivery.message;
    // OpenTelemetry's consumer span for a handler processing one message.
    let span = tracing::info_span!(
        "event",
        otel.name = %format_args!("process {}", handler.topic),
        otel.kind = "consumer",
        messaging.operation.type = "process",
        messaging.destination.name = %handler.topic,
        messaging.consumer.group.name = %handler.group,
        messaging.message.id = %message.id,
        handler = handler.name,
        topic = %handler.topic,
        group = %handler.group,
        event_id = %message.id,
        key = message.key.as_deref().unwrap_or(""),
        delivered = delivery.delivered,
    );
    message::continue_trace(&span, message.traceparent.as_deref(), message.tracestate.as_deref());
    async {
        if delivery.delivered > handler.options.max_deliveries {
            let reason = format!("delivered {} times without being settled", delivery.delivered);
            dead_letter(handler, metrics, delivery, &reason).await;
            return;
        }
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let outcome = {
                // Its own task, so a handler that panics fails this attempt and not the consumer.
                let attempt = (handler.invoke)(delivery.message.clone());
                let attempt = tokio::spawn(runtime.clone().scope(attempt).in_current_span());
                let attempt = async {
                    attempt.await.unwrap_or_else(|failed| {
                        let panic =
                            failed.try_into_panic().map(|panic| crate::telemetry::panic_message(&*panic).to_owned());
                        Err(HandlerError::Failed(format!(
                            "the handler panicked: {}",
                            panic.as_deref().unwrap_or("cancelled")
                        )))
                    })
                };
                tokio::pin!(attempt);
                let mut progress = tokio::time::interval(handler.options.ack_wait / 2);
                progress.tick().await;
                loop {
                    tokio::select! {
                        outcome = &mut attempt => break outcome,
                        _ = progress.tick() => delivery.in_progress().await,
                    }
                }
            };
            metrics.duration.observe(started.elapsed());
            match outcome {
                Ok(handled) => {
                    let counter = if handled == Handled::Duplicate { &metrics.duplicate } else { &metrics.handled };
                    counter.inc();
                    if let Err(error) = delivery.ack().await {
                        // Redelivered later; the inbox (when the handler uses one) makes that harmless.
                        tracing::warn!(%error, "acknowledging the event failed");
                    }
                    return;
                }
                Err(error @ HandlerError::Undecodable(_)) => {
                    tracing::error!(%error, "dead-lettering an event the handler cannot read");
                    dead_letter(handler, metrics, delivery, &error.to_string()).await;
                    return;
                }
                Err(error) if attempt >= handler.options.max_attempts => {
                    tracing::error!(%error, attempt, "dead-lettering an event after its last attempt");
                    let reason = format!("{error} (attempt {attempt} of {})", handler.options.max_attempts);
                    dead_letter(handler, metrics, delivery, &reason).await;
                    return;
                }
                Err(error) => {
                    let backoff = backoff(&handler.options, attempt);
                    tracing::warn!(%error, attempt, ?backoff, "event handler failed; retrying");
                    metrics.retried.inc();
                    delivery.in_progress().await;
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
            }
        }
    }
    .instrument(span)
    .await;
}

async fn dead_letter(handler: &EventHandler, metrics: &ConsumerMetrics, delivery: Delivery, reason: &str) {
    metrics.dead_lettered.inc();
    if let Err(error) = delivery.dead_letter(&handler.group, reason).await {
        tracing::error!(%error, "dead-lettering failed; the broker will deliver the event again");
    }
}

/// Exponential backoff with full jitter: a random wait up to `initial * 2^(attempt-1)`, capped.
fn backoff(options: &HandlerOptions, attempt: u32) -> Duration {
    let ceiling = options.initial_backoff.saturating_mul(1 << (attempt - 1).min(20)).min(options.max_backoff);
    ceiling.mul_f64(fastrand::f64())
}
