//! The store demo: orders (REST), inventory (gRPC) and payments (gRPC) placing orders through a saga.
//!
//! ```sh
//! cargo run --release -p marty-examples --bin store                 # all three in one process, on SQLite and
//!                                                                   # the in-process broker, under built-in load
//! cargo run -p marty-examples --bin store -- --orders 5000 --concurrency 64
//! cargo run -p marty-examples --bin store -- dev-issuer [--addr 127.0.0.1:8079]  # the development issuer alone
//! cargo run -p marty-examples --bin store -- inventory|payments|orders   # one service (configure it with MARTY__...)
//! cargo run -p marty-examples --bin store -- load --url http://127.0.0.1:8080 --orders 500 \
//!     --inventory-url http://127.0.0.1:8081 --payments-url http://127.0.0.1:8082 \
//!     --issuer http://127.0.0.1:8079   # and check the books
//! ```
//!
//! The services are secured (`[security]` in `store.toml`): their tokens come from Marty's development
//! issuer, which the one-process demo starts itself and `dev-issuer` runs alone. Its clients (the
//! orders service's saga, the load generator) share the secret in `STORE_CLIENT_SECRET`. The
//! development issuer is for development only: in production the configuration names a real one.

use std::process::ExitCode;

use marty::config::ClientCredentialsConfig;
use marty::security::{DevIssuer, TokenSource};
use marty::service::{RunningServer, ServeError, Server};
use marty_examples::store::inventory::Inventory;
use marty_examples::store::load::{self, LoadOptions};
use marty_examples::store::orders::Orders;
use marty_examples::store::payments::Payments;
use tokio::net::TcpListener;

const USAGE: &str = "usage: store [--orders N] [--concurrency N] [--json]
       store dev-issuer [--addr ADDR]
       store orders|inventory|payments
       store load --url URL [--inventory-url URL] [--payments-url URL] [--issuer URL] [--orders N] [--concurrency N] [--json]";

