//! The event side of a service: its consumers and, with `[outbox]`, the outbox relay, started with
//! the server on the `[events]` broker and stopped when it stops accepting requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::events::{broker, EventHandler};
use crate::registry::DependencyRegistry;
use crate::Runtime;

/// The running consumers and relay.
pub(super) struct EventTasks {
    tasks: Vec<JoinHandle<()>>,
}

/// Connects the broker and starts `handlers` and the relay; all stop when `stop` turns true.
pub(super) async fn start(
    runtime: Runtime,
    registry: Arc<DependencyRegistry>,
    handlers: Vec<EventHandler>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<EventTasks> {
    let config = registry.config();
    let mut tasks = Vec::new();
    let relay = config.outbox.as_ref();
    if handlers.is_empty() && relay.is_none() {
        return Ok(EventTasks { tasks });
    }
    let broker = broker::connect_in(&runtime, config.events.as_ref()).await.map_err(std::io::Error::other)?;
    // Consumers subscribe first: the in-process broker acknowledges a relayed event only once
    // every group subscribed to its topic has handled it, so none may be missing when the relay
    // starts.
    for handler in handlers {
        tracing::info!(topic = %handler.topic, group = %handler.group, handler = handler.name, "consuming");
        let metrics = registry.metrics().events().clone();
        tasks.push(handler.start_in(runtime.clone(), broker.clone(), metrics, stop.clone()).await);
    }
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    if let Some(outbox) = relay {
        let store = runtime
            .store(&outbox.store)
            .await
            .map_err(|error| std::io::Error::other(format!("outbox store `{}`: {error}", outbox.store)))?;
        let options = crate::outbox::RelayOptions::from_config(outbox);
        let relay = crate::outbox::Relay::new(store, broker.clone(), options, registry.metrics().events().clone());
        tracing::info!(store = %outbox.store, "outbox relay started");
        tasks.push(relay.start(stop.clone()));
    }
    #[cfg(not(any(feature = "postgres", feature = "sqlite")))]
    if relay.is_some() {
        return Err(std::io::Error::other("`[outbox]` needs marty's `postgres` or `sqlite` feature"));
    }
    Ok(EventTasks { tasks })
}

impl EventTasks {
    /// Waits up to `timeout` for the consumers and relay to finish what they hold. The relay may be
    /// waiting for the in-process broker's acknowledgements: those come, or fail, as the consumers
    /// stop, and the relay then keeps what was not handled in the outbox.
    pub(super) async fn finish(self, timeout: Duration) {
        let all = async {
            for task in self.tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!(?timeout, "event consumers did not stop in time; their deliveries will be redelivered");
        }
    }
}
