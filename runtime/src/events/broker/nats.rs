//! NATS JetStream: one stream per topic (created on first use), a durable pull consumer per group
//! with explicit acks, `Nats-Msg-Id` = event id so the stream drops a republished event.
//!
//! Durability: JetStream's default fsync interval loses acknowledged messages when the server is
//! killed (Jepsen, NATS 2.12.1, 2025). Run it with `jetstream { sync_interval: always }` where the
//! server supports it, or on replicated streams, when the outbox's guarantee must survive that.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::stream;
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use futures_util::StreamExt;
use marty_config::{NatsConfig, NatsStorage};
use tokio::sync::mpsc;

use super::{BrokerError, Delivery, Settle, Settlement, SubscribeOptions, Subscription};
use crate::events::message::headers;
use crate::events::BoxFuture;
use crate::events::Message;

/// Where dead-lettered messages go: `marty.dead_letter.<group>.<topic>` in one stream.
pub const DEAD_LETTER_STREAM: &str = "MARTY_DEAD_LETTER";
const DEAD_LETTER_SUBJECTS: &str = "marty.dead_letter.>";

/// A NATS JetStream connection.
#[derive(Debug)]
pub struct NatsBroker {
    jetstream: Context,
    /// How the streams Marty creates are made.
    streams_config: NatsConfig,
    /// Topics whose stream this process has made sure of.
    streams: Mutex<HashSet<String>>,
    /// Times the connection dropped: a subscription that sees it change starts over.
    disconnects: Arc<AtomicU64>,
}

impl NatsBroker {
    /// Connects to `url` (`nats://127.0.0.1:4222`) with `[events.nats]`'s defaults; reconnects on its
    /// own afterwards.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with(url, &NatsConfig::default()).await
    }

    /// Connects to `url` with `config`: its credentials file and TLS certificates, and the
    /// replicas, storage and age of the streams it creates.
    pub async fn connect_with(url: &str, config: &NatsConfig) -> Result<Self, BrokerError> {
        let disconnects = Arc::new(AtomicU64::new(0));
        let counter = disconnects.clone();
        let mut options = match &config.credentials {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path).await.map_err(|error| {
                BrokerError::Unavailable(format!("cannot read the NATS credentials file `{path}`: {error}"))
            })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.into()).require_tls(true);
        }
        if let Some((cert, key)) = &config.tls_client {
            options = options.add_client_certificate(cert.into(), key.into()).require_tls(true);
        }
        let client = options
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Disconnected) {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                async {}
            })
            .connection_timeout(Duration::from_secs(5))
            // A service starts while its broker is down, and catches up once it is back.
            .retry_on_initial_connect()
            .connect(url)
            .await
            .map_err(|error| BrokerError::Unavailable(format!("cannot connect to NATS at {url}: {error}")))?;
        let jetstream = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .max_ack_inflight(20_000)
            .backpressure_on_inflight(true)
            .build(client);
        Ok(NatsBroker { jetstream, streams_config: config.clone(), streams: Mutex::new(HashSet::new()), disconnects })
    }

    /// The JetStream stream that holds `topic`: its name can hold neither dots nor wildcards.
    pub fn stream_name(topic: &str) -> String {
        format!("MARTY_{}", topic.replace(['.', '*', '>'], "_"))
    }

    async fn ensure_stream(&self, name: String, subjects: Vec<String>) -> Result<stream::Stream, BrokerError> {
        let config = stream::Config {
            name,
            subjects,
            storage: match self.streams_config.storage {
                NatsStorage::File => stream::StorageType::File,
                NatsStorage::Memory => stream::StorageType::Memory,
            },
            num_replicas: self.streams_config.replicas as usize,
            duplicate_window: Duration::from_secs(120),
            max_age: self.streams_config.max_age,
            ..Default::default()
        };
        self.jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|error| BrokerError::Unavailable(format!("cannot create the JetStream stream: {error}")))
    }

    async fn ensure_topic(&self, topic: &str) -> Result<stream::Stream, BrokerError> {
        let stream = self.ensure_stream(Self::stream_name(topic), vec![topic.to_owned()]).await?;
        self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(topic.to_owned());
        Ok(stream)
    }

    fn known(&self, topic: &str) -> bool {
        self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(topic)
    }
}

fn headers_of(message: &Message) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert("Nats-Msg-Id", message.id.as_str());
    map.insert(headers::ID, message.id.as_str());
    map.insert(headers::VERSION, message.version.to_string());
    if let Some(key) = &message.key {
        map.insert(headers::KEY, key.as_str());
    }
    if let Some(tracestate) = &message.tracestate {
        map.insert(headers::TRACESTATE, tracestate.as_str());
    }
    if let Some(traceparent) = &message.traceparent {
        map.insert(headers::TRACEPARENT, traceparent.as_str());
    }
    map
}

