//! The built-in load generator: places orders against the orders service over HTTP at a fixed
//! concurrency, follows each to its outcome, shows a progress bar, and reports what happened.
//!
//! One order in ten is too expensive (the payment is declined and the stock released) and some ask
//! for the rare stamp, which runs out (nothing to undo): the report shows both paths. Given the
//! inventory and payments services too, the report checks their books against the orders'
//! outcomes: no compensated order keeps a charge or stock, every completed order has both, stock
//! is conserved.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::ProgressBar;
use marty::axum::body::Bytes;
use marty::axum::http::header::AUTHORIZATION;
use marty::axum::http::{Method, Request, StatusCode};
use marty::security::TokenSource;
use serde::Serialize;

use super::inventory::{Reservation, StockLevel, OUT_OF_STOCK, STOCK};
use super::orders::OrderView;
use super::payments::{Payment, DECLINED};

/// How much load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The orders service, e.g. `http://127.0.0.1:8080`.
    pub orders_url: String,
    /// Orders to place.
    pub orders: usize,
    /// Orders in flight at once.
    pub concurrency: usize,
    /// The payments service, to wait for its receipts (one per completed order, from the events).
    pub payments_url: Option<String>,
    /// The inventory service: with `payments_url`, the report checks the books.
    pub inventory_url: Option<String>,
    /// The progress bar (`ProgressBar::hidden()` for none); its length is set to `orders`.
    pub progress: ProgressBar,
    /// The load generator's token, when the store is secured (`[security]` in `store.toml`).
    pub tokens: Option<TokenSource>,
}

/// What the load did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub orders_placed: usize,
    pub completed: usize,
    pub compensated: usize,
    /// Compensated for another reason than the business saying no (a step that kept failing, or the
    /// saga's timeout): what outages cost.
    pub compensated_after_failures: usize,
    /// Parked, or still running after the outcome wait: should be zero.
    pub unsettled: usize,
    /// Parked for an operator (a compensation kept failing): should be zero.
    pub parked: usize,
    /// Requests the orders service refused or failed (should be zero).
    pub failed_requests: usize,
    pub seconds: f64,
    pub orders_per_second: f64,
    /// Placing an order to its saga settling, in milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The oldest unpublished outbox event seen during the run, in seconds (from `/metrics`).
    pub max_outbox_lag_seconds: f64,
    /// Receipts payments recorded from `OrderConfirmed` events (one per completed order), and how
    /// long after the last order settled the last one arrived.
    pub receipts: Option<i64>,
    pub events_drained_after_seconds: Option<f64>,
    /// The inventory's and payments' books against the orders' outcomes.
    pub books: Option<Books>,
}

/// What the other services hold for this run's orders. Every count but `refunds` should be zero
/// (and `units_unaccounted` too): a compensated order keeps nothing, a completed one keeps both its
/// charge and its stock, and no unit of stock is lost or made up.
#[derive(Debug, Clone, Serialize)]
pub struct Books {
    /// Compensated orders with a charge still standing.
    pub compensated_with_charge: usize,
    /// Compensated orders with stock still held.
    pub compensated_with_stock: usize,
    /// Completed orders without their charge.
    pub completed_without_charge: usize,
    /// Completed orders without their stock (or with another quantity held).
    pub completed_without_stock: usize,
    /// The stock the demo started with, less what is available and what is held, over every item
    /// (orders of earlier runs included).
    pub units_unaccounted: i64,
    /// Units held for this run's completed orders.
    pub units_sold: i64,
    /// Charges of this run's orders that were refunded (a payment the saga undid).
    pub refunds: usize,
}

