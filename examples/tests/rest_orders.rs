//! The REST example over real sockets: routes, problem+json for every kind of bad request, health,
//! readiness, metrics after traffic, a contained panic, and graceful shutdown on SIGTERM.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{request, Response, Service};

const BINARY: &str = env!("CARGO_BIN_EXE_rest_orders");

fn assert_problem(response: &Response, status: u16, detail_contains: &str) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/problem+json"), "{response:?}");
    assert!(response.body.contains(&format!("\"status\":{status}")), "{response:?}");
    assert!(response.body.contains(detail_contains), "{response:?}");
}

#[test]
fn routes_health_metrics_and_every_error_as_problem_json() {
    let service = Service::start(BINARY, "routes");

    let health = service.request("GET", "/healthz", None);
    assert_eq!((health.status, health.body.as_str()), (200, r#"{"status":"ok"}"#));
    assert!(health.header("x-request-id").is_some_and(|id| !id.is_empty()), "every response carries a request id");

    let created = service.request("POST", "/orders", Some(r#"{"item":"book","quantity":2}"#));
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body, r#"{"id":1,"item":"book","quantity":2}"#);
    let fetched = service.request("GET", "/orders/1", None);
    assert_eq!((fetched.status, fetched.body.as_str()), (200, r#"{"id":1,"item":"book","quantity":2}"#));
    // The order's event, written in its transaction, reaches the audit consumer through the outbox.
    let audit = support::wait_for_status(service.addr, "/orders/1/audit", 200);
    assert_eq!(audit.body, r#"{"order_id":1,"item":"book","applied":1}"#);

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
    assert_problem(&service.request("GET", "/no/such/route", None), 404, "no route matches the request");
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
        metrics
            .contains(r#"marty_events_consumed_total{topic="orders.placed",group="order-audit",outcome="handled"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("marty_outbox_published_total 1"), "{metrics}");
    assert!(metrics.contains("# TYPE marty_outbox_lag_seconds gauge"), "{metrics}");
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
    let mut service = Service::start(BINARY, "drain");
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
    let mut service = Service::start_with(BINARY, "logs", Stdio::from(log), None);
    let failed = service.request_with_headers(
        "GET",
        "/reports/broken",
        &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
    );
    let request_id = failed.header("x-request-id").expect("a request id").to_owned();
    service.terminate();
    service.child.wait().unwrap();

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.lines().all(|line| line.starts_with('{') && line.ends_with('}')),
        "every line is a JSON object:\n{logs}"
    );
    let panic_line = logs.lines().find(|line| line.contains(r#""message":"panicked""#)).expect("the panic is logged");
    assert!(panic_line.contains(r#""panic":"the report generator has a bug""#), "{panic_line}");
    assert!(panic_line.contains(r#""location":"examples/src/bin/rest_orders.rs:"#), "{panic_line}");
    assert!(panic_line.contains(r#""backtrace":""#), "the backtrace is a field of the one line: {panic_line}");
    assert!(panic_line.contains(&format!(r#""request_id":"{request_id}""#)), "{panic_line}");
    assert!(panic_line.contains(r#""http.route":"/reports/broken""#), "{panic_line}");
    assert!(
        panic_line.contains(r#""trace_id":"4bf92f3577b34da6a3ce929d0e0e4736""#),
        "the caller's trace id: {panic_line}"
    );
    assert!(logs.contains("shutdown requested: readiness is now 503"), "{logs}");
}

#[test]
fn sighup_reloads_limits_from_the_file_and_a_broken_file_changes_nothing() {
    let config = std::env::temp_dir().join(format!("marty-reload-{}.toml", std::process::id()));
    let original = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/marty.toml")).unwrap();
    std::fs::write(&config, &original).unwrap();
    let service = Service::start_with(BINARY, "reload", Stdio::null(), Some(&config));
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
    let output = Command::new(BINARY)
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

/// A configuration named by a relative `MARTY_CONFIG`, with `${VAR:-default}` values, `[app]`
/// settings and histogram buckets: the service finds it from its working directory, uses the
/// defaults, enforces its own setting, serves its own metric and the process's beside Marty's, and
/// its first log lines say which file and which overrides it used.
#[test]
fn the_startup_log_names_the_configuration_and_its_overrides_and_app_settings_apply() {
    let dir = std::env::temp_dir().join(format!("marty-rest-provenance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/marty.toml")).unwrap();
    let config = example
        .replace("max_quantity = 1000", "max_quantity = 5")
        .replace("url = \"sqlite://orders.db?mode=rwc\"", "url = \"${ORDERS_DB_URL:-sqlite://orders.db?mode=rwc}\"");
    assert_ne!(config, example.replace("max_quantity = 1000", "max_quantity = 5"), "the example's url line moved");
    let config = format!("{config}\n[telemetry]\nhistogram_buckets = [0.05, 0.5]\n");
    std::fs::write(dir.join("conf/orders.toml"), config).unwrap();
    let mut command = Command::new(BINARY);
    command.current_dir(&dir).env("MARTY_CONFIG", "conf/orders.toml").env_remove("ORDERS_DB_URL");
    command.env_remove("MARTY__DEPENDENCIES__ORDERS_DB__URL").stdout(Stdio::piped());
    let mut service = Service::spawn(command);

    assert_eq!(service.request("POST", "/orders", Some(r#"{"item":"pen","quantity":6}"#)).status, 422);
    assert_eq!(service.request("POST", "/orders", Some(r#"{"item":"pen","quantity":5}"#)).status, 201);
    assert!(dir.join("orders.db").exists(), "the default URL, relative to the working directory, was used");
    // The service's own counter, the process metrics, and histograms with the configured buckets.
    let metrics = service.request("GET", "/metrics", None).body;
    assert!(metrics.contains("\norders_created_total 1\n"), "{metrics}");
    assert!(metrics.contains("\nprocess_open_fds ") && metrics.contains("\nprocess_cpu_seconds_total "), "{metrics}");
    assert!(metrics.contains("_bucket{le=\"0.05\"") && !metrics.contains("le=\"0.0005\""), "{metrics}");

    service.terminate();
    let mut logs = String::new();
    service.child.stdout.take().unwrap().read_to_string(&mut logs).unwrap();
    let loaded = logs.lines().find(|line| line.contains("configuration loaded")).unwrap_or_else(|| panic!("{logs}"));
    let log: serde_json::Value = serde_json::from_str(loaded).unwrap();
    let fields = &log["fields"];
    assert_eq!(fields["config.file"], dir.join("conf/orders.toml").display().to_string(), "{loaded}");
    assert_eq!(fields["config.found"], "named by MARTY_CONFIG");
    let overrides = fields["config.overrides"].as_str().unwrap();
    assert!(overrides.contains("MARTY__HTTP__ADDR") && overrides.contains("MARTY__TELEMETRY__LOG_FORMAT"), "{loaded}");
    assert!(!loaded.contains(&service.addr.to_string()), "override values may be secrets: {loaded}");
}

#[test]
fn an_app_setting_its_type_refuses_stops_startup_with_file_line_and_key() {
    let output = Command::new(BINARY)
        .env("MARTY__APP__MAX_QUANTITY", "lots")
        .env("MARTY__HTTP__ADDR", "127.0.0.1:0")
        .env_remove("MARTY_CONFIG")
        .output()
        .expect("run the example");
    assert!(!output.status.success(), "a service whose [app] settings do not fit must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("environment variable `MARTY__APP__MAX_QUANTITY`")
            && stderr.contains("key `app.max_quantity`: invalid type: string \"lots\", expected i64"),
        "{stderr}"
    );
}

/// The same binary on PostgreSQL and NATS JetStream, by configuration alone: an order's event goes
/// through the outbox in PostgreSQL, JetStream and the audit consumer.
#[test]
#[ignore = "needs MARTY_TEST_POSTGRES_URL and MARTY_TEST_NATS_URL"]
fn the_same_binary_runs_on_postgresql_and_nats_by_configuration_alone() {
    let (postgres, nats) =
        (marty_tests::server_env("MARTY_TEST_POSTGRES_URL"), marty_tests::server_env("MARTY_TEST_NATS_URL"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stream_messages = |nats: &str| {
        runtime.block_on(async {
            let jetstream = async_nats::jetstream::new(async_nats::connect(nats).await.unwrap());
            match jetstream.get_stream("MARTY_orders_placed").await {
                Ok(mut stream) => stream.info().await.unwrap().state.messages,
                Err(_) => 0,
            }
        })
    };
    runtime.block_on(async {
        let admin = sqlx::PgPool::connect(&postgres).await.unwrap();
        sqlx::raw_sql("drop schema if exists examples_rest cascade; create schema examples_rest")
            .execute(&admin)
            .await
            .unwrap();
    });
    let before = stream_messages(&nats);
    let separator = if postgres.contains('?') { '&' } else { '?' };
    let url = format!("{postgres}{separator}options=-c%20search_path%3Dexamples_rest");
    let env = [
        ("MARTY__DEPENDENCIES__ORDERS_DB__URL", url),
        ("MARTY__EVENTS__BROKER", "nats".to_owned()),
        ("MARTY__EVENTS__URL", nats.clone()),
    ];
    let service = Service::start_with_env(BINARY, "postgres-nats", Stdio::null(), None, &env);
    let created = service.request("POST", "/orders", Some(r#"{"item":"lamp","quantity":3}"#));
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body.split(['{', ':', ',']).nth(2).unwrap().to_owned();
    let audit = support::wait_for_status(service.addr, &format!("/orders/{id}/audit"), 200);
    assert_eq!(audit.body, format!(r#"{{"order_id":{id},"item":"lamp","applied":1}}"#));
    assert!(stream_messages(&nats) > before, "the event went through JetStream");
}

/// With no `drain_delay` in the file, a service in Kubernetes (every pod has
/// `KUBERNETES_SERVICE_HOST`) keeps answering after SIGTERM, readiness 503, while endpoints drop it;
/// on a terminal it stops at once.
#[test]
fn an_unset_drain_delay_fits_where_the_service_runs() {
    let original = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/marty.toml")).unwrap();
    let unset: String =
        original.lines().filter(|line| !line.starts_with("drain_delay")).map(|line| format!("{line}\n")).collect();
    assert_ne!(unset, original, "the example's file sets drain_delay");
    let config = std::env::temp_dir().join(format!("marty-drain-default-{}.toml", std::process::id()));
    std::fs::write(&config, unset).unwrap();
    for (in_kubernetes, expected) in [(true, r#""drain_delay":"5s""#), (false, r#""drain_delay":"0ns""#)] {
        let log_path = std::env::temp_dir().join(format!("marty-drain-{in_kubernetes}-{}.jsonl", std::process::id()));
        let log = Stdio::from(std::fs::File::create(&log_path).unwrap());
        let env: Vec<(&str, String)> =
            if in_kubernetes { vec![("KUBERNETES_SERVICE_HOST", "10.96.0.1".to_owned())] } else { Vec::new() };
        let mut service = Service::start_with_env(BINARY, "drain-default", log, Some(&config), &env);
        service.terminate();
        if in_kubernetes {
            // Still listening after SIGTERM: readiness says draining.
            let draining = support::wait_for_status(service.addr, "/readyz", 503);
            assert!(draining.body.contains(r#""status":"draining""#), "{draining:?}");
        }
        let status = service.child.wait().unwrap();
        assert!(status.success(), "graceful shutdown exits 0, got {status}");
        let logs = std::fs::read_to_string(&log_path).unwrap();
        let line = logs.lines().find(|line| line.contains("shutdown requested")).expect("the shutdown is logged");
        assert!(line.contains(expected), "in Kubernetes: {in_kubernetes}: {line}");
    }
}

/// An overloaded service does not fill its disk: requests shed by a full bulkhead are logged as one
/// summary line a window ("N calls to `orders_db` turned away in the last 10s"), not a line each.
#[test]
fn shed_requests_are_logged_as_a_summary_a_window_not_a_line_each() {
    let log_path = std::env::temp_dir().join(format!("marty-rest-shed-{}.jsonl", std::process::id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let one_permit = [
        ("MARTY__DEPENDENCIES__ORDERS_DB__MAX_CONCURRENT", "1".to_owned()),
        ("MARTY__DEPENDENCIES__ORDERS_DB__MAX_WAIT", "0ms".to_owned()),
    ];
    let mut service = Service::start_with_env(BINARY, "shed-log", Stdio::from(log), None, &one_permit);
    support::wait_for_status(service.addr, "/readyz", 200);
    let addr = service.addr;
    let clients: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                (0..25)
                    .filter(|_| {
                        let body = Some(r#"{"item":"pen","quantity":1}"#);
                        support::request(addr, "POST", "/orders", body).is_ok_and(|response| response.status == 503)
                    })
                    .count()
            })
        })
        .collect();
    let shed: usize = clients.into_iter().map(|client| client.join().unwrap()).sum();
    service.terminate();
    service.child.wait().unwrap();
    assert!(shed >= 20, "one permit and 16 clients shed requests: {shed}");
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let turned_away: Vec<&str> = logs.lines().filter(|line| line.contains("turned away in the last 10s")).collect();
    assert!((1..=2).contains(&turned_away.len()), "{shed} shed, logged as:\n{}", turned_away.join("\n"));
    assert!(turned_away[0].contains(r#""dependency":"orders_db""#), "{}", turned_away[0]);
    let answered = logs.lines().filter(|line| line.contains("answered 503 Service Unavailable")).count();
    assert!((1..=2).contains(&answered), "{answered} summary lines for {shed} shed requests");
    // Orders that got through are each audited with a line of the example's own: not counted.
    let marty_lines = logs.lines().filter(|line| !line.contains("auditing a placed order")).count();
    assert!(marty_lines < 40, "{shed} shed requests wrote {marty_lines} lines");
}