fn publish_error(error: async_nats::jetstream::context::PublishError) -> BrokerError {
    match error.kind() {
        // A stream deleted under us is recreated on the next batch (see `publish`).
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::StreamNotFound => BrokerError::Unavailable(error.to_string()),
        _ => BrokerError::Rejected(error.to_string()),
    }
}

impl super::Broker for NatsBroker {
    fn publish<'a>(&'a self, messages: &'a [Message]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        Box::pin(async move {
            let mut topics: Vec<&str> = messages.iter().map(|message| message.topic.as_str()).collect();
            topics.sort_unstable();
            topics.dedup();
            for topic in topics {
                if !self.known(topic) {
                    if let Err(error) = self.ensure_topic(topic).await {
                        return messages.iter().map(|_| Err(error.clone())).collect();
                    }
                }
            }
            // Send all, then wait for the acks: one round trip for the batch, in publish order.
            let mut pending = Vec::with_capacity(messages.len());
            for message in messages {
                let sent = self
                    .jetstream
                    .publish_with_headers(message.topic.clone(), headers_of(message), message.payload.clone().into())
                    .await;
                pending.push(sent);
            }
            let mut acks = Vec::with_capacity(messages.len());
            for (sent, message) in pending.into_iter().zip(messages) {
                let ack = match sent {
                    Ok(ack) => ack.await.map(drop),
                    Err(error) => Err(error),
                };
                if matches!(&ack, Err(error) if error.kind() == PublishErrorKind::StreamNotFound) {
                    self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&message.topic);
                }
                acks.push(ack.map_err(publish_error));
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
            let stream = self.ensure_topic(&topic).await?;
            let dead_letters =
                self.ensure_stream(DEAD_LETTER_STREAM.to_owned(), vec![DEAD_LETTER_SUBJECTS.to_owned()]).await?;
            drop(dead_letters);
            let config = pull::Config {
                durable_name: Some(group.clone()),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ack_wait: options.ack_wait,
                max_ack_pending: options.max_in_flight as i64,
                filter_subject: topic.clone(),
                ..Default::default()
            };
            let consumer: PullConsumer = stream
                .get_or_create_consumer(&group, config)
                .await
                .map_err(|error| BrokerError::Unavailable(format!("cannot create consumer `{group}`: {error}")))?;
            let (deliveries, receiver) = mpsc::channel(options.max_in_flight.max(1));
            let mut puller = Puller {
                consumer,
                topic,
                group,
                jetstream: self.jetstream.clone(),
                deliveries,
                disconnects: self.disconnects.clone(),
                seen_disconnects: 0,
            };
            let first = puller.pull_in_order().await?;
            tokio::spawn(puller.run(first));
            Ok(Subscription::new(receiver))
        })
    }
}

/// Pulls one group's deliveries and hands them to the consumer in the order each key needs.
struct Puller {
    consumer: PullConsumer,
    topic: String,
    group: String,
    jetstream: Context,
    deliveries: mpsc::Sender<Delivery>,
    /// The connection's disconnect count when the current pull began.
    disconnects: Arc<AtomicU64>,
    seen_disconnects: u64,
}

/// A pull begun: the messages, and the deliveries redelivered first, already in stream order.
struct Pull {
    messages: pull::Stream,
    redelivered: Vec<async_nats::jetstream::Message>,
    /// What ended the burst of redeliveries, still to be handled: a new delivery, or the end.
    next: Option<Option<Result<async_nats::jetstream::Message, pull::MessagesError>>>,
}

