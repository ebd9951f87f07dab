//! Running an example service as a real process on a free loopback port, and a minimal HTTP/1.1
//! client to talk to it.

#![allow(dead_code)]

pub mod store;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example binary on a free loopback port, with its database in a temp dir.
pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Service {
    pub fn start(binary: &str, name: &str) -> Service {
        Self::start_with(binary, name, Stdio::null(), None)
    }

    pub fn start_with(binary: &str, name: &str, stdout: Stdio, config: Option<&std::path::Path>) -> Service {
        Self::start_with_env(binary, name, stdout, config, &[])
    }

    pub fn start_with_env(
        binary: &str,
        name: &str,
        stdout: Stdio,
        config: Option<&std::path::Path>,
        env: &[(&str, String)],
    ) -> Service {
        let dir = std::env::temp_dir().join(format!("marty-rest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_in(binary, &dir, stdout, config, env)
    }

    /// Starts `binary` with its database in `dir`, kept from an earlier run if there was one.
    pub fn start_in(
        binary: &str,
        dir: &std::path::Path,
        stdout: Stdio,
        config: Option<&std::path::Path>,
        env: &[(&str, String)],
    ) -> Service {
        let mut command = Command::new(binary);
        command
            .env("MARTY__DEPENDENCIES__ORDERS_DB__URL", format!("sqlite://{}/orders.db?mode=rwc", dir.display()))
            .env_remove("MARTY_CONFIG")
            .envs(config.map(|path| ("MARTY_CONFIG", path)))
            .envs(env.iter().map(|(key, value)| (*key, value)))
            .stdout(stdout);
        Self::spawn(command)
    }

    /// Runs `command` on a free loopback port (`MARTY__HTTP__ADDR`), logging JSON lines at `info`,
    /// and returns once it answers. The port is picked free, then released for the service to bind:
    /// another test's listener may take it in between, so the service counts as started only when
    /// `/healthz` answers with a Marty request id, and it is started again on another port if it
    /// exited (it could not bind).
    pub fn spawn(mut command: Command) -> Service {
        for _ in 0..5 {
            let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let child = command
                .env("MARTY__HTTP__ADDR", addr.to_string())
                .env("MARTY__TELEMETRY__LOG_FORMAT", "json")
                .env("RUST_LOG", "info")
                .stderr(Stdio::null())
                .spawn()
                .expect("start the example");
            let mut service = Service { child, addr };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if service.child.try_wait().unwrap().is_some() {
                    break; // it exited: the port was taken; try another
                }
                let answered = request(addr, "GET", "/healthz", None);
                if answered.is_ok_and(|health| health.header("x-request-id").is_some()) {
                    return service;
                }
                assert!(Instant::now() < deadline, "the service did not start answering on {addr}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("the service exited at startup five times");
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        request(self.addr, method, path, body).expect("the request completes")
    }

    pub fn request_with_headers(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        request_with(self.addr, method, path, None, headers).expect("the request completes")
    }

    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), read to the end.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> std::io::Result<Response> {
    request_with(addr, method, path, body, &[])
}

pub fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let body = body.unwrap_or("");
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|line| line.split(' ').nth(1)).and_then(|code| code.parse().ok()).unwrap_or(0);
    let headers = lines.filter_map(|line| line.split_once(": ").map(|(k, v)| (k.to_owned(), v.to_owned()))).collect();
    Ok(Response { status, headers, body: body.to_owned() })
}

/// Polls `GET path` until it answers `status` (10s at most), and returns that response.
pub fn wait_for_status(addr: SocketAddr, path: &str, status: u16) -> Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = request(addr, "GET", path, None).expect("the request completes");
        if response.status == status {
            return response;
        }
        assert!(Instant::now() < deadline, "GET {path} never answered {status}: {response:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
