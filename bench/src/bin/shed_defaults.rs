//! The REST example's routes on SQLite under 64 keep-alive connections of GETs and POSTs, twice in
//! one run: with the bulkhead's old default (`max_wait = 0`: a call finding the 10 permits taken is
//! shed at once) and with today's defaults (a call may queue for a quarter of its timeout, and the
//! bulkhead takes the pool's size when the service registers one). The database is healthy in both;
//! what differs is how many requests the service turns away with a 503 while `/readyz` says ready.
//!
//! `cargo run --release -p marty-bench --bin shed_defaults`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use marty::axum::extract::{Json, Path};
use marty::axum::http::StatusCode;
use marty_bench::{json, Value};
use marty_examples::{AppError, NewOrder, Order, OrderStore};

const CONNECTIONS: usize = 64;
const SECONDS: u64 = 5;

struct Orders {
    store: OrderStore,
}

#[marty::service]
impl Orders {
    #[post("/orders")]
    async fn create_order(&self, Json(new): Json<NewOrder>) -> Result<(StatusCode, Json<Order>), AppError> {
        Ok((StatusCode::CREATED, Json(self.store.create(&new).await?)))
    }

    #[get("/orders/{id}")]
    async fn get_order(&self, Path(id): Path<i64>) -> Result<Json<Order>, AppError> {
        Ok(Json(self.store.get(id).await?))
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        return serve();
    }
    let before = run("before", &[("MARTY__DEPENDENCIES__ORDERS_DB__MAX_WAIT", "0ms")]);
    let after = run("after", &[]);
    let mut fields = vec![
        ("bench", Value::Text("shed_defaults".into())),
        ("connections", Value::Number(CONNECTIONS as f64)),
        ("seconds", Value::Number(SECONDS as f64)),
    ];
    for (name, tally) in [("before", &before), ("after", &after)] {
        fields.push((leak(format!("{name}_get_503_share")), Value::Number(tally.get.shed_share())));
        fields.push((leak(format!("{name}_post_503_share")), Value::Number(tally.post.shed_share())));
        fields.push((leak(format!("{name}_other_errors")), Value::Number((tally.get.other + tally.post.other) as f64)));
        fields.push((leak(format!("{name}_served_per_s")), Value::Number(tally.served_per_second())));
        fields.push((leak(format!("{name}_log_kib")), Value::Number(tally.log_bytes as f64 / 1024.0)));
    }
    println!("{}", json(&fields));
}

fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

/// The service, on an ephemeral port it writes to the file the parent names; its orders in the
/// SQLite file the parent names.
fn serve() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port_file = std::env::var("SHED_PORT_FILE").expect("the parent names the port file");
        std::fs::write(port_file, listener.local_addr().unwrap().port().to_string()).unwrap();
        let server = marty::service::server_with(|registry| async move {
            Ok::<_, marty::sqlx::Error>(Orders { store: OrderStore::open(registry).await? })
        })
        .await
        .expect("the service starts");
        server.serve_with_shutdown(listener, std::future::pending()).await.unwrap();
    });
}

#[derive(Default)]
struct Counts {
    ok: u64,
    shed: u64,
    other: u64,
}

impl Counts {
    fn shed_share(&self) -> f64 {
        self.shed as f64 / (self.ok + self.shed + self.other).max(1) as f64
    }
}

#[derive(Default)]
struct Tally {
    get: Counts,
    post: Counts,
    log_bytes: u64,
}

impl Tally {
    fn served_per_second(&self) -> f64 {
        (self.get.ok + self.post.ok) as f64 / SECONDS as f64
    }
}

fn run(name: &str, env: &[(&str, &str)]) -> Tally {
    let dir = std::env::temp_dir().join(format!("marty-shed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let port_file = dir.join("port");
    let child = Command::new(std::env::current_exe().unwrap())
        .arg("serve")
        .env("SHED_PORT_FILE", &port_file)
        .env("MARTY__DEPENDENCIES__ORDERS_DB__URL", format!("sqlite://{}/orders.db?mode=rwc", dir.display()))
        .env("MARTY__TELEMETRY__LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("MARTY_CONFIG")
        .envs(env.iter().copied())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("start the service");
    let addr = port_of(&port_file);
    let mut tally = Tally::default();
    {
        let _server = Killed(child);
        let mut seed = Connection::open(addr);
        while seed.request("POST", "/orders", r#"{"item":"seed","quantity":1}"#) != 201 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let log_before = std::fs::metadata(dir.join("log")).map_or(0, |meta| meta.len());
        let running = Arc::new(AtomicBool::new(true));
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let running = running.clone();
                std::thread::spawn(move || {
                    let mut connection = Connection::open(addr);
                    let mut tally = Tally::default();
                    while running.load(Ordering::Relaxed) {
                        count(&mut tally.get, connection.request("GET", "/orders/1", ""));
                        count(
                            &mut tally.post,
                            connection.request("POST", "/orders", r#"{"item":"book","quantity":1}"#),
                        );
                    }
                    tally
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(SECONDS));
        running.store(false, Ordering::Relaxed);
        for client in clients {
            let client = client.join().unwrap();
            for (total, part) in [(&mut tally.get, client.get), (&mut tally.post, client.post)] {
                total.ok += part.ok;
                total.shed += part.shed;
                total.other += part.other;
            }
        }
        tally.log_bytes = std::fs::metadata(dir.join("log")).map_or(0, |meta| meta.len()) - log_before;
    }
    let _ = std::fs::remove_dir_all(&dir);
    tally
}

fn count(counts: &mut Counts, status: u16) {
    match status {
        200..=299 => counts.ok += 1,
        503 => counts.shed += 1,
        _ => counts.other += 1,
    }
}

/// The port the service wrote to `port_file` once it listened.
fn port_of(port_file: &std::path::Path) -> SocketAddr {
    let started = Instant::now();
    loop {
        if let Some(port) = std::fs::read_to_string(port_file).ok().and_then(|text| text.trim().parse().ok()) {
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the service did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One keep-alive HTTP/1.1 connection, reopened when the server closes it.
struct Connection {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(addr: SocketAddr) -> Connection {
        let started = Instant::now();
        loop {
            match TcpStream::connect(addr) {
                Ok(stream) => {
                    stream.set_nodelay(true).unwrap();
                    return Connection { addr, reader: BufReader::new(stream) };
                }
                Err(error) if started.elapsed() > Duration::from_secs(30) => panic!("cannot connect: {error}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Sends one request and reads its response; the status, or 0 when the connection failed.
    fn request(&mut self, method: &str, path: &str, body: &str) -> u16 {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        match self.exchange(&request) {
            Some(status) => status,
            None => {
                *self = Connection::open(self.addr);
                0
            }
        }
    }

    fn exchange(&mut self, request: &str) -> Option<u16> {
        self.reader.get_mut().write_all(request.as_bytes()).ok()?;
        let mut line = String::new();
        self.reader.read_line(&mut line).ok()?;
        let status = line.split(' ').nth(1)?.parse().ok()?;
        let (mut length, mut close) = (0, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line).ok()?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse().ok()?;
            }
            close |= lower.starts_with("connection: close");
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).ok()?;
        if close {
            *self = Connection::open(self.addr);
        }
        Some(status)
    }
}