impl Puller {
    /// Forwards deliveries until the consumer is gone; starts a new pull whenever the connection
    /// dropped or the pull ended.
    async fn run(mut self, first: Pull) {
        let mut pull = first;
        loop {
            if !self.forward_until_resync(pull).await {
                return;
            }
            // The old pull is dropped by now: see `pull_in_order`.
            pull = loop {
                match self.pull_in_order().await {
                    Ok(pull) => break pull,
                    Err(error) => {
                        tracing::warn!(%error, topic = self.topic, group = self.group, "cannot pull from JetStream; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
        }
    }

    /// Forwards `pull`'s deliveries; `true` when a new pull is needed, `false` when the consumer is
    /// gone.
    async fn forward_until_resync(&self, pull: Pull) -> bool {
        let Pull { mut messages, redelivered, mut next } = pull;
        if self.disconnected() {
            return true;
        }
        for raw in redelivered {
            if !self.forward(raw).await {
                return false;
            }
        }
        loop {
            let item = match next.take() {
                Some(item) => item,
                None => messages.next().await,
            };
            match item {
                Some(Ok(raw)) if !self.disconnected() => {
                    if !self.forward(raw).await {
                        return false;
                    }
                }
                // The connection dropped since this pull began: a message the server sent before
                // may have been lost on the way and will come back only after `ack_wait`, behind
                // this one. Leave this one unsettled too and start over.
                Some(Ok(_)) | None => return true,
                Some(Err(error)) => {
                    tracing::warn!(%error, topic = self.topic, group = self.group, "JetStream delivery interrupted");
                    return true;
                }
            }
        }
    }

    fn disconnected(&self) -> bool {
        self.disconnects.load(Ordering::SeqCst) != self.seen_disconnects
    }

    /// Hands one delivery to the consumer; `false` when the consumer is gone.
    async fn forward(&self, raw: async_nats::jetstream::Message) -> bool {
        let delivered = raw.info().map_or(1, |info| info.delivered.max(1) as u32);
        let message = message_of(&raw, &self.topic);
        let settle = NatsSettle { raw, jetstream: self.jetstream.clone() };
        self.deliveries.send(Delivery::new(message, delivered, Box::new(settle))).await.is_ok()
    }

    /// Starts pulling once the deliveries left unsettled (by a crashed instance, or lost when the
    /// connection dropped) are due again: they come back only after `ack_wait`, and JetStream hands
    /// out newer messages meanwhile, so pulling before would let a key's later events overtake
    /// them. Once due they come first, but in the order their timers fired, which is not the
    /// stream's when a handler reported progress on one: that burst is sorted by stream sequence.
    ///
    /// The previous pull must be dropped first: one still open keeps taking deliveries nobody
    /// handles, and each restarts its message's timer, so it would come back after newer ones.
    async fn pull_in_order(&mut self) -> Result<Pull, BrokerError> {
        self.seen_disconnects = self.disconnects.load(Ordering::SeqCst);
        let (topic, group) = (&self.topic, &self.group);
        let info = self.consumer.info().await.map_err(|error| BrokerError::Unavailable(error.to_string()))?;
        let (unsettled, wait) = (info.num_ack_pending, info.config.ack_wait);
        if unsettled > 0 {
            tracing::info!(unsettled, ?wait, topic, group, "waiting for unsettled deliveries to come back first");
            // A margin over `ack_wait`: the server's redelivery timer fires a little late.
            tokio::time::sleep(wait + wait / 4).await;
        }
        let mut messages = self
            .consumer
            .messages()
            .await
            .map_err(|error| BrokerError::Unavailable(format!("cannot pull from `{topic}`: {error}")))?;
        let mut redelivered = Vec::new();
        let mut next = None;
        while redelivered.len() < unsettled {
            // Redeliveries come in one burst; a pause means fewer came back (some were settled
            // meanwhile) and the rest of the stream is new.
            let pause = (wait / 4).min(Duration::from_secs(1));
            let Ok(item) = tokio::time::timeout(pause, messages.next()).await else { break };
            match item {
                Some(Ok(raw)) if raw.info().is_ok_and(|info| info.delivered > 1) => redelivered.push(raw),
                other => {
                    next = Some(other);
                    break;
                }
            }
        }
        redelivered.sort_by_key(|raw| raw.info().map_or(0, |info| info.stream_sequence));
        Ok(Pull { messages, redelivered, next })
    }
}

fn message_of(raw: &async_nats::jetstream::Message, topic: &str) -> Message {
    let header = |name: &str| raw.headers.as_ref().and_then(|map| map.get(name)).map(|value| value.as_str().to_owned());
    Message {
        id: header(headers::ID).or_else(|| header("Nats-Msg-Id")).unwrap_or_default(),
        topic: topic.to_owned(),
        key: header(headers::KEY),
        version: header(headers::VERSION).and_then(|version| version.parse().ok()).unwrap_or(1),
        payload: raw.payload.to_vec(),
        traceparent: header(headers::TRACEPARENT),
        tracestate: header(headers::TRACESTATE),
    }
}

struct NatsSettle {
    raw: async_nats::jetstream::Message,
    jetstream: Context,
}

impl Settle for NatsSettle {
    fn settle(self: Box<Self>, settlement: Settlement) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(async move {
            let unavailable = |error: async_nats::Error| BrokerError::Unavailable(error.to_string());
            match settlement {
                Settlement::Ack => self.raw.ack().await.map_err(unavailable),
                Settlement::DeadLetter { group, reason } => {
                    let mut map = self.raw.headers.clone().unwrap_or_default();
                    map.insert(headers::DEAD_LETTER_GROUP, group.as_str());
                    map.insert(headers::DEAD_LETTER_REASON, reason.as_str());
                    // A dead letter keeps its own id for dedup, apart from the original's.
                    let id = map.get(headers::ID).map(|id| id.as_str().to_owned()).unwrap_or_default();
                    map.insert("Nats-Msg-Id", format!("{id}:{group}:dead"));
                    let subject = format!("marty.dead_letter.{group}.{}", self.raw.subject);
                    let stored = self
                        .jetstream
                        .publish_with_headers(subject, map, self.raw.payload.clone())
                        .await
                        .map_err(publish_error)?;
                    stored.await.map_err(publish_error)?;
                    self.raw.ack_with(AckKind::Term).await.map_err(unavailable)
                }
            }
        })
    }

    fn in_progress(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.raw.ack_with(AckKind::Progress).await;
        })
    }
}