impl Books {
    /// Whether every invariant holds.
    pub fn balanced(&self) -> bool {
        self.compensated_with_charge == 0
            && self.compensated_with_stock == 0
            && self.completed_without_charge == 0
            && self.completed_without_stock == 0
            && self.units_unaccounted == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "orders placed      {}", self.orders_placed)?;
        writeln!(f, "  completed        {}", self.completed)?;
        writeln!(f, "  compensated      {}  (every step undone)", self.compensated)?;
        let business = self.compensated - self.compensated_after_failures;
        writeln!(f, "    declined       {business}  (payment declined or out of stock)")?;
        writeln!(
            f,
            "    after failures {}  (a step kept failing, or the saga timed out)",
            self.compensated_after_failures
        )?;
        writeln!(f, "  unsettled        {}  ({} parked)", self.unsettled, self.parked)?;
        writeln!(f, "  failed requests  {}", self.failed_requests)?;
        writeln!(f, "throughput         {:.0} orders/s over {:.1} s", self.orders_per_second, self.seconds)?;
        writeln!(f, "latency            p50 {:.1} ms, p99 {:.1} ms (placed -> settled)", self.p50_ms, self.p99_ms)?;
        write!(f, "outbox lag         max {:.3} s (oldest unpublished event, sampled)", self.max_outbox_lag_seconds)?;
        if let (Some(receipts), Some(after)) = (self.receipts, self.events_drained_after_seconds) {
            write!(f, "\nevents             {receipts} receipts from OrderConfirmed, the last {after:.3} s after the last order settled")?;
        }
        if let Some(books) = &self.books {
            let verdict = if books.balanced() { "balanced" } else { "NOT BALANCED" };
            write!(f, "\nbooks              {verdict} (inventory and payments against the outcomes)")?;
            let (charge, stock) = (books.compensated_with_charge, books.compensated_with_stock);
            write!(f, "\n  compensated      {charge} still charged, {stock} still holding stock")?;
            let (charge, stock) = (books.completed_without_charge, books.completed_without_stock);
            write!(
                f,
                "\n  completed        {charge} not charged, {stock} not holding stock; {} units sold",
                books.units_sold
            )?;
            write!(f, "\n  stock            {} units unaccounted for", books.units_unaccounted)?;
            write!(f, "\n  refunds          {} charges undone by compensations", books.refunds)?;
        }
        Ok(())
    }
}

/// HTTP to the store's services, with the load generator's token when there is one.
#[derive(Clone)]
struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    tokens: Option<TokenSource>,
}

