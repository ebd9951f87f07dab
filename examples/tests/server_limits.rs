//! The REST example's server against clients that misbehave, over real sockets: slow and silent
//! clients are cut off by `[http]`'s timeouts, a flood of connections waits within the connection
//! limit instead of exhausting file descriptors, oversized and malformed requests get problem+json
//! at once, and a half-sent request does not hold up a SIGTERM.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Service;

const BINARY: &str = env!("CARGO_BIN_EXE_rest_orders");

fn start(name: &str, env: &[(&str, &str)]) -> Service {
    let env: Vec<(&str, String)> = env.iter().map(|(key, value)| (*key, value.to_string())).collect();
    let service = Service::start_with_env(BINARY, name, Stdio::null(), None, &env);
    support::wait_for_status(service.addr, "/readyz", 200);
    service
}

/// Whether the server has closed `stream` (EOF or reset), waiting at most `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

/// Everything the server sends on `stream` until it closes it.
fn read_to_close(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn assert_problem(response: &str, status: u16, problem_type: &str) {
    assert!(response.starts_with(&format!("HTTP/1.1 {status} ")), "{response}");
    assert_eq!(header(response, "content-type"), Some("application/problem+json"), "{response}");
    let request_id = header(response, "x-request-id").expect("every answer has a request id");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(body.contains(&format!(r#""type":"urn:marty:problem:{problem_type}""#)), "{response}");
    assert!(body.contains(&format!(r#""status":{status}"#)), "{response}");
    assert!(body.contains(&format!(r#""instance":"{request_id}""#)), "the instance is the request id: {response}");
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).expect("connect")
}

#[test]
fn slowloris_and_silent_connections_are_closed_and_the_service_keeps_answering() {
    let service =
        start("slowloris", &[("MARTY__HTTP__HEADER_READ_TIMEOUT", "1s"), ("MARTY__HTTP__IDLE_TIMEOUT", "30s")]);
    // 200 clients that send a request head a byte at a time (taking 2.4 s, over the 1 s allowed),
    // and 50 that send nothing.
    let mut slow: Vec<TcpStream> = (0..200).map(|_| connect(service.addr)).collect();
    let mut silent: Vec<TcpStream> = (0..50).map(|_| connect(service.addr)).collect();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    for byte in head.iter().take(12) {
        for stream in &mut slow {
            let _ = stream.write_all(&[*byte]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(service.request("GET", "/healthz", None).status, 200, "the service answers meanwhile");
    for stream in slow.iter_mut().chain(&mut silent) {
        assert!(closed_within(stream, Duration::from_secs(10)), "a slow or silent client is cut off");
    }

    // A keep-alive connection that finished a request stays open past the header-read timeout:
    // only a head that has begun runs against it.
    let mut idle = connect(service.addr);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    assert!(idle.read(&mut buf).unwrap() > 0);
    assert!(!closed_within(&mut idle, Duration::from_secs(3)), "an idle keep-alive connection waits for idle_timeout");
}

#[test]
fn a_connection_flood_waits_within_the_limit_set_from_the_open_file_limit() {
    // 256 file descriptors: the default connection limit is three quarters of them, so accepting
    // never runs out of descriptors, and silent connections are cut off after the header timeout.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("marty-rest-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n 256 && exec {BINARY} > {}", log.display()))
        .env("MARTY__HTTP__ADDR", addr.to_string())
        .env("MARTY__HTTP__HEADER_READ_TIMEOUT", "2s")
        .env("MARTY__DEPENDENCIES__ORDERS_DB__URL", format!("sqlite://{}/orders.db?mode=rwc", dir.display()))
        .env("MARTY__TELEMETRY__LOG_FORMAT", "json")
        .env_remove("MARTY_CONFIG")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the service did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    support::wait_for_status(addr, "/readyz", 200);
    let flood: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    assert!(flood.len() >= 250, "the kernel's backlog takes what the service has not accepted yet");
    let health = support::request(addr, "GET", "/healthz", None).expect("answered once the silent ones are cut off");
    assert_eq!(health.status, 200);
    drop(flood);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains(r#""max_connections":192"#) || log.contains("max_connections: 192"), "{log}");
    assert!(log.contains("connection limit reached"), "the flood is logged: {log}");
    assert!(!log.contains("Too many open files"), "{log}");
}

#[test]
fn a_slow_body_gets_408_and_an_oversized_declared_body_413_before_it_is_sent() {
    let service = start("slow-body", &[("MARTY__HTTP__BODY_TIMEOUT", "1s")]);
    let mut slow = connect(service.addr);
    write!(slow, "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    for byte in br#"{"item":"#.iter() {
        if slow.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let response = read_to_close(&mut slow);
    assert_problem(&response, 408, "request-timeout");
    assert!(started.elapsed() < Duration::from_secs(15), "cut off by body_timeout, not by the client");

    let mut huge = connect(service.addr);
    write!(
        huge,
        "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
    )
    .unwrap();
    let response = read_to_close(&mut huge);
    assert_problem(&response, 413, "payload-too-large");
    assert_eq!(header(&response, "connection"), Some("close"));
}

#[test]
fn requests_hyper_rejects_get_problem_json_with_a_request_id() {
    let service = start("malformed", &[]);
    let send = |raw: &[u8]| {
        let mut stream = connect(service.addr);
        stream.write_all(raw).unwrap();
        read_to_close(&mut stream)
    };
    assert_problem(&send(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n"), 400, "bad-request");
    let long_uri = format!("GET /orders/{} HTTP/1.1\r\nHost: x\r\n\r\n", "9".repeat(10_000));
    assert_problem(&send(long_uri.as_bytes()), 414, "uri-too-long");
    let big_head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(40 * 1024));
    assert_problem(&send(big_head.as_bytes()), 431, "headers-too-large");
    // A well-formed request on a fresh connection is served as usual.
    assert_eq!(service.request("GET", "/healthz", None).status, 200);
}

#[test]
fn request_ids_from_clients_are_kept_only_when_short_and_safe_and_404s_reflect_nothing() {
    let service = start("request-ids", &[]);
    let kept = service.request_with_headers("GET", "/healthz", &[("x-request-id", "3f2c-ab_9.ok")]);
    assert_eq!(kept.header("x-request-id"), Some("3f2c-ab_9.ok"));
    for forged in ["<script>alert(1)</script>", "two words", &"a".repeat(200)] {
        let replaced = service.request_with_headers("GET", "/healthz", &[("x-request-id", forged)]);
        let id = replaced.header("x-request-id").unwrap();
        assert_ne!(id, forged);
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "a generated id: {id}");
    }
    let not_found = service.request("GET", "/no/such/%3Cb%3Eroute", None);
    assert_eq!(not_found.status, 404);
    assert!(!not_found.body.contains("such") && !not_found.body.contains("%3C"), "{}", not_found.body);
}

#[test]
fn sigterm_is_not_held_up_by_a_half_sent_request_or_idle_connections() {
    let service = start(
        "half-header",
        &[("MARTY__HTTP__HEADER_READ_TIMEOUT", "120s"), ("MARTY__SERVICE__SHUTDOWN_TIMEOUT", "120s")],
    );
    let mut half = connect(service.addr);
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Part").unwrap();
    let mut idle = connect(service.addr);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    assert!(idle.read(&mut buf).unwrap() > 0);
    std::thread::sleep(Duration::from_millis(200));
    let mut service = service;
    let sent = Instant::now();
    service.terminate();
    let status = service.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Either connection would have held the shutdown for its full 120 s timeouts.
    assert!(sent.elapsed() < Duration::from_secs(60), "exited after {:?}", sent.elapsed());
    assert!(closed_within(&mut half, Duration::from_secs(1)));
    assert!(closed_within(&mut idle, Duration::from_secs(1)));
}

#[test]
fn the_management_port_serves_health_and_metrics_apart_from_the_api() {
    let management = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let service = Service::start_with_env(
        BINARY,
        "management",
        Stdio::null(),
        None,
        &[("MARTY__MANAGEMENT__ADDR", management.to_string())],
    );
    support::wait_for_status(management, "/readyz", 200);
    assert_eq!(support::request(management, "GET", "/healthz", None).unwrap().status, 200);
    let created = service.request("POST", "/orders", Some(r#"{"item":"book","quantity":1}"#));
    assert_eq!(created.status, 201, "the API stays on the public port");
    let metrics = support::request(management, "GET", "/metrics", None).unwrap();
    assert!(metrics.body.contains("marty_calls_total"), "{}", metrics.body);
    for operations in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(service.request("GET", operations, None).status, 404, "{operations} left the public port");
    }
    assert_eq!(support::request(management, "GET", "/orders/1", None).unwrap().status, 404);
}
