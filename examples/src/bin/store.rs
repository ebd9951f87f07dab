//! The store demo: orders (REST), inventory (gRPC) and payments (gRPC) placing orders through a saga.
//!
//! ```sh
//! cargo run --release -p marty-examples --bin store                 # all three in one process, on SQLite and
//!                                                                   # the in-process broker, under built-in load
//! cargo run -p marty-examples --bin store -- --orders 5000 --concurrency 64
//! cargo run -p marty-examples --bin store -- inventory|payments|orders   # one service (configure it with MARTY__...)
//! cargo run -p marty-examples --bin store -- load --url http://127.0.0.1:8080 --orders 500 \
//!     --inventory-url http://127.0.0.1:8081 --payments-url http://127.0.0.1:8082   # and check the books
//! ```

use std::process::ExitCode;

use marty::service::{RunningServer, ServeError, Server};
use marty_examples::store::inventory::Inventory;
use marty_examples::store::load::{self, LoadOptions};
use marty_examples::store::orders::Orders;
use marty_examples::store::payments::Payments;
use tokio::net::TcpListener;

const USAGE: &str = "usage: store [--orders N] [--concurrency N] [--json]
       store orders|inventory|payments
       store load --url URL [--inventory-url URL] [--payments-url URL] [--orders N] [--concurrency N] [--json]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().filter(|arg| !arg.starts_with("--")).cloned();
    let Some(options) = Options::parse(&args[usize::from(command.is_some())..]) else {
        eprintln!("{USAGE}");
        return ExitCode::FAILURE;
    };
    if command.is_none() {
        embedded_defaults();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async move {
        let result = match command.as_deref() {
            None => demo(options).await,
            // The orders service alone: the other services are at `[dependencies.*_api] url`.
            Some("orders") => {
                serve(marty::service::server_with(|registry| Orders::open(registry, None, None)).await).await
            }
            Some("inventory") => serve(marty::service::server_with(Inventory::open).await).await,
            Some("payments") => serve(marty::service::server_with(Payments::open).await).await,
            Some("load") => match options.url.clone() {
                Some(url) => {
                    report(&options, load::run(options.load(url)).await);
                    Ok(())
                }
                None => Err("`load` needs `--url http://host:port` of the orders service".into()),
            },
            Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("store: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

struct Options {
    orders: usize,
    concurrency: usize,
    url: Option<String>,
    inventory_url: Option<String>,
    payments_url: Option<String>,
    json: bool,
}

impl Options {
    fn parse(args: &[String]) -> Option<Options> {
        let mut options =
            Options { orders: 2000, concurrency: 32, url: None, inventory_url: None, payments_url: None, json: false };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--orders" => options.orders = args.next()?.parse().ok()?,
                "--concurrency" => options.concurrency = args.next()?.parse().ok()?,
                "--url" => options.url = Some(args.next()?.trim_end_matches('/').to_owned()),
                "--inventory-url" => options.inventory_url = Some(args.next()?.trim_end_matches('/').to_owned()),
                "--payments-url" => options.payments_url = Some(args.next()?.trim_end_matches('/').to_owned()),
                "--json" => options.json = true,
                _ => return None,
            }
        }
        Some(options)
    }

    fn load(&self, orders_url: String) -> LoadOptions {
        LoadOptions {
            orders_url,
            payments_url: self.payments_url.clone(),
            inventory_url: self.inventory_url.clone(),
            orders: self.orders,
            concurrency: self.concurrency,
            progress: !self.json,
        }
    }
}

/// One process, nothing to install: the three databases are SQLite files in a fresh directory (unless
/// the environment says otherwise), and logs stay quiet under the progress bar.
fn embedded_defaults() {
    let dir = std::env::temp_dir().join(format!("marty-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the demo's databases");
    for service in ["orders", "inventory", "payments"] {
        let key = format!("MARTY__DEPENDENCIES__{}_DB__URL", service.to_uppercase());
        if std::env::var_os(&key).is_none() {
            let url = format!("sqlite://{}?mode=rwc", dir.join(format!("{service}.db")).display());
            // Before the runtime starts: no other thread reads the environment yet.
            std::env::set_var(key, url);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
}

/// The three services on ports of their own, the load against the orders service, the report.
async fn demo(options: Options) -> Result<(), String> {
    let inventory = start(marty::service::server_with(Inventory::open).await).await?;
    let payments = start(marty::service::server_with(Payments::open).await).await?;
    let (inventory_url, payments_url) = (format!("http://{}", inventory.addr()), format!("http://{}", payments.addr()));
    let orders = marty::service::server_with(|registry| async move {
        Orders::open(registry, Some(&inventory_url), Some(&payments_url)).await
    })
    .await;
    let orders = start(orders).await?;
    let url = format!("http://{}", orders.addr());
    if !options.json {
        eprintln!(
            "store: orders (REST) on {url}, inventory (gRPC) on {}, payments (gRPC) on {}",
            inventory.addr(),
            payments.addr()
        );
        eprintln!("store: placing {} orders, {} at a time", options.orders, options.concurrency);
    }
    let options = Options {
        inventory_url: Some(format!("http://{}", inventory.addr())),
        payments_url: Some(format!("http://{}", payments.addr())),
        ..options
    };
    report(&options, load::run(options.load(url)).await);
    for server in [orders, payments, inventory] {
        server.shutdown().await.map_err(|error| error.to_string())?;
    }
    Ok(())
}

async fn start(server: Result<Server, ServeError>) -> Result<RunningServer, String> {
    let server = server.map_err(|error| error.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|error| error.to_string())?;
    server.start(listener).map_err(|error| error.to_string())
}

async fn serve(server: Result<Server, ServeError>) -> Result<(), String> {
    let server = server.map_err(|error| error.to_string())?;
    eprintln!("store: serving on {}", server.configured_addr());
    server.serve().await.map_err(|error| error.to_string())
}

fn report(options: &Options, report: load::Report) {
    if options.json {
        println!("{}", serde_json::to_string(&report).expect("a report is JSON"));
    } else {
        println!("{report}");
    }
}