impl HttpClient {
    /// `request`'s status and body.
    async fn send(&self, mut request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        if let Some(tokens) = &self.tokens {
            let authorization = tokens.authorization().await.map_err(|error| error.to_string())?;
            request.headers_mut().insert(AUTHORIZATION, authorization);
        }
        let url = request.uri().to_string();
        let response = self.client.request(request).await.map_err(|error| format!("{url}: {error}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|error| format!("{url}: {error}"))?.to_bytes();
        Ok((status, bytes))
    }
}

/// Runs the load and returns its report.
pub async fn run(options: LoadOptions) -> Report {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client =
        HttpClient { client: Client::builder(TokioExecutor::new()).build(connector), tokens: options.tokens.clone() };
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity(options.orders)));
    let max_lag_micros = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let watcher = tokio::spawn(watch(options.clone(), client.clone(), done.clone(), max_lag_micros.clone()));
    let workers: Vec<_> = (0..options.concurrency.max(1))
        .map(|_| {
            let (client, next, done, outcomes, options) =
                (client.clone(), next.clone(), done.clone(), outcomes.clone(), options.clone());
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= options.orders {
                        break;
                    }
                    let began = Instant::now();
                    let outcome = place_and_follow(&client, &options.orders_url, index).await;
                    outcomes.lock().unwrap().push((outcome, began.elapsed()));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a load worker panicked");
    }
    let seconds = started.elapsed().as_secs_f64();
    let settled_at = Instant::now();
    watcher.abort();
    options.progress.finish();
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let count = |status: &str| outcomes.iter().filter(|(outcome, _)| outcome_is(outcome, status)).count();
    // Every completed order's event reaches payments through outbox, relay, broker and inbox.
    let (receipts, drained_after) = match &options.payments_url {
        Some(payments) => (wait_for_receipts(&client, payments, count("completed")).await, settled_at.elapsed()),
        None => (None, Duration::ZERO),
    };
    let books = match (&options.inventory_url, &options.payments_url) {
        (Some(inventory), Some(payments)) => {
            let orders: Vec<&OrderView> = outcomes.iter().filter_map(|(outcome, _)| outcome.as_ref().ok()).collect();
            match books(&client, inventory, payments, &orders).await {
                Ok(books) => Some(books),
                Err(error) => {
                    eprintln!("store: cannot read the books: {error}");
                    None
                }
            }
        }
        _ => None,
    };
    let mut latencies: Vec<Duration> =
        outcomes.iter().filter(|(outcome, _)| outcome.is_ok()).map(|(_, took)| *took).collect();
    latencies.sort();
    let settled = count("completed") + count("compensated");
    let failed_requests = outcomes.iter().filter(|(outcome, _)| outcome.is_err()).count();
    Report {
        orders_placed: outcomes.len() - failed_requests,
        completed: count("completed"),
        compensated: count("compensated"),
        compensated_after_failures: outcomes
            .iter()
            .filter(|(outcome, _)| outcome_is(outcome, "compensated"))
            .filter(|(outcome, _)| !outcome.as_ref().is_ok_and(said_no))
            .count(),
        unsettled: outcomes.len() - failed_requests - settled,
        parked: count("parked"),
        failed_requests,
        seconds,
        orders_per_second: outcomes.len() as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_outbox_lag_seconds: max_lag_micros.load(Ordering::Relaxed) as f64 / 1e6,
        events_drained_after_seconds: receipts.map(|_| drained_after.as_secs_f64()),
        receipts,
        books,
    }
}

/// The `index`th order: mostly ordinary, one in ten declined, some for the rare stamp.
fn order_body(index: usize) -> String {
    let item = ["book", "lamp", "mug", "rare-stamp"][index % 4];
    let amount_cents = if index % 10 == 7 { 99_000 } else { 1_000 + (index % 40) as i64 * 500 };
    format!(r#"{{"item":"{item}","quantity":1,"amount_cents":{amount_cents}}}"#)
}

/// How long an order may take to settle: sagas wait out outages and open breakers.
const SETTLE_WITHIN: Duration = Duration::from_secs(600);

/// Places order `index`, then follows it to its outcome.
async fn place_and_follow(client: &HttpClient, base: &str, index: usize) -> Result<OrderView, String> {
    let placed: OrderView = request(client, Method::POST, &format!("{base}/orders"), Some(order_body(index))).await?;
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        // Answers once the order settled, or after 30 s.
        let order: OrderView =
            request(client, Method::GET, &format!("{base}/orders/{}/outcome", placed.id), None).await?;
        if !matches!(order.status.as_str(), "running" | "compensating") || Instant::now() > deadline {
            return Ok(order);
        }
    }
}

/// Whether the business said no to `order` (the payments and inventory services' refusals).
fn said_no(order: &OrderView) -> bool {
    order.error.as_deref().is_some_and(|error| error.starts_with(DECLINED) || error.starts_with(OUT_OF_STOCK))
}

fn outcome_is(outcome: &Result<OrderView, String>, status: &str) -> bool {
    outcome.as_ref().is_ok_and(|order| order.status == status)
}

/// The receipts payments recorded, once there is one per completed order, or when they stop coming
/// (30 s at most).
async fn wait_for_receipts(client: &HttpClient, payments: &str, completed: usize) -> Option<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut receipts, mut last_change) = (None, Instant::now());
    loop {
        let count =
            text(client, &format!("{payments}/receipts/count")).await.ok().and_then(|body| body.trim().parse().ok());
        if count.is_some() && count != receipts {
            (receipts, last_change) = (count, Instant::now());
        }
        let quiet = last_change.elapsed() > Duration::from_secs(5);
        if receipts.is_some_and(|count| count >= completed as i64) || quiet || Instant::now() > deadline {
            return receipts;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checks the inventory's and payments' books against `orders`' outcomes.
async fn books(client: &HttpClient, inventory: &str, payments: &str, orders: &[&OrderView]) -> Result<Books, String> {
    let ledger: Vec<Payment> = request(client, Method::GET, &format!("{payments}/payments"), None).await?;
    let held: Vec<Reservation> = request(client, Method::GET, &format!("{inventory}/reservations"), None).await?;
    let stock: Vec<StockLevel> = request(client, Method::GET, &format!("{inventory}/stock"), None).await?;
    let with_status = |status: &str| -> HashSet<&str> {
        ledger.iter().filter(|payment| payment.status == status).map(|payment| payment.order_id.as_str()).collect()
    };
    let (charged, refunded) = (with_status("charged"), with_status("refunded"));
    // A reservation's id is the reserving step's idempotency key, `<order>/reserve_stock`.
    let held_for: HashMap<&str, i64> = held
        .iter()
        .map(|reservation| {
            (reservation.id.strip_suffix("/reserve_stock").unwrap_or(&reservation.id), reservation.quantity)
        })
        .collect();
    let mut books = Books {
        compensated_with_charge: 0,
        compensated_with_stock: 0,
        completed_without_charge: 0,
        completed_without_stock: 0,
        units_unaccounted: STOCK.iter().map(|(_, units)| units).sum::<i64>()
            - stock.iter().map(|level| level.available).sum::<i64>()
            - held.iter().map(|reservation| reservation.quantity).sum::<i64>(),
        units_sold: 0,
        refunds: 0,
    };
    for order in orders {
        let id = order.id.as_str();
        let holds = held_for.get(id).copied();
        match order.status.as_str() {
            "completed" => {
                books.completed_without_charge += usize::from(!charged.contains(id));
                books.completed_without_stock += usize::from(holds != Some(order.quantity));
                books.units_sold += holds.unwrap_or(0);
            }
            "compensated" => {
                books.compensated_with_charge += usize::from(charged.contains(id));
                books.compensated_with_stock += usize::from(holds.is_some());
            }
            _ => {}
        }
        books.refunds += usize::from(refunded.contains(id));
    }
    Ok(books)
}

async fn request<T: serde::de::DeserializeOwned>(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Option<String>,
) -> Result<T, String> {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|error| error.to_string())?;
    let (status, bytes) = client.send(request).await?;
    if !status.is_success() {
        return Err(format!("{url}: {status}: {}", String::from_utf8_lossy(&bytes)));
    }
    serde_json::from_slice(&bytes).map_err(|error| format!("{url}: {error}"))
}

/// Moves the progress bar and samples the outbox lag from `/metrics`, until aborted.
async fn watch(options: LoadOptions, client: HttpClient, done: Arc<AtomicUsize>, max_lag_micros: Arc<AtomicU64>) {
    options.progress.set_length(options.orders as u64);
    loop {
        if let Ok(metrics) = text(&client, &format!("{}/metrics", options.orders_url)).await {
            if let Some(lag) = gauge(&metrics, "marty_outbox_lag_seconds") {
                max_lag_micros.fetch_max((lag * 1e6) as u64, Ordering::Relaxed);
            }
        }
        options.progress.set_position(done.load(Ordering::Relaxed) as u64);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn text(client: &HttpClient, url: &str) -> Result<String, String> {
    let request = Request::get(url).body(Full::new(Bytes::new())).map_err(|error| error.to_string())?;
    let (status, bytes) = client.send(request).await?;
    if !status.is_success() {
        return Err(format!("{url}: {status}"));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of an unlabelled gauge in a Prometheus exposition.
fn gauge(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn percentile(sorted: &[Duration], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e3
}
