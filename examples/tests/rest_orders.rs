//! The REST example over real sockets: routes, problem+json for every kind of bad request, health,
//! readiness, metrics after traffic, a contained panic, and graceful shutdown on SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example binary on a free loopback port, with its database in a temp dir.
struct Service {
    child: Child,
    addr: SocketAddr,
}

impl Service {
    fn start(name: &str) -> Service {
        Self::start_logging_to(name, Stdio::null())
    }

    fn start_logging_to(name: &str, stdout: Stdio) -> Service {
        Self::start_with(name, stdout, None)
    }

    fn start_with(name: &str, stdout: Stdio, config: Option<&std::path::Path>) -> Service {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let dir = std::env::temp_dir().join(format!("marty-rest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rest_orders"))
            .env("MARTY__HTTP__ADDR", addr.to_string())
            .env("MARTY__DEPENDENCIES__ORDERS_DB__URL", format!("sqlite://{}/orders.db?mode=rwc", dir.display()))
            .env("MARTY__TELEMETRY__LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env_remove("MARTY_CONFIG")
            .envs(config.map(|path| ("MARTY_CONFIG", path)))
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .expect("start the example");
        let service = Service { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the service did not start listening on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        request(self.addr, method, path, body).expect("the request completes")
    }

    fn terminate(&self) {
        self.signal("-TERM");
    }

    fn signal(&self, signal: &str) {
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
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), read to the end.
fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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

fn assert_problem(response: &Response, status: u16, detail_contains: &str) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/problem+json"), "{response:?}");
    assert!(response.body.contains(&format!("\"status\":{status}")), "{response:?}");
    assert!(response.body.contains(detail_contains), "{response:?}");
}

#[test]
fn routes_health_metrics_and_every_error_as_problem_json() {
    let service = Service::start("routes");

    let health = service.request("GET", "/healthz", None);
    assert_eq!((health.status, health.body.as_str()), (200, r#"{"status":"ok"}"#));
    assert!(health.header("x-request-id").is_some_and(|id| !id.is_empty()), "every response carries a request id");

    let created = service.request("POST", "/orders", Some(r#"{"item":"book","quantity":2}"#));
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body, r#"{"id":1,"item":"book","quantity":2}"#);
    let fetched = service.request("GET", "/orders/1", None);
    assert_eq!((fetched.status, fetched.body.as_str()), (200, r#"{"id":1,"item":"book","quantity":2}"#));

    assert_problem(&service.request("GET", "/orders/99", None), 404, "no order 99");
    assert_problem(&service.request("GET", "/orders/not-a-number", None), 400, "Cannot parse");
    assert_problem(
        &service.request("POST", "/orders", Some(r#"{"item":"#)),
        400,
        "Failed to parse the request body as JSON",
    );
    assert_problem(&service.request("POST", "/orders", Some(r#"{"item":"pen"}"#)), 422, "missing field `quantity`");
    assert_problem(
        &service.request("POST", "/orders", Some(r#"{"item":"pen","quantity":0}"#)),
        422,
        "quantity must be positive",
    );
    assert_problem(&service.request("GET", "/no/such/route", None), 404, "no route for `/no/such/route`");
    let not_allowed = service.request("DELETE", "/orders/1", None);
    assert_problem(&not_allowed, 405, "method not allowed");
    assert_eq!(not_allowed.header("allow"), Some("GET,HEAD"));
    let oversized = format!(r#"{{"item":"{}","quantity":1}}"#, "x".repeat(3 * 1024 * 1024));
    assert_problem(&service.request("POST", "/orders", Some(&oversized)), 413, "");

    assert_problem(&service.request("GET", "/reports/broken", None), 500, "the request failed unexpectedly");
    assert_eq!(
        service.request("GET", "/healthz", None).status,
        200,
        "a panicking handler does not take the process down"
    );

    let ready = service.request("GET", "/readyz", None);
    assert_eq!(ready.status, 200, "{ready:?}");
    assert!(
        ready.body.contains(r#""status":"ready""#)
            && ready.body.contains(r#""orders_db":{"bulkhead_available":10,"circuit":"closed""#),
        "{}",
        ready.body
    );

    let metrics = service.request("GET", "/metrics", None).body;
    assert!(
        metrics.contains(r#"marty_calls_total{dependency="orders_db",operation="find_order",outcome="success"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"marty_calls_total{dependency="orders_db",operation="insert",outcome="success"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"http_server_request_duration_seconds_count{http_request_method="GET",http_route="/orders/{id}",http_response_status_code="200"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"http_route="unmatched",http_response_status_code="404""#),
        "unknown paths share one label: {metrics}"
    );
    assert!(metrics.contains(r#"marty_circuit_state{dependency="orders_db"} 0"#), "{metrics}");
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_then_refuses_new_ones_and_exits_zero() {
    let mut service = Service::start("drain");
    let addr = service.addr;
    let slow = std::thread::spawn(move || request(addr, "GET", "/reports/slow", None));
    std::thread::sleep(Duration::from_millis(200)); // the slow request is in its handler
    service.terminate();

    let finished = slow.join().unwrap().expect("the in-flight request completes");
    assert_eq!((finished.status, finished.body.as_str()), (200, "report done"));

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the service did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    assert!(TcpStream::connect(addr).is_err(), "after shutdown new connections are refused");
}

#[test]
fn logs_are_json_lines_and_a_failed_request_names_its_request_id() {
    let log_path = std::env::temp_dir().join(format!("marty-rest-logs-{}.jsonl", std::process::id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut service = Service::start_logging_to("logs", Stdio::from(log));
    let failed = service.request("GET", "/reports/broken", None);
    let request_id = failed.header("x-request-id").expect("a request id").to_owned();
    service.terminate();
    service.child.wait().unwrap();

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.lines().all(|line| line.starts_with('{') && line.ends_with('}')),
        "every line is a JSON object:\n{logs}"
    );
    let panic_line =
        logs.lines().find(|line| line.contains("a request handler panicked")).expect("the panic is logged");
    assert!(panic_line.contains(&format!(r#""request_id":"{request_id}""#)), "{panic_line}");
    assert!(panic_line.contains(r#""http.route":"/reports/broken""#), "{panic_line}");
    assert!(logs.contains("shutdown requested: readiness is now 503"), "{logs}");
}

#[test]
fn sighup_reloads_limits_from_the_file_and_a_broken_file_changes_nothing() {
    let config = std::env::temp_dir().join(format!("marty-reload-{}.toml", std::process::id()));
    let original = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/marty.toml")).unwrap();
    std::fs::write(&config, &original).unwrap();
    let service = Service::start_with("reload", Stdio::null(), Some(&config));
    let limit = |service: &Service| {
        let ready = service.request("GET", "/readyz", None).body;
        let at = ready.find(r#""orders_db":{"bulkhead_available":"#).expect("orders_db in /readyz");
        ready[at..]
            .split("\"max_concurrent\":")
            .nth(1)
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    assert_eq!(limit(&service), 10);

    let resized = original.replace("timeout = \"2s\"", "timeout = \"2s\"\nmax_concurrent = 3");
    assert_ne!(resized, original, "the example config still has the line this test edits");
    std::fs::write(&config, &resized).unwrap();
    service.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while limit(&service) != 3 {
        assert!(Instant::now() < deadline, "SIGHUP did not apply max_concurrent = 3");
        std::thread::sleep(Duration::from_millis(50));
    }

    std::fs::write(&config, resized.replace("max_concurrent = 3", "max_concurrent = 0")).unwrap();
    service.signal("-HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(limit(&service), 3, "an invalid file is rejected and the configuration in force stays");
    assert_eq!(service.request("GET", "/healthz", None).status, 200);
}

#[test]
fn a_bad_configuration_stops_startup_with_file_line_and_key_and_a_nonzero_exit() {
    let output = Command::new(env!("CARGO_BIN_EXE_rest_orders"))
        .env("MARTY__DEPENDENCIES__ORDERS_DB__TIMEOUT", "soon")
        .env("MARTY__HTTP__ADDR", "127.0.0.1:0")
        .env_remove("MARTY_CONFIG")
        .output()
        .expect("run the example");
    assert!(!output.status.success(), "a service with an invalid configuration must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("environment variable `MARTY__DEPENDENCIES__ORDERS_DB__TIMEOUT`")
            && stderr.contains("key `dependencies.orders_db.timeout`: invalid duration `soon`"),
        "{stderr}"
    );
}