/// The development issuer's name and the services' audience, as `[security.jwt]` in `store.toml` says.
const ISSUER: &str = "store-dev-issuer";
const AUDIENCE: &str = "store";
/// Where `dev-issuer` listens unless `--addr` says otherwise: where `store.toml` looks for it.
const ISSUER_ADDR: &str = "127.0.0.1:8079";
/// The secret the development issuer's clients share.
const SECRET_VARIABLE: &str = "STORE_CLIENT_SECRET";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().filter(|arg| !arg.starts_with("--")).cloned();
    let Some(options) = Options::parse(&args[usize::from(command.is_some())..]) else {
        eprintln!("{USAGE}");
        return ExitCode::FAILURE;
    };
    let issuer_listener = match command {
        None => match embedded_defaults() {
            Ok(listener) => Some(listener),
            Err(error) => {
                eprintln!("store: {error}");
                return ExitCode::FAILURE;
            }
        },
        Some(_) => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async move {
        let result = match command.as_deref() {
            None => demo(options, issuer_listener).await,
            Some("dev-issuer") => dev_issuer(&options).await,
            // The orders service alone: the other services are at `[dependencies.*_api] url`.
            Some("orders") => {
                serve(marty::service::server_with(|registry| Orders::open(registry, None, None)).await).await
            }
            Some("inventory") => serve(marty::service::server_with(Inventory::open).await).await,
            Some("payments") => serve(marty::service::server_with(Payments::open).await).await,
            Some("load") => match options.url.clone() {
                Some(url) => match options.load(url) {
                    Ok(load) => {
                        report(&options, load::run(load).await);
                        Ok(())
                    }
                    Err(error) => Err(error),
                },
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
    issuer: Option<String>,
    addr: Option<String>,
    json: bool,
}

impl Options {
    fn parse(args: &[String]) -> Option<Options> {
        let mut options = Options {
            orders: 2000,
            concurrency: 32,
            url: None,
            inventory_url: None,
            payments_url: None,
            issuer: None,
            addr: None,
            json: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--orders" => options.orders = args.next()?.parse().ok()?,
                "--concurrency" => options.concurrency = args.next()?.parse().ok()?,
                "--url" => options.url = Some(args.next()?.trim_end_matches('/').to_owned()),
                "--inventory-url" => options.inventory_url = Some(args.next()?.trim_end_matches('/').to_owned()),
                "--payments-url" => options.payments_url = Some(args.next()?.trim_end_matches('/').to_owned()),
                "--issuer" => options.issuer = Some(args.next()?.trim_end_matches('/').to_owned()),
                "--addr" => options.addr = Some(args.next()?.to_owned()),
                "--json" => options.json = true,
                _ => return None,
            }
        }
        Some(options)
    }

    /// The load against `orders_url`, with a token from `--issuer` when given.
    fn load(&self, orders_url: String) -> Result<LoadOptions, String> {
        let tokens = match &self.issuer {
            Some(issuer) => {
                let token_url = format!("{issuer}/token");
                Some(TokenSource::new(ClientCredentialsConfig::new("load", &token_url, "load", &client_secret()?)))
            }
            None => None,
        };
        Ok(LoadOptions {
            orders_url,
            payments_url: self.payments_url.clone(),
            inventory_url: self.inventory_url.clone(),
            orders: self.orders,
            concurrency: self.concurrency,
            progress: !self.json,
            tokens,
        })
    }
}

fn client_secret() -> Result<String, String> {
    std::env::var(SECRET_VARIABLE)
        .map_err(|_| format!("set {SECRET_VARIABLE}: the secret the development issuer's clients share"))
}

/// The development issuer (DEVELOPMENT ONLY): the orders service's saga gets tokens that call
/// inventory and payments, the load generator tokens of a customer and an operator.
fn store_issuer(secret: &str) -> DevIssuer {
    DevIssuer::new(ISSUER, AUDIENCE).client("orders", secret, &[], &[]).client(
        "load",
        secret,
        &["customer", "operator"],
        &[],
    )
}

/// The development issuer alone, for the services run as separate processes, until killed.
async fn dev_issuer(options: &Options) -> Result<(), String> {
    let addr = options.addr.as_deref().unwrap_or(ISSUER_ADDR);
    let listener = TcpListener::bind(addr).await.map_err(|error| format!("{addr}: {error}"))?;
    let addr = store_issuer(&client_secret()?).serve(listener).await.map_err(|error| error.to_string())?;
    eprintln!("store: development issuer on http://{addr} (development only)");
    std::future::pending().await
}

/// One process, nothing to install: the three databases are SQLite files in a fresh directory (unless
/// the environment says otherwise), the development issuer on a port of its own with a fresh secret,
/// and logs stay quiet under the progress bar. Answers the issuer's listener.
fn embedded_defaults() -> Result<std::net::TcpListener, String> {
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
    let issuer = std::net::TcpListener::bind("127.0.0.1:0").map_err(|error| error.to_string())?;
    let issuer_addr = issuer.local_addr().map_err(|error| error.to_string())?;
    let secret = format!("{}{}", marty::events::new_event_id(), marty::events::new_event_id());
    // Before the runtime starts: no other thread reads the environment yet.
    std::env::set_var("MARTY__SECURITY__JWT__JWKS_URL", format!("http://{issuer_addr}/jwks.json"));
    std::env::set_var("MARTY__SECURITY__CLIENTS__STORE__TOKEN_URL", format!("http://{issuer_addr}/token"));
    std::env::set_var(SECRET_VARIABLE, secret);
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    Ok(issuer)
}

/// The development issuer and the three services on ports of their own, the load against the
/// orders service, the report.
async fn demo(options: Options, issuer: Option<std::net::TcpListener>) -> Result<(), String> {
    let issuer = issuer.ok_or("no listener for the development issuer")?;
    issuer.set_nonblocking(true).map_err(|error| error.to_string())?;
    let issuer = TcpListener::from_std(issuer).map_err(|error| error.to_string())?;
    let issuer_addr = store_issuer(&client_secret()?).serve(issuer).await.map_err(|error| error.to_string())?;
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
        eprintln!("store: secured by the development issuer on http://{issuer_addr} (development only)");
        eprintln!("store: placing {} orders, {} at a time", options.orders, options.concurrency);
    }
    let options = Options {
        inventory_url: Some(format!("http://{}", inventory.addr())),
        payments_url: Some(format!("http://{}", payments.addr())),
        issuer: Some(format!("http://{issuer_addr}")),
        ..options
    };
    report(&options, load::run(options.load(url)?).await);
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
