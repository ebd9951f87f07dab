//! The CPU a request costs on a `#[service]` next to the same handler hand-wired: bare axum for
//! HTTP, a bare tonic server for gRPC.
//!
//! Each server runs in its own process on one worker thread; this process is the client, loading
//! them over loopback in interleaved rounds on keep-alive connections. Requests per second swing
//! between rounds on shared machines, so the figure that counts is the server's own CPU time per
//! request, read from `/proc/<pid>/schedstat` (nanoseconds on CPU of the server's only worker
//! thread). Last stdout line: one JSON object.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use marty::axum::routing::get;
use marty::axum::Router;
use marty_bench::server::{serve, serve_marty, Server};
use marty_bench::{json, median, Value};
use marty_examples::proto::orders_client::OrdersClient;
use marty_examples::proto::orders_server::{self, OrdersServer};
use marty_examples::proto::{CreateOrderRequest, GetOrderRequest, Order};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 8;
const REQUESTS_PER_ROUND: usize = 20_000;
const ROUNDS: usize = 5;

struct Hello;

#[marty::service(name = "http_overhead", grpc(OrdersServer))]
impl Hello {
    #[get("/hello")]
    async fn hello(&self) -> &'static str {
        "hello"
    }
}

/// The gRPC handler both gRPC servers run: a fixed order, so only the framework differs.
#[tonic::async_trait]
impl orders_server::Orders for Hello {
    async fn create_order(
        &self,
        _: tonic::Request<CreateOrderRequest>,
    ) -> Result<tonic::Response<Order>, tonic::Status> {
        Err(tonic::Status::unimplemented("not measured"))
    }

    async fn get_order(
        &self,
        request: tonic::Request<GetOrderRequest>,
    ) -> Result<tonic::Response<Order>, tonic::Status> {
        Ok(tonic::Response::new(Order { id: request.into_inner().id, item: "book".into(), quantity: 1 }))
    }
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("serve-axum") => serve(|listener| async move { marty::axum::serve(listener, bare_axum()).await.unwrap() }),
        Some("serve-tonic") => serve(|listener| async move {
            tonic::transport::Server::builder()
                .add_service(OrdersServer::new(Hello))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap()
        }),
        Some("serve-marty") => serve(|listener| serve_marty(Hello, listener)),
        _ => run_client(),
    }
}

/// The HTTP handler as a team would hand-wire it with axum alone.
fn bare_axum() -> Router {
    Router::new().route("/hello", get(|| async { "hello" }))
}

/// One keep-alive HTTP/1.1 connection sending `count` requests in sequence; returns each latency.
async fn load_http(addr: SocketAddr, count: usize) -> Vec<Duration> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut latencies = Vec::with_capacity(count);
    let mut line = String::new();
    for _ in 0..count {
        let start = Instant::now();
        writer.write_all(b"GET /hello HTTP/1.1\r\nHost: bench\r\n\r\n").await.unwrap();
        let mut content_length = 0;
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body).await.unwrap();
        latencies.push(start.elapsed());
    }
    latencies
}

/// One gRPC connection sending `count` unary calls in sequence; returns each latency.
async fn load_grpc(addr: SocketAddr, count: usize) -> Vec<Duration> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = OrdersClient::new(channel);
    let mut latencies = Vec::with_capacity(count);
    for id in 0..count {
        let start = Instant::now();
        client.get_order(GetOrderRequest { id: id as i64 }).await.unwrap();
        latencies.push(start.elapsed());
    }
    latencies
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Http,
    Grpc,
}

struct Round {
    cpu_us_per_request: f64,
    requests_per_second: f64,
    p99_ms: f64,
}

async fn round(server: &Server, protocol: Protocol) -> Round {
    let cpu_before = server.cpu_ns();
    let start = Instant::now();
    let per_connection = REQUESTS_PER_ROUND / CONNECTIONS;
    let addr = server.addr;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| match protocol {
            Protocol::Http => tokio::spawn(load_http(addr, per_connection)),
            Protocol::Grpc => tokio::spawn(load_grpc(addr, per_connection)),
        })
        .collect();
    let mut latencies = Vec::with_capacity(REQUESTS_PER_ROUND);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    tokio::time::sleep(Duration::from_millis(20)).await; // the server goes idle, so its stats are current
    let cpu_after = server.cpu_ns();
    latencies.sort_unstable();
    let requests = latencies.len() as f64;
    Round {
        cpu_us_per_request: (cpu_after - cpu_before) as f64 / 1000.0 / requests,
        requests_per_second: requests / elapsed.as_secs_f64(),
        p99_ms: latencies[latencies.len() * 99 / 100].as_secs_f64() * 1000.0,
    }
}

/// Medians of (CPU µs per request, requests per second, p99 ms) for each server, measured interleaved.
async fn compare(servers: [(&Server, Protocol); 2]) -> [(f64, f64, f64); 2] {
    for (server, protocol) in servers {
        round(server, protocol).await; // warm-up: connections, allocator, caches
    }
    let mut samples: [(Vec<f64>, Vec<f64>, Vec<f64>); 2] = Default::default();
    for _ in 0..ROUNDS {
        for ((server, protocol), (cpu, rps, p99)) in servers.iter().zip(samples.iter_mut()) {
            let result = round(server, *protocol).await;
            cpu.push(result.cpu_us_per_request);
            rps.push(result.requests_per_second);
            p99.push(result.p99_ms);
        }
    }
    samples.map(|(mut cpu, mut rps, mut p99)| (median(&mut cpu), median(&mut rps), median(&mut p99)))
}

fn run_client() {
    let (axum, tonic, marty) =
        (Server::start("serve-axum", &[]), Server::start("serve-tonic", &[]), Server::start("serve-marty", &[]));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ([axum_http, marty_http], [tonic_grpc, marty_grpc]) = runtime.block_on(async {
        let http = compare([(&axum, Protocol::Http), (&marty, Protocol::Http)]).await;
        let grpc = compare([(&tonic, Protocol::Grpc), (&marty, Protocol::Grpc)]).await;
        (http, grpc)
    });
    println!(
        "{ROUNDS} interleaved rounds of {REQUESTS_PER_ROUND} requests over {CONNECTIONS} connections per protocol; medians"
    );
    println!(
        "{}",
        json(&[
            ("bench", Value::Text("http_overhead".into())),
            ("axum_cpu_us_per_req", Value::Number(axum_http.0)),
            ("marty_cpu_us_per_req", Value::Number(marty_http.0)),
            ("cpu_ratio", Value::Number(marty_http.0 / axum_http.0)),
            ("axum_rps", Value::Number(axum_http.1)),
            ("marty_rps", Value::Number(marty_http.1)),
            ("axum_p99_ms", Value::Number(axum_http.2)),
            ("marty_p99_ms", Value::Number(marty_http.2)),
            ("tonic_cpu_us_per_rpc", Value::Number(tonic_grpc.0)),
            ("marty_cpu_us_per_rpc", Value::Number(marty_grpc.0)),
            ("grpc_cpu_ratio", Value::Number(marty_grpc.0 / tonic_grpc.0)),
            ("tonic_rps", Value::Number(tonic_grpc.1)),
            ("marty_grpc_rps", Value::Number(marty_grpc.1)),
            ("tonic_p99_ms", Value::Number(tonic_grpc.2)),
            ("marty_grpc_p99_ms", Value::Number(marty_grpc.2)),
        ])
    );
}
