//! A server under measurement as a process of its own: this benchmark binary again, in a `mode`
//! that serves on one worker thread, its CPU time read from `/proc/<pid>/schedstat`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Runs `server` on one worker thread on an ephemeral port, printing the port on stdout (what
/// [`Server::start`] reads).
pub fn serve<F, Fut>(server: F)
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        server(listener).await;
    });
}

/// Serves `service` on `listener` as a user's `main` does: its configuration from `MARTY_CONFIG` (or
/// `marty.toml`), telemetry initialised.
pub async fn serve_marty<S: marty::service::Routes>(service: S, listener: tokio::net::TcpListener) {
    let server = marty::service::server(service).expect("the benchmark's configuration loads");
    marty::telemetry::init(S::NAME, &marty::DependencyRegistry::global().unwrap().config().telemetry);
    server.serve_with_shutdown(listener, std::future::pending()).await.unwrap()
}

/// A server process, killed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// This binary with `mode` as its argument and `env` added (logging at `warn`, no
    /// `MARTY_CONFIG` or OTLP endpoint unless `env` sets them); returns once it listens.
    pub fn start(mode: &str, env: &[(&str, String)]) -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg(mode)
            .env("RUST_LOG", "warn")
            .env_remove("MARTY_CONFIG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(env.iter().map(|(key, value)| (*key, value)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a server process");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().expect("the server prints its port");
        Server { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }

    /// Nanoseconds the server's worker thread has spent on a CPU.
    pub fn cpu_ns(&self) -> u64 {
        let stats = std::fs::read_to_string(format!("/proc/{}/schedstat", self.child.id())).expect("read schedstat");
        stats.split_whitespace().next().and_then(|ns| ns.parse().ok()).expect("schedstat starts with ns on CPU")
    }
}
