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

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use marty::config::ClientCredentialsConfig;
use marty::security::{DevIssuer, TokenSource};
use marty::service::{RunningServer, ServeError, Server};
use marty_examples::store::inventory::Inventory;
use marty_examples::store::load::{self, LoadOptions};
use marty_examples::store::orders::Orders;
use marty_examples::store::payments::Payments;
use tokio::net::TcpListener;
use tracing_subscriber::fmt::MakeWriter;

/// The store demo: orders (REST), inventory (gRPC) and payments (gRPC) placing orders through a
/// saga. Without a command, all three run in this process on SQLite under built-in load, secured by
/// a development issuer of their own, and the books are checked at the end.
#[derive(Parser)]
#[command(name = "store")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand)]
enum Command {
    /// The development issuer alone (DEVELOPMENT ONLY), for the services run as separate processes;
    /// its clients share the secret in STORE_CLIENT_SECRET.
    DevIssuer {
        /// Where to listen: where `store.toml` looks for it unless MARTY__SECURITY__JWT__JWKS_URL says otherwise.
        #[arg(long, default_value = ISSUER_ADDR)]
        addr: String,
    },
    /// The orders service alone (REST); the others are at `[dependencies.*_api] url`. Configure it
    /// with MARTY__... variables.
    Orders,
    /// The inventory service alone (gRPC).
    Inventory,
    /// The payments service alone (gRPC).
    Payments,
    /// The load generator against running services, and the report (with the books checked when
    /// the inventory and payments services are given).
    Load {
        /// The orders service, e.g. http://127.0.0.1:8080.
        #[arg(long, value_parser = without_trailing_slash)]
        url: String,
        /// The inventory service, to check the books.
        #[arg(long, value_parser = without_trailing_slash)]
        inventory_url: Option<String>,
        /// The payments service, to wait for its receipts and check the books.
        #[arg(long, value_parser = without_trailing_slash)]
        payments_url: Option<String>,
        /// The development issuer, when the services are secured (with STORE_CLIENT_SECRET).
        #[arg(long, value_parser = without_trailing_slash)]
        issuer: Option<String>,
        #[command(flatten)]
        load: LoadArgs,
    },
}

/// How much load, and how to report it.
#[derive(Args, Clone)]
struct LoadArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 2000)]
    orders: usize,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Print the report as one JSON line (and draw no progress bar).
    #[arg(long)]
    json: bool,
}

fn without_trailing_slash(url: &str) -> Result<String, String> {
    Ok(url.trim_end_matches('/').to_owned())
}

/// The development issuer's name and the services' audience, as `[security.jwt]` in `store.toml` says.
const ISSUER: &str = "store-dev-issuer";
const AUDIENCE: &str = "store";
/// Where `dev-issuer` listens unless `--addr` says otherwise: where `store.toml` looks for it.
const ISSUER_ADDR: &str = "127.0.0.1:8079";
/// The secret the development issuer's clients share.
const SECRET_VARIABLE: &str = "STORE_CLIENT_SECRET";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let progress = progress_bar();
    let issuer_listener = match cli.command {
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
        let result = match cli.command {
            None => demo(cli.load, progress, issuer_listener).await,
            Some(Command::DevIssuer { addr }) => dev_issuer(&addr).await,
            Some(Command::Orders) => {
                serve(marty::service::server_with(|registry| Orders::open(registry, None, None)).await).await
            }
            Some(Command::Inventory) => serve(marty::service::server_with(Inventory::open).await).await,
            Some(Command::Payments) => serve(marty::service::server_with(Payments::open).await).await,
            Some(Command::Load { url, inventory_url, payments_url, issuer, load }) => {
                let targets = Targets { orders: url, inventory: inventory_url, payments: payments_url, issuer };
                draw_progress(&progress, &load);
                match targets.load(&load, progress) {
                    Ok(options) => {
                        report(&load, load::run(options).await);
                        Ok(())
                    }
                    Err(error) => Err(error),
                }
            }
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

/// The load's progress bar, hidden until [`draw_progress`] shows it.
fn progress_bar() -> ProgressBar {
    let style = ProgressStyle::with_template("[{bar:40}] {pos}/{len} orders  {rate}  {elapsed}")
        .expect("a valid progress template")
        .with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = write!(out, "{:.0} orders/s", state.per_sec());
        })
        .progress_chars("#>.");
    let bar = ProgressBar::hidden();
    bar.set_style(style);
    bar
}

