//! A TCP proxy in front of a real server that a test can cut (every open connection is dropped and
//! new ones are closed at once, as when a database host goes away) and restore.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    cuts: watch::Sender<u64>,
}

struct State {
    up: AtomicBool,
    connections: AtomicUsize,
}

impl Proxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State { up: AtomicBool::new(true), connections: AtomicUsize::new(0) });
        let (cuts, _) = watch::channel(0u64);
        let (accept_state, accept_cuts) = (state.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accept_state.connections.fetch_add(1, Ordering::SeqCst);
                if !accept_state.up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = accept_cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, state, cuts }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and closes new ones on accept.
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|generation| *generation += 1);
    }

    pub fn restore(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }

    /// Connections clients have opened through the proxy so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}
