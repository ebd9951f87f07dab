//! An event as it travels: an id (the broker's dedup id and the inbox's key), the topic, the
//! aggregate key, the schema version, the JSON payload and the W3C trace context.

use super::{Event, EventError};

/// One event on its way through the outbox, a broker and a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique per event, kept across redeliveries: brokers deduplicate on it (`Nats-Msg-Id`) and
    /// the inbox records it. A UUIDv7, so ids sort by creation time.
    pub id: String,
    /// Where it is published.
    pub topic: String,
    /// The aggregate it belongs to; events with the same key are delivered in order.
    pub key: Option<String>,
    /// The schema version of the payload.
    pub version: u32,
    /// The encoded event (JSON).
    pub payload: Vec<u8>,
    /// The publisher's W3C `traceparent`, so the consumer continues its trace.
    pub traceparent: Option<String>,
    /// The vendors' W3C `tracestate` that travels with it.
    pub tracestate: Option<String>,
}

impl Message {
    /// `event` encoded, with a fresh id and the current span's trace context.
    pub fn from_event<E: Event>(event: &E) -> Result<Self, EventError> {
        let (traceparent, tracestate) = current_trace_context();
        Ok(Message {
            id: new_event_id(),
            topic: E::TOPIC.to_owned(),
            key: event.key(),
            version: E::VERSION,
            payload: event.encode()?,
            traceparent,
            tracestate,
        })
    }
}

/// Names of the headers carrying a message's metadata on brokers that have headers.
pub mod headers {
    /// The event id (NATS reads its own `Nats-Msg-Id` for dedup; other brokers read this one).
    pub const ID: &str = "marty-event-id";
    /// The aggregate key.
    pub const KEY: &str = "marty-key";
    /// The schema version.
    pub const VERSION: &str = "marty-version";
    /// The publisher's trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// The W3C `tracestate` that goes with it.
    pub const TRACESTATE: &str = "tracestate";
    /// Why a dead-lettered message was given up on.
    pub const DEAD_LETTER_REASON: &str = "marty-dead-letter-reason";
    /// The consumer group that gave up on a dead-lettered message.
    pub const DEAD_LETTER_GROUP: &str = "marty-dead-letter-group";
}

/// A UUIDv7 in its text form: 48 bits of milliseconds since the epoch, then a counter (the `uuid`
/// crate's), so ids made in one process sort in the order they were made, within a millisecond too,
/// then random bits.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The current span's `traceparent` and `tracestate`, when OpenTelemetry is exporting.
pub(crate) fn current_trace_context() -> (Option<String>, Option<String>) {
    let mut headers = http::HeaderMap::new();
    crate::telemetry::inject_trace_context(&mut headers);
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    (header(headers::TRACEPARENT), header(headers::TRACESTATE).filter(|state| !state.is_empty()))
}

/// Makes `traceparent` (with its `tracestate`) the parent of `span`, so a consumer continues the
/// publisher's trace.
pub(crate) fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(value) = traceparent.and_then(|value| http::HeaderValue::from_str(value).ok()) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(headers::TRACEPARENT, value);
    if let Some(state) = tracestate.and_then(|value| http::HeaderValue::from_str(value).ok()) {
        headers.insert(headers::TRACESTATE, state);
    }
    crate::telemetry::otel::continue_trace(span, &headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_uuid_v7_and_sort_by_creation_even_within_a_millisecond() {
        let first = new_event_id();
        assert_eq!(first.len(), 36);
        assert_eq!(&first[14..15], "7", "version nibble: {first}");
        assert!(matches!(&first[19..20], "8" | "9" | "a" | "b"), "variant bits: {first}");
        // Thousands per millisecond, from several threads: each thread's ids are strictly
        // increasing, and no id repeats.
        let threads: Vec<_> =
            (0..4).map(|_| std::thread::spawn(|| (0..5_000).map(|_| new_event_id()).collect::<Vec<_>>())).collect();
        let mut all = std::collections::HashSet::new();
        for ids in threads.into_iter().map(|thread| thread.join().unwrap()) {
            assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "ids sort in the order they were made");
            all.extend(ids);
        }
        assert_eq!(all.len(), 20_000);
    }
}
