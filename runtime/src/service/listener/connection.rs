//! One connection: served by hyper (HTTP/1.1, and HTTP/2 for gRPC with the `grpc` feature) and
//! watched for the timeouts hyper does not apply the way a service needs:
//!
//! - a new connection must send a complete request head within `header_read_timeout`, and so must
//!   an idle HTTP/1 connection once a next request's first byte arrived (slowloris);
//! - a connection with nothing in flight is closed after `idle_timeout` (HTTP/2 gets a GOAWAY);
//! - at shutdown, a connection with nothing in flight closes at once, so an idle or half-sent
//!   client cannot stretch the shutdown; the others finish their requests and close.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tower_service::Service;

use super::request::Requests;
use super::wire::WatchedIo;
use super::Limits;

/// What the timeouts of one connection read: requests in flight and when it last went quiet.
#[derive(Debug)]
pub(super) struct Activity {
    in_flight: AtomicUsize,
    /// The client sent the HTTP/2 preface: reads while idle are pings, not a request head.
    http2: AtomicBool,
    /// A request was refused while its body was still coming: read and drop what follows for a
    /// moment before closing, so the client reads the answer instead of a reset.
    linger: AtomicBool,
    times: Mutex<Times>,
}

#[derive(Debug)]
struct Times {
    /// When the connection opened or its last request finished.
    quiet_since: Instant,
    /// When the first byte of a next request head arrived (HTTP/1, nothing in flight).
    head_started: Option<Instant>,
    /// A request was served on it.
    served: bool,
}

impl Activity {
    fn new() -> Self {
        let times = Times { quiet_since: Instant::now(), head_started: None, served: false };
        Activity {
            in_flight: AtomicUsize::new(0),
            http2: AtomicBool::new(false),
            linger: AtomicBool::new(false),
            times: Mutex::new(times),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// Asks for a lingering close (see [`Activity::linger`]).
    pub(super) fn linger_on_close(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }

    pub(super) fn lingers(&self) -> bool {
        self.linger.load(Ordering::Relaxed)
    }

    /// Bytes arrived from the client (`first` on the connection's first read).
    pub(super) fn bytes_read(&self, bytes: &[u8], first: bool) {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        if first && (bytes.starts_with(PREFACE) || PREFACE.starts_with(bytes)) {
            self.http2.store(true, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Acquire) == 0 && !self.is_http2() {
            let mut times = self.times();
            times.head_started.get_or_insert_with(Instant::now);
        }
    }

    /// A request's head is complete and its handling begins.
    pub(super) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let mut times = self.times();
        times.head_started = None;
        times.served = true;
    }

    /// A request's response has been sent (or abandoned).
    pub(super) fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut times = self.times();
            times.quiet_since = Instant::now();
            times.head_started = None;
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// When the connection is to be closed if nothing happens first; `None` while requests run.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight() > 0 {
            return None;
        }
        let times = self.times();
        Some(match times.head_started {
            Some(started) => started + limits.header_read_timeout,
            // A real HTTP/2 client (it sent the preface) may idle before its first call.
            None if times.served || self.is_http2() => times.quiet_since + limits.idle_timeout,
            None => times.quiet_since + limits.header_read_timeout,
        })
    }
}

/// Serves one connection until the client closes it, a timeout closes it, or shutdown ends it.
pub(super) async fn serve<S>(
    stream: TcpStream,
    service: S,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedIo::new(stream, activity.clone()));
    let requests = Requests::new(service, activity.clone(), limits.clone());
    let builder = builder(&limits);
    let connection = builder.serve_connection_with_upgrades(io, requests);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        // While requests run there is no deadline; look again now and then (soon when stopping).
        let recheck = if stopping { Duration::from_millis(100) } else { limits.header_read_timeout };
        let wake = activity.deadline(&limits).unwrap_or_else(|| Instant::now() + recheck);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = tokio::time::sleep_until(wake) => {
                let expired = activity.deadline(&limits).is_some_and(|deadline| deadline <= Instant::now());
                if expired || (stopping && activity.in_flight() == 0) {
                    break;
                }
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                if activity.in_flight() == 0 {
                    return;
                }
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    // Closing a quiet connection: HTTP/2 clients get a GOAWAY, then the socket closes.
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
}

fn builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    // The header-read timeout is applied above (hyper's would also close idle keep-alive
    // connections after it); hyper's own buffer limit answers 431 to heads larger than it.
    builder.http1().header_read_timeout(None).max_buf_size(limits.max_header_bytes.max(8192));
    #[cfg(feature = "grpc")]
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        // Finds peers that vanished without closing (a pod gone, a NAT that forgot the flow).
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}
