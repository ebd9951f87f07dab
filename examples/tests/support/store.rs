//! The store demo as separate processes, as the README runs it: orders, inventory and payments on
//! loopback ports of their own, each configured by the environment alone, on SQLite files or one
//! PostgreSQL database, and the demo's load generator against them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use marty::config::ClientCredentialsConfig;
use marty::security::TokenSource;

pub const BINARY: &str = env!("CARGO_BIN_EXE_store");

/// Where the three services keep their data.
pub enum Databases {
    /// A SQLite file per service, in a fresh directory.
    Sqlite(PathBuf),
    /// One fresh PostgreSQL database (its URL) for the three.
    Postgres(String),
}

impl Databases {
    /// SQLite files in a fresh directory named after the test.
    pub fn sqlite(test: &str) -> Databases {
        let dir = std::env::temp_dir().join(format!("marty-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Databases::Sqlite(dir)
    }

    /// A fresh database `database` on the server at `url`.
    pub fn postgres(url: &str, database: &str) -> Databases {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let admin = sqlx::PgPool::connect(url).await.unwrap();
            for statement in
                [format!("drop database if exists {database} with (force)"), format!("create database {database}")]
            {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&admin).await.unwrap();
            }
            admin.close().await;
        });
        let (base, _) = url.rsplit_once('/').expect("a database URL");
        Databases::Postgres(format!("{base}/{database}"))
    }

    /// The URL of service `service`'s database.
    pub fn url(&self, service: &str) -> String {
        match self {
            Databases::Sqlite(dir) => format!("sqlite://{}?mode=rwc", dir.join(format!("{service}.db")).display()),
            Databases::Postgres(url) => url.clone(),
        }
    }
}

/// The three services' addresses, the development issuer their tokens come from, and the
/// environment they all start with.
pub struct Stack {
    pub orders: SocketAddr,
    pub inventory: SocketAddr,
    pub payments: SocketAddr,
    pub issuer: SocketAddr,
    pub databases: Databases,
    pub env: Vec<(String, String)>,
    _issuer: Process,
}

/// The secret the development issuer's clients share in the tests.
pub const CLIENT_SECRET: &str = "test-only-secret";

impl Stack {
    /// Free ports for the three services, which find each other there, the development issuer
    /// started, and `env` on top.
    pub fn new(databases: Databases, env: &[(&str, &str)]) -> Stack {
        let [orders, inventory, payments, issuer] = [free_addr(), free_addr(), free_addr(), free_addr()];
        let child = Command::new(BINARY)
            .args(["dev-issuer", "--addr", &issuer.to_string()])
            .env("STORE_CLIENT_SECRET", CLIENT_SECRET)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the development issuer");
        let issuer_process = Process(child);
        wait_for_listener("the development issuer", issuer);
        let mut stack =
            Stack { orders, inventory, payments, issuer, env: Vec::new(), databases, _issuer: issuer_process };
        let defaults = [
            ("MARTY__DEPENDENCIES__ORDERS_DB__URL", stack.databases.url("orders")),
            ("MARTY__DEPENDENCIES__INVENTORY_DB__URL", stack.databases.url("inventory")),
            ("MARTY__DEPENDENCIES__PAYMENTS_DB__URL", stack.databases.url("payments")),
            ("MARTY__DEPENDENCIES__INVENTORY_API__URL", format!("http://{inventory}")),
            ("MARTY__DEPENDENCIES__PAYMENTS_API__URL", format!("http://{payments}")),
            ("MARTY__SECURITY__JWT__JWKS_URL", format!("http://{issuer}/jwks.json")),
            ("MARTY__SECURITY__CLIENTS__STORE__TOKEN_URL", format!("http://{issuer}/token")),
            ("STORE_CLIENT_SECRET", CLIENT_SECRET.to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        for (key, value) in defaults {
            stack.set_env(key, &value);
        }
        for (key, value) in env {
            stack.set_env(key, value);
        }
        stack
    }

    /// Sets `key` in every service's environment (for those started from now on).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(existing, _)| existing != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts `service` (`orders`, `inventory` or `payments`) at its address, once it listens.
    pub fn start(&self, service: &str) -> Process {
        let addr = match service {
            "orders" => self.orders,
            "inventory" => self.inventory,
            _ => self.payments,
        };
        let child = Command::new(BINARY)
            .arg(service)
            .env_remove("MARTY_CONFIG")
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .env("MARTY__HTTP__ADDR", addr.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start a service");
        let process = Process(child);
        wait_for_listener(service, addr);
        process
    }

    /// Runs the load generator against the stack, with `args` (`--orders`, `--concurrency`, ..).
    pub fn load(&self, args: &[&str]) -> Output {
        Command::new(BINARY)
            .args(["load", "--url", &format!("http://{}", self.orders)])
            .args(["--inventory-url", &format!("http://{}", self.inventory)])
            .args(["--payments-url", &format!("http://{}", self.payments)])
            .args(["--issuer", &format!("http://{}", self.issuer)])
            .env("STORE_CLIENT_SECRET", CLIENT_SECRET)
            .args(args)
            .arg("--json")
            .output()
            .expect("run the load")
    }
}

impl Stack {
    /// `Bearer <token>` from the development issuer for its client `client` (`orders`: no roles;
    /// `load`: a customer's and an operator's), by the client-credentials grant.
    pub fn authorization(&self, client: &str) -> String {
        let token_url = format!("http://{}/token", self.issuer);
        let config = ClientCredentialsConfig::new(client, &token_url, client, CLIENT_SECRET);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let authorization = runtime.block_on(TokenSource::new(config).authorization()).expect("a token");
        authorization.to_str().unwrap().to_owned()
    }
}

/// A service process, SIGKILLed when dropped.
pub struct Process(Child);

impl Process {
    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `what` listens on `addr` (a minute at most).
fn wait_for_listener(what: &str, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The load report's JSON line (the last line of stdout with `--json`).
pub fn report_of(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the demo failed: {}\n{stdout}\n{stderr}", output.status);
    let last = stdout.lines().last().unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    serde_json::from_str(last).unwrap_or_else(|error| panic!("{error}: {last}"))
}

/// Every order settled (none parked, none refused) and the books of inventory and payments agree
/// with the outcomes: no compensated order keeps a charge or stock, every completed one has both,
/// no unit of stock is lost.
pub fn check_settled_and_balanced(report: &serde_json::Value, orders: u64) {
    let field = |name: &str| report[name].as_u64().unwrap_or_else(|| panic!("no `{name}` in {report}"));
    assert_eq!(field("orders_placed"), orders, "{report}");
    assert_eq!((field("unsettled"), field("parked"), field("failed_requests")), (0, 0, 0), "{report}");
    assert_eq!(field("completed") + field("compensated"), orders, "{report}");
    let books = &report["books"];
    for invariant in
        ["compensated_with_charge", "compensated_with_stock", "completed_without_charge", "completed_without_stock"]
    {
        assert_eq!(books[invariant].as_u64(), Some(0), "{invariant}: {report}");
    }
    assert_eq!(books["units_unaccounted"].as_i64(), Some(0), "stock is conserved: {report}");
    assert_eq!(books["units_sold"].as_u64(), Some(field("completed")), "one unit per completed order: {report}");
}
