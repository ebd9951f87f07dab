//! A dependency that starts failing, the circuit breaker opening and rejecting fast, then recovering.
//!
//! The "inventory service" is a real TCP server on loopback. The demo calls it through
//! `#[api_call]` every 200ms, stops the server (connections are refused), and starts it again: watch
//! the breaker go closed -> open -> half-open -> closed, and open calls return in microseconds.
//!
//! Run it with `cargo run -p marty-examples --bin circuit_breaker`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use marty::{api_call, Classify, DependencyRegistry, ErrorClass};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug)]
enum InventoryError {
    Io(std::io::Error),
    Resilience(marty::Error),
}

impl From<std::io::Error> for InventoryError {
    fn from(error: std::io::Error) -> Self {
        InventoryError::Io(error)
    }
}

impl From<marty::Error> for InventoryError {
    fn from(error: marty::Error) -> Self {
        InventoryError::Resilience(error)
    }
}

impl Classify for InventoryError {
    fn classify(&self) -> ErrorClass {
        match self {
            InventoryError::Io(error) => error.classify(),
            InventoryError::Resilience(error) => error.classify(),
        }
    }
}

impl std::fmt::Display for InventoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InventoryError::Io(error) => write!(f, "io: {error}"),
            InventoryError::Resilience(error) => error.fmt(f),
        }
    }
}

/// Asks the inventory service how many items are in stock.
#[api_call(dependency = "inventory_api")]
async fn stock_level(addr: SocketAddr) -> Result<u32, InventoryError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"STOCK\n").await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    line.trim().parse().map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad reply").into())
}

/// The inventory service: answers every request with a stock level until stopped.
async fn serve_inventory(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        tokio::spawn(async move {
            let (reader, mut writer) = stream.into_split();
            let mut request = String::new();
            if BufReader::new(reader).read_line(&mut request).await.is_ok() {
                let _ = writer.write_all(b"42\n").await;
            }
        });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("marty.toml");
    let registry = match DependencyRegistry::load(&config) {
        Ok(registry) => registry.install_global().expect("nothing was installed before"),
        Err(errors) => {
            eprintln!("{errors}");
            std::process::exit(1);
        }
    };
    let started = Instant::now();
    let breaker = registry.dependency("inventory_api").expect("declared in marty.toml").circuit_breaker();
    breaker.on_transition(move |t| {
        println!(
            "{:>6.2}s  ** circuit breaker {} -> {} (failure rate {:.0}%)",
            started.elapsed().as_secs_f64(),
            t.from,
            t.to,
            t.failure_rate * 100.0
        )
    });

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the inventory service");
    let addr = listener.local_addr().unwrap();
    let mut server = Some(tokio::spawn(serve_inventory(listener)));
    println!("inventory service on {addr}; calling it every 200ms");

    for tick in 0..40 {
        match tick {
            6 => {
                if let Some(server) = server.take() {
                    server.abort();
                }
                println!("{:>6.2}s  -- inventory service stopped", started.elapsed().as_secs_f64());
            }
            22 => match TcpListener::bind(addr).await {
                Ok(listener) => {
                    server = Some(tokio::spawn(serve_inventory(listener)));
                    println!("{:>6.2}s  -- inventory service back", started.elapsed().as_secs_f64());
                }
                Err(error) => println!("could not restart the service on {addr}: {error}"),
            },
            _ => {}
        }
        let call_started = Instant::now();
        let outcome = match stock_level(addr).await {
            Ok(stock) => format!("ok: {stock} in stock"),
            Err(error) => format!("error: {error}"),
        };
        println!(
            "{:>6.2}s  [{:>9}] call took {:>9.3}ms  {outcome}",
            started.elapsed().as_secs_f64(),
            breaker.state().to_string(),
            call_started.elapsed().as_secs_f64() * 1000.0
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("\n{}", registry.metrics().render());
}
