//! What wakes the relay before its poll interval.

use std::time::Duration;

use crate::store::Store;

/// What wakes the relay before its poll interval: PostgreSQL's `NOTIFY marty_outbox` (sent by
/// `publish` while a relay is marked waiting, delivered when its transaction commits); in-process
/// outbox writes otherwise.
pub(super) enum Wake {
    #[cfg(feature = "postgres")]
    Listen(Option<sqlx::postgres::PgListener>),
    #[cfg(feature = "sqlite")]
    Local,
}

/// Outbox writes made in this process, for stores without a commit notification.
#[cfg(feature = "sqlite")]
pub(crate) static LOCAL_WRITES: tokio::sync::Notify = tokio::sync::Notify::const_new();

impl Wake {
    pub(super) async fn new(store: &Store) -> Self {
        match store {
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                let listener = async {
                    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
                    listener.listen("marty_outbox").await?;
                    Ok::<_, sqlx::Error>(listener)
                };
                match listener.await {
                    Ok(listener) => Wake::Listen(Some(listener)),
                    Err(error) => {
                        tracing::warn!(%error, "cannot LISTEN for outbox commits; polling only");
                        Wake::Listen(None)
                    }
                }
            }
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) => Wake::Local,
        }
    }

    /// Waits up to `pause`; `true` when a write woke it.
    pub(super) async fn wait(&mut self, pause: Duration) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            Wake::Listen(Some(listener)) => {
                tokio::select! {
                    notified = listener.recv() => {
                        if let Err(error) = notified {
                            tracing::warn!(%error, "outbox LISTEN connection lost; reconnecting");
                            tokio::time::sleep(pause.min(Duration::from_millis(100))).await;
                        }
                        true
                    }
                    () = tokio::time::sleep(pause) => false,
                }
            }
            #[cfg(feature = "postgres")]
            Wake::Listen(None) => {
                tokio::time::sleep(pause).await;
                false
            }
            #[cfg(feature = "sqlite")]
            Wake::Local => {
                tokio::select! {
                    () = LOCAL_WRITES.notified() => true,
                    () = tokio::time::sleep(pause) => false,
                }
            }
        }
    }
}
