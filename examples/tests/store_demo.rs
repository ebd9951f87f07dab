//! The store demo, as the README runs it: in one process on embedded defaults (SQLite, the in-process
//! broker) to its report; and as three processes on PostgreSQL and NATS JetStream, configured by the
//! environment alone, under the same load generator. `store_chaos.rs` kills the services under load.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use marty_examples::store::proto::inventory_client::InventoryClient;
use marty_examples::store::proto::ReserveRequest;
use support::store::{check_settled_and_balanced, report_of, Databases, Stack, BINARY};

/// Every order settled with balanced books, both paths were taken, and every completed order's
/// event reached payments.
fn check(report: &serde_json::Value, orders: u64) {
    check_settled_and_balanced(report, orders);
    let field = |name: &str| report[name].as_u64().unwrap_or_else(|| panic!("no `{name}` in {report}"));
    assert!(field("completed") > 0 && field("compensated") > 0, "declined payments compensate: {report}");
    assert_eq!(field("receipts"), field("completed"), "one receipt per confirmed order: {report}");
}

#[test]
fn the_demo_runs_in_one_process_to_its_report() {
    let dir = std::env::temp_dir().join(format!("marty-store-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = Command::new(BINARY)
        .args(["--orders", "120", "--concurrency", "8", "--json"])
        .current_dir(&dir)
        .env_remove("MARTY_CONFIG")
        .output()
        .expect("run the demo");
    check(&report_of(&output), 120);
}

/// `--help` is an answer, not a mistake; a mistake names itself and exits 2, as command lines do.
#[test]
fn the_binary_explains_itself_and_refuses_unknown_arguments() {
    let help = Command::new(BINARY).arg("--help").output().expect("run the binary");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "`--help` exits 0: {help:?}");
    for command in ["dev-issuer", "orders", "inventory", "payments", "load", "--concurrency", "--json"] {
        assert!(text.contains(command), "`--help` names `{command}`:\n{text}");
    }
    let load_help = Command::new(BINARY).args(["load", "--help"]).output().expect("run the binary");
    assert!(load_help.status.success() && String::from_utf8_lossy(&load_help.stdout).contains("--issuer"));

    let wrong = Command::new(BINARY).arg("--orderz").arg("5").output().expect("run the binary");
    let error = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{error}");
    assert!(
        error.contains("--orderz") && error.contains("--orders"),
        "names the argument and the nearest one: {error}"
    );
    let missing = Command::new(BINARY).arg("load").output().expect("run the binary");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--url"));
}

/// Off a terminal (a CI log, a pipe) the report is plain text and the progress bar is not drawn:
/// no carriage-return frames in the log.
#[test]
fn off_a_terminal_the_demo_draws_no_progress_frames() {
    let dir = std::env::temp_dir().join(format!("marty-store-plain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = Command::new(BINARY)
        .args(["--orders", "30", "--concurrency", "4"])
        .current_dir(&dir)
        .env_remove("MARTY_CONFIG")
        .output()
        .expect("run the demo");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("orders placed      30"), "the text report: {stdout}");
    assert!(!stderr.contains('\r') && !stdout.contains('\r'), "no progress frames off a terminal: {stderr:?}");
    assert!(stderr.contains("placing 30 orders"), "the demo still says what it does: {stderr}");
}

#[test]
#[ignore = "needs MARTY_TEST_POSTGRES_URL and MARTY_TEST_NATS_URL"]
fn the_services_run_as_separate_processes_on_postgresql_and_nats() {
    let (postgres, nats) =
        (marty_tests::server_env("MARTY_TEST_POSTGRES_URL"), marty_tests::server_env("MARTY_TEST_NATS_URL"));
    let databases = Databases::postgres(&postgres, "marty_store_demo");
    let stack = Stack::new(databases, &[("MARTY__EVENTS__BROKER", "nats"), ("MARTY__EVENTS__URL", &nats)]);
    let _inventory = stack.start("inventory");
    let _payments = stack.start("payments");
    let _orders = stack.start("orders");
    check(&report_of(&stack.load(&["--orders", "100", "--concurrency", "8"])), 100);
}

/// The store is secured by its configuration: a route needs a token from the issuer with the route's
/// roles, gRPC methods need a token, probes and `#[public]` routes need none, and a token signed by
/// any other key is refused; with the right tokens an order goes through the saga's secured calls.
#[test]
fn the_secured_store_admits_exactly_the_callers_its_routes_name() {
    let stack = Stack::new(Databases::sqlite("store-secured"), &[]);
    let _inventory = stack.start("inventory");
    let _payments = stack.start("payments");
    let _orders = stack.start("orders");
    let (customer, service) = (stack.authorization("load"), stack.authorization("orders"));
    let order = r#"{"item":"book","quantity":1,"amount_cents":1000}"#;
    let call = |addr, method, path: &str, authorization: Option<&str>| {
        let headers: Vec<(&str, &str)> = authorization.iter().map(|value| ("authorization", *value)).collect();
        let body = (method == "POST").then_some(order);
        support::request_with(addr, method, path, body, &headers).unwrap()
    };

    let anonymous = call(stack.orders, "POST", "/orders", None);
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert!(anonymous.header("www-authenticate").is_some_and(|value| value.starts_with("Bearer")), "{anonymous:?}");
    assert_eq!(call(stack.orders, "POST", "/orders", Some(&service)).status, 403, "a token without the customer role");
    assert_eq!(
        call(stack.payments, "GET", "/payments", Some(&service)).status,
        403,
        "a token without the operator role"
    );
    assert_eq!(call(stack.inventory, "GET", "/stock/book", None).status, 200, "a #[public] route");
    assert_eq!(call(stack.orders, "GET", "/readyz", None).status, 200, "probes need no token");
    // Same issuer name, audience and roles, another key: what an attacker can make.
    let forged = marty::security::DevIssuer::new("store-dev-issuer", "store").token("mallory", &["operator"], &[]);
    let forged = call(stack.inventory, "GET", "/reservations", Some(&format!("Bearer {forged}")));
    assert_eq!(forged.status, 401, "{forged:?}");
    assert_eq!(call(stack.inventory, "GET", "/reservations", Some(&customer)).status, 200);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reserve = |authorization: Option<&str>| {
        let mut request = tonic::Request::new(ReserveRequest {
            reservation_id: format!("direct-{}", authorization.is_some()),
            item: "book".into(),
            quantity: 1,
        });
        if let Some(value) = authorization {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        runtime.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", stack.inventory)).unwrap();
            let mut client = InventoryClient::new(channel.connect().await.unwrap());
            client.reserve(request).await.map(|_| ()).map_err(|status| status.code())
        })
    };
    assert_eq!(reserve(None), Err(tonic::Code::Unauthenticated));
    assert_eq!(reserve(Some(&service)), Ok(()));

    let placed = call(stack.orders, "POST", "/orders", Some(&customer));
    assert_eq!(placed.status, 202, "{placed:?}");
    let id = serde_json::from_str::<serde_json::Value>(&placed.body).unwrap()["id"].as_str().unwrap().to_owned();
    let outcome = call(stack.orders, "GET", &format!("/orders/{id}/outcome"), Some(&customer));
    assert!(outcome.body.contains(r#""status":"completed""#), "the saga's calls carry its token: {outcome:?}");
}

/// The Kubernetes ConfigMaps hold valid configurations: each one parses with the code the service
/// starts with, and names what its service needs.
#[test]
fn the_kubernetes_configs_are_valid_marty_configs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/config.yaml");
    let yaml = std::fs::read_to_string(path).unwrap();
    let env = marty::config::Environment::from_pairs([
        ("DATABASE_URL", "postgres://store@postgres:5432/store"),
        ("STORE_CLIENT_SECRET", "from-the-secret"),
    ]);
    let mut configs = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() != "marty.toml: |" {
            continue;
        }
        let mut text = String::new();
        while let Some(body) = lines.next_if(|next| next.starts_with("    ") || next.trim().is_empty()) {
            text.push_str(body.strip_prefix("    ").unwrap_or(""));
            text.push('\n');
        }
        let config = marty::config::Config::parse_at_startup(&text, "config.yaml", &env)
            .unwrap_or_else(|errors| panic!("{errors}\n{text}"));
        configs.push(config);
    }
    let names: Vec<_> = configs.iter().map(|config| config.service.name.clone().unwrap()).collect();
    assert_eq!(names, ["orders", "inventory", "payments"]);
    let needs = [&["orders_db", "inventory_api", "payments_api"][..], &["inventory_db"], &["payments_db"]];
    for (config, needs) in configs.iter().zip(needs) {
        for dependency in needs {
            assert!(config.dependencies.contains_key(*dependency), "{:?} lacks {dependency}", config.service.name);
        }
    }
    assert_eq!(configs[0].outbox.as_ref().map(|outbox| outbox.store.as_str()), Some("orders_db"));
    // Secured as the routes were checked when they compiled: every role store.toml declares.
    let checked = marty::config::Config::parse(include_str!("../store.toml"), "store.toml").unwrap();
    let roles = |config: &marty::config::Config| config.security.as_ref().map(|security| security.roles.clone());
    for config in &configs {
        assert_eq!(roles(config), roles(&checked), "{:?}'s [security] roles", config.service.name);
    }
    let clients = configs[0].security.as_ref().map(|security| security.clients.len());
    assert_eq!(clients, Some(1), "the saga's token for inventory and payments");
    assert_eq!(configs[0].dependencies["orders_db"].url.as_deref(), Some("postgres://store@postgres:5432/store"));
}

/// Faults injected into the orders service's calls to payments through the management endpoint:
/// the payment steps fail, the breaker opens (shown on `/readyz` and `/metrics`), and once the fault
/// is cleared the breaker closes again and orders complete. What the README's section runs by hand.
#[test]
fn a_fault_injected_into_payments_opens_its_breaker_and_the_store_recovers_once_it_is_cleared() {
    const FAULTS_TOKEN: &str = "faults-token-for-tests-only";
    let stack = Stack::new(
        Databases::sqlite("store-faults"),
        &[
            ("MARTY__FAULTS__ENABLED", "true"),
            ("MARTY__FAULTS__TOKEN", FAULTS_TOKEN),
            ("MARTY__DEPENDENCIES__PAYMENTS_API__CIRCUIT_BREAKER__OPEN_FOR", "2s"),
        ],
    );
    let _inventory = stack.start("inventory");
    let _payments = stack.start("payments");
    let _orders = stack.start("orders");
    let customer = stack.authorization("load");
    let operator = format!("Bearer {FAULTS_TOKEN}");
    let send = |method, path: &str, body: Option<&str>, authorization: &str| {
        support::request_with(stack.orders, method, path, body, &[("authorization", authorization)]).unwrap()
    };
    let place = || {
        let placed = send("POST", "/orders", Some(r#"{"item":"book","quantity":1,"amount_cents":1000}"#), &customer);
        assert_eq!(placed.status, 202, "{placed:?}");
        serde_json::from_str::<serde_json::Value>(&placed.body).unwrap()["id"].as_str().unwrap().to_owned()
    };
    let payments_api = || {
        let ready = support::request(stack.orders, "GET", "/readyz", None).unwrap();
        assert_eq!(ready.status, 200, "a reported dependency's breaker never makes the service unready: {ready:?}");
        serde_json::from_str::<serde_json::Value>(&ready.body).unwrap()["dependencies"]["payments_api"].clone()
    };
    let wait_for_circuit = |state: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let dependency = payments_api();
            if dependency["circuit"] == state {
                return dependency;
            }
            assert!(Instant::now() < deadline, "the payments breaker never became {state}: {dependency}");
            place();
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let fault = r#"{"error_rate": 1.0}"#;
    let refused = send("PUT", "/faults/payments_api", Some(fault), &customer);
    assert_eq!(refused.status, 401, "a customer's token is not the faults token: {refused:?}");
    assert!(payments_api().get("fault").is_none(), "no fault before one is set");

    let injected = send("PUT", "/faults/payments_api", Some(fault), &operator);
    assert_eq!(injected.status, 200, "{injected:?}");
    let open = wait_for_circuit("open");
    assert_eq!(open["fault"]["error_rate"], 1.0, "{open}");
    assert_eq!(open["fault"]["set_by"], "endpoint", "{open}");
    let metrics = support::request(stack.orders, "GET", "/metrics", None).unwrap().body;
    assert!(metrics.contains(r#"marty_fault_active{dependency="payments_api"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"marty_circuit_state{dependency="payments_api"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"marty_faults_injected_total{dependency="payments_api",fault="error"}"#), "{metrics}");

    assert_eq!(send("DELETE", "/faults/payments_api", None, &operator).status, 204);
    let closed = wait_for_circuit("closed");
    assert!(closed.get("fault").is_none(), "{closed}");
    let id = place();
    let outcome = send("GET", &format!("/orders/{id}/outcome"), None, &customer);
    assert!(outcome.body.contains(r#""status":"completed""#), "orders complete again: {outcome:?}");
}