/// Draws the bar on stderr from now on when it is a terminal and the report is not JSON; off a
/// terminal (a CI log, a pipe) it stays hidden and no frame is written.
fn draw_progress(bar: &ProgressBar, load: &LoadArgs) {
    if !load.json && std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
}

/// Log lines go above the progress bar, never through it: each line is written with the bar
/// cleared and the bar drawn again after it.
#[derive(Clone)]
struct AboveTheBar(ProgressBar);

impl<'a> MakeWriter<'a> for AboveTheBar {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine { bar: self.0.clone(), line: Vec::new() }
    }
}

/// One log line, held until the formatter is done with it.
struct LogLine {
    bar: ProgressBar,
    line: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        self.bar.suspend(|| {
            let _ = std::io::stderr().write_all(&self.line);
        });
    }
}

/// Where the load goes, and the issuer of its tokens.
struct Targets {
    orders: String,
    inventory: Option<String>,
    payments: Option<String>,
    issuer: Option<String>,
}

impl Targets {
    /// The load against these services, with a token from the issuer when there is one.
    fn load(self, load: &LoadArgs, progress: ProgressBar) -> Result<LoadOptions, String> {
        let tokens = match &self.issuer {
            Some(issuer) => {
                let token_url = format!("{issuer}/token");
                Some(TokenSource::new(ClientCredentialsConfig::new("load", &token_url, "load", &client_secret()?)))
            }
            None => None,
        };
        Ok(LoadOptions {
            orders_url: self.orders,
            payments_url: self.payments,
            inventory_url: self.inventory,
            orders: load.orders,
            concurrency: load.concurrency,
            progress,
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
async fn dev_issuer(addr: &str) -> Result<(), String> {
    let listener = TcpListener::bind(addr).await.map_err(|error| format!("{addr}: {error}"))?;
    let addr = store_issuer(&client_secret()?).serve(listener).await.map_err(|error| error.to_string())?;
    eprintln!("store: development issuer on http://{addr} (development only)");
    std::future::pending().await
}

/// One process, nothing to install: the three databases are SQLite files in a fresh directory (unless
/// the environment says otherwise), the development issuer on a port of its own with a fresh secret,
/// and the services' logs quiet (warnings only). Answers the issuer's listener.
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
async fn demo(load: LoadArgs, progress: ProgressBar, issuer: Option<std::net::TcpListener>) -> Result<(), String> {
    // Marty's telemetry (traces and metrics over OTLP too, when asked for) with the log lines above
    // the bar, installed on the runtime (its exporters need one) before the services start, so
    // that they keep it.
    let mut telemetry = marty::config::TelemetryConfig::default();
    telemetry.log_format = marty::config::LogFormat::Pretty;
    marty::telemetry::init_writing_to("store", &telemetry, AboveTheBar(progress.clone()));
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
    if !load.json {
        eprintln!(
            "store: orders (REST) on {url}, inventory (gRPC) on {}, payments (gRPC) on {}",
            inventory.addr(),
            payments.addr()
        );
        eprintln!("store: secured by the development issuer on http://{issuer_addr} (development only)");
        eprintln!("store: placing {} orders, {} at a time", load.orders, load.concurrency);
    }
    let targets = Targets {
        orders: url,
        inventory: Some(format!("http://{}", inventory.addr())),
        payments: Some(format!("http://{}", payments.addr())),
        issuer: Some(format!("http://{issuer_addr}")),
    };
    draw_progress(&progress, &load);
    report(&load, load::run(targets.load(&load, progress)?).await);
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

fn report(load: &LoadArgs, report: load::Report) {
    if load.json {
        println!("{}", serde_json::to_string(&report).expect("a report is JSON"));
    } else {
        println!("{report}");
    }
}
