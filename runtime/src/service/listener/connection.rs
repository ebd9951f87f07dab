//! One connection: served by hyper (HTTP/1.1, and HTTP/2 for gRPC with the `grpc` feature) and
//! watched for the timeouts hyper does not apply the way a service needs:
//!
//! - a new connection must send a complete request head within `header_read_timeout`, and so must
//!   an idle HTTP/1 connection once a next request's first byte arrived (slowloris);
//! - a connection with nothing in flight is closed after `idle_timeout` (HTTP/2 gets a GOAWAY);
//! - at shutdown, a connection with nothing in flight closes at once, so an idle or half-sent
//!   client cannot stretch the shutdown; the others finish their requests and close.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tower_service::Service;

use super::request::Requests;
use super::transport::Transport;
use super::wire::WatchedIo;
use super::Limits;
use crate::service::ClientCertificate;
use crate::timeout::Stopwatch;

/// What the timeouts of one connection read: requests in flight and when it last went quiet. Kept
/// in atomics (times as nanoseconds since the connection opened), since every request and every
/// read of an idle connection touch it.
#[derive(Debug)]
pub(super) struct Activity {
    opened: Instant,
    /// The same moment on the time-stamp counter, which times every request's start and end: the
    /// OS clock read twice per request was a measurable part of what a request costs.
    since_opened: Stopwatch,
    in_flight: AtomicUsize,
    /// When the connection opened or its last request finished.
    quiet_since: AtomicU64,
    /// When the first byte of a next request head arrived (HTTP/1, nothing in flight); 0: none.
    head_started: AtomicU64,
    /// A request was served on it.
    served: AtomicBool,
    /// The client sent the HTTP/2 preface: reads while idle are pings, not a request head.
    http2: AtomicBool,
    /// A request was refused while its body was still coming: read and drop what follows for a
    /// moment before closing, so the client reads the answer instead of a reset.
    linger: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            since_opened: Stopwatch::start(),
            in_flight: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            served: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            linger: AtomicBool::new(false),
        }
    }

    /// Now, as nanoseconds since the connection opened (at least 1, so 0 can mean "none").
    fn now(&self) -> u64 {
        u64::try_from(self.since_opened.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    fn at(&self, nanos: u64) -> Instant {
        self.opened + Duration::from_nanos(nanos)
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
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.is_http2()
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            let _ = self.head_started.compare_exchange(0, self.now(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// A request's head is complete and its handling begins.
    pub(super) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Relaxed);
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
    }

    /// A request's response has been sent (or abandoned).
    pub(super) fn request_finished(&self) {
        // Times first: the watchdog reads them once it sees nothing in flight.
        self.head_started.store(0, Ordering::Relaxed);
        self.quiet_since.store(self.now(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// When the connection is to be closed if nothing happens first; `None` while requests run.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight() > 0 {
            return None;
        }
        let quiet_since = self.at(self.quiet_since.load(Ordering::Relaxed));
        Some(match self.head_started.load(Ordering::Relaxed) {
            0 if self.served.load(Ordering::Relaxed) || self.is_http2() => quiet_since + limits.idle_timeout,
            // A real HTTP/2 client (it sent the preface) may idle before its first call; a fresh
            // connection that has sent nothing gets only the header-read timeout.
            0 => quiet_since + limits.header_read_timeout,
            started => self.at(started) + limits.header_read_timeout,
        })
    }
}

/// Serves one connection until the client closes it, a timeout closes it, or shutdown ends it.
pub(super) async fn serve<S>(
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
    tls: Option<TlsAcceptor>,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let Some((transport, client_certificate)) = handshake(stream, peer, tls, &limits).await else { return };
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedIo::new(transport, activity.clone()));
    let requests = Requests::new(service, peer, client_certificate, activity.clone(), limits.clone());
    let builder = builder(&limits);
    let connection = builder.serve_connection_with_upgrades(io, requests);
    tokio::pin!(connection);
    // The timeouts are watched by a task of their own: this one is woken for every read and write,
    // and a oneshot is the cheapest thing to poll beside the connection each time.
    let (tell, mut told) = oneshot::channel();
    tokio::spawn(watch_over(activity, limits, stop, tell));
    let close_now = tokio::select! {
        biased;
        _ = connection.as_mut() => return,
        verdict = &mut told => verdict,
    };
    match close_now {
        // Shutdown with requests in flight: they finish, then the connection closes.
        Ok(Verdict::FinishAndClose) => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
        // Quiet: HTTP/2 clients get a GOAWAY, then the socket closes.
        Ok(Verdict::CloseQuiet) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_millis(500), connection).await;
        }
        Ok(Verdict::DropNow) | Err(_) => {}
    }
}

/// The TLS acceptor where `[http.tls]` is configured (a stand-in type without the `tls` feature).
#[cfg(feature = "tls")]
pub(super) type TlsAcceptor = tokio_rustls::TlsAcceptor;
#[cfg(not(feature = "tls"))]
pub(super) type TlsAcceptor = std::convert::Infallible;

/// The connection's transport: TLS when `tls` is given, its handshake done within the header-read
/// timeout (a client that stalls it is a slowloris too), with the client's certificate when it
/// gave one. `None`: the handshake failed and the connection is dropped.
#[cfg_attr(not(feature = "tls"), allow(clippy::unused_async))]
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: &Limits,
) -> Option<(Transport, Option<ClientCertificate>)> {
    let Some(acceptor) = tls else { return Some((Transport::Plain(stream), None)) };
    #[cfg(not(feature = "tls"))]
    let _ = (peer, limits);
    #[cfg(not(feature = "tls"))]
    match acceptor {}
    #[cfg(feature = "tls")]
    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let certificate = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first());
            let certificate = certificate.map(|leaf| ClientCertificate::from_der(leaf.as_ref()));
            Some((Transport::Tls(Box::new(tls)), certificate))
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake not finished within the header-read timeout");
            None
        }
    }
}

/// What the watchdog decided for a connection.
#[derive(Debug)]
enum Verdict {
    /// A timeout ran out with nothing in flight.
    CloseQuiet,
    /// Shutdown, nothing in flight: close at once, so no idle or half-sent client holds it up.
    DropNow,
    /// Shutdown with requests in flight.
    FinishAndClose,
}

/// Sleeps until the connection's deadline (looking again while requests run) or shutdown, and
/// tells the connection's task what to do; ends with the connection (`tell` closed).
async fn watch_over(
    activity: Arc<Activity>,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
    mut tell: oneshot::Sender<Verdict>,
) {
    loop {
        let wake = activity.deadline(&limits).unwrap_or_else(|| Instant::now() + limits.header_read_timeout);
        let verdict = tokio::select! {
            () = tell.closed() => return,
            () = tokio::time::sleep_until(wake) => {
                match activity.deadline(&limits) {
                    Some(deadline) if deadline <= Instant::now() => Verdict::CloseQuiet,
                    _ => continue,
                }
            }
            _ = stop.wait_for(|stop| *stop) => match activity.in_flight() {
                0 => Verdict::DropNow,
                _ => Verdict::FinishAndClose,
            },
        };
        let _ = tell.send(verdict);
        return;
    }
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
