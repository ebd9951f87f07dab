//! Every wrapped call is a `marty.call` span with its dependency, operation, attempt and outcome.
//! Its own test binary with a global subscriber: tracing caches per-callsite interest process-wide,
//! so a scoped subscriber racing other tests' threads would make this flaky.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use marty::config::Config;
use marty::{CallError, DependencyRegistry};

/// A span's name and its fields as (name, value), in the order they were recorded.
type RecordedSpan = (&'static str, Vec<(String, String)>);

/// Records every span's name and fields, as a tracing backend would see them.
#[derive(Default)]
struct SpanRecorder {
    spans: Mutex<Vec<RecordedSpan>>,
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl tracing::Subscriber for SpanRecorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Vec::new();
        span.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push((span.metadata().name(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }

    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        values.record(&mut Fields(&mut spans[span.into_u64() as usize - 1].1));
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(start_paused = true)]
async fn every_call_is_a_span_with_dependency_operation_attempt_and_outcome() {
    let recorder = Arc::new(SpanRecorder::default());
    tracing::subscriber::set_global_default(recorder.clone()).expect("the only subscriber in this binary");
    let config = Config::parse("[dependencies.db]\nkind = \"database\"\n", "marty.toml").unwrap();
    let registry = DependencyRegistry::from_config(config);
    let policy = registry.call_policy("db", "load_order").unwrap();
    let attempts = AtomicU32::new(0);
    let result = policy
        .call(|| async {
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(CallError::Inner(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)))
            } else {
                Ok(7)
            }
        })
        .await;
    assert_eq!(result.unwrap(), 7);
    let spans = recorder.spans.lock().unwrap();
    let (name, fields) = spans.iter().find(|(name, _)| *name == "marty.call").expect("a marty.call span");
    assert_eq!(*name, "marty.call");
    let field = |key: &str| fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(field("dependency"), Some("db"));
    assert_eq!(field("operation"), Some("load_order"));
    assert_eq!(field("attempt"), Some("2"), "the retry is visible on the span");
    assert_eq!(field("outcome"), Some("success"));
}
