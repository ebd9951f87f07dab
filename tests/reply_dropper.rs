//! A TCP proxy in front of a gRPC (HTTP/2) server that forwards every request, lets the server act on
//! it, and then drops the connection instead of the reply, for a share of the calls: the window
//! between a remote service's commit and its answer, which a client can only read as "maybe".
//!
//! The server's side of the connection is read frame by frame (RFC 9113 §4.1: a 9-byte header with
//! a 24-bit length, a type, flags and a stream id). A unary gRPC server sends a stream's first
//! HEADERS frame only once its handler has returned, so dropping the connection there loses an
//! answer whose work is done, and, as a crash would, the other calls in flight on that connection
//! (`dropped` counts the answers dropped, not those calls).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HEADERS: u8 = 0x1;

pub struct ReplyDropper {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    /// Out of 1,000 replies, how many to drop.
    drop_per_mille: AtomicU32,
    replies: AtomicUsize,
    dropped: AtomicUsize,
}

impl ReplyDropper {
    /// Listens on an ephemeral loopback port and forwards to `upstream`, dropping `drop_per_mille`
    /// replies in a thousand (chosen at random).
    pub async fn start(upstream: SocketAddr, drop_per_mille: u32) -> ReplyDropper {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        Self::serve(listener, upstream, drop_per_mille)
    }

    /// The same on a listener the caller bound (to keep a port across restarts of a test).
    pub fn serve(listener: TcpListener, upstream: SocketAddr, drop_per_mille: u32) -> ReplyDropper {
        let addr = listener.local_addr().expect("a bound listener");
        let state = Arc::new(State {
            drop_per_mille: AtomicU32::new(drop_per_mille),
            replies: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
        });
        let accepting = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                tokio::spawn(forward(client, upstream, accepting.clone()));
            }
        });
        ReplyDropper { addr, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, drop `per_mille` replies in a thousand.
    pub fn set_drop_rate(&self, per_mille: u32) {
        self.state.drop_per_mille.store(per_mille, Ordering::SeqCst);
    }

    /// Replies the server started to send.
    pub fn replies(&self) -> usize {
        self.state.replies.load(Ordering::SeqCst)
    }

    /// Replies dropped (with their connections).
    pub fn dropped(&self) -> usize {
        self.state.dropped.load(Ordering::SeqCst)
    }
}

/// One client connection: requests pass untouched; replies pass frame by frame until one is dropped.
async fn forward(client: TcpStream, upstream: SocketAddr, state: Arc<State>) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    };
    let replies = async {
        let mut answered = std::collections::HashSet::new();
        let mut header = [0u8; 9];
        loop {
            if server_read.read_exact(&mut header).await.is_err() {
                return;
            }
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; length];
            if server_read.read_exact(&mut payload).await.is_err() {
                return;
            }
            // A stream's first HEADERS frame starts its reply (a second one carries the trailers).
            if header[3] == HEADERS && stream != 0 && answered.insert(stream) {
                state.replies.fetch_add(1, Ordering::SeqCst);
                if fastrand::u32(0..1000) < state.drop_per_mille.load(Ordering::SeqCst) {
                    state.dropped.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            if client_write.write_all(&header).await.is_err() || client_write.write_all(&payload).await.is_err() {
                return;
            }
        }
    };
    // Either side ending ends the connection: dropping both halves closes both sockets.
    tokio::select! {
        () = requests => {}
        () = replies => {}
    }
}
