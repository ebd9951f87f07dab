//! The CPU a request costs on a `#[service]` next to bare axum serving the same handler.
//!
//! Each server runs in its own process on one worker thread; this process is the client, loading
//! both over loopback in interleaved rounds with keep-alive connections. Requests per second swing
//! between rounds on shared machines, so the figure that counts is the server's own CPU time per
//! request (`CLOCK_PROCESS_CPUTIME_ID`, read through `/cpu`). Last stdout line: one JSON object.
//! gRPC figures come with gRPC support.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use marty::axum::routing::get;
use marty::axum::Router;
use marty::service::Routes;
use marty_bench::{json, median, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 8;
const REQUESTS_PER_ROUND: usize = 20_000;
const ROUNDS: usize = 5;

struct Hello;

#[marty::service(name = "http_overhead")]
impl Hello {
    #[get("/hello")]
    async fn hello(&self) -> &'static str {
        "hello"
    }

    #[get("/cpu")]
    async fn cpu(&self) -> String {
        process_cpu_ns().to_string()
    }
}

/// CPU time this process has used, all threads, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `time` is a valid, writable timespec; the call only writes to it.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut time) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("serve-axum") => serve(bare_axum()),
        Some("serve-marty") => {
            let server = marty::service::server(Hello).expect("bench/marty.toml loads");
            marty::telemetry::init(
                <Hello as Routes>::NAME,
                &marty::DependencyRegistry::global().unwrap().config().telemetry,
            );
            serve(server.app())
        }
        _ => run_client(),
    }
}

/// The same handler, as a team would hand-wire it with axum alone.
fn bare_axum() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/cpu", get(|| async { process_cpu_ns().to_string() }))
}

/// Serves `app` on one worker thread on an ephemeral port, printing the port on stdout.
fn serve(app: Router) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        marty::axum::serve(listener, app).await.unwrap();
    });
}

struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(name: &'static str, mode: &str) -> Server {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg(mode)
        .env("RUST_LOG", "warn")
        .env_remove("MARTY_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a server process");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line.trim().parse().expect("the server prints its port");
    Server { name, child, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
}

/// One keep-alive connection sending `count` requests in sequence; returns each latency.
async fn load(addr: SocketAddr, count: usize) -> Vec<Duration> {
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

async fn cpu_ns(addr: SocketAddr) -> u64 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /cpu HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    raw.split("\r\n\r\n").nth(1).unwrap().trim().parse().unwrap()
}

struct Round {
    cpu_us_per_request: f64,
    requests_per_second: f64,
    p99_ms: f64,
}

async fn round(addr: SocketAddr) -> Round {
    let cpu_before = cpu_ns(addr).await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS).map(|_| tokio::spawn(load(addr, REQUESTS_PER_ROUND / CONNECTIONS))).collect();
    let mut latencies = Vec::with_capacity(REQUESTS_PER_ROUND);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    let cpu_after = cpu_ns(addr).await;
    latencies.sort_unstable();
    let requests = latencies.len() as f64;
    Round {
        cpu_us_per_request: (cpu_after - cpu_before) as f64 / 1000.0 / requests,
        requests_per_second: requests / elapsed.as_secs_f64(),
        p99_ms: latencies[latencies.len() * 99 / 100].as_secs_f64() * 1000.0,
    }
}

fn run_client() {
    let servers = [start("axum", "serve-axum"), start("marty", "serve-marty")];
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut figures: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(), Default::default()];
    runtime.block_on(async {
        for server in &servers {
            round(server.addr).await; // warm-up: connections, allocator, caches
        }
        for _ in 0..ROUNDS {
            for (server, (cpu, rps, p99)) in servers.iter().zip(figures.iter_mut()) {
                let result = round(server.addr).await;
                cpu.push(result.cpu_us_per_request);
                rps.push(result.requests_per_second);
                p99.push(result.p99_ms);
            }
        }
    });
    let [axum, marty] = [0, 1].map(|i| {
        let (cpu, rps, p99) = &mut figures[i];
        (median(cpu), median(rps), median(p99))
    });
    println!(
        "{ROUNDS} interleaved rounds of {REQUESTS_PER_ROUND} requests over {CONNECTIONS} keep-alive connections; medians; servers: {} and {}",
        servers[0].name, servers[1].name
    );
    println!(
        "{}",
        json(&[
            ("bench", Value::Text("http_overhead".into())),
            ("axum_cpu_us_per_req", Value::Number(axum.0)),
            ("marty_cpu_us_per_req", Value::Number(marty.0)),
            ("cpu_ratio", Value::Number(marty.0 / axum.0)),
            ("axum_rps", Value::Number(axum.1)),
            ("marty_rps", Value::Number(marty.1)),
            ("axum_p99_ms", Value::Number(axum.2)),
            ("marty_p99_ms", Value::Number(marty.2)),
        ])
    );
}
