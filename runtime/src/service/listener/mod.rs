//! The listener: accepts connections up to a limit and serves each with hyper, with the timeouts
//! `axum::serve` does not have. Without them a slow client (slowloris), a silent one, or a body sent
//! a byte at a time holds a connection, a file descriptor and a task for as long as it likes, and a
//! few hundred such clients take the service down.
//!
//! - [`connection`]: one connection's life: header-read and idle timeouts, and at shutdown the
//!   connections with nothing in flight closed at once;
//! - [`request`]: each request: an oversized declared body refused before it is read, the body's
//!   deadline (408), and the in-flight count the connection's timeouts read;
//! - [`transport`]: plain TCP, or TLS ([`tls`], `[http.tls]`) with its handshake bounded by the
//!   header-read timeout;
//! - [`wire`]: the errors hyper answers itself before any service sees the request (400, 414, 431),
//!   rewritten as problem+json.

mod connection;
mod request;
#[cfg(feature = "tls")]
pub(crate) mod tls;
mod transport;
mod wire;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower_service::Service;

use crate::throttled_log::{Throttle, WINDOW};

#[cfg(feature = "tls")]
pub(crate) use tls::Tls;

/// Without the `tls` feature there is no TLS to serve: a type that cannot be made.
#[cfg(not(feature = "tls"))]
#[derive(Debug)]
pub(crate) enum Tls {}

#[cfg(not(feature = "tls"))]
impl Tls {
    fn acceptor(&self) -> connection::TlsAcceptor {
        match *self {}
    }
}

/// What each connection may take; `[http]` sets them.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    pub(super) header_read_timeout: Duration,
    pub(super) body_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) max_connections: usize,
    pub(super) max_body_bytes: usize,
    pub(super) max_header_bytes: usize,
}

impl Limits {
    pub(super) fn from_config(http: &marty_config::HttpConfig) -> Self {
        Limits {
            header_read_timeout: http.header_read_timeout,
            body_timeout: http.body_timeout,
            idle_timeout: http.idle_timeout,
            max_connections: http.max_connections.unwrap_or_else(default_max_connections),
            max_body_bytes: http.max_body_bytes,
            max_header_bytes: http.max_header_bytes,
        }
    }
}

/// 10,000, or three quarters of the open-file limit when that is lower: the rest is left for the
/// database pool, the broker and files, so a flood of connections cannot starve them (an `accept`
/// failing with "too many open files" is what a flood does otherwise).
fn default_max_connections() -> usize {
    const CEILING: usize = 10_000;
    open_file_limit().map_or(CEILING, |limit| (limit / 4 * 3).clamp(16, CEILING))
}

/// The soft `RLIMIT_NOFILE`, from `/proc/self/limits` (Linux; `None` elsewhere).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Serves `listener` until `stop` turns true: then it stops accepting, connections with nothing in
/// flight close at once, and those with requests finish them (the caller bounds how long).
pub(super) async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
    tls: Option<Arc<Tls>>,
) -> std::io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let at_limit = Throttle::new(WINDOW);
    let accept_failed = Throttle::new(WINDOW);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if let Some(times) = at_limit.hit() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        times,
                        "connection limit reached: new connections wait to be accepted"
                    );
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    _ = stop.wait_for(|stop| *stop) => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                let acceptor = tls.as_ref().map(|tls| tls.acceptor());
                let connection =
                    connection::serve(stream, peer, service.clone(), limits.clone(), stop.clone(), permit, acceptor);
                connections.spawn(connection);
            }
            // The client gave up before we took its connection: nothing to do.
            Err(error) if is_per_connection(&error) => {}
            Err(error) => {
                // Out of file descriptors, most often: wait for some to be freed rather than spin.
                if let Some(times) = accept_failed.hit() {
                    tracing::error!(%error, times, "accepting a connection failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset)
}
