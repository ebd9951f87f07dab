//! The store demo, as the README runs it: in one process on embedded defaults (SQLite, the in-process
//! broker) to its report; and as three processes on PostgreSQL and NATS JetStream, configured by the
//! environment alone, under the same load generator.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_store");

/// The report's JSON line (the last line of stdout with `--json`).
fn report_of(output: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the demo failed: {}\n{stdout}\n{stderr}", output.status);
    let last = stdout.lines().last().unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    serde_json::from_str(last).unwrap_or_else(|error| panic!("{error}: {last}"))
}

/// Every order settled, both paths were taken, and every completed order's event reached payments.
fn check(report: &serde_json::Value, orders: u64) {
    let field = |name: &str| report[name].as_u64().unwrap_or_else(|| panic!("no `{name}` in {report}"));
    assert_eq!(field("orders_placed"), orders, "{report}");
    assert_eq!((field("unsettled"), field("failed_requests")), (0, 0), "{report}");
    assert_eq!(field("completed") + field("compensated"), orders, "{report}");
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

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[test]
fn the_services_run_as_separate_processes_on_postgresql_and_nats() {
    let (Ok(postgres), Ok(nats)) = (std::env::var("MARTY_TEST_POSTGRES_URL"), std::env::var("MARTY_TEST_NATS_URL"))
    else {
        eprintln!("skipped: MARTY_TEST_POSTGRES_URL and MARTY_TEST_NATS_URL are needed (.ci/run sets them)");
        return;
    };
    // A database of its own, fresh.
    let database = "marty_store_demo";
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let admin = sqlx::PgPool::connect(&postgres).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop database if exists {database} with (force)")))
            .execute(&admin)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {database}"))).execute(&admin).await.unwrap();
    });
    let (base, _) = postgres.rsplit_once('/').expect("a database URL");
    let url = format!("{base}/{database}");
    let [orders, inventory, payments] = [free_addr(), free_addr(), free_addr()];
    let env = [
        ("MARTY__DEPENDENCIES__ORDERS_DB__URL", url.clone()),
        ("MARTY__DEPENDENCIES__INVENTORY_DB__URL", url.clone()),
        ("MARTY__DEPENDENCIES__PAYMENTS_DB__URL", url.clone()),
        ("MARTY__DEPENDENCIES__INVENTORY_API__URL", format!("http://{inventory}")),
        ("MARTY__DEPENDENCIES__PAYMENTS_API__URL", format!("http://{payments}")),
        ("MARTY__EVENTS__BROKER", "nats".to_owned()),
        ("MARTY__EVENTS__URL", nats),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let start = |service: &str, addr: SocketAddr| {
        let child = Command::new(BINARY)
            .arg(service)
            .env_remove("MARTY_CONFIG")
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .env("MARTY__HTTP__ADDR", addr.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start a service");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "{service} did not start listening on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Process(child)
    };
    let _inventory = start("inventory", inventory);
    let _payments = start("payments", payments);
    let _orders = start("orders", orders);
    let output = Command::new(BINARY)
        .args(["load", "--url", &format!("http://{orders}"), "--payments-url", &format!("http://{payments}")])
        .args(["--orders", "100", "--concurrency", "8", "--json"])
        .output()
        .expect("run the load");
    check(&report_of(&output), 100);
}

/// The Kubernetes ConfigMaps hold valid configurations: each one parses with the code the service
/// starts with, and names what its service needs.
#[test]
fn the_kubernetes_configs_are_valid_marty_configs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/config.yaml");
    let yaml = std::fs::read_to_string(path).unwrap();
    let env = marty::config::Environment::from_pairs([("DATABASE_URL", "postgres://store@postgres:5432/store")]);
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
    assert_eq!(configs[0].dependencies["orders_db"].url.as_deref(), Some("postgres://store@postgres:5432/store"));
}
